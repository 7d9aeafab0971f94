"""The Makefile's entry points (README: `make demo`, `make test`): a fresh `.venv` needs
about 9 GB, and `make` says so before it starts instead of stopping half-installed on
"No space left on device" (a CI run did)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def _make(folder: Path, *args: str) -> subprocess.CompletedProcess:
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, folder / name)
    return subprocess.run(["make", *args], cwd=folder, capture_output=True, text=True,
                          timeout=60)


def test_a_fresh_venv_is_refused_in_one_line_without_the_space(tmp_path) -> None:
    free_gb = shutil.disk_usage(tmp_path).free // 2**30
    run = _make(tmp_path, f"NEED_GB={free_gb + 1000}", ".venv/bin/python")
    assert run.returncode != 0
    assert f"make: {free_gb} GB free on this disk; a fresh .venv needs about " \
           f"{free_gb + 1000} GB" in run.stderr
    assert "NEED_GB=0" in run.stderr
    assert not (tmp_path / ".venv").exists()  # nothing half-made


def test_with_the_space_it_goes_on_to_make_the_venv(tmp_path) -> None:
    # PYTHON=echo: the venv step prints its arguments instead of making one (the pip step
    # after it then fails: there is no .venv/bin/python)
    run = _make(tmp_path, "NEED_GB=0", "PYTHON=echo", ".venv/bin/python")
    assert "GB free on this disk" not in run.stderr
    assert "-m venv .venv" in run.stdout
