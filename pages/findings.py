"""Findings: one ranked list of where the model fails, pooled from every method and tested."""

import streamlit as st

from core.errors import BiasLensError
from core.ui import findings_view as view
from core.ui.context import page_context
from core.ui.keys import state_key
from core.ui.widgets import how_to_read, kept
from core.ui.workshop import ground_truth_hidden, hidden_notice

PAGE = view.PAGE
ctx = page_context()
st.title("Findings")
st.caption(
    "Where does the model fail? The groups of every method (Spotlight, UDIS's under-performing subgroups, Filter "
    "saliency's failure modes when its profiles exist), error clusters (each class's misclassified images clustered in "
    "the model's embedding), the confusion matrix's cells and, when the data has attributes, "
    "attribute slices (SliceLine) are pooled; the same failure found twice is one finding naming every method that "
    "found it; each is tested against the rest (Fisher's exact test, Benjamini-Hochberg over all candidates) and "
    "confirmed on a held-out half. Significant findings come first: each next one is the group that adds the most "
    "beyond those above it (how much worse than the rest its images not yet listed surely are), so a second part of "
    "a failure already listed waits behind the next distinct failure."
)
st.caption(
    "Reproducibility: the same store gives the same list on this server. Error clusters and exact Ward trees, the "
    "confusion cells and SliceLine are deterministic; Spotlight's gradient search (and UDIS's k-means micro-clusters "
    "above its exact-Ward limit) may round differently on another machine's floating-point kernels and move a later "
    "group, so a finding that only Spotlight found can differ between machines."
)
if ground_truth_hidden():  # workshop mode: the ranked list would hand the students the answer
    hidden_notice("The Findings page")
    st.stop()
left, right = st.columns([2, 1])
without = left.toggle("Leave the metadata out (the representation alone)", **kept(state_key(PAGE, "without", ctx.key), False),
                      help="As on an image folder without attributes: no SliceLine, descriptions from labels and predictions. "
                           "Shows what the model's own representation reveals, and failures no attribute describes.")
shown = int(right.number_input("Findings shown", 1, 100, **kept(state_key(PAGE, "shown", ctx.key), 10)))
try:
    report = view.findings_for(ctx, with_attributes=not without)
except BiasLensError as exc:
    st.error(f"The findings cannot be computed: {exc}")
    st.stop()
for source, message in report.errors.items():
    st.warning(f"{source} could not run, the other methods were pooled without it: {message}", icon=":material/warning:")
for note in report.notes:
    st.caption(note)
significant = [f for f in report.findings if f.q < 0.05]
if not significant:
    st.success("No significant failure found: no pooled group's accuracy differs from the rest's beyond chance (q < 0.05).")
st.subheader(f"{len(significant)} significant finding(s) of {len(report.findings)} ({report.candidates} candidate groups)")
how_to_read("each card is one failure: its description (the attribute values, label or prediction that best cover "
            "it), its accuracy against the rest's, the q-value of that gap over every candidate tested, and the gap "
            "again on a held-out half of the images. A red mark is significant; a grey one is not.")
for finding in report.findings[:shown]:
    view.finding_card(ctx, finding)
