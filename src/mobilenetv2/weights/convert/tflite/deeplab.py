"""TensorFlow Lite Mobile DeepLabv3 models -> our segmenter (paper section 6.3).

The official DeepLab exports (`research/deeplab/export_model.py`, then the TFLite converter):
the quantized PASCAL VOC models Coral publishes (`deeplabv3_mnv2_pascal_quant.tflite`, width
1.0, and its `_dm05_` twin, 513x513 uint8 in, ARG_MAX out) and the float 257x257
`deeplabv3_257_mv_gpu.tflite` of the TFLite hosted models (logits out). After the
MobileNetV2 blocks (`match.match_backbone`) the graph holds:

    AVERAGE_POOL_2D (global) -> CONV_2D 1x1 ReLU ("image_pooling") -> RESIZE_BILINEAR
    CONV_2D 1x1 ReLU on the features ("aspp0")   [+ three 3x3 dilated CONV_2D: ASPP]
    CONCATENATION -> CONV_2D 1x1 ReLU ("concat_projection") -> CONV_2D 1x1 + bias ("logits")
    RESIZE_BILINEAR (align_corners) up to the input size, sometimes via an identity resize
    [ARG_MAX over the classes]

Each piece is checked (inputs, kernels, activations, dilations against `aspp_rates`, the
resize mode), the width is found as for classifiers but with DeepLab's depth-multiplier
rounding tried too (`round_nearest=1`), and BatchNorm is folded in the file: each BN becomes
the exact identity described in `convert.py`. The concatenation's order is read from the
graph, and the projection's input channels are put in our order ([image pool, aspp0, ASPP]).
Weights are dequantized; the quantized file's activations are quantized too, so our float
model agrees with the interpreter up to quantization error (tests/test_segment_convert.py).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mobilenetv2.config import ModelConfig
from mobilenetv2.data.segmentation import PASCAL_VOC_CLASSES as PASCAL_VOC_LABELS
from mobilenetv2.errors import UserError
from mobilenetv2.model.arch import resolve
from mobilenetv2.model.heads.deeplabv3 import HEAD_CHANNELS, aspp_rates
from mobilenetv2.weights.convert.fit import fit_width, nearest_width
from mobilenetv2.weights.convert.tflite.convert import (
    BN_EPS,
    BN_MOMENTUM,
    _arch_facts,
    _conv_bn,
    _dw,
    _ohwi,
    _preprocessing,
    _quant_kind,
)
from mobilenetv2.weights.convert.tflite.match import (
    Block,
    Conv,
    _check_pool,
    _Walker,
    backbone_convs,
    check_convs,
    match_backbone,
)
from mobilenetv2.weights.convert.tflite.reader import TFLiteGraph
from mobilenetv2.weights.format import Converted, WeightsMeta, source_provenance

__all__ = ["PASCAL_VOC_LABELS", "DeepLabNet", "convert_deeplab", "is_deeplab", "match_deeplab"]

log = logging.getLogger(__name__)

_EXTRA = frozenset({"CONCATENATION", "RESIZE_BILINEAR", "ARG_MAX"})
_WHAT = "a Mobile DeepLabv3 (MobileNetV2) segmenter"


def is_deeplab(graph: TFLiteGraph) -> bool:
    """Whether a graph has the operators only DeepLab (of what we convert) has."""
    return any(op.kind in _EXTRA for op in graph.ops)


@dataclass
class DeepLabNet:
    """The layers of a Mobile DeepLabv3 found in the file."""

    stem: Conv
    blocks: list[Block]
    image_pool: Conv
    aspp0: Conv
    aspp: list[Conv]
    project: Conv
    logits: Conv
    concat_order: list[str]  # branch names in the file's concatenation order
    argmax: bool
    resizes: list[dict[str, Any]] = field(default_factory=list)


def match_deeplab(graph: TFLiteGraph, source: str) -> DeepLabNet:
    """Find backbone, head branches, projection, logits, upsampling and ARG_MAX."""
    w = _Walker(graph, source, _EXTRA, _WHAT)
    if len(graph.inputs) != 1:
        raise w.error(f"{len(graph.inputs)} inputs (a segmenter has one)")
    stem, blocks, x = match_backbone(w)
    pool_out = None
    image_pool = aspp0 = None
    upsampled = None
    aspp: list[Conv] = []
    # The branches, in whatever order the exporter wrote them, up to the concatenation.
    while (op := w.peek()) is not None and op.kind != "CONCATENATION":
        src = w.canon(op.inputs[0])
        if op.kind in ("AVERAGE_POOL_2D", "MEAN") and src == x and pool_out is None:
            _check_pool(w, op, graph.tensors[op.inputs[0]].shape)  # global, not a window
            w.pos += 1
            pool_out = w.canon(op.outputs[0])
        elif op.kind == "CONV_2D" and pool_out is not None and src == pool_out:
            image_pool = w.conv(["CONV_2D"], "image pooling conv", src)
        elif op.kind == "RESIZE_BILINEAR" and image_pool is not None and src == image_pool.y:
            w.pos += 1
            upsampled = w.canon(op.outputs[0])
        elif op.kind == "CONV_2D" and src == x:
            k = graph.tensors[op.inputs[1]].shape[1]
            if k == 1 and aspp0 is None:
                aspp0 = w.conv(["CONV_2D"], "1x1 branch (aspp0)", x)
            else:
                aspp.append(w.conv(["CONV_2D"], f"ASPP branch {len(aspp) + 1}", x))
        else:
            raise w.error(f"operator {op.index} ({op.kind}) is not one of DeepLab's head "
                          "branches (image pooling, 1x1 conv, ASPP)")
    if image_pool is None or upsampled is None or aspp0 is None:
        missing = [n for n, v in (("image pooling", upsampled), ("1x1 branch", aspp0)) if v is None]
        raise w.error(f"the head has no {' or '.join(missing)} branch")
    concat = w.peek()
    if concat is None:
        raise w.error("no CONCATENATION after the head's branches")
    if concat.options.get("axis") not in (3, -1):
        raise w.error(f"operator {concat.index} concatenates along axis "
                      f"{concat.options.get('axis')}, not the channels")
    names = {upsampled: "image_pool", aspp0.y: "aspp0"}
    names |= {c.y: f"aspp.{i}" for i, c in enumerate(aspp)}
    order = [names.get(w.canon(t), "?") for t in concat.inputs]
    if sorted(order) != sorted(names.values()):
        raise w.error(f"operator {concat.index} (CONCATENATION) does not join exactly the "
                      f"head's branches")
    w.pos += 1
    project = w.conv(["CONV_2D"], "concat projection", w.canon(concat.outputs[0]))
    logits = w.conv(["CONV_2D"], "logits", project.y)
    y = logits.y
    resizes = []
    while (op := w.peek()) is not None and op.kind == "RESIZE_BILINEAR":
        w.take(["RESIZE_BILINEAR"], "logits upsampling", y)
        resizes.append({"index": op.index, "shape": graph.tensors[op.outputs[0]].shape,
                        **op.options})
        y = w.canon(op.outputs[0])
    argmax = False
    if (op := w.peek()) is not None and op.kind == "ARG_MAX":
        w.take(["ARG_MAX"], "per-pixel class (ARG_MAX)", y)
        axis = w.consts.get(op.inputs[1])
        if axis is None or int(np.asarray(axis).ravel()[0]) not in (3, -1):
            raise w.error(f"operator {op.index} (ARG_MAX) is not over the classes")
        y, argmax = w.canon(op.outputs[0]), True
    if (op := w.peek()) is not None:
        raise w.error(f"unexpected operator {op.index} ({op.kind}) after the logits")
    if not graph.outputs or w.canon(graph.outputs[0]) != y:
        raise w.error("the model's output is not the (upsampled) logits or their ARG_MAX")
    return DeepLabNet(stem, blocks, image_pool, aspp0, aspp, project, logits, order, argmax,
                      resizes)


def _check_head(net: DeepLabNet, graph: TFLiteGraph, size: int, feat: int,
                source: str) -> None:
    def fail(conv: Conv, what: str) -> UserError:
        return UserError(f"{source}: not {_WHAT}: {conv.name}: {what}")

    branches = [(net.image_pool, 1, "relu"), (net.aspp0, 1, "relu"), (net.project, 1, "relu")]
    branches += [(c, 3, "relu") for c in net.aspp]
    for conv, k, act in branches + [(net.logits, 1, "none")]:
        opts = conv.op.options
        if conv.weight.shape[1:3] != (k, k):
            raise fail(conv, f"kernel {conv.weight.shape[1]}x{conv.weight.shape[2]}, "
                             f"DeepLab has {k}x{k} here")
        if opts["activation"] != act or opts["stride"] != (1, 1):
            raise fail(conv, f"activation {opts['activation']}, stride {opts['stride']}; "
                             f"DeepLab has {act}, stride 1")
        if conv.bias is None or conv.bias.shape != (conv.weight.shape[0],):
            raise fail(conv, "missing or mis-shaped bias")
        if conv is not net.logits and conv.weight.shape[0] != HEAD_CHANNELS:
            raise fail(conv, f"{conv.weight.shape[0]} channels, DeepLab's head has "
                             f"{HEAD_CHANNELS}")
    for r in net.resizes:
        h, w = r["shape"][1:3]
        if (h, w) != (feat, feat) and not r["align_corners"]:
            raise UserError(f"{source}: operator {r['index']} upsamples the logits without "
                            "align_corners; our model upsamples as DeepLab does (True)")
    if not net.resizes or net.resizes[-1]["shape"][1:3] != (size, size):
        raise UserError(f"{source}: the logits are not upsampled to the {size}x{size} input")


def _infer_config(net: DeepLabNet, size: int, source: str) -> ModelConfig:
    """The config whose `resolve()` reproduces the backbone; DeepLab's width rounding too."""
    facts = {
        "stem": net.stem.weight.shape[0],
        "stem_stride": net.stem.op.options["stride"][0],
        "blocks": [
            (b.expand is not None, b.depthwise.weight.shape[3], b.project.weight.shape[0],
             b.depthwise.op.options["stride"][0], b.depthwise.op.options["dilation"][0],
             b.residual)
            for b in net.blocks
        ],
    }
    total = facts["stem_stride"]
    for b in facts["blocks"]:
        total *= b[3]
    if total not in (8, 16):
        raise UserError(f"{source}: output stride {total}; Mobile DeepLabv3 runs at 8 or 16")
    base = ModelConfig(task="segment", resolution=size, num_classes=net.logits.weight.shape[0],
                       bn_eps=BN_EPS, bn_momentum=BN_MOMENTUM, padding="tf_same",
                       output_stride=total, aspp=bool(net.aspp), dropout=0.1)
    last = facts["blocks"][-1][2] if facts["blocks"] else None

    def fits(arch: Any) -> bool:
        got = _arch_facts(arch)
        del got["head"]
        return got == facts

    for divisor in (8, 1):  # TF-slim's rounding, then DeepLab's depth multiplier (divisible_by=1)
        cfg = fit_width(base.replace(round_nearest=divisor), fits, last)
        if cfg is not None:
            return cfg
    guess = base.replace(width=nearest_width(last), round_nearest=1)
    raise UserError(
        f"{source}: channel counts/strides do not match MobileNetV2 at any width: the file has "
        f"stem {facts['stem']}, blocks {[b[2] for b in facts['blocks']]}; width {guess.width} "
        f"would have {[b.out_channels for b in resolve(guess).blocks]}"
    )


