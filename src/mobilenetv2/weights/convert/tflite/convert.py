"""TensorFlow Lite MobileNetV2 classifiers -> our model: `convert_tflite(path)`.

The file is read (`reader.py`) and its operator graph matched against the architecture
(`match.py`); here the width, resolution, class count, output stride and last-layer rule are
inferred from the file (`fit.fit_width` reproduces every layer's channels, strides and
dilations), and the weights mapped onto our modules. Any official MobileNetV2 classifier
converts (TF-slim hosted models of every width and resolution, float or quantized).

- Weights: CONV_2D is OHWI, DEPTHWISE_CONV_2D is 1HWC (depth multiplier 1), both made OIHW.
- BatchNorm is already folded into conv weights and biases (TFLite's converter does this).
  Our modules keep a BN after every conv, so each BN becomes an exact identity plus the
  folded bias: weight 1, bias b, running_mean 0, running_var 1 - eps with eps = 2^-10. With a
  power-of-two eps, 1 - eps is exact in float32 and var + eps == 1 exactly, so the BN
  computes x + b with no rounding beyond the addition itself.
- The quantized model's activations are quantized too; our float model is not, so outputs
  agree to quantization error only (tests/test_tflite.py measures it on real photos).

Preprocessing comes from the input tensor: uint8 with scale s and zero point z means the
network sees s * (pixel - z), i.e. mean = z / 255 and std = 1 / (255 s) on [0, 1] pixels
((pixel - 128) / 128 for the official models: mean = std = 128 / 255). int8 inputs are taken
as pixel - 128 (TFLite's convention); float inputs are taken to expect [-1, 1] (the TF-slim
convention; the flatbuffer does not say). Images are resized to the model's input size
exactly (no crop), bilinear, as the TFLite examples do.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mobilenetv2.config import ModelConfig
from mobilenetv2.data.preprocessing import Preprocessing
from mobilenetv2.errors import UserError
from mobilenetv2.model.arch import ArchSpec, resolve
from mobilenetv2.weights.convert.fit import fit_width, nearest_width
from mobilenetv2.weights.convert.tflite.match import (
    Network,
    all_convs,
    check_layers,
    match_network,
)
from mobilenetv2.weights.convert.tflite.reader import TensorInfo, TFLiteGraph, read_tflite_graph
from mobilenetv2.weights.format import Converted, WeightsMeta, source_provenance
from mobilenetv2.weights.imagenet import imagenet_labels

__all__ = ["BN_EPS", "convert_tflite_classifier"]

log = logging.getLogger(__name__)

# 2^-10: close to TF's 1e-3, and exact in float32 so the identity BN is exact (see above).
BN_EPS = 2.0**-10
# TF's BatchNorm decay 0.999 in PyTorch's convention (only matters if BN is ever trained).
BN_MOMENTUM = 1e-3


def _layer_facts(net: Network) -> dict[str, Any]:
    """Channel counts, strides and dilations as the file has them."""
    stem_out = net.stem.weight.shape[0]
    blocks = []
    for b in net.blocks:
        dw = b.depthwise
        blocks.append(
            (
                b.expand is not None,
                dw.weight.shape[3],
                b.project.weight.shape[0],
                dw.op.options["stride"][0],
                dw.op.options["dilation"][0],
                b.residual,
            )
        )
    return {
        "stem": stem_out,
        "stem_stride": net.stem.op.options["stride"][0],
        "blocks": blocks,
        "head": net.head.weight.shape[0],
    }


def _arch_facts(arch: ArchSpec) -> dict[str, Any]:
    return {
        "stem": arch.stem_channels,
        "stem_stride": arch.stem_stride,
        "blocks": [
            (b.has_expand, b.hidden_channels, b.out_channels, b.stride, b.dilation, b.residual)
            for b in arch.blocks
        ],
        "head": arch.head_channels,
    }


def _infer_config(net: Network, resolution: int, num_classes: int, source: str,
                  padding: str = "tf_same") -> ModelConfig:
    """The `ModelConfig` whose `resolve()` reproduces every layer of the file (several widths
    can round to the same channels, and then each is the same network)."""
    facts = _layer_facts(net)
    total_stride = facts["stem_stride"]
    for b in facts["blocks"]:
        total_stride *= b[3]
    output_stride = total_stride if total_stride in (8, 16) else 32
    if facts["stem_stride"] == 1:
        # small_input (stride 8 by itself, the CIFAR-style preset): output_stride stays 32
        output_stride = 32
    base = ModelConfig(
        resolution=max(resolution, 32),
        num_classes=num_classes,
        bn_eps=BN_EPS,
        bn_momentum=BN_MOMENTUM,
        padding=padding,
        output_stride=output_stride,
        small_input=facts["stem_stride"] == 1,
    )
    last = facts["blocks"][-1][2] if facts["blocks"] else None
    cfg = fit_width(base, lambda arch: _arch_facts(arch) == facts, last)
    if cfg is not None:
        return cfg
    guess = base.replace(width=nearest_width(last))
    expected = _arch_facts(resolve(guess))
    raise UserError(
        f"{source}: channel counts/strides do not match MobileNetV2 at any width: the file has "
        f"stem {facts['stem']}, {len(facts['blocks'])} blocks "
        f"{[b[2] for b in facts['blocks']]}, head {facts['head']}; width {guess.width} would "
        f"have stem {expected['stem']}, {len(expected['blocks'])} blocks "
        f"{[b[2] for b in expected['blocks']]}, head {expected['head']}"
    )


def _conv_bn(prefix: str, weight: torch.Tensor, bias: np.ndarray) -> dict[str, torch.Tensor]:
    """Conv weight plus the identity BatchNorm that carries the folded bias."""
    c = weight.shape[0]
    return {
        f"{prefix}.conv.weight": weight.contiguous(),
        f"{prefix}.bn.weight": torch.ones(c),
        f"{prefix}.bn.bias": torch.from_numpy(np.ascontiguousarray(bias, np.float32)),
        f"{prefix}.bn.running_mean": torch.zeros(c),
        f"{prefix}.bn.running_var": torch.full((c,), 1.0 - BN_EPS),
        f"{prefix}.bn.num_batches_tracked": torch.tensor(0, dtype=torch.long),
    }


def _ohwi(w: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(w.transpose(0, 3, 1, 2), np.float32))


def _dw(w: np.ndarray) -> torch.Tensor:
    # 1HWC -> C1HW (groups = C)
    return torch.from_numpy(np.ascontiguousarray(w[0].transpose(2, 0, 1)[:, None], np.float32))


def _state_dict(net: Network) -> dict[str, torch.Tensor]:
    sd: dict[str, torch.Tensor] = {}
    sd |= _conv_bn("stem", _ohwi(net.stem.weight), net.stem.bias)
    for i, b in enumerate(net.blocks):
        if b.expand is not None:
            sd |= _conv_bn(f"blocks.{i}.expand", _ohwi(b.expand.weight), b.expand.bias)
        sd |= _conv_bn(f"blocks.{i}.depthwise", _dw(b.depthwise.weight), b.depthwise.bias)
        sd |= _conv_bn(f"blocks.{i}.project", _ohwi(b.project.weight), b.project.bias)
    sd |= _conv_bn("head", _ohwi(net.head.weight), net.head.bias)
    lw = net.logits.weight
    lw = lw.reshape(lw.shape[0], -1)  # (O, 1, 1, I) or (O, I)
    sd["classifier.weight"] = torch.from_numpy(np.ascontiguousarray(lw, np.float32))
    sd["classifier.bias"] = torch.from_numpy(np.ascontiguousarray(net.logits.bias, np.float32))
    return sd


def convert_tflite_classifier(
    path: str | os.PathLike, labels: Sequence[str] | None = None,
    graph: TFLiteGraph | None = None,
) -> Converted:
    """Convert a MobileNetV2 `.tflite` classifier (float or quantized) to our format
    (`graph`: the file, already read). `tflite.convert_tflite` also takes segmenters.

    Args:
        path: The `.tflite` file.
        labels: Class names, one per output (e.g. the 1001 lines of the hosted models'
            `labels.txt`). Default: "background" + torchvision's ImageNet names for 1001
            outputs, the ImageNet names for 1000, none otherwise.

    Returns:
        Our config (width, resolution, class count inferred; `padding="tf_same"`), a state
        dict for it, and metadata (preprocessing from the input tensor, labels, provenance).

    Raises:
        UserError: the file is not a TFLite flatbuffer, or not a MobileNetV2 classifier
            (the message names the first operator that does not fit), or `labels` has the
            wrong length.
    """
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: no such file")
    source = str(p)
    graph = read_tflite_graph(p) if graph is None else graph
    net = match_network(graph, source)
    inp = graph.tensors[graph.inputs[0]]
    if len(inp.shape) != 4 or inp.shape[3] != 3:
        raise UserError(f"{source}: input shape {inp.shape}, expected (1, H, W, 3)")
    h, wd = inp.shape[1:3]
    if h != wd:
        raise UserError(f"{source}: non-square input {h}x{wd} is not supported")
    num_classes = int(net.logits.weight.shape[0])
    padding = check_layers(net, h, source)
    cfg = _infer_config(net, h, num_classes, source, padding)
    state = _state_dict(net)
    ours = _our_metadata(graph, source)  # a file `mobilenetv2 export --format tflite` wrote
    if labels is None and ours is not None and ours.get("labels") is not None:
        labels = list(ours["labels"])
    if labels is not None:
        labels = list(labels)
        if len(labels) != num_classes:
            raise UserError(
                f"{len(labels)} labels given for {source}, which has {num_classes} classes"
            )
    else:
        labels = imagenet_labels(num_classes)
    pre, input_desc = _preprocessing(inp, h, source)
    if ours is not None:  # what the exporter recorded, not the conventions guessed above
        pre = Preprocessing.from_dict(ours["preprocessing"])
        input_desc = f"{input_desc} (preprocessing from the file's mobilenetv2 metadata)"
    kinds = sorted({_quant_kind(graph.tensors[c.op.inputs[1]]) for c in all_convs(net)})
    meta = WeightsMeta(
        config=cfg,
        preprocessing=pre,
        labels=labels,
        provenance={
            **source_provenance(p, "tflite"),
            "file": p.name,
            "description": graph.description,
        },
        extra={
            "tflite": {
                "input": input_desc,
                "weights": ", ".join(kinds),
                "bn": "folded in the file; identity BN (eps 2^-10, running_var 1 - eps)",
            }
        },
    )
    log.info("converted %s: width %s, %dx%d, %d classes, weights %s", source, cfg.width, h, h,
             num_classes, ", ".join(kinds))
    return Converted(state_dict=state, meta=meta)


def _our_metadata(graph: Any, source: str) -> dict[str, Any] | None:
    """The JSON document our exporter writes (metadata entry `mobilenetv2`), if any."""
    import json

    raw = graph.metadata.get("mobilenetv2")
    if raw is None:
        return None
    try:
        doc = json.loads(raw)
        if not isinstance(doc, dict) or not isinstance(doc.get("preprocessing"), dict):
            raise ValueError("no preprocessing")
        return doc
    except ValueError as e:
        raise UserError(f"{source}: corrupt mobilenetv2 metadata ({e})") from e


def _quant_kind(t: TensorInfo) -> str:
    if not t.quantized:
        return t.dtype
    per = "per-channel" if t.scale is not None and t.scale.size > 1 else "per-tensor"
    return f"{t.dtype} {per}"


def _preprocessing(inp: TensorInfo, size: int, source: str) -> tuple[Preprocessing, str]:
    """mean/std (on [0, 1] pixels) that reproduce what the network's input tensor means."""
    if inp.dtype in ("uint8", "int8"):
        if not inp.quantized or inp.scale is None or inp.scale.size != 1:
            raise UserError(f"{source}: {inp.dtype} input without a per-tensor scale")
        scale, zp = float(inp.scale[0]), float(inp.zero_point[0])
        # int8 image inputs hold pixel - 128 (TFLite's convention for int8 models).
        offset = 128.0 if inp.dtype == "int8" else 0.0
        mean, std = (zp + offset) / 255.0, 1.0 / (255.0 * scale)
        desc = f"{inp.dtype}, scale {scale:g}, zero point {int(zp)}"
    elif inp.dtype == "float32":
        mean = std = 0.5  # TF-slim / Keras [-1, 1]; the flatbuffer does not record it
        desc = "float32, assumed [-1, 1]"
    else:
        raise UserError(f"{source}: unsupported input type {inp.dtype}")
    pre = Preprocessing(
        resize=size,
        crop=size,
        resize_mode="exact",
        interpolation="bilinear",
        mean=(mean,) * 3,
        std=(std,) * 3,
    )
    return pre, desc


