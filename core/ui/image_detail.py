"""One image-detail dialog for every gallery and map: the image as the model sees it, its id,
label, prediction, top scores, loss, attributes, Grad-CAM at a chosen layer and, on its
button, occlusion for the predicted and the true class (core/ui/why_view.py). An image whose
file is missing or unreadable shows a placeholder and says so; its store figures still show.

A gallery (or a map click) asks for it with ``request(origin, row)``; the gallery whose
``origin`` matches draws it with ``show_requested(ctx, meta, origin)``, so a page with
several galleries opens one dialog only. The request lives in session state until the dialog
is dismissed (a dialog opened by a button loses its widgets' clicks under AppTest).

Each request carries a serial number and a dismissal closes only the request its dialog drew.
Streamlit folds the reruns a browser sends while a run is in progress into one (their widget
triggers merged: ``_coalesce_widget_states`` in streamlit/runtime/scriptrunner_utils/
script_requests.py) and then calls the changed widgets' callbacks in widget order, not click
order (``SessionState._call_callbacks``). So "close the last dialog, press CAM on the next
image" can arrive as one run whose CAM callback runs before the old dialog's dismissal: a
dismissal that cleared whatever was asked would swallow the new click.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image

from core.data.images import placeholder, thumbnail
from core.errors import BiasLensError
from core.methods import GradCAM, GradCAMResult, overlay
from core.models.loading import model_view
from core.services.server import trace_click
from core.ui import cache, why_view, workshop
from core.ui.context import PageContext
from core.ui.keys import DETAIL_DRAWN, DETAIL_REQUEST, state_key
from core.ui.widgets import how_to_read, percent

REQUEST, DRAWN = DETAIL_REQUEST, DETAIL_DRAWN  # (origin, store row, serial) asked for; the request last drawn
SERIAL = state_key("detail", "serial")  # the last request's serial number in this session
VIEW = 192
TOP_SCORES = 5


def request(origin: str, row: int) -> None:
    """Open the detail dialog of store row ``row`` for the gallery or map ``origin`` (callback-safe).
    A new serial number tells this request from an earlier one for the same image."""
    serial = st.session_state.get(SERIAL, 0) + 1
    st.session_state[SERIAL] = serial
    st.session_state[REQUEST] = (origin, int(row), serial)
    trace_click("detail-request", origin=origin, row=int(row), serial=serial)


def _dismissed() -> None:
    """The dialog was closed: forget the request it drew, but never a newer one (a click folded
    into the same run as this dismissal, see the module docstring)."""
    drawn = st.session_state.pop(DRAWN, None)
    if drawn is not None and st.session_state.get(REQUEST) == drawn:
        del st.session_state[REQUEST]


def details_picker(ctx: PageContext, meta: pd.DataFrame, rows: Sequence[int] | np.ndarray, origin: str) -> None:
    """A compact "Image details" select under a gallery (one widget, not one per image)."""
    rows = [int(r) for r in rows]
    if not rows:
        return
    key = state_key("detail", "pick", origin)
    ids, labels, preds = meta["id"].to_numpy(), meta["label"].to_numpy(), meta["pred"].to_numpy()

    def picked() -> None:
        row = st.session_state.get(key)
        if row is not None:
            request(origin, row)
            st.session_state[key] = None  # the select is a trigger, not a setting

    st.selectbox(
        "Image details", rows, index=None, key=key, on_change=picked, placeholder="Open an image's details...",
        format_func=lambda r: f"{ids[r]} · {labels[r]}" + ("" if labels[r] == preds[r] else f" → {preds[r]} ✗"),
        help="Id, label, prediction, scores, loss, attributes, Grad-CAM and occlusion of one image of this gallery.",
        label_visibility="collapsed",
    )
    show_requested(ctx, meta, origin)


def show_requested(ctx: PageContext, meta: pd.DataFrame, origin: str) -> None:
    """Draw the dialog when ``origin`` asked for one (and the row still exists)."""
    wanted = st.session_state.get(REQUEST)
    if wanted and wanted[0] == origin and 0 <= wanted[1] < len(meta):
        st.session_state[DRAWN] = wanted
        image_detail(ctx, meta, wanted[1])
        if origin.startswith("subgroups.") and workshop.workshop_on():
            workshop.note_step(ctx.key, workshop.GRAD_CAM_STEP)  # the step's "press CAM"


def grad_cam_for(ctx: PageContext, row: int, cam: GradCAM, targets: tuple[int, ...]) -> GradCAMResult:
    """Grad-CAM of one image for these classes, computed once per ``cam.get_params()``, in
    the light lane on a private copy of the model (it never waits behind heavy runs)."""
    def compute() -> GradCAMResult:
        with ctx.run_model() as model:
            return cam.explain(model, ctx.dataset.load_image(row), targets)

    return cache.computed_once(
        "gradcam", ctx.key, cache.run_key(row, cam.get_params(), targets), "Grad-CAM", compute, lane=cache.LIGHT,
    )


def enlarged(picture: np.ndarray, side: int) -> np.ndarray:
    """Small pictures blown up with sharp pixels (the shared thumbnail rule)."""
    return thumbnail(Image.fromarray(picture), max(side, *picture.shape[:2]))


def _facts(ctx: PageContext, meta: pd.DataFrame, row: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(top class scores, attributes) of one image, from the store."""
    store = ctx.store
    classes = store.classes
    logits = np.asarray(store.logits()[row], dtype=np.float64)  # one row of the memmap
    probabilities = np.exp(logits - logits.max())
    probabilities /= probabilities.sum()
    top = np.argsort(-probabilities)[:TOP_SCORES]
    rec = meta.iloc[row]
    scores = pd.DataFrame(
        {
            "class": [classes[i] for i in top], "score": probabilities[top],
            "": ["true" if i == rec["label_idx"] else "" for i in top],
        }
    )
    columns = workshop.visible_columns(list(store.attribute_columns) + list(store.slice_columns))
    attributes = pd.DataFrame({"attribute": columns, "value": [str(rec[c]) for c in columns]})
    return scores, attributes


