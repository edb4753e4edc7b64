"""Store extraction throughput vs a bare forward pass over the same images, in one run.

Two cases: the demo workspace (demo CNN, 10k rendered test images) and a torchvision
resnet18 with random weights on 512 demo images at 224 px. For each, the bare forward
iterates the same DataLoader the store uses and runs the model under inference_mode; the
store build adds hooks, pooling, memory-mapped writes, checkpoints and the metadata file.
Each side is timed three times (alternating, after a warm-up) and its fastest run counts,
which keeps the ratio steady when other processes share the CPU.

Prints a summary, then a JSON line: demo_ratio, resnet18_ratio (store images/s divided by
bare-forward images/s; target >= 0.85) and the raw throughputs.
"""

from __future__ import annotations

import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import core.demo  # noqa: E402, F401  (registers the demo model and dataset kinds)
from core.extract import build_store  # noqa: E402
from core.models import ModelSpec, load_model  # noqa: E402
from core.pipeline import image_batches  # noqa: E402
from core.sources import DatasetSpec, build_dataset  # noqa: E402


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


def main() -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    demo_data = build_dataset(DatasetSpec(kind="demo", split="test"))
    demo = compare("demo", load_model(ModelSpec(kind="demo"), device), demo_data, 256)
    resnet = load_model(ModelSpec(kind="torchvision", arch="resnet18", num_classes=10, input_size=224), device)
    small = build_dataset(DatasetSpec(kind="demo", split="test", limit=512))
    rn18 = compare("resnet18", resnet, small, 64)
    figures = {
        "demo_ratio": demo["ratio"],
        "resnet18_ratio": rn18["ratio"],
        "demo": demo,
        "resnet18": rn18,
        "device": torch.cuda.get_device_name() if device == "cuda" else f"cpu x{torch.get_num_threads()}",
        "machine": platform.node(),
        "date": time.strftime("%Y-%m-%d"),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
