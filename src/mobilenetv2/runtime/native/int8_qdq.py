"""Reading our QDQ int8 ONNX file for the native int8 engine (issue 13): a pure converter.

Every scale, zero point and integer weight comes from the file's QuantizeLinear /
DequantizeLinear nodes (`quant.ptq` writes them: per-channel symmetric int8 weights, uint8
activations with calibrated scale / zero point). The graph is checked to be one the engine runs
(stem, depthwise and 1x1 convolutions, residual adds, global average pool, flatten,
classifier; anything else is a one-line error, with hard shape checks), and the weights are
packed for the kernels (`_int8.inc`, `_kernels_int8.inc`). Split from `native.int8`, which
runs the result.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from mobilenetv2._optional import require
from mobilenetv2.errors import UserError

__all__ = ["int8_ops", "int8_tensor_names"]

# op codes and argument layouts shared with _int8.inc (Int8Engine)
QUANT, STEM, PW, DW, ADD, GAP, FC = range(7)
_F32 = np.float32


def _pad16(n: int) -> int:
    return (n + 15) // 16 * 16


def _pack_gemm(w: np.ndarray, n_p: int, k_p: int) -> np.ndarray:
    """int8 [N][K] -> [N_p / 8][K_p / 4][8][4] (zero padded): one 32-byte load is 4 inputs
    of 8 outputs, what one VPMADDUBSW / VPDPBUSD multiplies (`qkernel`)."""
    full = np.zeros((n_p, k_p), np.int8)
    full[:w.shape[0], :w.shape[1]] = w
    return np.ascontiguousarray(full.reshape(n_p // 8, 8, k_p // 4, 4).transpose(0, 2, 1, 3))


# Depthwise channel order inside 16 channels after VPUNPCK{L,H}WD (`dw_rows`): lo, then hi.
_DW_PERM = np.array([0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15])


def _pack_dw(w: np.ndarray, c_p: int) -> np.ndarray:
    """int8 [C][9] -> int16 [C_p / 16][5 tap pairs][lo, hi][8 channels x 2 taps]."""
    full = np.zeros((c_p, 10), np.int16)
    full[:w.shape[0], :9] = w
    b = c_p // 16
    per = full.reshape(b, 16, 10)[:, _DW_PERM, :]  # [block][lo 8 | hi 8][10 taps]
    return np.ascontiguousarray(per.reshape(b, 2, 8, 5, 2).transpose(0, 3, 1, 2, 4))


def _dw_order(v: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(v.reshape(-1, 16)[:, _DW_PERM].ravel())


def _padded(v: np.ndarray, n: int, dtype: Any) -> np.ndarray:
    out = np.zeros(n, dtype)
    out[:len(v)] = v
    return out


class _Reader:
    """Walks the QDQ graph in order and builds the engine's op list (module docstring)."""

    def __init__(self, path: Path) -> None:
        onnx = require("onnx", "the native int8 engine")
        from onnx import numpy_helper

        self.path = path
        try:
            proto = onnx.load(str(path))
        except Exception as exc:  # noqa: BLE001 - a broken file is the user's mistake
            raise UserError(f"{path}: not a readable ONNX file ({exc})") from None
        self.graph = proto.graph
        self.inits = {i.name: numpy_helper.to_array(i) for i in self.graph.initializer}
        self.consts: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self.dq: dict[str, int] = {}     # float name after DequantizeLinear -> tensor id
        self.names: list[str] = []       # tensor id -> its QuantizeLinear output's name
        self.q: dict[str, int] = {}      # QuantizeLinear output -> tensor id
        self.qp: list[tuple[float, int]] = []   # tensor id -> (scale, zero point)
        self.chans: list[int] = []       # tensor id -> channels
        self.pending: dict[str, tuple] = {}
        self.ops: list[tuple] = []
        self.logits: str | None = None
        self.classes = 0
        self.size: tuple[int, int] | None = None

    def fail(self, why: str) -> UserError:
        return UserError(f"{self.path}: the native int8 engine cannot run this model: {why}")

    def scalar_qparams(self, node: Any) -> tuple[float, int]:
        if len(node.input) < 3 or node.input[1] not in self.inits or \
                node.input[2] not in self.inits:
            raise self.fail(f"{node.name or node.output[0]} has no constant scale/zero point")
        s, z = self.inits[node.input[1]], self.inits[node.input[2]]
        if s.size != 1 or z.size != 1 or z.dtype != np.uint8:
            raise self.fail(f"activation {node.input[0]} is not per-tensor uint8 "
                            f"(quantize with `mobilenetv2 quantize`)")
        return float(s.reshape(())), int(z.reshape(()))

    def new_tensor(self, qparams: tuple[float, int], chans: int) -> int:
        self.qp.append(qparams)
        self.chans.append(chans)
        return len(self.qp) - 1

    def act(self, name: str) -> int:
        if name not in self.dq:
            raise self.fail(f"{name} is not a quantized activation")
        return self.dq[name]

    def const(self, name: str, what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if name not in self.consts:
            raise self.fail(f"{what} is not a quantized constant")
        return self.consts[name]

    def run(self) -> tuple[tuple, int]:
        if len(self.graph.input) != 1 or len(self.graph.output) != 1:
            raise self.fail("it needs one input and one output")
        x_name = self.graph.input[0].name
        dims = self.graph.input[0].type.tensor_type.shape.dim
        if len(dims) == 4 and all(d.HasField("dim_value") for d in dims[2:]):
            # the export fixes the image size (and tf_same pads for it): run only that
            self.size = (dims[2].dim_value, dims[3].dim_value)
        for node in self.graph.node:
            op = node.op_type
            attrs = {a.name: _attr(a) for a in node.attribute}
            if op == "DequantizeLinear":
                self.on_dequantize(node, attrs)
            elif op == "QuantizeLinear":
                self.on_quantize(node, x_name)
            elif op == "Conv":
                self.pending[node.output[0]] = ("conv", node, attrs)
            elif op in ("Add", "GlobalAveragePool", "Flatten", "Gemm"):
                self.pending[node.output[0]] = (op, node, attrs)
            else:
                raise self.fail(f"{op} nodes are not supported ({node.name})")
        if self.logits is None or self.graph.output[0].name != self.logits:
            raise self.fail("its output is not a dequantized classifier")
        return tuple(self.ops), self.classes, self.size

    def on_dequantize(self, node: Any, attrs: dict) -> None:
        src = node.input[0]
        if src in self.inits:  # a weight or bias
            scale = self.inits[node.input[1]]
            zp = self.inits[node.input[2]] if len(node.input) > 2 else np.zeros(1, np.int8)
            if attrs.get("axis", 1) != 0 and scale.size != 1:
                raise self.fail(f"{src}: per-channel scales must be along axis 0")
            self.consts[node.output[0]] = (self.inits[src], scale.astype(_F32).ravel(),
                                           zp.ravel())
            return
        if src not in self.q:
            raise self.fail(f"{src} is dequantized but was never quantized")
        tid = self.q[src]
        if self.scalar_qparams(node) != self.qp[tid]:
            raise self.fail(f"{src} is dequantized with other parameters than quantized")
        self.dq[node.output[0]] = tid
        if node.output[0] == self.graph.output[0].name:
            if not self.ops or self.ops[-1][0] != FC or self.ops[-1][3] != tid:
                raise self.fail("the graph output is not the classifier's")
            self.logits = node.output[0]

    def on_quantize(self, node: Any, x_name: str) -> None:
        qp = self.scalar_qparams(node)
        src = node.input[0]
        if src == x_name:
            if self.ops:
                raise self.fail("the input is quantized twice")
            tid = self.new_tensor(qp, 3)
            self.ops.append((QUANT, -1, -1, tid, (qp[1],), (qp[0],), ()))
        elif src in self.pending:
            kind, n, attrs = self.pending.pop(src)
            tid = getattr(self, "make_" + kind.lower())(n, attrs, qp)
        else:
            raise self.fail(f"{src} is quantized but not computed by a supported node")
        self.q[node.output[0]] = tid
        if len(self.names) == tid:
            self.names.append(node.output[0])

    # ------------------------------------------------------------------ ops
    def weights(self, n: Any, cout: int, sx: float, sy: float) -> tuple:
        """(int8 weight, int32 bias, float32 multipliers) of a Conv / Gemm node."""
        w, sw, zw = self.const(n.input[1], f"{n.name}'s weight")
        if w.dtype != np.int8 or np.any(zw != 0):
            raise self.fail(f"{n.name}: weights must be symmetric int8")
        if len(n.input) < 3:
            raise self.fail(f"{n.name} has no bias")
        b, sb, zb = self.const(n.input[2], f"{n.name}'s bias")
        if b.dtype != np.int32 or np.any(zb != 0) or b.shape != (cout,) or w.shape[0] != cout:
            raise self.fail(f"{n.name}: bias must be int32 with one value per output")
        sw = np.broadcast_to(sw, (cout,)).astype(_F32)
        # ONNX Runtime's quantizer gives the bias the scale s_x * s_w: the int32 bias is then
        # added to the accumulator as is
        if not np.allclose(np.broadcast_to(sb, (cout,)), _F32(sx) * sw, rtol=1e-5, atol=0):
            raise self.fail(f"{n.name}: bias scale is not input scale x weight scale")
        # MLAS QLinearConv's multiplier, in its float32 order: (s_x * s_w) / s_y
        mult = (_F32(sx) * sw) / _F32(sy)
        return w, b.astype(np.int64), mult.astype(_F32)

    def make_conv(self, n: Any, attrs: dict, qp: tuple[float, int]) -> int:
        tin = self.act(n.input[0])
        (sx, zx), (sy, zy) = self.qp[tin], qp
        cin = self.chans[tin]
        w_arr = self.const(n.input[1], f"{n.name}'s weight")[0]
        cout = int(w_arr.shape[0])
        w, b, mult = self.weights(n, cout, sx, sy)
        k = list(attrs.get("kernel_shape", w.shape[2:]))
        strides = list(attrs.get("strides", [1, 1]))
        dil = list(attrs.get("dilations", [1, 1]))
        pads = list(attrs.get("pads", [0, 0, 0, 0]))
        group = int(attrs.get("group", 1))
        if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            raise self.fail(f"{n.name}: auto_pad is not supported")
        if len(k) != 2 or len(set(strides)) != 1 or len(set(dil)) != 1 or len(pads) != 4:
            raise self.fail(f"{n.name}: only square 2-D convolutions are supported")
        stride, d = int(strides[0]), int(dil[0])
        pt, pl, pb, pr = (int(v) for v in pads)
        geo = (stride, d, pt, pl, pb, pr)
        if k == [1, 1] and group == 1 and geo == (1, 1, 0, 0, 0, 0):
            if w.shape != (cout, cin, 1, 1):
                raise self.fail(f"{n.name}: weight {w.shape} does not fit {cin} inputs")
            w2 = w.reshape(cout, cin)
            bias = b - zx * w2.sum(1, dtype=np.int64)
            tid = self.new_tensor(qp, cout)
            cp = _pad16(cout)
            self.ops.append((PW, tin, -1, tid, (cout, zy), (), (
                _pack_gemm(w2, cp, _pad16(cin)), _i32(bias, cp, n), _padded(mult, cp, _F32))))
            return tid
        if k == [3, 3] and group == 1 and cin == 3 and tin == 0:  # tensor 0: the input
            if w.shape != (cout, 3, 3, 3):
                raise self.fail(f"{n.name}: stem weight {w.shape} is not (C, 3, 3, 3)")
            w2 = w.reshape(cout, 27)
            bias = b - zx * w2.sum(1, dtype=np.int64)
            tid = self.new_tensor(qp, cout)
            cp = _pad16(cout)
            self.ops.append((STEM, tin, -1, tid, (cout, *geo, zx, zy), (), (
                _pack_gemm(w2, cp, 28), _i32(bias, cp, n), _padded(mult, cp, _F32))))
            return tid
        if k == [3, 3] and group == cin == cout and cin > 1:
            if w.shape != (cout, 1, 3, 3):
                raise self.fail(f"{n.name}: depthwise weight {w.shape} is not (C, 1, 3, 3)")
            w2 = w.reshape(cout, 9)
            bias = b - zx * w2.sum(1, dtype=np.int64)
            tid = self.new_tensor(qp, cout)
            cp = _pad16(cout)
            self.ops.append((DW, tin, -1, tid, (*geo, zx, zy), (), (
                _pack_dw(w2, cp), _dw_order(_i32(bias, cp, n)),
                _dw_order(_padded(mult, cp, _F32)))))
            return tid
        raise self.fail(f"{n.name}: a {k[0]}x{k[1]} convolution with group {group} and "
                        f"geometry {geo} is not one of stem / depthwise 3x3 / pointwise 1x1")

    def make_add(self, n: Any, attrs: dict, qp: tuple[float, int]) -> int:
        a, b = self.act(n.input[0]), self.act(n.input[1])
        if self.chans[a] != self.chans[b]:
            raise self.fail(f"{n.name}: adds tensors of {self.chans[a]} and "
                            f"{self.chans[b]} channels")
        (sa, za), (sb, zb), (sc, zc) = self.qp[a], self.qp[b], qp
        tid = self.new_tensor(qp, self.chans[a])
        self.ops.append((ADD, a, b, tid, (), _add_params(sa, sb, sc, za, zb, zc), ()))
        return tid

    def make_globalaveragepool(self, n: Any, attrs: dict, qp: tuple[float, int]) -> int:
        a = self.act(n.input[0])
        (sx, zx), (sy, zy) = self.qp[a], qp
        tid = self.new_tensor(qp, self.chans[a])
        self.ops.append((GAP, a, -1, tid, (zx, zy), (sx, sy), ()))
        return tid

    def make_flatten(self, n: Any, attrs: dict, qp: tuple[float, int]) -> int:
        a = self.act(n.input[0])
        if not self.ops or self.ops[-1][0] != GAP or self.ops[-1][3] != a or \
                int(attrs.get("axis", 1)) != 1 or qp != self.qp[a]:
            raise self.fail(f"{n.name}: only the pooled features can be flattened "
                            f"(same quantization)")
        return a  # a 1x1 map flattened is the same bytes

    def make_gemm(self, n: Any, attrs: dict, qp: tuple[float, int]) -> int:
        a = self.act(n.input[0])
        if int(attrs.get("transB", 0)) != 1 or int(attrs.get("transA", 0)) != 0 or \
                float(attrs.get("alpha", 1.0)) != 1.0 or float(attrs.get("beta", 1.0)) != 1.0:
            raise self.fail(f"{n.name}: the classifier must be x @ W.T + b")
        if not self.ops or self.ops[-1][0] != GAP or self.ops[-1][3] != a:
            raise self.fail(f"{n.name}: the classifier must follow the global pool")
        w_arr = self.const(n.input[1], f"{n.name}'s weight")[0]
        classes = int(w_arr.shape[0])
        (sx, zx), (sy, zy) = self.qp[a], qp
        w, b, mult = self.weights(n, classes, sx, sy)
        if w.shape != (classes, self.chans[a]):
            raise self.fail(f"{n.name}: weight {w.shape} does not fit {self.chans[a]} inputs")
        bias = b - zx * w.sum(1, dtype=np.int64)
        tid = self.new_tensor(qp, classes)
        cp = _pad16(classes)
        self.ops.append((FC, a, -1, tid, (classes, zy), (sy,), (
            _pack_gemm(w, cp, _pad16(self.chans[a])), _i32(bias, cp, n),
            _padded(mult, cp, _F32))))
        self.classes = classes
        return tid


def _add_params(sa: float, sb: float, sc: float, za: int, zb: int,
                zc: int) -> tuple[float, float, float]:
    """MLAS's AVX2 QLinearAdd constants as its compiled code computes them: ra = s_a / s_c,
    rb = s_b / s_c and fixed = zp_c - (ra zp_a + rb zp_b) with the compiler's FMA contraction
    fma(ra, zp_a, rb zp_b) (measured: without it one tie in a few thousand rounds the other
    way than ONNX Runtime 1.32 on AVX2)."""
    ra, rb = _F32(sa) / _F32(sc), _F32(sb) / _F32(sc)
    inner = float(ra) * za + float(_F32(rb * _F32(zb)))  # exact in float64, rounded once
    fixed = _F32(zc) - _F32(inner)
    return float(ra), float(rb), float(fixed)


def _attr(a: Any) -> Any:
    from onnx import helper

    return helper.get_attribute_value(a)


def _i32(v: np.ndarray, n: int, node: Any) -> np.ndarray:
    if np.abs(v).max(initial=0) >= 2**31:
        raise UserError(f"{node.name}: the folded int32 bias overflows")
    return _padded(v, n, np.int32)


def int8_ops(path: str | os.PathLike) -> tuple[tuple, int, tuple[int, int] | None]:
    """The engine's op list, class count and fixed input size (None: any) for a QDQ int8
    ONNX file (module docstring); a one-line UserError for a graph it does not run."""
    return _Reader(Path(path)).run()


def int8_tensor_names(path: str | os.PathLike) -> list[str]:
    """The QuantizeLinear output each engine tensor holds, by index (tests compare them)."""
    reader = _Reader(Path(path))
    reader.run()
    return reader.names
