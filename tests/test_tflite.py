"""TFLite converter against the reference runtime (ai-edge-litert) on the official model and
real photos (../shared/fixtures/tflite/), plus synthesized models of other widths and
quantization schemes. Run with `-s` to see the measured differences."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mobilenetv2.errors import UserError
from mobilenetv2.model import MobileNetV2
from mobilenetv2.weights.convert.tflite import BN_EPS, convert_tflite
from support.tflite_writer import (
    float_from_quant,
    int8_from_quant,
    pack,
    quantize_float_tflite,
    schema,
    tflite_from_torch,
)

PHOTOS = ("cat.bmp", "grace_hopper.bmp", "parrot.jpg", "bird.bmp")
QUANT_MODEL = "mobilenet_v2_1.0_224_quant.tflite"


def _interpreter(path: Path):
    litert = pytest.importorskip("ai_edge_litert.interpreter", reason="needs ai-edge-litert")
    it = litert.Interpreter(model_path=str(path))
    it.allocate_tensors()
    return it


def _run_interpreter(it, pixels: np.ndarray, pre) -> np.ndarray:
    """Dequantized output (probabilities: the last output) for one HxWx3 uint8 image."""
    inp, out = it.get_input_details()[0], it.get_output_details()[-1]
    scale, zp = inp["quantization"]
    if inp["dtype"] == np.uint8:
        x = pixels[None]
    elif inp["dtype"] == np.int8:
        x = (pixels.astype(np.int16) - 128).astype(np.int8)[None]
    else:  # float input: the converted metadata's normalization, the same as ours gets
        mean, std = np.float32(pre.mean[0]), np.float32(pre.std[0])
        x = ((pixels.astype(np.float32) / np.float32(255.0) - mean) / std)[None]
    it.set_tensor(inp["index"], x)
    it.invoke()
    y = it.get_tensor(out["index"])[0]
    oscale, ozp = out["quantization"]
    if out["dtype"] in (np.uint8, np.int8):
        return (y.astype(np.float32) - ozp) * oscale
    return y.astype(np.float32)


def _photo(fixtures: Path, name: str, size: int) -> np.ndarray:
    """The uint8 pixels both runtimes get: resized once with PIL, bilinear, RGB."""
    from PIL import Image

    with Image.open(fixtures / name) as im:
        return np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR)).copy()


def _ours(converted) -> MobileNetV2:
    model = MobileNetV2(converted.meta.config)
    model.load_state_dict(converted.state_dict)
    return model.eval()


def _our_probs(model: MobileNetV2, pre, pixels: np.ndarray) -> np.ndarray:
    """Our model on the same pixels, normalized with the converted metadata's mean/std."""
    x = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255.0
    mean = torch.tensor(pre.mean).view(1, 3, 1, 1)
    std = torch.tensor(pre.std).view(1, 3, 1, 1)
    with torch.no_grad():
        return model((x - mean) / std).softmax(-1)[0].numpy()


def _compare_on_photos(path: Path, fixtures: Path, converted=None) -> list[dict]:
    converted = converted or convert_tflite(path)
    model, pre = _ours(converted), converted.meta.preprocessing
    it = _interpreter(path)
    rows = []
    for name in PHOTOS:
        pixels = _photo(fixtures, name, pre.crop)
        ref = _run_interpreter(it, pixels, pre)
        ours = _our_probs(model, pre, pixels)
        top5 = list(np.argsort(-ours)[:5])
        rows.append(
            {
                "photo": name,
                "ref_top1": int(ref.argmax()),
                "our_top1": int(ours.argmax()),
                "ref_p": float(ref.max()),
                "our_p": float(ours[ours.argmax()]),
                "confident_missing": [int(c) for c in np.flatnonzero(ref >= 0.05)
                                      if c not in top5],
                "max_abs_prob_diff": float(np.abs(ours - ref).max()),
            }
        )
    print(f"\n{path.name}:")
    labels = converted.meta.labels
    for r in rows:
        print(
            f"  {r['photo']:<17} top-1 {labels[r['ref_top1']]!r:<20} interpreter p="
            f"{r['ref_p']:.4f} ours p={r['our_p']:.4f} |dp|={abs(r['ref_p'] - r['our_p']):.4f} "
            f"max|dp| over classes={r['max_abs_prob_diff']:.4f}"
        )
    return rows


