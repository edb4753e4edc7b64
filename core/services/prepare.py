"""Prepare a workspace for a hosted server: everything a visitor may need and cannot start.

``python -m core prepare WORKSPACE`` runs four steps, each skipped when its result is on
disk and complete, each resumable or restarted cleanly when interrupted:

- ``store``: the activation store (core/store/build.py, as ``build``);
- ``saliency``: the dataset's filter saliency profiles over every conv layer (as ``saliency``),
  and for the built-in demo workspaces those of their independent image set with the same
  model (``core.demo.independent``; the page's neighbours and fine-tuning check use them);
- ``probes``: the Intersectional page's default probes: its default groups (the first two
  attribute columns), sample, layers, reduction, seeds and epochs, with their features;
- ``layouts``: the NAP topographic layout of the page's default layer for those groups.

The page keeps fitted probes and layouts in memory only; prepared ones are kept beside the
store, keyed by the same inputs the page uses, so the page finds them::

    <store dir>/prepared/probes/<key>/    state.json, scores.parquet, curves.parquet, confusions.npz
    <store dir>/prepared/layouts/<key>/   state.json, layout.npz
        manifest.json     written LAST, inside a temporary folder renamed into place: a
                          result without it is incomplete and never read

The Intersectional page's defaults live here, so the page and ``prepare`` agree.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import clone
from tqdm import tqdm

from core.data.datasets import ImageDataset
from core.errors import BiasLensError, DataError, StoreError
from core.methods import NAPs, TopographicLayout
from core.methods.intersectional.features import (
    PROBES_DIR,
    STORED,
    default_probe_layers,
    feature_bytes,
    feature_dims,
    find_reduced,
    reduced_activations,
    reduced_dir,
)
from core.methods.intersectional.groups import (
    Groups,
    build_groups,
    capped_rows,
    default_group_columns,
)
from core.methods.intersectional.naps import MIN_LAYOUT_CHANNELS
from core.methods.intersectional.probes import LinearProbes
from core.methods.saliency.filters import conv_filters
from core.methods.saliency.profiles import (
    build_independent,
    build_profiles,
    find_independent,
    find_profiles,
    size_message,
)
from core.models.loading import LoadedModel
from core.services.estimates import (
    HOSTED_MAX_PROBE_LAYERS,
    check_disk,
    check_probe_request,
    check_seconds,
    fitting,
    forward_seconds,
    model_cost,
    on_this_server,
    probe_seconds,
    profile_seconds,
)
from core.services.subsets import scope_digest
from core.services.workspace import (
    INDEPENDENT_DEMO_NAME,
    WorkspaceList,
    builtin_workspaces,
    independent_demo_images,
    independent_sets,
)
from core.store.build import _atomic_write_text, _read_json, build_store
from core.store.read import Store, find_store

PREPARED_DIR = "prepared"
PREPARED_VERSION = 1  # bump when a prepared result's files or meaning change
STEPS = ("store", "saliency", "probes", "layouts")

# The Intersectional page's defaults (pages/intersectional.py reads them from here); those of
# the probes (seeds, epochs, cap per group and the sampling seed) are LinearProbes' own.
GROUP_COLUMNS = 2  # the first attribute columns grouped by
MIN_GROUP_SIZE = 10
NAP_CAP = 640  # images per group for the NAPs
PROBE_MODE = "subsample"

Progress = Callable[[int, int, str], None]


class PrepareError(BiasLensError):
    """A prepare step cannot run (its input is missing or unusable)."""


# --------------------------------------------------------------------------- the page's defaults


def default_columns(store: Store) -> list[str]:
    """The attribute columns the Intersectional page groups by at first: the first ones that
    split the images into groups (``core.methods.intersectional.groups.default_group_columns``)."""
    return default_group_columns(store.meta(), list(store.attribute_columns), GROUP_COLUMNS, MIN_GROUP_SIZE)[0]


def default_probe_choice(options: Sequence[str], hosted: bool) -> list[str]:
    """The layers the page probes at first: every option, or on a hosted server at most
    HOSTED_MAX_PROBE_LAYERS of them (the first ones and the last, the embedding)."""
    if not hosted or len(options) <= HOSTED_MAX_PROBE_LAYERS:
        return list(options)
    return [*options[: HOSTED_MAX_PROBE_LAYERS - 1], options[-1]]


def default_probes() -> LinearProbes:
    """The probes the page trains at first: LinearProbes' defaults (its ``per_group`` caps the
    probes' sample, and its ``seed`` draws both samples and seeds the layout, as on the page)."""
    return LinearProbes()


