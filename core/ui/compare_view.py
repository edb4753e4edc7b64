"""The Compare page's cached run and its panels (core/services/compare.py does the work), the
image dialog that shows both models' predictions and Grad-CAM side by side, and the comparison
report's downloads (core/services/report.py writes it)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image

from core.data.images import placeholder
from core.errors import BiasLensError
from core.methods import GradCAM, overlay
from core.models.loading import model_view
from core.services.compare import Comparison, compare_stores
from core.services.report import build_report
from core.store.read import Store
from core.ui import cache, cohort_link
from core.ui.context import PageContext
from core.ui.image_detail import enlarged, grad_cam_for
from core.ui.keys import state_key
from core.ui.method_page import gallery, run_with_progress, save_subset_form
from core.ui.subset_view import image_or_placeholder
from core.ui.widgets import Shown, how_to_read, percent, table

PAGE = "compare"
ORIGIN = "comparison"
THUMBNAILS = 8
SHOWN_SLICES = 5
FLIPS_SHOWN = 16
VIEW = 192
CAM_VIEW = 320  # each model's Grad-CAM, side by side: both fit the dialog without scrolling
DETAIL = state_key(PAGE, "detail")  # (gallery origin, store row, serial) of the open two-model image dialog
DETAIL_DRAWN = state_key(PAGE, "detail_drawn")  # the request the open dialog drew


def comparison_for(store_a: Store, store_b: Store, name_a: str, name_b: str, embedding_of: str) -> Comparison:
    """The comparison of the two stores, once per server for these settings (a rerun reads it back)."""
    fingerprint, key = f"{store_a.fingerprint}|{store_b.fingerprint}", cache.run_key("compare", embedding_of, name_a, name_b)
    held = cache.cached_result("compare", fingerprint, key)
    if held is not None:
        return held

    def work(progress: Any) -> Comparison:
        return cache.computed_once("compare", fingerprint, key, "The comparison",
                                   lambda: compare_stores(store_a, store_b, embedding_of=embedding_of, name_a=name_a,
                                                          name_b=name_b,
                                                          progress=lambda share, message: progress(round(100 * share), 100, message)))

    return run_with_progress("Comparing the two models...", work, lambda result: f"Compared in {result.seconds:.1f} s",
                             unit=None)


def overall_panel(result: Comparison) -> None:
    """Both accuracies, the paired test and the 2x2 table."""
    o = result.overall
    c1, c2, c3 = st.columns(3)
    c1.metric(f"Accuracy of A ({result.name_a})", percent(o["acc A"]), help=f"95%: {percent(o['acc A low'])} – {percent(o['acc A high'])}")
    c2.metric(f"Accuracy of B ({result.name_b})", percent(o["acc B"]), delta=f"{100 * o['difference']:+.1f} pts",
              help=f"95%: {percent(o['acc B low'])} – {percent(o['acc B high'])}")
    c3.metric("McNemar p (same accuracy)", f"{o['p']:.2g}")
    st.caption(result.summary())
    cells = o["table"]
    two_by_two = pd.DataFrame({"B right": [cells["both right"], cells["A wrong, B right"]],
                               "B wrong": [cells["A right, B wrong"], cells["both wrong"]]}, index=["A right", "A wrong"])
    st.dataframe(two_by_two)


def slice_card(ctx: PageContext, ctx_a: PageContext, result: Comparison, rank: int, found: dict[str, Any],
               direction: str) -> None:
    """One regression (or improvement) slice: what it is, how sure, its images, what to do next."""
    mark = ":material/trending_down:" if direction == "regression" else ":material/trending_up:"
    with st.container(border=True):
        st.markdown(f"{mark} **#{rank} · {found['description']}** ({found['name']})")
        c1, c2, c3, c4 = st.columns(4)
        c1.metric("Images", f"{found['size']:,}")
        c2.metric("Accuracy under B", percent(found["acc B"]),
                  delta=f"{100 * (found['acc B'] - found['acc A']):+.1f} pts from A ({percent(found['acc A'])})")
        c3.metric("q (BH)", f"{found['q']:.2g}")
        c4.metric("Held-out difference", f"{100 * found['held-out difference']:+.1f} pts")
        st.caption(f"{found['A right, B wrong']:,} images A got right and B wrong, {found['A wrong, B right']:,} the reverse; "
                   f"on the held-out half ({found['held-out n']:,} images) the difference is "
                   f"{100 * found['held-out difference']:+.1f} points (95% {100 * found['held-out low']:+.1f} to "
                   f"{100 * found['held-out high']:+.1f}).")
        rows = found["rows"]
        origin = f"compare-{direction}-{rank}"
        gallery(ctx, ctx.meta(), rows[:THUMBNAILS], origin=origin, details=False)
        detail_picker(ctx, ctx_a, rows[:THUMBNAILS], origin)
        left, right = st.columns([1, 3])
        if left.button("Open as cohort", icon=":material/filter_alt:", key=state_key(PAGE, "open", ctx.key, direction, rank)):
            cohort_link.open_group(ctx, f"{direction} {rank}", rows)
        word = "regressed" if direction == "regression" else "improved"
        with right:
            save_subset_form(ctx, rows, f"{word} in B: {found['description']}"[:100], ORIGIN,
                             f"{word} from A to B: {found['description']} ({found['name']})",
                             key=state_key(PAGE, "save", ctx.key, direction, rank),
                             params=saved_params(result, found))


def saved_params(result: Comparison, found: dict[str, Any]) -> dict[str, Any]:
    """What a slice saved as a subset keeps of its origin: the two workspaces, the embedding
    searched, the slice's name and its held-out q (the report's origin line shows them)."""
    return {"A": result.name_a, "B": result.name_b, "embedding": result.embedding_of, "slice": found["name"],
            "q": float(f"{found['q']:.3g}")}


def groups_table(result: Comparison) -> None:
    """Per class, attribute value and saved subset: both accuracies, the paired difference, q."""
    frame = result.groups.sort_values(["q", "difference"], kind="stable") if "q" in result.groups else result.groups
    table(frame, {"acc A": Shown("percent"), "acc B": Shown("percent"), "difference": Shown("points"),
                  "low": Shown("points", label="95% low"), "high": Shown("points", label="95% high"),
                  "p": Shown("general", 2), "q": Shown("general", 2)}, hide_index=True)


def flips_panel(ctx: PageContext, ctx_a: PageContext, result: Comparison) -> None:
    """The images that flipped, both ways, with both predictions and confidences; each opens
    the two-model image dialog."""
    worse, better = st.tabs([f"A right → B wrong ({len(result.worse):,})", f"A wrong → B right ({len(result.better):,})"])
    for tab, frame, origin in ((worse, result.worse, "flips-worse"), (better, result.better, "flips-better")):
        with tab:
            if frame.empty:
                st.caption("None.")
                continue
            rows = frame["row"].to_numpy()[:FLIPS_SHOWN]
            gallery(ctx, ctx.meta(), rows, origin=origin, details=False)
            detail_picker(ctx, ctx_a, rows, origin)
            table(frame.drop(columns=["row"]).head(200), {"confidence A": Shown("percent"), "confidence B": Shown("percent"),
                                                          "loss A": Shown("number", 2), "loss B": Shown("number", 2)},
                  hide_index=True)


# --------------------------------------------------------------------------- the two-model image dialog


def detail_picker(ctx: PageContext, ctx_a: PageContext, rows: Sequence[int] | np.ndarray, origin: str) -> None:
    """An "Image details" select under a gallery: it opens the dialog with both models'
    predictions and Grad-CAM (one select per gallery, not one button per image)."""
    rows = [int(r) for r in rows]
    if not rows:
        return
    key = state_key(PAGE, "pick", ctx.key, origin)
    meta_a, meta_b = ctx_a.meta(), ctx.meta()
    ids, labels = meta_b["id"].to_numpy(), meta_b["label"].to_numpy()
    pred_a, pred_b = meta_a["pred"].to_numpy(), meta_b["pred"].to_numpy()

    def picked() -> None:
        row = st.session_state.get(key)
        if row is not None:
            serial = (st.session_state.get(DETAIL) or (None, None, 0))[2] + 1  # tells this request from an earlier one
            st.session_state[DETAIL] = (origin, int(row), serial)
            st.session_state[key] = None  # the select is a trigger, not a setting

    st.selectbox(
        "Image details (A and B)", rows, index=None, key=key, on_change=picked, label_visibility="collapsed",
        placeholder="Open an image: both models' predictions and Grad-CAM...",
        format_func=lambda r: f"{ids[r]} · {labels[r]} · A: {pred_a[r]} · B: {pred_b[r]}",
        help="Both models' predictions, confidences and losses on one image, with their Grad-CAM side by side.",
    )
    wanted = st.session_state.get(DETAIL)
    if wanted and wanted[0] == origin and 0 <= wanted[1] < len(meta_b):
        st.session_state[DETAIL_DRAWN] = wanted
        both_models_detail(ctx, ctx_a, wanted[1])


def _dismissed() -> None:
    """The dialog was closed: forget the request it drew, never a newer one (Streamlit folds a
    close and the next pick into one run and calls callbacks in widget order; see
    core/ui/image_detail.py)."""
    drawn = st.session_state.pop(DETAIL_DRAWN, None)
    if drawn is not None and st.session_state.get(DETAIL) == drawn:
        del st.session_state[DETAIL]


def class_choices(rec_a: Any, rec_b: Any, n_classes: int) -> tuple[list[int], dict[int, str]]:
    """The classes Grad-CAM can explain, B's prediction, A's prediction and the true class
    first (each once), then every other class; with the tags that say which is which."""
    tags: dict[int, list[str]] = {}
    for index, tag in ((int(rec_b["pred_idx"]), "B predicts"), (int(rec_a["pred_idx"]), "A predicts"),
                       (int(rec_b["label_idx"]), "true")):
        tags.setdefault(index, []).append(tag)
    order = list(tags) + [k for k in range(n_classes) if k not in tags]
    return order, {k: ", ".join(v) for k, v in tags.items()}


@st.dialog("Image details: model A and model B", width="large", on_dismiss=_dismissed)
def both_models_detail(ctx: PageContext, ctx_a: PageContext, row: int) -> None:
    """One image under both models: its predictions, confidences and losses, and each model's
    Grad-CAM at its last conv block for a class the visitor picks."""
    rec_a, rec_b = ctx_a.meta().iloc[row], ctx.meta().iloc[row]
    classes = list(ctx.store.classes)
    st.markdown(f"**{rec_b['id']}** (row {row}) · label **{rec_b['label']}**")
    loaded, reason = ctx.dataset.try_load_image(row)
    left, right = st.columns([1, 2])
    if loaded is None:
        left.image(placeholder(VIEW, str(rec_b["id"])), caption="Image file missing", width="stretch")
    else:
        left.image(enlarged(model_view(ctx.model, loaded), VIEW), caption="Image (as B sees it)", width="stretch")
    both = pd.DataFrame({
        "model": [f"A: {ctx_a.workspace.title}", f"B: {ctx.workspace.title}"],
        "prediction": [rec_a["pred"], rec_b["pred"]],
        "confidence": [float(rec_a["confidence"]), float(rec_b["confidence"])],
        "right": ["✓" if rec_a["correct"] else "✗", "✓" if rec_b["correct"] else "✗"],
        "loss": [float(rec_a["loss"]), float(rec_b["loss"])],
    })
    right.dataframe(both, hide_index=True, width="stretch",
                    column_config={"confidence": st.column_config.ProgressColumn("confidence", min_value=0, max_value=1,
                                                                                 format="%.3f"),
                                   "loss": st.column_config.NumberColumn("loss", format="%.3f")})
    if loaded is None:
        st.warning(f"The image file is missing or unreadable: {reason} The predictions above come from the two "
                   "activation stores; Grad-CAM needs the image itself, so it shows again once the file is restored.")
        return
    order, tags = class_choices(rec_a, rec_b, len(classes))
    target = st.selectbox(
        "Grad-CAM for the class", order, key=state_key(PAGE, "cam_class", row),
        format_func=lambda k: classes[k] + (f" ({tags[k]})" if k in tags else ""),
        help="Each model's Grad-CAM for the same class, at each model's last conv block.",
    )
    c1, c2 = st.columns(2)
    for column, context, which in ((c1, ctx_a, "A"), (c2, ctx, "B")):
        with column:
            _grad_cam(context, which, row, loaded, target, classes[target])
    how_to_read("red = regions that raise that class's score most at the model's last conv block (Grad-CAM), blue = "
                "little or none; each map is scaled to its own maximum, so compare where each model looks, not how hot.")


def _grad_cam(context: PageContext, which: str, row: int, loaded: Image.Image, target: int, name: str) -> None:
    """One model's Grad-CAM of the image for class ``target`` (a light run on its private copy)."""
    layers = context.model.conv_layers
    if not layers:
        st.info(f"Model {which} has no convolutional layers: Grad-CAM does not apply to it.")
        return
    try:
        result = grad_cam_for(context, row, GradCAM(layer=layers[-1]), (target,))
    except BiasLensError as exc:
        st.error(f"Grad-CAM of model {which} failed: {exc}")
        return
    image = model_view(context.model, loaded)
    st.image(enlarged(overlay(image, result.maps[0]), CAM_VIEW), width=CAM_VIEW,
             caption=f"{which} ({context.workspace.title}): {name} {percent(result.probabilities[target])} · {layers[-1]}")


