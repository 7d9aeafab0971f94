"""LiteRT (.tflite) and ExecuTorch (.pte) exports, each run in its own runtime.

The references are things we did not write: PyTorch's logits, the LiteRT interpreter
(`ai-edge-litert`, its default XNNPACK delegate) and ExecuTorch's Python runtime, the
official TFLite MobileNetV2 (converted) on the real fixture photos, and the labels the
reference runtime gives those photos (shared/fixtures/tflite/README.md). Every export also
checks itself; these tests run the files through the runtimes' plain APIs instead of
reading that check's number back. ExecuTorch lowering takes 20-90 s on the shared machine,
so its tests are slow.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deploy_helpers import DIGITS_PRE, official_model, one_thread, random_model
from mobilenetv2.cli import main
from mobilenetv2.config import ModelConfig
from mobilenetv2.errors import UserError
from mobilenetv2.model import MobileNetV2
from mobilenetv2.model.fuse import fuse

litert = pytest.importorskip("ai_edge_litert.interpreter", reason="needs ai-edge-litert")
pytest.importorskip("tflite", reason="needs the tflite schema package")

PHOTO_LABELS = {"cat.bmp": "Egyptian cat", "grace_hopper.bmp": "military uniform",
                "parrot.jpg": "macaw", "bird.bmp": "chickadee"}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    yield from one_thread()


@pytest.fixture(scope="module")
def official(request):
    """The official model (converted from the fixture) and the fixture photos, preprocessed
    with its own preprocessing."""
    from conftest import FIXTURES

    if not (FIXTURES / "mobilenet_v2_1.0_224_quant.tflite").is_file():
        pytest.skip(f"real-model fixtures not found at {FIXTURES} (shared/fixtures/tflite)")
    from mobilenetv2.data.images import open_rgb
    from mobilenetv2.data.transforms import eval_transform

    model = official_model(FIXTURES).eval()
    tf = eval_transform(model.meta.preprocessing)
    x = torch.stack([tf(open_rgb(FIXTURES / p)) for p in PHOTO_LABELS]).numpy()
    return model, x


def _sample_photo_crops(model: MobileNetV2, n: int = 16) -> np.ndarray:
    """Calibration images that are not the test photos: crops of scikit-learn's two sample
    photos, preprocessed as the model expects."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    from mobilenetv2.data.transforms import eval_transform

    tf = eval_transform(model.meta.preprocessing)
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        img = load_sample_images().images[i % 2]
        h, w = img.shape[:2]
        s = int(rng.integers(160, min(h, w)))
        y, x = int(rng.integers(0, h - s)), int(rng.integers(0, w - s))
        out.append(tf(Image.fromarray(img[y:y + s, x:x + s])).numpy())
    return np.stack(out)