def map_layers(store: Store) -> list[str]:
    """The stored layers wide enough for a topographic map (the page's last one is its default)."""
    widths = {name.removesuffix(":mean"): shape[1] for name, shape in store.representations().items() if name.endswith(":mean")}
    return [layer for layer in store.layers if widths.get(layer, 0) >= MIN_LAYOUT_CHANNELS]


# --------------------------------------------------------------------------- shared runs


def fit_probes(store: Store, model: LoadedModel, dataset: ImageDataset, groups: Groups, rows: np.ndarray,
               layers: Sequence[str], mode: str, probes: LinearProbes, progress: Progress | None = None,
               max_new_bytes: int | None = None) -> LinearProbes:
    """A fitted clone of ``probes`` on the groups' reduced activations of ``rows`` (the
    activations are kept with the store; ``max_new_bytes`` as in ``reduced_activations``)."""
    features = reduced_activations(store, model, dataset, rows, list(layers), mode=mode, progress=progress,
                                   max_new_bytes=max_new_bytes)
    return clone(probes).fit(features, groups.labels[rows], list(groups.names), progress=progress,
                             group_values=list(groups.values), columns=list(groups.columns))


def group_naps(store: Store, groups: Groups, rows: np.ndarray, layer: str) -> NAPs:
    """The groups' NAPs in one layer over these rows (the store's mean-pooled channels)."""
    labels = np.full(store.n, -1, dtype=np.int64)
    labels[rows] = groups.labels[rows]
    return NAPs().fit(store.representation(f"{layer}:mean"), labels, list(groups.values), list(groups.columns))


@dataclass(frozen=True)
class ProbeRun:
    """What a probe run will cost: its expected seconds, and the bytes of new activations it
    writes beside the store (0 when saved ones serve it)."""

    seconds: float
    new_bytes: int


def probe_run(store: Store, model: LoadedModel, groups: Groups, rows: np.ndarray, layers: Sequence[str], mode: str,
              probes: LinearProbes) -> ProbeRun:
    """The expected cost of ``fit_probes`` with these inputs (nothing is computed)."""
    saved = [ly for ly in layers if ly not in STORED]
    dims = feature_dims(model, layers, mode=mode)
    seconds = probe_seconds(len(rows), list(dims.values()), groups.n_groups, int(probes.n_seeds), int(probes.epochs),
                            shuffled=bool(probes.shuffled))
    if not saved or find_reduced(store, rows, saved, mode=mode) is not None:
        return ProbeRun(seconds, 0)
    return ProbeRun(seconds + forward_seconds(model_cost(model), len(rows)), feature_bytes(len(rows), dims))


def check_hosted_probes(store: Store, run: ProbeRun, layers: Sequence[str], probes: LinearProbes) -> None:
    """HostedLimit when a visitor's probe run passes a hosted cap (layers, seeds, epochs, cap
    per group, expected time, disk), saying what to lower."""
    check_probe_request(len(layers), int(probes.n_seeds), int(probes.epochs), int(probes.per_group))
    epochs = fitting(int(probes.epochs), run.seconds)
    check_seconds(run.seconds, "Training these probes",
                  "Use fewer seeds, layers or epochs" + (f" (e.g. {epochs} epochs)" if 1 <= epochs < int(probes.epochs) else "")
                  + ", or a smaller cap per group.")
    check_disk(run.new_bytes, visitor_feature_bytes(store), "Their activations",
               "Use fewer layers or a smaller cap per group, or the page's default cap per group and sampling seed "
               "(their activations are kept on this server).")


