"""Store extraction throughput vs a bare forward pass over the same images, in one run.

Two cases: the demo workspace (demo CNN, 10k rendered test images) and a torchvision
resnet18 with random weights on 512 demo images at 224 px. For each, the bare forward
iterates the same DataLoader the store uses and runs the model under inference_mode; the
store build adds hooks, pooling, memory-mapped writes, checkpoints and the metadata file.
Each side is timed three times (alternating, after a warm-up) and its fastest run counts,
which keeps the ratio steady when other processes share the CPU.

Prints a summary, then a JSON line: demo_ratio, resnet18_ratio (store images/s divided by
bare-forward images/s; target >= 0.85) and the raw throughputs.

On a CUDA machine it also measures the store against the GPU's own speed (issue 14), for
resnet50 and resnet18 (torchvision, random weights, 224 px, batch 256, ``--precision``, fp32 by
default): ``gpu_forward_ips_<arch>`` is the forward pass alone on a preloaded batch already on
the GPU; ``store_ips_<arch>`` a complete store build (the default layers, workers = the
machine's cores) over a JPEG ImageFolder of 8,192 images the script writes (the demo's test
images rendered at 256 px); ``store_over_gpu_<arch>`` their ratio (targets on one H100:
resnet50 >= 0.8, resnet18 >= 0.5), and ``stages_<arch>`` where the build's time went. Without
CUDA these keys say "no cuda".

Ray Data (issue 14): ``ray_over_single_cpu`` is the demo's 10k store built through a local Ray
(``RaySource`` with its default CPU actors, as ``build --ray``) over the single-process build, in images/s, both on this
machine's CPUs; ``ray_start_s`` is the local Ray's start, which the cold figure
``ray_over_single_cpu_cold`` includes; ``ray_first_batch_s`` is how long the actors took to
start (each a Python process that imports torch and rebuilds the model and the dataset)
and ``ray_steady_over_single_cpu`` the throughput after that over the single process's;
``ray_identical`` says whether the two stores hold the
same rows, metadata, arrays (to 1e-5) and fingerprint. Without Ray installed these keys say
so. ``--skip-ray`` leaves them out; ``--gpu-only`` keeps only the CUDA keys (for a lent GPU
machine's short slot; ``bench/gpu.sh`` runs it).

On CUDA, ``gpu_vs_cpu_demo`` and ``gpu_vs_cpu_jpeg`` compare the GPU path with the CPU path
(the demo model's stores of the demo split and of the 256 px JPEG folder): the largest
logit difference, the share of identical predictions, both accuracies, and the decoder used.

    .venv/bin/python bench/extract.py [--precision bf16] [--skip-ray] [--gpu-only]
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import core.demo  # noqa: E402, F401  (registers the demo model and dataset kinds)
from core.data.sources import DatasetSpec, build_dataset  # noqa: E402
from core.models.loading import ModelSpec, load_model  # noqa: E402
from core.store.build import build_store  # noqa: E402
from core.store.pipeline import StageTimes, image_batches, resolve_decode  # noqa: E402


def bare_forward_seconds(model, dataset, batch_size: int) -> float:
    """Seconds for loading + transforming + forwarding every image, nothing stored."""
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in image_batches(dataset, model, 0, batch_size, 0):
            model.module(batch.to(model.device))
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def store_seconds(model, dataset, layers, batch_size: int) -> float:
    """Seconds for a complete store build into a fresh directory."""
    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        build_store("bench", model, dataset, layers, batch_size=batch_size, root=Path(root))
        return time.perf_counter() - start


def compare(name: str, model, dataset, batch_size: int) -> dict:
    """Alternate bare and store runs three times after a warm-up; keep each side's best."""
    layers = model.default_layers
    bare_forward_seconds(model, dataset, batch_size)  # warm-up: allocator, kernels, caches
    bare, store = [], []
    for _ in range(3):
        bare.append(bare_forward_seconds(model, dataset, batch_size))
        store.append(store_seconds(model, dataset, layers, batch_size))
    n = len(dataset)
    bare_ips, store_ips = n / min(bare), n / min(store)
    print(f"{name}: {n} images, layers {layers}: bare {bare_ips:.0f} img/s, store {store_ips:.0f} img/s, "
          f"ratio {store_ips / bare_ips:.3f}")
    return {"images": n, "bare_ips": round(bare_ips, 1), "store_ips": round(store_ips, 1),
            "ratio": round(store_ips / bare_ips, 3)}


