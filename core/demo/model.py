"""The demo classifier: a small CNN for the rendered 32x32 RGB Fashion-MNIST images.

Three conv blocks (``block1``..``block3``, each Conv-BN-ReLU-MaxPool) feed an average
pool to a 2x2 grid (a global pool loses the garment's layout: sleeves, collar, which
cost about two points of accuracy), a 128-d hidden layer ``fc1`` (the last hidden
layer, whose output is the embedding the methods read) and the final linear ``head``. Inputs are normalised with
``MEAN``/``STD`` outside the model, like torchvision models.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from core.errors import ModelError

INPUT_SIZE = 32
MEAN = (0.275, 0.275, 0.275)
STD = (0.235, 0.235, 0.235)
NUM_CLASSES = 10
EMBED_DIM = 128
POOL_GRID = 2
DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "weights" / "demo_cnn.pt"


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class DemoCNN(nn.Module):
    """Conv blocks -> 2x2 average pool -> fc1 (128-d embedding) -> head (10 logits)."""

    def __init__(
        self, channels: tuple[int, int, int] = (32, 64, 128), num_classes: int = NUM_CLASSES
    ):
        super().__init__()
        self.block1 = _block(3, channels[0])
        self.block2 = _block(channels[0], channels[1])
        self.block3 = _block(channels[1], channels[2])
        self.pool = nn.AdaptiveAvgPool2d(POOL_GRID)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Sequential(
            nn.Linear(channels[2] * POOL_GRID**2, EMBED_DIM), nn.ReLU(inplace=True)
        )
        self.head = nn.Linear(EMBED_DIM, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, 10) of normalised images (N, 3, 32, 32)."""
        x = self.block3(self.block2(self.block1(x)))
        return self.head(self.fc1(self.flatten(self.pool(x))))


def load_demo_model(weights_path: Path | None = None) -> nn.Module:
    """Build DemoCNN, load its state_dict (``weights_only=True``) and put it in eval mode.

    Raises ModelError when the file is missing, unreadable or does not fit the network.
    """
    path = Path(weights_path) if weights_path is not None else DEFAULT_WEIGHTS
    if not path.is_file():
        raise ModelError(
            f"Demo model weights not found at {path}. Train them with "
            "`python -m core.demo.train` (a few minutes on a CPU)."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip errors of a corrupt or foreign file
        raise ModelError(f"Cannot read demo model weights {path}: {exc}") from exc
    if not isinstance(state, dict):
        raise ModelError(f"{path} does not hold a state_dict (found {type(state).__name__}).")
    model = DemoCNN()
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise ModelError(f"Weights in {path} do not fit the demo CNN: {first}") from exc
    return model.eval()
