"""The Subgroups page's cached runs, subgroup rows, and the Grad-CAM and concept windows.

Runs are keyed by the store and the estimator's ``get_params()``; cached objects are fitted
clones, never the caller's estimator.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from core.errors import BiasLensError
from core.methods import (
    CLUSTER_THRESHOLD,
    UDIS,
    ConceptPatches,
    ConceptPatchFinder,
    Neuron,
    NeuronClusters,
    NeuronSelector,
    panel_neurons,
    subgroup_confusion,
)
from core.methods.subgroups.record import udis_order
from core.services.estimates import udis_held_out_seconds, udis_seconds
from core.services.server import SERVER
from core.store.read import Store
from core.ui import cache, image_detail
from core.ui.charts import confusion_matrix, show
from core.ui.context import PageContext
from core.ui.image_detail import enlarged
from core.ui.keys import state_key
from core.ui.method_page import gallery
from core.ui.widgets import how_to_read, kept, percent

THUMB = 96
MAX_NEURONS_PER_CELL = 24  # neuron buttons per cell of the panel
PATCH_VIEW = 96
CLUSTER_THRESHOLD_KEY = state_key("subgroups", "cluster_threshold")

# --------------------------------------------------------------------------- cached runs


def subgroups_for(store: Store, udis: UDIS, scope: np.ndarray | None = None) -> UDIS:
    """UDIS fitted on the store's embedding, once per ``udis.get_params()`` (a fitted clone;
    the page applies the threshold). With ``scope`` (store rows of a subset) it clusters
    those images only, and ``labels_`` is mapped back to all store rows (-1 outside), so
    ``rows(g)`` gives store rows."""
    n, d = store.representation("embedding").shape
    expected = udis_seconds(int(n) if scope is None else len(scope), int(d), **udis.get_params())
    return cache.fitted_once(store, udis, "embedding", scope, label="The clustering", expected_s=expected)


def held_out_for(
    store: Store, udis: UDIS, threshold: float, scope: np.ndarray | None = None
) -> tuple[pd.DataFrame | None, Callable[[], pd.DataFrame]]:
    """The split-half confirmation of the under-performing subgroups at ``threshold`` (its cached
    table or None, the run that computes it once)."""
    n, d = store.representation("embedding").shape
    expected = udis_held_out_seconds(int(n) if scope is None else len(scope), int(d), **udis.get_params())
    return cache.held_out_once(store, udis, "embedding", scope, expected_s=expected, threshold=threshold)


@st.cache_data(show_spinner=False, max_entries=64, hash_funcs=cache.STORE_HASH)
def _selector(store: Store, layer: str, mass: float) -> NeuronSelector:
    return NeuronSelector(mass=mass).fit(store.representation(f"{layer}:max"))


def neuron_selectors(store: Store, layers: list[str], mass: float) -> dict[str, NeuronSelector]:
    """Summit's highly-activated neurons of every image at these stored layers (fitted on the
    max-pooled activations), in network order."""
    return {layer: _selector(store, layer, mass) for layer in layers}


@st.cache_data(show_spinner=False, max_entries=64, hash_funcs=cache.STORE_HASH)
def neuron_panel(
    store: Store, layers: tuple[str, ...], mass: float, under: np.ndarray, well: np.ndarray, threshold: float
) -> pd.DataFrame:
    """The neuron panel's frame (``panel_neurons``) for two subgroups' rows, once per inputs."""
    return panel_neurons(neuron_selectors(store, list(layers), mass), under, well, threshold)


def concept_patches_for(ctx: PageContext, neurons: tuple[Neuron, ...]) -> dict[Neuron, ConceptPatches]:
    """Concept patches of these neurons; the missing ones are computed in one batched pass in
    the light lane on a private copy of the model (see cache.run_queue), and kept per store in
    the server's result slots, shared by sessions."""
    store = ctx.store
    slot = SERVER.results.slot("concept-patches", store.fingerprint, "")
    with slot["lock"]:
        patches = slot.setdefault("patches", {})
        missing = [n for n in neurons if n not in patches]
        if missing:
            centre = np.asarray(store.representation("embedding")).mean(axis=0)
            with cache.queued("The concept patches", cache.LIGHT), \
                    ctx.run_model() as model:
                finder = ConceptPatchFinder().fit(
                    model, ctx.dataset, missing, lambda layer: store.representation(f"{layer}:max"),
                    embedding_centre=centre,
                )
                patches.update(finder.patches_)
        return {n: patches[n] for n in neurons}


@st.cache_data(show_spinner=False, max_entries=64, hash_funcs=cache.STORE_HASH)
def _evidence(store: Store, params: dict[str, Any], scope: np.ndarray | None, threshold: float, _result: UDIS) -> pd.DataFrame:
    return udis_order(_result, cache.meta_for(store), threshold)