GPU_ARCHS = ("resnet50", "resnet18")
GPU_TARGETS = {"resnet50": 0.8, "resnet18": 0.5}
JPEG_IMAGES = 8192


def jpeg_folder(root: Path, count: int = JPEG_IMAGES) -> Path:
    """An ImageFolder of ``count`` JPEGs: the demo's test images (cycled) rendered at 256 px."""
    demo = build_dataset(DatasetSpec(kind="demo", split="test"))
    for i in range(count):
        row = i % len(demo)
        folder = root / demo.classes[int(demo.labels[row])].replace("/", "-")
        folder.mkdir(parents=True, exist_ok=True)
        demo.load_image(row).convert("RGB").resize((256, 256)).save(folder / f"{i:05d}.jpg", quality=90)
    return root


def gpu_forward_ips(model, batch_size: int, precision: str, seconds: float = 10.0) -> float:
    """Images/s of the forward pass alone on one preloaded batch on the GPU (the ceiling)."""
    from core.store.pipeline import PRECISIONS

    batch = torch.randn(batch_size, 3, 224, 224, device="cuda")
    dtype = PRECISIONS[precision]
    with torch.inference_mode(), torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
        for _ in range(3):
            model.module(batch)
        torch.cuda.synchronize()
        start, done = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            model.module(batch)
            done += batch_size
        torch.cuda.synchronize()
    return done / (time.perf_counter() - start)


def gpu_figures(precision: str) -> dict:
    """Store build vs the GPU's own forward, per architecture (issue 14's keys)."""
    if not torch.cuda.is_available():
        return {f"{key}_{arch}": "no cuda" for arch in GPU_ARCHS for key in ("gpu_forward_ips", "store_ips", "store_over_gpu")}
    figures: dict = {"precision": precision}
    with tempfile.TemporaryDirectory() as folder:
        images = build_dataset(DatasetSpec(kind="imagefolder", root=str(jpeg_folder(Path(folder) / "jpeg"))))
        figures["decode"] = resolve_decode("auto", images, torch.device("cuda"))
        figures.update(gpu_agreement(Path(folder) / "jpeg"))
        for arch in GPU_ARCHS:
            model = load_model(ModelSpec(kind="torchvision", arch=arch, num_classes=len(images.classes), input_size=224), "cuda")
            forward = gpu_forward_ips(model, 256, precision)
            times = StageTimes()
            with tempfile.TemporaryDirectory() as root:
                build_store("bench", model, images, model.default_layers, batch_size=256, num_workers=os.cpu_count() or 1,
                            root=Path(root), precision=precision, times=times)
            store = times.summary()["img_per_s"]
            figures[f"gpu_forward_ips_{arch}"] = round(forward, 1)
            figures[f"store_ips_{arch}"] = store
            figures[f"store_over_gpu_{arch}"] = round(store / forward, 3)
            figures[f"stages_{arch}"] = times.summary()["stages_s"]
            print(f"{arch}: GPU forward {forward:,.0f} img/s, store {store:,.0f} img/s "
                  f"(ratio {store / forward:.2f}, target {GPU_TARGETS[arch]}); {times.text()}")
    return figures


def gpu_agreement(folder: Path) -> dict:
    """The CUDA path (uint8 to the GPU, scaling and normalising there; nvJPEG when TorchCodec
    loads) against the CPU path: the demo model's stores of the demo test split and of the
    JPEG folder (256 px, so the resize matters), max |logit difference| and the share of
    identical predictions, and each side's accuracy."""
    figures: dict = {}
    demo = build_dataset(DatasetSpec(kind="demo", split="test"))
    # the folders are the demo's class names ("/" written as "-"), in the demo model's order
    images = build_dataset(DatasetSpec(kind="imagefolder", root=str(folder),
                                       classes=[c.replace("/", "-") for c in demo.classes]))
    for name, dataset in (("demo", demo), ("jpeg", images)):
        stores = {}
        with tempfile.TemporaryDirectory() as root:
            for device in ("cpu", "cuda"):
                model = load_model(ModelSpec(kind="demo"), device)
                stores[device] = build_store("bench", model, dataset, [], batch_size=256, num_workers=os.cpu_count() or 1,
                                             root=Path(root) / device)
            gap = float(np.abs(np.asarray(stores["cpu"].logits()) - np.asarray(stores["cuda"].logits())).max())
            cpu, gpu = stores["cpu"].meta(), stores["cuda"].meta()
            figures[f"gpu_vs_cpu_{name}"] = {
                "max_logit_diff": round(gap, 5),
                "same_prediction": round(float((cpu["pred_idx"] == gpu["pred_idx"]).mean()), 5),
                "accuracy_cpu": round(float(cpu["correct"].mean()), 5),
                "accuracy_cuda": round(float(gpu["correct"].mean()), 5),
                "decode_cuda": resolve_decode("auto", dataset, torch.device("cuda")),
            }
        print(f"GPU vs CPU path, {name}: {figures[f'gpu_vs_cpu_{name}']}")
    return figures


