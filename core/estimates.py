"""How long a heavy run will take on this server, and the caps hosted visitors run under.

Heavy runs say their expected time beside their button before they start, and a hosted
server refuses a visitor's run that passes a cap below, with what to make smaller. The
estimates are arithmetic on the data's size (images, layers and their widths, seeds,
epochs, filters) and on the model's multiply-adds per image (``model_cost``, counted with
one forward pass of one blank image).

Calibration (rerun it by timing the calls named below), this project's 2-core
CPU VM, 2026-12-07, in CPU seconds of one torch thread (``time.process_time`` under
``torch.set_num_threads(1)``): other processes shared the machine (load 6 to 11), which
inflated wall-clock times up to 20-fold but not these. The fewest seconds of 5 to 16 repeats:

- per image, the tiny test CNN (0.28 M multiply-adds, 16 px), the demo CNN (10.4 M, 32 px)
  and resnet18 (1.81 G, 224 px): a forward pass (``reduced_activations``) 0.13 ms, 0.59 ms,
  40 ms; a saliency profile (``build_profiles``) 0.24 ms, 1.6 ms, 207 ms; turning filters
  off (``FilterTurnOff``, 217 masked passes) 6.0 ms, 0.11 s, 12.2 s; the fine-tuning check
  (``FineTuneCheck``, 10 neighbours) 7.1 ms, 49 ms, 3.7 s. Each curve a + A * macs ** P
  passes through its three points;
- the neighbour search over 20,000 x 2,000 float16 profiles (``row_norms``, ``nearest``);
- ``LinearProbes.fit`` on 13 sizes (300 to 4,608 images, widths 16 to 8,192, 3 to 36
  groups, 1 to 5 seeds, 1 to 50 epochs): every estimate within 8% of its measurement.

Two threads on a quiet machine ran 1.3 to 1.4 times faster (probes, the demo's profiles);
a busy server is slower. The estimates are for one run at a time, as the run queue serves
them (core/runqueue.py).
"""

from __future__ import annotations

import copy
import math
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from core.errors import BiasLensError
from core.models import LoadedModel
from core.torchscript import ScriptedModel

# --------------------------------------------------------------------------- hosted caps

HOSTED_MAX_RUN_SECONDS = 600.0  # a visitor's run may take this long by its estimate
HOSTED_MAX_SEEDS = 5  # probe seeds (splits) per run
HOSTED_MAX_EPOCHS = 100  # probe epochs
HOSTED_MAX_PROBE_LAYERS = 8  # layers probed in one run
HOSTED_MAX_PER_GROUP = 256  # images per group the probes train on
HOSTED_MAX_FILTERS_K = 100  # Filter saliency: top filters (k) of one image, filters fine-tuned
HOSTED_MAX_IMAGES = 200  # Filter saliency: images of one turn-off or fine-tuning run over many
HOSTED_REQUEST_DISK_BYTES = 64 * 10**6  # new probe features one visitor's run may write
HOSTED_VISITOR_DISK_BYTES = 1024 * 10**6  # all probe features visitors wrote beside one store

# --------------------------------------------------------------------------- calibration

# Per image: seconds = a + A * (multiply-adds) ** P, an overhead plus the model's compute.
FORWARD = (1.09e-4, 4.69e-10, 0.857)  # a batched forward pass, loading the image included
PROFILE = (2.00e-4, 2.08e-10, 0.972)  # a saliency profile (per-sample gradients, batched)
MASKED_PASS = (1.03e-5, 1.75e-10, 0.919)  # one of the turn-off experiment's masked passes of one image
CHECK_PASS = (5.84e-5, 4.54e-10, 0.861)  # one image-pass of the fine-tuning check, its gradient spread over them
LOOP_FACTOR = 1.5  # TorchScript models compute profiles one image at a time (README: 1.58x on the demo)
NORMS_S_PER_VALUE = 3.4e-10  # the neighbour search's one pass of norms over the profiles, per value
NEAREST_S_PER_VALUE = 1.3e-10  # one image's neighbour search, per profile value
# Probe training: per layer; per step of each probe; per value of each probe's pass; the same
# times the groups; once per layer, per value of each seed's standardised copy.
PROBE_LAYER_S = 2.09e-2
PROBE_STEP_S = 3.56e-5
PROBE_VALUE_S = 4.52e-9
PROBE_GROUP_VALUE_S = 1.30e-10
PROBE_COPY_S = 1.53e-8


class HostedLimit(BiasLensError):
    """A hosted server's visitor asked for a run beyond the caps visitors run under."""


@dataclass(frozen=True)
class ModelCost:
    """What one image costs the model: multiply-adds of its forward pass, and whether its
    per-sample gradients run one image at a time (TorchScript)."""

    macs: int
    scripted: bool = False


