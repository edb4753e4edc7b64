"""Hosted mode in the app: no builds, no server paths, fail-closed settings; build errors show open."""

from __future__ import annotations

from pathlib import Path

import torch
from streamlit.testing.v1 import AppTest

from tests.app.conftest import REPO
from tests.support import make_tiny_cnn


def no_exception(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def _scripted_workspace(tmp_path: Path, tiny: Path, hosted: str = "", extra: str = "") -> Path:
    """A TorchScript tiny CNN (allowed when hosted, unlike entry points) over the digits folder."""
    weights = tmp_path / "tiny.ts.pt"
    torch.jit.script(make_tiny_cnn()).save(str(weights))
    path = tmp_path / "workspaces.toml"
    path.write_text(
        f"""{hosted}
[workspace.scripted]
title = "Scripted tiny"
model = {{ kind = "torchscript", weights = "{weights}", input_size = 16, mean = [0.5, 0.5, 0.5], std = [0.5, 0.5, 0.5] }}
dataset = {{ kind = "imagefolder", root = "{tiny / 'images'}" }}
{extra}
"""
    )
    return path


def _app(monkeypatch, tmp_path: Path, workspaces: Path, hosted_env: str | None) -> AppTest:
    monkeypatch.setenv("BIASLENS_WORKSPACES", str(workspaces))
    monkeypatch.setenv("BIASLENS_CACHE", str(tmp_path / "cache"))
    if hosted_env is None:
        monkeypatch.delenv("BIASLENS_HOSTED", raising=False)
    else:
        monkeypatch.setenv("BIASLENS_HOSTED", hosted_env)
    monkeypatch.chdir(REPO)
    return AppTest.from_file(str(REPO / "app.py"), default_timeout=240)


def _texts(at: AppTest) -> str:
    parts = [e.value for kind in (at.markdown, at.caption, at.warning, at.info, at.error) for e in kind]
    return "\n".join(str(p) for p in parts)


def test_hosted_overview_offers_no_build_and_says_how(tmp_path, tiny_files, monkeypatch):
    at = _app(monkeypatch, tmp_path, _scripted_workspace(tmp_path, tiny_files), "1")
    at.session_state["app.workspace"] = "scripted"
    at.run()
    no_exception(at)
    assert not [b for b in at.button if "Build" in b.label]
    text = _texts(at)
    assert "visitors cannot build it" in text and "python -m core" not in text  # no operator command shown
    assert not (tmp_path / "cache" / "stores").exists()  # nothing was built


def test_hosted_store_panel_shows_no_path_and_no_layer_adder(tmp_path, tiny_files, monkeypatch):
    from core.__main__ import main

    workspaces = _scripted_workspace(tmp_path, tiny_files)
    monkeypatch.setenv("BIASLENS_CACHE", str(tmp_path / "cache"))
    assert main(["--file", str(workspaces), "build", "scripted", "--layers", "block1"]) == 0  # the CLI builds
    at = _app(monkeypatch, tmp_path, workspaces, "true")
    at.session_state["app.workspace"] = "scripted"
    at.run()
    no_exception(at)
    text = _texts(at)
    assert "Fingerprint" in text and str(tmp_path) not in text and "/stores/" not in text
    assert not [m for m in at.multiselect if m.label == "Add layers"]
    assert "Layers not stored: `block2`, `block3`" in text and "python -m core" not in text  # no operator command


def test_hosted_errors_hide_server_paths(tmp_path, tiny_files, monkeypatch):
    extra = f'[workspace.gone]\nmodel = {{ kind = "demo" }}\ndataset = {{ kind = "imagefolder", root = "{tmp_path / "no" / "such"}" }}\n'
    at = _app(monkeypatch, tmp_path, _scripted_workspace(tmp_path, tiny_files, extra=extra), "1")
    at.session_state["app.workspace"] = "gone"
    at.run()
    no_exception(at)
    assert at.error and "cannot be opened" in at.error[0].value
    assert "…/such" in at.error[0].value and str(tmp_path) not in at.error[0].value


def test_bad_hosted_values_fail_closed(tmp_path, tiny_files, monkeypatch):
    workspaces = _scripted_workspace(tmp_path, tiny_files, hosted="[settings]\nhosted = 1\n")
    at = _app(monkeypatch, tmp_path, workspaces, None)
    at.session_state["app.workspace"] = "scripted"
    at.run()
    no_exception(at)
    warnings = [w.value for w in at.sidebar.warning]
    assert any("hosted: expected true or false" in w for w in warnings)
    assert all(str(tmp_path) not in w for w in warnings)  # hosted: paths cut
    assert not [b for b in at.button if "Build" in b.label]
    at = _app(monkeypatch, tmp_path, tmp_path / "none.toml", "yes")
    at.run()
    assert any("BIASLENS_HOSTED='yes'" in w.value for w in at.sidebar.warning)


def test_store_build_error_shows_open_with_what_to_do(tmp_path, tiny_files, monkeypatch):
    broken = tmp_path / "broken"
    for label in ("0", "1"):
        (broken / label).mkdir(parents=True)
        for i in range(3):
            (broken / label / f"{i}.png").write_bytes((tiny_files / "images" / label).glob("*.png").__next__().read_bytes())
    whole = (broken / "1" / "0.png").read_bytes()
    (broken / "1" / "9.png").write_bytes(whole[: len(whole) // 2])  # a valid header, truncated pixels
    extra = f'[workspace.broken]\nmodel = {{ kind = "entrypoint", entrypoint = "tests.support:make_tiny_cnn", input_size = 16 }}\ndataset = {{ kind = "imagefolder", root = "{broken}" }}\n'
    at = _app(monkeypatch, tmp_path, _scripted_workspace(tmp_path, tiny_files, extra=extra), None)
    at.session_state["app.workspace"] = "broken"
    at.run()
    [b for b in at.button if b.label == "Build the activation store"][0].click().run()
    no_exception(at)
    errors = [e.value for e in at.error]
    assert any("could not be built" in e and "9.png" in e and "python -m core build broken" in e for e in errors)
