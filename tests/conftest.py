"""Session-wide test setup: one temporary cache for every store the tests build.

Set before any test runs, so the app under AppTest and the e2e server (a subprocess that
inherits the environment) share it and the demo store is built once per session.
"""

import os
import tempfile

import torch


def pytest_configure(config):
    os.environ.setdefault("BIASLENS_CACHE", tempfile.mkdtemp(prefix="biaslens-test-cache-"))
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
