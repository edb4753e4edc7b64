"""Compare's two-model dialog: closing it forgets only the request it drew (issue 21's lost clicks)."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest


def _close_after_a_newer_pick() -> None:
    import streamlit as st

    from core.ui import compare_view

    drawn = ("flips", 1, 1)
    st.session_state[compare_view.DETAIL_DRAWN] = drawn  # the open dialog drew this request
    st.session_state[compare_view.DETAIL] = st.session_state["asked"]  # what the folded run asked for last
    compare_view._dismissed()  # the old dialog's dismissal, called after the newer pick's callback
    st.write(f"after closing: {st.session_state.get(compare_view.DETAIL)}")


@pytest.mark.parametrize(("asked", "left"), [(("flips", 2, 2), "('flips', 2, 2)"),  # a newer pick stays
                                             (("flips", 1, 2), "('flips', 1, 2)"),  # the same image again stays
                                             (("flips", 1, 1), "None")])  # its own request goes
def test_closing_the_dialog_never_swallows_a_newer_pick(asked, left):
    at = AppTest.from_function(_close_after_a_newer_pick)
    at.session_state["asked"] = asked
    at.run()
    assert not at.exception
    assert at.markdown[0].value == f"after closing: {left}"