def _assert_photo_criteria(rows: list[dict]) -> None:
    for r in rows:
        assert r["our_top1"] == r["ref_top1"], r
        assert abs(r["our_p"] - r["ref_p"]) <= 0.1, r
        assert not r["confident_missing"], r


def test_official_quant_model_matches_interpreter_on_photos(fixtures_dir: Path) -> None:
    rows = _compare_on_photos(fixtures_dir / QUANT_MODEL, fixtures_dir)
    _assert_photo_criteria(rows)
    # The README's labels, by name (our default labels: background + torchvision's names).
    converted = convert_tflite(fixtures_dir / QUANT_MODEL)
    got = [converted.meta.labels[r["our_top1"]] for r in rows]
    assert got == ["Egyptian cat", "military uniform", "macaw", "chickadee"]


def test_official_quant_model_metadata(fixtures_dir: Path) -> None:
    converted = convert_tflite(fixtures_dir / QUANT_MODEL)
    cfg = converted.meta.config
    assert (cfg.width, cfg.resolution, cfg.num_classes) == (1.0, 224, 1001)
    assert cfg.padding == "tf_same" and cfg.bn_eps == BN_EPS
    pre = converted.meta.preprocessing
    assert (pre.resize, pre.crop, pre.resize_mode) == (224, 224, "exact")
    # (pixel - 128) / 128 exactly, written as mean/std on [0, 1] pixels.
    pixels = torch.arange(256.0)
    ours = (pixels / 255.0 - pre.mean[0]) / pre.std[0]
    torch.testing.assert_close(ours, (pixels - 128) / 128, rtol=0, atol=1e-6)
    # Every BN is an exact identity carrying the folded bias.
    for key, value in converted.state_dict.items():
        if key.endswith("bn.running_var"):
            assert torch.all(value + BN_EPS == 1.0), key
    # Default labels agree with the hosted model's labels file (first synonym; torchvision
    # disambiguates two names).
    file_labels = (fixtures_dir / "imagenet_labels.txt").read_text().splitlines()
    ours = converted.meta.labels
    assert len(ours) == len(file_labels) == 1001 and ours[0] == file_labels[0]
    differ = [i for i, (a, b) in enumerate(zip(ours, file_labels))
              if a != b and b.split(", ")[0] != a]
    assert differ == [135, 640]  # "crane bird", "maillot tank suit"
    converted = convert_tflite(fixtures_dir / QUANT_MODEL, labels=file_labels)
    assert converted.meta.labels == file_labels


def test_wrong_label_count_is_refused(fixtures_dir: Path) -> None:
    with pytest.raises(UserError, match="1000 labels given .* 1001 classes"):
        convert_tflite(fixtures_dir / QUANT_MODEL, labels=["x"] * 1000)


def test_deeplab_model_converts_as_a_segmenter(fixtures_dir: Path) -> None:
    # Issue 9: no longer refused; its parity is in tests/test_segment_convert.py.
    conv = convert_tflite(fixtures_dir / "deeplabv3_mnv2_pascal_quant.tflite")
    assert conv.meta.config.task == "segment"


def test_not_a_tflite_file(tmp_path: Path) -> None:
    bad = tmp_path / "model.tflite"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(UserError, match="not a TensorFlow Lite model"):
        convert_tflite(bad)
    with pytest.raises(UserError, match="no such file"):
        convert_tflite(tmp_path / "missing.tflite")


def test_truncated_tflite_file(tmp_path: Path, fixtures_dir: Path) -> None:
    data = (fixtures_dir / QUANT_MODEL).read_bytes()
    cut = tmp_path / "cut.tflite"
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(UserError):
        convert_tflite(cut)


# Synthesized official-like models (tests/support/tflite_writer.py): the fixture rewritten as
# float and as int8 per-channel, and float/uint8/int8 models of other widths built from ours.


