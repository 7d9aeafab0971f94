"""TFLite converter against the reference runtime (ai-edge-litert) on the official model and
real photos (../shared/fixtures/tflite/), plus synthesized models of other widths and
quantization schemes. Run with `-s` to see the measured differences."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mobilenetv2.errors import UserError
from mobilenetv2.model import MobileNetV2
from mobilenetv2.weights.tflite import BN_EPS, convert_tflite

PHOTOS = ("cat.bmp", "grace_hopper.bmp", "parrot.jpg", "bird.bmp")
QUANT_MODEL = "mobilenet_v2_1.0_224_quant.tflite"


def _interpreter(path: Path):
    litert = pytest.importorskip("ai_edge_litert.interpreter", reason="needs ai-edge-litert")
    it = litert.Interpreter(model_path=str(path))
    it.allocate_tensors()
    return it


def _run_interpreter(it, pixels: np.ndarray, pre) -> np.ndarray:
    """Dequantized output (probabilities: the last output) for one HxWx3 uint8 image."""
    inp, out = it.get_input_details()[0], it.get_output_details()[-1]
    scale, zp = inp["quantization"]
    if inp["dtype"] == np.uint8:
        x = pixels[None]
    elif inp["dtype"] == np.int8:
        x = (pixels.astype(np.int16) - 128).astype(np.int8)[None]
    else:  # float input: the converted metadata's normalization, the same as ours gets
        mean, std = np.float32(pre.mean[0]), np.float32(pre.std[0])
        x = ((pixels.astype(np.float32) / np.float32(255.0) - mean) / std)[None]
    it.set_tensor(inp["index"], x)
    it.invoke()
    y = it.get_tensor(out["index"])[0]
    oscale, ozp = out["quantization"]
    if out["dtype"] in (np.uint8, np.int8):
        return (y.astype(np.float32) - ozp) * oscale
    return y.astype(np.float32)


def _photo(fixtures: Path, name: str, size: int) -> np.ndarray:
    """The uint8 pixels both runtimes get: resized once with PIL, bilinear, RGB."""
    from PIL import Image

    with Image.open(fixtures / name) as im:
        return np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR)).copy()


def _ours(converted) -> MobileNetV2:
    model = MobileNetV2(converted.meta.config)
    model.load_state_dict(converted.state_dict)
    return model.eval()


def _our_probs(model: MobileNetV2, pre, pixels: np.ndarray) -> np.ndarray:
    """Our model on the same pixels, normalized with the converted metadata's mean/std."""
    x = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255.0
    mean = torch.tensor(pre.mean).view(1, 3, 1, 1)
    std = torch.tensor(pre.std).view(1, 3, 1, 1)
    with torch.no_grad():
        return model((x - mean) / std).softmax(-1)[0].numpy()


def _compare_on_photos(path: Path, fixtures: Path, converted=None) -> list[dict]:
    converted = converted or convert_tflite(path)
    model, pre = _ours(converted), converted.meta.preprocessing
    it = _interpreter(path)
    rows = []
    for name in PHOTOS:
        pixels = _photo(fixtures, name, pre.crop)
        ref = _run_interpreter(it, pixels, pre)
        ours = _our_probs(model, pre, pixels)
        top5 = list(np.argsort(-ours)[:5])
        rows.append(
            {
                "photo": name,
                "ref_top1": int(ref.argmax()),
                "our_top1": int(ours.argmax()),
                "ref_p": float(ref.max()),
                "our_p": float(ours[ours.argmax()]),
                "confident_missing": [int(c) for c in np.flatnonzero(ref >= 0.05)
                                      if c not in top5],
                "max_abs_prob_diff": float(np.abs(ours - ref).max()),
            }
        )
    print(f"\n{path.name}:")
    labels = converted.meta.labels
    for r in rows:
        print(
            f"  {r['photo']:<17} top-1 {labels[r['ref_top1']]!r:<20} interpreter p="
            f"{r['ref_p']:.4f} ours p={r['our_p']:.4f} |dp|={abs(r['ref_p'] - r['our_p']):.4f} "
            f"max|dp| over classes={r['max_abs_prob_diff']:.4f}"
        )
    return rows