def stores_identical(a, b) -> bool:
    """Same fingerprint, metadata and every stored array (float tolerance 1e-5)."""
    import numpy as np

    if a.fingerprint != b.fingerprint or not a.meta().equals(b.meta()):
        return False
    names = ["logits", *a.representations()]
    arrays = [(np.asarray(a.logits()), np.asarray(b.logits()))] + [
        (np.asarray(a.representation(n)), np.asarray(b.representation(n))) for n in names[1:]]
    return all(x.shape == y.shape and np.allclose(x, y, atol=1e-5, rtol=0) for x, y in arrays)


def ray_figures() -> dict:
    """The demo's store built by a local Ray vs in one process, on this machine's CPUs."""
    try:
        import ray

        from core.store.ray_source import RaySource, init_local_ray
    except ImportError:
        return {"ray_over_single_cpu": "ray not installed", "ray_identical": None}
    from core.services.workspace import demo_workspace

    ws = demo_workspace()
    model = load_model(ws.model, "cpu")
    dataset = build_dataset(ws.dataset)
    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        single = build_store(ws.name, model, dataset, None, batch_size=ws.batch_size, root=Path(root) / "single")
        single_s = time.perf_counter() - start
        start = time.perf_counter()
        init_local_ray()
        started_s = time.perf_counter() - start
        arrivals: list[tuple[float, int]] = []  # (time, rows) of every batch the actors return

        def timed(layers: list[str], want_core: bool, first: int):
            for item in RaySource(ws, batch_size=ws.batch_size)(layers, want_core, first):  # `build --ray`'s defaults
                arrivals.append((time.perf_counter(), len(item[1]["logits"])))
                yield item

        try:
            start = time.perf_counter()
            built = build_store(ws.name, model, dataset, None, batch_size=ws.batch_size, root=Path(root) / "ray",
                                source=timed)
            ray_s = time.perf_counter() - start
        finally:
            ray.shutdown()
        identical = stores_identical(single, built)
    n = len(dataset)
    first_s = arrivals[0][0] - start  # the actors' start: a Python process each, torch, the model, the dataset
    steady_ips = (n - arrivals[0][1]) / (arrivals[-1][0] - arrivals[0][0])
    print(f"ray: {n} images, single process {n / single_s:.0f} img/s, local Ray {n / ray_s:.0f} img/s "
          f"(+ {started_s:.1f} s to start Ray; first batch after {first_s:.1f} s, then {steady_ips:.0f} img/s), "
          f"identical {identical}")
    return {"ray_over_single_cpu": round(single_s / ray_s, 3), "ray_over_single_cpu_cold": round(single_s / (ray_s + started_s), 3),
            "ray_steady_over_single_cpu": round(steady_ips / (n / single_s), 3), "ray_first_batch_s": round(first_s, 1),
            "ray_start_s": round(started_s, 1), "ray_ips": round(n / ray_s, 1), "single_ips": round(n / single_s, 1),
            "ray_identical": identical}


def main() -> None:
    precision = sys.argv[sys.argv.index("--precision") + 1] if "--precision" in sys.argv else "fp32"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    figures: dict = {}
    if "--gpu-only" not in sys.argv:
        demo_data = build_dataset(DatasetSpec(kind="demo", split="test"))
        demo = compare("demo", load_model(ModelSpec(kind="demo"), device), demo_data, 256)
        resnet = load_model(ModelSpec(kind="torchvision", arch="resnet18", num_classes=10, input_size=224), device)
        small = build_dataset(DatasetSpec(kind="demo", split="test", limit=512))
        rn18 = compare("resnet18", resnet, small, 64)
        figures.update({"demo_ratio": demo["ratio"], "resnet18_ratio": rn18["ratio"], "demo": demo, "resnet18": rn18})
    figures.update(gpu_figures(precision))
    if "--skip-ray" not in sys.argv and "--gpu-only" not in sys.argv:
        figures.update(ray_figures())
    figures.update({
        "device": torch.cuda.get_device_name() if device == "cuda" else f"cpu x{torch.get_num_threads()}",
        "machine": platform.node(),
        "date": time.strftime("%Y-%m-%d"),
    })
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
