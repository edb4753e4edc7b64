"""Session-wide test setup: one temporary cache for every store the tests build.

Set before any test runs, so the app under AppTest and the e2e server (a subprocess that
inherits the environment) share it and the demo store is built once per session.
"""

import os
import shutil
import tempfile
from pathlib import Path

import torch

from tests.background import HOSTED_E2E, start_hosted_prepare, stop_hosted_prepare

_OWN_CACHE: list[str] = []  # the cache this session made (never one the caller named)


def pytest_configure(config):
    if "BIASLENS_CACHE" not in os.environ:
        _OWN_CACHE.append(tempfile.mkdtemp(prefix="biaslens-test-cache-"))
        os.environ["BIASLENS_CACHE"] = _OWN_CACHE[0]
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_collection_modifyitems(config, items):
    """The hosted e2e runs last, its `make prepare` started now in the background
    (tests/background.py), so it prepares on the core the other tests leave idle."""
    hosted = [item for item in items if item.nodeid.startswith(HOSTED_E2E)]
    if hosted and Path(shutil.which("chromium") or "/usr/bin/chromium").exists():  # else the test skips
        items[:] = [item for item in items if not item.nodeid.startswith(HOSTED_E2E)] + hosted
        start_hosted_prepare(os.environ["BIASLENS_CACHE"])


def pytest_unconfigure(config):
    """Stop a background prepare still running, then remove the session's cache (about 200 MB
    of stores): a run must not fill /tmp."""
    stop_hosted_prepare()
    for folder in _OWN_CACHE:
        shutil.rmtree(folder, ignore_errors=True)
