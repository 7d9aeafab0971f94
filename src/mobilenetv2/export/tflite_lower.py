"""Lowering a `torch.export` graph of a BN-folded network to TFLite operators.

The graph is ATen (`torch.export.export(...).module()`): `conv2d`, `hardtanh` (ReLU6),
`add`, `pad` (tf_same's `SamePad2d`), `adaptive_avg_pool2d` / `mean`, `flatten`, `dropout`
(eval: identity), `linear`; for the DeepLab and SSDLite heads `expand` (1x1 -> H x W),
`cat`, `upsample_bilinear2d`, `relu` and `permute(0, 2, 3, 1)` + `reshape`. `LOWERINGS` maps
each ATen target to a function that emits the TFLite operators for it. Anything without a
row fails naming the op. int8 CONCATENATION requantizes inputs calibrated to other ranges
to the output's parameters (QUANTIZE int8 -> int8), as the spec requires.

Layout: PyTorch is NCHW, TFLite NHWC (its convolutions, pooling and XNNPACK all assume
it), so image tensors are NHWC in the file, conv weights OHWI and depthwise weights 1HWC
(schema.fbs comments). Padding: an explicit pad that equals TF "SAME" for the conv after it
is folded into the conv (`padding=SAME`, exactly what `tf_same` reproduces; the stride-1
convs of both padding styles are SAME too); any other padding (PyTorch's symmetric padding on
a stride-2 conv) becomes a PAD op and a VALID conv, so the file computes exactly what
PyTorch does. ReLU6 after a conv or add is fused into it (`fused_activation_function`), as
TF's converter does.

int8 (TFLite quantization spec, tensorflow.org/lite/performance/quantization_spec):
activations int8 asymmetric per tensor from calibrated min/max (range widened to include
0, so zero is exact, which zero padding needs), conv weights int8 symmetric per output
channel (axis 0 of OHWI, axis 3 of depthwise 1HWC), FULLY_CONNECTED weights per tensor as
the spec lists, biases int32 with scale = input scale x weight scale and zero point 0;
PAD, RESHAPE and the identity ops keep their input's parameters (the spec requires it).
The spec's fixed output ranges (SOFTMAX and LOGISTIC: scale 1/256, zero point -128; TANH:
1/128, 0) concern ops this classifier does not have (it outputs logits); a head that adds
one must give its row those parameters instead of calibrated ones.

Long because it holds one emitter per operator, which read best side by side with the table.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mobilenetv2.errors import UserError
from mobilenetv2.export.tflite_writer import TensorSpec, TFLiteBuilder
from mobilenetv2.model.layers import tf_same_padding

__all__ = ["LOWERINGS", "Lowering", "QParams", "activation_qparams"]

aten = torch.ops.aten


@dataclass(frozen=True)
class QParams:
    """Per-tensor int8 quantization: real = scale * (q - zero_point)."""

    scale: float
    zero_point: int


def activation_qparams(lo: float, hi: float) -> QParams:
    """Asymmetric int8 parameters covering [lo, hi] widened to include 0 (spec: zero must
    be exactly representable)."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    scale = (hi - lo) / 255.0 if hi > lo else 1.0
    zp = int(np.clip(round(-128 - lo / scale), -128, 127))
    return QParams(float(np.float32(scale)), zp)


@dataclass
class Value:
    """A tensor of the file standing for a node's output."""

    index: int
    shape: tuple[int, ...]  # PyTorch's (NCHW) shape
    q: QParams | None = None
    # A 4-D value is NHWC in the file; False after `permute(0, 2, 3, 1)`, whose PyTorch
    # shape already is the file's (the detector's heads), so later ops see it unchanged.
    nhwc: bool = True


