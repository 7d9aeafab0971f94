"""Reading a TensorFlow Lite flatbuffer: `read_tflite_graph(path)` -> `TFLiteGraph`.

Decodes the `.tflite` file itself (schema: tensorflow/compiler/mlir/lite/schema/schema.fbs,
parsed with the `tflite` package): operators with their options (padding, strides, dilation,
fused activation), tensors with shapes, types, constant buffers and quantization parameters.
`dequantize` gives the float32 values of a constant tensor: quantized weights (uint8
per-tensor, int8 per-channel along `quantized_dimension`) become `scale * (q - zero_point)`,
float16 ones are widened. Nothing here knows about MobileNetV2 (`match.py` does).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mobilenetv2.errors import UserError

__all__ = ["OpInfo", "TFLiteGraph", "TensorInfo", "dequantize", "read_tflite_graph"]

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
    metadata: dict[str, bytes] = field(default_factory=dict)  # Model.metadata entries


def read_tflite_graph(path: str | os.PathLike) -> TFLiteGraph:
    """Decode a `.tflite` file: operators with options, tensors with quantization and data.

    Raises:
        UserError: not a TFLite flatbuffer, corrupt, or several subgraphs.
    """
    p = Path(path)
    return _parse(p.read_bytes(), str(p))


def _parse(data: bytes, source: str) -> TFLiteGraph:
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
        metadata = {}
        for i in range(model.MetadataLength()):
            m = model.Metadata(i)
            if m.Buffer() < model.BuffersLength():
                metadata[(m.Name() or b"").decode(errors="replace")] = (
                    model.Buffers(m.Buffer()).DataAsNumpy().tobytes()
                    if model.Buffers(m.Buffer()).DataLength() else b"")
    except UserError:
        raise
    except Exception as e:  # flatbuffers raises assorted errors on corrupt input
        raise UserError(
            f"{source}: corrupt or truncated TensorFlow Lite flatbuffer "
            f"({type(e).__name__}: {e})"
        ) from e
    return TFLiteGraph(tensors, ops, inputs, outputs, desc, metadata)


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
        "CONCATENATION": tflite.ConcatenationOptions,
        "RESIZE_BILINEAR": tflite.ResizeBilinearOptions,
    }.get(kind)
    table = op.BuiltinOptions()
    if cls is None or table is None:
        return {}
    o = cls()
    o.Init(table.Bytes, table.Pos)
    out: dict[str, Any] = {}
    if kind == "RESIZE_BILINEAR":
        # DeepLab upsamples with align_corners=True; a converter must know which it is.
        return {"align_corners": bool(o.AlignCorners()),
                "half_pixel_centers": bool(o.HalfPixelCenters())}
    if kind == "CONCATENATION":
        out["axis"] = o.Axis()
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


def dequantize(t: TensorInfo) -> np.ndarray:
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