def _state_dict(net: DeepLabNet) -> dict[str, torch.Tensor]:
    sd: dict[str, torch.Tensor] = {}
    sd |= _conv_bn("backbone.stem", _ohwi(net.stem.weight), net.stem.bias)
    for i, b in enumerate(net.blocks):
        p = f"backbone.blocks.{i}"
        if b.expand is not None:
            sd |= _conv_bn(f"{p}.expand", _ohwi(b.expand.weight), b.expand.bias)
        sd |= _conv_bn(f"{p}.depthwise", _dw(b.depthwise.weight), b.depthwise.bias)
        sd |= _conv_bn(f"{p}.project", _ohwi(b.project.weight), b.project.bias)
    sd |= _conv_bn("head.image_pool", _ohwi(net.image_pool.weight), net.image_pool.bias)
    sd |= _conv_bn("head.aspp0", _ohwi(net.aspp0.weight), net.aspp0.bias)
    for i, c in enumerate(net.aspp):
        sd |= _conv_bn(f"head.aspp.{i}", _ohwi(c.weight), c.bias)
    # The projection's input channels follow the file's concatenation order; ours is
    # [image pool, aspp0, aspp.0 ...] (TF model.py's order).
    proj = _ohwi(net.project.weight)
    slices = {name: proj[:, k * HEAD_CHANNELS:(k + 1) * HEAD_CHANNELS]
              for k, name in enumerate(net.concat_order)}
    ours = ["image_pool", "aspp0"] + [f"aspp.{i}" for i in range(len(net.aspp))]
    sd |= _conv_bn("head.project", torch.cat([slices[n] for n in ours], dim=1), net.project.bias)
    sd["head.logits.weight"] = _ohwi(net.logits.weight)
    sd["head.logits.bias"] = torch.from_numpy(np.ascontiguousarray(net.logits.bias, np.float32))
    return sd


