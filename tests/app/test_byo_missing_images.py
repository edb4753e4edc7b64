"""Images deleted after the store was built: every gallery, strip, instance panel and the details
dialog show a placeholder (a grey tile with a cross and the image's id), never an exception."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from core.ui import cache
from tests.app.conftest import REPO
from tests.app.test_app import build_tiny, no_exception

MODEL = ('{ kind = "entrypoint", entrypoint = "tests.support:make_tiny_cnn", input_size = 16, '
         "mean = [0.5, 0.5, 0.5], std = [0.5, 0.5, 0.5] }")
PAGES = ["pages/overview.py", "pages/cohorts.py", "pages/activis.py", "pages/spotlight.py", "pages/subgroups.py"]


@pytest.fixture
def folder_app(tmp_path, tiny_files, monkeypatch) -> tuple[AppTest, Path]:
    """An ImageFolder workspace over a private copy of the tiny images (this test deletes some)."""
    root = tmp_path / "images"
    shutil.copytree(tiny_files / "images", root)
    (tmp_path / "workspaces.toml").write_text(
        f'[workspace.mine]\nmodel = {MODEL}\ndataset = {{ kind = "imagefolder", root = "{root}" }}\n'
    )
    monkeypatch.setenv("BIASLENS_WORKSPACES", str(tmp_path / "workspaces.toml"))
    monkeypatch.setenv("BIASLENS_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(REPO)
    return AppTest.from_file(str(REPO / "app.py"), default_timeout=240), root


def test_pages_show_placeholders_for_deleted_images(folder_app):
    at, root = folder_app
    build_tiny(at, "mine")
    for path in sorted(root.rglob("*.png")):  # every image: each gallery of every page meets a missing file
        path.unlink()
    for page in PAGES:
        at.switch_page(page).run()
        no_exception(at)
        assert not [e.value for e in at.error if "Cannot read image" in e.value], page
    at.switch_page("pages/cohorts.py").run()
    at.text_input[0].input("correct = false").run()
    no_exception(at)
    assert len(at.image) > 0  # the cohort's gallery, drawn with placeholders


def test_details_dialog_of_a_missing_image_says_so(folder_app):
    at, root = folder_app
    build_tiny(at, "mine")  # the Overview, with its gallery of misclassified images
    picker = next(s for s in at.selectbox if (s.key or "").startswith("detail.pick:"))
    shown_id = picker.options[0].split(" · ")[0]
    (root / shown_id).unlink()
    picker.select_index(0).run()
    no_exception(at)
    assert any(m.value.startswith(f"**{shown_id}**") for m in at.markdown)  # the store's figures still show
    assert any(c == "Image file missing" for im in at.image for c in im.captions)
    warning = next(w.value for w in at.warning if "image file is missing" in w.value)
    assert "file not found" in warning and shown_id.split("/")[-1] in warning
    assert not [s for s in at.selectbox if (s.key or "").startswith("detail.gradcam_layer")]  # no Grad-CAM without pixels


def test_thumbnails_of_missing_and_damaged_files_are_placeholders(folder_app):
    _, root = folder_app
    from core.data.folders import ImageFolderDataset
    from core.data.images import placeholder

    dataset = ImageFolderDataset(root)
    gone, damaged, kept = 0, 1, 2
    (root / dataset.ids[gone]).unlink()
    (root / dataset.ids[damaged]).write_bytes(b"not a png any more")
    thumbs = cache.thumbnails(dataset, "k", (gone, damaged, kept), 32)
    assert np.array_equal(thumbs[0], placeholder(32, dataset.ids[gone]))
    assert np.array_equal(thumbs[1], placeholder(32, dataset.ids[damaged]))
    assert not np.array_equal(thumbs[2], placeholder(32, dataset.ids[kept]))
    strip = cache.strip_png(dataset, "k", (gone, kept), 32, (True, False), 3)
    assert strip.startswith(b"\x89PNG")