def _torch_logits(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model.eval()(torch.from_numpy(x)).float().numpy()


def _litert_logits(path, x: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """The interpreter's plain API (default delegates: XNNPACK), image by image, NHWC; int8
    input quantized and output dequantized with the file's own parameters. Also returns the
    operator names after delegation."""
    it = litert.Interpreter(model_path=str(path))
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    ys = []
    for img in x:
        a = img.transpose(1, 2, 0)[None]
        if inp["dtype"] == np.int8:
            scale, zp = inp["quantization"]
            a = np.clip(np.round(a / scale) + zp, -128, 127).astype(np.int8)
        it.set_tensor(inp["index"], a.astype(inp["dtype"]))
        it.invoke()
        y = it.get_tensor(out["index"])[0]
        if out["dtype"] == np.int8:
            scale, zp = out["quantization"]
            y = (y.astype(np.float32) - zp) * scale
        ys.append(y)
    ops = [d["op_name"] for d in it._get_ops_details()]
    return np.stack(ys), ops


def _executorch_logits(path, x: np.ndarray) -> np.ndarray:
    from executorch.runtime import Runtime

    method = Runtime.get().load_program(str(path)).load_method("forward")
    return np.concatenate([method.execute([torch.from_numpy(img[None].copy())])[0].numpy()
                           for img in x])


# ----------------------------------------------------------------------------- LiteRT
def test_tflite_fp32_on_photos_xnnpack_and_round_trip(official, tmp_path) -> None:
    from mobilenetv2.export.tflite import export_tflite
    from mobilenetv2.weights.convert.tflite import convert_tflite

    model, x = official
    path = export_tflite(model, tmp_path / "m.tflite").path
    got, ops = _litert_logits(path, x)
    ref = _torch_logits(model, x)
    diff = float(np.abs(got - ref).max())
    print(f"\ntflite fp32 vs PyTorch on the photos: max |diff| {diff:.2e}")
    assert diff <= 1e-4
    assert [model.meta.labels[i] for i in got.argmax(1)] == list(PHOTO_LABELS.values())
    # the default XNNPACK delegate took the graph (the node list then holds its DELEGATE
    # node beside the original operators, as for the official model)
    assert "DELEGATE" in ops, ops
    # round trip: our converter reads the file back to the very same float network
    back = convert_tflite(path)
    again = MobileNetV2(back.meta.config)
    again.load_state_dict(back.state_dict)
    a, b = fuse(model, channels_last=False), fuse(again.eval(), channels_last=False)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert np.array_equal(_torch_logits(a, x), _torch_logits(b, x))
    assert back.meta.labels == model.meta.labels
    assert back.meta.preprocessing == model.meta.preprocessing
    assert back.meta.config.padding == "tf_same"


def test_tflite_int8_top1_equals_float_on_photos(official, tmp_path) -> None:
    from mobilenetv2.export.tflite import export_tflite
    from mobilenetv2.runtime.phone import phone_metadata

    model, x = official
    calib = _sample_photo_crops(model)
    path = export_tflite(model, tmp_path / "m8.tflite", precision="int8",
                         calibration=calib).path
    got, ops = _litert_logits(path, x)
    ref = _torch_logits(model, x)
    print(f"\ntflite int8 top-1 {got.argmax(1)} vs float {ref.argmax(1)}")
    assert list(got.argmax(1)) == list(ref.argmax(1))
    assert "DELEGATE" in ops
    it = litert.Interpreter(model_path=str(path),
                            experimental_op_resolver_type=litert.OpResolverType
                            .BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    tensors = {d["name"]: d for d in it.get_tensor_details()}
    inp = it.get_input_details()[0]
    assert inp["dtype"] == np.int8 and it.get_output_details()[0]["dtype"] == np.int8
    # per-channel symmetric weights: one scale per output channel, zero points 0
    w = tensors["conv2d/weight"]["quantization_parameters"]
    assert len(w["scales"]) == model.stem.conv.out_channels and not w["zero_points"].any()
    _check_quantization_spec(path)
    doc = phone_metadata(path)
    assert doc["precision"] == "int8" and doc["labels"] == model.meta.labels
    assert doc["input"]["scale"] == pytest.approx(inp["quantization"][0])


def _check_quantization_spec(path) -> None:
    """The TFLite quantization spec's constraints, read back from the file with the reader
    the converter uses: weights symmetric (zero point 0, |q| <= 127), int32 biases at input
    scale x weight scale with zero point 0, RESHAPE / PAD keeping their input's parameters,
    every activation int8 with one scale."""
    from mobilenetv2.weights.convert.tflite.reader import read_tflite_graph

    g = read_tflite_graph(path)
    t = g.tensors
    for op in g.ops:
        x, y = t[op.inputs[0]], t[op.outputs[0]]
        assert x.dtype == y.dtype == "int8" and x.scale.size == y.scale.size == 1, op.kind
        if op.kind in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            w, b = t[op.inputs[1]], t[op.inputs[2]]
            assert w.dtype == "int8" and not w.zero_point.any() and np.abs(w.data).max() <= 127
            assert b.dtype == "int32" and not b.zero_point.any()
            np.testing.assert_allclose(b.scale, x.scale[0] * w.scale, rtol=1e-6)
        if op.kind in ("RESHAPE", "PAD"):
            assert (x.scale[0], x.zero_point[0]) == (y.scale[0], y.zero_point[0]), op.kind


@pytest.mark.parametrize("padding,output_stride,small", [
    ("tf_same", 16, False), ("symmetric", 32, False), ("symmetric", 32, True)])
def test_tflite_paddings_and_output_stride(tmp_path, padding, output_stride, small) -> None:
    from mobilenetv2.benchmark import random_model as make
    from mobilenetv2.export.tflite import export_tflite
    from mobilenetv2.weights.convert.tflite import convert_tflite

    # 67: the odd first side pads alike in both styles, the later even ones tell them apart
    size = 32 if small else 67
    cfg = ModelConfig(width=0.35, num_classes=5, resolution=size, padding=padding,
                      output_stride=output_stride, small_input=small)
    model = make(cfg, labels=list("abcde"))
    x = torch.randn(2, 3, size, size).numpy()
    path = export_tflite(model, tmp_path / "m.tflite").path
    got, _ = _litert_logits(path, x)
    assert np.abs(got - _torch_logits(model, x)).max() <= 1e-4
    back = convert_tflite(path)
    assert back.meta.config.padding == padding
    assert back.meta.config.output_stride == output_stride
    assert back.meta.config.small_input == small
    again = MobileNetV2(back.meta.config)
    again.load_state_dict(back.state_dict)
    assert np.abs(_torch_logits(again, x) - _torch_logits(model, x)).max() <= 1e-5


def test_export_cli_and_session(tmp_path, capsys) -> None:
    from mobilenetv2.runtime.session import InferenceSession
    from mobilenetv2.weights.format import save

    model = random_model(width=0.35, size=64)
    weights = save(model, tmp_path / "w.safetensors")
    out = tmp_path / "w.tflite"
    assert main(["export", "--weights", str(weights), "--format", "tflite", "-o",
                 str(out)]) == 0
    assert "max |diff| vs PyTorch" in capsys.readouterr().out
    x = torch.randn(2, 3, 64, 64).numpy()
    with InferenceSession(out) as s:  # auto runs a .tflite in LiteRT
        assert s.backend == "litert" and s.labels == model.meta.labels
        assert np.abs(s(x) - _torch_logits(model, x)).max() <= 1e-4
    from PIL import Image

    img = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 90, 3), np.uint8)).save(img)
    assert main(["predict", "--weights", str(out), "--json", "--topk", "1", str(img)]) == 0
    printed = capsys.readouterr().out
    with torch.inference_mode():  # PyTorch on the same preprocessed image
        from mobilenetv2.data.images import open_image
        from mobilenetv2.data.transforms import eval_transform

        t = open_image(img, eval_transform(model.meta.preprocessing))[None]
        assert model.meta.labels[int(model(t).argmax())] in printed
    assert main(["export", "--weights", str(weights), "--format", "tflite", "--precision",
                 "int8", "-o", str(tmp_path / "q.tflite")]) == 2
    assert "--calib" in capsys.readouterr().err
    assert main(["export", "--weights", str(weights), "--format", "tflite", "-o",
                 str(tmp_path / "w.pte")]) == 2
    assert ".tflite" in capsys.readouterr().err
    with pytest.raises(UserError, match="litert runs .tflite"):
        InferenceSession(tmp_path / "w.safetensors", backend="litert")