_COSTS: weakref.WeakKeyDictionary[nn.Module, ModelCost] = weakref.WeakKeyDictionary()


def hook_free_copy(module: nn.Module) -> nn.Module:
    """A private copy of a model for a probe pass (its cost, its layers' shapes): hooks that
    other sessions' runs registered on the shared model neither fire in it nor see its pass.
    A TorchScript model's script is copied and wrapped afresh (its wrapper cannot be copied)."""
    if isinstance(module, ScriptedModel):
        return ScriptedModel(copy.deepcopy(module._script)).eval()
    try:
        twin = copy.deepcopy(module)
    except RuntimeError:  # another thread added or removed a hook while it was copied: once more
        twin = copy.deepcopy(module)
    for sub in twin.modules():
        sub._forward_hooks.clear()
        sub._forward_pre_hooks.clear()
    return twin.eval()


def model_cost(model: LoadedModel) -> ModelCost:
    """The multiply-adds of one image's forward pass: each layer with a weight matrix or
    conv kernel adds its output size times the weights behind one output, counted by hooks
    during a pass of one blank image through a private copy (``hook_free_copy``). When no
    hook fires (a graph the hooks cannot see), the pass is timed instead and turned into
    multiply-adds with the forward calibration. Counted once per model (a page asks on
    every rerun)."""
    if model.module in _COSTS:
        return _COSTS[model.module]
    module, size = hook_free_copy(model.module), model.input_size
    x = torch.zeros(1, 3, size, size, device=model.device)
    total = 0

    def count(layer: nn.Module, _inputs: object, output: object) -> None:
        nonlocal total
        out = output[0] if isinstance(output, (tuple, list)) else output
        if isinstance(out, torch.Tensor) and out.dim() > 0:
            total += out.numel() // max(int(out.shape[0]), 1) * layer.weight[0].numel()

    for layer in module.modules():
        if isinstance(getattr(layer, "weight", None), torch.Tensor) and layer.weight.dim() in (2, 4):
            layer.register_forward_hook(count)  # on the private copy, discarded afterwards
    with torch.inference_mode():
        module(x)
    scripted = isinstance(module, ScriptedModel)
    if total == 0:
        with torch.inference_mode():
            start = time.perf_counter()
            module(x.expand(8, -1, -1, -1))
            seconds = (time.perf_counter() - start) / 8
        overhead, scale, power = FORWARD
        total = int((max(seconds - overhead, overhead) / scale) ** (1 / power))
    _COSTS[model.module] = ModelCost(macs=max(total, 1), scripted=scripted)
    return _COSTS[model.module]


def _per_image(curve: tuple[float, float, float], cost: ModelCost) -> float:
    overhead, scale, power = curve
    return overhead + scale * float(cost.macs) ** power


# --------------------------------------------------------------------------- estimates


def forward_seconds(cost: ModelCost, images: int) -> float:
    """A batched forward pass over ``images`` images (loading them included)."""
    return images * _per_image(FORWARD, cost)


def profile_seconds(cost: ModelCost, images: int) -> float:
    """The dataset's saliency profiles of ``images`` images (per-sample gradients)."""
    return images * _per_image(PROFILE, cost) * (LOOP_FACTOR if cost.scripted else 1.0)


def turn_off_seconds(cost: ModelCost, images: int, max_k: int = 30, n_random: int = 5) -> float:
    """Turning filters off (k = 0..max_k in the salient, least and n_random random orders)
    over ``images`` images: (n_random + 2) x (max_k + 1) masked passes of each image."""
    return images * (n_random + 2) * (max_k + 1) * _per_image(MASKED_PASS, cost)


def fine_tune_seconds(cost: ModelCost, images: int, n_filters: int, dataset_images: int,
                      n_neighbours: int = 10, n_random: int = 5) -> float:
    """The fine-tuning check over ``images`` images: the norms of the dataset's profiles once,
    then per image its neighbour search (over the whole dataset at most) and its gradient
    and n_random + 3 passes over it and its neighbours."""
    values = dataset_images * n_filters
    passes = (n_random + 3) * (1 + n_neighbours) * _per_image(CHECK_PASS, cost)
    return values * NORMS_S_PER_VALUE + images * (values * NEAREST_S_PER_VALUE + passes)


