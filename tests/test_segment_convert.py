"""The official Mobile DeepLabv3 TFLite model (PASCAL VOC, 513x513, uint8, ends in ARG_MAX),
converted and run by us, against the reference interpreter (ai-edge-litert) on the fixture's
real photo and its ground-truth mask (../shared/fixtures/tflite/).

How the input is prepared: `bird_segmentation.bmp` is already 513x513, the model's input
size, so both runtimes get the photo's own uint8 RGB pixels, unresized: the interpreter the
raw bytes (its input tensor is uint8 with scale 1/128, zero point 128), our float model
(pixel - 128) / 128, which is what those bytes mean. For photos of other sizes the Coral
example (pycoral examples/semantic_segmentation.py) resizes the whole image to 513x513 by
default (or keeps the aspect and pads with --keep_aspect_ratio); the converted weights record
the former (resize_mode "exact", 513), and `segment` maps the labels back to the photo's size.

The mask: class 3 (bird) on background 0, with 1,237 pixels valued 1 or 2, every one of them
on the outline between 0 and 3 (a resampled label image). They are not aeroplanes and
bicycles, so they are treated as VOC treats its object outlines: ignored (255). The mIoU
without that choice is compared too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mobilenetv2.errors import UserError
from mobilenetv2.model import build_model
from mobilenetv2.model.heads.deeplabv3 import DeepLabV3
from mobilenetv2.tasks.segment_metrics import SegmentMetrics, pixel_confusion
from mobilenetv2.weights.convert.tflite import convert_tflite

MODEL = "deeplabv3_mnv2_pascal_quant.tflite"


@pytest.fixture(scope="module")
def fixture() -> dict:
    from conftest import FIXTURES as fixtures_dir

    if not (fixtures_dir / "mobilenet_v2_1.0_224_quant.tflite").is_file():
        pytest.skip(f"real-model fixtures not found at {fixtures_dir} (shared/fixtures/tflite)")
    if not (fixtures_dir / MODEL).is_file():
        pytest.skip(f"{MODEL} not in {fixtures_dir}")
    litert = pytest.importorskip("ai_edge_litert.interpreter", reason="needs ai-edge-litert")
    from PIL import Image

    pixels = np.asarray(Image.open(fixtures_dir / "bird_segmentation.bmp").convert("RGB"))
    mask = np.asarray(Image.open(fixtures_dir / "bird_segmentation_mask.bmp"))
    it = litert.Interpreter(model_path=str(fixtures_dir / MODEL))
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], pixels[None])
    it.invoke()
    ref = it.get_tensor(it.get_output_details()[0]["index"])[0]
    conv = convert_tflite(fixtures_dir / MODEL)
    model = build_model(conv.meta.config)
    model.load_state_dict(conv.state_dict)
    model.eval()
    x = torch.from_numpy(pixels.copy()).permute(2, 0, 1)[None].float()
    pre = conv.meta.preprocessing
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (pre.mean, pre.std))
    x = (x / 255 - mean) / std
    with torch.no_grad():
        ours = model(x).argmax(1)[0].numpy()
    return {"ref": ref, "ours": ours, "mask": mask, "conv": conv, "model": model}


def _miou(pred: np.ndarray, mask: np.ndarray) -> float:
    conf = pixel_confusion(torch.from_numpy(pred), torch.from_numpy(mask.astype(np.int64)), 21)
    return SegmentMetrics(0.0, conf, 1, []).miou


def test_converted_config_and_metadata(fixture: dict) -> None:
    meta = fixture["conv"].meta
    cfg = meta.config
    assert (cfg.task, cfg.width, cfg.output_stride, cfg.aspp, cfg.padding) == (
        "segment", 1.0, 16, False, "tf_same")
    assert cfg.num_classes == 21 and meta.labels[3] == "bird" and meta.labels[0] == "background"
    labels_file = Path(__file__).resolve().parents[2] / "shared/fixtures/tflite/" \
        "pascal_voc_segmentation_labels.txt"
    if labels_file.is_file():
        # The file's first 21 lines (a note about label 255 follows them).
        assert labels_file.read_text().splitlines()[:21] == meta.labels
    assert meta.preprocessing.resize == meta.preprocessing.crop == 513
    assert meta.preprocessing.mean[0] == pytest.approx(128 / 255)
    assert isinstance(fixture["model"], DeepLabV3)


def test_pixels_agree_with_the_interpreter(fixture: dict) -> None:
    agree = float((fixture["ours"] == fixture["ref"]).mean())
    print(f"pixel agreement with ai-edge-litert: {agree:.4%}")
    assert agree >= 0.97
    assert set(np.unique(fixture["ref"])) == {0, 3}  # the README: bird on background


def test_miou_within_one_point_of_the_interpreter(fixture: dict) -> None:
    mask = fixture["mask"].copy()
    outline = (mask == 1) | (mask == 2)
    mask[outline] = 255
    ref, ours = _miou(fixture["ref"], mask), _miou(fixture["ours"], mask)
    raw_ref, raw_ours = _miou(fixture["ref"], fixture["mask"]), _miou(fixture["ours"],
                                                                        fixture["mask"])
    print(f"mIoU vs ground truth: interpreter {ref:.2%}, ours {ours:.2%} (outline ignored); "
          f"{raw_ref:.2%} / {raw_ours:.2%} counting the outline values as classes 1 and 2")
    assert ref > 0.9  # the interpreter itself segments the bird well
    assert abs(ref - ours) <= 0.01
    assert abs(raw_ref - raw_ours) <= 0.01


def test_a_classifier_file_is_not_taken_for_deeplab(fixtures_dir: Path) -> None:
    conv = convert_tflite(fixtures_dir / "mobilenet_v2_1.0_224_quant.tflite")
    assert conv.meta.config.task == "classify"


def test_truncated_deeplab_file_is_one_clear_error(fixture: dict, fixtures_dir: Path,
                                                   tmp_path: Path) -> None:
    bad = tmp_path / "cut.tflite"
    bad.write_bytes((fixtures_dir / MODEL).read_bytes()[:100_000])
    with pytest.raises(UserError, match="cut.tflite"):
        convert_tflite(bad)
