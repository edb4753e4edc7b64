"""Benchmark: filter saliency profiles (batched vs batch-1), the dataset build, neighbours.

Keys (CPU; with CUDA the same keys again with the suffix ``_cuda`` and ``cuda_device``):
- ``profile_vs_loop_demo``: images/s of ``filter_profiles(method="auto")`` (batched
  per-sample gradients) over ``loop_profiles`` (batch 1), demo CNN on demo test images.
- ``profile_vs_loop_resnet18``: the same for torchvision resnet18 with random weights at
  224 px, on demo test images resized to 224 (the store's transform). The loop runs on a
  prefix of the batch (``resnet18_loop_images``); both sides are images/s.
- ``profile_vs_backward_resnet18``: images/s of the batched profiles over images/s of one
  plain batched forward+backward (mean loss) of the same batch, the floor of any
  per-sample method (1 would make per-sample gradients free; the issue aims at >= 0.3).
- ``backward_vs_loop_demo``, ``backward_vs_loop_resnet18``: images/s of that plain batched
  forward+backward over the batch-1 loop, measured in the same run: the most any
  per-sample method can reach over the loop on this device (the ceiling of
  ``profile_vs_loop_*``).
- ``dataset_profiles_s_demo``: seconds of ``build_profiles`` over the whole demo test split
  (10k images), into a store built in a temporary folder (the build itself not timed).
- ``neighbours_s_50k``: seconds for the top-10 cosine neighbours of one image among a
  random 50,000 x 26,500 float16 memmap of z-profiles (written to a temporary folder,
  deleted after), with the rows' norms precomputed once (``neighbours_norms_s_50k``, once
  per profiles and layer range); ``neighbours_s_50k_layers`` restricts to a third of the
  columns and ``neighbours_s_50k_cold`` computes the norms in the call.
- ``input_map_s_resnet18``: seconds of one ``FilterSaliency.explain`` (profile, top-10 filters,
  double-backward input map) on one 224 px image, resnet18 with random weights.
- ``marker_mass_ratio``, with ``marker_mass_ratio_loss_gradient`` beside it (the same
  measure on the plain loss gradient |dL/dx|, channel max, the trivial baseline), ``turn_off_10_corrected_demo``, ``fine_tune_corrected_demo`` (share
  of 20 of the slice's errors corrected by one step through 1% of the filters: salient,
  random, least), ``demo_p10`` (and
  ``demo_p10_confusion_baseline`` beside it): the demo's known answers, from the profiles
  the dataset build made (``demo_slice_figures``).

    .venv/bin/python bench/saliency.py [--quick] [--cuda-only]

``--cuda-only`` skips the CPU keys and the neighbours (for a lent GPU machine's short slot;
``bench/gpu.sh`` runs it).

Prints a summary, then, last, one JSON line.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import core.demo  # noqa: E402, F401  (registers the demo model and dataset kinds)
from bench.common import machine_figures  # noqa: E402
from core.data.sources import DatasetSpec, build_dataset  # noqa: E402
from core.methods import (  # noqa: E402
    FailureModes,
    FilterSaliency,
    FilterTurnOff,
    FineTuneCheck,
    confusion_cell_groups,
    failure_mode_scorecard,
)
from core.methods.saliency.explain import marker_mass_ratio  # noqa: E402
from core.methods.saliency.filters import (  # noqa: E402
    ProfileStats,
    conv_filters,
    eval_mode,
    filter_profiles,
    loop_profiles,
)
from core.methods.saliency.profiles import build_profiles, nearest, row_norms  # noqa: E402
from core.models.loading import ModelSpec, load_model  # noqa: E402
from core.scoring.scorecard import scorecard  # noqa: E402
from core.store.build import build_store  # noqa: E402
from core.store.pipeline import image_batches  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _best(fn, repeats: int, device: torch.device) -> float:
    """Fastest of ``repeats`` timed runs after one warm-up (steadier on a shared CPU)."""
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return min(times)


def _batch(model, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    dataset = build_dataset(DatasetSpec(kind="demo", split="test", limit=limit))
    x = torch.cat(list(image_batches(dataset, model, 0, limit, 0))).to(model.device)
    return x, torch.as_tensor(np.array(dataset.labels), device=model.device)


def profile_vs_loop(model, n: int, n_loop: int, repeats: int) -> dict:
    """Images/s of the batched profiles and of the batch-1 loop on the same images."""
    x, y = _batch(model, n)
    index = conv_filters(model.module)
    module = model.module
    batched = _best(lambda: filter_profiles(module, x, y, index), repeats, model.device)
    with eval_mode(module):
        loop = _best(lambda: loop_profiles(module, x[:n_loop], y[:n_loop], index), max(1, repeats - 1), model.device)
    plain = _best(lambda: _forward_backward(module, x, y), repeats, model.device)
    return {"batched_ips": n / batched, "loop_ips": n_loop / loop, "batched_s": batched, "backward_s": plain,
            "backward_ips": n / plain, "filters": index.n_filters}


def _forward_backward(module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    with eval_mode(module):
        module.zero_grad(set_to_none=True)
        F.cross_entropy(module(x).float(), y).backward()
        module.zero_grad(set_to_none=True)


def dataset_figures(device: str) -> dict:
    """Seconds of build_profiles over the 10k demo test images (store built first, untimed),
    then the demo's known answers from those profiles (demo_slice_figures)."""
    model = load_model(ModelSpec(kind="demo"), device)
    dataset = build_dataset(DatasetSpec(kind="demo", split="test"))
    with tempfile.TemporaryDirectory() as root:
        store = build_store("bench", model, dataset, [], batch_size=256, root=Path(root))
        start = time.perf_counter()
        profiles = build_profiles(store, model, dataset, batch_size=256)
        seconds = time.perf_counter() - start
        print(f"[{device}] build_profiles over the 10k demo images: {seconds:.1f} s ({profiles.method})")
        return {"dataset_profiles_s_demo": round(seconds, 1), "dataset_profiles_method": profiles.method,
                **demo_slice_figures(device, profiles, store)}


