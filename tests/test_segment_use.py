"""Using a segmenter: the segment verb on a real photo, eval/predict/bench on segmentation
weights, ONNX export (dynamic batch and H/W) against PyTorch, training and int8 (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mobilenetv2.cli import main
from mobilenetv2.data.canvases import CANVAS_CLASSES
from mobilenetv2.data.preprocessing import Preprocessing
from mobilenetv2.registry import create_model
from mobilenetv2.weights import load_weights
from mobilenetv2.weights.format import save


def _tiny(tmp_path: Path) -> Path:
    """A small random segmenter for the canvases' 11 classes, saved with metadata."""
    torch.manual_seed(0)
    model = create_model("deeplabv3_mobilenetv2_050", width=0.35, num_classes=11,
                         output_stride=8, resolution=64)
    path = tmp_path / "seg.safetensors"
    save(model, path, preprocessing=Preprocessing(resize=64, crop=64), labels=CANVAS_CLASSES)
    return path


def test_segment_verb_on_a_real_photo(fixtures_dir: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture) -> None:
    """The official DeepLab model, converted, labels the fixture's bird as the ground-truth
    mask does; the PNGs are the photo's size, the label PNG holds class indices."""
    src = fixtures_dir / "deeplabv3_mnv2_pascal_quant.tflite"
    if not src.is_file():
        pytest.skip(f"{src} missing")
    weights = tmp_path / "deeplab.safetensors"
    assert main(["convert", str(src), "-o", str(weights)]) == 0
    photo = fixtures_dir / "bird_segmentation.bmp"
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["segment", str(photo), "--weights", str(weights), "--out", str(out),
                 "--json"]) == 0
    [r] = json.loads(capsys.readouterr().out)
    shares = {c["name"]: c["share"] for c in r["classes"]}
    truth = np.asarray(Image.open(fixtures_dir / "bird_segmentation_mask.bmp"))
    assert set(shares) == {"background", "bird"}
    assert abs(shares["bird"] - (truth == 3).mean()) < 0.02
    labels = Image.open(r["labels_png"])
    assert labels.mode == "P" and labels.size == (513, 513)
    assert ((np.asarray(labels) == 3) == (truth == 3)).mean() > 0.97
    assert Image.open(r["overlay_png"]).size == (513, 513)
    # predict refuses segmentation weights with the command that applies.
    assert main(["predict", str(photo), "--weights", str(weights)]) != 0
    assert "is a segmentation model" in capsys.readouterr().err