@st.dialog("Image details", width="large", on_dismiss=_dismissed)
def image_detail(ctx: PageContext, meta: pd.DataFrame, row: int) -> None:
    """The detail dialog of one store row."""
    rec = meta.iloc[row]
    st.markdown(
        f"**{rec['id']}** (row {row}) · label **{rec['label']}** · predicted **{rec['pred']}** with "
        f"confidence {percent(rec['confidence'])}" + (" ✓" if rec["correct"] else " ✗ misclassified")
        + f" · loss {rec['loss']:.3f}"
    )
    scores, attributes = _facts(ctx, meta, row)
    loaded, reason = ctx.dataset.try_load_image(row)
    left, right = st.columns([1, 2])
    if loaded is None:
        left.image(placeholder(VIEW, str(rec["id"])), caption="Image file missing", width="stretch")
    else:
        image = model_view(ctx.model, loaded)
        left.image(enlarged(image, VIEW), caption="Image (as the model sees it)", width="stretch")
    right.dataframe(
        scores, hide_index=True, width="stretch",
        column_config={"score": st.column_config.ProgressColumn("score", min_value=0, max_value=1, format="%.3f")},
    )
    if len(attributes):
        right.dataframe(attributes, hide_index=True, width="stretch")
    if loaded is None:
        st.warning(
            f"The image file is missing or unreadable: {reason} The label, prediction and scores above come "
            "from the activation store, made while the file was readable; Grad-CAM needs the image itself, "
            "so it shows again once the file is restored."
        )
        return
    _grad_cam(ctx, rec, row, image)
    why_view.detail_occlusion(ctx, row, (int(rec["pred_idx"]), int(rec["label_idx"])), (str(rec["pred"]), str(rec["label"])),
                              image)


def _grad_cam(ctx: PageContext, rec: Any, row: int, image: np.ndarray) -> None:
    st.markdown("**Grad-CAM** (where the layer saw evidence for the class)")
    layers = ctx.model.conv_layers
    if not layers:
        st.info("Grad-CAM does not apply: the model has no convolutional layers.")
        return
    layer = st.selectbox(
        "Layer", layers, index=len(layers) - 1, key=state_key("detail", "gradcam_layer", row),
        help="Grad-CAM is usually taken at the last conv block.",
    )
    targets = (int(rec["pred_idx"]), int(rec["label_idx"]))
    try:
        result = grad_cam_for(ctx, row, GradCAM(layer=layer), targets)
    except BiasLensError as exc:
        st.error(f"Grad-CAM failed: {exc}")
        return
    c1, c2 = st.columns(2)
    c1.image(enlarged(overlay(image, result.maps[0]), VIEW), caption=f"Predicted: {rec['pred']} ({percent(result.probabilities[targets[0]])})", width="stretch")
    c2.image(enlarged(overlay(image, result.maps[1]), VIEW), caption=f"True: {rec['label']} ({percent(result.probabilities[targets[1]])})", width="stretch")
    how_to_read("red = regions that raise that class's score most at this layer (Grad-CAM), blue = little or none; each map is scaled to its own maximum.")
