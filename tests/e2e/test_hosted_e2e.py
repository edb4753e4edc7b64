"""The hosted demo as `make serve` runs it: no build button, no server path, no traceback.

The session ran `make prepare` in the background (tests/background.py); this test checks it
succeeded, and `make serve` then finds every step prepared."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.background import wait_hosted_prepare
from tests.e2e.conftest import CHROMIUM, REPO, _free_port, screenshot, wait_idle

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def hosted_url(tmp_path_factory) -> Iterator[str]:
    """`make serve` on a free port: the CLI builds the demo store, then the hosted app starts."""
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed (make test installs it)")
    status, prepared = wait_hosted_prepare(timeout=900)  # `make prepare`, started with the session (tests/background.py)
    if status is not None:
        assert status == 0, f"make prepare failed: {prepared[-3000:]}"
        assert "prepared 'demo'" in prepared and "prepared 'demo-control'" in prepared, prepared[-3000:]
    port = _free_port()
    log = tmp_path_factory.mktemp("hosted") / "serve.log"
    env = {**os.environ, "BIASLENS_WORKSPACES": str(tmp_path_factory.mktemp("ws") / "none.toml")}
    env.pop("BIASLENS_HOSTED", None)  # make serve must switch it on by itself
    with log.open("w") as out:
        server = subprocess.Popen(
            ["make", "--no-print-directory", "serve", f"PORT={port}", "ADDRESS=127.0.0.1"],
            cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 900  # the CLI prepares the demo first when the session has not (minutes on a busy 2-core machine)
        while time.monotonic() < deadline:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=1).read() == b"ok":
                    break
            except OSError:
                if server.poll() is not None:
                    pytest.fail(f"make serve stopped: {log.read_text()[-2000:]}")
                time.sleep(0.5)
        else:
            pytest.fail(f"make serve did not start: {log.read_text()[-2000:]}")
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    text = log.read_text()
    assert "store:" in text  # the CLI built (or found) the demo store before serving


def test_hosted_overview_has_no_build_button_and_no_path(hosted_url, page):
    page.goto(hosted_url)
    page.get_by_text("Planted slices").first.wait_for(timeout=120_000)
    wait_idle(page)
    assert page.locator("[data-testid='stException']").count() == 0
    assert page.get_by_text("Hosted mode").first.is_visible()
    page.get_by_text("Activation store:").first.click()  # open the store expander
    wait_idle(page)
    body = page.locator("[data-testid='stMain']").inner_text()
    assert "Fingerprint" in body
    assert os.environ["BIASLENS_CACHE"] not in body and "/stores/" not in body
    assert page.get_by_role("button", name="Build the activation store").count() == 0
    assert page.get_by_role("button", name="Add the selected layers").count() == 0
    screenshot(page, "hosted-overview")


def test_hosted_cohort_breakout_is_a_message(hosted_url, page):
    page.goto(f"{hosted_url}/cohorts")
    wait_idle(page)
    box = page.get_by_label("WHERE")
    box.fill("true) UNION SELECT * FROM meta WHERE (true")
    box.press("Enter")
    wait_idle(page)
    page.get_by_text("The filter was refused").wait_for()
    assert page.locator("[data-testid='stException']").count() == 0
    screenshot(page, "hosted-cohort-refused")
