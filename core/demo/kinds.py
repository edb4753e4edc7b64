"""The demo's two kinds: the ``demo`` model (``DemoCNN``) and the ``demo`` dataset
(``DemoDataset``). Importing ``core.demo`` registers them; generic code never does, so the
demo sits above the generic loaders (core/services/workspace.py imports it for the built-in demo).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from core.demo import dataset, model
from core.registry import BuiltModel, register_dataset_kind, register_model_kind

if TYPE_CHECKING:
    from core.data.datasets import ImageDataset
    from core.specs import DatasetSpec, ModelSpec


def _load_demo_model(spec: ModelSpec) -> BuiltModel:
    weights = Path(spec.weights) if spec.weights else None
    module = model.load_demo_model(weights)
    name = f"demo CNN + {weights.name}" if weights else "demo CNN"
    return BuiltModel(module, name, model.INPUT_SIZE, tuple(model.MEAN), tuple(model.STD))


def _build_demo_dataset(spec: DatasetSpec) -> ImageDataset:
    return dataset.DemoDataset(
        split=spec.split, slices_file=Path(spec.slices) if spec.slices else None
    )


register_model_kind("demo", _load_demo_model)
register_dataset_kind("demo", _build_demo_dataset)