@dataclass
class Lowering:
    """State while lowering one graph: the builder, node -> value, calibration ranges."""

    gm: torch.fx.GraphModule
    builder: TFLiteBuilder
    int8: bool
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    values: dict[Any, Value] = field(default_factory=dict)
    done: set[Any] = field(default_factory=set)  # nodes consumed by a fused op
    folded: dict[Any, tuple[int, int, int, int]] = field(default_factory=dict)  # pad nodes

    # ---------------------------------------------------------------- helpers
    def const_of(self, node: Any) -> np.ndarray:
        if getattr(node, "op", None) != "get_attr":
            raise UserError(f"TFLite export: {node} is not a constant weight")
        obj: Any = self.gm
        for part in node.target.split("."):
            obj = getattr(obj, part)
        return obj.detach().float().numpy()

    def qparams(self, node: Any) -> QParams | None:
        if not self.int8:
            return None
        if node.name not in self.ranges:
            raise UserError(f"TFLite export: no calibration range for {node.name}")
        return activation_qparams(*self.ranges[node.name])

    def new_tensor(self, node: Any, shape: tuple[int, ...], q: QParams | None,
                   nhwc: bool = True) -> Value:
        """An activation tensor for `node` (NHWC in the file when 4-D and `nhwc`)."""
        file_shape = _nhwc(shape) if nhwc else tuple(shape)
        spec = TensorSpec(node.name, file_shape, np.dtype(np.int8 if q else np.float32),
                          dynamic_batch=True)
        if q is not None:
            spec.scale, spec.zero_point = np.array([q.scale]), np.array([q.zero_point])
        v = Value(self.builder.tensor(spec), tuple(shape), q, nhwc)
        self.values[node] = v
        return v

    def shape(self, node: Any) -> tuple[int, ...]:
        val = node.meta.get("val")
        if val is None:
            raise UserError(f"TFLite export: no shape recorded for {node.name}")
        return tuple(int(s) for s in val.shape)

    def fused_activation(self, node: Any) -> tuple[int, Any]:
        """(TFLite fused activation code, the node whose output the fused op produces)."""
        users = list(node.users)
        if len(users) == 1 and users[0].op == "call_function":
            u = users[0]
            if u.target in (aten.hardtanh.default, aten.hardtanh_.default) and \
                    tuple(float(a) for a in u.args[1:3]) == (0.0, 6.0):
                self.done.add(u)
                return 3, u  # RELU6
            if u.target in (aten.relu.default, aten.relu_.default):
                self.done.add(u)
                return 1, u  # RELU
        return 0, node


def _nhwc(shape: tuple[int, ...]) -> tuple[int, ...]:
    return (shape[0], shape[2], shape[3], shape[1]) if len(shape) == 4 else shape


# ------------------------------------------------------------------------ the ops
def _conv(L: Lowering, node: Any) -> None:
    import tflite as t

    x_node, w_node = node.args[0], node.args[1]
    b_node = node.args[2] if len(node.args) > 2 else None
    stride = tuple(node.args[3]) if len(node.args) > 3 else (1, 1)
    padding = tuple(node.args[4]) if len(node.args) > 4 else (0, 0)
    dilation = tuple(node.args[5]) if len(node.args) > 5 else (1, 1)
    groups = int(node.args[6]) if len(node.args) > 6 else 1
    if isinstance(padding, str) or len(stride) != 2:
        raise UserError(f"TFLite export: {node.name}: unsupported conv arguments")
    pads = [padding[0], padding[0], padding[1], padding[1]]  # top, bottom, left, right
    if x_node in L.folded:
        extra = L.folded[x_node]
        pads = [p + e for p, e in zip(pads, extra)]
        x_node = x_node.args[0]
    x = L.values[x_node]
    w = L.const_of(w_node)
    out_c, in_per_group, kh, kw = w.shape
    in_c = x.shape[1]
    depthwise = groups > 1 and groups == in_c == out_c and in_per_group == 1
    if groups != 1 and not depthwise:
        raise UserError(f"TFLite export: {node.name}: grouped conv (groups={groups}) other "
                        f"than depthwise has no TFLite operator")
    h, wd = x.shape[2], x.shape[3]
    same = (*tf_same_padding(h, kh, stride[0], dilation[0]),
            *tf_same_padding(wd, kw, stride[1], dilation[1]))
    if tuple(pads) == same:
        pad_mode = 0  # SAME
    else:
        pad_mode = 1  # VALID, after an explicit PAD when there is any padding
        if any(pads):
            x = _pad(L, node, x, pads)
    act, out_node = L.fused_activation(node)
    y = L.new_tensor(out_node, L.shape(node), L.qparams(out_node))
    L.values[node] = y
    bias = L.const_of(b_node) if b_node is not None else np.zeros(out_c, np.float32)
    if depthwise:
        wt = w.transpose(1, 2, 3, 0)  # (C, 1, kh, kw) -> 1HWC
        axis = 3
    else:
        wt = w.transpose(0, 2, 3, 1)  # OIHW -> OHWI
        axis = 0
    w_idx, b_idx = _weights(L, node.name, wt, bias, axis, x.q, per_channel=True)
    if depthwise:
        def options(b: Any) -> int:
            t.DepthwiseConv2DOptionsStart(b)
            t.DepthwiseConv2DOptionsAddPadding(b, pad_mode)
            t.DepthwiseConv2DOptionsAddStrideH(b, stride[0])
            t.DepthwiseConv2DOptionsAddStrideW(b, stride[1])
            t.DepthwiseConv2DOptionsAddDepthMultiplier(b, 1)
            t.DepthwiseConv2DOptionsAddFusedActivationFunction(b, act)
            t.DepthwiseConv2DOptionsAddDilationHFactor(b, dilation[0])
            t.DepthwiseConv2DOptionsAddDilationWFactor(b, dilation[1])
            return t.DepthwiseConv2DOptionsEnd(b)

        L.builder.op(t.BuiltinOperator.DEPTHWISE_CONV_2D, [x.index, w_idx, b_idx], [y.index],
                     version=3 if L.int8 else 2, options=options,
                     options_type=t.BuiltinOptions.DepthwiseConv2DOptions)
    else:
        def options(b: Any) -> int:
            t.Conv2DOptionsStart(b)
            t.Conv2DOptionsAddPadding(b, pad_mode)
            t.Conv2DOptionsAddStrideH(b, stride[0])
            t.Conv2DOptionsAddStrideW(b, stride[1])
            t.Conv2DOptionsAddFusedActivationFunction(b, act)
            t.Conv2DOptionsAddDilationHFactor(b, dilation[0])
            t.Conv2DOptionsAddDilationWFactor(b, dilation[1])
            return t.Conv2DOptionsEnd(b)

        L.builder.op(t.BuiltinOperator.CONV_2D, [x.index, w_idx, b_idx], [y.index],
                     version=3 if L.int8 else 1, options=options,
                     options_type=t.BuiltinOptions.Conv2DOptions)


