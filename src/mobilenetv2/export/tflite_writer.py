"""Writing a TensorFlow Lite flatbuffer: `TFLiteBuilder` (tensors, operators, metadata).

Nothing here knows about PyTorch or MobileNetV2: `export/tflite.py` lowers a graph onto it.
The file follows the LiteRT schema (tensorflow/compiler/mlir/lite/schema/schema.fbs,
version 3) and is serialized with `flatbuffers` through the builder functions the `tflite`
package generates from that schema, so field ids and enum values are the schema's own.

- Buffer 0 is the empty sentinel the schema requires; every constant gets its own buffer,
  aligned to 16 bytes (the interpreter and XNNPACK read weights in place, and int32 biases
  must at least be 4-byte aligned).
- Quantization parameters are per tensor or per channel (`quantized_dimension`), as the
  TFLite quantization spec (tensorflow.org/lite/performance/quantization_spec) defines.
- Metadata entries (`Model.metadata`: a name and a buffer) carry our JSON documents; the
  interpreter ignores them and apps read them (README "On a phone").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["TFLiteBuilder", "TensorSpec"]

_TYPES = {np.dtype(np.float32): 0, np.dtype(np.int32): 2, np.dtype(np.uint8): 3,
          np.dtype(np.int64): 4, np.dtype(np.int8): 9}


@dataclass
class TensorSpec:
    """One tensor: shape (batch first, NHWC for images), numpy dtype, optional constant data
    and quantization (`scale`, `zero_point` arrays; `axis` for per-channel)."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    data: np.ndarray | None = None
    scale: np.ndarray | None = None
    zero_point: np.ndarray | None = None
    axis: int = 0
    dynamic_batch: bool = False


@dataclass
class _Op:
    code: int
    version: int
    inputs: list[int]
    outputs: list[int]
    options_type: int = 0
    options: Any = None  # callable(builder) -> offset


