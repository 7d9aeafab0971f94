"""Export to ONNX and TorchScript, each verified numerically against PyTorch.

The ONNX graph is the BN-folded network (`model.fuse`): Conv (with bias), `Clip(0, 6)` for
ReLU6 with constant bounds, `Add` for the shortcuts, `GlobalAveragePool`, `Flatten`, `Gemm`.
tf_same padding (`SamePad2d`) becomes a `Pad` whose amounts are computed from the input
shape, so it stays exact with dynamic height/width. The weights' metadata (config,
preprocessing, labels, provenance) travels in the model's `metadata_props`, one JSON document
per key as in our safetensors files, so a deployed `.onnx` file is self-describing.

Exporter choice (torch 2.14): the torch.export-based exporter (`dynamo=True`, the default
since torch 2.9) lowers global pooling to `ReduceMean` and takes about two minutes for this
model on the loaded 2-core development machine (10 s for width 0.35), and emits
`ReduceMean` + `Reshape` for the pooling; the TorchScript-based exporter produces
`GlobalAveragePool` in under three seconds. `exporter="torchscript"` is therefore our default
and `exporter="dynamo"` stays available. Every export is checked by running ONNX Runtime on
the same inputs as PyTorch (USERS.md point 3).
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mobilenetv2.errors import UserError
from mobilenetv2.model.fuse import fuse, is_fused

__all__ = [
    "ExportResult",
    "export_onnx",
    "export_torchscript",
    "onnx_metadata",
    "require",
    "verify_onnx",
]

log = logging.getLogger(__name__)

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
DEFAULT_ATOL = 1e-4


@dataclass
class ExportResult:
    """Where an export went and how closely it reproduces PyTorch."""

    path: Path
    max_abs_diff: float | None
    format: str

    def __str__(self) -> str:
        diff = "not verified" if self.max_abs_diff is None else (
            f"max |diff| vs PyTorch {self.max_abs_diff:.2e}")
        return f"{self.format} -> {self.path} ({diff})"


def require(module: str, purpose: str) -> Any:
    """Import an optional dependency or raise one clear `UserError` naming the package."""
    import importlib

    pip = {"onnxruntime": "onnxruntime", "openvino": "openvino", "onnx": "onnx"}.get(
        module.split(".")[0], module)
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise UserError(
            f"{purpose} needs the '{pip}' package, which is not installed "
            f"(pip install {pip}): {e}"
        ) from e


def _metadata(model: nn.Module, extra: dict[str, str] | None) -> dict[str, str]:
    from mobilenetv2.weights.format import WeightsMeta

    meta = getattr(model, "meta", None)
    if meta is None and hasattr(model, "config"):
        meta = WeightsMeta(config=model.config)
    props = meta.to_metadata() if meta is not None else {}
    props.setdefault("precision", "fp32")
    props.update(extra or {})
    return props


def _input_size(model: nn.Module, input_size: int | None) -> int:
    if input_size is not None:
        return input_size
    meta = getattr(model, "meta", None)
    if meta is not None:
        return meta.preprocessing.crop
    cfg = getattr(model, "config", None)
    return cfg.resolution if cfg is not None else 224


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    input_size: int | None = None,
    dynamic_batch: bool = True,
    dynamic_hw: bool = False,
    opset: int = 17,
    exporter: str = "torchscript",
    verify: bool = True,
    atol: float = DEFAULT_ATOL,
    metadata: dict[str, str] | None = None,
) -> ExportResult:
    """Export `model` (BN folded first) to ONNX and verify it with ONNX Runtime.

    Args:
        model: A MobileNetV2 classifier, fused or not; with `.meta` its preprocessing and
            labels are written to `metadata_props`.
        path: Output `.onnx` file (parents are created).
        input_size: Side of the example input; default the weights' crop size.
        dynamic_batch: Batch dimension symbolic ("batch").
        dynamic_hw: Height and width symbolic too (any size >= the network's minimum).
        opset: ONNX opset (17 default: supported by every current runtime).
        exporter: "torchscript" (default) or "dynamo" (see the module docstring).
        verify: Run ONNX Runtime on the inputs PyTorch saw; raise above `atol`.
        atol: Largest accepted max abs difference of the logits.
        metadata: Extra `metadata_props` entries.

    Raises:
        UserError: The exported graph disagrees with PyTorch by more than `atol`.
    """
    if exporter not in ("torchscript", "dynamo"):
        raise ValueError(f"exporter must be 'torchscript' or 'dynamo', got {exporter!r}")
    onnx = require("onnx", "ONNX export")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    reference = model.eval()
    net = reference if is_fused(reference) else fuse(reference, channels_last=False)
    net = net.to(memory_format=torch.contiguous_format).float()
    size = _input_size(model, input_size)
    example = torch.randn(2, 3, size, size)
    axes = {0: "batch"} if dynamic_batch else {}
    if dynamic_hw:
        axes.update({2: "height", 3: "width"})
    with warnings.catch_warnings():
        # The legacy exporter's deprecation notice, and the tracer's note that SamePad2d's
        # max(total, 0) is recorded as a constant branch: for every MobileNetV2 layer
        # kernel >= stride, so the branch is the same for all sizes (tested with odd sizes).
        warnings.simplefilter("ignore")
        if exporter == "torchscript":
            torch.onnx.export(
                net, (example,), str(path), dynamo=False, opset_version=opset,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: {0: "batch"} if dynamic_batch
                              else {}},
                do_constant_folding=True,
            )
        else:
            dims: dict[int, Any] = {}
            if dynamic_batch:
                dims[0] = torch.export.Dim("batch")
            if dynamic_hw:
                lo = getattr(model, "min_input_size", 32)
                dims[2] = torch.export.Dim("height", min=lo, max=8192)
                dims[3] = torch.export.Dim("width", min=lo, max=8192)
            import contextlib
            import io

            # the dynamo exporter prints its progress to stdout; library code stays quiet
            with contextlib.redirect_stdout(io.StringIO()) as chatter:
                torch.onnx.export(
                    net, (example,), str(path), dynamo=True, opset_version=max(opset, 18),
                    input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                    dynamic_shapes={"x": dims} if dims else None, verbose=False,
                )
            log.debug("%s", chatter.getvalue())
    proto = onnx.load(str(path))
    _constants_to_initializers(proto)
    del proto.metadata_props[:]
    for key, value in _metadata(model, metadata).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = "MobileNetV2 (Sandler et al., CVPR 2018) exported by mobilenetv2"
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    diff = None
    if verify:
        sizes = [size] + ([size + 13] if dynamic_hw else [])
        diff = verify_onnx(reference, path, sizes=sizes, atol=atol)
    result = ExportResult(path=path, max_abs_diff=diff, format="onnx")
    log.debug("exported %s", result)
    return result


def _constants_to_initializers(proto: Any) -> None:
    """Turn `Constant` nodes (the Clip bounds 0 and 6) into initializers: a graph of only
    compute ops, with constant bounds every runtime and quantizer folds."""
    keep = []
    for node in proto.graph.node:
        attrs = {a.name: a for a in node.attribute}
        if node.op_type == "Constant" and "value" in attrs and not node.domain:
            tensor = attrs["value"].t
            tensor.name = node.output[0]
            proto.graph.initializer.append(tensor)
        else:
            keep.append(node)
    del proto.graph.node[:]
    proto.graph.node.extend(keep)


def verify_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    sizes: list[int] | None = None,
    batch: int = 3,
    atol: float = DEFAULT_ATOL,
    inputs: torch.Tensor | None = None,
) -> float:
    """Max abs difference between ONNX Runtime (else OpenVINO) and `model` on the same inputs.

    The batch (3) differs from the export's example batch (2), which checks the dynamic
    batch axis too. Raises `UserError` when the difference exceeds `atol`.
    """
    run = _runtime(path)
    model = model.eval()
    worst = 0.0
    gen = torch.Generator().manual_seed(0)
    batches = [inputs] if inputs is not None else [
        torch.randn(batch, 3, s, s, generator=gen) for s in (sizes or [224])]
    for x in batches:
        with torch.inference_mode():
            ref = model(x.to(memory_format=torch.channels_last)).float().numpy()
        got = run(x.numpy())
        worst = max(worst, float(np.abs(got - ref).max()))
    if worst > atol:
        raise UserError(
            f"{path}: ONNX runtime output differs from PyTorch by {worst:.3g} "
            f"(more than {atol:g}); the export is wrong"
        )
    return worst


def _runtime(path: str | os.PathLike):
    """A function running the ONNX file: ONNX Runtime, else OpenVINO in true fp32."""
    import importlib

    try:
        ort = importlib.import_module("onnxruntime")
    except ImportError:
        ort = None
    if ort is not None:
        ort.set_default_logger_severity(3)
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        return lambda x: sess.run(None, {name: x})[0]
    try:
        ov = importlib.import_module("openvino")
    except ImportError:
        ov = None
    if ov is None:
        require("onnxruntime", "verifying an ONNX export")
    core = ov.Core()
    # f32 hint: OpenVINO would otherwise run bf16 on CPUs that have it
    compiled = core.compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return lambda x: compiled({0: x})[0]


def export_torchscript(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    input_size: int | None = None,
    verify: bool = True,
    atol: float = DEFAULT_ATOL,
) -> ExportResult:
    """Trace the fused model to TorchScript (`torch.jit.load` needs no mobilenetv2 code).

    Tracing rather than scripting: the traced graph is the plain conv/clamp/add sequence,
    and the metadata goes into the archive's `extra_files` (`meta.json`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    reference = model.eval()
    net = reference if is_fused(reference) else fuse(reference)
    size = _input_size(model, input_size)
    example = torch.randn(2, 3, size, size).to(memory_format=torch.channels_last)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(net, (example,), check_trace=False)
        traced = torch.jit.freeze(traced.eval())
    files = {"meta.json": json.dumps(_metadata(model, None))}
    with warnings.catch_warnings():
        # torch 2.14 marks torch.jit deprecated; TorchScript is still what C++ (libtorch)
        # deployments load, so it is offered as long as torch ships it.
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(traced, str(path), _extra_files=files)
        loaded = torch.jit.load(str(path)) if verify else None
    diff = None
    if loaded is not None:
        x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            diff = float((loaded(x) - reference(x)).abs().max())
        if diff > atol:
            raise UserError(f"{path}: TorchScript output differs from PyTorch by {diff:.3g}")
    return ExportResult(path=path, max_abs_diff=diff, format="torchscript")


def onnx_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The `metadata_props` of an ONNX file as a dict (empty for foreign files)."""
    onnx = require("onnx", "reading ONNX metadata")
    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}
