"""The Overview's store section: status, build with progress, adding layers.

In hosted mode visitors cannot build or extend stores (only the CLI can, ahead of time),
and no server path is shown.
"""

from __future__ import annotations

import streamlit as st

from core.errors import BiasLensError, redact_paths
from core.store.build import build_store
from core.store.read import Store
from core.ui import cache
from core.ui.context import PageContext
from core.ui.keys import state_key
from core.ui.method_page import Progress, run_with_progress


def cli_hint(ctx: PageContext, layers: list[str] | None = None) -> str:
    command = f"python -m core build {ctx.workspace.name}"
    if layers:
        command += " --layers " + " ".join(layers)
    return command


def run_build(ctx: PageContext, layers: list[str], label: str) -> None:
    """Build or extend the store with progress; rerun when done.

    A failure is shown open, below the status box, with what to do.
    """

    def work(progress: Progress) -> None:
        with ctx.run_model() as model:
            build_store(
                ctx.workspace.name, model, ctx.dataset, layers,
                batch_size=ctx.workspace.batch_size, num_workers=ctx.workspace.num_workers, progress=progress,
            )

    try:
        run_with_progress(label, work, lambda _: "Activation store ready", unit="image")
    except BiasLensError as failure:
        st.error(
            f"**The activation store could not be built.** {failure}\n\n"
            "Fix the problem named above (the work already done is kept and the next build "
            "resumes from it), then build again here or with "
            f"`{cli_hint(ctx, layers)}`.",
            icon=":material/error:",
        )
        st.stop()
    cache.store_for.clear()  # everything derived from a store is keyed by its fingerprint and layers
    st.rerun()


def store_panel(ctx: PageContext) -> Store | None:
    """Show the store's status; build it (automatically for the demo) or add layers."""
    model = ctx.model
    shown = redact_paths if ctx.hosted else str
    if ctx.dataset.skipped:
        with st.expander(f":material/warning: {len(ctx.dataset.skipped):,} listed file(s) were skipped and are not in the store"):
            st.caption(
                "Missing files, non-image files and rows without a label are skipped (CSV option "
                "`missing = \"skip\"`, the default); set `missing = \"error\"` to stop instead."
            )
            st.dataframe(
                [{"file": shown(path), "reason": shown(reason)} for path, reason in ctx.dataset.skipped[:500]],
                hide_index=True,
            )
    if ctx.store is None and ctx.hosted:
        st.warning(
            "This workspace has not been prepared on this server yet, and visitors cannot build it: "
            "pick another workspace in the sidebar, or ask whoever runs this server to prepare it."
        )
        return None
    if ctx.store is None:
        st.warning("This workspace has no complete activation store yet (never built, or the last one was interrupted "
                   "or damaged): one pass of the model over the dataset.")
        if ctx.workspace.is_demo:
            # built at once with the default layers: a layer picker here would have no effect
            layers = list(model.default_layers)
            st.caption(
                f"Building the demo's store now with the layers {', '.join(f'`{ly}`' for ly in layers) or 'none'} "
                "(more can be added afterwards, under *Activation store*)."
            )
        else:
            layers = st.multiselect(
                "Block layers to store (mean- and max-pooled per channel)",
                model.storable_layers,
                default=model.default_layers,
                key=state_key("store", "layers", ctx.key),
                help="The last hidden layer (embedding), logits and losses are always stored.",
            )
        if not model.storable_layers:
            st.caption("The model has no convolutional blocks or hidden linear layers: only the embedding and logits are stored.")
        if ctx.workspace.is_demo or st.button("Build the activation store", type="primary"):
            run_build(ctx, layers, f"Building the store of {len(ctx.dataset):,} images...")
        return None
    store = ctx.store
    channels = store.manifest["layer_channels"]
    layer_list = ", ".join(f"`{ly}` ({channels[ly]} ch)" for ly in store.layers) or "none"
    with st.expander(f"Activation store: {store.n:,} images, {len(store.layers)} stored layers"):
        st.markdown(
            f"- **Embedding**: input of `{store.embedding_layer}` ({store.manifest['embedding_dim']}-d)\n"
            f"- **Layers**: {layer_list}\n"
            f"- **Built**: {store.manifest['created']} on {store.manifest['device']}\n"
            f"- **Fingerprint**: `{store.fingerprint[:16]}`" + ("" if ctx.hosted else f" · `{store.path}`")
        )
        missing = [ly for ly in model.storable_layers if ly not in store.layers]
        if missing and ctx.hosted:
            st.caption(
                f"Layers not stored: {', '.join(f'`{ly}`' for ly in missing)}. On a hosted server only "
                "whoever runs it can add them."
            )
        elif missing:
            extra = st.multiselect("Add layers", missing, key=state_key("store", "add_layers", ctx.key))
            if st.button("Add the selected layers", disabled=not extra):
                run_build(ctx, store.layers + extra, f"Adding {len(extra)} layer(s)...")
    return store
