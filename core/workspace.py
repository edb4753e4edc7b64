"""Workspaces: a model source + a dataset source + options, listed in a TOML file.

The file is ``workspaces.toml`` in the working directory, or the path in the environment
variable ``BIASLENS_WORKSPACES``. The built-in ``demo`` workspace is always present. A
broken file, or a broken entry in it, never hides the others: problems are collected and
shown next to the workspace picker and in the CLI.

Example::

    [settings]
    hosted = false            # or BIASLENS_HOSTED=1: no server paths, no entry points

    [workspace.fairface]
    title = "ResNet-18 on FairFace (race)"
    batch_size = 64
    model = { kind = "torchvision", arch = "resnet18", weights = "models/rn18.pt" }
    dataset = { kind = "csv", csv = "fairface/fairface_label_val.csv", label_column = "race" }

Relative paths are resolved against the folder holding the TOML file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import WorkspaceError
from core.models import ModelSpec
from core.sources import DatasetSpec

REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO_NAME = "demo"
# Spec fields that hold file system paths, resolved against the TOML file's folder.
_MODEL_PATH_FIELDS = ("weights",)
_DATASET_PATH_FIELDS = ("root", "csv", "slices")
_WORKSPACE_KEYS = {"title", "description", "batch_size", "num_workers", "model", "dataset"}


@dataclass(frozen=True)
class Workspace:
    """One registered model + dataset pair and how to extract its store."""

    name: str
    title: str
    model: ModelSpec
    dataset: DatasetSpec
    description: str = ""
    batch_size: int = 64
    num_workers: int = 0

    @property
    def is_demo(self) -> bool:
        return self.dataset.kind == "demo"

    def key(self) -> str:
        """A short hash of everything that defines the workspace (cache key for the app)."""
        blob = json.dumps(
            [self.name, dataclasses.asdict(self.model), dataclasses.asdict(self.dataset)],
            sort_keys=True,
            default=str,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class WorkspaceList:
    """The workspaces that could be read, plus a message per problem found."""

    workspaces: dict[str, Workspace]
    problems: list[str] = field(default_factory=list)
    hosted: bool = False
    source: Path | None = None


def demo_workspace() -> Workspace:
    """The built-in planted-bias demo: the demo CNN on the rendered Fashion-MNIST test split."""
    return Workspace(
        name=DEMO_NAME,
        title="Planted-bias demo (Fashion-MNIST)",
        description=(
            "A small CNN trained on Fashion-MNIST rendered with tints, background patterns, "
            "brightness and corner markers, with planted failure modes (see core/demo/slices.toml)."
        ),
        model=ModelSpec(kind="demo"),
        dataset=DatasetSpec(kind="demo", split="test"),
        batch_size=256,
    )


def default_workspaces_file() -> Path:
    """``$BIASLENS_WORKSPACES`` if set, else ``workspaces.toml`` in the working directory."""
    return Path(os.environ.get("BIASLENS_WORKSPACES", "workspaces.toml"))


def hosted_from_env() -> bool:
    """Hosted mode from the environment (``BIASLENS_HOSTED=1``)."""
    return os.environ.get("BIASLENS_HOSTED", "").strip().lower() in {"1", "true", "yes", "on"}


def _build_spec(cls: type, table: Any, where: str, path_fields: tuple[str, ...], base: Path) -> Any:
    """Turn a TOML table into ``cls`` (a dataclass), naming unknown keys and bad types."""
    if not isinstance(table, dict):
        raise WorkspaceError(f"{where} must be a table, e.g. {where} = {{ kind = \"...\" }}.")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise WorkspaceError(
            f"{where} has unknown key(s) {', '.join(unknown)}; known keys: {', '.join(known)}."
        )
    if "kind" not in table:
        raise WorkspaceError(f"{where} needs a 'kind'.")
    values = dict(table)
    for name in path_fields:
        if name in values and isinstance(values[name], str) and values[name]:
            p = Path(values[name]).expanduser()
            values[name] = str(p if p.is_absolute() else (base / p))
    for name in ("mean", "std"):
        if isinstance(values.get(name), list):
            values[name] = tuple(values[name])
    try:
        return cls(**values)
    except TypeError as exc:
        raise WorkspaceError(f"{where}: {exc}") from None


def parse_workspace(name: str, table: Any, base: Path, hosted: bool) -> Workspace:
    """Validate one ``[workspace.NAME]`` table."""
    where = f"[workspace.{name}]"
    if not isinstance(table, dict):
        raise WorkspaceError(f"{where} must be a table.")
    unknown = sorted(set(table) - _WORKSPACE_KEYS)
    if unknown:
        raise WorkspaceError(
            f"{where} has unknown key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(_WORKSPACE_KEYS))}."
        )
    for part in ("model", "dataset"):
        if part not in table:
            raise WorkspaceError(f"{where} needs a '{part}' table.")
    model = _build_spec(ModelSpec, table["model"], f"{where}.model", _MODEL_PATH_FIELDS, base)
    dataset = _build_spec(
        DatasetSpec, table["dataset"], f"{where}.dataset", _DATASET_PATH_FIELDS, base
    )
    if hosted and model.kind == "entrypoint":
        raise WorkspaceError(f"{where}: Python entry-point models are disabled in hosted mode.")
    batch_size = table.get("batch_size", 64)
    num_workers = table.get("num_workers", 0)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise WorkspaceError(f"{where}: batch_size must be a positive integer, got {batch_size!r}.")
    if not isinstance(num_workers, int) or num_workers < 0:
        raise WorkspaceError(f"{where}: num_workers must be an integer >= 0, got {num_workers!r}.")
    return Workspace(
        name=name,
        title=str(table.get("title", name)),
        description=str(table.get("description", "")),
        model=model,
        dataset=dataset,
        batch_size=batch_size,
        num_workers=num_workers,
    )


def load_workspaces(path: Path | None = None) -> WorkspaceList:
    """Read the workspace file; the demo is always first. Never raises for a bad file."""
    path = default_workspaces_file() if path is None else Path(path)
    result = WorkspaceList(workspaces={DEMO_NAME: demo_workspace()}, hosted=hosted_from_env())
    if not path.exists():
        return result
    result.source = path
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        result.problems.append(f"{path} is not valid TOML ({exc}); only the demo is available.")
        return result
    except OSError as exc:
        result.problems.append(f"Cannot read {path}: {exc}.")
        return result
    settings = doc.get("settings", {})
    if isinstance(settings, dict) and settings.get("hosted") is True:
        result.hosted = True
    entries = doc.get("workspace", {})
    if not isinstance(entries, dict):
        result.problems.append(f"{path}: 'workspace' must be a table of [workspace.NAME] tables.")
        return result
    for name, table in entries.items():
        if name == DEMO_NAME:
            result.problems.append(f"{path}: the name 'demo' is reserved for the built-in demo.")
            continue
        try:
            result.workspaces[name] = parse_workspace(name, table, path.parent, result.hosted)
        except WorkspaceError as exc:
            result.problems.append(f"{path}: {exc}")
    return result
