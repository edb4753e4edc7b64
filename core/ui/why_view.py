"""The "why" views: occlusion maps beside the gradient maps, and the counterfactual check.

Gradient maps (the input-space saliency map, the plain loss gradient, Grad-CAM) say where a
small change would move the loss; they need not point at what caused an error. Occlusion
(core/methods/saliency/occlusion.py) measures it directly, by hiding each region; the
counterfactual check (core/methods/saliency/counterfactual.py) tests every map by hiding its
top region and counting the errors corrected, against random regions of the same area.

One image's occlusion is a light run (its own lane, a private copy of the model, like
Grad-CAM); a group's check is a heavy run with its expected time, a Cancel button and, on a
hosted server, the image and time caps. Results are computed once per inputs
(``cache.computed_once``), keyed by the workspace and the explainers' ``get_params()``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import streamlit as st
import torch
from PIL import Image

from core.data.images import thumbnail
from core.errors import BiasLensError, DataError
from core.methods import FilterSaliency, GradCAM, overlay
from core.methods.saliency import (
    CounterfactualCheck,
    CounterfactualResult,
    OcclusionMap,
    OcclusionResult,
    loss_gradient_maps,
)
from core.methods.saliency.filters import FilterIndex
from core.methods.saliency.occlusion import window_positions
from core.models.loading import LoadedModel, make_transform, model_view
from core.services.estimates import (
    HOSTED_MAX_IMAGES,
    HostedLimit,
    check_image_run,
    counterfactual_seconds,
    image_saliency_seconds,
    model_cost,
    occlusion_passes,
    occlusion_seconds,
    on_this_server,
)
from core.ui import cache
from core.ui.context import PageContext
from core.ui.keys import state_key
from core.ui.widgets import group_select, how_to_read, kept, percent

PAGE = "saliency"  # the Filter saliency page's state keys
DETAIL = "detail"  # the image-details dialog's
MAPS = ("occlusion", "input-space saliency", "Grad-CAM", "plain gradient")  # the maps the check compares
VIEW = 192  # pixels of a shown map
GROUP_DEFAULT = 100  # images of a group check, highest loss first
ALL_ERRORS = "All misclassified images"
Stats = tuple[np.ndarray, np.ndarray, str]  # mu, sigma and the reference set's name


def occlusion_explainer(ctx: PageContext) -> OcclusionMap:
    """The occlusion explainer of this workspace: its grid fits the model's cost
    (``occlusion_passes``: a 10 x 10 grid at most, coarser for a slow model)."""
    return OcclusionMap(max_evaluations=occlusion_passes(model_cost(ctx.model)))


def geometry_text(ctx: PageContext, explainer: OcclusionMap) -> str:
    """The grid shown beside every occlusion map: window, stride, places and baseline."""
    side = ctx.model.input_size
    window, stride = explainer.geometry(side)
    places = window_positions(side, window, stride)
    sigma = window if explainer.blur_sigma is None else explainer.blur_sigma
    return (f"window {window} px, stride {stride} px on the {side} px input ({places} x {places} places); hidden pixels "
            f"replaced by the image blurred with a {sigma} px Gaussian")


def enlarged(picture: np.ndarray, side: int = VIEW) -> np.ndarray:
    """A small picture blown up with sharp pixels (the shared thumbnail rule)."""
    return thumbnail(Image.fromarray(picture), max(side, *picture.shape[:2]))


def hidden_view(view: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """uint8 RGB: the region ``mask`` (what the check hides) in its own colours, the rest
    dimmed to a quarter (a tint could vanish on a garment of the same colour)."""
    shown = view.astype(np.float32)
    shown[~mask] *= 0.25
    return shown.round().astype(np.uint8)


def _tensor(model: LoadedModel, images: Sequence[Image.Image]) -> torch.Tensor:
    transform = make_transform(model.input_size, model.mean, model.std)
    return torch.stack([transform(image) for image in images])


# --------------------------------------------------------------------------- one image's occlusion


def occlusion_for(ctx: PageContext, row: int, targets: tuple[int, ...], explainer: OcclusionMap) -> OcclusionResult:
    """Occlusion of one image for these classes, computed once, in the light lane on a
    private copy of the model (it never waits behind heavy runs)."""
    def compute() -> OcclusionResult:
        with ctx.run_model() as model:
            return explainer.explain(model, _tensor(model, [ctx.dataset.load_image(row)]), np.array([targets]))

    key = cache.run_key(row, explainer.get_params(), targets)
    return cache.computed_once("occlusion", ctx.key, key, "Occlusion", compute, lane=cache.LIGHT)


def occlusion_pair(ctx: PageContext, result: OcclusionResult, view: np.ndarray, names: tuple[str, str]) -> None:
    """The predicted- and true-class occlusion maps side by side over the image."""
    columns = st.columns(2)
    for column, (which, name), index in zip(columns, (("Predicted", names[0]), ("True", names[1])), range(2), strict=True):
        probability = result.probabilities[0, result.targets[0, index]]
        column.image(enlarged(overlay(view, result.maps[0, index])), caption=f"Occlusion, {which.lower()}: {name} "
                     f"({percent(probability)})", width="stretch")


def detail_occlusion(ctx: PageContext, row: int, targets: tuple[int, int], names: tuple[str, str], view: np.ndarray) -> None:
    """The image-details dialog's occlusion part: computed on its button (a light run),
    shown at once when already computed."""
    st.markdown("**Occlusion** (what hiding each region does to the class's score)")
    explainer = occlusion_explainer(ctx)
    key = cache.run_key(row, explainer.get_params(), targets)
    result = cache.cached_result("occlusion", ctx.key, key)
    if result is None:
        if not st.button("Compute occlusion", key=state_key(DETAIL, "occlusion", row),
                         help="Slides a window over the image and hides it under a blur: regions whose hiding lowers "
                         "the class's score most are the ones the model used. Slower than Grad-CAM, but it checks "
                         "by intervention and sees regions smaller than Grad-CAM's grid."):
            st.caption(f"Grid: {geometry_text(ctx, explainer)}.")
            return
        try:
            result = occlusion_for(ctx, row, targets, explainer)
        except BiasLensError as exc:
            st.error(f"Occlusion failed: {exc}")
            return
    occlusion_pair(ctx, result, view, names)
    how_to_read(f"red = regions whose hiding lowers that class's probability most, blue = little or no effect; each map "
                f"scaled to its own maximum. Grid: {geometry_text(ctx, explainer)}.")


# --------------------------------------------------------------------------- the counterfactual check


@dataclass(frozen=True, eq=False)
class WhyCheck:
    """The Filter saliency page's "why" run over one image or a group.

    ``rows`` the store rows checked (those whose image could be read); ``occlusion`` their occlusion
    maps (predicted, true); ``maps`` name -> (n, S, S) the four maps compared;
    ``counterfactual`` the check over them; ``geometry`` the occlusion grid in words;
    ``mean_view`` uint8 (S, S, 3) the mean of the errors' images as the model sees them
    (the backdrop of the group's mean maps).
    """

    rows: np.ndarray
    occlusion: OcclusionResult
    maps: dict[str, np.ndarray]
    counterfactual: CounterfactualResult
    geometry: str
    mean_view: np.ndarray


def why_check(ctx: PageContext, model: LoadedModel, rows: np.ndarray, stats: Stats, index: FilterIndex,
              progress: Callable[[int, int, str], None] | None = None) -> WhyCheck:
    """The four maps of each image (occlusion for the predicted class, the input-space map,
    Grad-CAM at the last conv block for the predicted class, the plain loss gradient) and
    the counterfactual check over them, on ``model`` (a private copy). Images whose file
    can no longer be read are left out (``WhyCheck.rows`` lists those checked)."""
    loaded = [(int(r), ctx.dataset.try_load_image(int(r))[0]) for r in rows]
    rows = np.array([r for r, image in loaded if image is not None], dtype=np.int64)
    images = [image for _, image in loaded if image is not None]
    if not len(rows):
        raise DataError("None of these images can be read (files missing or damaged since the store was built): "
                        "restore them or pick another group.")
    meta = ctx.meta()
    mu, sigma, _ = stats
    labels = meta["label_idx"].to_numpy()[rows]
    predicted = meta["pred_idx"].to_numpy()[rows]
    x = _tensor(model, images)
    explainer = occlusion_explainer(ctx)
    total = 3 * len(rows)

    def step(done: int, message: str) -> None:
        if progress is not None:
            progress(done, total, message)

    occluded = explainer.explain(model, x, np.stack([predicted, labels], axis=1),
                                 progress=lambda done, _n, _m: step(done, "Occlusion"))
    saliency = FilterSaliency()
    input_maps = []
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        input_maps.append(saliency.explain(model, image, int(label), mu=mu, sigma=sigma, index=index).map)
        step(len(rows) + i + 1, "Input-space saliency")
    cams = []
    if model.conv_layers:
        for i, (image, wrong) in enumerate(zip(images, predicted, strict=True)):
            cams.append(GradCAM().explain(model, image, [int(wrong)]).maps[0])
            step(2 * len(rows) + i + 1, "Grad-CAM")
    maps = {MAPS[0]: occluded.maps[:, 0], MAPS[1]: np.stack(input_maps)}
    if cams:
        maps[MAPS[2]] = np.stack(cams)
    maps[MAPS[3]] = loss_gradient_maps(model, x, labels)
    counterfactual = CounterfactualCheck().explain(model, x, labels, maps=maps)
    step(total, "Counterfactual check")
    errors = counterfactual.errors if len(counterfactual.errors) else np.arange(len(images))
    mean_view = np.mean([model_view(model, images[i]) for i in errors], axis=0).round().astype(np.uint8)
    return WhyCheck(rows=np.asarray(rows, dtype=np.int64), occlusion=occluded, maps=maps, counterfactual=counterfactual,
                    geometry=geometry_text(ctx, explainer), mean_view=mean_view)


def why_seconds(ctx: PageContext, images: int) -> float:
    """The expected seconds of ``why_check`` over ``images`` images on this server."""
    cost = model_cost(ctx.model)
    window, stride = occlusion_explainer(ctx).geometry(ctx.model.input_size)
    passes = window_positions(ctx.model.input_size, window, stride) ** 2
    return (occlusion_seconds(cost, images, passes) + images * 2 * image_saliency_seconds(cost)
            + counterfactual_seconds(cost, images, len(MAPS), CounterfactualCheck().n_random))


def _check_key(ctx: PageContext, rows: np.ndarray, stats: Stats) -> str:
    return cache.run_key([int(r) for r in rows], stats[2], occlusion_explainer(ctx).get_params(),
                         CounterfactualCheck().get_params(), FilterSaliency().get_params())


def counterfactual_table(result: CounterfactualResult) -> pd.DataFrame:
    """The check's table for people: each map's errors corrected with its interval."""
    rows = []
    for record in result.table.to_dict("records"):
        rows.append({
            "region hidden": "random (same area)" if record["region"] == "random" else f"top of {record['region']}",
            "errors": int(record["errors"]),
            "corrected": f"{percent(record['share'])} ({percent(record['low'])} to {percent(record['high'])})",
        })
    return pd.DataFrame(rows)


def show_check(ctx: PageContext, check: WhyCheck, single: bool) -> None:
    """The check's table and its regions (one image: each map's hidden region over it)."""
    result = check.counterfactual
    if not len(result.errors):
        st.info("The model classifies these images correctly: the counterfactual check needs errors.")
        return
    st.dataframe(counterfactual_table(result), hide_index=True)
    shares = result.table.set_index("region")["share"]
    lift = result.lift()
    best = max(lift, key=lift.get)
    st.markdown(f"Hiding the top {result.pixels} pixels ({percent(result.pixels / ctx.model.input_size ** 2)} of the image) "
                f"of **{best}** corrects {percent(shares[best])} of the errors, {100 * lift[best]:+.0f} points against "
                "random regions of the same area.")
    if single:
        view = model_view(ctx.model, ctx.dataset.load_image(int(check.rows[0])))
        columns = st.columns(len(result.masks))
        for column, (name, masks) in zip(columns, result.masks.items(), strict=True):
            fixed = bool(result.corrected[name][0])
            column.image(enlarged(hidden_view(view, masks[0]), 96), caption=f"{name}: {'corrected' if fixed else 'still wrong'}",
                         width="stretch")
        how_to_read("the bright pixels are the region each map ranks highest, the one the check hid (the rest dimmed).")
    placements = CounterfactualCheck().n_random
    control = (f"Wilson over its {placements} placements" if len(result.errors) == 1
               else f"bootstrap over the images, {placements} placements each")
    how_to_read("the share of the errors whose prediction becomes the true class once the region is replaced by a blur "
                f"of the image, with a 95% interval (Wilson for the maps; for the random squares, {control}); a map "
                "that found a cause beats random by a wide margin.")
    for note in result.notes:
        st.caption(note)


# --------------------------------------------------------------------------- the page's section


def why_section(ctx: PageContext, row: int, stats: Stats, index: FilterIndex, wrong_rows: np.ndarray,
                subset_names: Sequence[str]) -> None:
    """The Filter saliency page's "Why" section: occlusion and the counterfactual check for
    the picked image (a light run) and for a group's misclassified images (a heavy run)."""
    st.subheader("Why: occlusion and counterfactual check")
    st.caption("Gradient maps show where a small change would move the loss, not necessarily what caused the error. "
               "Occlusion hides each region in turn and measures the drop of the class's probability; the "
               "counterfactual check hides the top region of each map and counts the errors corrected, against random "
               "regions of the same area: the map that corrects far more than random has found a cause.")
    meta = ctx.meta()
    rec = meta.iloc[row]
    explainer = occlusion_explainer(ctx)
    st.markdown(f"**This image** ({rec['id']}: {rec['label']}, predicted {rec['pred']})")
    loaded, reason = ctx.dataset.try_load_image(row)
    if loaded is None:
        st.warning(f"The image file is missing or unreadable: {reason} Occlusion needs the image itself.")
    else:
        key = _check_key(ctx, np.array([row]), stats)
        check = cache.cached_result("why-image", ctx.store.fingerprint, key)
        slot = st.empty()  # the button, gone once the run is done
        if check is None and slot.button("Occlusion and counterfactual check of this image",
                                         key=state_key(PAGE, "why_image", row)):
            slot.empty()
            try:
                check = cache.computed_once("why-image", ctx.store.fingerprint, key, "The why check",
                                            lambda: _on_copy(ctx, lambda model: why_check(ctx, model, np.array([row]), stats, index)),
                                            lane=cache.LIGHT)
            except BiasLensError as exc:
                st.error(f"The why check cannot be computed: {exc}")
        if check is None:
            st.caption(f"Occlusion grid: {geometry_text(ctx, explainer)}.")
        else:
            occlusion_pair(ctx, check.occlusion, model_view(ctx.model, loaded), (str(rec["pred"]), str(rec["label"])))
            how_to_read(f"red = regions whose hiding lowers that class's probability most; grid: {check.geometry}.")
            show_check(ctx, check, single=True)
    _group_part(ctx, stats, index, wrong_rows, subset_names)