@dataclass
class TFLiteBuilder:
    """Accumulates one subgraph and serializes it (`build`)."""

    tensors: list[TensorSpec] = field(default_factory=list)
    ops: list[_Op] = field(default_factory=list)
    inputs: list[int] = field(default_factory=list)
    outputs: list[int] = field(default_factory=list)
    metadata: dict[str, bytes] = field(default_factory=dict)
    description: str = ""

    def tensor(self, spec: TensorSpec) -> int:
        if spec.data is not None:
            spec.data = np.ascontiguousarray(spec.data, dtype=spec.dtype)
            if tuple(spec.data.shape) != tuple(spec.shape):
                raise ValueError(f"{spec.name}: data shape {spec.data.shape} != {spec.shape}")
        self.tensors.append(spec)
        return len(self.tensors) - 1

    def const(self, name: str, data: np.ndarray, **quant: Any) -> int:
        data = np.asarray(data)
        return self.tensor(TensorSpec(name, tuple(data.shape), data.dtype, data, **quant))

    def op(self, code: int, inputs: list[int], outputs: list[int], *, version: int = 1,
           options_type: int = 0, options: Any = None) -> None:
        self.ops.append(_Op(code, version, inputs, outputs, options_type, options))

    # ------------------------------------------------------------------ serialization
    def build(self) -> bytes:
        import flatbuffers
        import tflite as t

        b = flatbuffers.Builder(1 << 20)
        # buffers: 0 = empty sentinel, then one per constant tensor
        buffer_ids, datas = [], [b""]
        for spec in self.tensors:
            if spec.data is None:
                buffer_ids.append(0)
            else:
                buffer_ids.append(len(datas))
                datas.append(spec.data.astype(spec.data.dtype.newbyteorder("<")).tobytes())
        meta_names = list(self.metadata)
        meta_buffers = []
        for name in meta_names:
            meta_buffers.append(len(datas))
            datas.append(self.metadata[name])
        buffer_offsets = []
        for data in datas:
            vec = _aligned_bytes(b, data) if data else None
            t.BufferStart(b)
            if vec is not None:
                t.BufferAddData(b, vec)
            buffer_offsets.append(t.BufferEnd(b))
        tensor_offsets = [self._tensor(b, t, s, buf) for s, buf in zip(self.tensors, buffer_ids)]
        codes: list[tuple[int, int]] = []
        for o in self.ops:
            if (o.code, o.version) not in codes:
                codes.append((o.code, o.version))
        op_offsets = []
        for o in self.ops:
            opts = o.options(b) if o.options is not None else None
            ins = _int_vector(b, t.OperatorStartInputsVector, o.inputs)
            outs = _int_vector(b, t.OperatorStartOutputsVector, o.outputs)
            t.OperatorStart(b)
            t.OperatorAddOpcodeIndex(b, codes.index((o.code, o.version)))
            t.OperatorAddInputs(b, ins)
            t.OperatorAddOutputs(b, outs)
            if opts is not None:
                t.OperatorAddBuiltinOptionsType(b, o.options_type)
                t.OperatorAddBuiltinOptions(b, opts)
            op_offsets.append(t.OperatorEnd(b))
        name = b.CreateString("main")
        tv = _offset_vector(b, t.SubGraphStartTensorsVector, tensor_offsets)
        iv = _int_vector(b, t.SubGraphStartInputsVector, self.inputs)
        ov = _int_vector(b, t.SubGraphStartOutputsVector, self.outputs)
        opv = _offset_vector(b, t.SubGraphStartOperatorsVector, op_offsets)
        t.SubGraphStart(b)
        t.SubGraphAddTensors(b, tv)
        t.SubGraphAddInputs(b, iv)
        t.SubGraphAddOutputs(b, ov)
        t.SubGraphAddOperators(b, opv)
        t.SubGraphAddName(b, name)
        subgraph = t.SubGraphEnd(b)
        code_offsets = []
        for code, version in codes:
            t.OperatorCodeStart(b)
            # schema v3a: codes above 127 live in builtin_code only; the deprecated int8
            # field holds PLACEHOLDER_FOR_GREATER_OP_CODES (127) for them
            t.OperatorCodeAddDeprecatedBuiltinCode(b, min(code, 127))
            t.OperatorCodeAddBuiltinCode(b, code)
            t.OperatorCodeAddVersion(b, version)
            code_offsets.append(t.OperatorCodeEnd(b))
        meta_offsets = []
        for mname, buf in zip(meta_names, meta_buffers):
            s = b.CreateString(mname)
            t.MetadataStart(b)
            t.MetadataAddName(b, s)
            t.MetadataAddBuffer(b, buf)
            meta_offsets.append(t.MetadataEnd(b))
        desc = b.CreateString(self.description)
        codes_v = _offset_vector(b, t.ModelStartOperatorCodesVector, code_offsets)
        subs_v = _offset_vector(b, t.ModelStartSubgraphsVector, [subgraph])
        bufs_v = _offset_vector(b, t.ModelStartBuffersVector, buffer_offsets)
        meta_v = _offset_vector(b, t.ModelStartMetadataVector, meta_offsets)
        t.ModelStart(b)
        t.ModelAddVersion(b, 3)
        t.ModelAddOperatorCodes(b, codes_v)
        t.ModelAddSubgraphs(b, subs_v)
        t.ModelAddDescription(b, desc)
        t.ModelAddBuffers(b, bufs_v)
        t.ModelAddMetadata(b, meta_v)
        b.Finish(t.ModelEnd(b), file_identifier=b"TFL3")
        return bytes(b.Output())

    @staticmethod
    def _tensor(b: Any, t: Any, s: TensorSpec, buffer: int) -> int:
        name = b.CreateString(s.name)
        shape = _int_vector(b, t.TensorStartShapeVector, list(s.shape))
        sig = None
        if s.dynamic_batch:
            sig = _int_vector(b, t.TensorStartShapeSignatureVector, [-1, *s.shape[1:]])
        quant = None
        if s.scale is not None:
            scale = np.atleast_1d(np.asarray(s.scale, np.float32))
            zp = np.atleast_1d(np.asarray(s.zero_point, np.int64))
            sv = b.CreateNumpyVector(scale)
            zv = b.CreateNumpyVector(zp)
            t.QuantizationParametersStart(b)
            t.QuantizationParametersAddScale(b, sv)
            t.QuantizationParametersAddZeroPoint(b, zv)
            t.QuantizationParametersAddQuantizedDimension(b, s.axis)
            quant = t.QuantizationParametersEnd(b)
        t.TensorStart(b)
        t.TensorAddShape(b, shape)
        if sig is not None:
            t.TensorAddShapeSignature(b, sig)
        t.TensorAddType(b, _TYPES[np.dtype(s.dtype)])
        t.TensorAddBuffer(b, buffer)
        t.TensorAddName(b, name)
        if quant is not None:
            t.TensorAddQuantization(b, quant)
        return t.TensorEnd(b)


def _aligned_bytes(b: Any, data: bytes, alignment: int = 16) -> int:
    """A ubyte vector whose first byte sits on an `alignment` boundary of the file."""
    b.StartVector(1, len(data), alignment)
    b.head = b.head - len(data)
    b.Bytes[b.head:b.head + len(data)] = data
    return b.EndVector()


def _int_vector(b: Any, start: Any, values: list[int]) -> int:
    start(b, len(values))
    for v in reversed(values):
        b.PrependInt32(int(v))
    return b.EndVector()


def _offset_vector(b: Any, start: Any, offsets: list[int]) -> int:
    start(b, len(offsets))
    for o in reversed(offsets):
        b.PrependUOffsetTRelative(o)
    return b.EndVector()