def test_fixture_rewritten_as_float_matches_interpreter(fixtures_dir: Path,
                                                        tmp_path: Path) -> None:
    path = tmp_path / "mobilenet_v2_1.0_224_float.tflite"
    path.write_bytes(float_from_quant(fixtures_dir / QUANT_MODEL))
    converted = convert_tflite(path)
    assert converted.meta.extra["tflite"]["weights"] == "float32"
    assert converted.meta.preprocessing.mean == (0.5,) * 3  # float input: [-1, 1]
    # The same weights as the quantized original, exactly.
    original = convert_tflite(fixtures_dir / QUANT_MODEL)
    for k, v in original.state_dict.items():
        torch.testing.assert_close(converted.state_dict[k], v, rtol=1e-6, atol=1e-6)
    model = _ours(converted)
    it = _interpreter(path)
    inp = it.get_input_details()[0]
    logits_index = it.get_output_details()[0]["index"]
    worst = 0.0
    for name in PHOTOS:
        pixels = _photo(fixtures_dir, name, 224)
        x = (pixels.astype(np.float32) - 128.0) / 128.0
        it.set_tensor(inp["index"], x[None])
        it.invoke()
        ref = it.get_tensor(logits_index)[0]
        with torch.no_grad():
            ours = model(torch.from_numpy(x).permute(2, 0, 1)[None])[0].numpy()
        worst = max(worst, float(np.abs(ours - ref).max()))
        assert ours.argmax() == ref.argmax()
    print(f"\nfixture as float32 .tflite: max |logit diff| over photos = {worst:.2e}")
    assert worst <= 1e-3
    _assert_photo_criteria(_compare_on_photos(path, fixtures_dir, converted))


def test_fixture_rewritten_as_int8_per_channel_matches_interpreter(fixtures_dir: Path,
                                                                   tmp_path: Path) -> None:
    path = tmp_path / "mobilenet_v2_1.0_224_int8.tflite"
    path.write_bytes(int8_from_quant(fixtures_dir / QUANT_MODEL))
    converted = convert_tflite(path)
    assert converted.meta.extra["tflite"]["weights"] == "int8 per-channel"
    assert converted.meta.extra["tflite"]["input"].startswith("int8, scale 0.0078125, zero "
                                                              "point 0")
    _assert_photo_criteria(_compare_on_photos(path, fixtures_dir, converted))


def _random_model(width: float, resolution: int, seed: int,
                  num_classes: int = 1001) -> MobileNetV2:
    from mobilenetv2.config import ModelConfig

    torch.manual_seed(seed)
    model = MobileNetV2(ModelConfig(width=width, resolution=resolution, num_classes=num_classes,
                                    padding="tf_same", bn_eps=1e-3))
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.2)
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.3, 2.0)
    # Logits driven by the features (not by a bias), so they differ between inputs.
    model.classifier.weight.data.normal_(0, 0.3)
    model.classifier.bias.data.normal_(0, 0.1)
    return model.eval()


def _interp_logits(path: Path, x: np.ndarray) -> np.ndarray:
    it = _interpreter(path)
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"])


@pytest.mark.parametrize(
    ("width", "resolution"), [(0.35, 96), (0.5, 128), (0.75, 96), (0.6, 96), (1.3, 96),
                              (1.4, 160)]
)
def test_synthesized_float_models_of_other_widths(width: float, resolution: int,
                                                  tmp_path: Path) -> None:
    from mobilenetv2.model.arch import resolve

    torch_model = _random_model(width, resolution, seed=int(width * 100))
    path = tmp_path / f"mobilenet_v2_{width}_{resolution}.tflite"
    path.write_bytes(tflite_from_torch(torch_model))
    converted = convert_tflite(path)
    cfg = converted.meta.config
    assert cfg.resolution == resolution and cfg.num_classes == 1001
    assert resolve(cfg) == resolve(torch_model.config.replace(bn_eps=cfg.bn_eps,
                                                              bn_momentum=cfg.bn_momentum))
    if width != 0.6:
        assert cfg.width == width
    x = np.random.default_rng(0).uniform(-1, 1, (1, resolution, resolution, 3))
    x = x.astype(np.float32)
    ref = _interp_logits(path, x)
    with torch.no_grad():
        xt = torch.from_numpy(x).permute(0, 3, 1, 2)
        ours = _ours(converted)(xt).numpy()
        original = torch_model(xt).numpy()
    d_ref, d_orig = float(np.abs(ours - ref).max()), float(np.abs(ours - original).max())
    print(f"\nsynthesized float width {width} at {resolution} (-> width {cfg.width}): "
          f"max |logit diff| vs interpreter {d_ref:.2e}, vs the source model {d_orig:.2e} "
          f"(logits up to {np.abs(ref).max():.1f})")
    assert d_ref <= 1e-4 and d_orig <= 1e-4


@pytest.mark.parametrize(("width", "resolution", "scheme"),
                         [(0.35, 96, "uint8"), (0.5, 128, "int8"), (1.4, 96, "uint8")])