def _weights(L: Lowering, name: str, w: np.ndarray, bias: np.ndarray, axis: int,
             in_q: QParams | None, per_channel: bool) -> tuple[int, int]:
    """Weight and bias tensors: float32, or int8 symmetric weights and int32 biases."""
    if not L.int8:
        return (L.builder.const(f"{name}/weight", w.astype(np.float32)),
                L.builder.const(f"{name}/bias", bias.astype(np.float32)))
    assert in_q is not None
    reduce = tuple(i for i in range(w.ndim) if i != axis) if per_channel else None
    amax = np.abs(w).max(axis=reduce) if per_channel else np.array([np.abs(w).max()])
    # symmetric, zero point 0, range [-127, 127] (the spec excludes -128 for weights)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    shape = [1] * w.ndim
    if per_channel:
        shape[axis] = -1
    q = np.clip(np.round(w / scale.reshape(shape)), -127, 127).astype(np.int8)
    # one bias scale per weight scale: per channel, or one for a per-tensor weight
    b_scale = np.float64(in_q.scale) * scale.astype(np.float64)
    qb = np.round(bias.astype(np.float64) / (b_scale if per_channel else b_scale[0]))
    qb = np.clip(qb, -(2**31), 2**31 - 1).astype(np.int32)
    w_idx = L.builder.const(f"{name}/weight", q, scale=scale,
                            zero_point=np.zeros(scale.shape, np.int64),
                            axis=axis if per_channel else 0)
    b_idx = L.builder.const(f"{name}/bias", qb, scale=b_scale.astype(np.float32),
                            zero_point=np.zeros(b_scale.shape, np.int64), axis=0)
    return w_idx, b_idx


def _pad(L: Lowering, node: Any, x: Value, pads: list[int]) -> Value:
    """An explicit PAD op (zeros; quantized: the zero point, i.e. real zero)."""
    import tflite as t

    top, bottom, left, right = pads
    paddings = np.array([[0, 0], [top, bottom], [left, right], [0, 0]], np.int32)
    p_idx = L.builder.const(f"{node.name}/paddings", paddings)
    n, c, h, w = x.shape
    shape = (n, c, h + top + bottom, w + left + right)
    spec = TensorSpec(f"{node.name}/padded", _nhwc(shape),
                      np.dtype(np.int8 if x.q else np.float32), dynamic_batch=True)
    if x.q is not None:
        spec.scale, spec.zero_point = np.array([x.q.scale]), np.array([x.q.zero_point])
    out = Value(L.builder.tensor(spec), shape, x.q)
    L.builder.op(t.BuiltinOperator.PAD, [x.index, p_idx], [out.index],
                 version=2 if L.int8 else 1)
    return out