def _assert_photo_criteria(rows: list[dict]) -> None:
    for r in rows:
        assert r["our_top1"] == r["ref_top1"], r
        assert abs(r["our_p"] - r["ref_p"]) <= 0.1, r
        assert not r["confident_missing"], r


def test_official_quant_model_matches_interpreter_on_photos(fixtures_dir: Path) -> None:
    rows = _compare_on_photos(fixtures_dir / QUANT_MODEL, fixtures_dir)
    _assert_photo_criteria(rows)
    # The README's labels, by name (our default labels: background + torchvision's names).
    converted = convert_tflite(fixtures_dir / QUANT_MODEL)
    got = [converted.meta.labels[r["our_top1"]] for r in rows]
    assert got == ["Egyptian cat", "military uniform", "macaw", "chickadee"]


def test_official_quant_model_metadata(fixtures_dir: Path) -> None:
    converted = convert_tflite(fixtures_dir / QUANT_MODEL)
    cfg = converted.meta.config
    assert (cfg.width, cfg.resolution, cfg.num_classes) == (1.0, 224, 1001)
    assert cfg.padding == "tf_same" and cfg.bn_eps == BN_EPS
    pre = converted.meta.preprocessing
    assert (pre.resize, pre.crop, pre.resize_mode) == (224, 224, "exact")
    # (pixel - 128) / 128 exactly, written as mean/std on [0, 1] pixels.
    pixels = torch.arange(256.0)
    ours = (pixels / 255.0 - pre.mean[0]) / pre.std[0]
    torch.testing.assert_close(ours, (pixels - 128) / 128, rtol=0, atol=1e-6)
    # Every BN is an exact identity carrying the folded bias.
    for key, value in converted.state_dict.items():
        if key.endswith("bn.running_var"):
            assert torch.all(value + BN_EPS == 1.0), key
    # Default labels agree with the hosted model's labels file (first synonym; torchvision
    # disambiguates two names).
    file_labels = (fixtures_dir / "imagenet_labels.txt").read_text().splitlines()
    ours = converted.meta.labels
    assert len(ours) == len(file_labels) == 1001 and ours[0] == file_labels[0]
    differ = [i for i, (a, b) in enumerate(zip(ours, file_labels))
              if a != b and b.split(", ")[0] != a]
    assert differ == [135, 640]  # "crane bird", "maillot tank suit"
    converted = convert_tflite(fixtures_dir / QUANT_MODEL, labels=file_labels)
    assert converted.meta.labels == file_labels


def test_wrong_label_count_is_refused(fixtures_dir: Path) -> None:
    with pytest.raises(UserError, match="1000 labels given .* 1001 classes"):
        convert_tflite(fixtures_dir / QUANT_MODEL, labels=["x"] * 1000)


def test_deeplab_model_is_refused_with_a_reason(fixtures_dir: Path) -> None:
    with pytest.raises(UserError, match="not a MobileNetV2 classifier"):
        convert_tflite(fixtures_dir / "deeplabv3_mnv2_pascal_quant.tflite")


def test_not_a_tflite_file(tmp_path: Path) -> None:
    bad = tmp_path / "model.tflite"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(UserError, match="not a TensorFlow Lite model"):
        convert_tflite(bad)
    with pytest.raises(UserError, match="no such file"):
        convert_tflite(tmp_path / "missing.tflite")


def test_truncated_tflite_file(tmp_path: Path, fixtures_dir: Path) -> None:
    data = (fixtures_dir / QUANT_MODEL).read_bytes()
    cut = tmp_path / "cut.tflite"
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(UserError):
        convert_tflite(cut)


# ----------------------------------------------------------------------------------------
# Synthesized official-like models: the fixture rewritten as float and as int8 per-channel,
# and float/uint8 models of other widths built from scratch. Written with the flatbuffer
# object API that ai-edge-litert ships (schema_py_generated: ModelT ... Pack), so the
# interpreter itself is the judge of each file.

