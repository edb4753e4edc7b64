"""Issue 22 in a real Chromium: a random-weight torchvision resnet18 at 224 px on 200 generated
images (an ImageFolder of 4 classes), registered as a ``torchvision`` workspace with its
state_dict file; every page opens, does its main action and shows no exception or error box.
The dataset's saliency profiles (minutes on a CPU) are left to bench/byo.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.e2e.conftest import CHROMIUM, REPO, SCREENSHOTS

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_resnet18_on_every_page(tmp_path, browser, monkeypatch):
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed (make test installs it)")
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    import byo  # bench/byo.py: the images, the weights, the workspace file and the page driver
    from common import start_server, stop_server

    byo.make_workspaces(tmp_path, ["resnet18"], 200)
    monkeypatch.setenv("BIASLENS_WORKSPACES", str(tmp_path / "workspaces.toml"))
    monkeypatch.setenv("BIASLENS_CACHE", str(tmp_path / "cache"))
    byo.build_store("resnet18", dict(os.environ))
    server, url = start_server(tmp_path / "streamlit.log")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport={"width": 1400, "height": 1400})
    try:
        page = context.new_page()
        page.set_default_timeout(300_000)
        pages = byo.drive(page, url, "resnet18", SCREENSHOTS, heavy=False)
    finally:
        context.close()
        stop_server(server)
    assert list(pages) == list(byo.PAGES)
    assert {name: v["exceptions"] for name, v in pages.items() if v["exceptions"]} == {}
    assert {name: v["errors"] for name, v in pages.items() if v["errors"]} == {}
    assert pages["Spotlight"]["action"] == "run" and pages["Subgroups"]["action"].endswith("grad-cam")