def _pad_node(L: Lowering, node: Any) -> None:
    """A pad read only by convs is folded into them (SAME, or PAD + VALID there)."""
    pad = list(node.args[1])
    mode = node.args[2] if len(node.args) > 2 else "constant"
    value = node.args[3] if len(node.args) > 3 else 0.0
    if node.target == aten.constant_pad_nd.default:
        mode, value = "constant", node.args[2] if len(node.args) > 2 else 0.0
    if mode != "constant" or (value or 0.0) != 0.0 or len(pad) != 4:
        raise UserError(f"TFLite export: {node.name}: only zero padding of height and width")
    left, right, top, bottom = pad
    if all(u.target == aten.conv2d.default for u in node.users):
        L.folded[node] = (top, bottom, left, right)
        L.values[node] = L.values[node.args[0]]  # marks it lowered; convs read args[0]
        return
    L.values[node] = _pad(L, node, L.values[node.args[0]], [top, bottom, left, right])


def _add(L: Lowering, node: Any) -> None:
    import tflite as t

    a, b = (L.values[n] for n in node.args[:2])
    if len(node.args) > 2 or node.kwargs.get("alpha", 1) != 1:
        raise UserError(f"TFLite export: {node.name}: add with alpha")
    act, out_node = L.fused_activation(node)
    y = L.new_tensor(out_node, L.shape(node), L.qparams(out_node))
    L.values[node] = y

    def options(bld: Any) -> int:
        t.AddOptionsStart(bld)
        t.AddOptionsAddFusedActivationFunction(bld, act)
        return t.AddOptionsEnd(bld)

    L.builder.op(t.BuiltinOperator.ADD, [a.index, b.index], [y.index],
                 version=2 if L.int8 else 1, options=options,
                 options_type=t.BuiltinOptions.AddOptions)


def _mean(L: Lowering, node: Any) -> None:
    """Global average pooling: MEAN over height and width (NHWC axes 1, 2)."""
    import tflite as t

    x = L.values[node.args[0]]
    if node.target == aten.adaptive_avg_pool2d.default:
        if tuple(node.args[1]) != (1, 1):
            raise UserError(f"TFLite export: {node.name}: adaptive pooling to "
                            f"{tuple(node.args[1])}, only global (1, 1)")
        keep = True
    else:
        dims = sorted(d % 4 for d in node.args[1])
        if dims != [2, 3]:
            raise UserError(f"TFLite export: {node.name}: mean over {dims}, only H and W")
        keep = bool(node.args[2]) if len(node.args) > 2 else False
    axes = L.builder.const(f"{node.name}/axes", np.array([1, 2], np.int32))
    y = L.new_tensor(node, L.shape(node), L.qparams(node))

    def options(b: Any) -> int:
        t.ReducerOptionsStart(b)
        t.ReducerOptionsAddKeepDims(b, keep)
        return t.ReducerOptionsEnd(b)

    L.builder.op(t.BuiltinOperator.MEAN, [x.index, axes], [y.index],
                 version=2 if L.int8 else 1, options=options,
                 options_type=t.BuiltinOptions.ReducerOptions)


def _flatten(L: Lowering, node: Any) -> None:
    """flatten / view / reshape: a RESHAPE, when the file's element order is PyTorch's:
    (N, C, 1, 1) -> (N, C) (NHWC and NCHW agree when H = W = 1), or a value whose file
    layout is PyTorch's (not 4-D, or after `permute(0, 2, 3, 1)`). The batch stays -1, so
    the interpreter can resize it."""
    import tflite as t

    x = L.values[node.args[0]]
    out_shape = L.shape(node)
    if len(x.shape) == 4 and x.nhwc and x.shape[2] * x.shape[3] != 1:
        raise UserError(f"TFLite export: {node.name}: flattening a {x.shape[2]}x"
                        f"{x.shape[3]} feature map (NHWC order differs from PyTorch's)")
    if len(out_shape) == 4:
        raise UserError(f"TFLite export: {node.name}: reshape to the 4-D {out_shape}")
    new_shape = L.builder.const(f"{node.name}/shape",
                                np.array([-1, *out_shape[1:]], np.int32))
    spec = TensorSpec(node.name, out_shape, np.dtype(np.int8 if x.q else np.float32),
                      dynamic_batch=True)
    if x.q is not None:  # the spec: RESHAPE keeps its input's parameters
        spec.scale, spec.zero_point = np.array([x.q.scale]), np.array([x.q.zero_point])
    y = Value(L.builder.tensor(spec), out_shape, x.q)
    L.values[node] = y
    L.builder.op(t.BuiltinOperator.RESHAPE, [x.index, new_shape], [y.index])


