"""Shared test helpers: the real fixtures beside the project, seeded randomness."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# Test support code (tests/support/) is imported as `support.*` under any --import-mode.
sys.path.insert(0, str(ROOT / "tests"))
# Official TFLite models and real photos (see ../shared/fixtures/tflite/README.md); never
# copied into the project. Tests that need them skip with a reason where they are absent.
FIXTURES = ROOT.parent / "shared" / "fixtures" / "tflite"


@pytest.fixture
def fixtures_dir() -> Path:
    if not (FIXTURES / "mobilenet_v2_1.0_224_quant.tflite").is_file():
        pytest.skip(f"real-model fixtures not found at {FIXTURES} (shared/fixtures/tflite)")
    return FIXTURES


@pytest.fixture(scope="session")
def _cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mobilenetv2-cache")


@pytest.fixture(autouse=True)
def _private_cache(_cache_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Downloads, cached ONNX exports and race results go to a folder of this test session,
    never the user's ~/.cache (subprocesses inherit the variable)."""
    monkeypatch.setenv("MOBILENETV2_CACHE", str(_cache_root))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def digits_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real digits classifier, trained once per session (tests/deploy_helpers.py).

    Under pytest-xdist every worker has its own session: the first one to need the model
    trains it (about 90 s) into the run's folder shared by the workers, the others wait
    for it and load it."""
    from filelock import FileLock  # a dependency of torch

    from deploy_helpers import train_digits_model

    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return train_digits_model(tmp_path_factory.mktemp("digits") / "digits.safetensors")
    shared = tmp_path_factory.getbasetemp().parent  # this run's, not an earlier run's
    path = shared / "digits" / "digits.safetensors"
    with FileLock(str(shared / "digits.lock")):
        if not path.is_file():
            path.parent.mkdir(exist_ok=True)
            train_digits_model(path)
    return path


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (`-n auto`, the README's test command) each worker is pinned to a
    core of its own and runs one torch thread: two workers each with a full OpenMP team on a
    2-core machine wait for descheduled threads at every layer (a segmentation training test
    took 199 s instead of 50). Code that sizes itself from the cores it may use (the
    training's thread budget, `train.budget.available_cores`) then sees one core, in this
    process and in the processes it starts."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not worker.startswith("gw") or not hasattr(os, "sched_setaffinity"):
        return
    cores = sorted(os.sched_getaffinity(0))
    # what a test that starts several single-threaded processes gives them back
    # (support.procs.all_cores)
    os.environ["MOBILENETV2_TEST_CORES"] = ",".join(map(str, cores))
    os.sched_setaffinity(0, {cores[int(worker[2:]) % len(cores)]})
    torch.set_num_threads(1)
