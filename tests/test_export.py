"""Graph preparation (fuse) and ONNX / TorchScript export, checked against ONNX Runtime."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from deploy_helpers import official_model, one_thread, random_model
from mobilenetv2.cli import main
from mobilenetv2.errors import UserError
from mobilenetv2.export import export_onnx, export_torchscript, onnx_metadata, verify_onnx
from mobilenetv2.model.fuse import fuse, is_fused

onnx = pytest.importorskip("onnx", reason="onnx is not installed")
pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    yield from one_thread()


@pytest.mark.parametrize("padding", ["symmetric", "tf_same"])
def test_fuse_folds_bn_and_keeps_relu6(padding: str) -> None:
    model = random_model(padding=padding)
    fused = fuse(model)
    assert is_fused(fused) and not is_fused(model)
    assert sum(isinstance(m, nn.ReLU6) for m in fused.modules()) == sum(
        isinstance(m, nn.ReLU6) for m in model.modules()) == 35
    assert not any(isinstance(m, nn.ReLU) for m in fused.modules())
    assert fused.stem.conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        ref, got = model(x), fused(x.contiguous(memory_format=torch.channels_last))
    assert ref.abs().mean() > 1e-2  # BN re-estimated: activations are not collapsed
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)


def _ops(path) -> list[str]:
    return [n.op_type for n in onnx.load(str(path)).graph.node]


def test_onnx_graph_is_clean(tmp_path) -> None:
    model = random_model()
    res = export_onnx(model, tmp_path / "m.onnx")
    assert res.max_abs_diff is not None and res.max_abs_diff <= 1e-4
    ops = _ops(res.path)
    assert set(ops) == {"Conv", "Clip", "Add", "GlobalAveragePool", "Flatten", "Gemm"}
    assert ops.count("Clip") == 35 and ops.count("Conv") == 52 and ops.count("Add") == 10
    proto = onnx.load(str(res.path))
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "Clip":  # constant bounds 0 and 6, not computed tensors
            assert [float(inits[n]) for n in node.input[1:]] == [0.0, 6.0]
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [3, 96, 96]
    meta = onnx_metadata(res.path)
    assert json.loads(meta["labels"])[3] == "class 3"
    assert json.loads(meta["preprocessing"])["crop"] == 96
    assert meta["precision"] == "fp32" and json.loads(meta["config"])["width"] == 0.35


def test_tf_same_padding_with_dynamic_hw(tmp_path) -> None:
    model = random_model(padding="tf_same")
    res = export_onnx(model, tmp_path / "m.onnx", dynamic_hw=True)
    assert "Pad" in _ops(res.path)
    # odd and even sizes: TF SAME puts the odd pixel at the bottom/right
    for size in (65, 96, 113):
        assert verify_onnx(model, res.path, sizes=[size]) <= 1e-4


def test_verification_catches_a_wrong_graph(tmp_path) -> None:
    res = export_onnx(random_model(), tmp_path / "m.onnx")
    other = random_model()
    with torch.no_grad():
        other.classifier.bias += 1.0
    with pytest.raises(UserError, match="differs from PyTorch"):
        verify_onnx(other, res.path, sizes=[96])


def test_openvino_runs_the_export(tmp_path) -> None:
    ov = pytest.importorskip("openvino", reason="openvino is not installed")
    model = random_model()
    res = export_onnx(model, tmp_path / "m.onnx")
    x = torch.randn(2, 3, 96, 96)
    compiled = ov.Core().compile_model(str(res.path), "CPU",
                                       {"INFERENCE_PRECISION_HINT": "f32"})
    got = compiled({0: x.numpy()})[0]
    with torch.no_grad():
        assert abs(got - model(x).numpy()).max() <= 1e-4


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_torchscript_export(tmp_path) -> None:
    model = random_model()
    res = export_torchscript(model, tmp_path / "m.pt")
    assert res.max_abs_diff <= 1e-4
    files = {"meta.json": ""}
    loaded = torch.jit.load(str(res.path), _extra_files=files)
    assert "preprocessing" in json.loads(files["meta.json"])
    assert loaded(torch.randn(1, 3, 64, 64)).shape == (1, 10)


def test_export_cli(tmp_path, capsys) -> None:
    from mobilenetv2.weights.format import save

    weights = save(random_model(), tmp_path / "w.safetensors")
    assert main(["export", "--weights", str(weights), "-o", str(tmp_path / "w.onnx")]) == 0
    out = capsys.readouterr().out
    assert "max abs diff vs PyTorch" in out and (tmp_path / "w.onnx").is_file()
    assert main(["export", "--weights", str(tmp_path / "nope.safetensors"), "-o",
                 str(tmp_path / "x.onnx")]) == 2
    assert "nope.safetensors" in capsys.readouterr().err


def test_official_tflite_model_exports(fixtures_dir, tmp_path) -> None:
    model = official_model(fixtures_dir)
    res = export_onnx(model.eval(), tmp_path / "official.onnx", dynamic_hw=True)
    assert res.max_abs_diff <= 1e-4
    assert verify_onnx(model, res.path, sizes=[225], batch=1) <= 1e-4


def test_dynamo_exporter_also_verifies(tmp_path) -> None:
    res = export_onnx(random_model(), tmp_path / "d.onnx", exporter="dynamo")
    assert res.max_abs_diff <= 1e-4
    ops = set(_ops(res.path))
    assert "Clip" in ops and "BatchNormalization" not in ops  # BN folded, ReLU6 a clamp