def probe_seconds(images: int, dims: Sequence[int], n_groups: int, seeds: int, epochs: int,
                  shuffled: bool = True, val_share: float = 0.1, batch_size: int = 64) -> float:
    """Training the linear probes of layers of widths ``dims`` on ``images`` images: for each
    layer, a standardised copy of the features per seed, then ``epochs`` passes of 2 x
    ``seeds`` probes (with the shuffled control) over the training split in batches and over
    every image for the accuracies."""
    probes = seeds * (2 if shuffled else 1)
    steps = math.ceil(math.ceil((1 - val_share) * images) / batch_size)
    total = 0.0
    for d in dims:
        values = probes * images * d
        total += (PROBE_LAYER_S + PROBE_COPY_S * seeds * images * d
                  + epochs * (PROBE_STEP_S * steps * probes + PROBE_VALUE_S * values + PROBE_GROUP_VALUE_S * values * n_groups))
    return total


def duration(seconds: float) -> str:
    """A rounded duration for people: '5 s', '40 s', '6 min', '1.5 h'."""
    if seconds < 10:
        return f"{max(1, round(seconds))} s"
    if seconds < 90:
        return f"{round(seconds, -1):.0f} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def on_this_server(seconds: float) -> str:
    """The estimate as shown beside a button: 'about 6 min on this server'."""
    return f"about {duration(seconds)} on this server"


# --------------------------------------------------------------------------- hosted checks


def check_probe_request(layers: int, seeds: int, epochs: int, per_group: int) -> None:
    """HostedLimit when a visitor's probe run asks for more than the hosted caps."""
    over = [
        f"{name} ({asked}; at most {cap})"
        for name, asked, cap in (("layers", layers, HOSTED_MAX_PROBE_LAYERS), ("seeds", seeds, HOSTED_MAX_SEEDS),
                                 ("epochs", epochs, HOSTED_MAX_EPOCHS), ("cap per group", per_group, HOSTED_MAX_PER_GROUP))
        if asked > cap
    ]
    if over:
        raise HostedLimit(f"This server caps visitors' probe runs: lower the {', '.join(over)}.")


def check_saliency_request(k: int = 0, images: int = 0) -> None:
    """HostedLimit when a visitor's Filter saliency run asks for more filters or images than
    the hosted caps."""
    if k > HOSTED_MAX_FILTERS_K:
        raise HostedLimit(f"This server caps visitors at {HOSTED_MAX_FILTERS_K} filters (k = {k}): use k of at most "
                          f"{HOSTED_MAX_FILTERS_K}.")
    if images > HOSTED_MAX_IMAGES:
        raise HostedLimit(f"This server caps visitors' runs at {HOSTED_MAX_IMAGES} images ({images:,} asked): "
                          f"use at most {HOSTED_MAX_IMAGES}.")


def check_image_run(images: int, seconds: float, what: str) -> None:
    """HostedLimit when a visitor's run over many images passes the image cap or the time
    cap, saying how many images would fit."""
    check_saliency_request(images=images)
    fit = max(fitting(images, seconds), 1)
    check_seconds(seconds, what, f"Use at most {fit:,} image{'s' if fit != 1 else ''}.")


def fitting(amount: int, seconds: float) -> int:
    """How much of ``amount`` (images, epochs) fits the hosted time cap, when ``amount``
    takes ``seconds``: the run's time is taken as proportional to it."""
    return int(amount * HOSTED_MAX_RUN_SECONDS / seconds) if seconds > 0 else amount


def check_seconds(seconds: float, what: str, smaller: str) -> None:
    """HostedLimit when a visitor's run would take longer than the hosted cap by its
    estimate; ``smaller`` says how to make it fit."""
    if seconds > HOSTED_MAX_RUN_SECONDS:
        raise HostedLimit(
            f"{what} would take {on_this_server(seconds)}; visitors may start runs of up to "
            f"{duration(HOSTED_MAX_RUN_SECONDS)}. {smaller}"
        )


def check_disk(new_bytes: int, written_bytes: int, what: str, smaller: str) -> None:
    """HostedLimit when a visitor's run would write more than the per-run disk budget, or
    push what visitors wrote beside the store (``written_bytes``) past the total budget."""
    if new_bytes > HOSTED_REQUEST_DISK_BYTES:
        raise HostedLimit(f"{what} would write {megabytes(new_bytes)} to this server's disk; a visitor's run may write "
                          f"{megabytes(HOSTED_REQUEST_DISK_BYTES)}. {smaller}")
    if written_bytes + new_bytes > HOSTED_VISITOR_DISK_BYTES:
        raise HostedLimit(f"The space this server gives visitors' new results ({megabytes(HOSTED_VISITOR_DISK_BYTES)}) "
                          f"is used up. {smaller}")


def megabytes(n: int) -> str:
    """Bytes in MB, for people."""
    return f"{n / 1e6:,.0f} MB" if n >= 1e6 else f"{n / 1e6:.1f} MB"
