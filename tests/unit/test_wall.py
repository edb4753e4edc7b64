"""The Streamlit wall: ruff (TID251) fails when core/ outside core/ui/ imports Streamlit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROBE = "import streamlit\n\nfrom core.ui import cache\n\nprint(streamlit, cache)\n"


def ruff(path: str, source: str = PROBE) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "--stdin-filename", path, "-"],
        input=source, capture_output=True, text=True, cwd=REPO, check=False,
    )


@pytest.mark.parametrize("path", ["core/probe.py", "core/methods/probe.py", "core/demo/probe.py"])
def test_streamlit_in_core_fails_ruff(path):
    result = ruff(path)
    assert result.returncode == 1
    assert result.stdout.count("TID251") == 2  # both imports are named


@pytest.mark.parametrize("path", ["core/ui/probe.py", "pages/probe.py", "app.py", "tests/unit/probe.py"])
def test_streamlit_allowed_above_the_wall(path):
    result = ruff(path)
    assert "TID251" not in result.stdout and result.returncode == 0, result.stdout


def test_core_is_behind_the_wall_today():
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "--select", "TID251", "core", "bench"],
        capture_output=True, text=True, cwd=REPO, check=False,
    )
    assert result.returncode == 0, result.stdout
