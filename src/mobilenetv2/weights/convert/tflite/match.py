"""Matching a TFLite operator graph against MobileNetV2 (Sandler et al., 2018, Table 2).

`match_network` walks the operators in execution order and finds the stem conv, the 17
inverted residual blocks (optional 1x1 expand, 3x3 depthwise, linear 1x1 project, residual
ADD), the 1x1 head conv, the global average pool and the logits, checking that each reads the
previous layer's output; `check_layers` checks what `resolve()` does not describe. Anything
else fails loudly, naming the operator that does not fit.

- Operators that do not change values in the float model are skipped: (de)quantization, and
  the reshape / squeeze / softmax after the logits (we output logits; softmax is monotonic).
  A DEQUANTIZE of a constant (float16 weights widened at runtime) is a constant for us.
- Padding: TF "SAME" (asymmetric for stride 2) is what `padding="tf_same"` computes; a VALID
  conv after an explicit PAD op is accepted when the pads equal SAME's at the model's
  resolution.
- Activations must be ReLU6 (fused) where the paper has them and none after the project
  convs (linear bottleneck); the classifier is a 1x1 CONV_2D or FULLY_CONNECTED with bias.
- Biases: int32 with scale = input scale x weight scale (per channel), read from the bias
  tensor's own quantization parameters when present.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mobilenetv2.errors import UserError
from mobilenetv2.model.layers import tf_same_padding
from mobilenetv2.weights.convert.tflite.reader import OpInfo, TFLiteGraph, dequantize

__all__ = [
    "Block", "Conv", "Network", "all_convs", "backbone_convs", "check_convs", "check_layers",
    "match_backbone", "match_network",
]

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
class Conv:
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
class Block:
    """One inverted residual block as found in the file."""

    expand: Conv | None
    depthwise: Conv
    project: Conv
    residual: bool


@dataclass
class Network:
    """The layers of a MobileNetV2 classifier found in the file, in order."""

    stem: Conv
    blocks: list[Block]
    head: Conv
    logits: Conv


class _Walker:
    """Consumes the value-changing operators in execution order, checking connectivity."""

    def __init__(self, graph: TFLiteGraph, source: str, extra: frozenset[str] = frozenset(),
                 what: str = "a MobileNetV2 classifier") -> None:
        self.g, self.source, self.what = graph, source, what
        self.alias: dict[int, int] = {}
        self.consts: dict[int, np.ndarray] = {}
        self.layers: list[OpInfo] = []
        for t in graph.tensors:
            if t.data is not None:
                self.consts[t.index] = dequantize(t)
        for op in graph.ops:
            if op.kind == "DEQUANTIZE" and op.inputs[0] in self.consts:
                # float16 (or int8) weights widened at runtime: a constant for us.
                self.consts[op.outputs[0]] = self.consts[op.inputs[0]]
            elif op.kind in _PASS_THROUGH:
                self.alias[op.outputs[0]] = self.canon(op.inputs[0])
            elif op.kind in _LAYERS or op.kind in extra:
                self.layers.append(op)
            else:
                raise self.error(
                    f"operator {op.index} is {op.kind}, which {what} does not have (expected "
                    f"only {', '.join(sorted(_LAYERS | _PASS_THROUGH | extra))})"
                )
        self.pos = 0

    def canon(self, t: int) -> int:
        while t in self.alias:
            t = self.alias[t]
        return t

    def error(self, message: str) -> UserError:
        return UserError(f"{self.source}: not {self.what} TFLite can convert: {message}")

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

    def conv(self, kinds: Sequence[str], role: str, x: int) -> Conv:
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
        return Conv(op, x, self.canon(op.outputs[0]), weight, bias, pad)

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


def match_network(graph: TFLiteGraph, source: str) -> Network:
    """Find stem, blocks, head, pool and logits in the operator list (execution order)."""
    w = _Walker(graph, source)
    if len(graph.inputs) != 1:
        raise w.error(f"{len(graph.inputs)} inputs (an image classifier has one)")
    stem, blocks, x = match_backbone(w)
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
    return Network(stem, blocks, head, logits)


def match_backbone(w: _Walker) -> tuple[Conv, list[Block], int]:
    """The stem and the inverted residual blocks from the input on; the last output."""
    x = w.canon(w.g.inputs[0])
    stem = w.conv(["CONV_2D"], "stem conv", x)
    x = stem.y
    blocks: list[Block] = []
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
        blocks.append(Block(expand, dw, project, residual))
    return stem, blocks, x


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


def check_layers(net: Network, resolution: int, source: str) -> str:
    """Kernel sizes, padding and activations: everything `resolve()` does not describe.

    Returns the padding the file computes: "tf_same", or "symmetric" when its explicit pads
    are PyTorch's (our own exports of `padding="symmetric"` models); where the two agree
    (stride 1, odd sizes) a layer says nothing, and "tf_same" is the default."""

    def fail(conv: Conv, what: str) -> UserError:
        return UserError(f"{source}: {conv.name}: {what}")

    _, padding = check_convs(backbone_convs(net.stem, net.blocks) + [(net.head, 1, "relu6")],
                             resolution, source)
    lw = net.logits.weight
    if net.logits.op.kind == "CONV_2D" and lw.shape[1:3] != (1, 1):
        raise fail(net.logits, f"classifier kernel {lw.shape[1]}x{lw.shape[2]}, expected 1x1")
    if net.logits.op.options.get("activation", "none") != "none":
        raise fail(net.logits, f"fused {net.logits.op.options['activation']} on the logits")
    return padding


def backbone_convs(stem: Conv, blocks: Sequence[Block]) -> list[tuple[Conv, int, str]]:
    """(conv, kernel, activation) of the stem and every block, in order."""
    convs: list[tuple[Conv, int, str]] = [(stem, 3, "relu6")]
    for b in blocks:
        if b.expand is not None:
            convs.append((b.expand, 1, "relu6"))
        convs += [(b.depthwise, 3, "relu6"), (b.project, 1, "none")]
    return convs


def check_convs(convs: Sequence[tuple[Conv, int, str]], resolution: int,
                source: str) -> tuple[int, str]:
    """Kernel, activation, bias and padding of a chain of convs; the output size and the
    padding style ("tf_same" or "symmetric", see `check_layers`)."""

    def fail(conv: Conv, what: str) -> UserError:
        return UserError(f"{source}: {conv.name}: {what}")

    size = resolution
    styles: set[str] = set()
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
        styles.add(_check_padding(conv, size, k, stride, dil, fail))
        size = (size + stride - 1) // stride
    styles.discard("either")
    if len(styles) > 1:
        raise UserError(f"{source}: some convs pad as TF SAME, others symmetrically (PyTorch); "
                        "MobileNetV2 pads one way throughout")
    return size, "symmetric" if styles == {"symmetric"} else "tf_same"


def _check_padding(conv: Conv, size: int, k: int, stride: int, dil: int, fail: Any) -> str:
    """"tf_same", "symmetric" (the pads only that style gives) or "either"."""
    padding = conv.op.options["padding"]
    same = tf_same_padding(size, k, stride, dil)
    sym = ((k - 1) // 2 * dil,) * 2
    if conv.pad is not None:
        if padding == "VALID" and conv.pad in (same + same, sym + sym):
            if same == sym:
                return "either"
            return "tf_same" if conv.pad == same + same else "symmetric"
        raise fail(conv, f"explicit padding {conv.pad} + {padding} differs from TF SAME "
                         f"{same + same} and from symmetric {sym + sym} at input size {size}")
    if padding != "SAME" and k > 1:
        raise fail(conv, f"{padding} padding on a {k}x{k} conv (MobileNetV2 pads SAME)")
    return "either" if same == sym or k == 1 else "tf_same"


def all_convs(net: Network) -> list[Conv]:
    out = [net.stem]
    for b in net.blocks:
        out += [c for c in (b.expand, b.depthwise, b.project) if c is not None]
    return out + [net.head, net.logits]