# ------------------------------------------------------------------------ ExecuTorch
@pytest.mark.slow
def test_executorch_on_photos_fp32_and_int8(official, tmp_path) -> None:
    pytest.importorskip("executorch", reason="needs executorch (the mobile extra)")
    from mobilenetv2.export.executorch import export_executorch
    from mobilenetv2.runtime.phone import phone_metadata

    model, x = official
    ref = _torch_logits(model, x)
    path = export_executorch(model, tmp_path / "m.pte").path
    got = _executorch_logits(path, x)
    diff = float(np.abs(got - ref).max())
    print(f"\nexecutorch fp32 vs PyTorch on the photos: max |diff| {diff:.2e}")
    assert diff <= 1e-4
    assert phone_metadata(path)["labels"] == model.meta.labels
    path8 = export_executorch(model, tmp_path / "m8.pte", precision="int8",
                              calibration=_sample_photo_crops(model)).path
    got8 = _executorch_logits(path8, x)
    print(f"executorch int8 top-1 {got8.argmax(1)} vs float {ref.argmax(1)}")
    assert list(got8.argmax(1)) == list(ref.argmax(1))


@pytest.mark.slow
def test_executorch_tf_same_output_stride_16(tmp_path) -> None:
    pytest.importorskip("executorch", reason="needs executorch (the mobile extra)")
    from mobilenetv2.benchmark import random_model as make
    from mobilenetv2.export.executorch import export_executorch

    cfg = ModelConfig(width=0.35, num_classes=5, resolution=67, padding="tf_same",
                      output_stride=16)
    model = make(cfg, labels=list("abcde"))
    x = torch.randn(2, 3, 67, 67).numpy()
    path = export_executorch(model, tmp_path / "m.pte").path
    assert np.abs(_executorch_logits(path, x) - _torch_logits(model, x)).max() <= 1e-4


