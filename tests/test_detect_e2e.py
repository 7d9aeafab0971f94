"""SSDLite end to end: ONNX Runtime parity after the shared post-processing, a short
training run on the demo canvases through the shared `train` machinery, and the verbs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mobilenetv2 import create_model

pytest.importorskip("pycocotools")


def test_onnx_boxes_equal_pytorch_after_shared_postprocessing(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from mobilenetv2.export.onnx_detect import export_detector_onnx, onnx_detector_outputs
    from mobilenetv2.model.fuse import reestimate_bn
    from mobilenetv2.model.heads.ssd_post import postprocess

    torch.manual_seed(0)
    model = create_model("ssdlite_mobilenetv2_050", num_classes=6, resolution=128)
    reestimate_bn(model, size=128, steps=2)
    gen = torch.Generator().manual_seed(1)
    for head in model.class_heads:
        # spread scores as a trained net's are (an untrained one's near-equal scores make
        # NMS order a coin toss in any two runtimes), without the background prior
        bias = head.predict.bias.data
        bias.copy_(torch.randn(bias.shape, generator=gen) * 3)
    result = export_detector_onnx(model, tmp_path / "det.onnx")
    x = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = model.eval().detect(x, score_threshold=0.05)
    codes, logits, anchors = onnx_detector_outputs(tmp_path / "det.onnx", x.numpy())
    np.testing.assert_array_equal(anchors, model.anchors(128, 128).numpy())
    got = postprocess(torch.from_numpy(codes), torch.from_numpy(logits),
                      torch.from_numpy(anchors), (128, 128), score_threshold=0.05)
    assert sum(len(d["boxes"]) for d in ref) > 10
    for r, g in zip(ref, got):
        assert torch.equal(r["labels"], g["labels"])
        # within 1e-4 of the image side (TF's normalised units): 0.0128 px here
        torch.testing.assert_close(g["boxes"], r["boxes"], atol=1e-4 * 128, rtol=0)
        torch.testing.assert_close(g["scores"], r["scores"], atol=1e-4, rtol=0)
    assert result.max_abs_diff is not None and result.max_abs_diff < 1e-4 * 128


@pytest.mark.slow
def test_short_training_lowers_the_loss_and_detects(tmp_path: Path) -> None:
    """The shared train machinery with the detect task: 60 steps on the demo canvases lower
    the loss; the weights file knows its task; detect and eval run on it."""
    from mobilenetv2.cli import main
    from mobilenetv2.train.recipes import make_config
    from mobilenetv2.train.run import train
    from mobilenetv2.weights import load_weights

    cfg = make_config("detect-demo", data={"num_workers": 0, "batch_size": 16},
                      train={"epochs": 1, "max_steps": 60, "log_every": 5,
                             "tensorboard": False, "warmup_epochs": 0.1},
                      out=str(tmp_path / "run"))
    result = train(cfg, progress=False)
    steps = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()
             if '"step"' in line and '"kind": "step"' in line]
    assert steps[-1]["loss"] < 0.85 * steps[0]["loss"]
    assert 0.0 <= result.metrics.score <= 1.0
    model = load_weights(result.model_path)
    assert model.config.task == "detect" and model.meta.labels[0] == "__background__"
    from mobilenetv2.data.det_canvases import write_samples

    samples = write_samples(str(tmp_path / "samples"), count=1)
    assert main(["detect", samples[0], "--weights", str(result.model_path), "--out",
                 str(tmp_path / "det"), "--score-threshold", "0.05"]) == 0
    assert (tmp_path / "det" / "val_canvas_0.detections.png").is_file()
    assert main(["eval", "--weights", str(result.model_path), "--data", "canvases",
                 "--out", str(tmp_path / "eval")]) == 0
    doc = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert doc["task"] == "detect" and doc["images"] == 200