# --------------------------------------------------------------------------- the report


def report_maker(ctx: PageContext, result: Comparison, fmt: str) -> Callable[[], str]:
    """The comparison report (core/services/report.py), built only when its download button is
    pressed: the comparison itself and the subsets saved from it, with their origins."""
    dataset, attributes = ctx.dataset, list(ctx.store.attribute_columns)

    def make() -> str:
        saved = [s for s in ctx.subsets().subsets() if s.origin == ORIGIN]
        return build_report(saved, ctx.meta(), attributes, title=f"BiasLens comparison: {result.name_b} against {result.name_a}",
                            load_image=lambda row: image_or_placeholder(dataset, row), fmt=fmt, comparison=result)

    return make


def report_downloads(ctx: PageContext, result: Comparison) -> None:
    """"Download the comparison report" in HTML and in Markdown."""
    c1, c2 = st.columns(2)
    slug = f"{result.name_b}-vs-{result.name_a}"
    c1.download_button("Download the comparison report (HTML)", report_maker(ctx, result, "html"),
                       file_name=f"{slug}-comparison.html", mime="text/html", on_click="ignore",
                       icon=":material/download:")
    c2.download_button("Download the comparison report (Markdown)", report_maker(ctx, result, "markdown"),
                       file_name=f"{slug}-comparison.md", mime="text/markdown", on_click="ignore",
                       icon=":material/download:")
    how_to_read("the report holds both accuracies with their intervals, McNemar's test, the regression and improvement "
                "slices (found on one half, tested on the other) and every subset saved from this page with its origin.")
