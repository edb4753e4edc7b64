"""Workspaces: a model source + a dataset source + options, listed in a TOML file.

The file is ``workspaces.toml`` in the working directory, or the path in the environment
variable ``BIASLENS_WORKSPACES``. The built-in ``demo`` and ``demo-control`` workspaces are always present. A
broken file, or a broken entry in it, never hides the others: problems are collected and
shown next to the workspace picker and in the CLI.

Example::

    [settings]
    hosted = false            # or BIASLENS_HOSTED=1: no builds, no server paths, no entry points
    workshop = false          # or BIASLENS_WORKSHOP=1: ground truth hidden until the instructor reveals it
    instructor_passphrase = "..."  # or BIASLENS_INSTRUCTOR_PASSPHRASE; never shown

    [workspace.fairface]
    title = "ResNet-18 on FairFace (race)"
    batch_size = 64
    model = { kind = "torchvision", arch = "resnet18", weights = "models/rn18.pt" }
    dataset = { kind = "csv", csv = "fairface/fairface_label_val.csv", label_column = "race" }

Relative paths are resolved against the folder holding the TOML file. The schema of
every key is in core/services/config.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

# The one place generic code imports the demo: the always-present demo workspace needs
# the 'demo' model and dataset kinds, which importing core.demo registers.
import core.demo  # noqa: F401
from core.data.datasets import ImageDataset
from core.data.sources import DatasetSpec
from core.demo.independent import independent_images
from core.demo.model import DEFAULT_WEIGHTS
from core.errors import WorkspaceError
from core.models.loading import ModelSpec
from core.services.config import (
    PASSPHRASE_RULE,
    TOP_LEVEL_KEYS,
    WorkspaceTable,
    check_settings,
    check_workspace,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO_NAME = "demo"
CONTROL_NAME = "demo-control"
# The control model: the demo's recipe trained without the plants (core/demo/train.py --control).
CONTROL_WEIGHTS = DEFAULT_WEIGHTS.parent / "control_cnn.pt"
# Spec fields that hold file system paths, resolved against the TOML file's folder.
_MODEL_PATH_FIELDS = ("weights",)
_DATASET_PATH_FIELDS = ("root", "csv", "slices")


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
    workshop: bool = False
    # The instructor's passphrase ('' = none set): compared, never shown.
    passphrase: str = field(default="", repr=False)


def demo_workspace() -> Workspace:
    """The built-in planted-bias demo: the demo CNN on the rendered Fashion-MNIST test split."""
    return Workspace(
        name=DEMO_NAME,
        title="Planted-bias demo (Fashion-MNIST)",
        description=(
            "A small CNN trained on Fashion-MNIST rendered with tints, background patterns, "
            "brightness and corner markers, with planted failure modes to find."
        ),
        model=ModelSpec(kind="demo"),
        dataset=DatasetSpec(kind="demo", split="test"),
        batch_size=256,
    )


def control_workspace() -> Workspace:
    """The built-in control of the demo: the same CNN recipe trained without the plants, on the
    same rendered test split, so ``python -m core compare demo-control demo`` shows what the
    planting broke."""
    return Workspace(
        name=CONTROL_NAME,
        title="Control model (no plants), planted-bias demo data",
        description=(
            "The demo CNN's recipe trained on the same images with the planted failure modes removed: "
            "compare it with the demo to see where the planted model got worse."
        ),
        model=ModelSpec(kind="demo", weights=str(CONTROL_WEIGHTS)),
        dataset=DatasetSpec(kind="demo", split="test"),
        batch_size=256,
    )


def builtin_workspaces() -> dict[str, Workspace]:
    """The workspaces that are always present, in the order they are listed: the demo, then its control."""
    return {DEMO_NAME: demo_workspace(), CONTROL_NAME: control_workspace()}


def default_workspaces_file() -> Path:
    """``$BIASLENS_WORKSPACES`` if set, else ``workspaces.toml`` in the working directory."""
    return Path(os.environ.get("BIASLENS_WORKSPACES", "workspaces.toml"))


class ModeSwitch(NamedTuple):
    """Whether a mode (hosted, workshop) is on, and the problem that forced it on, if any."""

    on: bool
    problem: str = ""


def _switch_from_env(variable: str, mode: str) -> ModeSwitch:
    """A mode from an environment variable: ``1``/``true`` on; unset, empty, ``0``/``false``
    off. Any other value is an error, and an error means ON (fail closed)."""
    raw = os.environ.get(variable)
    value = (raw or "").strip().lower()
    if value in {"1", "true"}:
        return ModeSwitch(True)
    if value in {"", "0", "false"}:
        return ModeSwitch(False)
    return ModeSwitch(True, f"{variable}={raw!r} is not 1, true, 0 or false: {mode} mode is on until it is fixed.")


def hosted_from_env() -> ModeSwitch:
    """Hosted mode from ``BIASLENS_HOSTED``: a typo never leaves a public server in trusted mode."""
    return _switch_from_env("BIASLENS_HOSTED", "hosted")


def workshop_from_env() -> ModeSwitch:
    """Workshop mode from ``BIASLENS_WORKSHOP``: a typo keeps the ground truth hidden."""
    return _switch_from_env("BIASLENS_WORKSHOP", "workshop")


def passphrase_from_env() -> tuple[str, str]:
    """The instructor passphrase from ``BIASLENS_INSTRUCTOR_PASSPHRASE`` ('' when unset) and a
    problem ('' when none). A value the workspace file would refuse (fewer than 4 or more
    than 256 characters, or only spaces) is ignored, with a problem that never shows it."""
    value = os.environ.get("BIASLENS_INSTRUCTOR_PASSPHRASE", "")
    if value and not (4 <= len(value) <= 256 and value.strip()):
        return "", (f"BIASLENS_INSTRUCTOR_PASSPHRASE: {PASSPHRASE_RULE} (the value is not shown); "
                    "it is ignored: the workspace file's instructor_passphrase applies if it sets one, else the "
                    "instructor's controls stay locked.")
    return value, ""


def _resolved(value: str, base: Path) -> str:
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else base / path)


def build_workspace(name: str, table: WorkspaceTable, base: Path, hosted: bool) -> Workspace:
    """A Workspace from a validated table; paths are resolved against ``base``.

    Raises WorkspaceError for what is valid but not allowed here (entry points when hosted).
    """
    model = table.model.model_dump(exclude_unset=True)
    dataset = table.dataset.model_dump(exclude_unset=True)
    if hosted and table.model.kind == "entrypoint":
        raise WorkspaceError(
            f"[workspace.{name}]: Python entry-point models are disabled in hosted mode."
        )
    for key in _MODEL_PATH_FIELDS:
        if key in model:
            model[key] = _resolved(model[key], base)
    for key in _DATASET_PATH_FIELDS:
        if key in dataset:
            dataset[key] = _resolved(dataset[key], base)
    for key in ("mean", "std"):
        if key in model:
            model[key] = tuple(model[key])
    return Workspace(
        name=name,
        title=table.title or name,
        description=table.description,
        model=ModelSpec(**model),
        dataset=DatasetSpec(**dataset),
        batch_size=table.batch_size,
        num_workers=table.num_workers,
    )


def load_workspaces(path: Path | None = None) -> WorkspaceList:
    """Read and validate the workspace file; the demo is always first, its control second. Never raises.

    Hosted mode fails closed: a bad ``BIASLENS_HOSTED``, a bad ``[settings]`` table or a
    file that cannot be read turns it on, with the problem reported. Workshop mode fails
    closed the same way (a bad ``BIASLENS_WORKSHOP``, a bad ``[settings]`` table or an
    unreadable file turns it on). ``BIASLENS_INSTRUCTOR_PASSPHRASE`` wins over the file's
    ``instructor_passphrase``.
    """
    path = default_workspaces_file() if path is None else Path(path)
    env = hosted_from_env()
    workshop = workshop_from_env()
    passphrase, passphrase_problem = passphrase_from_env()
    result = WorkspaceList(
        workspaces=builtin_workspaces(), hosted=env.on, workshop=workshop.on, passphrase=passphrase,
    )
    for problem in (env.problem, workshop.problem, passphrase_problem):
        if problem:
            result.problems.append(problem)
    if not path.exists():
        return result
    result.source = path
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        result.hosted = result.workshop = True
        result.problems.append(
            f"{path} is not valid TOML ({exc}); only the built-in demo workspaces are available, and hosted and "
            "workshop modes are on until the file is fixed."
        )
        return result
    except OSError as exc:
        result.hosted = result.workshop = True
        result.problems.append(
            f"Cannot read {path}: {exc}. Hosted and workshop modes are on until it is fixed."
        )
        return result
    for key in sorted(set(doc) - set(TOP_LEVEL_KEYS)):
        result.problems.append(
            f"{path}: unknown top-level key '{key}' (known: [settings], [workspace.NAME])."
        )
    settings, problems = check_settings(doc.get("settings", {}))
    if problems:
        result.hosted = result.workshop = True
        result.problems.extend(
            f"{path}: [settings] {p}. Hosted mode is on until it is fixed (workshop mode too)."
            for p in problems
        )
    elif settings is not None:
        result.hosted = result.hosted or settings.hosted
        result.workshop = result.workshop or settings.workshop
        if not result.passphrase and settings.instructor_passphrase:
            result.passphrase = settings.instructor_passphrase
    entries = doc.get("workspace", {})
    if not isinstance(entries, dict):
        result.problems.append(f"{path}: 'workspace' must be a table of [workspace.NAME] tables.")
        return result
    for name, table in entries.items():
        where = f"{path}: [workspace.{name}]"
        if name in (DEMO_NAME, CONTROL_NAME):
            result.problems.append(f"{where}: the name '{name}' is reserved for a built-in workspace: pick another name.")
            continue
        checked, problems = check_workspace(table)
        if checked is None:
            result.problems.extend(f"{where} {p}." for p in problems)
            continue
        try:
            result.workspaces[name] = build_workspace(name, checked, path.parent, result.hosted)
        except WorkspaceError as exc:
            result.problems.append(f"{path}: {exc}")
    return result


# --------------------------------------------------------------------------- independent image sets


INDEPENDENT_DEMO_NAME = "demo-independent"  # the built-in independent image set of the demo workspaces


def independent_sets(listing: WorkspaceList, current: Workspace) -> dict[str, str]:
    """name -> title of the image sets the Filter saliency page can take neighbours from besides
    ``current``'s own dataset: the built-in independent demo images for a workspace on the demo's
    test split, then every other workspace on another dataset (a workspace on the same dataset,
    such as the demo's control, is no independent set; one named like the built-in set is left
    out). Whether a set's classes and image size match is checked when it is picked
    (``core.methods.saliency.profiles.check_same_task``)."""
    sets = {}
    if current.dataset.kind == "demo" and current.dataset.split == "test":
        sets[INDEPENDENT_DEMO_NAME] = "Independent demo images (the test garments, attributes redrawn)"
    for name, workspace in listing.workspaces.items():
        if name not in (current.name, INDEPENDENT_DEMO_NAME) and workspace.dataset != current.dataset:
            sets[name] = workspace.title
    return sets


def independent_demo_images(current: Workspace) -> ImageDataset:
    """The built-in independent image set of a demo workspace: its test garments rendered with
    another seed, with its slices file's attributes (``core.demo.independent``)."""
    if current.dataset.kind != "demo":
        raise WorkspaceError(f"The independent demo images go with the demo workspaces, not with '{current.name}'.")
    return independent_images(Path(current.dataset.slices) if current.dataset.slices else None)
