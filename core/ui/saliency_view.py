"""The Filter saliency page's cached runs and charts (parameter-space saliency, Levin et al.).

The dataset's profiles live on disk with the store (core/methods/saliency/profiles.py); everything
computed from them, or from the model for one image, is run once per inputs with
``cache.computed_once``, keyed by the store's fingerprint, the profiles' key, the reference
set and the explainer's or estimator's ``get_params()``, so a rerun never calls the model
again. Cached objects are explainers' frozen results and fitted clones of estimators, never
the caller's estimator. Runs over many images show their
expected time beside their button, and on a hosted server a visitor's run must pass the
hosted caps (core/services/estimates.py). The neighbours and the fine-tuning check can draw
from an independent image set (``image_set_section``), profiled with this workspace's model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st
import torch
from sklearn.base import clone

from core.data.datasets import ImageDataset
from core.errors import BiasLensError, DataError, redact_paths
from core.methods import (
    FailureModes,
    FilterSaliency,
    FilterSaliencyResult,
    FilterTurnOff,
    FilterTurnOffResult,
    FineTuneCheck,
    FineTuneResult,
    MaskingExperiment,
    MaskingResult,
)
from core.methods.records import setting_defaults
from core.methods.saliency.explain import TOUR_MARGIN, curves_summary, tour_error
from core.methods.saliency.filters import FilterIndex, conv_filters, resolve_method
from core.methods.saliency.profiles import (
    SaliencyProfiles,
    build_independent,
    build_profiles,
    check_same_task,
    find_independent,
    find_profiles,
    nearest,
    nearest_in,
    profile_problem,
    row_norms,
    size_message,
)
from core.methods.saliency.record import RECORD
from core.models.loading import LoadedModel, make_transform
from core.services.estimates import (
    HOSTED_MAX_IMAGES,
    HOSTED_MAX_RUN_SECONDS,
    HostedLimit,
    check_image_run,
    check_saliency_request,
    duration,
    failure_modes_seconds,
    fine_tune_seconds,
    forward_seconds,
    image_fine_tune_seconds,
    image_saliency_seconds,
    masking_seconds,
    model_cost,
    neighbours_seconds,
    norms_seconds,
    on_this_server,
    profile_seconds,
    reference_seconds,
    saliency_means_seconds,
    turn_off_seconds,
)
from core.services.subsets import scope_digest
from core.services.workspace import (
    INDEPENDENT_DEMO_NAME,
    Workspace,
    independent_demo_images,
    independent_sets,
)
from core.store.read import Store
from core.ui import cache
from core.ui.charts import evenly, show
from core.ui.context import PageContext
from core.ui.keys import state_key
from core.ui.listing import workspace_list
from core.ui.method_page import (
    GALLERY_THUMB,
    gallery,
    last_good_result,
    note_good_run,
    run_with_progress,
    save_subset_form,
    scorecard_section,
    settings_widgets,
)
from core.ui.widgets import group_select, how_to_read, image_grid, kept

T = TypeVar("T")
PAGE = "saliency"  # the page's state keys
WHOLE = "Whole dataset"  # the default reference set
PICK_SHOWN = 16  # images in the pick galleries
ORIGIN = "saliency"  # the subset origin of groups found here
MAX_POINTS_PER_LAYER = 400  # the profile figures thin wider layers to this many points
PROFILE_POINTS = 2000  # and each group's curve to this many over all layers (two curves < charts.MAX_ROWS)
LOOP_NOTE = "TorchScript model: per-sample gradients are computed one image at a time (slower)."
OTHER_PAGES = "The Spotlight, Subgroups, Intersectional and ActiVis pages work without them."

RANKING_LABELS = {"magnitude": "|z| (the authors' code)", "signed": "z (the paper's text)"}


def turn_off_ranking() -> str:
    """The ranking the turning-off runs use: the per-image panel's choice, kept (``magnitude`` at first)."""
    return str(st.session_state.get(f"{state_key(PAGE, 'ranking')}:kept", FilterTurnOff().ranking))


# --------------------------------------------------------------------------- the profiles


def layer_choices(ctx: PageContext) -> list[str]:
    """What the build's layer picker offers: the model's conv blocks, else its conv layers.
    Raises ModelError (with what the method needs) for a model without conv layers."""
    index = conv_filters(ctx.model.module)
    return list(ctx.model.conv_layers) or list(index.layers)


def requested_layers(chosen: Sequence[str], choices: Sequence[str]) -> list[str] | None:
    """The ``layers`` argument of the build: None when every choice is taken (the CLI's default)."""
    return None if not chosen or set(chosen) == set(choices) else [c for c in choices if c in chosen]


@st.cache_resource(show_spinner=False, max_entries=8)
def _opened() -> dict[tuple, SaliencyProfiles]:
    """Profiles opened once per (store, layers); only complete ones are kept."""
    return {}


def profiles_for(ctx: PageContext, layers: list[str] | None) -> SaliencyProfiles | None:
    """The store's complete profiles over ``layers``, or None while they are not built."""
    store = ctx.store
    assert store is not None
    slot = (store.fingerprint, tuple(store.layers), None if layers is None else tuple(layers))
    opened = _opened()
    if slot not in opened:
        found = find_profiles(store, layers, model=ctx.model)
        if found is None:
            return None
        opened[slot] = found
    return opened[slot]


def not_prepared(ctx: PageContext, layers: list[str] | None) -> str:
    """What a hosted server's visitor reads when the profiles they asked for are missing
    (visitors cannot start a pass over the whole dataset): no commands, no paths."""
    if layers is not None and profiles_for(ctx, None) is not None:
        return ("This server has prepared the saliency profiles over every conv layer, not over this choice: "
                "pick them all again (the default) to use this page.")
    return ("This server has not prepared the saliency profiles this page needs (a pass over the whole dataset, "
            f"which visitors cannot start). {OTHER_PAGES}")


def build_seconds(ctx: PageContext) -> float:
    """The expected seconds of the dataset's profiles (shown before the build starts)."""
    return profile_seconds(model_cost(ctx.model), ctx.store.n)


def uses_loop(ctx: PageContext, index: FilterIndex, profiles: SaliencyProfiles | None = None) -> bool:
    """Whether per-sample gradients run one image at a time (TorchScript)."""
    return (profiles is not None and profiles.method == "loop") or resolve_method(ctx.model.module, index) == "loop"


def build(ctx: PageContext, layers: list[str] | None, progress: Callable[[int, int, str], None],
          notice: Callable[[str], None]) -> SaliencyProfiles:
    """Compute (or resume) the dataset's profiles, then keep them opened."""
    store = ctx.store
    assert store is not None
    with ctx.run_model() as model:
        built = build_profiles(
            store, model, ctx.dataset, layers, batch_size=32,
            progress=lambda done, total: progress(done, total, "Per-sample gradients"), notice=notice,
        )
    _opened()[(store.fingerprint, tuple(store.layers), None if layers is None else tuple(layers))] = built
    return built


def profile_id(profiles: SaliencyProfiles) -> str:
    return str(profiles.manifest.get("key", profiles.path.name))


def reference_stats(store: Store, profiles: SaliencyProfiles, rows: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, str]:
    """(mu, sigma, reference id): the whole dataset's, or a subset's (computed once)."""
    if rows is None:
        return profiles.mu, profiles.sigma, "all"
    ref = scope_digest(np.unique(rows))
    mu, sigma = cache.computed_once(
        "saliency-reference", store.fingerprint, cache.run_key(profile_id(profiles), ref),
        "The reference statistics", lambda: profiles.reference_stats(rows),
        expected_s=reference_seconds(len(np.unique(rows)), profiles.n_filters),
    )
    return mu, sigma, ref


