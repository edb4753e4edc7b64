"""Model and dataset kinds: registered by their own modules, the demo above the generic code."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import get_args

import numpy as np
import pytest

import core.services.workspace  # noqa: F401  (imports the demo, so every kind is registered)
from core import registry
from core.data.sources import ArrayDataset, DatasetSpec, build_dataset
from core.errors import DataError, ModelError
from core.services.config import DatasetTable, ModelTable

REPO = Path(__file__).resolve().parents[2]


def test_the_schema_accepts_exactly_the_registered_kinds():
    assert sorted(registry.registered_model_kinds()) == sorted(registry.MODEL_KINDS)
    assert sorted(registry.registered_dataset_kinds()) == sorted(registry.DATASET_KINDS)
    assert get_args(ModelTable.model_fields["kind"].annotation) == registry.MODEL_KINDS
    assert get_args(DatasetTable.model_fields["kind"].annotation) == registry.DATASET_KINDS


def test_generic_modules_never_import_the_demo():
    """Only core/demo/, core/services/workspace.py (which registers the demo's kinds for the built-in
    demo workspace) and the CLI entry point (its demo-train command) may."""
    offenders = []
    for path in sorted((REPO / "core").rglob("*.py")):
        relative = path.relative_to(REPO).as_posix()
        if relative.startswith("core/demo/") or relative in ("core/services/workspace.py", "core/__main__.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            offenders += [f"{relative}: {n}" for n in names if n == "core.demo" or n.startswith("core.demo.")]
    assert offenders == []


def test_loading_and_building_do_not_import_the_demo():
    code = (
        "import sys, core.models.loading, core.data.sources, core.store.read, core.store.build, core.scoring.summary\n"
        "from core.registry import registered_dataset_kinds, registered_model_kinds\n"
        "assert not [m for m in sys.modules if m.startswith('core.demo')], 'demo imported'\n"
        "print(registered_model_kinds(), registered_dataset_kinds())\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        "['torchvision', 'entrypoint', 'torchscript'] ['celeba', 'imagefolder', 'csv']"
    )


def test_unknown_and_unregistered_kinds_are_clear_errors(monkeypatch):
    with pytest.raises(ModelError, match="Unknown model kind 'nope': use one of demo, torchvision"):
        registry.model_loader("nope")
    with pytest.raises(DataError, match="Unknown dataset kind 'nope'. Use one of: demo, imagefolder"):
        registry.dataset_builder("nope")
    monkeypatch.delitem(registry._MODEL_KINDS, "demo")
    with pytest.raises(ModelError, match="model kind 'demo' is not registered: import the module"):
        registry.model_loader("demo")


def test_a_new_dataset_kind_is_one_registration(monkeypatch):
    monkeypatch.setattr(registry, "_DATASET_KINDS", dict(registry._DATASET_KINDS))

    def build_arrays(spec: DatasetSpec) -> ArrayDataset:
        return ArrayDataset(np.zeros((6, 4, 4), np.uint8), [0, 1] * 3, ["a", "b"], name=spec.root)

    registry.register_dataset_kind("arrays", build_arrays)
    registry.register_dataset_kind("arrays", build_arrays)  # again (a module reload): fine
    ds = build_dataset(DatasetSpec("arrays", root="six", limit=4))
    assert ds.name == "six" and len(ds) == 4
    with pytest.raises(DataError, match="Use one of: demo, imagefolder, csv, celeba, arrays"):
        build_dataset(DatasetSpec("nope"))
    with pytest.raises(ValueError, match="dataset kind 'csv' is already registered by core.data.manifest"):
        registry.register_dataset_kind("csv", build_arrays)
