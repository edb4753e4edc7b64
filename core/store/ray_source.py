"""A Ray Data output source for the activation store: the forward pass spread over a cluster.

``RaySource(workspace)`` is an *output source* for core/store/build.py: called with
``(layers, want_core, start)`` it yields ``(first_row, outputs)`` for rows [start, N),
where ``outputs`` maps each captured key ("logits", "embedding", "<layer>.mean",
"<layer>.max") to a (b, d) float32 array. The store writer puts them into the same
memmaps, progress checkpoints, metadata and manifest as the local build, so a Ray build
gives the same store files and fingerprint.

Each Ray actor rebuilds the model and dataset from the workspace (so every machine must
see the same model weights and image paths), loads its rows' images with the local
path's transform and runs the forward pass under ``torch.inference_mode()``. One actor
per GPU when the cluster has GPUs; otherwise one CPU actor per CPU. The row numbers are
handed to Ray as in-memory blocks, not read by Ray Data read tasks: read tasks need a CPU
of their own, and actors holding every CPU starved them (two 1-CPU actors on a 2-CPU
machine waited forever).

Ray is an optional extra (``pip install -e '.[scale]'``), imported only when used.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd

from core.data.sources import build_dataset
from core.errors import BiasLensError, StoreError
from core.models.loading import load_model, make_transform
from core.services.workspace import REPO_ROOT, Workspace
from core.store.hooks import ActivationRecorder
from core.store.pipeline import PRECISIONS, Outputs, forward_outputs

_ROW = "row"
BATCHES_PER_BLOCK = 4  # rows handed to an actor at a time, in batches
_ACTOR_ERROR = re.compile(r"core\.errors\.\w+Error: (The Ray build failed on images [^\n]*)")
_INSTALL = "Ray is not installed: pip install -e '.[scale]' (or pip install 'ray[data]==2.60.*')."


def _import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise StoreError(_INSTALL) from None
    return ray


class _Extractor:
    """The Ray actor: model + dataset rebuilt from the workspace, one forward per batch."""

    def __init__(
        self, workspace: Workspace, layers: list[str], want_core: bool, precision: str, hosted: bool,
    ) -> None:
        import torch

        self.torch = torch
        self.precision = precision
        self.keys = (["logits", "embedding"] if want_core else []) + [
            f"{ly}.{pool}" for ly in layers for pool in ("mean", "max")
        ]
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.dataset = build_dataset(workspace.dataset)
        self.model = load_model(workspace.model, device, hosted=hosted)
        self.recorder = ActivationRecorder(self.model, layers, want_embedding=want_core)
        self.transform = make_transform(self.model.input_size, self.model.mean, self.model.std)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = np.asarray(batch["id"], dtype=np.int64)
        try:
            images = self.torch.stack([self.transform(self.dataset.load_image(int(r))) for r in rows])
            with self.torch.inference_mode():
                batch_on_device = images.to(self.model.device)
                outputs = forward_outputs(self.model, self.recorder, batch_on_device, self.precision)
            result = {_ROW: rows}
            for key in self.keys:
                result[key] = np.ascontiguousarray(outputs[key], dtype=np.float32)
            return result
        except Exception as exc:  # noqa: BLE001 - every failure becomes one readable StoreError
            detail = str(exc) if isinstance(exc, BiasLensError) else f"{type(exc).__name__}: {exc}"
            raise StoreError(f"The Ray build failed on images {rows[0]}..{rows[-1]}: {detail}") from None


def init_local_ray(num_cpus: int | None = None) -> None:
    """Start a Ray on this machine only (no dashboard) whose workers can import what this
    process can: the working directory, the repository and ``sys.path`` go into their
    PYTHONPATH (entry-point models such as ``tests.support:make_tiny_cnn``)."""
    ray = _import_ray()
    path = [os.getcwd(), str(REPO_ROOT), *[p for p in sys.path if p]]
    if os.environ.get("PYTHONPATH"):
        path.append(os.environ["PYTHONPATH"])
    saved = os.environ.get("PYTHONPATH")
    # a local Ray's workers inherit this process's environment: setting PYTHONPATH for the
    # start is enough, and cheaper than a runtime_env (which starts a worker pool of its own)
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(path))
    try:
        ray.init(
            num_cpus=num_cpus or os.cpu_count() or 2,
            include_dashboard=False,
            ignore_reinit_error=True,
            log_to_driver=False,
        )
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


def _find_store_error(exc: BaseException) -> BiasLensError | None:
    """The BiasLens error an actor raised, found inside Ray's wrappers, if any."""
    seen: set[int] = set()
    todo: list[Any] = [exc]
    while todo:
        err = todo.pop()
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        if isinstance(err, BiasLensError):
            return err
        todo += [getattr(err, "cause", None), err.__cause__, err.__context__]
    # Ray Data re-raises a UDF failure as UserCodeException with the actor's traceback as text.
    found = _ACTOR_ERROR.search(str(exc))
    return StoreError(found.group(1).strip()) if found else None


def _consecutive_runs(rows: np.ndarray) -> list[tuple[int, int]]:
    """[(i, j)] index ranges of ``rows`` that hold consecutive row numbers."""
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    bounds = [0, *breaks.tolist(), len(rows)]
    return list(zip(bounds[:-1], bounds[1:], strict=False))


