"""The workspaces.toml schema: strict types, named problems, and hosted mode that fails closed."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.__main__ import main
from core.services.config import check_settings, check_workspace
from core.services.workspace import (
    CONTROL_NAME,
    DEMO_NAME,
    build_workspace,
    hosted_from_env,
    load_workspaces,
    workshop_from_env,
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "workspaces.toml"
    path.write_text(text)
    return path


@pytest.fixture(autouse=True)
def no_hosted_env(monkeypatch):
    monkeypatch.delenv("BIASLENS_HOSTED", raising=False)
    monkeypatch.delenv("BIASLENS_WORKSHOP", raising=False)
    monkeypatch.delenv("BIASLENS_INSTRUCTOR_PASSPHRASE", raising=False)


# --------------------------------------------------------------------------- wrong types


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ('model = { kind = "torchvision", arch = "resnet18", weights = 5 }',
         "model.weights: expected text, got 5 (a whole number)"),
        ('model = { kind = "torchvision", arch = 18 }',
         "model.arch: expected text, got 18 (a whole number)"),
        ('model = { kind = "demo", mean = ["a", 0.5, 0.5] }',
         "model.mean[0]: expected a number, got 'a' (text)"),
        ('model = { kind = "demo", layers = "conv1" }',
         "model.layers: expected a list"),
        ('model = { kind = "demo", std = [0.5, 0, 0.5] }',
         "model.std[1]: expected a number > 0"),
        ('model = { kind = "demo", input_size = "224" }',
         "model.input_size: expected a whole number, got '224' (text)"),
        ('model = { kind = "demo", mean = [nan, 0.5, 0.5] }',
         "model.mean[0]: expected a finite number"),
        ('model = { kind = "resnet" }',
         "model.kind: expected one of 'demo', 'torchvision', 'torchscript' or 'entrypoint'"),
        ('model = { kind = "entrypoint", entrypoint = "no colon" }',
         "model.entrypoint: expected 'package.module:factory'"),
        ('model = { kind = "demo", pretrained = true }',
         "'pretrained' does not apply to a 'demo' model, only to 'torchvision'"),
        ('model = { kind = "torchvision" }', "a 'torchvision' model needs 'arch'"),
    ],
)
def test_model_values_are_checked_and_named(tmp_path, entry, expected):
    listing = load_workspaces(write(tmp_path, f'[workspace.w]\n{entry}\ndataset = {{ kind = "demo" }}\n'))
    assert "w" not in listing.workspaces
    text = "\n".join(listing.problems)
    assert "[workspace.w]" in text and expected in text


@pytest.mark.parametrize(
    ("dataset", "expected"),
    [
        ('{ kind = "csv", csv = 5 }', "dataset.csv: expected text, got 5"),
        ('{ kind = "csv", csv = "a.csv", attribute_columns = "tint" }', "dataset.attribute_columns: expected a list"),
        ('{ kind = "csv", csv = "a.csv", missing = "ignore" }', "dataset.missing: expected one of 'skip' or 'error'"),
        ('{ kind = "csv", csv = "a.csv", limit = 0 }', "dataset.limit: expected a number >= 1, got 0"),
        ('{ kind = "csv", csv = "a.csv", limit = 2.5 }', "dataset.limit: expected a whole number, got 2.5"),
        ('{ kind = "demo", split = "valid" }', "split 'valid' is not one of 'train', 'test'"),
        ('{ kind = "imagefolder", root = "x", csv = "y.csv" }', "'csv' does not apply to a 'imagefolder' dataset"),
        ('{ kind = "imagefolder" }', "a 'imagefolder' dataset needs 'root'"),
        ('{ kind = "csv", csv = "a.csv", classes = ["a", "a"] }', "'classes' lists a class twice"),
        ('"images/"', "dataset: expected a table"),
    ],
)
def test_dataset_values_are_checked_and_named(tmp_path, dataset, expected):
    listing = load_workspaces(write(tmp_path, f'[workspace.d]\nmodel = {{ kind = "demo" }}\ndataset = {dataset}\n'))
    assert "d" not in listing.workspaces
    assert expected in "\n".join(listing.problems)


def test_workspace_level_keys(tmp_path):
    listing = load_workspaces(
        write(
            tmp_path,
            '[workspace.w]\nbatch_size = true\nnum_workers = -1\nhosted = true\n'
            'model = { kind = "demo" }\ndataset = { kind = "demo" }\n',
        )
    )
    text = "\n".join(listing.problems)
    assert "batch_size: expected a whole number, got True (a boolean)" in text
    assert "num_workers: expected a number >= 0, got -1" in text
    assert "hosted: unknown key (known keys: title, description" in text
    assert not listing.hosted  # a misplaced key never switches modes


def test_every_problem_of_an_entry_is_reported_at_once(tmp_path):
    listing = load_workspaces(
        write(tmp_path, '[workspace.w]\nmodel = { kind = "demo", input_size = "x", arh = 1 }\ndataset = { kind = "demo", limit = -3 }\n')
    )
    text = "\n".join(listing.problems)
    assert "input_size" in text and "arh: unknown key" in text and "limit" in text


def test_unknown_top_level_key_is_reported(tmp_path):
    listing = load_workspaces(write(tmp_path, '[workspaces.w]\nmodel = { kind = "demo" }\n'))
    assert "unknown top-level key 'workspaces'" in "\n".join(listing.problems)


def test_valid_values_load(tmp_path):
    listing = load_workspaces(
        write(
            tmp_path,
            '[workspace.w]\ntitle = "W"\nmodel = { kind = "demo", mean = [0, 0.5, 1], std = [1, 1, 1], input_size = 32 }\n'
            'dataset = { kind = "csv", csv = "m.csv", na_values = ["NA"], attribute_columns = ["tint"], classes = ["a", "b"] }\n',
        )
    )
    assert not listing.problems
    ws = listing.workspaces["w"]
    assert ws.model.mean == (0.0, 0.5, 1.0) and ws.model.input_size == 32
    assert ws.dataset.csv == str(tmp_path / "m.csv") and ws.dataset.na_values == ["NA"]


# --------------------------------------------------------------------------- hosted mode


@pytest.mark.parametrize(("value", "on", "problem"), [
    ("true", True, False), ("false", False, False), ("1", True, True), ('"true"', True, True),
    ('"yes"', True, True), ("0", True, True),
])
def test_hosted_in_the_file_fails_closed(tmp_path, value, on, problem):
    listing = load_workspaces(write(tmp_path, f"[settings]\nhosted = {value}\n"))
    assert listing.hosted is on
    assert bool(listing.problems) is problem
    if problem:
        assert "hosted: expected true or false" in listing.problems[0]
        assert "Hosted mode is on until it is fixed" in listing.problems[0]


def test_unknown_setting_fails_closed(tmp_path):
    listing = load_workspaces(write(tmp_path, "[settings]\nhostd = true\n"))
    assert listing.hosted and "hostd: unknown key" in listing.problems[0]


@pytest.mark.parametrize(("value", "on", "problem"), [
    ("1", True, False), ("true", True, False), ("TRUE", True, False), (" 1 ", True, False),
    ("0", False, False), ("false", False, False), ("", False, False),
    ("yes", True, True), ("on", True, True), ("2", True, True), ("off", True, True),
])
def test_hosted_environment_variable_fails_closed(monkeypatch, tmp_path, value, on, problem):
    monkeypatch.setenv("BIASLENS_HOSTED", value)
    setting = hosted_from_env()
    assert setting.on is on and bool(setting.problem) is problem
    listing = load_workspaces(tmp_path / "none.toml")
    assert listing.hosted is on and bool(listing.problems) is problem


def test_unreadable_file_fails_closed(tmp_path):
    listing = load_workspaces(write(tmp_path, "[settings\nhosted = false"))
    assert listing.hosted and list(listing.workspaces) == [DEMO_NAME, CONTROL_NAME]  # the built-in ones only
    assert listing.workshop  # the ground truth stays hidden too


# --------------------------------------------------------------------------- workshop mode


@pytest.mark.parametrize(("value", "on", "problem"), [
    ("true", True, False), ("false", False, False), ("1", True, True), ('"true"', True, True),
    ('"no"', True, True), ("0", True, True),
])
def test_workshop_in_the_file_is_strict_and_fails_closed(tmp_path, value, on, problem):
    listing = load_workspaces(write(tmp_path, f"[settings]\nworkshop = {value}\n"))
    assert listing.workshop is on
    assert bool(listing.problems) is problem
    if problem:
        assert "workshop: expected true or false" in listing.problems[0]


@pytest.mark.parametrize(("value", "on", "problem"), [
    ("1", True, False), ("true", True, False), (" TRUE ", True, False), ("0", False, False),
    ("false", False, False), ("", False, False), ("yes", True, True), ("off", True, True),
])
def test_workshop_environment_variable_fails_closed(monkeypatch, tmp_path, value, on, problem):
    monkeypatch.setenv("BIASLENS_WORKSHOP", value)
    setting = workshop_from_env()
    assert setting.on is on and bool(setting.problem) is problem
    listing = load_workspaces(tmp_path / "none.toml")
    assert listing.workshop is on and bool(listing.problems) is problem
    assert not listing.hosted  # the workshop variable never switches hosted mode


def test_instructor_passphrase_is_read_and_never_shown(tmp_path, monkeypatch):
    listing = load_workspaces(write(tmp_path, '[settings]\nworkshop = true\ninstructor_passphrase = "tulip-42"\n'))
    assert listing.workshop and listing.passphrase == "tulip-42" and not listing.problems
    assert "tulip-42" not in repr(listing)
    checked, _ = check_settings({"instructor_passphrase": "tulip-42"})
    assert "tulip-42" not in repr(checked)
    monkeypatch.setenv("BIASLENS_INSTRUCTOR_PASSPHRASE", "from-env")
    assert load_workspaces(tmp_path / "workspaces.toml").passphrase == "from-env"  # the variable wins


@pytest.mark.parametrize("value", ["a", "   ", "x" * 257])
def test_a_bad_passphrase_in_the_environment_is_ignored_and_reported(tmp_path, monkeypatch, value):
    """The variable used to be taken as it was (one letter, spaces), though the file refuses
    such values; now it gets the file's rule, and the file's passphrase applies."""
    monkeypatch.setenv("BIASLENS_INSTRUCTOR_PASSPHRASE", value)
    assert load_workspaces(tmp_path / "none.toml").passphrase == ""
    listing = load_workspaces(write(tmp_path, '[settings]\ninstructor_passphrase = "tulip-42"\n'))
    assert listing.passphrase == "tulip-42"
    text = "\n".join(listing.problems)
    assert "BIASLENS_INSTRUCTOR_PASSPHRASE: expected text of 4 to 256 characters, not all spaces" in text
    assert "x" * 257 not in text  # never shown


@pytest.mark.parametrize("value", ["12345", '"abc"', '["secret-1"]', "true", '"     "'])
def test_a_bad_passphrase_is_a_problem_that_hides_its_value(tmp_path, value):
    listing = load_workspaces(write(tmp_path, f"[settings]\ninstructor_passphrase = {value}\n"))
    assert listing.workshop and listing.hosted and listing.passphrase == ""  # fail closed
    text = "\n".join(listing.problems)
    assert "instructor_passphrase: expected text of 4 to 256 characters, not all spaces (the value is not shown)" in text
    assert value.strip('"[]') not in text.replace("256", "")


def test_hosted_refuses_entry_points_even_when_set_in_the_file(tmp_path):
    listing = load_workspaces(
        write(
            tmp_path,
            '[workspace.code]\nmodel = { kind = "entrypoint", entrypoint = "pkg.mod:make" }\n'
            'dataset = { kind = "demo" }\n[settings]\nhosted = true\n',
        )
    )
    assert listing.hosted and "code" not in listing.workspaces
    assert "disabled in hosted mode" in listing.problems[0]


# --------------------------------------------------------------------------- CLI


def test_cli_reports_bad_types_without_a_traceback(tmp_path, capsys):
    path = write(tmp_path, '[workspace.w]\nmodel = { kind = "torchvision", arch = 18, weights = 5 }\ndataset = { kind = "demo" }\n')
    assert main(["--file", str(path), "list"]) == 0
    assert main(["--file", str(path), "layers", "w"]) == 2
    err = capsys.readouterr().err
    assert "model.arch: expected text, got 18" in err and "Traceback" not in err
    assert "Workspace 'w' is invalid: fix the problems listed above" in err


# --------------------------------------------------------------------------- property-based

toml_scalars = st.one_of(
    st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=True), st.text(max_size=12),
)
toml_values = st.recursive(
    toml_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)
model_keys = st.sampled_from(
    ["kind", "arch", "weights", "pretrained", "entrypoint", "num_classes", "input_size", "mean", "std",
     "embedding_layer", "layers", "bogus"]
)
dataset_keys = st.sampled_from(
    ["kind", "root", "csv", "path_column", "label_column", "attribute_columns", "na_values", "missing",
     "split", "target", "slices", "limit", "classes", "bogus"]
)
kinds = st.sampled_from(["demo", "torchvision", "torchscript", "entrypoint", "imagefolder", "csv", "celeba", 3])
near_valid = st.fixed_dictionaries(
    {
        "model": st.dictionaries(model_keys, st.one_of(toml_values, kinds), max_size=5).map(
            lambda d: {"kind": "demo", **d}
        ),
        "dataset": st.dictionaries(dataset_keys, st.one_of(toml_values, kinds), max_size=5).map(
            lambda d: {"kind": "csv", "csv": "m.csv", **d}
        ),
    },
    optional={"batch_size": toml_values, "num_workers": toml_values, "title": toml_values},
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(table=st.one_of(toml_values, near_valid))
def test_random_workspace_tables_never_raise(tmp_path, table):
    checked, problems = check_workspace(table)
    assert (checked is None) == bool(problems)
    assert all(isinstance(p, str) and p for p in problems)
    if checked is not None:
        workspace = build_workspace("w", checked, tmp_path, hosted=False)
        assert workspace.batch_size >= 1 and workspace.num_workers >= 0
        for value in (workspace.model.mean or ()) + (workspace.model.std or ()):
            assert math.isfinite(value)


@settings(max_examples=200, deadline=None)
@given(table=toml_values)
def test_random_settings_are_a_boolean_or_a_problem(table):
    checked, problems = check_settings(table)
    if checked is not None:
        assert isinstance(checked.hosted, bool) and not problems
        assert table.get("hosted", False) is checked.hosted
    else:
        assert problems