# --------------------------------------------------------------------------- keys


def _digest(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def groups_digest(groups: Groups) -> dict[str, Any]:
    """What identifies a grouping: its columns, names and membership."""
    included = groups.labels >= 0
    return {"columns": list(groups.columns), "names": list(groups.names),
            "rows": scope_digest(np.flatnonzero(included)), "labels": scope_digest(groups.labels[included])}


def probes_key(fingerprint: str, groups: Groups, rows: np.ndarray, layers: Sequence[str], mode: str,
               params: dict[str, Any]) -> str:
    """The key of fitted probes: the store, the groups, the sample, the layers, the
    reduction and the estimator's parameters (the page's cache key, hashed)."""
    return _digest({"fingerprint": fingerprint, "groups": groups_digest(groups), "sample": scope_digest(rows),
                    "layers": list(layers), "mode": mode, "params": params, "version": PREPARED_VERSION})


def layout_key(fingerprint: str, groups: Groups, rows: np.ndarray, layer: str, params: dict[str, Any]) -> str:
    """The key of a topographic layout: the store, the groups, the NAP sample, the layer and
    the layout's parameters."""
    return _digest({"fingerprint": fingerprint, "groups": groups_digest(groups), "sample": scope_digest(rows),
                    "layer": layer, "params": params, "version": PREPARED_VERSION})


# --------------------------------------------------------------------------- prepared results on disk


def _prepared(store: Store, kind: str, key: str) -> Path:
    return store.path / PREPARED_DIR / kind / key


def _publish(final: Path, write: Callable[[Path], None], manifest: dict[str, Any]) -> None:
    """Write a result into a temporary folder, its manifest last, then rename it into place:
    an interruption leaves only the temporary folder, which the next try replaces."""
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".{final.name}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)
    partial = final.with_name(f".{final.name}.partial-{os.getpid()}")
    partial.mkdir()
    try:
        write(partial)
        _atomic_write_text(partial / "manifest.json", json.dumps(manifest, indent=2))
        if final.exists() and _read_json(final / "manifest.json") is None:
            shutil.rmtree(final, ignore_errors=True)  # an incomplete result from an older layout
        try:
            os.rename(partial, final)
        except OSError:
            if _read_json(final / "manifest.json") is None:
                raise StoreError(f"The prepared result {final.name} could not be written; run prepare again.") from None
    finally:
        shutil.rmtree(partial, ignore_errors=True)  # gone after the rename; left over if another process won


def _manifest(store: Store, kind: str, key: str, **more: Any) -> dict[str, Any]:
    return {"version": PREPARED_VERSION, "kind": kind, "key": key, "fingerprint": store.fingerprint,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **more}


def _complete(store: Store, kind: str, key: str) -> Path | None:
    directory = _prepared(store, kind, key)
    manifest = _read_json(directory / "manifest.json")
    if manifest is None or manifest.get("version") != PREPARED_VERSION or manifest.get("fingerprint") != store.fingerprint:
        return None
    return directory


def save_probes(store: Store, key: str, fitted: LinearProbes, features: str | None = None) -> None:
    """Keep fitted probes beside the store (no pickle: JSON, Parquet and npz); ``features``
    names the probe activations they were trained on."""
    state = {"params": fitted.get_params(), "layers": fitted.layers_, "group_names": fitted.group_names_,
             "group_values": fitted.group_values_, "columns": fitted.columns_, "n_train": fitted.n_train_,
             "n_val": fitted.n_val_, "seeds": fitted.seeds_, "chance": fitted.chance_,
             "uniform_chance": fitted.uniform_chance_}

    def write(directory: Path) -> None:
        (directory / "state.json").write_text(json.dumps(state))
        fitted.scores_.to_parquet(directory / "scores.parquet", index=False)
        fitted.curves_.to_parquet(directory / "curves.parquet", index=False)
        np.savez(directory / "confusions.npz", *[fitted.confusions_[layer] for layer in fitted.layers_])

    _publish(_prepared(store, "probes", key), write, _manifest(store, "probes", key, features=features))


def load_probes(store: Store, key: str) -> LinearProbes | None:
    """Prepared probes for this key, fitted as the page would fit them, or None."""
    directory = _complete(store, "probes", key)
    if directory is None:
        return None
    try:
        state = json.loads((directory / "state.json").read_text())
        probes = LinearProbes(**state["params"])
        probes.scores_ = pd.read_parquet(directory / "scores.parquet")
        probes.curves_ = pd.read_parquet(directory / "curves.parquet")
        with np.load(directory / "confusions.npz") as confusions:
            probes.confusions_ = {layer: confusions[f"arr_{i}"] for i, layer in enumerate(state["layers"])}
    except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError):
        return None
    probes.layers_ = list(state["layers"])
    probes.group_names_ = list(state["group_names"])
    values = state["group_values"]
    probes.group_values_ = None if values is None else [tuple(v) for v in values]
    probes.columns_ = state["columns"]
    probes.n_train_, probes.n_val_ = int(state["n_train"]), int(state["n_val"])
    probes.seeds_ = [int(s) for s in state["seeds"]]
    probes.chance_, probes.uniform_chance_ = float(state["chance"]), float(state["uniform_chance"])
    return probes