class RaySource:
    """Output source running the store's forward pass on a Ray cluster (or a local Ray).

    ``address``: a running cluster ("HOST:6379" or "auto"); None starts a local Ray for
    the call (unless Ray is already initialised in this process) and stops it afterwards.
    ``actors``: how many model actors (default: one per GPU, else one per CPU; more CPU
    actors than CPUs share them);
    ``num_gpus_per_actor``: GPUs each actor holds (default 1 when the cluster has GPUs).
    """

    def __init__(
        self,
        workspace: Workspace,
        address: str | None = None,
        batch_size: int = 64,
        precision: str = "fp32",
        actors: int | None = None,
        num_gpus_per_actor: float | None = None,
        *,
        hosted: bool = False,
    ) -> None:
        _import_ray()
        if precision not in PRECISIONS:
            raise StoreError(f"Unknown precision '{precision}'; use one of {', '.join(PRECISIONS)}.")
        if batch_size < 1:
            raise StoreError(f"batch_size must be at least 1, got {batch_size}.")
        if actors is not None and actors < 1:
            raise StoreError(f"actors must be at least 1, got {actors}.")
        self.workspace = workspace
        self.address = address
        self.batch_size = batch_size
        self.precision = precision
        self.actors = actors
        self.num_gpus_per_actor = num_gpus_per_actor
        self.hosted = hosted
        self._started_local = False

    # --- Ray session -------------------------------------------------------------------
    def _connect(self) -> Any:
        ray = _import_ray()
        if ray.is_initialized():
            return ray
        try:
            if self.address:
                ray.init(address=self.address, log_to_driver=False)
            else:
                init_local_ray()
                self._started_local = True
        except Exception as exc:  # noqa: BLE001 - connection failures are the user's to fix
            where = f"the Ray cluster at {self.address}" if self.address else "a local Ray"
            raise StoreError(f"Could not start or reach {where}: {type(exc).__name__}: {exc}") from None
        return ray

    def shutdown_local(self) -> None:
        """Stop the local Ray this source started (never a cluster it only connected to)."""
        if self._started_local:
            ray = _import_ray()
            ray.shutdown()
            self._started_local = False

    def _pool(self, ray: Any) -> tuple[int, dict[str, Any]]:
        """How many actors, and the resources of each, for the cluster at hand."""
        gpus = float(ray.cluster_resources().get("GPU", 0))
        if gpus > 0:
            per_actor = self.num_gpus_per_actor or 1.0
            size = self.actors or max(1, int(gpus // per_actor))
            return size, {"num_gpus": per_actor}
        # no read tasks compete for the CPUs (the rows come as in-memory blocks): one actor
        # per CPU, and more actors than CPUs share them
        cpus = float(ray.cluster_resources().get("CPU", 1))
        size = self.actors or max(1, int(cpus))
        return size, {"num_cpus": min(1.0, cpus / size)}

    # --- the output source -------------------------------------------------------------
    def __call__(self, layers: list[str], want_core: bool, start: int) -> Iterator[tuple[int, Outputs]]:
        return self._iterate(list(layers), want_core, int(start))

    def _iterate(self, layers: list[str], want_core: bool, start: int) -> Iterator[tuple[int, Outputs]]:
        ray = self._connect()
        ctx = ray.data.DataContext.get_current()
        saved = (ctx.execution_options.preserve_order, ctx.enable_progress_bars)
        expected = start
        try:
            ctx.execution_options.preserve_order = True
            ctx.enable_progress_bars = False
            n = self._dataset_length()
            if start >= n:
                return
            actors, resources = self._pool(ray)
            rows = np.arange(start, n, dtype=np.int64)
            # the unit an actor takes at a time: a few batches, but every actor gets a block
            per_block = max(1, min(self.batch_size * BATCHES_PER_BLOCK, -(-len(rows) // actors)))
            blocks = [pd.DataFrame({"id": rows[i : i + per_block]}) for i in range(0, len(rows), per_block)]
            data = ray.data.from_pandas(blocks).map_batches(
                _Extractor,
                fn_constructor_kwargs={
                    "workspace": self.workspace, "layers": layers, "want_core": want_core,
                    "precision": self.precision, "hosted": self.hosted,
                },
                compute=ray.data.ActorPoolStrategy(size=actors),
                batch_size=self.batch_size,
                batch_format="numpy",
                **resources,
            )
            try:
                for batch in data.iter_batches(batch_size=self.batch_size, batch_format="numpy"):
                    rows = np.asarray(batch[_ROW], dtype=np.int64)
                    keys = [k for k in batch if k != _ROW]
                    for i, j in _consecutive_runs(rows):
                        yield int(rows[i]), {k: np.asarray(batch[k][i:j], dtype=np.float32) for k in keys}
                    expected = int(rows[-1]) + 1 if len(rows) else expected
            except Exception as exc:  # noqa: BLE001 - never show a raw Ray traceback
                found = _find_store_error(exc)
                if found is not None:
                    raise StoreError(str(found)) from None
                lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
                raise StoreError(
                    f"The Ray build failed after image {expected}: {type(exc).__name__}: "
                    f"{lines[-1] if lines else ''}"
                ) from None
        finally:
            with contextlib.suppress(Exception):
                ctx.execution_options.preserve_order, ctx.enable_progress_bars = saved
            self.shutdown_local()

    def _dataset_length(self) -> int:
        return len(build_dataset(self.workspace.dataset))