def test_eval_bench_and_errors_dispatch_on_the_task(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    weights = _tiny(tmp_path)
    data = tmp_path / "data"
    for d in ("images", "masks"):
        (data / d).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (48, 80, 3), np.uint8)).save(
            data / "images" / f"{i}.png")
        Image.fromarray(rng.integers(0, 11, (48, 80), np.uint8)).save(data / "masks" / f"{i}.png")
    (data / "labels.txt").write_text("\n".join(CANVAS_CLASSES))
    out = tmp_path / "eval"
    assert main(["eval", "--weights", str(weights), "--data", str(data), "--out", str(out),
                 "--json", "--output-stride", "16", "--flip"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert 0.0 <= report["miou"] <= 1.0 and report["count"] == 1  # held-out 10% of 4
    assert list(report["per_class_iou"]) == CANVAS_CLASSES
    for name in ("eval.json", "confusion.png", "iou.png"):
        assert (out / name).is_file()
    assert main(["eval", "--weights", str(weights)]) != 0
    assert "need masks" in capsys.readouterr().err
    assert main(["bench", "--weights", str(weights), "--quick"]) != 0
    assert "segment model: bench compares classifiers" in capsys.readouterr().err
    img = tmp_path / "x.png"
    Image.new("RGB", (40, 30), "white").save(img)
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    assert main(["segment", str(img), str(tmp_path / "bad.jpg"), "--weights", str(weights),
                 "--out", str(tmp_path / "seg")]) == 1
    assert "bad.jpg" in capsys.readouterr().err
    assert (tmp_path / "seg" / "x.labels.png").is_file()
    assert Image.open(tmp_path / "seg" / "x.labels.png").size == (40, 30)


def test_onnx_export_dynamic_batch_and_size(tmp_path: Path) -> None:
    """Exported with dynamic batch, height and width; ONNX Runtime agrees with PyTorch at
    other batch sizes and shapes than the export's."""
    ort = pytest.importorskip("onnxruntime")
    from mobilenetv2.export import export_onnx

    torch.manual_seed(0)
    model = create_model("deeplabv3_mobilenetv2_050", width=0.35, aspp=True).eval()
    with torch.no_grad():  # logits of order 1, and BN statistics that are not the identity
        model.head.logits.weight.normal_(0, 1)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2)
    path = export_onnx(model, tmp_path / "seg.onnx", input_size=97, dynamic_hw=True).path
    sess = ort.InferenceSession(str(path))
    assert sess.get_inputs()[0].shape == ["batch", 3, "height", "width"]
    for shape in ((1, 3, 65, 129), (3, 3, 100, 77)):
        x = torch.randn(shape)
        with torch.no_grad():
            ref = model(x).numpy()
        got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
        assert got.shape == (shape[0], 21, shape[2], shape[3])
        assert np.abs(got - ref).max() < 1e-4 * max(1.0, np.abs(ref).max())
        assert (got.argmax(1) == ref.argmax(1)).mean() > 0.999


@pytest.mark.slow
@pytest.mark.timeout(1500)  # 150 steps + 3 evaluations; minutes on a shared 2-core machine
def test_short_training_lowers_loss_and_learns(tmp_path: Path) -> None:
    """The demo recipe, shortened: the loss falls and the mIoU beats predicting background
    everywhere (background's IoU / 2 classes = 43% on the validation canvases)."""
    from mobilenetv2.train.recipes import make_config
    from mobilenetv2.train.run import train

    cfg = make_config("segment-demo", out=str(tmp_path / "run"),
                      train={"epochs": 3, "tensorboard": False})
    result = train(cfg)
    lines = [json.loads(s) for s in (tmp_path / "run" / "metrics.jsonl").read_text().split("\n")
             if s.strip()]
    steps = [r for r in lines if r["kind"] == "step"]
    assert steps[-1]["loss"] < 0.6 * steps[0]["loss"]
    assert result.metrics.miou > 0.55
    model = load_weights(tmp_path / "run" / "model.safetensors")
    assert model.config.task == "segment" and model.meta.accuracy["miou"] > 0.55


@pytest.mark.slow
def test_int8_ptq_miou_before_and_after(tmp_path: Path) -> None:
    from mobilenetv2.segment import quantize_segmenter

    model = load_weights(_tiny(tmp_path))
    r = quantize_segmenter(model, tmp_path / "q", "canvases-digits", calib_images=16,
                           eval_images=32)
    assert Path(r["int8_path"]).is_file() and set(r["miou"]) == {"fp32", "int8"}
    assert r["pixel_agreement"] > 0.8


def test_segmenter_starts_from_classification_weights(tmp_path: Path) -> None:
    """An ImageNet-style classifier's stem and blocks become the backbone; the recipe keeps
    the segmentation task while the architecture follows the weights."""
    from mobilenetv2 import MobileNetV2, ModelConfig
    from mobilenetv2.tasks.segment import build_segmenter
    from mobilenetv2.train.recipes import make_config

    torch.manual_seed(0)
    cls = MobileNetV2(ModelConfig(width=0.35, num_classes=10, padding="tf_same"))
    path = tmp_path / "cls.safetensors"
    save(cls, path)
    cfg = make_config("segment-demo", train={"weights": str(path)}, out=str(tmp_path / "r"))
    assert cfg.model.task == "segment" and cfg.model.output_stride == 8
    assert (cfg.model.width, cfg.model.round_nearest, cfg.model.padding) == (0.35, 8, "tf_same")
    seg = build_segmenter(cfg, 2, load_weights(path))
    assert seg.config.task == "segment" and seg.num_classes == 2
    theirs = cls.state_dict()
    for k, v in seg.backbone.state_dict().items():
        assert torch.equal(v, theirs[k]), k
    again = build_segmenter(cfg, 5, seg)  # segmentation weights: new logits for 5 classes
    assert again.num_classes == 5 and again.config.num_classes == 5