OPS = {"ADD": 0, "AVERAGE_POOL_2D": 1, "CONV_2D": 3, "DEPTHWISE_CONV_2D": 4, "DEQUANTIZE": 6,
       "FULLY_CONNECTED": 9, "RESHAPE": 22, "SOFTMAX": 25, "PAD": 34, "MEAN": 40}
FLOAT32, FLOAT16, INT32, UINT8, INT8 = 0, 1, 2, 3, 9


def _schema():
    return pytest.importorskip("ai_edge_litert.schema_py_generated",
                               reason="needs ai-edge-litert's flatbuffer schema")


def _pack(model) -> bytes:
    import flatbuffers

    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _load_t(path: Path):
    s = _schema()
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
    return _pack(model)


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
    return _pack(model)


def test_fixture_rewritten_as_float_matches_interpreter(fixtures_dir: Path,
                                                        tmp_path: Path) -> None:
    path = tmp_path / "mobilenet_v2_1.0_224_float.tflite"
    path.write_bytes(float_from_quant(fixtures_dir / QUANT_MODEL))
    converted = convert_tflite(path)
    assert converted.meta.extra["tflite"]["weights"] == "float32"
    assert converted.meta.preprocessing.mean == (0.5,) * 3  # float input: [-1, 1]
    # The same weights as the quantized original, exactly.
    original = convert_tflite(fixtures_dir / QUANT_MODEL)
    for k, v in original.state_dict.items():
        torch.testing.assert_close(converted.state_dict[k], v, rtol=1e-6, atol=1e-6)
    model = _ours(converted)
    it = _interpreter(path)
    inp = it.get_input_details()[0]
    logits_index = it.get_output_details()[0]["index"]
    worst = 0.0
    for name in PHOTOS:
        pixels = _photo(fixtures_dir, name, 224)
        x = (pixels.astype(np.float32) - 128.0) / 128.0
        it.set_tensor(inp["index"], x[None])
        it.invoke()
        ref = it.get_tensor(logits_index)[0]
        with torch.no_grad():
            ours = model(torch.from_numpy(x).permute(2, 0, 1)[None])[0].numpy()
        worst = max(worst, float(np.abs(ours - ref).max()))
        assert ours.argmax() == ref.argmax()
    print(f"\nfixture as float32 .tflite: max |logit diff| over photos = {worst:.2e}")
    assert worst <= 1e-3
    _assert_photo_criteria(_compare_on_photos(path, fixtures_dir, converted))


def test_fixture_rewritten_as_int8_per_channel_matches_interpreter(fixtures_dir: Path,
                                                                   tmp_path: Path) -> None:
    path = tmp_path / "mobilenet_v2_1.0_224_int8.tflite"
    path.write_bytes(int8_from_quant(fixtures_dir / QUANT_MODEL))
    converted = convert_tflite(path)
    assert converted.meta.extra["tflite"]["weights"] == "int8 per-channel"
    assert converted.meta.extra["tflite"]["input"].startswith("int8, scale 0.0078125, zero "
                                                              "point 0")
    _assert_photo_criteria(_compare_on_photos(path, fixtures_dir, converted))


def tflite_from_torch(model: MobileNetV2, keras_layout: bool = False,
                      fp16: bool = False) -> bytes:
    """A float .tflite laid out like the official TF-slim conversions, from one of our
    models (config padding="tf_same"): BN folded into conv weights and biases, OHWI / 1HWC
    weights, SAME padding, fused ReLU6, ADD, AVERAGE_POOL_2D, 1x1 CONV_2D logits, RESHAPE,
    SOFTMAX. Outputs: logits, then probabilities.

    `keras_layout`: what converting a Keras model gives instead: stride-2 convs as PAD +
    VALID, MEAN over height and width, FULLY_CONNECTED logits. `fp16`: float16 weights
    widened by DEQUANTIZE ops (TFLite's "float16 quantization")."""
    s = _schema()
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
    return _pack(s.ModelT(version=3, operatorCodes=list(codes.values()), subgraphs=[graph],
                          buffers=buffers, description="synthesized for tests"))