def save_layout(store: Store, key: str, layout: TopographicLayout) -> None:
    """Keep a fitted topographic layout beside the store."""

    def write(directory: Path) -> None:
        (directory / "state.json").write_text(json.dumps({
            "params": layout.get_params(), "umap_seconds": layout.umap_seconds_, "relax_seconds": layout.relax_seconds_}))
        np.savez(directory / "layout.npz", initial=layout.initial_, positions=layout.positions_)

    _publish(_prepared(store, "layouts", key), write, _manifest(store, "layouts", key))


def load_layout(store: Store, key: str) -> TopographicLayout | None:
    """A prepared topographic layout for this key, or None."""
    directory = _complete(store, "layouts", key)
    if directory is None:
        return None
    try:
        state = json.loads((directory / "state.json").read_text())
        layout = TopographicLayout(**state["params"])
        with np.load(directory / "layout.npz") as arrays:
            layout.initial_, layout.positions_ = arrays["initial"], arrays["positions"]
    except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError):
        return None
    layout.umap_seconds_, layout.relax_seconds_ = float(state["umap_seconds"]), float(state["relax_seconds"])
    return layout


def visitor_feature_bytes(store: Store) -> int:
    """Disk bytes of the probe activations beside the store that ``prepare`` did not make
    (what visitors' runs wrote): the total a hosted server caps."""
    root = store.path / PROBES_DIR
    if not root.is_dir():
        return 0
    prepared = set()
    for manifest in (store.path / PREPARED_DIR / "probes").glob("*/manifest.json"):
        features = (_read_json(manifest) or {}).get("features")
        if features:
            prepared.add(str(features))
    return sum(f.stat().st_size for d in root.iterdir() if d.is_dir() and d.name not in prepared
               for f in d.rglob("*") if f.is_file())


# --------------------------------------------------------------------------- the steps


@dataclass
class Prepared:
    """One step's outcome: what it did, whether it was already done, how long it took."""

    step: str
    what: str
    skipped: bool
    seconds: float


def parse_steps(only: str | None, skip: str | None) -> list[str]:
    """The steps to run, in order, from ``--only`` / ``--skip`` (comma-separated names)."""

    def names(text: str) -> list[str]:
        chosen = [s.strip() for s in text.split(",") if s.strip()]
        unknown = [s for s in chosen if s not in STEPS]
        if unknown or not chosen:
            raise PrepareError(f"Unknown step(s) {', '.join(unknown) or '(none given)'}: use {', '.join(STEPS)}.")
        return chosen

    if only is not None and skip is not None:
        raise PrepareError("Give --only or --skip, not both.")
    if only is not None:
        wanted = set(names(only))
        return [s for s in STEPS if s in wanted]
    left_out = set(names(skip)) if skip is not None else set()
    return [s for s in STEPS if s not in left_out]