# --------------------------------------------------------------------------- Fig. 1 and 2


def mean_profiles(store: Store, profiles: SaliencyProfiles, correct: np.ndarray) -> dict[str, np.ndarray]:
    """Mean raw profile s over the correctly classified and the misclassified images, once per server."""
    return cache.computed_once("saliency-means", store.fingerprint, cache.run_key(profile_id(profiles)),
                               "The mean profiles", lambda: profiles.mean_by_outcome(correct),
                               expected_s=saliency_means_seconds(profiles.n, profiles.n_filters))


def per_layer_points(index: FilterIndex) -> int:
    """The most points a layer's sorted profile gets in the profile figure: two curves of
    every layer stay under Altair's row limit (a resnet50 has 26,560 filters in 53 layers)."""
    return max(1, min(MAX_POINTS_PER_LAYER, PROFILE_POINTS // max(1, len(index.layers))))


def thinning_note(index: FilterIndex) -> str | None:
    """What the profile figure's caption says when layers are thinned (None when none is)."""
    most = per_layer_points(index)
    wide = sum(int(c) > most for c in index.counts)
    if not wide:
        return None
    return (f"{wide} of {len(index.layers)} layer(s) have more than {most} filters: each is drawn as {most} evenly spaced "
            f"quantiles of its sorted profile (the shape is kept; {index.n_filters:,} filters in all), so the chart "
            "stays readable and under the browser's limit.")


@st.cache_data(show_spinner=False, max_entries=16)
def profile_frame(means: dict[str, np.ndarray], index: FilterIndex, mu: np.ndarray, sigma: np.ndarray,
                  standardised: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(points, layer boundaries) of the profile figure: per group, each layer's filters
    sorted by value (descending), layers left to right. A layer wider than its share of
    PROFILE_POINTS (at most MAX_POINTS_PER_LAYER) is drawn as that many evenly spaced
    quantiles of its sorted profile (``per_layer_points``), which keeps the curve's shape."""
    records = []
    most = per_layer_points(index)
    for group, mean in means.items():
        values = (mean - mu) / sigma if standardised else mean
        for layer, (name, start, count) in enumerate(zip(index.layers, index.offsets, index.counts, strict=True)):
            part = np.sort(values[start : start + count])[::-1]
            for r in evenly(int(count), most):
                records.append({"position": int(start + r), "value": float(part[r]), "group": group,
                                "layer": name, "layer_no": layer, "rank": int(r)})
    bounds = pd.DataFrame({"position": [int(o) for o in index.offsets[1:]]})
    return pd.DataFrame(records), bounds


def profile_chart(points: pd.DataFrame, bounds: pd.DataFrame, y_title: str, log: bool = False) -> alt.LayerChart:
    """Lines of the mean profile per group, with a dashed rule at each layer boundary (``log``:
    a log y axis, for raw saliency, which spans orders of magnitude; zeros are left out)."""
    if log:
        points = points[points["value"] > 0]
    lines = alt.Chart(points).mark_line(strokeWidth=1.2).encode(
        x=alt.X("position:Q", title="Filters (sorted within each layer; layers left to right)", axis=alt.Axis(labels=False, ticks=False)),
        y=alt.Y("value:Q", title=y_title, scale=alt.Scale(type="log") if log else alt.Undefined, axis=alt.Axis(format="~g")),
        color=alt.Color("group:N", scale=alt.Scale(domain=["correct", "misclassified"], range=["#1f77b4", "#d62728"]), title="images"),
        detail="layer:N",
        tooltip=["layer:N", alt.Tooltip("rank:Q", title="rank in layer"), "group:N", alt.Tooltip("value:Q", format=".3g")],
    )
    rules = alt.Chart(bounds).mark_rule(strokeDash=[3, 3], color="#999").encode(x="position:Q")
    return (rules + lines).properties(height=260)


# --------------------------------------------------------------------------- one image


def readable(ctx: PageContext, rows: Sequence[int] | np.ndarray) -> np.ndarray:
    """Which of these store rows have an image that can still be read (a file deleted or
    damaged since the store was built is left out of the runs, never fatal)."""
    return np.array([ctx.dataset.try_load_image(int(r))[0] is not None for r in rows], dtype=bool)


def image_tensor(ctx: PageContext, rows: Sequence[int]) -> torch.Tensor:
    """(B, 3, S, S) normalised images of these store rows (readable ones), as the model takes them."""
    model = ctx.model
    transform = make_transform(model.input_size, model.mean, model.std)
    return torch.stack([transform(ctx.dataset.load_image(int(r))) for r in rows])


def on_copy(ctx: PageContext, run: Callable[[LoadedModel], T]) -> T:
    """``run`` on a private copy of the model (``PageContext.run_model``)."""
    with ctx.run_model() as model:
        return run(model)


def _image_key(profiles: SaliencyProfiles, ref: str, row: int, params: dict[str, Any], *more: Any) -> str:
    return cache.run_key(profile_id(profiles), ref, int(row), params, *more)


def saliency_for(ctx: PageContext, profiles: SaliencyProfiles, row: int, label: int, stats: tuple[np.ndarray, np.ndarray, str],
                 explainer: FilterSaliency) -> FilterSaliencyResult:
    """FilterSaliency of one image (profile, top filters, input map), computed once."""
    mu, sigma, ref = stats
    if ctx.hosted:
        check_saliency_request(k=int(explainer.k or 0))
    return cache.computed_once(
        "saliency-image", ctx.store.fingerprint, _image_key(profiles, ref, row, explainer.get_params()), "The input-space map",
        lambda: on_copy(ctx, lambda model: explainer.explain(model, ctx.dataset.load_image(row), label, mu=mu, sigma=sigma,
                                                             index=profiles.index)),
        expected_s=image_saliency_seconds(model_cost(ctx.model)),
    )


def turn_off_for(ctx: PageContext, profiles: SaliencyProfiles, row: int, label: int, z: np.ndarray, ref: str,
                 explainer: FilterTurnOff) -> FilterTurnOffResult:
    """Turning-off curves of one image, computed once."""
    return cache.computed_once(
        "saliency-turnoff", ctx.store.fingerprint, _image_key(profiles, ref, row, explainer.get_params()), "Turning filters off",
        lambda: on_copy(ctx, lambda model: explainer.explain(model, image_tensor(ctx, [row]), np.array([label]), z=z[None],
                                                             index=profiles.index)),
        expected_s=turn_off_seconds(model_cost(ctx.model), 1, int(explainer.max_k), int(explainer.n_random)),
    )


def masking_for(ctx: PageContext, profiles: SaliencyProfiles, row: int, label: int, saliency: FilterSaliency,
                explained: FilterSaliencyResult, stats: tuple[np.ndarray, np.ndarray, str],
                explainer: MaskingExperiment) -> MaskingResult:
    """The masking experiment on one image's input map (``explained``, what ``saliency`` gave),
    computed once."""
    mu, sigma, ref = stats
    key = _image_key(profiles, ref, row, explainer.get_params(), saliency.get_params())
    return cache.computed_once(
        "saliency-masking", ctx.store.fingerprint, key, "The masking experiment",
        lambda: on_copy(ctx, lambda model: explainer.explain(model, ctx.dataset.load_image(row), label, saliency_map=explained.map,
                                                             top=explained.top, mu=mu, sigma=sigma, index=profiles.index)),
        expected_s=masking_seconds(model_cost(ctx.model)),
    )


def fine_tune_for(ctx: PageContext, profiles: SaliencyProfiles, row: int, label: int, z: np.ndarray, ref: str,
                  image_set: ImageSet, neighbours: np.ndarray, labels: np.ndarray, explainer: FineTuneCheck) -> FineTuneResult:
    """The one-step fine-tuning check on one image and its neighbours (rows of ``image_set``), computed once."""
    if ctx.hosted:
        check_saliency_request(k=int(explainer.k or 0))
    present = set_readable(image_set, neighbours)
    neighbours, labels = np.asarray(neighbours)[present], np.asarray(labels)[present]
    key = _image_key(profiles, ref, row, explainer.get_params(), image_set.name, profile_id(image_set.profiles),
                     [int(r) for r in neighbours])
    return cache.computed_once(
        "saliency-finetune", ctx.store.fingerprint, key, "The fine-tuning check",
        lambda: on_copy(ctx, lambda model: explainer.explain(
            model, image_tensor(ctx, [row]), label, z=z, index=profiles.index,
            neighbours=set_tensor(ctx, image_set, neighbours) if len(neighbours) else None,
            neighbour_targets=np.asarray(labels, dtype=np.int64) if len(neighbours) else None)),
        expected_s=image_fine_tune_seconds(model_cost(ctx.model), len(neighbours), int(explainer.n_random)),
    )


def layer_columns(index: FilterIndex, span: tuple[str, str]) -> np.ndarray:
    """The profile columns of the conv layers from ``span[0]`` to ``span[1]`` (network order)."""
    names = list(index.layers)
    first, last = sorted((names.index(span[0]), names.index(span[1])))
    return index.columns(names[first : last + 1])


def neighbours_for(store: Store, profiles: SaliencyProfiles, row: int, stats: tuple[np.ndarray, np.ndarray, str],
                   k: int, columns: np.ndarray, candidates: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest images in saliency space (cosine of z over ``columns``), computed once."""
    mu, sigma, ref = stats
    pid = profile_id(profiles)
    affine = profiles.z_affine(mu, sigma)
    cols_key = scope_digest(columns)
    norms = cache.computed_once(
        "saliency-norms", store.fingerprint, cache.run_key(pid, ref, cols_key), "The saliency-space norms",
        lambda: row_norms(profiles.profiles, columns, affine), expected_s=norms_seconds(profiles.n, profiles.n_filters),
    )
    cand_key = None if candidates is None else scope_digest(candidates)
    return cache.computed_once(
        "saliency-neighbours", store.fingerprint, cache.run_key(pid, ref, cols_key, cand_key, int(row), int(k)),
        "The saliency-space neighbours",
        lambda: nearest(profiles.profiles, profiles.z([row], mu, sigma)[0], k=k, columns=columns, rows=candidates,
                        query_row=row, affine=affine, norms=norms),
        expected_s=neighbours_seconds(profiles.n if candidates is None else len(candidates), profiles.n_filters,
                                      len(columns)),
    )


# --------------------------------------------------------------------------- the neighbours' image set


THIS_DATASET = "this dataset"  # the neighbours' default image set


@dataclass(frozen=True)
class ImageSet:
    """Where the saliency-space neighbours and the fine-tuning check's images come from: this
    dataset, or another image set profiled with this workspace's model (``independent``)."""

    name: str
    title: str
    store: Store
    profiles: SaliencyProfiles
    dataset: ImageDataset
    independent: bool

    def meta(self) -> pd.DataFrame:
        return cache.meta_for(self.store)


@st.cache_resource(show_spinner="Rendering the independent demo images...", max_entries=2)
def _independent_demo(_workspace: Workspace, workspace_key: str) -> ImageDataset:
    return independent_demo_images(_workspace)


def other_dataset(ctx: PageContext, name: str) -> ImageDataset:
    """The image set ``name`` (``independent_sets``): the built-in independent demo images or
    another workspace's dataset, loaded once."""
    if name == INDEPENDENT_DEMO_NAME:
        return _independent_demo(ctx.workspace, ctx.key)
    workspace = workspace_list().workspaces[name]
    return cache.dataset_for(workspace, workspace.key())


def build_other(ctx: PageContext, profiles: SaliencyProfiles, name: str, dataset: ImageDataset,
                progress: Callable[[int, int, str], None]) -> tuple[Store, SaliencyProfiles]:
    """The image set's store and profiles with this workspace's model, computed (or resumed)."""
    with ctx.run_model() as model:
        return build_independent(ctx.store, model, dataset, name, ctx.dataset, profiles.manifest.get("requested"),
                                 batch_size=32, progress=lambda done, total: progress(done, total, "Per-sample gradients"))


def _other_set(ctx: PageContext, profiles: SaliencyProfiles, name: str, title: str) -> tuple[ImageDataset, ImageSet | None]:
    """The image set ``name``'s dataset and, once profiled with this model, the set itself (None
    before). Raises BiasLensError when it cannot be loaded or does not match this dataset."""
    dataset = other_dataset(ctx, name)
    slot = (ctx.store.fingerprint, name, dataset.fingerprint(), profile_id(profiles))
    opened = _opened_sets()
    if slot not in opened:
        check_same_task(ctx.store, dataset, ctx.dataset, title)
        found = find_independent(ctx.store, ctx.model, dataset, name, profiles.manifest.get("requested"))
        if found is None:
            return dataset, None
        opened[slot] = ImageSet(name, title, found[0], found[1], dataset, True)
    return dataset, opened[slot]


@st.cache_resource(show_spinner=False, max_entries=8)
def _opened_sets() -> dict[tuple, ImageSet]:
    """Independent image sets opened once per (store, set, its content, profiles); only profiled ones are kept."""
    return {}


def current_image_set(ctx: PageContext, profiles: SaliencyProfiles) -> ImageSet:
    """The image set picked in ``image_set_section`` (kept), without drawing anything: this
    dataset while the picked one is not usable (the picker says why)."""
    own = ImageSet(THIS_DATASET, "this dataset", ctx.store, profiles, ctx.dataset, False)
    name = st.session_state.get(f"{state_key(PAGE, 'image_set', ctx.key)}:kept", THIS_DATASET)
    sets = independent_sets(workspace_list(), ctx.workspace)
    if name not in sets:
        return own
    try:
        return _other_set(ctx, profiles, name, sets[name])[1] or own
    except BiasLensError:
        return own


def image_set_section(ctx: PageContext, profiles: SaliencyProfiles) -> ImageSet:
    """The picker of the image set the neighbours and the fine-tuning check draw from: this
    dataset (default) or an independent one on the same classes, as the paper takes them from
    a separate set (Sec. 3.3). Another set needs its profiles with this model: computed on a
    button here, or prepared on a hosted server; until then, and when the set does not match
    (other classes, image size), the page says why and uses this dataset."""
    own = ImageSet(THIS_DATASET, "this dataset", ctx.store, profiles, ctx.dataset, False)
    sets = independent_sets(workspace_list(), ctx.workspace)
    key = state_key(PAGE, "image_set", ctx.key)
    if st.session_state.get(f"{key}:kept", THIS_DATASET) not in [THIS_DATASET, *sets]:
        st.session_state[f"{key}:kept"] = THIS_DATASET
    name = st.selectbox(
        "Neighbours from", [THIS_DATASET, *sets], format_func=lambda n: sets.get(n, "This dataset"),
        **kept(key, THIS_DATASET),
        help="The paper standardises profiles against the validation set but takes the neighbours of its fine-tuning "
        "check from an independent set (ImageNet-v2), so their labels play no part in picking the filters. Another "
        "set's images are profiled with this workspace's model and standardised against this dataset's reference.")
    if name == THIS_DATASET:
        return own
    title = sets[name]
    try:
        dataset, found = _other_set(ctx, profiles, name, title)
    except BiasLensError as exc:
        st.error(f"{redact_paths(str(exc)) if ctx.hosted else exc} The neighbours below come from this dataset.")
        return own
    if found is None:
        if ctx.hosted:
            st.info(f"This server has not prepared the profiles of '{title}' with this model: the neighbours below "
                    "come from this dataset.")
            return own
        seconds = forward_seconds(model_cost(ctx.model), len(dataset)) + profile_seconds(model_cost(ctx.model), len(dataset))
        st.info(f"'{title}' needs its saliency profiles with this model: {size_message(len(dataset), profiles.index)} "
                f"Expected: {on_this_server(seconds)}. Until then the neighbours below come from this dataset.")
        if not st.button(f"Profile '{title}' with this model", key=state_key(PAGE, "build_set", ctx.key, name),
                         icon=":material/tune:"):
            return own
        try:
            with cache.queued("The independent set's profiles", expected_s=seconds):
                store, other = run_with_progress(
                    f"Profiling '{title}'...", lambda progress: build_other(ctx, profiles, name, dataset, progress),
                    lambda built: f"Saliency profiles of {built[1].n:,} images of '{title}'", unit="image")
        except BiasLensError as exc:
            st.error(f"The profiles of '{title}' cannot be computed: {exc} The neighbours below come from this dataset.")
            return own
        found = ImageSet(name, title, store, other, dataset, True)
    st.caption(f"Neighbours from '{title}' ({found.profiles.n:,} images, profiled with this model, standardised against "
               "this dataset's reference); an image's own file, if the set holds it too (same id), is left out.")
    return found


def twin_rows(image_set: ImageSet, image_id: str) -> np.ndarray:
    """The rows of ``image_set`` with this id (the same image held by both sets), left out of its neighbours."""
    if not image_set.independent:
        return np.empty(0, dtype=np.int64)
    return np.flatnonzero(image_set.meta()["id"].astype(str).to_numpy() == str(image_id))


def set_tensor(ctx: PageContext, image_set: ImageSet, rows: Sequence[int]) -> torch.Tensor:
    """(B, 3, S, S) normalised images of these rows of ``image_set``, as the model takes them."""
    transform = make_transform(ctx.model.input_size, ctx.model.mean, ctx.model.std)
    return torch.stack([transform(image_set.dataset.load_image(int(r))) for r in rows])


def set_readable(image_set: ImageSet, rows: Sequence[int] | np.ndarray) -> np.ndarray:
    """Which of these rows of ``image_set`` still have a readable image."""
    return np.array([image_set.dataset.try_load_image(int(r))[0] is not None for r in rows], dtype=bool)


def set_neighbours(image_set: ImageSet, profiles: SaliencyProfiles, row: int, image_id: str,
                   stats: tuple[np.ndarray, np.ndarray, str], k: int, columns: np.ndarray,
                   errors_only: bool) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest images of an independent ``image_set`` to row ``row`` of this dataset
    (z against this dataset's reference, over ``columns``; ``errors_only``: among the images
    the model gets wrong), computed once."""
    mu, sigma, ref = stats
    candidates = np.flatnonzero(~image_set.meta()["correct"].to_numpy()) if errors_only else None
    key = cache.run_key(profile_id(profiles), profile_id(image_set.profiles), ref, scope_digest(columns), errors_only,
                        int(row), int(k))
    return cache.computed_once(
        "saliency-set-neighbours", image_set.store.fingerprint, key, "The neighbours in the independent set",
        lambda: nearest_in(image_set.profiles, profiles.z([row], mu, sigma)[0], mu, sigma, k, columns=columns,
                           rows=candidates, leave_out=twin_rows(image_set, image_id)),
        expected_s=neighbours_seconds(image_set.profiles.n, image_set.profiles.n_filters, len(columns)),
    )


def set_gallery(ctx: PageContext, image_set: ImageSet, rows: np.ndarray, extra: Sequence[str]) -> None:
    """Thumbnails of these rows of an independent image set (its own labels and this model's predictions)."""
    part = image_set.meta().iloc[np.asarray(rows, dtype=np.int64)]
    pngs = cache.thumbnail_pngs(image_set.dataset, f"{ctx.key}:{image_set.name}", tuple(int(r) for r in part["row"]),
                                GALLERY_THUMB, tuple(not c for c in part["correct"]))
    image_grid(pngs, part, extra=extra)


# --------------------------------------------------------------------------- sets of images


def aggregate_turn_off(ctx: PageContext, profiles: SaliencyProfiles, rows: np.ndarray, labels: np.ndarray,
                       stats: tuple[np.ndarray, np.ndarray, str], explainer: FilterTurnOff,
                       progress: Callable[[int, int, str], None] | None = None, batch: int = 10) -> pd.DataFrame:
    """``FilterTurnOffResult.summary()`` over these images (bootstrap intervals over images),
    explained in batches of ``batch`` images so the page can show progress; computed once.
    On a hosted server the run must pass the hosted caps (HostedLimit otherwise)."""
    mu, sigma, ref = stats
    seconds = turn_off_estimate(ctx, len(rows), explainer)
    if ctx.hosted:
        check_image_run(len(rows), seconds, "Turning filters off")

    def compute() -> pd.DataFrame:
        with ctx.run_model() as model:
            return summarise(model)

    def summarise(model: LoadedModel) -> pd.DataFrame:
        parts = []
        for start in range(0, len(rows), batch):
            present = readable(ctx, rows[start : start + batch])  # images lost since the store was built are left out
            part, part_labels = rows[start : start + batch][present], labels[start : start + batch][present]
            if progress:
                progress(start, len(rows), "Turning filters off")
            if not len(part):
                continue
            turned = explainer.explain(model, image_tensor(ctx, part), part_labels,
                                       z=profiles.z(part, mu, sigma), index=profiles.index)
            curves = turned.curves.copy()
            curves["image"] += start
            parts.append(curves)
        if progress:
            progress(len(rows), len(rows), "Turning filters off")
        if not parts:
            raise DataError("None of these images can be read any more (deleted or damaged since the store was built).")
        return curves_summary(pd.concat(parts, ignore_index=True), seed=explainer.seed)

    key = cache.run_key(profile_id(profiles), ref, explainer.get_params(), scope_digest(rows))
    return cache.computed_once("saliency-aggregate", ctx.store.fingerprint, key, "Turning filters off over many images", compute,
                               expected_s=seconds)


def turn_off_estimate(ctx: PageContext, images: int, explainer: FilterTurnOff) -> float:
    """Expected seconds of turning filters off on ``images`` images."""
    return turn_off_seconds(model_cost(ctx.model), images, int(explainer.max_k), int(explainer.n_random))


def fine_tune_estimate(ctx: PageContext, profiles: SaliencyProfiles, images: int, explainer: FineTuneCheck) -> float:
    """Expected seconds of the fine-tuning check on ``images`` images."""
    return fine_tune_seconds(model_cost(ctx.model), images, profiles.n_filters, profiles.n,
                             int(explainer.n_neighbours), int(explainer.n_random))


def cached_aggregate(store: Store, profiles: SaliencyProfiles, rows: np.ndarray, ref: str,
                     explainer: FilterTurnOff | FineTuneCheck, image_set: ImageSet | None = None) -> pd.DataFrame | None:
    """The aggregate already computed for these inputs, or None (nothing is computed)."""
    kind = "saliency-aggregate" if isinstance(explainer, FilterTurnOff) else "saliency-finetune-aggregate"
    key = cache.run_key(profile_id(profiles), ref, explainer.get_params(), scope_digest(rows), *_set_key(image_set))
    return cache.cached_result(kind, store.fingerprint, key)


def aggregate_fine_tune(ctx: PageContext, profiles: SaliencyProfiles, rows: np.ndarray, labels: np.ndarray,
                        stats: tuple[np.ndarray, np.ndarray, str], explainer: FineTuneCheck,
                        progress: Callable[[int, int, str], None] | None = None,
                        image_set: ImageSet | None = None) -> pd.DataFrame:
    """``FineTuneCheck.aggregate`` over these misclassified images (Fig. 6 on the dataset level):
    each image's check against its nearest misclassified neighbours in saliency space (all
    layers) among ``image_set`` (None: this dataset), as the paper restricts the neighbours to
    errors; computed once. On a hosted server the run must pass the hosted caps (HostedLimit
    otherwise)."""
    mu, sigma, ref = stats
    image_set = image_set or ImageSet(THIS_DATASET, "this dataset", ctx.store, profiles, ctx.dataset, False)
    seconds = fine_tune_estimate(ctx, image_set.profiles, len(rows), explainer)
    if ctx.hosted:
        check_image_run(len(rows), seconds, "The fine-tuning check")
    columns = np.arange(profiles.index.n_filters)
    store = ctx.store
    errors = np.flatnonzero(~image_set.meta()["correct"].to_numpy())
    set_labels = image_set.meta()["label_idx"].to_numpy()
    ids = ctx.meta()["id"].to_numpy()

    def compute() -> pd.DataFrame:
        with ctx.run_model() as model:
            return checks(model)

    def checks(model: LoadedModel) -> pd.DataFrame:  # runs inside one queued run: no nested computed_once
        affine = image_set.profiles.z_affine(mu, sigma)
        norms = row_norms(image_set.profiles.profiles, columns, affine)
        frames = []
        for i, row in enumerate(rows):
            if progress:
                progress(i, len(rows), "Fine-tuning check")
            if not readable(ctx, [row])[0]:  # an image lost since the store was built is left out
                continue
            query = profiles.z([int(row)], mu, sigma)[0]
            candidates = np.setdiff1d(errors, twin_rows(image_set, ids[int(row)]))
            near, _ = nearest(image_set.profiles.profiles, query, k=explainer.n_neighbours, columns=columns, rows=candidates,
                              query_row=None if image_set.independent else int(row), affine=affine, norms=norms)
            near = near[set_readable(image_set, near)]
            checked = explainer.explain(
                model, image_tensor(ctx, [int(row)]), int(labels[i]), z=query, index=profiles.index,
                neighbours=set_tensor(ctx, image_set, near) if len(near) else None,
                neighbour_targets=set_labels[near] if len(near) else None)
            frames.append(checked.results)
        if progress:
            progress(len(rows), len(rows), "Fine-tuning check")
        if not frames:
            raise DataError("None of these images can be read any more (deleted or damaged since the store was built).")
        return FineTuneCheck.aggregate(frames, seed=explainer.seed)

    key = cache.run_key(profile_id(profiles), ref, explainer.get_params(), scope_digest(rows), *_set_key(image_set))
    return cache.computed_once("saliency-finetune-aggregate", store.fingerprint, key, "The fine-tuning check over many images",
                               compute, expected_s=seconds)


def _set_key(image_set: ImageSet | None) -> tuple[str, ...]:
    """The extra cache-key parts of a run drawing from another image set (none for this dataset)."""
    return () if image_set is None or not image_set.independent else (image_set.name, profile_id(image_set.profiles))


def failure_modes_for(store: Store, profiles: SaliencyProfiles, rows: np.ndarray, stats: tuple[np.ndarray, np.ndarray, str],
                      columns: np.ndarray, estimator: FailureModes) -> FailureModes:
    """FailureModes over these misclassified images' z (on ``columns``), fitted once (a clone)."""
    mu, sigma, ref = stats
    key = cache.run_key(profile_id(profiles), ref, estimator.get_params(), scope_digest(rows), scope_digest(columns))
    return cache.computed_once(
        "saliency-modes", store.fingerprint, key, "The failure modes",
        lambda: clone(estimator).fit(profiles.z(rows, mu, sigma), rows, profiles.index, columns),
        expected_s=failure_modes_seconds(len(rows), len(columns)),
    )


# --------------------------------------------------------------------------- charts and tables


def curves_frame(curves: pd.DataFrame) -> pd.DataFrame:
    """One image's turning-off curves, long: order, k, measure, value (low = high = value)."""
    long = curves.melt(id_vars=["order", "k"], value_vars=["true_confidence", "wrong_confidence"], var_name="measure")
    long["measure"] = long["measure"].map({"true_confidence": "true class (solid)", "wrong_confidence": "predicted class (dashed)"})
    long["low"] = long["high"] = long["value"]
    return long[["order", "k", "measure", "value", "low", "high"]]


def summary_frame(summary: pd.DataFrame) -> pd.DataFrame:
    """``FilterTurnOffResult.summary()`` long: order, k, measure, value, low, high."""
    parts = []
    for column, name in (("true_confidence", "true class (solid)"), ("wrong_confidence", "predicted class (dashed)")):
        part = summary[["order", "k", column, f"{column}_low", f"{column}_high"]].copy()
        part.columns = ["order", "k", "value", "low", "high"]
        part["measure"] = name
        parts.append(part)
    return pd.concat(parts, ignore_index=True)[["order", "k", "measure", "value", "low", "high"]]


def turn_off_chart(frame: pd.DataFrame, bands: bool) -> alt.LayerChart:
    """Confidence vs filters turned off, one colour per order (salient, random, least), solid
    for the true class and dashed for the wrong one; with ``bands`` the 95% intervals."""
    colour = alt.Color("order:N", scale=alt.Scale(domain=["salient", "random", "least"], range=["#d62728", "#7f7f7f", "#2ca02c"]),
                       title="filters turned off")
    x = alt.X("k:Q", title="Filters turned off (k)")
    lines = alt.Chart(frame).mark_line(point=alt.OverlayMarkDef(size=14)).encode(
        x=x, y=alt.Y("value:Q", title="Softmax confidence", scale=alt.Scale(domain=[0, 1])), color=colour,
        strokeDash=alt.StrokeDash("measure:N", title="confidence of",
                                  scale=alt.Scale(domain=["true class (solid)", "predicted class (dashed)"], range=[[1, 0], [5, 3]]),
                                  legend=alt.Legend(symbolOpacity=0)),  # the labels say which dash
        tooltip=["order:N", "k:Q", "measure:N", alt.Tooltip("value:Q", format=".3f"),
                 alt.Tooltip("low:Q", format=".3f", title="95% low"), alt.Tooltip("high:Q", format=".3f", title="95% high")],
    )
    chart = lines
    if bands:
        area = alt.Chart(frame).mark_area(opacity=0.15).encode(x=x, y="low:Q", y2="high:Q", color=colour, detail="measure:N")
        chart = area + lines
    return chart.properties(height=280)


def top_filters_table(explained: FilterSaliencyResult) -> pd.DataFrame:
    """The picked image's top filters: rank, layer, filter, z."""
    table = pd.DataFrame(explained.top_filters)[["layer", "filter", "z"]]
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    return table


def masked_view(view: np.ndarray, mask: np.ndarray, mean: Sequence[float]) -> np.ndarray:
    """The image as the model sees it with the masked pixels set to the dataset mean colour."""
    out = view.copy()
    out[mask] = (np.asarray(mean) * 255).round().astype(np.uint8)
    return out


def fine_tune_table(summary: pd.DataFrame) -> pd.DataFrame:
    """``FineTuneCheck.aggregate`` as one readable row per variant: each metric's mean with
    its 95% interval, e.g. '27% (13-40%)' or '+0.031 (+0.010 to +0.052)'."""

    def share(mean: float, low: float, high: float) -> str:
        return "—" if not np.isfinite(mean) else f"{mean:.0%} ({low:.0%}–{high:.0%})"

    def change(mean: float, low: float, high: float) -> str:
        return "—" if not np.isfinite(mean) else f"{mean:+.3f} ({low:+.3f} to {high:+.3f})"

    names = {"image_corrected": ("image corrected", share), "image_true_confidence_change": ("Δ true conf. (image)", change),
             "neighbours_corrected_share": ("neighbours corrected", share),
             "neighbours_true_confidence_change": ("Δ true conf. (neighbours)", change)}
    rows = []
    for record in summary.to_dict("records"):
        row = {"variant": record["variant"], "images": int(record["n"])}
        for metric, (title, fmt) in names.items():
            row[title] = fmt(float(record[metric]), float(record[f"{metric}_low"]), float(record[f"{metric}_high"]))
        rows.append(row)
    return pd.DataFrame(rows)


def run_on_demand(cached: T | None, possible: bool, button: str, key: str, label: str, work: Callable[[Any], T],
                  done: Callable[[T], str], what: str, help: str | None = None, seconds: float | None = None,
                  check: Callable[[], None] | None = None,
                  good: tuple[Callable[[], None], Callable[[], T | None]] | None = None) -> T | None:
    """A slow run that starts only on its button: the cached result if there is one, else,
    when the button is pressed, the run with progress (a failure shown as an error). Beside
    the button, its expected ``seconds``; ``check`` raising HostedLimit disables the button
    and says why. ``good`` (note, last): ``note()`` remembers this run as the last good one
    when it has a result; after a failure, ``last()`` gives that run's result to show
    instead (``method_page.note_good_run`` and ``last_good_result``)."""
    if cached is not None and good is not None:
        good[0]()
    if cached is not None or not possible:
        return cached
    refusal = None
    if check is not None:
        try:
            check()
        except HostedLimit as exc:
            refusal = str(exc)
    left, right = st.columns([1, 2], vertical_alignment="center")
    clicked = left.button(button, key=key, help=help, disabled=refusal is not None)
    if seconds is not None:
        right.caption(f"Expected: {on_this_server(seconds)}.")
    if refusal is not None:
        st.warning(refusal)
    if not clicked or refusal is not None:
        return None
    try:
        result = run_with_progress(label, work, done, unit="image")
    except BiasLensError as exc:
        st.error(f"{what} cannot be computed: {exc}")
        return None if good is None else good[1]()
    if good is not None:
        good[0]()
    return result


def kept_aggregate(ctx: PageContext, slot: str, run: tuple[Any, ...]) -> tuple[Callable[[], None], Callable[[], Any]]:
    """``run_on_demand``'s ``good`` for an aggregate run: ``run`` (the profiles, rows, reference,
    explainer and image set ``cached_aggregate`` finds it by) noted as the last good one, and the
    last good one's cached result."""
    return (lambda: note_good_run(PAGE, ctx.key, run, slot),
            lambda: last_good_result(PAGE, ctx.key, lambda good: cached_aggregate(ctx.store, *good), slot))


def mode_boxes(ctx: PageContext, meta: pd.DataFrame, modes: FailureModes, shown: int) -> None:
    """Each failure mode in a box: its size, its commonest confusions, its shared top filters
    and its most typical images as one strip (one image element, not one per image)."""
    correct = meta["correct"].to_numpy()
    for g in modes.groups_:
        with st.container(border=True):
            cells = meta.iloc[g.rows].groupby(["label", "pred"]).size().sort_values(ascending=False).head(2)
            common = ", ".join(f"{t} → {p} ({n})" for (t, p), n in cells.items())
            st.markdown(f"**Mode #{g.index}** · {g.size} images · most common: {common}")
            st.caption("Shared top filters: " + ", ".join(f"{f['layer']}[{f['filter']}] (z̄ {f['mean_z']:.1f})" for f in g.top_filters[:6]))
            rows = tuple(int(r) for r in g.rows[:shown])
            st.image(cache.strip_png(ctx.dataset, ctx.key, rows, 64, tuple(bool(not correct[r]) for r in rows), shown),
                     width="stretch", output_format="PNG")


# --------------------------------------------------------------------------- the page's last two sections


def aggregate_section(ctx: PageContext, profiles: SaliencyProfiles, ref: str, stats: tuple[np.ndarray, np.ndarray, str],
                      wrong_rows: np.ndarray, subset_names: Sequence[str], max_k: int, tune: FineTuneCheck) -> None:
    """Turning filters off (Fig. 3) and the fine-tuning check (Fig. 6, with ``tune``'s settings)
    over many misclassified images, each on its button, with 95% bootstrap intervals."""
    st.subheader("Turning filters off over many errors")
    store, labels_idx = ctx.store, ctx.meta()["label_idx"].to_numpy()
    c1, c2 = st.columns([2, 1])
    with c1:
        _, subset_rows = group_select("Images", state_key(PAGE, "agg_source", ctx.key),
                                      {n: ctx.subsets().get(n).rows for n in subset_names}, "All misclassified images",
                                      "Only the misclassified images of a subset are used.")
    cap = int(c2.number_input("At most (highest loss first)", 2, HOSTED_MAX_IMAGES if ctx.hosted else 5000,
                              **kept(state_key(PAGE, "agg_cap"), 100)))
    if ctx.hosted:
        st.caption(f"On this server, a run over many images takes at most {HOSTED_MAX_IMAGES} images and about "
                   f"{duration(HOSTED_MAX_RUN_SECONDS)} by its estimate.")
    pool = wrong_rows if subset_rows is None else wrong_rows[np.isin(wrong_rows, subset_rows)]
    rows = pool[:cap]
    ranking = turn_off_ranking()
    turn_off = FilterTurnOff(max_k=max_k, ranking=ranking)
    st.caption(f"Filters are ranked by {RANKING_LABELS[ranking]} (the choice above, beside this image's curves); a filter "
               "turned off has its weights and its channel of the conv bias and of the BatchNorm after it zeroed, so its "
               "feature map is 0, as Levin et al. do.")
    if not len(rows):
        st.info("No misclassified images in this set.")
    off_seconds = turn_off_estimate(ctx, len(rows), turn_off)
    summary = run_on_demand(
        cached_aggregate(store, profiles, rows, ref, turn_off) if len(rows) else None, len(rows) > 0,
        f"Turn filters off on {len(rows):,} images", state_key(PAGE, "aggregate"), "Turning filters off...",
        lambda progress: aggregate_turn_off(ctx, profiles, rows, labels_idx[rows], stats, turn_off, progress),
        lambda s: f"Turned filters off on {int(s['n'].max()):,} images", "The aggregate", seconds=off_seconds,
        check=(lambda: check_image_run(len(rows), off_seconds, "Turning filters off")) if ctx.hosted else None,
        good=kept_aggregate(ctx, "turn_off", (profiles, rows, ref, turn_off, None)),
    )
    if summary is not None:
        show(turn_off_chart, summary_frame(summary), True)
        how_to_read(f"mean confidence over {int(summary['n'].max()):,} misclassified images with its 95% bootstrap interval "
                    "(bands); the salient order should separate from random and least salient.")

    image_set = current_image_set(ctx, profiles)
    tune_seconds = fine_tune_estimate(ctx, image_set.profiles, len(rows), tune)
    tuned = run_on_demand(
        cached_aggregate(store, profiles, rows, ref, tune, image_set) if len(rows) else None, len(rows) > 0,
        f"Fine-tuning check on {len(rows):,} images", state_key(PAGE, "aggregate_tune"), "Fine-tuning check...",
        lambda progress: aggregate_fine_tune(ctx, profiles, rows, labels_idx[rows], stats, tune, progress, image_set),
        lambda t: f"Checked {int(t['n'].max()):,} images", "The fine-tuning check",
        help="Each image's one-step update (k filters, the step above), measured on it and its 10 nearest misclassified "
        f"neighbours in saliency space, from {image_set.title} (the 'Neighbours from' choice above).", seconds=tune_seconds,
        check=(lambda: check_image_run(len(rows), tune_seconds, "The fine-tuning check")) if ctx.hosted else None,
        good=kept_aggregate(ctx, "fine_tune", (profiles, rows, ref, tune, image_set)),
    )
    if tuned is not None:
        st.dataframe(fine_tune_table(tuned), hide_index=True)
        how_to_read(f"mean over {int(tuned['n'].max()):,} misclassified images with a 95% bootstrap interval; "
                    "salient filters should correct more images, and more of their neighbours, than random or least salient ones.")


def failure_modes_section(ctx: PageContext, profiles: SaliencyProfiles, stats: tuple[np.ndarray, np.ndarray, str],
                          index: FilterIndex, wrong_rows: np.ndarray, shown: int) -> None:
    """The misclassified images grouped by their salient filters (FailureModes over a layer
    range), each group savable as a subset, and their scorecard beside the confusion-cell
    baseline on a workspace with planted slices."""
    st.subheader("Failure modes")
    if len(wrong_rows) < 2:
        st.info("Failure modes group misclassified images: this dataset has fewer than 2.")
        return
    store, meta, layers = ctx.store, ctx.meta(), list(index.layers)
    c1, c2 = st.columns([1, 2])
    n_groups = settings_widgets(PAGE, RECORD.settings_named("n_groups"), setting_defaults(RECORD, store.n), (c1,))["n_groups"]
    span_key = state_key(PAGE, "fm_layers", ctx.key)
    if st.session_state.get(f"{span_key}:kept") is None or any(x not in layers for x in st.session_state[f"{span_key}:kept"]):
        st.session_state[f"{span_key}:kept"] = (layers[0], layers[-1])
    span = c2.select_slider("Layer range", layers, **kept(span_key, (layers[0], layers[-1]))) if len(layers) > 1 else (layers[0],) * 2
    estimator = FailureModes(n_groups=n_groups, min_size=min(5, max(1, len(wrong_rows) // 10)))
    try:
        with st.spinner("Grouping the errors by their salient filters (cached afterwards)..."):
            modes = failure_modes_for(store, profiles, np.sort(wrong_rows), stats, layer_columns(index, tuple(span)), estimator)
    except BiasLensError as exc:
        st.error(f"The failure modes cannot be computed: {exc}")
        return
    st.caption(f"{len(modes.groups_)} failure mode(s) among {len(wrong_rows):,} misclassified images (k-means in cosine "
               "geometry of z). " + " ".join(modes.notes_))
    mode_boxes(ctx, meta, modes, shown)
    how_to_read("each box is a group of errors whose salient filters agree; its most typical images come first "
                "(errors framed and crossed in red).")
    if modes.groups_:  # one save form for the chosen mode, not one per mode (fewer widgets: faster pages)
        c1, c2 = st.columns([1, 3])
        chosen = c1.selectbox("Save failure mode", [g.index for g in modes.groups_], format_func=lambda i: f"#{i}",
                              key=state_key(PAGE, "save_mode_pick", ctx.key))
        mode = next(g for g in modes.groups_ if g.index == chosen)
        with c2:
            save_subset_form(ctx, mode.rows, f"failure mode {mode.index}", ORIGIN,
                             f"failure mode {mode.index} of {len(modes.groups_)} (saliency, layers {span[0]}..{span[1]})",
                             key=state_key(PAGE, "save_mode", ctx.key, mode.index), params={**estimator.get_params(), "mode": mode.index})
    scorecard_section(store, [g.rows for g in modes.groups_], [f"failure mode #{g.index}" for g in modes.groups_],
                      "for each planted slice, the failure mode whose 10 most typical errors hold most slice images "
                      "(P@10; ≥ 0.8 = identified) and the share of the slice it contains (recall).",
                      members=[g.rows for g in modes.groups_])


# --------------------------------------------------------------------------- the page's first sections


def reference_section(ctx: PageContext, profiles: SaliencyProfiles,
                      subset_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray, str]:
    """The reference set picker (the whole dataset or a saved subset) and its statistics
    (mu, sigma, key); a deleted or unusable subset falls back to the whole dataset, said so."""
    ref_key = state_key(PAGE, "reference", ctx.key)
    if st.session_state.get(f"{ref_key}:kept", WHOLE) not in [WHOLE, *subset_names]:
        st.warning(f"The reference subset '{st.session_state[f'{ref_key}:kept']}' no longer exists: the whole dataset is used.")
        st.session_state[f"{ref_key}:kept"] = WHOLE
    reference = st.selectbox(
        "Reference set", [WHOLE, *subset_names], **kept(ref_key, WHOLE),
        help="Profiles are standardised (z = (s − μ) / σ) against this set's mean and standard deviation per filter.",
    )
    ref_rows = None if reference == WHOLE else np.asarray(ctx.subsets().get(reference).rows, dtype=np.int64)
    try:
        return reference_stats(ctx.store, profiles, ref_rows)
    except BiasLensError as exc:
        st.error(f"{exc}")
        return reference_stats(ctx.store, profiles, None)


def profile_figures(store: Store, profiles: SaliencyProfiles, correct: np.ndarray,
                    stats: tuple[np.ndarray, np.ndarray, str]) -> None:
    """The paper's Fig. 1 and 2: raw and standardised profiles averaged over correct and
    misclassified images, filters sorted within each layer, layers left to right."""
    mu, sigma, _ = stats
    means = mean_profiles(store, profiles, correct)
    if not any(np.nan_to_num(np.asarray(m, dtype=np.float64)).any() for m in means.values()):
        st.info(
            "Every filter's saliency is 0 on every image: the loss does not change with these filters' weights "
            "(e.g. a model that gives every image the same output, as an untrained one can). There is no profile to "
            "draw and no filter stands out; the sections below have nothing to rank either.", icon=":material/info:")
        return
    left, right = st.columns(2)
    with left:
        st.markdown("**Raw saliency profile** (mean over images)")
        points, bounds = profile_frame(means, profiles.index, mu, sigma, standardised=False)
        show(profile_chart, points, bounds, "mean |∂L/∂W| per filter (log)", log=True)
    with right:
        st.markdown("**Standardised profile** (mean z against the reference set)")
        points, bounds = profile_frame(means, profiles.index, mu, sigma, standardised=True)
        show(profile_chart, points, bounds, "mean z per filter")
    note = thinning_note(profiles.index)
    if note:
        st.caption(note)
    how_to_read("each layer's filters sorted by value, layers left to right between dashed lines; misclassified images "
                "(red) have higher saliency than correct ones (blue), most visibly once standardised.")


def pick_image(ctx: PageContext, wrong_rows: np.ndarray, subset_names: Sequence[str]) -> int:
    """Pick the image to explain: from the misclassified gallery (default), a saved subset's
    highest-loss images, or by row. Returns the picked store row (kept in session state)."""
    st.subheader("Pick an image")
    store, meta = ctx.store, ctx.meta()
    picked, widget = state_key(PAGE, "row", ctx.key), state_key(PAGE, "row_id", ctx.key)
    modes = ["Misclassified images", "A saved subset", "By row"]
    mode = st.segmented_control("From", modes, **kept(state_key(PAGE, "pick_mode"), modes[0])) or modes[0]
    tour = tour_error(meta)
    if st.session_state.get(picked) is None or not 0 <= int(st.session_state[picked]) < store.n:
        st.session_state[picked] = tour if tour is not None else 0

    def select_button(col: Any, rec: pd.Series) -> None:
        row = int(rec["row"])
        col.button("Select", key=state_key(PAGE, "select", row), width="stretch",
                   type="primary" if row == st.session_state[picked] else "secondary",
                   on_click=st.session_state.__setitem__, args=(picked, row))

    if mode == "By row":
        st.session_state[widget] = int(st.session_state[picked])
        st.number_input("Row", 0, store.n - 1, step=1, key=widget, help="The image's store row (0-based).",
                        on_change=lambda: st.session_state.__setitem__(picked, int(st.session_state[widget])))
    elif mode == "A saved subset":
        if not subset_names:
            st.info("No saved subsets yet: save one on *Cohorts & subsets* or below.")
        else:
            subset_key = state_key(PAGE, "pick_subset", ctx.key)
            if st.session_state.get(f"{subset_key}:kept") not in subset_names:
                st.session_state[f"{subset_key}:kept"] = subset_names[0]
            subset = st.selectbox("Subset", subset_names, **kept(subset_key, subset_names[0]))
            rows = np.asarray(ctx.subsets().get(subset).rows, dtype=np.int64)
            rows = rows[np.argsort(-meta["loss"].to_numpy()[rows], kind="stable")][:PICK_SHOWN]
            gallery(ctx, meta, rows, below=select_button, origin="saliency-pick-subset")
            how_to_read("the subset's highest-loss images; press Select under one.")
    elif not len(wrong_rows):
        st.info("The model classifies every image correctly: pick one by row.")
    else:
        gallery(ctx, meta, wrong_rows[:PICK_SHOWN], below=select_button, origin="saliency-pick")
        how_to_read(f"the {min(PICK_SHOWN, len(wrong_rows))} misclassified images of highest loss (of {len(wrong_rows):,}); "
                    "press Select under one.")
    if tour is not None and int(st.session_state[picked]) == tour:
        rec = meta.iloc[tour]
        st.caption(f"The page opens on image {rec['id']}: its predicted class leads the true class by "
                   f"{100 * (rec['confidence'] - rec['p_true']):.0f} points, the error closest to a "
                   f"{100 * TOUR_MARGIN:.0f}-point margin. The highest-loss errors are often 100% confident, and turning "
                   "filters off, masking or one fine-tuning step rarely move them; a moderate margin shows what they can do.")
    return int(st.session_state[picked])


def profiles_section(ctx: PageContext) -> tuple[SaliencyProfiles, FilterIndex]:
    """Step 1 of the page: the conv layers to profile, and the dataset's profiles over them,
    opened, or computed with progress after the button (refused ones rebuilt; hosted servers
    show only what ``prepare`` computed). Stops the page until they exist."""
    store = ctx.store
    try:
        choices = layer_choices(ctx)
    except BiasLensError as exc:
        st.info(str(exc))
        st.stop()
    if ctx.model.only_patch_embedding:
        st.info(
            f"This model's only convolution is its patch embedding (`{choices[0]}`, as in a vision transformer). Filter "
            "saliency ranks conv filters, so here it ranks only that layer's filters, each of which sees one image patch "
            "before any attention layer; the transformer blocks after it have no filters and are not ranked."
        )
    if store.n < 2:
        st.error(f"The dataset has {store.n} image(s); saliency profiles are standardised over the dataset and need at least 2.")
        st.stop()
    chosen = st.multiselect(
        "Conv layers profiled", choices, **kept(state_key(PAGE, "layers", ctx.key), choices),
        help="The filters of these conv layers (or blocks) make up each image's profile. Default: all of them.",
    )
    if not chosen:
        st.warning("Pick at least one conv layer.")
        st.stop()
    layers = requested_layers(chosen, choices)
    try:
        index = conv_filters(ctx.model.module, layers)
    except BiasLensError as exc:
        st.error(str(exc))
        st.stop()
    profiles = profiles_for(ctx, layers)
    if profiles is None:
        if ctx.hosted:  # visitors cannot start a pass over the whole dataset
            st.info(not_prepared(ctx, layers))
            st.stop()
        problem = profile_problem(store, ctx.model, layers)  # kept profiles that are refused
        before = st.empty()  # the size and the button, cleared once the build starts
        with before.container():
            if problem:
                st.warning(f"{problem} They are not used; the button below computes them again from the start.")
            st.info(f"{size_message(store.n, index)} Expected: {on_this_server(build_seconds(ctx))}.")
            if uses_loop(ctx, index):
                st.info(LOOP_NOTE)
            command = f"python -m core saliency {ctx.workspace.name}" + (f" --layers {','.join(layers)}" if layers else "")
            st.caption(f"Or from a terminal: `{command}` (resumes where it stopped).")
            clicked = st.button("Rebuild the saliency profiles" if problem else "Compute saliency profiles", type="primary",
                                icon=":material/tune:", key=state_key(PAGE, "build"))
        if not clicked:
            st.stop()
        before.empty()
        try:
            with cache.queued("The saliency profiles", expected_s=build_seconds(ctx)):
                profiles = run_with_progress(
                    "Computing saliency profiles...",
                    lambda progress: build(ctx, layers, progress, notice=st.info),
                    lambda p: f"Saliency profiles of {p.n:,} images over {p.n_filters:,} filters",
                    unit="image",
                )
        except BiasLensError as exc:
            st.error(f"The saliency profiles cannot be computed: {exc}")
            st.stop()
    m = profiles.manifest
    st.caption(f"{profiles.n:,} images × {profiles.n_filters:,} filters over {len(index.layers)} conv layer(s), "
               f"computed in {float(m.get('seconds', 0)):.0f} s.")
    if uses_loop(ctx, index, profiles):
        st.info(LOOP_NOTE)
    return profiles, index
