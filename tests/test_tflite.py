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
from mobilenetv2.weights.tflite import BN_EPS, convert_tflite

PHOTOS = ("cat.bmp", "grace_hopper.bmp", "parrot.jpg", "bird.bmp")
QUANT_MODEL = "mobilenet_v2_1.0_224_quant.tflite"


def _interpreter(path: Path):
    litert = pytest.importorskip("ai_edge_litert.interpreter", reason="needs ai-edge-litert")
    it = litert.Interpreter(model_path=str(path))
    it.allocate_tensors()
    return it


def _run_interpreter(it, pixels: np.ndarray) -> np.ndarray:
    """Dequantized output (probabilities) for one HxWx3 uint8 image."""
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    scale, zp = inp["quantization"]
    if inp["dtype"] == np.uint8:
        x = pixels[None]
    elif inp["dtype"] == np.int8:
        x = (pixels.astype(np.int16) - 128).astype(np.int8)[None]
    else:
        x = ((pixels.astype(np.float32) - 128.0) / 128.0)[None]
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
        ref = _run_interpreter(it, pixels)
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


def test_deeplab_model_is_refused_with_a_reason(fixtures_dir: Path) -> None:
    with pytest.raises(UserError, match="not a MobileNetV2 classifier"):
        convert_tflite(fixtures_dir / "deeplabv3_mnv2_pascal_quant.tflite")


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
