"""Writing TensorFlow Lite flatbuffers for the converter tests: the official fixture
rewritten as float and as int8 per-channel, float models of any width built from one of ours,
and post-training quantization of those. Written with the flatbuffer object API that
ai-edge-litert ships (schema_py_generated: ModelT ... Pack), so the reference interpreter
itself is the judge of each file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mobilenetv2.model import MobileNetV2

__all__ = ["OPS", "float_from_quant", "int8_from_quant", "pack", "quantize_float_tflite",
           "schema", "tflite_from_torch"]

OPS = {"ADD": 0, "AVERAGE_POOL_2D": 1, "CONV_2D": 3, "DEPTHWISE_CONV_2D": 4, "DEQUANTIZE": 6,
       "FULLY_CONNECTED": 9, "RESHAPE": 22, "SOFTMAX": 25, "PAD": 34, "MEAN": 40}
FLOAT32, FLOAT16, INT32, UINT8, INT8 = 0, 1, 2, 3, 9


def schema():
    return pytest.importorskip("ai_edge_litert.schema_py_generated",
                               reason="needs ai-edge-litert's flatbuffer schema")


def pack(model) -> bytes:
    import flatbuffers

    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _load_t(path: Path):
    s = schema()
    return s, s.ModelT.InitFromPackedBuf(path.read_bytes(), 0)


def _opname(model, op) -> str:
    code = model.operatorCodes[op.opcodeIndex]
    c = max(code.builtinCode, code.deprecatedBuiltinCode)
    return {v: k for k, v in OPS.items()}.get(c, str(c))


def _const(model, t) -> np.ndarray | None:
    data = model.buffers[t.buffer].data
    if data is None or len(data) == 0:
        return None
    dtype = {FLOAT32: np.float32, INT32: np.int32, UINT8: np.uint8, INT8: np.int8}[t.type]
    return np.frombuffer(np.asarray(data, np.uint8).tobytes(), dtype).reshape(t.shape)


def _set_const(model, t, arr: np.ndarray, ttype: int) -> None:
    t.type = ttype
    model.buffers[t.buffer].data = np.frombuffer(np.ascontiguousarray(arr).tobytes(), np.uint8)


def _deq(t, q: np.ndarray) -> np.ndarray:
    scale = np.asarray(t.quantization.scale, np.float64)
    zp = np.asarray(t.quantization.zeroPoint, np.float64)
    if scale.size > 1:
        shape = [1] * q.ndim
        shape[t.quantization.quantizedDimension] = scale.size
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    return ((q.astype(np.float64) - zp) * scale).astype(np.float32)


def _logits_tensor(model) -> int:
    sg = model.subgraphs[0]
    return next(op.outputs[0] for op in sg.operators if _opname(model, op) == "RESHAPE")


def float_from_quant(path: Path) -> bytes:
    """The uint8 model with every weight dequantized and float activations; also outputs
    the logits (before softmax) so they can be compared directly."""
    s, model = _load_t(path)
    sg = model.subgraphs[0]
    for t in sg.tensors:
        q = _const(model, t)
        if t.quantization is not None and t.quantization.scale:
            if q is not None:
                _set_const(model, t, _deq(t, q), FLOAT32)
            t.type, t.quantization = FLOAT32, None
    for code in model.operatorCodes:
        code.version = 1
    sg.outputs = [_logits_tensor(model), *sg.outputs]
    return pack(model)


def int8_from_quant(path: Path) -> bytes:
    """The uint8 model requantized the way today's converter writes int8 models: weights
    int8 symmetric per output channel (axis 0 of OHWI, axis 3 of 1HWC), int32 biases with
    scale input_scale x weight_scale per channel, int8 activations (zero point - 128)."""
    s, model = _load_t(path)
    sg = model.subgraphs[0]
    done: set[int] = set()
    for op in sg.operators:
        kind = _opname(model, op)
        if kind not in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            continue
        x_t, w_t, b_t = (sg.tensors[i] for i in op.inputs[:3])
        axis = 0 if kind == "CONV_2D" else 3
        w = _deq(w_t, _const(model, w_t))
        b = _deq(b_t, _const(model, b_t))
        red = tuple(i for i in range(4) if i != axis)
        x_scale = x_t.quantization.scale[0]
        # Large enough that every bias fits int32 (channels whose weights are all zero).
        w_scale = np.maximum(np.abs(w).max(axis=red) / 127.0,
                             np.maximum(np.abs(b), 1e-6) / (x_scale * 2.0**30))
        shape = [1] * 4
        shape[axis] = -1
        qw = np.clip(np.round(w / w_scale.reshape(shape)), -127, 127).astype(np.int8)
        _set_const(model, w_t, qw, INT8)
        w_t.quantization = s.QuantizationParametersT(
            scale=list(w_scale), zeroPoint=[0] * w_scale.size, quantizedDimension=axis)
        b_scale = x_scale * w_scale
        qb = np.round(b / b_scale).astype(np.int32)
        _set_const(model, b_t, qb, INT32)
        b_t.quantization = s.QuantizationParametersT(
            scale=list(b_scale), zeroPoint=[0] * b_scale.size, quantizedDimension=0)
        done |= {op.inputs[1], op.inputs[2]}
    for i, t in enumerate(sg.tensors):
        if i not in done and t.type == UINT8:
            t.type = INT8
            t.quantization.zeroPoint = [z - 128 for z in t.quantization.zeroPoint]
    versions = {"CONV_2D": 3, "DEPTHWISE_CONV_2D": 3, "ADD": 2, "AVERAGE_POOL_2D": 2,
                "SOFTMAX": 2, "RESHAPE": 1}
    for code in model.operatorCodes:
        c = max(code.builtinCode, code.deprecatedBuiltinCode)
        code.version = versions[{v: k for k, v in OPS.items()}[c]]
    return pack(model)


def tflite_from_torch(model: MobileNetV2, keras_layout: bool = False,
                      fp16: bool = False) -> bytes:
    """A float .tflite laid out like the official TF-slim conversions, from one of our
    models (config padding="tf_same"): BN folded into conv weights and biases, OHWI / 1HWC
    weights, SAME padding, fused ReLU6, ADD, AVERAGE_POOL_2D, 1x1 CONV_2D logits, RESHAPE,
    SOFTMAX. Outputs: logits, then probabilities.

    `keras_layout`: what converting a Keras model gives instead: stride-2 convs as PAD +
    VALID, MEAN over height and width, FULLY_CONNECTED logits. `fp16`: float16 weights
    widened by DEQUANTIZE ops (TFLite's "float16 quantization")."""
    s = schema()
    size = model.config.resolution
    tensors, buffers, operators, codes = [], [s.BufferT()], [], {}
    dequant_ops = []

    def tensor(shape, data=None, ttype=FLOAT32) -> int:
        buf = s.BufferT()
        if data is not None:
            buf.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), np.uint8)
        buffers.append(buf)
        tensors.append(s.TensorT(shape=list(shape), type=ttype, buffer=len(buffers) - 1,
                                 name=f"t{len(tensors)}"))
        return len(tensors) - 1

    def op(kind, inputs, outputs, opt_type=0, opts=None, into=operators) -> None:
        if kind not in codes:
            codes[kind] = s.OperatorCodeT(builtinCode=OPS[kind],
                                          deprecatedBuiltinCode=OPS[kind], version=1)
        into.append(s.OperatorT(opcodeIndex=list(codes).index(kind), inputs=inputs,
                                outputs=outputs, builtinOptionsType=opt_type,
                                builtinOptions=opts))

    def weight(arr) -> int:
        if not fp16:
            return tensor(arr.shape, arr)
        half = tensor(arr.shape, arr.astype(np.float16), FLOAT16)
        out = tensor(arr.shape)
        op("DEQUANTIZE", [half], [out], into=dequant_ops)
        return out

    def conv(x, hw, cba, depthwise=False):
        w, bn = cba.conv.weight.detach().double(), cba.bn
        k = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
        wf = (w * k[:, None, None, None]).float()
        bf = (bn.bias.detach().double() - bn.running_mean.double() * k).float()
        stride = cba.conv.stride[0]
        out_hw = (hw + stride - 1) // stride
        wt = wf[:, 0].permute(1, 2, 0)[None] if depthwise else wf.permute(0, 2, 3, 1)
        y = tensor([1, out_hw, out_hw, w.shape[0]])
        act = 3 if "act" in dict(cba.named_children()) else 0
        padding = 0  # SAME
        if keras_layout and stride > 1:
            from mobilenetv2.model.layers import tf_same_padding

            a, b = tf_same_padding(hw, 3, stride)
            pads = np.array([[0, 0], [a, b], [a, b], [0, 0]], np.int32)
            padded = tensor([1, hw + a + b, hw + a + b, tensors[x].shape[3]])
            op("PAD", [x, tensor([4, 2], pads, INT32)], [padded], 22, s.PadOptionsT())
            x, padding = padded, 1  # VALID
        if depthwise:
            opts = s.DepthwiseConv2DOptionsT(padding=padding, strideW=stride, strideH=stride,
                                             depthMultiplier=1, fusedActivationFunction=act)
        else:
            opts = s.Conv2DOptionsT(padding=padding, strideW=stride, strideH=stride,
                                    fusedActivationFunction=act)
        op("DEPTHWISE_CONV_2D" if depthwise else "CONV_2D",
           [x, weight(wt.numpy()), tensor([w.shape[0]], bf.numpy())], [y],
           2 if depthwise else 1, opts)
        return y, out_hw

    x0 = tensor([1, size, size, 3])
    x, hw = conv(x0, size, model.stem)
    for block in model.blocks:
        block_in = x
        if not isinstance(block.expand, torch.nn.Identity):
            x, hw = conv(x, hw, block.expand)
        x, hw = conv(x, hw, block.depthwise, depthwise=True)
        x, hw = conv(x, hw, block.project)
        if block.use_residual:
            y = tensor([1, hw, hw, block.spec.out_channels])
            op("ADD", [block_in, x], [y], 11, s.AddOptionsT())
            x = y
    x, hw = conv(x, hw, model.head)
    n, c = model.num_classes, model.num_features
    if keras_layout:
        pooled = tensor([1, c])
        op("MEAN", [x, tensor([2], np.array([1, 2], np.int32), INT32)], [pooled], 27,
           s.ReducerOptionsT(keepDims=False))
        logits = tensor([1, n])
        op("FULLY_CONNECTED", [pooled, weight(model.classifier.weight.detach().numpy()),
                               tensor([n], model.classifier.bias.detach().numpy())],
           [logits], 8, s.FullyConnectedOptionsT())
    else:
        pooled = tensor([1, 1, 1, c])
        op("AVERAGE_POOL_2D", [x], [pooled], 5,
           s.Pool2DOptionsT(padding=1, strideW=1, strideH=1, filterWidth=hw, filterHeight=hw))
        w = model.classifier.weight.detach().reshape(n, 1, 1, -1)
        logits4 = tensor([1, 1, 1, n])
        op("CONV_2D", [pooled, weight(w.numpy()),
                       tensor([n], model.classifier.bias.detach().numpy())], [logits4], 1,
           s.Conv2DOptionsT(padding=0, strideW=1, strideH=1))
        logits = tensor([1, n])
        op("RESHAPE", [logits4, tensor([2], np.array([1, n], np.int32), INT32)], [logits], 17,
           s.ReshapeOptionsT(newShape=[1, n]))
    probs = tensor([1, n])
    op("SOFTMAX", [logits], [probs], 9, s.SoftmaxOptionsT(beta=1.0))
    operators[:0] = dequant_ops  # weights are widened before anything runs
    graph = s.SubGraphT(tensors=tensors, inputs=[x0], outputs=[logits, probs],
                        operators=operators, name="main")
    return pack(s.ModelT(version=3, operatorCodes=list(codes.values()), subgraphs=[graph],
                          buffers=buffers, description="synthesized for tests"))



