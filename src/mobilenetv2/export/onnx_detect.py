"""ONNX export of an SSDLite detector: the network in the graph, decoding and NMS outside.

The graph computes `box_codes` (N, A, 4) and `class_logits` (N, A, C) (BN folded, as the
classifier's export), and carries the anchors (A, 4), normalised (ymin, xmin, ymax, xmax), as
a constant third output `anchors`, so the file alone is enough. Decoding, score threshold and
NMS stay outside (NMS inside ONNX graphs is where runtimes differ most), in
`mobilenetv2.model.heads.ssd_post.postprocess`, the same function PyTorch's `detect` uses:
an ONNX Runtime user gets PyTorch's boxes (verified here after post-processing: boxes agree
to `atol` of the image side, TF's normalised box units; fp32 rounding of the two runtimes'
convolutions moves box corners by ~1e-6 of the side, about 2e-4 px at 128x128).
The input size is fixed at export (anchors depend on it); the batch is dynamic.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mobilenetv2._files import atomic_write
from mobilenetv2._optional import require
from mobilenetv2.errors import UserError
from mobilenetv2.export.common import ExportResult, boxes_diff, export_metadata
from mobilenetv2.model.fuse import fuse, is_fused
from mobilenetv2.model.heads.ssd_post import postprocess
from mobilenetv2.runtime.onnx_meta import set_onnx_metadata

__all__ = ["DETECTOR_OUTPUTS", "export_detector_onnx", "onnx_detector_outputs",
           "verify_detector_onnx"]

DETECTOR_OUTPUTS = ("box_codes", "class_logits", "anchors")


class _WithAnchors(nn.Module):
    def __init__(self, net: nn.Module, anchors: torch.Tensor) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("anchors", anchors)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        codes, logits = self.net(x)
        return codes, logits, self.anchors


def export_detector_onnx(model: nn.Module, path: str | Path, *, input_size: int | None = None,
                         opset: int = 17, verify: bool = True, atol: float = 1e-4
                         ) -> ExportResult:
    """Export an `SSDLite` (BN folded) with its anchors; verify boxes with ONNX Runtime.

    Returns the largest box difference (input pixels) after the shared post-processing.
    """
    onnx = require("onnx", "ONNX export")
    size = input_size or model.config.resolution
    path = Path(path)
    net = model if is_fused(model) else fuse(model.eval(), channels_last=False)
    net = net.to(memory_format=torch.contiguous_format).float().eval()
    wrapper = _WithAnchors(net, model.anchors(size, size).clone()).eval()
    diffs: list[float | None] = []

    def write(tmp: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapper, (torch.randn(2, 3, size, size),), str(tmp), dynamo=False,
                opset_version=opset, input_names=["input"], output_names=list(DETECTOR_OUTPUTS),
                dynamic_axes={"input": {0: "batch"}, "box_codes": {0: "batch"},
                              "class_logits": {0: "batch"}},
                do_constant_folding=True)
        proto = onnx.load(str(tmp))
        set_onnx_metadata(proto, export_metadata(model, {"task": "detect"}))
        proto.doc_string = ("SSDLite-MobileNetV2 (Sandler et al., CVPR 2018, section 6.2) "
                            "exported by mobilenetv2: decode + NMS outside the graph")
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
        # The reference is the BN-folded network the graph holds (anchors from the model):
        # folding itself is exact math, proven in tests/test_fuse.py; rounding of the fold
        # moves boxes of a random-weight model by ~2e-4 px at 128x128.
        diffs.append(verify_detector_onnx(net, tmp, size, atol=atol, anchors=wrapper.anchors)
                     if verify else None)

    try:
        atomic_write(path, write, suffix=".onnx")
    except UserError as e:
        raise UserError(str(e).replace(".onnx.tmp", ".onnx")) from e
    return ExportResult(path=path, max_abs_diff=diffs[0], format="onnx")


def onnx_detector_outputs(path: str | Path, x: np.ndarray) -> tuple[np.ndarray, ...]:
    """(box codes, class logits, anchors) of an exported detector on ONNX Runtime."""
    from mobilenetv2.runtime.backends import helper_threads, onnxruntime_session

    sess = onnxruntime_session(path, helper_threads())
    return tuple(sess.run(list(DETECTOR_OUTPUTS), {sess.get_inputs()[0].name: x}))


def verify_detector_onnx(model: nn.Module, path: str | Path, size: int, atol: float = 1e-4,
                         inputs: torch.Tensor | None = None, score_threshold: float = 0.01,
                         anchors: torch.Tensor | None = None) -> float:
    """Largest difference of post-processed boxes (pixels) between ONNX Runtime and PyTorch,
    on the same inputs; `UserError` when it exceeds `atol` x the input side (normalised box
    units) or when the detections differ in number or labels."""
    x = inputs if inputs is not None else torch.randn(
        3, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        codes, logits = model.eval()(x)
    anchors_ref = anchors if anchors is not None else model.anchors(size, size)
    ref = postprocess(codes, logits, anchors_ref, (size, size), score_threshold)
    c, lg, onnx_anchors = onnx_detector_outputs(path, x.numpy())
    # The raw outputs first: an untrained net has no detections to compare.
    raw = max(float(np.abs(c - codes.numpy()).max()), float(np.abs(lg - logits.numpy()).max()))
    if not raw < 1e-3:
        raise UserError(f"{path}: ONNX Runtime's box codes / logits differ from PyTorch's by "
                        f"{raw:.3g} (more than 1e-3); the export is wrong")
    got = postprocess(torch.from_numpy(c), torch.from_numpy(lg), torch.from_numpy(onnx_anchors),
                      (size, size), score_threshold)
    diff = boxes_diff(ref, got)
    if diff / size > atol:
        raise UserError(f"{path}: ONNX Runtime's detections differ from PyTorch's by {diff:.3g} "
                        f"pixels (more than {atol:g} of the {size}-pixel side); the export is "
                        "wrong")
    return diff
