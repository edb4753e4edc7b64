"""A stand-in method page for tests/app/test_method_records_nav.py: its record alone puts it in the app."""

import streamlit as st

from core.ui.keys import state_key

st.title("Highest loss")
st.session_state[state_key("highest", "opened")] = True
