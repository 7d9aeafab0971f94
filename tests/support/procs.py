"""Subprocesses of a test under pytest-xdist (see tests/conftest.py `pytest_configure`)."""

from __future__ import annotations

import os


def all_cores() -> None:
    """`preexec_fn` for a test that starts several single-threaded processes (DDP ranks with
    OMP_NUM_THREADS=1): they get every core of the run back instead of the one core this
    xdist worker is pinned to. Several one-thread processes share cores without the OpenMP
    stalls the pinning exists to avoid. A no-op outside xdist."""
    cores = os.environ.get("MOBILENETV2_TEST_CORES")
    if cores and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {int(c) for c in cores.split(",")})
