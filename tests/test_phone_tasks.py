"""The segmenter and the detector exported to LiteRT (.tflite) and ExecuTorch (.pte).

The references are PyTorch's outputs on the same inputs and the runtimes' plain APIs (the
LiteRT interpreter with its default XNNPACK delegate, ExecuTorch's `Runtime`), not our own
runners. Random weights would give near-zero logits (DeepLab's logits conv starts at
std 0.01, bias 0), where any export agrees; `_scramble` gives BatchNorm and the output
convs random values so the outputs are of order 1 and the comparison means something.
A detector's boxes go through the shared post-processing (`ssd_post.postprocess`) on both
sides, with the anchors the exported file carries.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from deploy_helpers import one_thread
from mobilenetv2 import create_model
from mobilenetv2.cli import main
from mobilenetv2.model.heads.ssd_post import postprocess

SEG_SIZE, DET_SIZE = 65, 96
ATOL = 1e-4


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    yield from one_thread()


def _scramble(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.2)
            elif isinstance(m, nn.Conv2d) and m.bias is not None:  # the prediction convs
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) / fan_in ** 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def segmenter() -> nn.Module:
    torch.manual_seed(0)
    return _scramble(create_model("deeplabv3_mobilenetv2_100", width=0.35, num_classes=3,
                                  resolution=SEG_SIZE))


@pytest.fixture(scope="module")
def detector() -> nn.Module:
    torch.manual_seed(0)
    return _scramble(create_model("ssdlite_mobilenetv2_050", width=0.35, num_classes=4,
                                  resolution=DET_SIZE))


def _inputs(size: int, n: int = 2) -> np.ndarray:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1)).numpy()


def _torch(model: nn.Module, x: np.ndarray) -> list[np.ndarray]:
    with torch.inference_mode():
        out = model(torch.from_numpy(x))
    return [o.numpy() for o in (out if isinstance(out, tuple) else (out,))]


def _litert(path, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every output of the file by name, batch by the interpreter's resize; 4-D maps back
    to NCHW."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    inp = interp.get_input_details()[0]
    interp.resize_tensor_input(inp["index"], [len(x), x.shape[2], x.shape[3], 3])
    interp.allocate_tensors()
    interp.set_tensor(inp["index"], np.ascontiguousarray(x.transpose(0, 2, 3, 1)))
    interp.invoke()
    outs = {}
    for d in interp.get_output_details():
        y = interp.get_tensor(d["index"])
        outs[d["name"]] = y.transpose(0, 3, 1, 2) if y.ndim == 4 else y
    return outs


def _executorch(path, x: np.ndarray, method: str = "forward") -> list[np.ndarray]:
    """The program's outputs, image by image (it is lowered at batch 1)."""
    from executorch.runtime import Runtime

    program = Runtime.get().load_program(path)
    m = program.load_method(method)
    per_image = [[o.numpy() for o in m.execute([torch.from_numpy(x[i:i + 1].copy())])]
                 for i in range(len(x))]
    return [np.concatenate(o) for o in zip(*per_image)]


def _same_detections(model: nn.Module, x: np.ndarray, codes: np.ndarray, logits: np.ndarray,
                     anchors: np.ndarray, size: int) -> None:
    ref_codes, ref_logits = _torch(model, x)
    ref = postprocess(torch.from_numpy(ref_codes), torch.from_numpy(ref_logits),
                      model.anchors(size, size), (size, size))
    got = postprocess(torch.from_numpy(codes), torch.from_numpy(logits),
                      torch.from_numpy(anchors), (size, size))
    assert sum(len(d["boxes"]) for d in ref) > 0  # scrambled heads do detect something
    for r, g in zip(ref, got):
        assert torch.equal(r["labels"], g["labels"])
        torch.testing.assert_close(g["boxes"], r["boxes"], atol=ATOL * size, rtol=0)


# ---------------------------------------------------------------------------- segmenter
def test_segmenter_tflite_fp32_logits_and_argmax(segmenter, tmp_path) -> None:
    pytest.importorskip("ai_edge_litert.interpreter", reason="needs ai-edge-litert")
    pytest.importorskip("tflite", reason="needs the tflite schema package")
    from mobilenetv2.export.tflite import export_tflite
    from mobilenetv2.runtime.phone import phone_metadata

    path = export_tflite(segmenter, tmp_path / "seg.tflite", input_size=SEG_SIZE).path
    x = _inputs(SEG_SIZE)
    (ref,) = _torch(segmenter, x)
    (got,) = _litert(path, x).values()
    assert got.shape == ref.shape == (2, 3, SEG_SIZE, SEG_SIZE)
    assert np.abs(got - ref).max() <= ATOL
    assert np.array_equal(got.argmax(1), ref.argmax(1))
    assert phone_metadata(path)["output"]["layout"] == "NHWC"


def test_segmenter_executorch_fp32_logits_and_argmax(segmenter, tmp_path) -> None:
    pytest.importorskip("executorch", reason="needs executorch (the mobile extra)")
    from mobilenetv2.export.executorch import export_executorch

    path = export_executorch(segmenter, tmp_path / "seg.pte", input_size=SEG_SIZE).path
    x = _inputs(SEG_SIZE)
    (ref,) = _torch(segmenter, x)
    (got,) = _executorch(path, x)
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= ATOL
    assert np.array_equal(got.argmax(1), ref.argmax(1))