def _permute(L: Lowering, node: Any) -> None:
    """NCHW -> NHWC (`permute(0, 2, 3, 1)`, the detector's heads): the file's tensor already
    is NHWC, so no op; the value is relabelled with PyTorch's new shape."""
    x = L.values[node.args[0]]
    dims = [int(d) % 4 for d in node.args[1]]
    if len(x.shape) != 4 or not x.nhwc or dims != [0, 2, 3, 1]:
        raise UserError(f"TFLite export: {node.name}: permute {dims} (only NCHW -> NHWC, "
                        f"(0, 2, 3, 1), of a feature map)")
    L.values[node] = Value(x.index, L.shape(node), x.q, nhwc=False)


def _cat(L: Lowering, node: Any) -> None:
    """CONCATENATION; PyTorch's channel axis 1 of a feature map is the file's axis 3."""
    import tflite as t

    xs = [L.values[n] for n in node.args[0]]
    dim = int(node.args[1]) if len(node.args) > 1 else 0
    out_shape = L.shape(node)
    dim %= len(out_shape)
    layouts = {x.nhwc and len(x.shape) == 4 for x in xs}
    if len(layouts) != 1:
        raise UserError(f"TFLite export: {node.name}: concatenating tensors of different "
                        f"file layouts")
    nhwc = layouts.pop()
    axis = (0, 3, 1, 2)[dim] if nhwc else dim
    if dim == 0:
        raise UserError(f"TFLite export: {node.name}: concatenation along the batch")
    q = L.qparams(node)
    if q is not None:
        # The spec: every input at the output's scale and zero point; an input calibrated
        # to another range is requantized (int8 -> int8 QUANTIZE) first.
        xs = [x if x.q == q else _requantize(L, node, i, x, q) for i, x in enumerate(xs)]
    y = L.new_tensor(node, out_shape, q, nhwc=nhwc)

    def options(b: Any) -> int:
        t.ConcatenationOptionsStart(b)
        t.ConcatenationOptionsAddAxis(b, axis)
        t.ConcatenationOptionsAddFusedActivationFunction(b, 0)
        return t.ConcatenationOptionsEnd(b)

    L.builder.op(t.BuiltinOperator.CONCATENATION, [x.index for x in xs], [y.index],
                 options=options, options_type=t.BuiltinOptions.ConcatenationOptions)


def _requantize(L: Lowering, node: Any, i: int, x: Value, q: QParams) -> Value:
    import tflite as t

    spec = TensorSpec(f"{node.name}/input{i}", _nhwc(x.shape) if x.nhwc else x.shape,
                      np.dtype(np.int8), dynamic_batch=True)
    spec.scale, spec.zero_point = np.array([q.scale]), np.array([q.zero_point])
    out = Value(L.builder.tensor(spec), x.shape, q, x.nhwc)
    L.builder.op(t.BuiltinOperator.QUANTIZE, [x.index], [out.index], version=2)
    return out


def _expand(L: Lowering, node: Any) -> None:
    """Expanding a 1x1 map to H x W (DeepLab's image pooling) as RESIZE_NEAREST_NEIGHBOR:
    every output pixel reads the one input pixel, so it is exact, keeps the quantization
    parameters, and leaves the batch free (BROADCAST_TO would fix it in its shape)."""
    x = L.values[node.args[0]]
    out_shape = L.shape(node)
    if len(x.shape) != 4 or not x.nhwc or x.shape[2:] != (1, 1) or \
            tuple(out_shape[:2]) != tuple(x.shape[:2]):
        raise UserError(f"TFLite export: {node.name}: expand of {x.shape} to {out_shape} "
                        f"(only a 1x1 feature map to H x W)")
    _resize(L, node, x, out_shape, bilinear=False, align_corners=False)


def _upsample(L: Lowering, node: Any) -> None:
    """`F.interpolate(bilinear)` -> RESIZE_BILINEAR; TFLite's align_corners=True uses
    PyTorch's (in - 1) / (out - 1) scale, and half_pixel_centers is align_corners=False's."""
    x = L.values[node.args[0]]
    align = bool(node.args[2]) if len(node.args) > 2 else False
    if len(node.args) > 3 and node.args[3] is not None:
        raise UserError(f"TFLite export: {node.name}: resize by scale factors (only to a "
                        f"fixed size)")
    _resize(L, node, x, L.shape(node), bilinear=True, align_corners=align)