def evidence_for(store: Store, result: UDIS, params: dict[str, Any], scope: np.ndarray | None, threshold: float) -> pd.DataFrame:
    """The under-performing subgroups in the page's order (``udis_order``: a Fisher test per
    cluster, 0.4 s on the demo), once per run (the store, UDIS's parameters and the scope) and
    threshold, so selecting a subgroup does not test them again."""
    return _evidence(store, params, scope, threshold, result)


def evidence_mark(row: pd.Series) -> str:
    """'q = 2e-28 · 42 excess errors' for a row of ``udis_order``/``spotlight_order``; a
    near-duplicate says which group it repeats, a group that is not significant says so."""
    text = f"q = {row['q']:.1g} · {row['excess errors']:.0f} excess errors"
    if row["same as"]:
        return f"{text} · same failure as {row['same as']}"
    return text if row["significant"] else f"{text} · not significant"


# --------------------------------------------------------------------------- rendering


def subgroup_label(table: pd.DataFrame, subgroup: int) -> str:
    """'#12 · accuracy 23.5% (95% 12.0-35.0%) · 34 images'."""
    row = table.loc[subgroup]
    interval = f" (95% {percent(row['low'])}–{percent(row['high'])})" if row["low"] == row["low"] else ""
    return f"#{subgroup} · accuracy {percent(row['accuracy'])}{interval} · {int(row['size'])} images"


@st.fragment
def clickable_images(ctx: PageContext, meta: pd.DataFrame, rows: np.ndarray, key: str, columns: int = 6) -> None:
    """Thumbnails (errors framed and crossed in red), each with a button that opens its detail
    dialog (core/ui/image_detail.py: scores, attributes and the Grad-CAM window).

    A fragment: pressing CAM reruns only these thumbnails (and opens the dialog), not the page.
    """

    # The dialog's origin is the gallery's role ("under", "well"), not its subgroup: a CAM click
    # on the thumbnails a browser still shows from the last selection, arriving with or after
    # another Select, still opens that image (issue 21's class lost such clicks). A Subgroups
    # origin also ticks the workshop's Grad-CAM step.
    origin = f"subgroups.{key.split(':')[0]}"

    def cam_button(col: Any, rec: dict[str, Any]) -> None:
        col.button("CAM", key=f"{key}:{rec['row']}", help="Open this image's details and Grad-CAM", width="stretch",
                   on_click=image_detail.request, args=(origin, int(rec["row"])))  # a callback: never lost to another run

    gallery(ctx, meta, rows, columns=columns, size=THUMB, below=cam_button, details=False)
    image_detail.show_requested(ctx, meta, origin)


def confusion_panel(subgroups: UDIS, meta: pd.DataFrame, classes: list[str], subgroup: int, title: str) -> None:
    """The subgroup's confusion matrix over the classes present in it (labels or predictions)."""
    rows = subgroups.rows(subgroup)
    labels, preds = meta["label_idx"].to_numpy()[rows], meta["pred_idx"].to_numpy()[rows]
    present = np.union1d(labels, preds)
    matrix = subgroup_confusion(labels, preds, len(classes))[np.ix_(present, present)]
    st.markdown(f"**{title}**")
    show(confusion_matrix, matrix, [classes[i] for i in present], normalise=False, width="content")


def highlight_key(ctx: PageContext, pair: tuple[int, int]) -> str:
    """Session key of the highlighted concept cluster, per workspace and subgroup pair."""
    return state_key("subgroups", "highlight", ctx.key, pair[0], pair[1])


def neuron_button_label(neuron: Neuron, under: float, well: float) -> str:
    return f"{neuron[1]}: {under:.2f}/{well:.2f}"


def show_concept_patches(mine: ConceptPatches) -> None:
    """A neuron's 10 concept patches in a row, with their activations (and a word on ties)."""
    st.markdown("**Concept patches** — the 10 patches of its top images that activate it most")
    cols = st.columns(10)
    for col, picture, value in zip(cols, mine.patch_images, mine.patch_activations, strict=False):
        col.image(enlarged(picture, PATCH_VIEW), caption=f"{value:.2f}", width="stretch")
    if mine.ties:
        st.caption(
            f"{mine.ties} of these {len(mine.patch_activations)} patches tie with another one's activation: the neuron "
            "responds the same to them. Among tied patches, other images and positions are shown first."
        )


