"""Errors a user can cause are BiasLensErrors that say what to do; ValueError and TypeError
are left for programming errors.

Two checks: a walk over the source of core/ that refuses any ``raise ValueError(...)`` or
``raise TypeError(...)`` not marked ``# programming error`` (on its line or the line above),
and a table of user mistakes (bad estimator parameters, subset names, workspace values,
scoring inputs, neurons, ActiVis, NAPs...) triggered for real on tiny numpy data.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from core.errors import (
    BiasLensError,
    ConfigError,
    DataError,
    InputError,
    ParameterError,
    WorkspaceError,
)

ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "core"
MARK = "# programming error"
PLAIN = {"ValueError", "TypeError"}

# Raises in files reserved for other work while this rule landed, keyed by (file, the
# start of the message), each with the class it is to become: every entry must match
# exactly one unmarked raise, so a converted or marked one must leave this list too.
# Empty now: the owners of those files marked theirs (gradcam.py, explain.py, keys.py).
ALLOWED: dict[tuple[str, str], str] = {
    # ("core/path/to/file.py", "start of the message"): "ParameterError",  # converted by the lead
}

# Words of a message that tell the user what to do.
HINT = re.compile(
    r"\b(use|pick|choose|set|give|lower|raise|rename|remove|add|shorten|select|build|rebuild|compute|"
    r"return|flatten|cast|load|delete|fix|show|score|rank|update|list|try)\b",
    re.IGNORECASE,
)


def _plain_raises() -> list[tuple[str, int, str]]:
    """(file, line, source) of every ``raise ValueError/TypeError`` under core/."""
    found = []
    for path in sorted(CORE.rglob("*.py")):
        text = path.read_text()
        for node in ast.walk(ast.parse(text, filename=str(path))):
            if not isinstance(node, ast.Raise) or node.exc is None:
                continue
            exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            if isinstance(exc, ast.Name) and exc.id in PLAIN:
                found.append((path.relative_to(ROOT).as_posix(), node.lineno, ast.get_source_segment(text, node) or ""))
    return found


def _marked(file: str, line: int) -> bool:
    lines = (ROOT / file).read_text().splitlines()
    return any(MARK in lines[i - 1] for i in (line, line - 1) if i >= 1)


def test_the_walk_finds_raises():
    """The walk sees the marked programming errors (so an empty result is not a silent pass)."""
    assert any(_marked(file, line) for file, line, _ in _plain_raises())


def test_every_plain_raise_in_core_is_a_marked_programming_error():
    unmarked = [(file, line, source) for file, line, source in _plain_raises() if not _marked(file, line)]
    used = {key: 0 for key in ALLOWED}
    bad = []
    for file, line, source in unmarked:
        keys = [key for key in ALLOWED if key[0] == file and key[1] in source]
        for key in keys:
            used[key] += 1
        if not keys:
            bad.append(f"{file}:{line}: {source.splitlines()[0].strip()}")
    assert not bad, (
        "raise a BiasLensError subclass (core/errors.py) with a message that says what to do, "
        f"or mark a programming error with '{MARK}: why' on the raise line or above:\n" + "\n".join(bad)
    )
    stale = [f"{file}: {start!r}" for (file, start), count in used.items() if count != 1]
    assert not stale, "ALLOWED entries that match no unmarked raise (or several): remove or fix them:\n" + "\n".join(stale)


def test_the_new_classes_are_also_value_errors():
    for cls in (ParameterError, InputError, ConfigError):
        assert issubclass(cls, BiasLensError) and issubclass(cls, ValueError)
    assert issubclass(InputError, DataError) and issubclass(ConfigError, WorkspaceError)


# --------------------------------------------------------------------------- user mistakes


def _config(table: str, value: dict) -> Callable[[], object]:
    """Validate a workspace table; re-raise the rule error pydantic wraps (the page shows its text)."""

    def run() -> object:
        from core.services import config

        try:
            return getattr(config, table).model_validate(value)
        except ValidationError as exc:
            errors = [e["ctx"]["error"] for e in exc.errors() if "error" in (e.get("ctx") or {})]
            raise errors[0] from None

    return run


def _registry():
    from core.services.subsets import SubsetRegistry

    registry = SubsetRegistry({}, "ws")
    registry.add("kept", [0, 1], origin="manual")
    return registry


def _cases() -> list[tuple[str, type[BiasLensError], Callable[[], object]]]:
    from core.methods.activis.matrix import ActivationMatrix, Projection, instance_grid, pages_for
    from core.methods.intersectional.naps import (
        NAPs,
        TopographicLayout,
        nap_similarity,
        relaxation_step,
        topomap,
    )
    from core.methods.saliency.filters import ProfileStats, filter_profiles, resolve_method
    from core.methods.saliency.profiles import nearest
    from core.methods.subgroups.neurons import (
        ConceptPatchFinder,
        NeuronClusters,
        NeuronSelector,
        mask_positions,
        neuron_columns,
        patch_size_for,
    )
    from core.scoring.scorecard import domino_scorecard, precision_at_k, ranking_of, scorecard
    from core.scoring.significance import group_tests, split_half
    from core.scoring.summary import gallery_rows, intersection_accuracy, project_2d
    from core.services.cohorts import equals_filter
    from core.services.report import build_report
    from core.services.subsets import check_name
    from core.store.pipeline import resolve_decode

    acts = np.ones((4, 3))
    correct = np.array([True, False, True, True])
    truth = np.array([[True], [False], [True], [False]])
    meta = pd.DataFrame({"a": [1, 2], "correct": [True, False]})
    return [
        # estimators' parameters (widgets, notebooks)
        ("NeuronSelector mass", ParameterError, lambda: NeuronSelector(mass=0).fit(acts)),
        ("NeuronClusters threshold", ParameterError, lambda: NeuronClusters(threshold=2).fit({})),
        ("ConceptPatchFinder n_images", ParameterError,
         lambda: ConceptPatchFinder(n_images=0).fit(None, None, [("a", 0)], lambda layer: acts)),
        ("ActivationMatrix top_n", ParameterError, lambda: ActivationMatrix(top_n=0).fit(acts, [np.array([0])])),
        ("ActivationMatrix rank", ParameterError, lambda: ActivationMatrix(rank="mean").fit(acts, [np.array([0])])),
        ("Projection method", ParameterError, lambda: Projection(method="mds").fit(acts)),
        ("Projection max_points", ParameterError, lambda: Projection(max_points=1).fit(acts)),
        ("NAPs chunk", ParameterError, lambda: NAPs(chunk=0).fit(acts, np.array([0, 0, 1, 1]))),
        ("TopographicLayout n_neighbors", ParameterError,
         lambda: TopographicLayout(n_neighbors=1).fit(np.random.default_rng(0).random((2, 16)))),
        # functions' parameters
        ("neuron_columns threshold", ParameterError, lambda: neuron_columns({}, {}, threshold=1.5)),
        ("patch_size_for", ParameterError, lambda: patch_size_for(0)),
        ("mask_positions size", ParameterError, lambda: mask_positions(10, 20, 1, 0, np.random.default_rng(0))),
        ("pages_for per_class", ParameterError, lambda: pages_for(np.array([0, 1]), 0)),
        ("instance_grid columns", ParameterError,
         lambda: instance_grid(np.array([0, 1]), np.array([0, 1]), np.array([0.5, 0.5]), 2, columns=0)),
        ("group_tests method", ParameterError, lambda: group_tests(correct, [np.array([0])], method="bayes")),
        ("precision_at_k k", ParameterError, lambda: precision_at_k(truth[:, 0], np.ones(4), k=0)),
        ("domino_scorecard ks", ParameterError, lambda: domino_scorecard(truth, [np.ones(4)], ks=())),
        ("project_2d method", ParameterError, lambda: project_2d(acts, method="tsne")),
        ("gallery_rows show", ParameterError, lambda: gallery_rows(meta, "wrong", None, 1, 0)),
        ("intersection_accuracy", ParameterError, lambda: intersection_accuracy(meta, "a", "a")),
        ("build_report fmt", ParameterError, lambda: build_report([], meta, [], title="t", fmt="pdf")),
        ("equals_filter", ParameterError, lambda: equals_filter({})),
        ("resolve_method", ParameterError, lambda: resolve_method(None, None, "fast")),
        ("resolve_decode", ParameterError, lambda: resolve_decode("gpu", None, None)),
        # the user's data
        ("NeuronSelector activations", InputError, lambda: NeuronSelector().fit(np.ones(3))),
        ("neuron_columns layer_order", InputError, lambda: neuron_columns({"a": np.ones(2)}, {}, layer_order=["b"])),
        ("neuron_columns shapes", InputError, lambda: neuron_columns({"a": np.ones(2)}, {"a": np.ones(3)})),
        ("relaxation_step", InputError, lambda: relaxation_step(np.zeros((1, 2)))),
        ("topomap", InputError, lambda: topomap(np.zeros((3, 2)), np.zeros(2))),
        ("nap_similarity", InputError, lambda: nap_similarity(np.zeros((0, 3)))),
        ("group_tests rows", InputError, lambda: group_tests(correct, [np.array([9])])),
        ("group_tests names", InputError, lambda: group_tests(correct, [np.array([0])], names=["a", "b"])),
        ("group_tests mask", InputError, lambda: group_tests(correct, [np.array([True, False])])),
        ("split_half", InputError, lambda: split_half(np.array([True]), lambda rows: [])),
        ("ranking_of rows", InputError, lambda: ranking_of(np.array([7]), 3, 1)),
        ("scorecard names", InputError, lambda: scorecard(truth, [np.ones(4)], slice_names=["a", "b"])),
        ("ProfileStats sigma", InputError, lambda: ProfileStats(2).sigma),
        ("ProfileStats update", InputError, lambda: ProfileStats(2).update(np.ones((1, 3)))),
        ("filter_profiles labels", InputError, lambda: filter_profiles(None, [1, 2], [1], None)),
        ("nearest query", InputError, lambda: nearest(np.zeros((3, 2), dtype=np.float16), np.zeros(3))),
        # subsets: names and notes
        ("empty subset name", BiasLensError, lambda: check_name("  ")),
        ("long subset name", BiasLensError, lambda: check_name("x" * 500)),
        ("reserved subset name", BiasLensError, lambda: check_name("All images")),
        ("control characters", BiasLensError, lambda: check_name("a\tb")),
        ("long note", BiasLensError, lambda: _registry().set_note("kept", "n" * 100_000)),
        ("unknown subset", BiasLensError, lambda: _registry().get("gone")),
        ("taken subset name", BiasLensError, lambda: _registry().add("kept", [1], origin="manual")),
        ("empty subset", BiasLensError, lambda: _registry().add("new", [], origin="manual")),
        # workspace file
        ("key of another kind", ConfigError, _config("ModelTable", {"kind": "demo", "pretrained": True})),
        ("missing key", ConfigError, _config("ModelTable", {"kind": "torchvision"})),
        ("weights and pretrained", ConfigError,
         _config("ModelTable", {"kind": "torchvision", "arch": "resnet18", "weights": "w.pt", "pretrained": True})),
        ("layer listed twice", ConfigError, _config("ModelTable", {"kind": "demo", "layers": ["a", "a"]})),
        ("split of another kind", ConfigError, _config("DatasetTable", {"kind": "demo", "split": "valid"})),
        ("class listed twice", ConfigError, _config("DatasetTable", {"kind": "demo", "classes": ["a", "a"]})),
    ]


CASES = _cases()


@pytest.mark.parametrize(("name", "cls", "trigger"), CASES, ids=[case[0] for case in CASES])
def test_a_user_mistake_is_a_biaslens_error_that_says_what_to_do(name, cls, trigger):
    with pytest.raises(BiasLensError) as caught:
        trigger()
    error = caught.value
    assert isinstance(error, cls), f"{name}: {type(error).__name__}, expected {cls.__name__}"
    message = str(error)
    assert message.strip(), f"{name}: empty message"
    assert HINT.search(message), f"{name}: the message does not say what to do: {message!r}"


def test_the_case_table_is_broad():
    assert len(CASES) >= 15
    assert {ParameterError, InputError, ConfigError, BiasLensError} <= {cls for _, cls, _ in CASES}


def test_a_workspace_rule_is_reported_as_a_problem_sentence():
    from core.services.config import check_workspace

    table = {"model": {"kind": "demo", "pretrained": True}, "dataset": {"kind": "demo"}}
    _, problems = check_workspace(table)
    assert any("'pretrained' does not apply" in p and "remove it" in p for p in problems), problems


def test_a_damaged_saved_subset_is_an_input_error_the_file_problem_explains(tmp_path):
    import json

    from core.services.subsets import FILE_NAME, Subset, SubsetRegistry

    entry = {"name": "broken", "origin": "manual", "created": "2024-01-01T00:00:00Z", "rows": []}
    with pytest.raises(InputError, match="no rows"):
        Subset.from_json(entry)
    (tmp_path / FILE_NAME).write_text(json.dumps({"format": 1, "subsets": [entry]}))
    registry = SubsetRegistry.in_folder(tmp_path)
    assert registry.names() == []
    assert "no rows" in registry.problem and "fix them there" in registry.problem
