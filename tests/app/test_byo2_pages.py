"""Issue 22 on the pages: Filter saliency with deleted images and with damaged profiles (the
rebuild button), and Intersectional on a CSV whose first attribute has one value and another
is named ``x:y``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from core.methods.saliency.profiles import PROFILES_FILE
from tests.app.conftest import REPO
from tests.app.test_app import build_tiny, no_exception
from tests.app.test_saliency_page import BUILD, open_saliency, texts, ws_key

MODEL = ('{ kind = "entrypoint", entrypoint = "tests.support:make_tiny_cnn", input_size = 16, '
         "mean = [0.5, 0.5, 0.5], std = [0.5, 0.5, 0.5] }")


@pytest.fixture
def odd_app(tmp_path, tiny_files, monkeypatch) -> tuple[AppTest, Path]:
    """A CSV workspace over a private copy of the tiny images: attribute ``site`` has one
    value, ``x:y`` two; this test may delete images."""
    root = tmp_path / "images"
    shutil.copytree(tiny_files / "images", root)
    lines = ["path,label,site,x:y"]
    for i, path in enumerate(sorted(root.rglob("*.png"))):
        lines.append(f"{path.relative_to(tmp_path)},{path.parent.name},lab,{'p' if i % 3 else 'q'}")
    (tmp_path / "manifest.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "workspaces.toml").write_text(
        f'[workspace.odd]\nmodel = {MODEL}\ndataset = {{ kind = "csv", csv = "{tmp_path / "manifest.csv"}" }}\n'
    )
    monkeypatch.setenv("BIASLENS_WORKSPACES", str(tmp_path / "workspaces.toml"))
    monkeypatch.setenv("BIASLENS_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(REPO)
    return AppTest.from_file(str(REPO / "app.py"), default_timeout=240), root


def built_saliency(at: AppTest) -> AppTest:
    at = open_saliency(build_tiny(at, "odd"))
    at.button(key=BUILD).click().run()
    no_exception(at)
    return at.run()


def test_intersectional_opens_on_attributes_that_split_and_takes_odd_names(odd_app):
    at, _ = odd_app
    build_tiny(at, "odd")
    at.switch_page("pages/intersectional.py").run()
    no_exception(at)
    assert not at.error, [e.value for e in at.error]
    picker = at.multiselect(key=next(k for k in (m.key for m in at.multiselect) if k.startswith("intersectional.columns")))
    assert picker.value == ["x:y"]  # `site` has a single value: passed over, and the page says why
    assert any("passed over" in c.value and "`site`" in c.value for c in at.caption)
    picker.set_value(["x:y"]).run()
    no_exception(at)
    assert not at.error, [e.value for e in at.error]


def test_saliency_opens_on_a_moderate_error_and_survives_deleted_images(odd_app):
    at, root = odd_app
    at = built_saliency(at)
    assert not at.error, [e.value for e in at.error]
    assert any("closest to a 25-point margin" in c.value for c in at.caption)
    row = at.session_state[f"saliency.row:{ws_key('odd')}"]
    for path in sorted(root.rglob("*.png")):
        path.unlink()
    at.switch_page("pages/overview.py").run()
    at = open_saliency(at)  # the picked image and every neighbour are gone
    no_exception(at)
    assert f"(row {row})" in texts(at)
    assert any("cannot be read" in w.value for w in at.warning)
    assert any(c.endswith(": missing") for im in at.image for c in im.captions)


def test_damaged_profiles_offer_a_rebuild(odd_app):
    at, root = odd_app
    at = built_saliency(at)
    (path,) = (root.parent / "cache").rglob("saliency/*/manifest.json")
    manifest = json.loads(path.read_text())
    values = np.memmap(path.parent / PROFILES_FILE, dtype=np.float16, mode="r+", shape=(manifest["n"], manifest["n_filters"]))
    values[0, 0] = np.nan
    values.flush()
    del values
    st.cache_resource.clear()  # a new server process: the profiles are opened again
    at.switch_page("pages/overview.py").run()
    at = open_saliency(at)
    assert any("damaged" in w.value and "NaN" in w.value for w in at.warning)
    rebuild = at.button(key=BUILD)
    assert rebuild.label == "Rebuild the saliency profiles"
    rebuild.click().run()
    no_exception(at)
    at.run()
    assert not [w.value for w in at.warning if "damaged" in w.value]
    assert "Pick an image" in [s.value for s in at.subheader]
