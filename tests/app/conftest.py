"""AppTest fixtures: cleared caches, a tiny workspace (digits ImageFolder + tiny CNN)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import streamlit as st
from PIL import Image
from streamlit.testing.v1 import AppTest

from core.services.server import SERVER
from tests.support import SIZE, digits_arrays

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def clear_caches():
    st.cache_data.clear()
    st.cache_resource.clear()
    SERVER.reset()  # what every visitor shares lives outside Streamlit's caches: a fresh server
    yield


@pytest.fixture(scope="session")
def tiny_files(tmp_path_factory) -> Path:
    """A digits ImageFolder (with one non-image file) and a CSV manifest over it."""
    root = tmp_path_factory.mktemp("tiny")
    images, labels, attributes = digits_arrays(200)
    lines = ["path,label,tint"]
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = root / "images" / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:04d}.png")
        lines.append(f"images/{label}/{i:04d}.png,{label},{attributes.loc[i, 'tint']}")
    (root / "images" / "3" / "notes.txt").write_text("not an image")
    lines.append("images/3/missing.png,3,red")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    assert np.asarray(Image.open(root / "images" / "0" / "0000.png")).shape == (SIZE, SIZE, 3)
    return root


def write_workspaces(tmp_path: Path, tiny: Path, extra: str = "") -> Path:
    path = tmp_path / "workspaces.toml"
    model = '{ kind = "entrypoint", entrypoint = "tests.support:make_tiny_cnn", input_size = 16, mean = [0.5, 0.5, 0.5], std = [0.5, 0.5, 0.5] }'
    path.write_text(
        f"""
[workspace.tiny]
title = "Tiny digits"
model = {model}
dataset = {{ kind = "csv", csv = "{tiny / 'manifest.csv'}" }}

[workspace.folder]
title = "Tiny digits folder"
model = {model}
dataset = {{ kind = "imagefolder", root = "{tiny / 'images'}" }}
{extra}
"""
    )
    return path


@pytest.fixture
def app(tmp_path, tiny_files, monkeypatch):
    """An AppTest of app.py with the tiny workspaces registered and a cache of its own."""
    monkeypatch.setenv("BIASLENS_WORKSPACES", str(write_workspaces(tmp_path, tiny_files)))
    monkeypatch.setenv("BIASLENS_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(REPO)
    return AppTest.from_file(str(REPO / "app.py"), default_timeout=240)


def pick(at: AppTest, name: str) -> AppTest:
    """Choose a workspace in the sidebar picker."""
    at.sidebar.selectbox(key="app.workspace_widget").set_value(name).run()
    return at


@pytest.fixture
def demo_app(tmp_path, monkeypatch):
    """An AppTest of app.py on the demo, with the session's shared cache (built once)."""
    monkeypatch.setenv("BIASLENS_WORKSPACES", str(tmp_path / "none.toml"))
    monkeypatch.chdir(REPO)
    return AppTest.from_file(str(REPO / "app.py"), default_timeout=300)
