"""What a workspace asks for: ``ModelSpec`` (its ``model`` table) and ``DatasetSpec`` (its
``dataset`` table).

Plain dataclasses that import nothing of the kinds, so both the generic loaders
(core/models/loading.py, core/data/sources.py, which re-export them) and every kind's module
(core/models/statedict.py, core/models/torchscript.py, core/data/folders.py, core/data/manifest.py, core/data/celeba.py,
core/demo) can import them without an import cycle.
"""

from __future__ import annotations

from dataclasses import dataclass

Triple = tuple[float, float, float]


@dataclass
class ModelSpec:
    """Where a model comes from and how to feed it (one ``model`` table of a workspace).

    kind: a registered model kind (core/registry.py): 'demo' | 'torchvision' |
      'torchscript' | 'entrypoint'.
    arch: torchvision architecture name, e.g. 'resnet18'.
    weights: a state_dict file (torchvision, entrypoint), the TorchScript file
      (torchscript), or demo weights replacing the shipped ones (demo).
    pretrained: torchvision's own weights (downloaded, so the network must allow it).
    entrypoint: 'package.module:factory' returning an nn.Module (trusted local mode only).
    num_classes: expected number of outputs; inferred from the weights when None.
    input_size, mean, std: input preprocessing; defaults depend on the source.
    embedding_layer: module holding the last hidden layer (its input, or the pooled
      output of a conv block); found automatically when None.
    layers: conv blocks whose pooled activations the store keeps; evenly spread when None.
    """

    kind: str
    arch: str = ""
    weights: str = ""
    pretrained: bool = False
    entrypoint: str = ""
    num_classes: int | None = None
    input_size: int | None = None
    mean: Triple | None = None
    std: Triple | None = None
    embedding_layer: str | None = None
    layers: list[str] | None = None


@dataclass
class DatasetSpec:
    """How to find a dataset; the ``[dataset]`` part of a workspace entry.

    kind: a registered dataset kind (core/registry.py): 'demo' | 'imagefolder' | 'csv' |
      'celeba'.
    root: image folder (imagefolder, celeba; for csv the base of relative paths,
      default the CSV's folder).
    csv: manifest file (csv only).
    path_column: manifest column of image paths; empty = first of
      PATH_COLUMN_CANDIDATES (core/data/manifest.py) present.
    label_column: manifest column of class labels.
    attribute_columns: manifest columns kept as attributes; None = all other columns.
    missing: 'skip' drops rows whose file is missing (listed in ``skipped``), 'error'
      raises.
    split: celeba 'train' | 'valid' | 'test' | 'all'; demo 'train' | 'test'.
    target: celeba attribute used as the binary label.
    slices: demo slices TOML file; empty = the built-in one.
    limit: keep at most this many images (a deterministic, class-mixed subset).
    classes: the class order of the model's outputs (class k = output k); None = the
      source's own order (sorted folder names / label values).
    na_values: csv only: strings that mean "missing" in the path, label and attribute
      columns (compared after trimming spaces), e.g. ['NA', 'n/a']. None = only empty or
      whitespace-only cells are missing; pandas' own list ('NA', 'None', 'null', 'NaN',
      ...) is never used, so a label 'None' is a class and an attribute 'NA' is text.
    """

    kind: str
    root: str = ""
    csv: str = ""
    path_column: str = ""
    label_column: str = "label"
    attribute_columns: list[str] | None = None
    missing: str = "skip"
    split: str = "test"
    target: str = "Smiling"
    slices: str = ""
    limit: int | None = None
    classes: list[str] | None = None
    na_values: list[str] | None = None
