"""Export to LiteRT / TensorFlow Lite (`.tflite`), float32 or full-integer int8, verified in
the LiteRT interpreter (`ai-edge-litert`, XNNPACK delegate on).

Why our own writer: the maintained converter `litert-torch` 0.10 installs beside torch 2.14
and converts this model (measured fp32 parity 2.7e-14 on a width-0.35 net), but it pulls in
jax, transformers and xdsl (870 MB), and xdsl pins `typing-extensions<4.13` while ExecuTorch
1.5's coremltools -> cattrs needs `>=4.14`: the two cannot share one environment. The file
is therefore written with `flatbuffers` and the `tflite` schema package's generated
builders (`tflite_writer`), from the same `torch.export` graph ExecuTorch lowers
(`tflite_lower`: one row per ATen op, so other heads plug in).

int8 is post-training static quantization in the TFLite spec's scheme (`tflite_lower`):
activation ranges calibrated on the user's images (min/max), weights per-channel symmetric.
The input tensor is int8 too (full-integer, what NPUs and microcontrollers need); its range
is fixed by the preprocessing, not calibrated: every [0, 1] pixel normalised by the
weights' mean/std, so an app quantizes any image the same way
(`q = round(x / scale) + zero_point`, parameters in the tensor and in the metadata).

The file carries the weights' metadata as one JSON document (metadata entry
`mobilenetv2`, `runtime.phone.phone_metadata` reads it): config, preprocessing (input size,
mean/std, resize), labels, provenance, precision, the input/output tensors' layout and
quantization.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mobilenetv2._optional import require
from mobilenetv2.errors import UserError
from mobilenetv2.export.common import (
    DEFAULT_ATOL,
    ExportResult,
    capture_graph,
    check_agreement,
    checked_calibration,
    detector_anchors,
    example_size,
    is_detector,
    one_thread,
    phone_metadata,
    verify_fp32,
    write_verified,
)
from mobilenetv2.export.tflite_lower import LOWERINGS, Lowering, QParams, activation_qparams
from mobilenetv2.export.tflite_writer import TensorSpec, TFLiteBuilder

__all__ = ["METADATA_NAME", "export_tflite", "tflite_bytes"]

log = logging.getLogger(__name__)

METADATA_NAME = "mobilenetv2"


def export_tflite(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    precision: str = "fp32",
    calibration: np.ndarray | None = None,
    input_size: int | None = None,
    verify: bool = True,
    atol: float = DEFAULT_ATOL,
) -> ExportResult:
    """Write `model` (BN folded) as a `.tflite` file and verify it in the LiteRT interpreter.

    Args:
        model: A MobileNetV2 (any network whose ATen ops have a row in `LOWERINGS`).
        path: Output `.tflite` file.
        precision: "fp32", or "int8" (full-integer: int8 input, activations and output).
        calibration: int8 calibration images, preprocessed float32 NCHW (the caller reads
            "digits" or a folder with `quant.ptq.calibration_arrays`); required for int8.
        input_size: Input side (default: the weights' crop size).
        verify: fp32: logits within `atol` of PyTorch's on random inputs (else UserError).
            int8: top-1 agreement with PyTorch on the calibration images, reported.
    """
    if precision not in ("fp32", "int8"):
        raise UserError(f"--precision {precision}: the tflite export writes fp32 or int8")
    if precision == "int8" and is_detector(model):
        raise UserError("a detector exports to tflite in fp32 only (--precision fp32): an int8 "
                        "file's check (top-1 agreement) is a classifier's, its boxes would go "
                        "unverified")
    size = example_size(model, input_size)
    data = checked_calibration(precision, calibration)
    content = tflite_bytes(model, size, precision, data)
    check = (lambda tmp: _verify(model, tmp, precision, size, data, atol)) if verify else None
    return write_verified(path, content, "tflite", precision, ".tflite", check)


def tflite_bytes(model: nn.Module, size: int, precision: str = "fp32",
                 calibration: np.ndarray | None = None) -> bytes:
    """The `.tflite` flatbuffer of `model` at input side `size` (the pure step, no I/O)."""
    require("tflite", "the tflite export")
    require("flatbuffers", "the tflite export")
    gm = capture_graph(model, size)
    int8 = precision == "int8"
    lowering = Lowering(gm, TFLiteBuilder(), int8)
    if int8:
        if calibration is None or len(calibration) == 0:
            raise UserError("int8 export: no calibration images")
        lowering.ranges = _ranges(gm, calibration)
    b = lowering.builder
    x_node = next(n for n in gm.graph.nodes if n.op == "placeholder")
    in_q = _input_qparams(model) if int8 else None
    lowering.new_tensor(x_node, (1, 3, size, size), in_q)
    b.inputs = [lowering.values[x_node].index]
    for node in gm.graph.nodes:
        if node.op != "call_function" or node in lowering.done:
            continue
        fn = LOWERINGS.get(node.target)
        if fn is None:
            if str(node.target).startswith("aten._assert") or "sym_" in str(node.target):
                continue
            raise UserError(f"TFLite export: operator {node.target} ({node.name}) has no "
                            f"TFLite lowering (export/tflite_lower.py LOWERINGS)")
        fn(lowering, node)
    out_node = next(n for n in gm.graph.nodes if n.op == "output")
    outs = out_node.args[0]
    outs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
    b.outputs = [lowering.values[o].index for o in outs]
    b.tensors[b.inputs[0]].name = "input"
    b.description = "MobileNetV2 (Sandler et al., CVPR 2018) exported by mobilenetv2"
    io: dict[str, Any] = {"input": _io_desc(b.tensors[b.inputs[0]], "NHWC")}
    if is_detector(model):
        # SSDLite: decoding and NMS stay outside the file, as in its ONNX export; the
        # anchors they need go into the metadata (they depend on the fixed input size).
        names, layouts = ("box_codes", "class_logits"), ("NAK", "NAK")
        io["anchors"] = _anchors_doc(model, size)
    else:
        names = ("logits",)
        layouts = ("NHWC",) if len(lowering.values[outs[0]].shape) == 4 else ("NC",)
    if len(outs) != len(names):
        raise UserError(f"TFLite export: the network returns {len(outs)} outputs, expected "
                        f"{len(names)} ({', '.join(names)})")
    for idx, name in zip(b.outputs, names):
        b.tensors[idx].name = name
    descs = [_io_desc(b.tensors[i], lay) for i, lay in zip(b.outputs, layouts)]
    if len(descs) == 1:
        io["output"] = descs[0]
    else:
        io["outputs"] = dict(zip(names, descs))
    doc = phone_metadata(model, precision, "tflite", io)
    b.metadata[METADATA_NAME] = json.dumps(doc).encode()
    return b.build()


def _anchors_doc(model: nn.Module, size: int) -> dict[str, Any]:
    """The anchors as metadata: float32 values written as their exact float64 equivalents,
    so a reader gets back the very anchors PyTorch decodes against."""
    a = detector_anchors(model, size)
    return {"format": "ymin, xmin, ymax, xmax, normalised to the input side; one row per "
                      "box_codes / class_logits row; decode and NMS as "
                      "mobilenetv2.model.heads.ssd_post.postprocess",
            "shape": list(a.shape), "values": [float(v) for v in a.ravel()]}


def _io_desc(spec: TensorSpec, layout: str) -> dict[str, Any]:
    d: dict[str, Any] = {"shape": list(spec.shape), "layout": layout,
                         "dtype": np.dtype(spec.dtype).name}
    if spec.scale is not None:
        d["scale"] = float(np.asarray(spec.scale).ravel()[0])
        d["zero_point"] = int(np.asarray(spec.zero_point).ravel()[0])
    return d


def _input_qparams(model: nn.Module) -> QParams:
    """The fixed input range: every [0, 1] pixel after the weights' normalisation."""
    from mobilenetv2.weights.format import meta_or_default

    pre = meta_or_default(model).preprocessing
    lo = min((0.0 - m) / s for m, s in zip(pre.mean, pre.std))
    hi = max((1.0 - m) / s for m, s in zip(pre.mean, pre.std))
    return activation_qparams(lo, hi)


def _ranges(gm: torch.fx.GraphModule, data: np.ndarray) -> dict[str, tuple[float, float]]:
    """min/max of every node's output over the calibration images (one at a time: the
    captured graph has a static batch of 1)."""
    from tqdm import tqdm

    ranges: dict[str, tuple[float, float]] = {}

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n: Any) -> Any:
            out = super().run_node(n)
            if isinstance(out, torch.Tensor) and out.is_floating_point() and out.numel():
                lo, hi = float(out.min()), float(out.max())
                old = ranges.get(n.name)
                ranges[n.name] = (lo, hi) if old is None else (min(old[0], lo),
                                                              max(old[1], hi))
            return out

    rec = Recorder(gm)
    with torch.no_grad(), one_thread():
        for i in tqdm(range(len(data)), desc="calibrating", unit="image", leave=False,
                      disable=len(data) < 64):
            rec.run(torch.from_numpy(np.ascontiguousarray(data[i:i + 1])))
    return ranges


def _verify(model: nn.Module, path: Path, precision: str, size: int,
            calibration: np.ndarray | None, atol: float) -> ExportResult:
    """fp32: max |diff| vs PyTorch on random inputs (batch 3) in the interpreter with
    XNNPACK; int8: top-1 agreement with PyTorch on the calibration images."""
    from mobilenetv2.runtime.phone import litert_runner

    run = litert_runner(path, precision, None)
    if precision == "fp32":
        return verify_fp32(model, run, size, atol, path, "tflite", "LiteRT")
    assert calibration is not None
    return check_agreement(model, run, calibration, path, "tflite")