def quantize_float_tflite(data: bytes, calibration: list[np.ndarray], scheme: str) -> bytes:
    """Post-training quantization of a float model written by `tflite_from_torch`, the way
    TFLite's converter lays it out: activation ranges calibrated with the interpreter itself
    (all intermediate tensors kept), input uint8/int8 with scale 1/128 (pixel - 128),
    softmax output scale 1/256. scheme "uint8": weights uint8 per-tensor asymmetric (the
    hosted quantized models); "int8": weights int8 symmetric per output channel."""
    s = schema()
    litert = pytest.importorskip("ai_edge_litert.interpreter")
    it = litert.Interpreter(model_content=data, experimental_preserve_all_tensors=True,
                            experimental_op_resolver_type=litert.OpResolverType
                            .BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    it.allocate_tensors()
    model = s.ModelT.InitFromPackedBuf(data, 0)
    sg = model.subgraphs[0]
    lo = np.full(len(sg.tensors), np.inf)
    hi = np.full(len(sg.tensors), -np.inf)
    for x in calibration:
        it.set_tensor(it.get_input_details()[0]["index"], x)
        it.invoke()
        for i, t in enumerate(sg.tensors):
            if _const(model, t) is None:
                v = it.get_tensor(i)
                lo[i], hi[i] = min(lo[i], float(v.min())), max(hi[i], float(v.max()))
    signed = scheme == "int8"
    qmin, qmax, ttype = (-128, 127, INT8) if signed else (0, 255, UINT8)
    act: dict[int, tuple[float, int]] = {}

    def act_params(i: int) -> tuple[float, int]:
        a, b = min(lo[i], 0.0), max(hi[i], 0.0)
        scale = max(b - a, 1e-6) / 255.0
        return scale, int(np.clip(round(qmin - a / scale), qmin, qmax))

    sg_in = sg.inputs[0]
    act[sg_in] = (1 / 128, 0 if signed else 128)
    for op in sg.operators:
        kind, out = _opname(model, op), op.outputs[0]
        if kind in ("AVERAGE_POOL_2D", "RESHAPE"):
            act[out] = act[op.inputs[0]]  # TFLite requires the same parameters
        elif kind == "SOFTMAX":
            act[out] = (1 / 256, -128 if signed else 0)
        else:
            act[out] = act_params(out)
        if kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            w_t, b_t = sg.tensors[op.inputs[1]], sg.tensors[op.inputs[2]]
            w, b = _const(model, w_t), _const(model, b_t)
            x_scale = act[op.inputs[0]][0]
            if signed:
                axis = 0 if kind == "CONV_2D" else 3
                red = tuple(i for i in range(4) if i != axis)
                w_scale = np.maximum(np.abs(w).max(axis=red) / 127.0,
                                     np.maximum(np.abs(b), 1e-6) / (x_scale * 2.0**30))
                shape = [1] * 4
                shape[axis] = -1
                qw = np.clip(np.round(w / w_scale.reshape(shape)), -127, 127).astype(np.int8)
                w_t.quantization = s.QuantizationParametersT(
                    scale=list(w_scale), zeroPoint=[0] * w_scale.size,
                    quantizedDimension=axis)
                _set_const(model, w_t, qw, INT8)
            else:
                a, c = min(float(w.min()), 0.0), max(float(w.max()), 0.0)
                scale = max(c - a, 1e-8) / 255.0
                zp = int(np.clip(round(-a / scale), 0, 255))
                qw = np.clip(np.round(w / scale) + zp, 0, 255).astype(np.uint8)
                w_scale = np.array([scale])
                w_t.quantization = s.QuantizationParametersT(scale=[scale], zeroPoint=[zp])
                _set_const(model, w_t, qw, UINT8)
            b_scale = x_scale * w_scale
            b_t.quantization = s.QuantizationParametersT(
                scale=list(b_scale), zeroPoint=[0] * b_scale.size)
            _set_const(model, b_t, np.round(b / b_scale).astype(np.int32), INT32)
    for i, (scale, zp) in act.items():
        sg.tensors[i].type = ttype
        sg.tensors[i].quantization = s.QuantizationParametersT(scale=[scale], zeroPoint=[zp])
    versions = ({"CONV_2D": 3, "DEPTHWISE_CONV_2D": 3, "ADD": 2, "AVERAGE_POOL_2D": 2,
                 "SOFTMAX": 2, "RESHAPE": 1} if signed else {})
    for code in model.operatorCodes:
        name = {v: k for k, v in OPS.items()}[max(code.builtinCode, code.deprecatedBuiltinCode)]
        code.version = versions.get(name, 1)
    return pack(model)