def _random_model(width: float, resolution: int, seed: int,
                  num_classes: int = 1001) -> MobileNetV2:
    from mobilenetv2.config import ModelConfig

    torch.manual_seed(seed)
    model = MobileNetV2(ModelConfig(width=width, resolution=resolution, num_classes=num_classes,
                                    padding="tf_same", bn_eps=1e-3))
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.2)
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.3, 2.0)
    # Logits driven by the features (not by a bias), so they differ between inputs.
    model.classifier.weight.data.normal_(0, 0.3)
    model.classifier.bias.data.normal_(0, 0.1)
    return model.eval()


def _interp_logits(path: Path, x: np.ndarray) -> np.ndarray:
    it = _interpreter(path)
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"])


@pytest.mark.parametrize(
    ("width", "resolution"), [(0.35, 96), (0.5, 128), (0.75, 96), (0.6, 96), (1.3, 96),
                              (1.4, 160)]
)
def test_synthesized_float_models_of_other_widths(width: float, resolution: int,
                                                  tmp_path: Path) -> None:
    from mobilenetv2.model.arch import resolve

    torch_model = _random_model(width, resolution, seed=int(width * 100))
    path = tmp_path / f"mobilenet_v2_{width}_{resolution}.tflite"
    path.write_bytes(tflite_from_torch(torch_model))
    converted = convert_tflite(path)
    cfg = converted.meta.config
    assert cfg.resolution == resolution and cfg.num_classes == 1001
    assert resolve(cfg) == resolve(torch_model.config.replace(bn_eps=cfg.bn_eps,
                                                              bn_momentum=cfg.bn_momentum))
    if width != 0.6:
        assert cfg.width == width
    x = np.random.default_rng(0).uniform(-1, 1, (1, resolution, resolution, 3))
    x = x.astype(np.float32)
    ref = _interp_logits(path, x)
    with torch.no_grad():
        xt = torch.from_numpy(x).permute(0, 3, 1, 2)
        ours = _ours(converted)(xt).numpy()
        original = torch_model(xt).numpy()
    d_ref, d_orig = float(np.abs(ours - ref).max()), float(np.abs(ours - original).max())
    print(f"\nsynthesized float width {width} at {resolution} (-> width {cfg.width}): "
          f"max |logit diff| vs interpreter {d_ref:.2e}, vs the source model {d_orig:.2e} "
          f"(logits up to {np.abs(ref).max():.1f})")
    assert d_ref <= 1e-4 and d_orig <= 1e-4


def quantize_float_tflite(data: bytes, calibration: list[np.ndarray], scheme: str) -> bytes:
    """Post-training quantization of a float model written by `tflite_from_torch`, the way
    TFLite's converter lays it out: activation ranges calibrated with the interpreter itself
    (all intermediate tensors kept), input uint8/int8 with scale 1/128 (pixel - 128),
    softmax output scale 1/256. scheme "uint8": weights uint8 per-tensor asymmetric (the
    hosted quantized models); "int8": weights int8 symmetric per output channel."""
    s = _schema()
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
    return _pack(model)


@pytest.mark.parametrize(("width", "resolution", "scheme"),
                         [(0.35, 96, "uint8"), (0.5, 128, "int8"), (1.4, 96, "uint8")])
