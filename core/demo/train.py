"""Training recipe of the demo CNN: the planted TRAIN split in, committed weights out.

``python -m core.demo.train`` retrains ``weights/demo_cnn.pt`` from ``slices.toml`` with a
fixed seed and writes ``demo_cnn.json`` next to it (seed, epochs, slices-file sha256,
test figures). ``--control`` trains on the same images with the plants removed: the
planted slices should then be about as accurate as the rest, which shows that they are
hard because of the planting, not because the rendering makes them illegible.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from core.demo.fashion import load_fashion_mnist
from core.demo.generator import RenderedSplit, render
from core.demo.model import DEFAULT_WEIGHTS, MEAN, STD, DemoCNN
from core.demo.spec import DEFAULT_SLICES, DemoSpec

DEFAULT_EPOCHS = 8  # the committed weights (demo_cnn.json); 6 until the fourth slice was planted
DEFAULT_BATCH = 128

Progress = Callable[[float, str], None]


def to_batch(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, S, S, 3) -> normalised float (N, 3, S, S) in channels-last memory."""
    x = torch.from_numpy(np.array(images, dtype=np.uint8)).permute(0, 3, 1, 2).float().div_(255)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


def predict(model: nn.Module, images: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Predicted class indices (N,) of uint8 images (N, S, S, 3)."""
    device = next(model.parameters()).device
    out = []
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            x = to_batch(images[start : start + batch_size]).to(device)
            out.append(model(x).argmax(1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def evaluate_demo(model: nn.Module, split_data: RenderedSplit) -> dict:
    """Accuracy against the clean labels: overall, per planted slice, and the smallest gap.

    Returns {overall_acc, slice_acc {name: acc}, slice_sizes {name: n}, min_gap}; the
    accuracy of a slice with no image is None (JSON null) and it is left out of min_gap.
    """
    correct = predict(model, split_data.images) == split_data.clean_labels
    overall = float(correct.mean()) if len(correct) else None
    slice_acc: dict[str, float | None] = {}
    sizes: dict[str, int] = {}
    for column in split_data.ground_truth.columns:
        name = column.removeprefix("slice_")
        member = split_data.ground_truth[column].to_numpy()
        sizes[name] = int(member.sum())
        slice_acc[name] = float(correct[member].mean()) if member.any() else None
    gaps = [overall - a for a in slice_acc.values() if a is not None and overall is not None]
    return {
        "overall_acc": overall,
        "slice_acc": slice_acc,
        "slice_sizes": sizes,
        "min_gap": min(gaps) if gaps else None,
    }


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write via a temp file in the same folder, then os.replace: never a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; weights and JSON are not secrets
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def render_split(spec: DemoSpec, split: str, seed: int, limit: int | None = None) -> RenderedSplit:
    """Render ``split`` of Fashion-MNIST (its first ``limit`` images when given)."""
    images, labels = load_fashion_mnist(split)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return render(images, labels, spec, split, seed)


def _fit(
    train: RenderedSplit,
    epochs: int,
    batch_size: int,
    device: torch.device,
    seed: int,
    progress: Progress | None,
) -> nn.Module:
    """AdamW with a one-cycle schedule over shuffled mini-batches of the train split."""
    torch.manual_seed(seed)
    model = DemoCNN().to(device, memory_format=torch.channels_last)
    steps_per_epoch = max(1, -(-len(train.labels) // batch_size))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=3e-3, total_steps=epochs * steps_per_epoch, pct_start=0.2
    )
    labels = torch.from_numpy(np.array(train.labels))
    shuffle = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(labels), generator=shuffle).numpy()
        running = 0.0
        for step in range(steps_per_epoch):
            idx = np.sort(order[step * batch_size : (step + 1) * batch_size])
            x = to_batch(train.images[idx]).to(device)
            loss = nn.functional.cross_entropy(model(x), labels[idx].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            running += loss.item()
            if progress is not None:
                done = (epoch * steps_per_epoch + step + 1) / (epochs * steps_per_epoch)
                progress(done, f"epoch {epoch + 1}/{epochs}, loss {running / (step + 1):.3f}")
    return model.cpu().eval()


def train_demo(
    slices_file: Path,
    out_path: Path,
    epochs: int = DEFAULT_EPOCHS,
    seed: int = 0,
    limit: int | None = None,
    batch_size: int = DEFAULT_BATCH,
    device: str | None = None,
    progress: Progress | None = None,
    control: bool = False,
) -> dict:
    """Train DemoCNN on the rendered TRAIN split (noisy labels included) and save it.

    Seeded and deterministic (torch's global RNG and determinism flag are restored
    afterwards). No augmentation: flips or crops would move or cut the corner marker the
    spurious-correlation slice relies on. ``limit`` uses the first ``limit`` images of
    both splits (quick runs). ``control`` removes the plants from the train split. Writes
    ``out_path`` (state_dict) and ``out_path.with_suffix('.json')`` atomically; returns
    the figures stored in the JSON (train time, test accuracy overall and per slice).
    """
    started = time.perf_counter()
    spec = DemoSpec.from_toml(slices_file)
    train = render_split(spec.unplanted() if control else spec, "train", seed, limit)
    test = render_split(spec, "test", seed, limit)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    deterministic = torch.are_deterministic_algorithms_enabled()
    with torch.random.fork_rng(devices=[]):
        torch.use_deterministic_algorithms(True)
        try:
            model = _fit(train, epochs, batch_size, dev, seed, progress)
        finally:
            torch.use_deterministic_algorithms(deterministic)
    train_time = time.perf_counter() - started

    figures = evaluate_demo(model, test)
    meta = {
        "seed": seed,
        "epochs": epochs,
        "batch_size": batch_size,
        "limit": limit,
        "control": control,
        "n_train": len(train.labels),
        "n_test": len(test.labels),
        "slices_file": Path(slices_file).name,
        "slices_sha256": spec.sha256,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "train_time_s": round(train_time, 1),
        **figures,
    }
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    _atomic_write(Path(out_path), lambda p: torch.save(state, p))
    sidecar = Path(out_path).with_suffix(".json")
    _atomic_write(sidecar, lambda p: p.write_text(json.dumps(meta, indent=2) + "\n"))
    return meta


def main(argv: list[str] | None = None) -> int:
    """CLI: retrain the demo weights (or a control model) and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=Path, default=DEFAULT_SLICES, help="slices TOML file")
    parser.add_argument("--out", type=Path, default=None, help="weights file to write")
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None, help="train on the first N images")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch")
    parser.add_argument("--control", action="store_true", help="train without the plants")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = args.out
    if out is None:
        root = Path(__file__).resolve().parents[2]
        out = root / "cache" / "demo" / "control_cnn.pt" if args.control else DEFAULT_WEIGHTS

    def report(fraction: float, message: str) -> None:
        print(f"\r{fraction:6.1%}  {message}", end="", flush=True)

    meta = train_demo(
        args.slices, out, args.epochs, args.seed, args.limit, progress=report, control=args.control
    )
    print(f"\nwrote {out} in {meta['train_time_s']} s")
    print(f"test accuracy {meta['overall_acc']:.3f}")
    for name, acc in meta["slice_acc"].items():
        print(f"  {name:<24} {acc:.3f}  (n={meta['slice_sizes'][name]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