def neighbours(n: int, f: int, repeats: int) -> dict:
    """Top-10 cosine neighbours among a random (n, f) float16 z memmap in a temporary folder."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "z.f16"
        start = time.perf_counter()
        z = np.memmap(path, dtype=np.float16, mode="w+", shape=(n, f))
        generator = torch.Generator().manual_seed(0)
        for row in range(0, n, 2000):
            z[row : row + 2000] = torch.randn(min(2000, n - row), f, generator=generator).half().numpy()
        z.flush()
        del z
        created = time.perf_counter() - start
        mm = np.memmap(path, dtype=np.float16, mode="r", shape=(n, f))
        query = np.asarray(mm[123], dtype=np.float32)
        start = time.perf_counter()
        norms = row_norms(mm)
        norms_s = time.perf_counter() - start
        cols = np.arange(f // 3)
        layer_norms = row_norms(mm, cols)
        warm = _best(lambda: nearest(mm, query, 10, query_row=123, norms=norms), repeats, torch.device("cpu"))
        layers = _best(lambda: nearest(mm, query, 10, columns=cols, query_row=123, norms=layer_norms), repeats,
                       torch.device("cpu"))
        start = time.perf_counter()
        rows, _ = nearest(mm, query, 10, query_row=123)
        cold = time.perf_counter() - start
    assert 123 not in rows and len(rows) == 10
    return {"neighbours_s_50k": round(warm, 3), "neighbours_s_50k_layers": round(layers, 3),
            "neighbours_norms_s_50k": round(norms_s, 2), "neighbours_s_50k_cold": round(cold, 2),
            "neighbours_memmap_gb": round(n * f * 2 / 1e9, 2), "neighbours_create_s": round(created, 1)}


def input_map_seconds(device: str) -> float:
    """Seconds of one FilterSaliency.explain (profile, top-10, double-backward input map) on a
    224 px image, resnet18 with random weights (statistics from 8 images, not timed)."""
    model = load_model(ModelSpec(kind="torchvision", arch="resnet18", num_classes=10, input_size=224), device)
    dataset = build_dataset(DatasetSpec(kind="demo", split="test", limit=8))
    index = conv_filters(model.module)
    x, y = _batch(model, 8)
    stats = ProfileStats(index.n_filters).update(filter_profiles(model.module, x, y, index).cpu().numpy())
    image, label = dataset.load_image(0), int(dataset.labels[0])
    explain = lambda: FilterSaliency().explain(model, image, label, mu=stats.mu, sigma=stats.sigma, index=index)  # noqa: E731
    return _best(explain, 2, model.device)


def marker_box(dataset, size: int) -> np.ndarray:
    """(S, S) bool box of the demo's square marker, from the slices file's parameters (its
    corner and size; the renderer keeps a 1-pixel margin from the image edge)."""
    attribute = dataset.spec.attribute("marker")
    params = dict(zip(attribute.values, attribute.params, strict=True))["square"]
    side, pad = int(params["size"]), 1
    top = pad if params["corner"].startswith("top") else size - pad - side
    left = pad if params["corner"].endswith("left") else size - pad - side
    box = np.zeros((size, size), dtype=bool)
    box[top : top + side, left : left + side] = True
    return box


def loss_gradient_maps(model, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """(n, S, S) |dL/dx| of each image's own cross-entropy, maximum over the colour channels:
    the plain input gradient the filter-saliency maps are compared with."""
    with eval_mode(model.module), torch.enable_grad():
        xi = x.to(model.device).detach().requires_grad_(True)
        loss = F.cross_entropy(model.module(xi).float(), y.to(model.device), reduction="sum")
        (gradient,) = torch.autograd.grad(loss, xi)
    return gradient.abs().amax(dim=1).cpu().numpy()


def demo_slice_figures(device: str, profiles, store) -> dict:
    """On the demo's spurious slice (sandals with the corner square) and its errors:
    ``marker_mass_ratio`` (share of the input-space maps' mass inside the square over its
    share of the area; the issue expects >= 3), the Fig. 3 check (share of the slice's
    errors corrected by turning off the 10 most salient filters vs 10 random ones), and
    ``demo_p10`` (best P@10 per planted slice of the failure-mode groups, beside the
    confusion-cell baseline)."""
    model = load_model(ModelSpec(kind="demo"), device)
    dataset = build_dataset(DatasetSpec(kind="demo", split="test"))
    meta = store.meta()
    index, mu, sigma = profiles.index, profiles.mu, profiles.sigma
    wrong_slice = np.flatnonzero(meta["slice_marked_sandals"].to_numpy() & ~meta["correct"].to_numpy())[:60]
    box = marker_box(dataset, model.input_size)
    maps = [
        FilterSaliency().explain(model, dataset.load_image(int(r)), int(meta["label_idx"].iloc[r]), mu=mu, sigma=sigma,
                                 index=index).map
        for r in wrong_slice
    ]
    boxes = np.repeat(box[None], len(maps), axis=0)
    ratio = marker_mass_ratio(np.stack(maps), boxes)
    x = torch.cat(list(image_batches(dataset, model, 0, len(meta), 0)))[wrong_slice]
    y = torch.as_tensor(meta["label_idx"].to_numpy()[wrong_slice])
    baseline_ratio = marker_mass_ratio(loss_gradient_maps(model, x, y), boxes)
    turned = FilterTurnOff(max_k=10, n_random=5).explain(model, x, y, z=profiles.z(wrong_slice), index=index).summary()
    at_10 = turned[turned["k"] == 10].set_index("order")["corrected"]
    z_slice = profiles.z(wrong_slice)
    tuned = [
        FineTuneCheck().explain(model, x[i : i + 1], int(y[i]), z=z_slice[i], index=index).results.set_index("variant")["image_corrected"]
        for i in range(min(20, len(wrong_slice)))
    ]
    fine_tune = {variant: round(float(np.mean([t[variant] for t in tuned])), 3) for variant in ("salient", "random", "least")}
    errors = np.flatnonzero(~meta["correct"].to_numpy())
    modes = FailureModes().fit(profiles.z(errors), errors, index)
    card = failure_mode_scorecard(modes, meta)
    cells = confusion_cell_groups(meta["label_idx"].to_numpy()[errors], meta["pred_idx"].to_numpy()[errors],
                                  meta["loss"].to_numpy()[errors], errors)
    slices = [c for c in meta.columns if c.startswith("slice_")]
    baseline = scorecard(meta[slices].to_numpy(dtype=bool), list(cells["rows"]),
                         slice_names=[c.removeprefix("slice_") for c in slices])
    print(f"[{device}] marker mass ratio {ratio:.2f} over {len(maps)} misclassified marked sandals (plain loss "
          f"gradient {baseline_ratio:.2f}); turning off 10 "
          f"filters corrects {at_10['salient']:.0%} (salient) vs {at_10['random']:.0%} (random), {at_10['least']:.0%} (least)")
    print(card.to_string(index=False))
    return {
        "marker_mass_ratio": round(float(ratio), 2),
        "marker_mass_ratio_loss_gradient": round(float(baseline_ratio), 2),
        "turn_off_10_corrected_demo": {k: round(float(v), 3) for k, v in at_10.items()},
        "fine_tune_corrected_demo": fine_tune,
        "demo_p10": dict(zip(card["slice"], card["P@10"].round(2), strict=True)),
        "demo_p10_confusion_baseline": dict(zip(baseline["slice"], baseline["P@10"].round(2), strict=True)),
    }


def run(device: str, quick: bool) -> dict:
    """Every key on one device (without suffix)."""
    repeats = 1 if quick else 2
    demo = profile_vs_loop(load_model(ModelSpec(kind="demo"), device), 256, 64, repeats)
    print(f"[{device}] demo CNN ({demo['filters']} filters): batched {demo['batched_ips']:.0f} img/s, "
          f"loop {demo['loop_ips']:.0f} img/s")
    resnet = load_model(ModelSpec(kind="torchvision", arch="resnet18", num_classes=10, input_size=224), device)
    n_loop = 256 if device == "cuda" else 32
    rn = profile_vs_loop(resnet, 256, n_loop, 1)
    print(f"[{device}] resnet18 ({rn['filters']} filters, 256 images at 224 px): batched {rn['batched_ips']:.1f} "
          f"img/s, loop {rn['loop_ips']:.1f} img/s ({n_loop} images), plain forward+backward {rn['backward_s']:.2f} s"
          f" vs profiles {rn['batched_s']:.2f} s")
    figures = {
        "profile_vs_loop_demo": round(demo["batched_ips"] / demo["loop_ips"], 2),
        "profile_vs_loop_resnet18": round(rn["batched_ips"] / rn["loop_ips"], 2),
        "profile_vs_backward_resnet18": round(rn["backward_s"] / rn["batched_s"], 2),
        "backward_vs_loop_demo": round(demo["backward_ips"] / demo["loop_ips"], 2),
        "backward_vs_loop_resnet18": round(rn["backward_ips"] / rn["loop_ips"], 2),
        "demo_batched_ips": round(demo["batched_ips"], 1),
        "demo_loop_ips": round(demo["loop_ips"], 1),
        "resnet18_batched_ips": round(rn["batched_ips"], 2),
        "resnet18_loop_ips": round(rn["loop_ips"], 2),
        "resnet18_loop_images": n_loop,
        "resnet18_images": "256 demo test images resized to 224 px",
    }
    figures["input_map_s_resnet18"] = round(input_map_seconds(device), 2)
    print(f"[{device}] input-space map of one 224 px image, resnet18: {figures['input_map_s_resnet18']} s")
    if not quick:
        figures.update(dataset_figures(device))
    return figures


def main() -> int:
    quick = "--quick" in sys.argv
    cuda_only = "--cuda-only" in sys.argv
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    figures = {}
    if not cuda_only:
        figures.update(run("cpu", quick))
        n = 5_000 if quick else 50_000
        nn = neighbours(n, 26_500, 3)
        print(f"neighbours among {n} x 26,500 float16 ({nn['neighbours_memmap_gb']} GB): {nn['neighbours_s_50k']} s "
              f"(norms once: {nn['neighbours_norms_s_50k']} s; a third of the columns: {nn['neighbours_s_50k_layers']} s; "
              f"norms in the call: {nn['neighbours_s_50k_cold']} s)")
        figures.update(nn)
    if torch.cuda.is_available():
        figures.update({f"{k}_cuda": v for k, v in run("cuda", quick).items()})
        figures["cuda_device"] = torch.cuda.get_device_name()
    else:
        figures["cuda_device"] = "no cuda"
    figures.update(machine_figures(f"cpu x{torch.get_num_threads()}"))
    figures["quick"] = quick
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