def test_synthesized_quantized_models_of_other_widths(width: float, resolution: int,
                                                      scheme: str, tmp_path: Path) -> None:
    """Quantized models of widths the fixtures lack: our float model from the dequantized
    weights against the interpreter's integer arithmetic. Random weights make the network
    meaningless on photos, so the check is on logits: the same top-1 and agreement within
    quantization error on random pixel images."""
    torch_model = _random_model(width, resolution, seed=7)
    rng = np.random.default_rng(1)
    pixels = [rng.integers(0, 256, (1, resolution, resolution, 3)) for _ in range(6)]
    calib = [((p - 128) / 128).astype(np.float32) for p in pixels[:3]]
    path = tmp_path / f"mobilenet_v2_{width}_{resolution}_{scheme}.tflite"
    path.write_bytes(quantize_float_tflite(tflite_from_torch(torch_model), calib, scheme))
    converted = convert_tflite(path)
    cfg = converted.meta.config
    assert (cfg.width, cfg.resolution) == (width, resolution)
    expected = "uint8 per-tensor" if scheme == "uint8" else "int8 per-channel"
    assert converted.meta.extra["tflite"]["weights"] == expected
    model, pre = _ours(converted), converted.meta.preprocessing
    it = _interpreter(path)
    out = it.get_output_details()[0]
    worst, spread = 0.0, 0.0
    for p in pixels:
        p8 = p[0].astype(np.uint8)
        inp = it.get_input_details()[0]
        it.set_tensor(inp["index"], p8[None] if scheme == "uint8"
                      else (p8.astype(np.int16) - 128).astype(np.int8)[None])
        it.invoke()
        oscale, ozp = out["quantization"]
        ref = (it.get_tensor(out["index"])[0].astype(np.float32) - ozp) * oscale
        x = torch.from_numpy(p8).permute(2, 0, 1)[None].float() / 255.0
        x = (x - pre.mean[0]) / pre.std[0]
        with torch.no_grad():
            ours = model(x)[0].numpy()
        worst = max(worst, float(np.abs(ours - ref).max()))
        spread = max(spread, float(ref.max() - ref.min()))
        assert ours.argmax() == ref.argmax()
    print(f"\nsynthesized {scheme} width {width} at {resolution}: max |logit diff| vs "
          f"interpreter {worst:.3f} (logit range {spread:.1f}, {100 * worst / spread:.1f}%)")
    assert worst <= 0.1 * spread


@pytest.mark.parametrize(("keras_layout", "fp16"), [(True, False), (False, True), (True, True)])
def test_synthesized_keras_layout_and_float16_weights(keras_layout: bool, fp16: bool,
                                                      tmp_path: Path) -> None:
    """The other layouts converters write: PAD + VALID convs, MEAN pooling and a
    FULLY_CONNECTED classifier with 1000 classes (a converted Keras model), and float16
    weights behind DEQUANTIZE ops. 99 px makes some stride-2 inputs odd (pads (1, 1))."""
    torch_model = _random_model(0.5, 99, seed=11, num_classes=1000)
    path = tmp_path / "model.tflite"
    path.write_bytes(tflite_from_torch(torch_model, keras_layout=keras_layout, fp16=fp16))
    converted = convert_tflite(path)
    cfg = converted.meta.config
    assert (cfg.width, cfg.resolution, cfg.num_classes) == (0.5, 99, 1000)
    assert converted.meta.labels[0] == "tench"  # 1000 classes: no background
    x = np.random.default_rng(0).uniform(-1, 1, (1, 99, 99, 3)).astype(np.float32)
    ref = _interp_logits(path, x)
    with torch.no_grad():
        ours = _ours(converted)(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    diff = float(np.abs(ours - ref).max())
    print(f"\nsynthesized keras_layout={keras_layout} fp16={fp16}: max |logit diff| vs "
          f"interpreter {diff:.2e} (logits up to {np.abs(ref).max():.1f})")
    assert diff <= 1e-4


def test_wrong_activation_is_refused(tmp_path: Path) -> None:
    """A ReLU where MobileNetV2 has ReLU6 must fail loudly, naming the operator."""
    s = _schema()
    data = tflite_from_torch(_random_model(0.35, 96, seed=3))
    model = s.ModelT.InitFromPackedBuf(data, 0)
    model.subgraphs[0].operators[4].builtinOptions.fusedActivationFunction = 1  # RELU
    path = tmp_path / "relu.tflite"
    path.write_bytes(_pack(model))
    with pytest.raises(UserError, match="operator 4 .* fused activation relu, expected relu6"):
        convert_tflite(path)
