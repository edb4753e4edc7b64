"""Workshop: the guided steps with their hints, and "Check my finding" against the hidden slices."""

import streamlit as st

from core.ui import workshop
from core.ui.context import page_context

ctx = page_context()
meta = ctx.meta()

st.title("Workshop")
st.caption(
    "Find a failure of the model without being told where it is, then check your finding "
    "against the planted slices, which stay hidden until the instructor reveals them."
)
with st.expander("The steps, with hints", expanded=False, icon=":material/checklist:"):
    for i, (step, done) in enumerate(zip(workshop.steps(), workshop.steps_done(ctx.key), strict=True)):
        mark = ":material/check_circle:" if done else ":material/radio_button_unchecked:"
        st.markdown(f"{mark} **{i + 1}. {step.title}**: {step.hint}")
        if step.page != workshop.PAGE_PATH:
            st.page_link(step.page, label=f"Open the page for step {i + 1}", icon=":material/arrow_forward:")
workshop.check_finding_section(ctx, meta)
