"""Export to ONNX, verified numerically against PyTorch on ONNX Runtime (else OpenVINO).

The ONNX graph is the BN-folded network (`model.fuse`): Conv (with bias), `Clip(0, 6)` for
ReLU6 with constant bounds, `Add` for the shortcuts, `GlobalAveragePool`, `Flatten`, `Gemm`.
tf_same padding (`SamePad2d`) becomes the `Conv`'s own asymmetric `pads` when height and
width are static (the default), and the `Conv`'s `auto_pad="SAME_UPPER"` (TF's SAME, the odd
pixel after) when they are dynamic, so it stays exact at every size with no `Pad` op and no
shape arithmetic left (without ONNX Runtime to check the amounts, the computed `Pad`s stay).
The weights' metadata (config, preprocessing, labels, provenance) travels in the model's
`metadata_props`, one JSON document per key as in our safetensors files
(`runtime.onnx_meta`), so a deployed `.onnx` file is self-describing.

Exporter choice (torch 2.14): the torch.export-based exporter (`dynamo=True`, the default
since torch 2.9) lowers global pooling to `ReduceMean` and takes about two minutes for this
model on the loaded 2-core development machine (10 s for width 0.35), and emits
`ReduceMean` + `Reshape` for the pooling; the TorchScript-based exporter produces
`GlobalAveragePool` in under three seconds. `exporter="torchscript"` is therefore our default
and `exporter="dynamo"` stays available. Every export is checked by running ONNX Runtime on
the same inputs as PyTorch (USERS.md point 3).
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mobilenetv2._files import atomic_write
from mobilenetv2._optional import require
from mobilenetv2.errors import UserError
from mobilenetv2.export.common import DEFAULT_ATOL, ExportResult, example_size, export_metadata
from mobilenetv2.model.fuse import fuse, is_fused
from mobilenetv2.runtime.backends import onnx_runner
from mobilenetv2.runtime.onnx_meta import set_onnx_metadata

__all__ = ["INPUT_NAME", "OUTPUT_NAME", "export_onnx", "opset_range", "verify_onnx"]

log = logging.getLogger(__name__)

INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def opset_range(exporter: str = "torchscript") -> tuple[int, int]:
    """The ONNX opsets the installed torch exports, as torch itself declares them: the
    TorchScript exporter's range, or the dynamo exporter's (which raises anything below 18
    to 18)."""
    from torch.onnx import _constants as c

    low = getattr(c, "ONNX_MIN_OPSET", 7)
    high = getattr(c, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", getattr(c, "ONNX_MAX_OPSET", 17))
    if exporter == "dynamo":
        return low, getattr(c, "ONNX_MAX_OPSET", high)
    return low, high


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
    low, high = opset_range(exporter)
    if isinstance(opset, bool) or not isinstance(opset, int) or not low <= opset <= high:
        raise UserError(f"--opset {opset}: the installed torch's {exporter} ONNX exporter "
                        f"writes opsets {low} to {high}")
    onnx = require("onnx", "ONNX export")
    path = Path(path)
    reference = model.eval()
    diffs: list[float | None] = []

    def write(tmp: Path) -> None:
        # Exported, checked and verified under a temporary name: a failed verification
        # leaves no file, and the destination is replaced only by a verified model.
        try:
            diffs.append(_export_to(onnx, model, reference, tmp, input_size=input_size,
                                    dynamic_batch=dynamic_batch, dynamic_hw=dynamic_hw,
                                    opset=opset, exporter=exporter, verify=verify,
                                    atol=atol, metadata=metadata))
        except UserError as e:  # name the file the user asked for, not the temporary one
            raise UserError(str(e).replace(str(tmp), str(path))) from e

    atomic_write(path, write, suffix=".onnx")
    diff = diffs[0]
    result = ExportResult(path=path, max_abs_diff=diff, format="onnx")
    log.debug("exported %s", result)
    return result


def _export_to(onnx: Any, model: nn.Module, reference: nn.Module, path: Path, *,
               input_size: int | None, dynamic_batch: bool, dynamic_hw: bool, opset: int,
               exporter: str, verify: bool, atol: float,
               metadata: dict[str, str] | None) -> float | None:
    net = reference if is_fused(reference) else fuse(reference, channels_last=False)
    net = net.to(memory_format=torch.contiguous_format).float()
    size = example_size(model, input_size)
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
    _fold_pads_into_convs(proto, size, dynamic=dynamic_hw)
    set_onnx_metadata(proto, export_metadata(model, metadata))
    proto.doc_string = "MobileNetV2 (Sandler et al., CVPR 2018) exported by mobilenetv2"
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    diff = None
    if verify:
        sizes = [size] + ([size + 13] if dynamic_hw else [])
        diff = verify_onnx(reference, path, sizes=sizes, atol=atol)
    return diff


def _fold_pads_into_convs(proto: Any, size: int, dynamic: bool = False) -> None:
    """For static height and width: write each zero `Pad` that feeds one `Conv` into the
    `Conv`'s own asymmetric `pads` (begin H, begin W, end H, end W), and drop the shape
    arithmetic that computed it. For dynamic ones: `auto_pad="SAME_UPPER"` on the `Conv`
    (ONNX's own TF SAME: the odd pixel after), once running the graph at two sizes, one
    odd, has shown that every such `Pad` computes exactly that (`_same_upper`).

    tf_same's `SamePad2d` computes its amounts from the input's shape, which traces to a
    chain of Shape/Gather/Sub/Cast ops and a `Pad` that ONNX Runtime does not merge into the
    convolution: that made the tf_same export 1.5x slower than the symmetric one on ONNX
    Runtime (issue 13). At a static size the amounts are constants; they are read by running
    the graph once (ONNX Runtime), so this holds for however the exporter computed them.
    Without ONNX Runtime the graph keeps its `Pad`s (exact, only slower).
    """
    from onnx import TensorProto, helper, numpy_helper

    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    candidates = []
    for node in graph.node:
        users = consumers.get(node.output[0], [])
        mode = next((helper.get_attribute_value(a) for a in node.attribute
                     if a.name == "mode"), b"constant")
        if node.op_type == "Pad" and not node.domain and mode == b"constant" \
                and len(node.input) >= 2 and len(users) == 1 and users[0].op_type == "Conv" \
                and not any(a.name == "auto_pad" for a in users[0].attribute):
            candidates.append((node, users[0]))
    if not candidates:
        return
    if dynamic:
        _drop(graph, _same_upper(proto, candidates, size))
        return
    # Pad's `pads` input is int64 by the ONNX spec; its fill value has the data's type.
    wanted = {pad.input[1]: TensorProto.INT64 for pad, _ in candidates
              if pad.input[1] not in inits}
    wanted.update({pad.input[2]: TensorProto.FLOAT for pad, _ in candidates
                   if len(pad.input) > 2 and pad.input[2] and pad.input[2] not in inits})
    values = {name: numpy_helper.to_array(inits[name])
              for pad, _ in candidates for name in pad.input[1:3] if name in inits}
    if wanted:
        session = _probe_session(proto, wanted)
        if session is None:
            return
        feed = {graph.input[0].name: np.zeros((1, 3, size, size), np.float32)}
        names = list(wanted)
        values.update(zip(names, session.run(names, feed)))
    folded = set()
    for pad, conv in candidates:
        amounts = np.asarray(values[pad.input[1]]).astype(int).tolist()
        fill = values.get(pad.input[2]) if len(pad.input) > 2 and pad.input[2] else None
        if (fill is not None and np.asarray(fill).any()) or len(amounts) != 8 \
                or any(amounts[i] for i in (0, 1, 4, 5)) or min(amounts) < 0:
            continue  # a non-zero fill, padding of batch/channels, or a crop: not a conv pad
        old = next((a for a in conv.attribute if a.name == "pads"), None)
        base = list(old.ints) if old is not None else [0, 0, 0, 0]
        if old is not None:
            conv.attribute.remove(old)
        conv.attribute.append(helper.make_attribute("pads", [
            base[0] + amounts[2], base[1] + amounts[3],
            base[2] + amounts[6], base[3] + amounts[7]]))
        conv.input[0] = pad.input[0]
        folded.add(id(pad))
    _drop(graph, folded)



def _probe_session(proto: Any, wanted: dict[str, int]) -> Any:
    """An unoptimised ONNX Runtime session on a copy of `proto` that also outputs the
    intermediate tensors `wanted` (name -> TensorProto type), so the export can read the
    pad amounts the graph computes; None where ONNX Runtime is not installed."""
    from onnx import helper

    try:
        import onnxruntime as ort
    except ImportError:
        log.info("onnxruntime is not installed: the tf_same Pads stay separate ops")
        return None
    probe = type(proto)()
    probe.CopyFrom(proto)
    probe.graph.output.extend(helper.make_tensor_value_info(n, t, None)
                              for n, t in wanted.items())
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(probe.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])

def _same_upper(proto: Any, candidates: list[tuple[Any, Any]], size: int) -> set[int]:
    """The `Pad`s (of `candidates`, `(Pad, Conv)` pairs) replaced by `auto_pad="SAME_UPPER"`
    on their `Conv`: those whose amounts, computed by the graph at sizes `size` and
    `size + 13`, are TF SAME's for their conv at both (a dilation-1 conv without pads of
    its own). Without ONNX Runtime to run the probe, none (the Pads stay: exact, slower)."""
    from onnx import TensorProto, helper, numpy_helper

    from mobilenetv2.model.layers import tf_same_padding

    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    image = graph.input[0].name

    def zero_fill(pad: Any) -> bool:
        fill = pad.input[2] if len(pad.input) > 2 else ""
        return not fill or (fill in inits and not numpy_helper.to_array(inits[fill]).any())

    def attr(node: Any, name: str, default: list[int]) -> list[int]:
        return next((list(a.ints) for a in node.attribute if a.name == name), default)

    pairs = [(pad, conv) for pad, conv in candidates
             if pad.input[1] not in inits and zero_fill(pad)
             and attr(conv, "dilations", [1, 1]) == [1, 1]
             and not any(attr(conv, "pads", [0, 0, 0, 0]))
             and len(attr(conv, "kernel_shape", [])) == 2]
    if not pairs:
        return set()
    wanted = {pad.input[1]: TensorProto.INT64 for pad, _ in pairs}
    wanted.update({pad.input[0]: TensorProto.FLOAT for pad, _ in pairs
                   if pad.input[0] != image})
    session = _probe_session(proto, wanted)
    if session is None:
        return set()
    names = list(wanted)
    good = {id(pad) for pad, _ in pairs}
    for side in (size, size + 13):
        feed = np.zeros((1, 3, side, side), np.float32)
        values = dict(zip(names, session.run(names, {image: feed})))
        values[image] = feed
        for pad, conv in pairs:
            h, w = values[pad.input[0]].shape[-2:]
            (kh, kw), (sh, sw) = attr(conv, "kernel_shape", []), attr(conv, "strides", [1, 1])
            (top, bottom), (left, right) = tf_same_padding(h, kh, sh), tf_same_padding(w, kw, sw)
            if np.asarray(values[pad.input[1]]).astype(int).tolist() != [
                    0, 0, top, left, 0, 0, bottom, right]:
                good.discard(id(pad))
    for pad, conv in pairs:
        if id(pad) in good:
            keep = [a for a in conv.attribute if a.name != "pads"]
            del conv.attribute[:]
            conv.attribute.extend(keep)
            conv.attribute.append(helper.make_attribute("auto_pad", "SAME_UPPER"))
            conv.input[0] = pad.input[0]
    return good


def _drop(graph: Any, folded: set[int]) -> None:
    """Remove the nodes in `folded` (by id) and whatever then feeds nothing."""
    nodes = [n for n in graph.node if id(n) not in folded]
    # The shape arithmetic that fed the folded Pads now feeds nothing: drop it, and the
    # initializers only it used.
    outputs = {o.name for o in graph.output}
    while True:
        used = outputs | {name for n in nodes for name in n.input}
        alive = [n for n in nodes if any(o in used for o in n.output)]
        if len(alive) == len(nodes):
            break
        nodes = alive
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for n in nodes for name in n.input}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


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
    run = onnx_runner(path, "verifying an ONNX export")
    model = model.eval()
    worst = 0.0
    gen = torch.Generator().manual_seed(0)
    batches = [inputs] if inputs is not None else [
        torch.randn(batch, 3, s, s, generator=gen) for s in (sizes or [224])]
    for x in batches:
        with torch.inference_mode():
            ref = model(x.to(memory_format=torch.channels_last)).float().numpy()
        got = run(x.numpy())
        if not np.isfinite(ref).all():  # NaN compares as no difference: check first
            raise UserError(f"{path}: the model's own outputs are not finite (NaN or inf): "
                            f"its weights are broken, nothing to verify against")
        if not np.isfinite(got).all():
            raise UserError(f"{path}: the exported model computes non-finite outputs")
        worst = max(worst, float(np.abs(got - ref).max()))
    if worst > atol:
        raise UserError(
            f"{path}: ONNX runtime output differs from PyTorch by {worst:.3g} "
            f"(more than {atol:g}); the export is wrong"
        )
    return worst