class Preparer:
    """Runs the chosen steps on one workspace's model and dataset, printing a line per step
    (what it does, then its time) and a tqdm bar while it works."""

    def __init__(self, name: str, model: LoadedModel, dataset: ImageDataset, *, root: Path | None = None,
                 batch_size: int = 64, num_workers: int = 0) -> None:
        self.name, self.model, self.dataset = name, model, dataset
        self.root, self.batch_size, self.num_workers = root, batch_size, num_workers
        self.cost = model_cost(model)
        self._opened: Store | None = None

    # ------------------------------------------------------------------ running

    def run(self, steps: Sequence[str]) -> list[Prepared]:
        """Run ``steps`` in order; a failing step raises PrepareError naming it."""
        done = []
        for i, step in enumerate(steps, 1):
            started = time.monotonic()
            try:
                what, skipped = getattr(self, f"_{step}")(f"[{i}/{len(steps)}] {step}")
            except BiasLensError as exc:
                raise PrepareError(
                    f"Step '{step}' failed: {exc} (finished steps are kept; run prepare again to resume, "
                    f"or leave this step out with --skip {step})."
                ) from None
            seconds = time.monotonic() - started
            print(f"      {'already prepared, skipped' if skipped else 'done'} in {seconds:.1f} s: {what}", flush=True)
            done.append(Prepared(step, what, skipped, seconds))
        return done

    def _say(self, head: str, what: str, seconds: float | None = None) -> None:
        print(f"{head}: {what}" + (f"; expected: {on_this_server(seconds)}" if seconds is not None else ""), flush=True)

    def _need_store(self) -> Store:
        if self._opened is None:
            self._opened = find_store(self.name, self.model, self.dataset, self.root)
        if self._opened is None:
            raise PrepareError("the activation store is not built; run prepare without --skip store (or --only store) first")
        return self._opened

    # ------------------------------------------------------------------ steps

    def _store(self, head: str) -> tuple[str, bool]:
        n = len(self.dataset)
        found = find_store(self.name, self.model, self.dataset, self.root)
        if found is not None:
            self._opened = found
            self._say(head, "the activation store")
            return f"{found.n:,} images, layers {', '.join(found.layers) or 'none'}", True
        self._say(head, f"the activation store of {n:,} images", forward_seconds(self.cost, n))
        bar = tqdm(total=n, unit="img", desc="store", leave=False)

        def progress(done: int, total: int, message: str) -> None:
            bar.n = done
            bar.refresh()

        try:
            self._opened = build_store(self.name, self.model, self.dataset, None, batch_size=self.batch_size,
                                      num_workers=self.num_workers, root=self.root, progress=progress)
        finally:
            bar.close()
        return f"{self._opened.n:,} images, layers {', '.join(self._opened.layers) or 'none'}", False

    def _saliency(self, head: str) -> tuple[str, bool]:
        store = self._need_store()
        try:
            index = conv_filters(self.model.module)
        except BiasLensError as exc:  # no conv layers: the page says it has nothing to show
            self._say(head, "the filter saliency profiles")
            return f"not applicable: {exc}", True
        what = size_message(store.n, index).removesuffix(".")
        if find_profiles(store, None, model=self.model) is not None:
            self._say(head, "the filter saliency profiles")
            return what, not self._independent(store)
        self._say(head, what, profile_seconds(self.cost, store.n))
        bar = tqdm(total=store.n, unit="img", desc="saliency", leave=False)

        def progress(done: int, total: int) -> None:
            bar.n = done
            bar.refresh()

        try:
            build_profiles(store, self.model, self.dataset, None, batch_size=min(self.batch_size, 32), progress=progress,
                           notice=lambda message: bar.write(f"note: {message}", file=sys.stderr))
        finally:
            bar.close()
        self._independent(store)
        return what, False

    def _independent(self, store: Store) -> bool:
        """For the built-in demo workspaces, the profiles of their independent image set with this
        model (the Filter saliency page's neighbours and fine-tuning check can draw from it): a
        second pass over 10k images, about as long as the dataset's own profiles. Whether it
        computed them (False: not a demo workspace, or already there)."""
        workspace = builtin_workspaces().get(self.name)
        if workspace is None or INDEPENDENT_DEMO_NAME not in independent_sets(WorkspaceList({}), workspace):
            return False
        images = independent_demo_images(workspace)
        if find_independent(store, self.model, images, INDEPENDENT_DEMO_NAME) is not None:
            return False
        print(f"      then the profiles of the independent demo images ({len(images):,} images) with this model; "
              f"expected: {on_this_server(forward_seconds(self.cost, len(images)) + profile_seconds(self.cost, len(images)))}",
              flush=True)
        build_independent(store, self.model, images, INDEPENDENT_DEMO_NAME, self.dataset, None,
                          batch_size=min(self.batch_size, 32))
        return True

    def _groups(self) -> Groups | None:
        store = self._need_store()
        columns = default_columns(store)
        if not columns:
            return None
        try:
            return build_groups(store.meta(), columns, min_size=MIN_GROUP_SIZE)
        except DataError as exc:
            raise PrepareError(f"the Intersectional page's default groups ({', '.join(columns)}) cannot be built: {exc}") from None

    def _probes(self, head: str) -> tuple[str, bool]:
        store = self._need_store()
        groups = self._groups()
        if groups is None:
            self._say(head, "the Intersectional page's default probes")
            return "not applicable: the dataset has no attribute columns to group by", True
        probes = default_probes()
        rows = capped_rows(groups, probes.per_group, probes.seed)
        layers = default_probe_choice(default_probe_layers(store, self.model), hosted=True)
        key = probes_key(store.fingerprint, groups, rows, layers, PROBE_MODE, probes.get_params())
        what = (f"probes of {groups.n_groups} groups ({', '.join(groups.columns)}) on {len(rows):,} images, "
                f"layers {', '.join(layers)}, {probes.n_seeds} seeds x {probes.epochs} epochs")
        if load_probes(store, key) is not None:
            self._say(head, "the Intersectional page's default probes")
            return what, True
        self._say(head, what, probe_run(store, self.model, groups, rows, layers, PROBE_MODE, probes).seconds)
        bar = tqdm(total=len(rows), unit="step", desc="probe features", leave=False)

        def progress(done: int, total: int, message: str) -> None:
            if bar.total != total:  # the features count images, the training layers
                bar.reset(total=total)
            bar.set_description(message[:30], refresh=False)
            bar.n = done
            bar.refresh()

        try:
            fitted = fit_probes(store, self.model, self.dataset, groups, rows, layers, PROBE_MODE, probes, progress)
        finally:
            bar.close()
        features = reduced_dir(store, rows, layers, mode=PROBE_MODE)
        save_probes(store, key, fitted, None if features is None else features.name)
        return what, False

    def _layouts(self, head: str) -> tuple[str, bool]:
        store = self._need_store()
        groups = self._groups()
        layers = map_layers(store)
        if groups is None or not layers:
            self._say(head, "the Intersectional page's default topographic layout")
            reason = "the dataset has no attribute columns" if groups is None else "no stored layer has more than 15 channels"
            return f"not applicable: {reason}", True
        layer = layers[-1]
        seed = default_probes().seed  # the page's one sampling seed
        rows = capped_rows(groups, NAP_CAP, seed)
        layout = TopographicLayout(seed=seed)
        key = layout_key(store.fingerprint, groups, rows, layer, layout.get_params())
        what = f"topographic layout of {layer} over {groups.n_groups} groups ({len(rows):,} images)"
        if load_layout(store, key) is not None:
            self._say(head, "the Intersectional page's default topographic layout")
            return what, True
        self._say(head, what + " (UMAP, then the particle relaxation; UMAP compiles on first use)")
        fitted = clone(layout).fit(group_naps(store, groups, rows, layer).naps_)
        save_layout(store, key, fitted)
        return what, False