def test_synthesized_quantized_models_of_other_widths(width: float, resolution: int,
                                                      scheme: str, tmp_path: Path) -> None:
    """Quantized models of widths the fixtures lack: our float model from the dequantized
    weights against the interpreter's integer arithmetic. Random weights make the network
    meaningless on photos, so the check is on logits: the same top-1 and agreement within
    quantization error on random pixel images."""
    torch_model = _random_model(width, resolution, seed=7)
    rng = np.random.default_rng(1)
    pixels = [rng.integers(0, 256, (1, resolution, resolution, 3)) for _ in range(6)]
    calib = [((p - 128) / 128).astype(np.float32) for p in pixels[:3]]
    path = tmp_path / f"mobilenet_v2_{width}_{resolution}_{scheme}.tflite"
    path.write_bytes(quantize_float_tflite(tflite_from_torch(torch_model), calib, scheme))
    converted = convert_tflite(path)
    cfg = converted.meta.config
    assert (cfg.width, cfg.resolution) == (width, resolution)
    expected = "uint8 per-tensor" if scheme == "uint8" else "int8 per-channel"
    assert converted.meta.extra["tflite"]["weights"] == expected
    model, pre = _ours(converted), converted.meta.preprocessing
    it = _interpreter(path)
    out = it.get_output_details()[0]
    worst, spread = 0.0, 0.0
    for p in pixels:
        p8 = p[0].astype(np.uint8)
        inp = it.get_input_details()[0]
        it.set_tensor(inp["index"], p8[None] if scheme == "uint8"
                      else (p8.astype(np.int16) - 128).astype(np.int8)[None])
        it.invoke()
        oscale, ozp = out["quantization"]
        ref = (it.get_tensor(out["index"])[0].astype(np.float32) - ozp) * oscale
        x = torch.from_numpy(p8).permute(2, 0, 1)[None].float() / 255.0
        x = (x - pre.mean[0]) / pre.std[0]
        with torch.no_grad():
            ours = model(x)[0].numpy()
        worst = max(worst, float(np.abs(ours - ref).max()))
        spread = max(spread, float(ref.max() - ref.min()))
        assert ours.argmax() == ref.argmax()
    print(f"\nsynthesized {scheme} width {width} at {resolution}: max |logit diff| vs "
          f"interpreter {worst:.3f} (logit range {spread:.1f}, {100 * worst / spread:.1f}%)")
    assert worst <= 0.1 * spread


@pytest.mark.parametrize(("keras_layout", "fp16"), [(True, False), (False, True), (True, True)])
def test_synthesized_keras_layout_and_float16_weights(keras_layout: bool, fp16: bool,
                                                      tmp_path: Path) -> None:
    """The other layouts converters write: PAD + VALID convs, MEAN pooling and a
    FULLY_CONNECTED classifier with 1000 classes (a converted Keras model), and float16
    weights behind DEQUANTIZE ops. 99 px makes some stride-2 inputs odd (pads (1, 1))."""
    torch_model = _random_model(0.5, 99, seed=11, num_classes=1000)
    path = tmp_path / "model.tflite"
    path.write_bytes(tflite_from_torch(torch_model, keras_layout=keras_layout, fp16=fp16))
    converted = convert_tflite(path)
    cfg = converted.meta.config
    assert (cfg.width, cfg.resolution, cfg.num_classes) == (0.5, 99, 1000)
    assert converted.meta.labels[0] == "tench"  # 1000 classes: no background
    x = np.random.default_rng(0).uniform(-1, 1, (1, 99, 99, 3)).astype(np.float32)
    ref = _interp_logits(path, x)
    with torch.no_grad():
        ours = _ours(converted)(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    diff = float(np.abs(ours - ref).max())
    print(f"\nsynthesized keras_layout={keras_layout} fp16={fp16}: max |logit diff| vs "
          f"interpreter {diff:.2e} (logits up to {np.abs(ref).max():.1f})")
    assert diff <= 1e-4


def test_wrong_activation_is_refused(tmp_path: Path) -> None:
    """A ReLU where MobileNetV2 has ReLU6 must fail loudly, naming the operator."""
    s = schema()
    data = tflite_from_torch(_random_model(0.35, 96, seed=3))
    model = s.ModelT.InitFromPackedBuf(data, 0)
    model.subgraphs[0].operators[4].builtinOptions.fusedActivationFunction = 1  # RELU
    path = tmp_path / "relu.tflite"
    path.write_bytes(pack(model))
    with pytest.raises(UserError, match="operator 4 .* fused activation relu, expected relu6"):
        convert_tflite(path)
