"""InferenceSession: backend selection, precision honesty, missing backends."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from deploy_helpers import one_thread, random_model
from mobilenetv2.errors import UserError
from mobilenetv2.export import export_onnx
from mobilenetv2.runtime.session import (
    AUTO_ORDER,
    InferenceSession,
    backend_installed,
    cpu_has_bf16,
)

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    yield from one_thread()


@pytest.fixture(scope="module")
def model():
    return random_model()


@pytest.fixture(scope="module")
def batch():
    return torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(1)).numpy()


@pytest.mark.parametrize("backend", ["torch", "onnxruntime", "openvino"])
def test_fp32_backends_agree_with_pytorch(model, batch, backend) -> None:
    if not backend_installed(backend):
        pytest.skip(f"{backend} is not installed")
    with torch.no_grad():
        ref = model(torch.from_numpy(batch)).numpy()
    with InferenceSession(model, backend=backend, threads=1) as sess:
        assert sess.backend == backend and sess.precision == "fp32"
        got = sess(batch)
    assert got.dtype == np.float32 and got.shape == (2, 10)
    assert np.abs(got - ref).max() <= 1e-4


def test_auto_picks_the_fastest_installed(model, monkeypatch) -> None:
    sess = InferenceSession(model)
    assert sess.backend == next(b for b in AUTO_ORDER["fp32"] if backend_installed(b))
    # onnxruntime absent: auto falls through to the next backend, no error
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert not backend_installed("onnxruntime")
    sess = InferenceSession(model)
    assert sess.backend in ("openvino", "torch") and sess.precision == "fp32"


def test_missing_backend_is_one_clear_error(model, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(UserError, match=r"backend openvino is not installed \(pip install "
                                        r"openvino\)"):
        InferenceSession(model, backend="openvino")


def test_cli_reports_missing_backend_in_one_line(tmp_path, monkeypatch, capsys) -> None:
    from mobilenetv2.cli import main
    from mobilenetv2.weights.format import save

    weights = save(random_model(), tmp_path / "w.safetensors")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    monkeypatch.setitem(sys.modules, "openvino", None)
    code = main(["export", "--weights", str(weights), "-o", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err
    assert code == 2 and "onnxruntime" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_precision_is_what_it_says(model, batch, tmp_path) -> None:
    with pytest.raises(UserError, match="cannot run bf16"):
        InferenceSession(model, backend="onnxruntime", precision="bf16")
    with pytest.raises(UserError, match="cannot run int8"):
        InferenceSession(model, backend="torch", precision="int8")
    with pytest.raises(UserError, match="int8 needs a quantized model"):
        InferenceSession(model, backend="onnxruntime", precision="int8")
    with pytest.raises(ValueError, match="precision must be one of"):
        InferenceSession(model, precision="fp16")
    # an int8 file is int8, whatever the default says
    from mobilenetv2.quant.ptq import quantize_onnx

    fp32 = export_onnx(model, tmp_path / "m.onnx").path
    int8 = quantize_onnx(fp32, tmp_path / "m.int8.onnx", batch)
    sess = InferenceSession(int8, backend="onnxruntime")
    assert sess.precision == "int8" and "int8" in sess.describe()
    assert sess.labels[1] == "class 1"
    with pytest.raises(UserError, match="int8 model"):
        InferenceSession(int8, precision="bf16")


def test_openvino_fp32_is_really_fp32(model, batch) -> None:
    if not backend_installed("openvino"):
        pytest.skip("openvino is not installed")
    with torch.no_grad():
        ref = model(torch.from_numpy(batch)).numpy()
    fp32 = InferenceSession(model, backend="openvino", precision="fp32", threads=1)(batch)
    # bf16 keeps 8 mantissa bits: an "fp32" run silently in bf16 would miss this bound
    assert np.abs(fp32 - ref).max() <= 1e-4
    if cpu_has_bf16():
        bf16 = InferenceSession(model, backend="openvino", precision="bf16", threads=1)(batch)
        assert np.abs(bf16 - ref).max() > 1e-4
        assert (bf16.argmax(1) == ref.argmax(1)).mean() >= 0.5


def test_torch_bf16(model, batch) -> None:
    sess = InferenceSession(model, backend="torch", precision="bf16", threads=1)
    assert sess.precision == "bf16"
    out = sess(torch.from_numpy(batch))
    with torch.no_grad():
        ref = model(torch.from_numpy(batch)).numpy()
    assert out.dtype == np.float32 and np.abs(out - ref).max() < 0.5 * np.abs(ref).max()


def test_cli_backend_options_give_a_runner(model, batch) -> None:
    import argparse

    from mobilenetv2.cli.backend import add_backend_options, session_from_args, session_runner

    p = argparse.ArgumentParser()
    add_backend_options(p)
    args = p.parse_args(["--backend", "torch", "--threads", "1"])
    run = session_runner(session_from_args(model, args))
    x = torch.from_numpy(batch)
    with torch.no_grad():
        torch.testing.assert_close(run(model, x), model(x), atol=1e-4, rtol=0)


def test_auto_times_batched_shapes_once(model) -> None:
    sess = InferenceSession(model, threads=1)
    if not sess._alternates:
        pytest.skip("only one backend installed for fp32")
    x = torch.randn(8, 3, 96, 96, generator=torch.Generator().manual_seed(2)).numpy()
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert np.abs(sess(x) - ref).max() <= 1e-4
    assert sess.chosen[x.shape] in (sess.backend, *sess._alternates)
    assert sess.precision == "fp32"
    one = x[:1]
    assert np.abs(sess(one) - ref[:1]).max() <= 1e-4
    assert one.shape in sess.chosen  # batch 1 is tuned too


def test_int8_from_float_weights_with_calibration() -> None:
    from deploy_helpers import digits_model
    from mobilenetv2.quant.ptq import labelled_arrays

    real = digits_model()
    x, y = labelled_arrays("digits", real.meta.preprocessing, limit=64)
    sess = InferenceSession(real, precision="int8", calib="digits", threads=1)
    assert sess.precision == "int8" and sess.backend in ("openvino", "onnxruntime")
    with torch.no_grad():
        ref = real(torch.from_numpy(x)).argmax(1).numpy()
    got = sess(x).argmax(1)  # batch 64: also times the alternate backend
    assert (got == ref).mean() >= 0.9
