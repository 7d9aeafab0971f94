"""Export to ExecuTorch (`.pte`) lowered to the XNNPACK backend, fp32 or int8, verified in
ExecuTorch's own Python runtime.

fp32: the BN-folded network captured by `torch.export` (`common.capture_graph`, batch 1),
`to_edge_transform_and_lower` with the `XnnpackPartitioner` (every conv, clamp, add, mean
and linear is delegated), `to_executorch`. int8: PyTorch's PT2E flow (`torchao`'s
`prepare_pt2e` / `convert_pt2e`, the home of `torch.ao.quantization.quantize_pt2e` since it
left torch) with ExecuTorch's `XNNPACKQuantizer`: per-channel symmetric int8 weights, int8
asymmetric activations, observers calibrated on the user's images; XNNPACK then runs the
quantized graph with its int8 kernels. The program's input and output stay float32 (the
quantize / dequantize at the ends are part of the program), so an app feeds the normalised
image as it would the fp32 program.

What an app needs travels as constant methods of the program, which an app calls like any
method: `mobilenetv2_metadata` (our JSON document as uint8 bytes: preprocessing, labels,
config, precision; `runtime.phone.phone_metadata` reads it), `input_size` (int, the side),
`mean` and `std` (float32 tensors, per channel, on [0, 1] pixels).
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path

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

__all__ = ["export_executorch", "pte_bytes"]

log = logging.getLogger(__name__)


def export_executorch(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    precision: str = "fp32",
    calibration: np.ndarray | None = None,
    input_size: int | None = None,
    verify: bool = True,
    atol: float = DEFAULT_ATOL,
) -> ExportResult:
    """Write `model` as an ExecuTorch program for XNNPACK and verify it in ExecuTorch's
    runtime (arguments as `export.tflite.export_tflite`)."""

    if precision not in ("fp32", "int8"):
        raise UserError(f"--precision {precision}: the executorch export writes fp32 or int8")
    if precision == "int8" and is_detector(model):
        raise UserError("a detector exports to executorch in fp32 only (--precision fp32): "
                        "its int8 check (top-1 agreement) is a classifier's")
    size = example_size(model, input_size)
    data = checked_calibration(precision, calibration)
    content = pte_bytes(model, size, precision, data)
    check = (lambda tmp: _verify(model, tmp, precision, size, data, atol)) if verify else None
    return write_verified(path, content, "executorch", precision, ".pte", check)


def pte_bytes(model: nn.Module, size: int, precision: str = "fp32",
              calibration: np.ndarray | None = None) -> bytes:
    """The `.pte` program of `model` at input side `size`, lowered to XNNPACK."""
    require("executorch", "the executorch export")
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    from mobilenetv2.weights.format import meta_or_default

    example = (torch.zeros(1, 3, size, size),)
    gm = capture_graph(model, size, dynamic_batch=precision == "int8")
    if precision == "int8":
        gm = _quantize(gm, calibration)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ExecuTorch's and torchao's deprecation notices
        ep = torch.export.export(gm, example)
        pre = meta_or_default(model).preprocessing
        io: dict = {"input": {"shape": [1, 3, size, size], "layout": "NCHW",
                              "dtype": "float32"}}
        constants = {}
        if is_detector(model):
            # SSDLite: decoding and NMS stay outside the program (as in its ONNX export);
            # the anchors they need are a constant method (A, 4), normalised (ymin, xmin,
            # ymax, xmax), one row per output row (`ssd_post.postprocess` decodes them).
            io["outputs"] = {"box_codes": {"layout": "NAK", "dtype": "float32"},
                             "class_logits": {"layout": "NAK", "dtype": "float32"}}
            io["anchors"] = {"method": "anchors", "format": "ymin, xmin, ymax, xmax"}
            constants["anchors"] = torch.from_numpy(detector_anchors(model, size))
        else:
            seg = getattr(model.config, "task", None) == "segment"
            io["output"] = {"layout": "NCHW" if seg else "NC", "dtype": "float32"}
        doc = phone_metadata(model, precision, "executorch", io)
        raw = json.dumps(doc).encode()
        constants.update({
            "mobilenetv2_metadata": torch.tensor(list(raw), dtype=torch.uint8),
            "input_size": int(size),
            "mean": torch.tensor(pre.mean, dtype=torch.float32),
            "std": torch.tensor(pre.std, dtype=torch.float32),
        })
        program = to_edge_transform_and_lower(
            ep, partitioner=[XnnpackPartitioner()], constant_methods=constants
        ).to_executorch()
    return bytes(program.buffer)


def _quantize(gm: torch.fx.GraphModule, data: np.ndarray | None) -> torch.fx.GraphModule:
    """PT2E static int8 for XNNPACK: per-channel symmetric weights, calibrated activations."""
    if data is None or len(data) == 0:
        raise UserError("int8 export: no calibration images")
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from tqdm import tqdm

    quantizer = XNNPACKQuantizer().set_global(
        get_symmetric_quantization_config(is_per_channel=True))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_pt2e(gm, quantizer)
        with torch.no_grad(), one_thread():
            # batches of 32 through a graph captured with a symbolic batch: the observers'
            # Python cost is per call, not per image
            for i in tqdm(range(0, len(data), 32), desc="calibrating", unit="batch",
                          leave=False, disable=len(data) < 256):
                prepared(torch.from_numpy(np.ascontiguousarray(data[i:i + 32])))
        return convert_pt2e(prepared)


def _verify(model: nn.Module, path: Path, precision: str, size: int,
            calibration: np.ndarray | None, atol: float) -> ExportResult:
    from mobilenetv2.runtime.phone import executorch_runner

    run = executorch_runner(path, precision, None)
    if precision == "fp32":
        return verify_fp32(model, run, size, atol, path, "executorch", "ExecuTorch")
    assert calibration is not None
    return check_agreement(model, run, calibration, path, "executorch")
