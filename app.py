"""BiasLens entry point: page config, navigation over pages/, the sidebar workspace picker."""

import streamlit as st

from core.ui.context import sidebar_picker

st.set_page_config(page_title="BiasLens", page_icon="🔎", layout="wide")

PAGES = [
    st.Page("pages/overview.py", title="Overview", icon="🏠", default=True),
    st.Page("pages/cohorts.py", title="Cohorts & subsets", icon="🧮"),
]

navigation = st.navigation(PAGES)
st.sidebar.title("🔎 BiasLens")
st.sidebar.caption("Where does the classifier fail, and why?")
sidebar_picker()
navigation.run()