def _resize(L: Lowering, node: Any, x: Value, out_shape: tuple[int, ...], *,
            bilinear: bool, align_corners: bool) -> None:
    import tflite as t

    size = L.builder.const(f"{node.name}/size", np.array(out_shape[2:], np.int32))
    y = L.new_tensor(node, out_shape, x.q)  # the spec: RESIZE keeps its input's parameters
    if bilinear:
        def options(b: Any) -> int:
            t.ResizeBilinearOptionsStart(b)
            t.ResizeBilinearOptionsAddAlignCorners(b, align_corners)
            t.ResizeBilinearOptionsAddHalfPixelCenters(b, not align_corners)
            return t.ResizeBilinearOptionsEnd(b)

        L.builder.op(t.BuiltinOperator.RESIZE_BILINEAR, [x.index, size], [y.index],
                     version=3 if (L.int8 or not align_corners) else 1, options=options,
                     options_type=t.BuiltinOptions.ResizeBilinearOptions)
    else:
        def options(b: Any) -> int:
            t.ResizeNearestNeighborOptionsStart(b)
            t.ResizeNearestNeighborOptionsAddAlignCorners(b, False)
            return t.ResizeNearestNeighborOptionsEnd(b)

        L.builder.op(t.BuiltinOperator.RESIZE_NEAREST_NEIGHBOR, [x.index, size], [y.index],
                     version=2 if L.int8 else 1, options=options,
                     options_type=t.BuiltinOptions.ResizeNearestNeighborOptions)


def _identity(L: Lowering, node: Any) -> None:
    if node.target == aten.dropout.default and len(node.args) > 2 and node.args[2]:
        raise UserError(f"TFLite export: {node.name}: dropout in training mode")
    L.values[node] = L.values[node.args[0]]


def _linear(L: Lowering, node: Any) -> None:
    import tflite as t

    x = L.values[node.args[0]]
    w = L.const_of(node.args[1])
    bias = L.const_of(node.args[2]) if len(node.args) > 2 and node.args[2] is not None \
        else np.zeros(w.shape[0], np.float32)
    act, out_node = L.fused_activation(node)
    y = L.new_tensor(out_node, L.shape(node), L.qparams(out_node))
    L.values[node] = y
    w_idx, b_idx = _weights(L, node.name, w, bias, 0, x.q, per_channel=False)

    def options(b: Any) -> int:
        t.FullyConnectedOptionsStart(b)
        t.FullyConnectedOptionsAddFusedActivationFunction(b, act)
        return t.FullyConnectedOptionsEnd(b)

    L.builder.op(t.BuiltinOperator.FULLY_CONNECTED, [x.index, w_idx, b_idx], [y.index],
                 version=4 if L.int8 else 1, options=options,
                 options_type=t.BuiltinOptions.FullyConnectedOptions)


def _activation(L: Lowering, node: Any) -> None:
    """A ReLU6 / ReLU that could not be fused into the op before it."""
    import tflite as t

    x = L.values[node.args[0]]
    if node.target in (aten.hardtanh.default, aten.hardtanh_.default):
        if tuple(float(a) for a in node.args[1:3]) != (0.0, 6.0):
            raise UserError(f"TFLite export: {node.name}: hardtanh other than ReLU6")
        code = t.BuiltinOperator.RELU6
    else:
        code = t.BuiltinOperator.RELU
    y = L.new_tensor(node, L.shape(node), L.qparams(node))
    L.builder.op(code, [x.index], [y.index], version=2 if L.int8 else 1)


LOWERINGS: dict[Any, Callable[[Lowering, Any], None]] = {
    aten.conv2d.default: _conv,
    aten.pad.default: _pad_node,
    aten.constant_pad_nd.default: _pad_node,
    aten.add.Tensor: _add,
    operator.add: _add,
    aten.adaptive_avg_pool2d.default: _mean,
    aten.mean.dim: _mean,
    aten.flatten.using_ints: _flatten,
    aten.view.default: _flatten,
    aten.reshape.default: _flatten,
    aten.dropout.default: _identity,
    aten.clone.default: _identity,
    aten.linear.default: _linear,
    aten.hardtanh.default: _activation,
    aten.hardtanh_.default: _activation,
    aten.relu.default: _activation,
    aten.relu_.default: _activation,
    # segmentation (DeepLab) and detection (SSDLite) heads
    aten.expand.default: _expand,
    aten.cat.default: _cat,
    aten.upsample_bilinear2d.vec: _upsample,
    aten.upsample_bilinear2d.default: _upsample,
    aten.permute.default: _permute,
}
