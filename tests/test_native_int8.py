"""The native int8 engine (issue 13, `runtime.native.int8`): ONNX Runtime's logits on our own
QDQ int8 export at several widths, sizes, both paddings, batch 1 and 4, 1 and 2 threads; the
same top-1 as ONNX Runtime on the real photos; the `native` backend in int8; one-line
refusals.

Each test runs every int8 ISA this CPU has (`int8_isas()`): on an AVX2-only CPU that is the
VPMADDUBSW kernels, where VNNI exists the VPDPBUSD ones too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from deploy_helpers import official_model, random_model
from mobilenetv2.errors import UserError
from mobilenetv2.runtime import native
from mobilenetv2.runtime.native.int8 import NativeInt8Engine, int8_isas

onnx = pytest.importorskip("onnx", reason="onnx is not installed")
pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
pytestmark = pytest.mark.skipif(not int8_isas(), reason=native.UNAVAILABLE
                                or "the native int8 engine needs AVX2")
ISAS = int8_isas()
PHOTOS = ("bird.bmp", "cat.bmp", "grace_hopper.bmp", "parrot.jpg")


def _quantized(folder: Path, width: float, size: int, padding: str, classes: int = 10,
               reduce_range: bool = True) -> Path:
    from mobilenetv2.export.onnx import export_onnx
    from mobilenetv2.quant.ptq import quantize_onnx

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = random_model(width, size, padding, classes)
        fp = export_onnx(model, folder / "m.fp32.onnx", input_size=size).path
        calib = np.random.default_rng(1).standard_normal((8, 3, size, size), np.float32)
        return quantize_onnx(fp, folder / f"m{int(reduce_range)}.int8.onnx", calib,
                             reduce_range=reduce_range)
    finally:
        torch.set_num_threads(threads)


# (width, size, padding, classes): an odd size and tf_same's asymmetric pads among them, and
# 37 classes, which 2 and 3 threads split into shares of the classifier (16 at a time)
CASES = [(0.35, 64, "symmetric", 10), (0.5, 57, "tf_same", 37), (0.35, 33, "symmetric", 10)]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    out = {}
    for case in CASES:
        folder = tmp_path_factory.mktemp("int8")
        out[case] = _quantized(folder, *case)
    return out


def _ort(path: Path, x: np.ndarray) -> np.ndarray:
    from mobilenetv2.runtime.backends import onnxruntime_session

    sess = onnxruntime_session(path, 1)
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _logits_scale(path: Path) -> float:
    inits = {i.name: i for i in onnx.load(str(path)).graph.initializer}
    return float(onnx.numpy_helper.to_array(inits["logits_scale"]))


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("isa", ISAS)
def test_logits_match_onnxruntime(models, case, batch, threads, isa) -> None:
    path = models[case]
    size = case[1]
    x = np.random.default_rng(batch * 10 + threads).standard_normal(
        (batch, 3, size, size), np.float32)
    want = _ort(path, x)
    got = NativeInt8Engine(path, threads=threads, isa=isa)(x)
    step = _logits_scale(path)
    # the same integer arithmetic and requantization as ONNX Runtime (every layer, see
    # test_every_layer_equals_onnxruntime); one output step of slack for the classifier, which
    # ONNX Runtime may run in float
    assert np.abs(got - want).max() <= step + 1e-6, np.abs(got - want).max() / step
    assert np.abs(want).max() > 10 * step  # the logits are not all one value
    assert (got.argmax(1) == want.argmax(1)).all()


@pytest.mark.parametrize("case", CASES[:2])
def test_every_layer_equals_onnxruntime(models, case) -> None:
    """Each uint8 activation equals the one ONNX Runtime computes for the same QuantizeLinear
    output (all graph optimizations, so its fused QLinearConv / QLinearAdd kernels)."""
    from mobilenetv2.runtime.backends import onnxruntime_session
    from mobilenetv2.runtime.native.int8 import int8_tensor_names

    path, size = models[case], case[1]
    names = int8_tensor_names(path)
    proto = onnx.load(str(path))
    for name in names:  # expose every quantized activation as an output
        proto.graph.output.append(onnx.helper.make_tensor_value_info(
            name, onnx.TensorProto.UINT8, None))
    expose = path.with_name("all_outputs.onnx")
    onnx.save(proto, str(expose))
    sess = onnxruntime_session(expose, 1)
    x = np.random.default_rng(5).standard_normal((1, 3, size, size), np.float32)
    theirs = sess.run(names, {sess.get_inputs()[0].name: x})
    engine = NativeInt8Engine(path, threads=1, keep=True)
    engine(x)
    for i, (name, ref) in enumerate(zip(names[:-1], theirs[:-1])):  # [-1]: the logits
        ours = engine.tensor(i)
        ref = ref[0] if i == 0 else np.moveaxis(ref[0], 0, -1) if ref.ndim == 4 else ref[0]
        ours = ours if i == 0 else ours[..., :ref.shape[-1]].reshape(ref.shape)
        np.testing.assert_array_equal(ours, ref, err_msg=name)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_fused_blocks_equal_layer_by_layer(models, case, threads) -> None:
    """Every inverted residual fused row by row (fuse_rows=1: the expanded tensors never
    whole, each thread a share of the rows) gives the logits of every layer run whole
    (keep=True, which test_every_layer_equals_onnxruntime checks layer by layer) bit for bit,
    at batch 1 and 3, in less working memory."""
    path, size = models[case], case[1]
    x = np.random.default_rng(threads).standard_normal((3, 3, size, size), np.float32)
    whole = NativeInt8Engine(path, threads=1, keep=True)
    fused = NativeInt8Engine(path, threads=threads, fuse_rows=1)
    unfused = NativeInt8Engine(path, threads=threads, fuse_rows=10**6)
    for batch in (1, 3):
        want = whole(x[:batch])
        np.testing.assert_array_equal(fused(x[:batch]), want)
        # MobileNetV2's 17 inverted residuals (Table 2: 1 + 2 + 3 + 4 + 3 + 3 + 1), none dilated
        assert fused.fused_blocks == 17
        np.testing.assert_array_equal(unfused(x[:batch]), want)
        assert unfused.fused_blocks == 0
        assert fused.memory_bytes < unfused.memory_bytes


def test_fuse_rows_is_checked(models) -> None:
    with pytest.raises(UserError, match="fuse_rows must be an integer >= 1, got 0"):
        NativeInt8Engine(models[CASES[0]], fuse_rows=0)


def test_memory_is_reported_per_lane(models) -> None:
    path = models[CASES[0]]
    engine = NativeInt8Engine(path, threads=2)
    x = np.random.default_rng(0).standard_normal((4, 3, 64, 64), np.float32)
    engine(x[:1])
    one = engine.memory_bytes
    # batch 1 holds a few activation slots, each at most the largest uint8 tensor
    # (32x32 x 16-padded channels for width 0.35 at 64x64), not every layer's output
    assert 0 < one < 6 * 32 * 32 * 48
    engine(x)  # 4 images on 2 threads: one lane of slots per thread
    assert engine.memory_bytes > one


def test_backend_native_int8(models, monkeypatch) -> None:
    from mobilenetv2.runtime.native import int8 as int8_mod
    from mobilenetv2.runtime.session import InferenceSession

    path = models[CASES[0]]
    x = np.random.default_rng(3).standard_normal((2, 3, 64, 64), np.float32)
    s = InferenceSession(path, backend="native", precision="int8", threads=1)
    assert s.backend == "native" and s.precision == "int8"
    np.testing.assert_array_equal(s(x), NativeInt8Engine(path, threads=1)(x))
    auto = InferenceSession(path, backend="auto", precision="int8", threads=1)
    assert "native" in (auto.backend, *auto._alternates)
    # a file the engine cannot run: auto goes on without it, asked for it says why
    monkeypatch.setattr(int8_mod, "int8_ops",
                        lambda p: (_ for _ in ()).throw(UserError("not ours")))
    auto = InferenceSession(path, backend="auto", precision="int8", threads=1)
    assert "native" not in (auto.backend, *auto._alternates)
    assert auto(x).shape == (2, 10)
    with pytest.raises(UserError, match="not ours"):
        InferenceSession(path, backend="native", precision="int8", threads=1)


def test_one_line_refusals(models, tmp_path) -> None:
    path = models[CASES[0]]
    engine = NativeInt8Engine(path, threads=1)
    with pytest.raises(UserError, match="float32"):
        engine(np.zeros((1, 3, 64, 64), np.float64))
    with pytest.raises(UserError, match=r"\(N, 3, H, W\)"):
        engine(np.zeros((1, 1, 64, 64), np.float32))
    with pytest.raises(UserError, match="exported for 64x64"):
        engine(np.zeros((1, 3, 48, 48), np.float32))
    with pytest.raises(UserError, match="numpy"):
        engine([1, 2, 3])
    with pytest.raises(UserError, match="threads"):
        NativeInt8Engine(path, threads=0)
    with pytest.raises(UserError, match="cannot run the native int8 engine's nope"):
        NativeInt8Engine(path, isa="nope")
    # a float model has no QuantizeLinear after its convolutions
    with pytest.raises(UserError, match="native int8 engine cannot run"):
        NativeInt8Engine(path.with_name("m.fp32.onnx"))
    with pytest.raises(UserError, match="not a readable ONNX"):
        (tmp_path / "bad.onnx").write_text("nope")
        NativeInt8Engine(tmp_path / "bad.onnx")


def test_full_range_weights_refused_without_vnni(tmp_path) -> None:
    # 8-bit weights saturate VPMADDUBSW's 16-bit pair sums: the AVX2 kernels refuse them
    path = _quantized(tmp_path, 0.35, 32, "symmetric", reduce_range=False)
    with pytest.raises(UserError, match="7-bit weights"):
        NativeInt8Engine(path, isa="avx2")
    for isa in ISAS:
        if isa != "avx2":  # VPDPBUSD does not saturate: exact with 8-bit weights too
            x = np.random.default_rng(0).standard_normal((1, 3, 32, 32), np.float32)
            got, want = NativeInt8Engine(path, isa=isa)(x), _ort(path, x)
            assert np.abs(got - want).max() <= 3 * _logits_scale(path) + 1e-6


@pytest.mark.slow
def test_photos_top1_equals_onnxruntime_int8(fixtures_dir, tmp_path) -> None:
    """The official MobileNetV2 (converted from the TFLite fixture), quantized by our PTQ on
    the photos themselves: the native engine's top-1 is ONNX Runtime's on every photo."""
    from mobilenetv2.data.images import open_image
    from mobilenetv2.data.transforms import eval_transform
    from mobilenetv2.export.onnx import export_onnx
    from mobilenetv2.quant.ptq import quantize_onnx

    model = official_model(fixtures_dir)
    transform = eval_transform(model.meta.preprocessing)
    x = np.stack([open_image(fixtures_dir / p, transform).numpy() for p in PHOTOS])
    x = x.astype(np.float32)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fp = export_onnx(model, tmp_path / "m.fp32.onnx", input_size=x.shape[2]).path
        path = quantize_onnx(fp, tmp_path / "m.int8.onnx", x)
    finally:
        torch.set_num_threads(threads)
    want = _ort(path, x)
    for isa in ISAS:
        got = NativeInt8Engine(path, threads=2, isa=isa)(x)
        assert (got.argmax(1) == want.argmax(1)).all(), (got.argmax(1), want.argmax(1))
        assert np.abs(got - want).max() <= 3 * _logits_scale(path) + 1e-6


def test_cli_predict_on_native_int8(models, tmp_path, capsys) -> None:
    """`mobilenetv2 predict --backend native --precision int8` on our int8 file."""
    from PIL import Image

    from mobilenetv2.cli import main

    Image.fromarray(np.full((70, 80, 3), 90, np.uint8)).save(tmp_path / "x.png")
    path = models[CASES[0]]
    assert main(["predict", str(tmp_path / "x.png"), "--weights", str(path), "--backend",
                 "native", "--precision", "int8", "--threads", "1", "--topk", "1"]) == 0
    captured = capsys.readouterr()
    assert "x.png" in captured.out
    assert "running on native int8" in captured.err