def _digits(digits_weights):
    from mobilenetv2.quant.ptq import calibration_arrays, labelled_arrays
    from mobilenetv2.weights import load_weights

    model = load_weights(str(digits_weights)).eval()
    calib = calibration_arrays("digits", DIGITS_PRE, limit=256)
    x, y = labelled_arrays("digits", DIGITS_PRE, split="test")
    fp = float((_torch_logits(model, x).argmax(1) == y).mean() * 100)
    assert fp >= 90  # a real classifier, else the comparison says nothing
    return model, calib, x, y, fp


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["tflite", "executorch"])
def test_int8_digits_accuracy_within_one_point(digits_weights, tmp_path, fmt) -> None:
    """int8 of a real trained classifier, calibrated on the digits train split, measured on
    its test split in the format's runtime against the float model's accuracy."""
    model, calib, x, y, fp = _digits(digits_weights)
    if fmt == "tflite":
        from mobilenetv2.export.tflite import export_tflite

        path = export_tflite(model, tmp_path / "d.tflite", precision="int8",
                             calibration=calib).path
        q = float((_litert_logits(path, x)[0].argmax(1) == y).mean() * 100)
    else:
        pytest.importorskip("executorch", reason="needs executorch (the mobile extra)")
        from mobilenetv2.export.executorch import export_executorch

        path = export_executorch(model, tmp_path / "d.pte", precision="int8",
                                 calibration=calib).path
        q = float((_executorch_logits(path, x).argmax(1) == y).mean() * 100)
    print(f"\ndigits test top-1: float {fp:.2f}%, {fmt} int8 {q:.2f}% ({len(y)} images)")
    assert abs(q - fp) <= 1.0


def test_open_session_exports_weights_for_litert(tmp_path) -> None:
    """`--backend litert` on float weights: `deploy.open_session` exports the .tflite (fp32,
    and int8 from calibration images) into a folder the session removes on close."""
    from mobilenetv2.deploy import open_session

    model = random_model(width=0.35, size=64)
    x = torch.randn(3, 3, 64, 64).numpy()
    with open_session(model, backend="litert") as s:
        assert s.backend == "litert" and s.phone_path.suffix == ".tflite"
        assert np.abs(s(x) - _torch_logits(model, x)).max() <= 1e-4
        folder = s.phone_path.parent
    assert not folder.exists()
    with open_session(model, backend="litert", precision="int8", calib=x) as s:
        it = litert.Interpreter(model_path=str(s.phone_path))
        assert s.precision == "int8" and it.get_input_details()[0]["dtype"] == np.int8
        assert np.isfinite(s(x)).all()
    with pytest.raises(UserError, match="int8 needs"):
        open_session(model, backend="litert", precision="int8")
