"""A tiny app for test_clicks_e2e.py: a gallery fragment whose button opens a dialog, and a
second fragment with a button of its own (what a page's polling fragment is: another rerun
request from the same page). With $BIASLENS_UNPATCHED=1 it runs without
core/ui/context.py's ``deliver_finished_runs``, to show what it fixes."""

import os

import streamlit as st

from core.ui.context import deliver_finished_runs

if os.environ.get("BIASLENS_UNPATCHED") != "1":
    deliver_finished_runs()


def ask(row: int) -> None:
    st.session_state["asked"] = row


@st.dialog("Details", on_dismiss=lambda: st.session_state.pop("asked", None))
def details(row: int) -> None:
    st.write(f"Dialog of image {row}")


@st.fragment
def gallery() -> None:
    for row in range(3):
        st.button(f"CAM {row}", on_click=ask, args=(row,))
    if st.session_state.get("asked") is not None:
        details(st.session_state["asked"])


@st.fragment
def other() -> None:
    st.button("Other")


gallery()
other()
