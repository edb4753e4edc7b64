"""Session-wide test setup: one temporary cache for every store the tests build.

Set before any test runs, so the app under AppTest and the e2e server (a subprocess that
inherits the environment) share it and the demo store is built once per session.
"""

import os
import shutil
import tempfile

import torch

_OWN_CACHE: list[str] = []  # the cache this session made (never one the caller named)


def pytest_configure(config):
    if "BIASLENS_CACHE" not in os.environ:
        _OWN_CACHE.append(tempfile.mkdtemp(prefix="biaslens-test-cache-"))
        os.environ["BIASLENS_CACHE"] = _OWN_CACHE[0]
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_unconfigure(config):
    """Remove the session's cache (about 200 MB of stores): a run must not fill /tmp."""
    for folder in _OWN_CACHE:
        shutil.rmtree(folder, ignore_errors=True)