def _on_copy(ctx: PageContext, run: Callable[[LoadedModel], WhyCheck]) -> WhyCheck:
    with ctx.run_model() as model:
        return run(model)


def _group_part(ctx: PageContext, stats: Stats, index: FilterIndex, wrong_rows: np.ndarray, subset_names: Sequence[str]) -> None:
    """A group's mean occlusion map over its misclassified images and the check over them."""
    st.markdown("**A group of errors**")
    c1, c2 = st.columns([2, 1])
    with c1:
        name, subset_rows = group_select("Group", state_key(PAGE, "why_group", ctx.key),
                                         {n: ctx.subsets().get(n).rows for n in subset_names}, ALL_ERRORS,
                                         "Only the group's misclassified images are used, highest loss first.")
    cap = int(c2.number_input("At most (highest loss first)", 1, HOSTED_MAX_IMAGES if ctx.hosted else 5000,
                              **kept(state_key(PAGE, "why_cap"), GROUP_DEFAULT)))
    pool = wrong_rows if subset_rows is None else wrong_rows[np.isin(wrong_rows, subset_rows)]
    rows = pool[:cap]
    if not len(rows):
        st.info("No misclassified images in this group.")
        return
    key = _check_key(ctx, rows, stats)
    check = cache.cached_result("why-group", ctx.store.fingerprint, key)
    seconds = why_seconds(ctx, len(rows))
    if check is None:
        refusal = None
        if ctx.hosted:
            try:
                check_image_run(len(rows), seconds, "The why check")
            except HostedLimit as exc:
                refusal = str(exc)
        slot = st.empty()  # the button and its expected time, gone once the run starts
        left, right = slot.container().columns([1, 2], vertical_alignment="center")
        clicked = left.button(f"Check {len(rows):,} errors", key=state_key(PAGE, "why_group_run"), disabled=refusal is not None,
                              help="Occlusion, input-space saliency, Grad-CAM and the plain gradient of each error, then "
                              "the counterfactual check over them.")
        right.caption(f"Expected: {on_this_server(seconds)}.")
        if refusal is not None:
            st.warning(refusal)
        if not clicked or refusal is not None:
            return
        slot.empty()
        with st.status("The why check...", expanded=True) as status:
            bar = st.progress(0.0, text="Starting...")
            try:
                check = cache.computed_once(
                    "why-group", ctx.store.fingerprint, key, "The why check",
                    lambda: _on_copy(ctx, lambda model: why_check(
                        ctx, model, rows, stats, index, lambda done, total, what: bar.progress(min(1.0, done / total), text=what))),
                    expected_s=seconds)
            except BiasLensError as exc:
                status.update(label="The why check failed", state="error", expanded=False)
                st.error(f"The why check cannot be computed: {exc}")
                return
            status.update(label=f"Checked {len(check.rows):,} images", state="complete", expanded=False)
    errors = check.counterfactual.errors
    if len(errors):
        columns = st.columns(3)
        columns[0].image(enlarged(check.mean_view), caption=f"Mean image of the {len(errors):,} errors", width="stretch")
        for column, target, what in ((columns[1], 0, "predicted"), (columns[2], 1, "true")):
            mean = check.occlusion.mean_map(target, errors)
            column.image(enlarged(overlay(check.mean_view, mean / mean.max() if mean.max() > 0 else mean)),
                         caption=f"Mean occlusion, {what} class, over {len(errors):,} errors", width="stretch")
        how_to_read(f"the mean of the errors' occlusion maps (each scaled to its own maximum, the mean then to its "
                    f"maximum) over the mean image, with the images aligned as the dataset gives them (no "
                    f"registration): a region red here drives many of the errors at the same place in the image. "
                    f"Grid: {check.geometry}.")
    show_check(ctx, check, single=False)
