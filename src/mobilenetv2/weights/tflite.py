"""TensorFlow Lite MobileNetV2 classifiers -> our model: `convert_tflite(path)`.

Reads the `.tflite` flatbuffer itself (schema: tensorflow/compiler/mlir/lite/schema/
schema.fbs, parsed with the `tflite` package): operators and their options (padding, strides,
dilation, fused activation), tensors, constant buffers and quantization parameters. It then
matches the operator graph against the architecture of the paper (Sandler et al., 2018,
Table 2): stem conv, 17 inverted residual blocks (optional 1x1 expand, 3x3 depthwise, linear
1x1 project, residual ADD), 1x1 head conv, global average pool, logits. Width, resolution,
class count, output stride and the last-layer rule are inferred from the file and checked
against `resolve()` layer by layer, so any official MobileNetV2 classifier converts (TF-slim
hosted models of every width and resolution, float or quantized) and anything else fails
loudly, naming the operator that does not fit.

What the file holds, and how it maps onto our modules:
- Weights: CONV_2D is OHWI, DEPTHWISE_CONV_2D is 1HWC (depth multiplier 1). Quantized
  weights (uint8 per-tensor, int8 per-channel along `quantized_dimension`) are dequantized,
  `scale * (q - zero_point)`; float16 weights (behind a DEQUANTIZE op) are widened.
- Biases: int32 with scale = input scale x weight scale (per channel), read from the bias
  tensor's own quantization parameters when present.
- BatchNorm is already folded into conv weights and biases (TFLite's converter does this).
  Our modules keep a BN after every conv, so each BN becomes an exact identity plus the
  folded bias: weight 1, bias b, running_mean 0, running_var 1 - eps with eps = 2^-10. With a
  power-of-two eps, 1 - eps is exact in float32 and var + eps == 1 exactly, so the BN
  computes x + b with no rounding beyond the addition itself.
- Padding: TF "SAME" (asymmetric for stride 2) is kept as `padding="tf_same"`; a VALID conv
  after an explicit PAD op is accepted when the pads equal SAME's at the model's resolution.
- Activations must be ReLU6 (fused) where the paper has them and none after the project
  convs (linear bottleneck); the classifier is a 1x1 CONV_2D or FULLY_CONNECTED with bias.
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

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mobilenetv2.config import ModelConfig
from mobilenetv2.data.preprocessing import Preprocessing
from mobilenetv2.errors import UserError
from mobilenetv2.model.arch import ArchSpec, resolve
from mobilenetv2.model.layers import tf_same_padding
from mobilenetv2.weights.format import Converted, WeightsMeta
from mobilenetv2.weights.imagenet import imagenet_labels

__all__ = ["BN_EPS", "OFFICIAL_WIDTHS", "convert_tflite", "read_tflite"]

log = logging.getLogger(__name__)

# 2^-10: close to TF's 1e-3, and exact in float32 so the identity BN is exact (see above).
BN_EPS = 2.0**-10
# TF's BatchNorm decay 0.999 in PyTorch's convention (only matters if BN is ever trained).
BN_MOMENTUM = 1e-3
OFFICIAL_WIDTHS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)

# tflite.TensorType -> numpy dtype, for the types a MobileNetV2 file may hold.
_DTYPES = {
    0: np.float32,
    1: np.float16,
    2: np.int32,
    3: np.uint8,
    4: np.int64,
    7: np.int16,
    9: np.int8,
    10: np.float64,
}
_ACT = {0: "none", 1: "relu", 2: "relu_n1_to_1", 3: "relu6", 4: "tanh", 5: "sign_bit"}
# Operators that do not change values in the float model: requantization, and the reshape /
# squeeze / softmax after the logits (we output logits; softmax is monotonic).
_PASS_THROUGH = {"QUANTIZE", "DEQUANTIZE", "RESHAPE", "SQUEEZE", "SOFTMAX"}
_LAYERS = {
    "CONV_2D",
    "DEPTHWISE_CONV_2D",
    "ADD",
    "AVERAGE_POOL_2D",
    "MEAN",
    "FULLY_CONNECTED",
    "PAD",
}


@dataclass
class TensorInfo:
    """One tensor of the flatbuffer: shape, type, quantization, constant data if any."""

    index: int
    name: str
    shape: tuple[int, ...]
    dtype: str
    scale: np.ndarray | None = None
    zero_point: np.ndarray | None = None
    quantized_dimension: int = 0
    data: np.ndarray | None = None

    @property
    def quantized(self) -> bool:
        return self.scale is not None and self.scale.size > 0


@dataclass
class OpInfo:
    """One operator: builtin name, input/output tensor indices, decoded options."""

    index: int
    kind: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class TFLiteGraph:
    """The single subgraph of a `.tflite` file, decoded."""

    tensors: list[TensorInfo]
    ops: list[OpInfo]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    description: str = ""


def read_tflite(path: str | os.PathLike) -> TFLiteGraph:
    """Decode a `.tflite` file: operators with options, tensors with quantization and data.

    Raises:
        UserError: not a TFLite flatbuffer, corrupt, or several subgraphs.
    """
    p = Path(path)
    data = p.read_bytes()
    return _decode(data, str(p))


def _decode(data: bytes, source: str) -> TFLiteGraph:
    try:
        import tflite
        from tflite.utils import BUILTIN_OPCODE2NAME
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise UserError(
            "reading .tflite files needs the 'tflite' package: pip install tflite"
        ) from e
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise UserError(f"{source}: not a TensorFlow Lite model (no 'TFL3' file identifier)")
    try:
        model = tflite.Model.GetRootAs(data, 0)
        if model.SubgraphsLength() != 1:
            raise UserError(
                f"{source}: {model.SubgraphsLength()} subgraphs; a MobileNetV2 classifier "
                "has exactly one"
            )
        g = model.Subgraphs(0)
        tensors = [_tensor(model, g.Tensors(i), i, data) for i in range(g.TensorsLength())]
        ops = []
        for i in range(g.OperatorsLength()):
            op = g.Operators(i)
            oc = model.OperatorCodes(op.OpcodeIndex())
            # Files from before schema v3a keep the code in the int8 deprecated field only.
            code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
            kind = BUILTIN_OPCODE2NAME.get(code, f"opcode {code}")
            if kind == "CUSTOM":
                kind = f"CUSTOM ({(oc.CustomCode() or b'').decode(errors='replace')})"
            ops.append(
                OpInfo(
                    index=i,
                    kind=kind,
                    inputs=tuple(int(t) for t in op.InputsAsNumpy()) if op.InputsLength() else (),
                    outputs=tuple(int(t) for t in op.OutputsAsNumpy())
                    if op.OutputsLength()
                    else (),
                    options=_options(op, kind),
                )
            )
        inputs = tuple(int(t) for t in g.InputsAsNumpy())
        outputs = tuple(int(t) for t in g.OutputsAsNumpy())
        desc = (model.Description() or b"").decode(errors="replace")
    except UserError:
        raise
    except Exception as e:  # flatbuffers raises assorted errors on corrupt input
        raise UserError(
            f"{source}: corrupt or truncated TensorFlow Lite flatbuffer "
            f"({type(e).__name__}: {e})"
        ) from e
    return TFLiteGraph(tensors, ops, inputs, outputs, desc)


def _tensor(model: Any, t: Any, index: int, data: bytes) -> TensorInfo:
    dtype_code = t.Type()
    if dtype_code not in _DTYPES:
        dtype = f"type {dtype_code}"
    else:
        dtype = np.dtype(_DTYPES[dtype_code]).name
    shape = tuple(int(s) for s in t.ShapeAsNumpy()) if t.ShapeLength() else ()
    info = TensorInfo(index, (t.Name() or b"").decode(errors="replace"), shape, dtype)
    q = t.Quantization()
    if q is not None and q.ScaleLength():
        info.scale = q.ScaleAsNumpy().astype(np.float64)
        info.zero_point = (
            q.ZeroPointAsNumpy().astype(np.int64)
            if q.ZeroPointLength()
            else np.zeros(info.scale.shape, np.int64)
        )
        info.quantized_dimension = int(q.QuantizedDimension())
    buf = model.Buffers(t.Buffer()) if t.Buffer() < model.BuffersLength() else None
    raw: bytes | None = None
    if buf is not None and buf.DataLength():
        raw = buf.DataAsNumpy().tobytes()
    elif buf is not None and buf.Offset() > 1:
        # Files over 2 GB keep buffers after the flatbuffer, addressed by offset and size.
        raw = data[buf.Offset(): buf.Offset() + buf.Size()]
    if raw is not None:
        if t.Sparsity() is not None:
            raise UserError(f"tensor {info.name!r} is sparse; sparse weights are not supported")
        if dtype_code not in _DTYPES:
            raise UserError(f"tensor {info.name!r} has unsupported type {dtype_code}")
        arr = np.frombuffer(raw, dtype=np.dtype(_DTYPES[dtype_code]).newbyteorder("<"))
        info.data = arr.reshape(shape) if shape else arr
    return info


def _options(op: Any, kind: str) -> dict[str, Any]:
    import tflite

    cls = {
        "CONV_2D": tflite.Conv2DOptions,
        "DEPTHWISE_CONV_2D": tflite.DepthwiseConv2DOptions,
        "AVERAGE_POOL_2D": tflite.Pool2DOptions,
        "ADD": tflite.AddOptions,
        "FULLY_CONNECTED": tflite.FullyConnectedOptions,
        "MEAN": tflite.ReducerOptions,
    }.get(kind)
    table = op.BuiltinOptions()
    if cls is None or table is None:
        return {}
    o = cls()
    o.Init(table.Bytes, table.Pos)
    out: dict[str, Any] = {}
    if kind in ("CONV_2D", "DEPTHWISE_CONV_2D", "AVERAGE_POOL_2D"):
        out["padding"] = "SAME" if o.Padding() == 0 else "VALID"
        out["stride"] = (o.StrideH(), o.StrideW())
    if kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
        out["dilation"] = (o.DilationHFactor(), o.DilationWFactor())
    if kind == "DEPTHWISE_CONV_2D":
        out["depth_multiplier"] = o.DepthMultiplier()
    if kind == "AVERAGE_POOL_2D":
        out["filter"] = (o.FilterHeight(), o.FilterWidth())
    if kind == "MEAN":
        out["keep_dims"] = bool(o.KeepDims())
    else:
        out["activation"] = _ACT.get(o.FusedActivationFunction(), "unknown")
    return out


# ----------------------------------------------------------------------------------------
# Matching the graph against the architecture


@dataclass
class _Conv:
    """A conv layer found in the file, with its dequantized float weights."""

    op: OpInfo
    x: int  # input activation tensor (after pass-through ops are skipped)
    y: int  # output tensor
    weight: np.ndarray  # file layout: OHWI (conv) or 1HWC (depthwise) or (O, I) (FC)
    bias: np.ndarray | None
    pad: tuple[int, int, int, int] | None = None  # explicit PAD op before it: t, b, l, r

    @property
    def name(self) -> str:
        return f"operator {self.op.index} ({self.op.kind})"


@dataclass
class _Block:
    expand: _Conv | None
    depthwise: _Conv
    project: _Conv
    residual: bool


@dataclass
class _Network:
    stem: _Conv
    blocks: list[_Block]
    head: _Conv
    logits: _Conv
    pool_op: OpInfo


class _Walker:
    """Consumes the value-changing operators in execution order, checking connectivity."""

    def __init__(self, graph: TFLiteGraph, source: str) -> None:
        self.g, self.source = graph, source
        self.alias: dict[int, int] = {}
        self.consts: dict[int, np.ndarray] = {}
        self.layers: list[OpInfo] = []
        for t in graph.tensors:
            if t.data is not None:
                self.consts[t.index] = _dequantize(t)
        for op in graph.ops:
            if op.kind == "DEQUANTIZE" and op.inputs[0] in self.consts:
                # float16 (or int8) weights widened at runtime: a constant for us.
                self.consts[op.outputs[0]] = self.consts[op.inputs[0]]
            elif op.kind in _PASS_THROUGH:
                self.alias[op.outputs[0]] = self.canon(op.inputs[0])
            elif op.kind in _LAYERS:
                self.layers.append(op)
            else:
                raise self.error(
                    f"operator {op.index} is {op.kind}, which a MobileNetV2 classifier does not "
                    f"have (expected only {', '.join(sorted(_LAYERS | _PASS_THROUGH))})"
                )
        self.pos = 0

    def canon(self, t: int) -> int:
        while t in self.alias:
            t = self.alias[t]
        return t

    def error(self, message: str) -> UserError:
        return UserError(f"{self.source}: not a MobileNetV2 classifier TFLite can convert: "
                         f"{message}")

    def peek(self, offset: int = 0) -> OpInfo | None:
        i = self.pos + offset
        return self.layers[i] if i < len(self.layers) else None

    def kinds_ahead(self, n: int) -> list[str]:
        """Kinds of the next `n` layers, PAD ops skipped (a PAD belongs to the conv after it)."""
        return [op.kind for op in self.layers[self.pos:] if op.kind != "PAD"][:n]

    def take(self, kinds: Sequence[str], role: str, x: int) -> OpInfo:
        op = self.peek()
        if op is None or op.kind not in kinds:
            found = "the end of the graph" if op is None else f"operator {op.index} ({op.kind})"
            raise self.error(f"expected {' or '.join(kinds)} for the {role}, found {found}")
        if self.canon(op.inputs[0]) != x:
            raise self.error(
                f"operator {op.index} ({op.kind}, the {role}) does not read the previous "
                f"layer's output: the graph is not a MobileNetV2 chain"
            )
        self.pos += 1
        return op

    def conv(self, kinds: Sequence[str], role: str, x: int) -> _Conv:
        pad = None
        op = self.peek()
        if op is not None and op.kind == "PAD":
            self.take(["PAD"], f"{role}'s padding", x)
            pads = self.consts.get(op.inputs[1])
            if pads is None or pads.shape != (4, 2) or pads[0].any() or pads[3].any():
                raise self.error(f"operator {op.index} (PAD) pads other than height and width")
            pad = (int(pads[1, 0]), int(pads[1, 1]), int(pads[2, 0]), int(pads[2, 1]))
            x = self.canon(op.outputs[0])
        op = self.take(kinds, role, x)
        weight = self.consts.get(op.inputs[1])
        if weight is None:
            raise self.error(f"operator {op.index} ({role}) has non-constant weights")
        bias = None
        if len(op.inputs) > 2 and op.inputs[2] >= 0:
            bias = self._bias(op)
        return _Conv(op, x, self.canon(op.outputs[0]), weight, bias, pad)

    def _bias(self, op: OpInfo) -> np.ndarray:
        t = self.g.tensors[op.inputs[2]]
        if t.data is None:
            if op.inputs[2] in self.consts:
                return self.consts[op.inputs[2]]
            raise self.error(f"operator {op.index} has a non-constant bias")
        if t.quantized or t.dtype == "float32" or t.dtype == "float16":
            return self.consts[op.inputs[2]]
        # int32 bias without its own parameters: scale = input scale x weight scale.
        x_t, w_t = self.g.tensors[op.inputs[0]], self.g.tensors[op.inputs[1]]
        if not (x_t.quantized and w_t.quantized):
            raise self.error(f"operator {op.index}: integer bias without quantization scales")
        scale = x_t.scale * w_t.scale
        return (t.data.astype(np.float64) * scale).astype(np.float32)


def _dequantize(t: TensorInfo) -> np.ndarray:
    """Float32 values of a constant tensor: `scale * (q - zero_point)` along its axis."""
    assert t.data is not None
    q = t.data
    if not t.quantized or q.dtype.kind == "f":
        return q.astype(np.float32)
    scale, zp = t.scale, t.zero_point
    assert scale is not None and zp is not None
    if scale.size > 1:
        shape = [1] * q.ndim
        shape[t.quantized_dimension] = scale.size
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    return ((q.astype(np.float64) - zp) * scale).astype(np.float32)


def _match(graph: TFLiteGraph, source: str) -> _Network:
    """Find stem, blocks, head, pool and logits in the operator list (execution order)."""
    w = _Walker(graph, source)
    if len(graph.inputs) != 1:
        raise w.error(f"{len(graph.inputs)} inputs (an image classifier has one)")
    x = w.canon(graph.inputs[0])
    stem = w.conv(["CONV_2D"], "stem conv", x)
    x = stem.y
    blocks: list[_Block] = []
    while True:
        ahead = w.kinds_ahead(2)
        if ahead[:1] == ["CONV_2D"] and ahead[1:] == ["DEPTHWISE_CONV_2D"]:
            has_expand = True
        elif ahead[:1] == ["DEPTHWISE_CONV_2D"]:
            has_expand = False
        else:
            break  # a 1x1 conv followed by the pool: the head
        n = len(blocks)
        block_in = x
        expand = None
        if has_expand:
            expand = w.conv(["CONV_2D"], f"expand conv of block {n}", x)
            x = expand.y
        dw = w.conv(["DEPTHWISE_CONV_2D"], f"depthwise conv of block {n}", x)
        project = w.conv(["CONV_2D"], f"project conv of block {n}", dw.y)
        x = project.y
        residual = False
        add = w.peek()
        if add is not None and add.kind == "ADD":
            if {w.canon(t) for t in add.inputs} != {block_in, project.y}:
                raise w.error(f"operator {add.index} (ADD) does not add block {n}'s input to "
                              "its output")
            if add.options.get("activation", "none") != "none":
                raise w.error(f"operator {add.index}: the residual add of block {n} has a "
                              f"fused {add.options['activation']} (MobileNetV2 has none)")
            w.pos += 1
            x = w.canon(add.outputs[0])
            residual = True
        blocks.append(_Block(expand, dw, project, residual))
    head = w.conv(["CONV_2D"], "head conv", x)
    pool = w.take(["AVERAGE_POOL_2D", "MEAN"], "global average pool", head.y)
    _check_pool(w, pool, graph.tensors[head.op.outputs[0]].shape)
    logits = w.conv(["CONV_2D", "FULLY_CONNECTED"], "classifier", w.canon(pool.outputs[0]))
    if w.peek() is not None:
        extra = w.peek()
        raise w.error(f"unexpected operator {extra.index} ({extra.kind}) after the classifier")
    if logits.bias is None:
        raise w.error(f"{logits.name}: the classifier has no bias")
    if not graph.outputs or w.canon(graph.outputs[0]) != logits.y:
        raise w.error("the model's output is not the classifier's (logits or softmax)")
    return _Network(stem, blocks, head, logits, pool)


def _check_pool(w: _Walker, pool: OpInfo, feature_shape: tuple[int, ...]) -> None:
    if pool.kind == "MEAN":
        axes = w.consts.get(pool.inputs[1])
        if axes is None or sorted(int(a) for a in axes.ravel()) != [1, 2]:
            raise w.error(f"operator {pool.index} (MEAN) does not average over height and width")
        return
    h, wd = feature_shape[1:3]
    if pool.options["filter"] != (h, wd) or pool.options["padding"] != "VALID":
        raise w.error(
            f"operator {pool.index} (AVERAGE_POOL_2D) has a {pool.options['filter']} window "
            f"({pool.options['padding']}) on a {h}x{wd} feature map: not a global average pool"
        )


# ----------------------------------------------------------------------------------------
# Config inference and checks


def _layer_facts(net: _Network) -> dict[str, Any]:
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


def _infer_config(net: _Network, resolution: int, num_classes: int, source: str) -> ModelConfig:
    """The `ModelConfig` whose `resolve()` reproduces every layer of the file.

    Official widths are tried first, then widths 0.05 to 4 in steps of 0.01; several widths
    can round to the same channels, and then each is the same network.
    """
    facts = _layer_facts(net)
    total_stride = facts["stem_stride"]
    for b in facts["blocks"]:
        total_stride *= b[3]
    output_stride = total_stride if total_stride in (8, 16) else 32
    base = ModelConfig(
        resolution=max(resolution, 32),
        num_classes=num_classes,
        bn_eps=BN_EPS,
        bn_momentum=BN_MOMENTUM,
        padding="tf_same",
        output_stride=output_stride,
        small_input=facts["stem_stride"] == 1,
    )
    candidates = list(OFFICIAL_WIDTHS) + _grid(facts)
    for width in candidates:
        for fine in (True, False):
            cfg = base.replace(width=width, finegrain_classification_mode=fine)
            if _arch_facts(resolve(cfg)) == facts:
                return cfg
    guess = base.replace(width=round(facts["blocks"][-1][2] / 320, 2) or 1.0)
    expected = _arch_facts(resolve(guess))
    raise UserError(
        f"{source}: channel counts/strides do not match MobileNetV2 at any width: the file has "
        f"stem {facts['stem']}, {len(facts['blocks'])} blocks "
        f"{[b[2] for b in facts['blocks']]}, head {facts['head']}; width {guess.width} would "
        f"have stem {expected['stem']}, {len(expected['blocks'])} blocks "
        f"{[b[2] for b in expected['blocks']]}, head {expected['head']}"
    )


def _check_layers(net: _Network, resolution: int, source: str) -> None:
    """Kernel sizes, padding and activations: everything `resolve()` does not describe."""

    def fail(conv: _Conv, what: str) -> UserError:
        return UserError(f"{source}: {conv.name}: {what}")

    size = resolution
    convs: list[tuple[_Conv, int, str]] = [(net.stem, 3, "relu6")]
    for b in net.blocks:
        if b.expand is not None:
            convs.append((b.expand, 1, "relu6"))
        convs += [(b.depthwise, 3, "relu6"), (b.project, 1, "none")]
    convs += [(net.head, 1, "relu6")]
    for conv, k, act in convs:
        wshape = conv.weight.shape
        if wshape[1:3] != (k, k):
            raise fail(conv, f"kernel {wshape[1]}x{wshape[2]}, MobileNetV2 has {k}x{k} here")
        opts = conv.op.options
        if opts["stride"][0] != opts["stride"][1] or opts["dilation"][0] != opts["dilation"][1]:
            raise fail(conv, f"unequal strides {opts['stride']} or dilations {opts['dilation']}")
        if opts["activation"] != act:
            raise fail(conv, f"fused activation {opts['activation']}, expected {act}"
                       + (" (linear bottleneck)" if act == "none" else ""))
        out_ch = wshape[0]
        if conv.op.kind == "DEPTHWISE_CONV_2D":
            # 1HWC; depth_multiplier 0 is what some converters write for "1".
            out_ch = wshape[3]
            if opts["depth_multiplier"] not in (0, 1) or wshape[0] != 1:
                raise fail(conv, f"depth multiplier {opts['depth_multiplier']} (expected 1)")
        if conv.bias is None or conv.bias.shape != (out_ch,):
            raise fail(conv, "missing or mis-shaped bias (the folded BatchNorm)")
        stride, dil = opts["stride"][0], opts["dilation"][0]
        _check_padding(conv, size, k, stride, dil, fail)
        size = (size + stride - 1) // stride
    lw = net.logits.weight
    if net.logits.op.kind == "CONV_2D" and lw.shape[1:3] != (1, 1):
        raise fail(net.logits, f"classifier kernel {lw.shape[1]}x{lw.shape[2]}, expected 1x1")
    if net.logits.op.options.get("activation", "none") != "none":
        raise fail(net.logits, f"fused {net.logits.op.options['activation']} on the logits")


def _check_padding(conv: _Conv, size: int, k: int, stride: int, dil: int, fail: Any) -> None:
    padding = conv.op.options["padding"]
    same = tf_same_padding(size, k, stride, dil)
    if conv.pad is not None:
        if padding != "VALID" or conv.pad != same + same:
            raise fail(conv, f"explicit padding {conv.pad} + {padding} differs from TF SAME "
                             f"{same + same} at input size {size}")
    elif padding != "SAME" and k > 1:
        raise fail(conv, f"{padding} padding on a {k}x{k} conv (MobileNetV2 pads SAME)")


# ----------------------------------------------------------------------------------------
# State dict


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


def _state_dict(net: _Network) -> dict[str, torch.Tensor]:
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


# ----------------------------------------------------------------------------------------
# Public entry point


def convert_tflite(
    path: str | os.PathLike, labels: Sequence[str] | None = None
) -> Converted:
    """Convert a MobileNetV2 `.tflite` classifier (float or quantized) to our format.

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
    data = p.read_bytes()
    source = str(p)
    graph = _decode(data, source)
    net = _match(graph, source)
    inp = graph.tensors[graph.inputs[0]]
    if len(inp.shape) != 4 or inp.shape[3] != 3:
        raise UserError(f"{source}: input shape {inp.shape}, expected (1, H, W, 3)")
    h, wd = inp.shape[1:3]
    if h != wd:
        raise UserError(f"{source}: non-square input {h}x{wd} is not supported")
    num_classes = int(net.logits.weight.shape[0])
    _check_layers(net, h, source)
    cfg = _infer_config(net, h, num_classes, source)
    state = _state_dict(net)

    from mobilenetv2.model import MobileNetV2
    from mobilenetv2.weights.format import load_state_dict_checked

    load_state_dict_checked(MobileNetV2(cfg), state, source=source)  # exact shapes, loud

    if labels is not None:
        labels = list(labels)
        if len(labels) != num_classes:
            raise UserError(
                f"{len(labels)} labels given for {source}, which has {num_classes} classes"
            )
    else:
        labels = imagenet_labels(num_classes)
    pre, input_desc = _preprocessing(inp, h, source)
    kinds = sorted({_quant_kind(graph.tensors[c.op.inputs[1]]) for c in _all_convs(net)})
    meta = WeightsMeta(
        config=cfg,
        preprocessing=pre,
        labels=labels,
        provenance={
            "source": "tflite",
            "file": p.name,
            "sha256": hashlib.sha256(data).hexdigest(),
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


def _all_convs(net: _Network) -> list[_Conv]:
    out = [net.stem]
    for b in net.blocks:
        out += [c for c in (b.expand, b.depthwise, b.project) if c is not None]
    return out + [net.head, net.logits]


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


def _grid(facts: dict[str, Any]) -> list[float]:
    """Widths 0.05 ... 4.00 in steps of 0.01, nearest first to the one the last stage
    suggests (320 x width channels), so an equivalent width is also the most natural one."""
    guess = facts["blocks"][-1][2] / 320 if facts["blocks"] else 1.0
    return sorted((k / 100 for k in range(5, 401)), key=lambda w: (abs(w - guess), w))
