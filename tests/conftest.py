"""Session-wide test setup: one temporary cache for every store the tests build, torch's
threads shared out between pytest-xdist's workers, and the longest test file first.

The cache is set before any test runs (and before xdist starts its workers, which inherit the
environment), so the app under AppTest and the e2e servers (subprocesses that inherit it too)
share it and the demo store is built once per session.
"""

import os
import tempfile

import torch

# Started first, so that the other workers share out the rest of the suite while it runs:
# `make serve` prepares the demo (store, profiles, the default probes) before serving.
LONGEST_FIRST = ("tests/e2e/test_hosted_e2e.py",)


def pytest_configure(config):
    os.environ.setdefault("BIASLENS_CACHE", tempfile.mkdtemp(prefix="biaslens-test-cache-"))
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // workers)))  # no more threads than cores


def pytest_collection_modifyitems(session, config, items):
    """Move the longest files' tests to the front (a stable sort keeps every other order)."""
    def first(item) -> int:
        path = item.nodeid.split("::")[0]
        return LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=first)
