"""Model and dataset kinds: each kind registers itself with the module that implements it.

A workspace's ``model = { kind = ... }`` and ``dataset = { kind = ... }`` name a kind;
``load_model`` and ``build_dataset`` look the kind up here. The built-in kinds register
on import: ``torchvision`` and ``entrypoint`` (core/models/statedict.py), ``torchscript``
(core/models/torchscript.py), ``imagefolder`` (core/data/folders.py), ``csv`` (core/data/manifest.py) and
``celeba`` (core/data/celeba.py). The ``demo`` model and dataset register in core/demo, which
generic code never imports: core/services/workspace.py does, for the always-present demo.

A model loader takes the ``ModelSpec`` and returns a ``BuiltModel``: the module, a
description and the input preprocessing its source implies. A dataset builder takes the
``DatasetSpec`` and returns an ``ImageDataset``. Both raise ModelError / DataError for
problems the user can fix. ``MODEL_KINDS`` and ``DATASET_KINDS`` name the kinds a
workspace may use: the strict schema of workspaces.toml (core/services/config.py) accepts exactly
these, with the keys it lists for each.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from core.errors import DataError, ModelError
from core.specs import Triple

if TYPE_CHECKING:
    from torch import nn

    from core.data.datasets import ImageDataset
    from core.specs import DatasetSpec, ModelSpec

# The kinds a workspace may name, in the order messages list them. Each is registered by
# the module that implements it; a new kind is added here, in core/services/config.py's key tables
# and in its own module.
MODEL_KINDS = ("demo", "torchvision", "torchscript", "entrypoint")
DATASET_KINDS = ("demo", "imagefolder", "csv", "celeba")

IMAGENET_MEAN: Triple = (0.485, 0.456, 0.406)
IMAGENET_STD: Triple = (0.229, 0.224, 0.225)
DEFAULT_INPUT_SIZE = 224


class BuiltModel(NamedTuple):
    """What a model loader returns: the module, its description and its source's input
    defaults (a spec's ``input_size``, ``mean`` and ``std`` override them)."""

    module: nn.Module
    description: str
    input_size: int = DEFAULT_INPUT_SIZE
    mean: Triple = IMAGENET_MEAN
    std: Triple = IMAGENET_STD


ModelLoader = Callable[["ModelSpec"], BuiltModel]
DatasetBuilder = Callable[["DatasetSpec"], "ImageDataset"]

_MODEL_KINDS: dict[str, ModelLoader] = {}
_DATASET_KINDS: dict[str, DatasetBuilder] = {}


def _register(table: dict[str, Callable], what: str, name: str, function: Callable) -> None:
    old = table.get(name)
    if old is not None and (old.__module__, old.__qualname__) != (
        function.__module__,
        function.__qualname__,
    ):  # the same function again is a module reload, anything else a clash
        # programming error: a plugin registers a kind name that another module already took
        raise ValueError(f"The {what} kind '{name}' is already registered by {old.__module__}.")
    table[name] = function


def register_model_kind(name: str, loader: ModelLoader) -> None:
    """Make ``model = { kind = name }`` load with ``loader(spec) -> BuiltModel``."""
    _register(_MODEL_KINDS, "model", name, loader)


def register_dataset_kind(name: str, builder: DatasetBuilder) -> None:
    """Make ``dataset = { kind = name }`` build with ``builder(spec) -> ImageDataset``."""
    _register(_DATASET_KINDS, "dataset", name, builder)


def registered_model_kinds() -> list[str]:
    """The model kinds registered so far, in registration order."""
    return list(_MODEL_KINDS)


def registered_dataset_kinds() -> list[str]:
    """The dataset kinds registered so far, in registration order."""
    return list(_DATASET_KINDS)


def model_loader(kind: str) -> ModelLoader:
    """The loader of a model kind; ModelError listing the known kinds if there is none."""
    if kind not in _MODEL_KINDS:
        _unregistered(kind, "model", MODEL_KINDS, ModelError)
        known = ", ".join(_known(MODEL_KINDS, _MODEL_KINDS))
        raise ModelError(f"Unknown model kind {kind!r}: use one of {known}.")
    return _MODEL_KINDS[kind]


def dataset_builder(kind: str) -> DatasetBuilder:
    """The builder of a dataset kind; DataError listing the known kinds if there is none."""
    if kind not in _DATASET_KINDS:
        _unregistered(kind, "dataset", DATASET_KINDS, DataError)
        known = ", ".join(_known(DATASET_KINDS, _DATASET_KINDS))
        raise DataError(f"Unknown dataset kind '{kind}'. Use one of: {known}.")
    return _DATASET_KINDS[kind]


def _known(declared: tuple[str, ...], table: dict[str, Callable]) -> list[str]:
    return list(declared) + [k for k in table if k not in declared]


def _unregistered(kind: str, what: str, declared: tuple[str, ...], error: type[Exception]) -> None:
    """A declared kind whose module was not imported: a programming error, said plainly."""
    if kind in declared:
        raise error(
            f"The {what} kind '{kind}' is not registered: import the module that registers it."
        )


def weights_file(path: str, what: str) -> Path:
    """The existing file a model spec's ``weights`` names; ModelError when it is unset or
    missing (``what`` names it in the message, e.g. 'state_dict file')."""
    if not path:
        raise ModelError(f"No {what} given: set `weights` to its path.")
    file = Path(path).expanduser()
    if not file.is_file():
        raise ModelError(f"{what[0].upper()}{what[1:]} not found: {file}.")
    return file
