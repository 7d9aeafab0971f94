"""int8: post-training quantization and QAT to QDQ ONNX, measured on real data.

Tests marked `slow` need the digits classifier (trained once per session, about a minute on
2 cores) or the official 224x224 model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from deploy_helpers import official_model, one_thread, random_model
from mobilenetv2.cli import main
from mobilenetv2.quant.ptq import (
    fp32_int8_paths,
    labelled_arrays,
    onnx_logits,
    quantize_ptq,
    read_accuracy,
)
from mobilenetv2.quant.qat import ActFakeQuant, QATConvBNAct, prepare_qat, set_qat_state
from mobilenetv2.weights.format import load

onnx = pytest.importorskip("onnx", reason="onnx is not installed")
pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    yield from one_thread()


@pytest.fixture(scope="module")
def ptq(tmp_path_factory, digits_weights):
    out = tmp_path_factory.mktemp("ptq") / "digits"
    return quantize_ptq(load(digits_weights), out, "digits")


@pytest.mark.parametrize("out", ["m", "m.onnx", "m.int8.onnx", "m.int8"])
def test_ptq_and_qat_write_beside_the_stem(tmp_path, out) -> None:
    assert fp32_int8_paths(tmp_path / out) == (tmp_path / "m.fp32.onnx",
                                               tmp_path / "m.int8.onnx")


@pytest.mark.slow
def test_ptq_digits_loses_at_most_one_point(ptq) -> None:
    acc = ptq.accuracy
    assert acc["fp32"] > 80  # a real classifier, not chance (10%)
    assert acc["int8"] >= acc["fp32"] - 1.0, acc
    assert ptq.eval_images > 300
    recorded = read_accuracy(ptq.int8_path)
    assert recorded["top1_int8"] == pytest.approx(acc["int8"])


@pytest.mark.slow
def test_ptq_graph_is_qdq_per_channel_with_relu6(ptq) -> None:
    proto = onnx.load(str(ptq.int8_path))
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("QuantizeLinear") > 30 and ops.count("DequantizeLinear") > 52
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["precision"] == "int8" and json.loads(meta["labels"])[7] == "7"
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    # per-channel weights: depthwise scales have one entry per channel
    dw = [n for n in proto.graph.node if n.op_type == "DequantizeLinear"
          and n.input[0].endswith("depthwise.conv.weight_quantized")]
    assert len(dw) == 17
    for node in dw:
        scale = inits[node.input[1]]
        assert scale.ndim == 1 and scale.size == inits[node.input[0]].shape[0] > 1
        assert np.ptp(scale) > 0
    # ReLU6 kept: each of the 35 clamp outputs is quantized to a range inside [0, 6]
    clamp_q = [n for n in proto.graph.node if n.op_type == "QuantizeLinear"
               and n.input[0].endswith("act/Clip_output_0")]
    assert len(clamp_q) == 35
    for node in clamp_q:
        assert int(inits[node.input[2]]) == 0
        assert float(inits[node.input[1]]) * 255 <= 6.0 + 1e-5


@pytest.mark.slow
def test_int8_runs_on_openvino_too(ptq, digits_weights) -> None:
    ov = pytest.importorskip("openvino", reason="openvino is not installed")
    x, _ = labelled_arrays("digits", load(digits_weights).meta.preprocessing, limit=64)
    compiled = ov.Core().compile_model(str(ptq.int8_path), "CPU",
                                       {"INFERENCE_PRECISION_HINT": "f32"})
    got = compiled({0: x})[0].argmax(1)
    ref = onnx_logits(ptq.int8_path, x).argmax(1)
    assert (got == ref).mean() >= 0.95


@pytest.mark.slow
def test_quantize_cli_from_a_folder(tmp_path, capsys, digits_weights) -> None:
    from mobilenetv2.data.digits import export_digits_imagefolder

    folder = export_digits_imagefolder(tmp_path / "digits_test", "test")
    out = tmp_path / "q" / "model"
    code = main(["quantize", "--weights", str(digits_weights), "--calib", str(folder),
                 "--calib-images", "64", "--eval", str(folder), "--eval-images", "120",
                 "-o", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "int8" in text and "top-1 on 120 images" in text
    assert (tmp_path / "q" / "model.int8.onnx").is_file()
    assert main(["quantize", "--weights", str(digits_weights), "--calib",
                 str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err


def test_qat_freezes_bn_and_observers() -> None:
    qat = prepare_qat(random_model(size=64))
    convs = [m for m in qat.modules() if isinstance(m, QATConvBNAct)]
    assert len(convs) == 52
    x = torch.randn(8, 3, 64, 64)
    qat.train()
    set_qat_state(qat, freeze_bn=False, freeze_observers=False)
    before = convs[3].bn.running_mean.clone()
    qat(x)
    assert not torch.equal(before, convs[3].bn.running_mean)
    set_qat_state(qat, freeze_bn=True, freeze_observers=True)
    fq = next(m for m in qat.modules() if isinstance(m, ActFakeQuant))
    stats = (convs[3].bn.running_mean.clone(), fq.min_val.clone(), fq.max_val.clone())
    qat(x * 3)
    assert torch.equal(stats[0], convs[3].bn.running_mean)
    assert torch.equal(stats[1], fq.min_val) and torch.equal(stats[2], fq.max_val)


@pytest.mark.slow
def test_qat_digits(tmp_path, digits_weights) -> None:
    from mobilenetv2.quant.qat import quantize_qat

    res = quantize_qat(load(digits_weights), tmp_path / "qat", "digits", epochs=2,
                       freeze_bn_after=1, freeze_observers_after=1, train_images=160,
                       calib_images=128, progress=False)
    assert res.method == "qat"
    assert res.accuracy["fp32"] > 80
    assert res.accuracy["int8"] >= res.accuracy["fp32"] - 1.0, res.accuracy


@pytest.mark.slow
def test_official_model_int8_top1_on_fixture_photos(fixtures_dir, tmp_path) -> None:
    from mobilenetv2.data.images import open_rgb
    from mobilenetv2.data.transforms import eval_transform
    model = official_model(fixtures_dir)
    model.eval()
    tf = eval_transform(model.meta.preprocessing)
    photos = ["cat.bmp", "grace_hopper.bmp", "parrot.jpg", "bird.bmp"]
    x = torch.stack([tf(open_rgb(fixtures_dir / p)) for p in photos]).numpy()
    # calibrate on the photos and flipped / cropped variants of them (real image statistics)
    calib = np.concatenate([x, x[..., ::-1], x[..., ::-1, :]]).copy()
    res = quantize_ptq(model, tmp_path / "official", calib)
    fp = onnx_logits(res.float_path, x).argmax(1)
    q = onnx_logits(res.int8_path, x).argmax(1)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).argmax(1).numpy()
    assert (fp == ref).all()
    assert (q == fp).all(), [model.meta.labels[i] for i in q]


@pytest.mark.slow
def test_deploy_demo_side_by_side(tmp_path, digits_weights) -> None:
    from mobilenetv2.deploy import deploy_demo, format_rows

    rows = deploy_demo(str(digits_weights), tmp_path, rounds=2, runs=3, threads=1)
    fp32, int8 = rows
    assert (fp32.precision, int8.precision) == ("fp32", "int8")
    assert fp32.path == tmp_path / "model.fp32.onnx" and fp32.path.is_file()
    assert int8.path == tmp_path / "model.int8.onnx" and int8.path.is_file()
    assert fp32.top1 > 80 and int8.top1 >= fp32.top1 - 1.0
    assert read_accuracy(int8.path)["top1_int8"] == pytest.approx(int8.top1, abs=1.0)
    table = format_rows(rows).splitlines()
    assert table[1].split()[:3] == ["fp32", fp32.backend, f"{fp32.top1:.2f}"]
    assert table[2].split()[:3] == ["int8", int8.backend, f"{int8.top1:.2f}"]
    assert table[3].startswith(f"int8 vs fp32: {int8.top1 - fp32.top1:+.2f} top-1 points")


def test_deploy_table_says_which_way_int8_went() -> None:
    from pathlib import Path

    from mobilenetv2.deploy import DeployRow, format_rows

    def rows(fp32_ms: float, int8_ms: float) -> list[DeployRow]:
        return [DeployRow("fp32", Path("m.fp32.onnx"), "onnxruntime", 99.0, fp32_ms, ""),
                DeployRow("int8", Path("m.int8.onnx"), "openvino", 98.5, int8_ms, "")]

    assert format_rows(rows(2.0, 1.0)).endswith("-0.50 top-1 points, 2.00x faster at batch 1")
    assert format_rows(rows(1.0, 2.0)).endswith("-0.50 top-1 points, 2.00x slower at batch 1")
