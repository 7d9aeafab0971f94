"""Shared test helpers: the real fixtures beside the project, seeded randomness."""

from __future__ import annotations

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
    """A small real digits classifier, trained once per session (tests/deploy_helpers.py)."""
    from deploy_helpers import train_digits_model

    return train_digits_model(tmp_path_factory.mktemp("digits") / "digits.safetensors")