def _pixels(model: nn.Module, size: int, n: int, seed: int) -> np.ndarray:
    """Random [0, 1] images normalised as the weights say: inside the int8 input's range."""
    from mobilenetv2.weights.format import meta_or_default

    pre = meta_or_default(model).preprocessing
    x = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))
    mean, std = torch.tensor(pre.mean)[:, None, None], torch.tensor(pre.std)[:, None, None]
    return ((x - mean) / std).numpy()


def test_segmenter_tflite_int8_per_pixel_classes(segmenter, tmp_path) -> None:
    """Full-integer file (int8 CONCATENATION requantizing its inputs to the output's
    parameters): run with the file's own quantization parameters, per-pixel classes agree
    with float PyTorch almost everywhere."""
    pytest.importorskip("ai_edge_litert.interpreter", reason="needs ai-edge-litert")
    pytest.importorskip("tflite", reason="needs the tflite schema package")
    from ai_edge_litert.interpreter import Interpreter

    from mobilenetv2.export.tflite import export_tflite

    calib = _pixels(segmenter, SEG_SIZE, 16, seed=2)
    path = export_tflite(segmenter, tmp_path / "q.tflite", precision="int8",
                         calibration=calib, input_size=SEG_SIZE).path
    x = _pixels(segmenter, SEG_SIZE, 2, seed=3)  # not the calibration images
    (ref,) = _torch(segmenter, x)
    interp = Interpreter(model_path=str(path))
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    assert inp["dtype"] == out["dtype"] == np.int8
    (si, zi), (so, zo) = inp["quantization"], out["quantization"]
    got = []
    for img in x:
        interp.allocate_tensors()
        q = np.clip(np.round(img.transpose(1, 2, 0) / si) + zi, -128, 127).astype(np.int8)
        interp.set_tensor(inp["index"], q[None])
        interp.invoke()
        got.append((interp.get_tensor(out["index"])[0].astype(np.float32) - zo) * so)
    got = np.stack(got).transpose(0, 3, 1, 2)
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.95
    # quantization error: a few output steps, far below the logits' spread
    assert np.abs(got - ref).max() <= 0.1 * (ref.max() - ref.min())


# ---------------------------------------------------------------------------- detector
def test_detector_tflite_outputs_anchors_and_boxes(detector, tmp_path) -> None:
    pytest.importorskip("ai_edge_litert.interpreter", reason="needs ai-edge-litert")
    pytest.importorskip("tflite", reason="needs the tflite schema package")
    from mobilenetv2.export.tflite import export_tflite
    from mobilenetv2.runtime.phone import phone_metadata

    path = export_tflite(detector, tmp_path / "det.tflite", input_size=DET_SIZE).path
    x = _inputs(DET_SIZE)
    ref_codes, ref_logits = _torch(detector, x)
    outs = _litert(path, x)
    assert set(outs) == {"box_codes", "class_logits"}
    assert np.abs(outs["box_codes"] - ref_codes).max() <= ATOL
    assert np.abs(outs["class_logits"] - ref_logits).max() <= ATOL
    doc = phone_metadata(path)["anchors"]
    anchors = np.asarray(doc["values"], np.float32).reshape(doc["shape"])
    assert np.array_equal(anchors, detector.anchors(DET_SIZE, DET_SIZE).numpy())
    _same_detections(detector, x, outs["box_codes"], outs["class_logits"], anchors, DET_SIZE)


def test_detector_executorch_outputs_anchors_and_boxes(detector, tmp_path) -> None:
    pytest.importorskip("executorch", reason="needs executorch (the mobile extra)")
    from mobilenetv2.export.executorch import export_executorch

    path = export_executorch(detector, tmp_path / "det.pte", input_size=DET_SIZE).path
    x = _inputs(DET_SIZE)
    ref_codes, ref_logits = _torch(detector, x)
    codes, logits = _executorch(path, x)
    assert np.abs(codes - ref_codes).max() <= ATOL
    assert np.abs(logits - ref_logits).max() <= ATOL
    anchors = _anchors_pte(path)
    assert np.array_equal(anchors, detector.anchors(DET_SIZE, DET_SIZE).numpy())
    _same_detections(detector, x, codes, logits, anchors, DET_SIZE)


def _anchors_pte(path) -> np.ndarray:
    """The program's `anchors` constant method."""
    from executorch.runtime import Runtime

    return Runtime.get().load_program(path).load_method("anchors").execute([])[0].numpy()


def test_export_cli_detector_tflite_and_int8_refusal(detector, tmp_path, capsys) -> None:
    pytest.importorskip("ai_edge_litert.interpreter", reason="needs ai-edge-litert")
    pytest.importorskip("tflite", reason="needs the tflite schema package")
    from mobilenetv2.runtime.phone import phone_metadata
    from mobilenetv2.weights.format import save

    weights = save(detector, tmp_path / "det.safetensors")
    out = tmp_path / "det.tflite"
    assert main(["export", "--weights", str(weights), "--format", "tflite", "--input-size",
                 str(DET_SIZE), "-o", str(out)]) == 0
    assert "max |diff| vs PyTorch" in capsys.readouterr().out
    assert phone_metadata(out)["config"]["task"] == "detect"
    x = _inputs(DET_SIZE, 1)
    outs = _litert(out, x)
    ref_codes, _ = _torch(detector, x)
    assert np.abs(outs["box_codes"] - ref_codes).max() <= ATOL
    assert main(["export", "--weights", str(weights), "--format", "executorch", "--precision",
                 "int8", "--calib", "digits", "-o", str(tmp_path / "q.pte")]) == 2
    assert "fp32 only" in capsys.readouterr().err
