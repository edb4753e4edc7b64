"""An image set independent of the demo's, for the Filter saliency page's fine-tuning check and
saliency-space neighbours (Levin et al. take those neighbours from a separate set, Sec. 3.3).

It is the Fashion-MNIST test split rendered again with another seed: the garments the demo
model never trained on, with every attribute drawn anew, uniformly and independently (no
plants, clean labels), so the same classes and image size as the demo's test split but other
images of them. A garment appears in both sets (with other attributes): the page leaves an
image's own garment out of its neighbours (same id). The training split is no holdout: the
model has fitted its garments, where the paper needs held-out images (near-zero gradients
otherwise, Sec. 2). Works offline as the demo does (Fashion-MNIST from
/usr/share/datasets/fashion-mnist or the cache).
"""

from __future__ import annotations

from pathlib import Path

from core.demo.dataset import DemoDataset

INDEPENDENT_SEED = 1  # the demo renders with seed 0


def independent_images(slices_file: Path | None = None) -> DemoDataset:
    """The demo's test garments rendered with ``INDEPENDENT_SEED`` (the slices file's
    attributes, drawn uniformly and independently of the demo's draw)."""
    images = DemoDataset(split="test", slices_file=slices_file, seed=INDEPENDENT_SEED)
    images.name = f"Fashion-MNIST test garments, attributes redrawn (seed {INDEPENDENT_SEED})"
    return images