@st.dialog("Neuron concept window", width="large", on_dismiss="rerun")
def concept_window(ctx: PageContext, neuron: Neuron, scores: tuple[float, float], shown: list[Neuron], pair: tuple[int, int]) -> None:
    """A neuron's activation scores for both subgroups, its concept patches and its cluster."""
    layer, channel = neuron
    st.markdown(
        f"**{layer} · neuron {channel}** — activation score **{scores[0]:.2f}** in under-performing #{pair[0]}, "
        f"**{scores[1]:.2f}** in well-performing #{pair[1]}"
    )
    with st.spinner(f"Concept patches of the {len(shown)} neurons in the panel..."):
        try:
            patches = concept_patches_for(ctx, tuple(shown))
        except BiasLensError as exc:
            st.error(f"Concept patches failed: {exc}")
            return
    threshold = st.session_state.get(CLUSTER_THRESHOLD_KEY, CLUSTER_THRESHOLD)
    clusters = NeuronClusters(threshold=threshold).fit(patches).clusters_
    mates = [n for n in shown if clusters[n] == clusters[neuron] and n != neuron]
    st.session_state[highlight_key(ctx, pair)] = [neuron, *mates]
    mine = patches[neuron]
    show_concept_patches(mine)
    st.markdown("**Top images** — the dataset images that activate it most")
    thumbs = cache.thumbnails(ctx.dataset, ctx.key, tuple(int(r) for r in mine.image_rows), THUMB)
    cols = st.columns(10)
    for col, picture in zip(cols, thumbs, strict=False):
        col.image(picture, width="stretch")
    if mates:
        st.markdown(
            "**Same concept cluster** (patch-embedding cosine > threshold): "
            + ", ".join(f"{n[0]} · {n[1]}" for n in mates)
            + ". They are highlighted (filled buttons) in the panel once this window is closed."
        )
    else:
        st.caption("No other neuron in the panel responds to the same concept (its cluster has one neuron).")
    how_to_read("the numbers under the patches are the neuron's activation (max over space) on the image masked to that square.")


@st.fragment
def neuron_panel_section(
    ctx: PageContext, store: Store, conv_layers: tuple[str, ...], result: UDIS, selected: int, similar: int
) -> None:
    """VisCUIT's neuron activation panel for the selected subgroup and its well-performing
    neighbour: sliders, then one button per neuron (under only / both / well only) that opens
    its concept window. A fragment: its sliders and buttons rerun only the panel."""
    c1, c2, c3 = st.columns(3)
    neuron_threshold = c1.slider("Activation score threshold", 0.5, 1.0, step=0.05, **kept(state_key("subgroups", "neuron_threshold"), 0.5),
                                 help="A neuron shows when its activation score reaches this in either subgroup.")
    mass = c2.slider("Mass rule (%)", 0.5, 20.0, step=0.5, **kept(state_key("subgroups", "mass"), 3.0),
                     help="Per image and layer, the top neurons whose activations sum past this share of the layer's total are 'highly activated' (VisCUIT: 3%).")
    c3.slider("Concept cluster threshold", 0.5, 1.0, step=0.01, **kept(CLUSTER_THRESHOLD_KEY, CLUSTER_THRESHOLD),
              help="Neurons join one concept cluster when their concept patches' embeddings have cosine similarity above this.")
    frame = neuron_panel(store, conv_layers, mass / 100, result.rows(selected), result.rows(similar), neuron_threshold)
    highlight = set(map(tuple, st.session_state.get(highlight_key(ctx, (selected, similar)), [])))
    shown = [(r.layer, int(r.neuron)) for r in frame.itertuples()]
    heads = st.columns([1, 3, 3, 3])
    for col, text in zip(heads, ["Layer", f"Under-performing #{selected} only", "Both", f"Well-performing #{similar} only"], strict=True):
        col.markdown(f"**{text}**")
    for layer in conv_layers:
        cells = st.columns([1, 3, 3, 3])
        cells[0].markdown(f"`{layer}`")
        part = frame[frame["layer"] == layer]
        for col, column in zip(cells[1:], ["under only", "both", "well only"], strict=True):
            here = part[part["column"] == column].head(MAX_NEURONS_PER_CELL)
            if here.empty:
                col.caption("—")
            inner = col.columns(2)
            for i, r in enumerate(here.itertuples()):
                neuron = (layer, int(r.neuron))
                if inner[i % 2].button(neuron_button_label(neuron, r.under, r.well), key=f"neuron:{layer}:{r.neuron}",
                                       type="primary" if neuron in highlight else "secondary", width="stretch"):
                    concept_window(ctx, neuron, (float(r.under), float(r.well)), shown, (selected, similar))
    how_to_read(
        "each button is a neuron (channel) with its activation scores under / well: the share of each subgroup's images "
        "for which it is highly activated. Rows follow the network; press a neuron for its concepts (afterwards its concept cluster shows as filled buttons)."
    )