def convert_deeplab(graph: TFLiteGraph, path: Path, labels: Sequence[str] | None) -> Converted:
    """A read DeepLab `.tflite` graph -> our config, state dict and metadata."""
    source = str(path)
    net = match_deeplab(graph, source)
    inp = graph.tensors[graph.inputs[0]]
    if len(inp.shape) != 4 or inp.shape[3] != 3 or inp.shape[1] != inp.shape[2]:
        raise UserError(f"{source}: input shape {inp.shape}, expected (1, S, S, 3)")
    size = int(inp.shape[1])
    feat, _ = check_convs(backbone_convs(net.stem, net.blocks), size, source)
    _check_head(net, graph, size, feat, source)
    cfg = _infer_config(net, size, source)
    if tuple(c.op.options["dilation"][0] for c in net.aspp) != aspp_rates(cfg):
        raise UserError(f"{source}: ASPP rates "
                        f"{[c.op.options['dilation'][0] for c in net.aspp]} differ from "
                        f"DeepLab's {list(aspp_rates(cfg))} at output stride {cfg.output_stride}")
    n = cfg.num_classes
    if labels is not None:
        labels = list(labels)
        if len(labels) != n:
            raise UserError(f"{len(labels)} labels given for {source}, which has {n} classes")
    else:
        labels = list(PASCAL_VOC_LABELS) if n == len(PASCAL_VOC_LABELS) else None
    pre, input_desc = _preprocessing(inp, size, source)
    convs = [net.stem, *(c for b in net.blocks for c in (b.expand, b.depthwise, b.project)
                         if c is not None), net.image_pool, net.aspp0, *net.aspp, net.project,
             net.logits]
    kinds = sorted({_quant_kind(graph.tensors[c.op.inputs[1]]) for c in convs})
    meta = WeightsMeta(
        config=cfg,
        preprocessing=pre,
        labels=labels,
        provenance={**source_provenance(path, "tflite"), "file": path.name,
                    "description": graph.description},
        extra={"tflite": {
            "input": input_desc,
            "weights": ", ".join(kinds),
            "output": "ARG_MAX of the upsampled logits" if net.argmax else "logits",
            "bn": "folded in the file; identity BN (eps 2^-10, running_var 1 - eps)",
        }},
    )
    log.info("converted %s: Mobile DeepLabv3, width %s, %dx%d, %d classes, output stride %d%s",
             source, cfg.width, size, size, n, cfg.output_stride, ", ASPP" if cfg.aspp else "")
    return Converted(state_dict=_state_dict(net), meta=meta)
