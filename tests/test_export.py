"""Graph preparation (fuse) and ONNX / TorchScript export.

Every export runs its own check against PyTorch and raises above its tolerance, so these
tests do not read that check's number back: they run the exported file themselves (ONNX
Runtime's plain API, `torch.jit.load`) and compare with PyTorch, or with the reference
runtime's labels for the official model.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from deploy_helpers import official_model, one_thread, random_model
from mobilenetv2.cli import main
from mobilenetv2.errors import UserError
from mobilenetv2.export import export_onnx, export_torchscript, verify_onnx
from mobilenetv2.model.fuse import fuse, is_fused
from mobilenetv2.runtime.onnx_meta import onnx_metadata

onnx = pytest.importorskip("onnx", reason="onnx is not installed")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")

# What the reference runtime (ai-edge-litert) labels the fixture photos with, from
# shared/fixtures/tflite/README.md.
PHOTO_LABELS = {"cat.bmp": "Egyptian cat", "grace_hopper.bmp": "military uniform",
                "parrot.jpg": "macaw", "bird.bmp": "chickadee"}


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


def ort_logits(path, x: torch.Tensor) -> np.ndarray:
    """The file run by ONNX Runtime directly, independent of the library's own check."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]


def assert_runs_like_pytorch(path, model: nn.Module, x: torch.Tensor,
                             atol: float = 1e-4) -> None:
    with torch.no_grad():
        ref = model.eval()(x).numpy()
    got = ort_logits(path, x)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, atol=atol, rtol=0)


def test_onnx_graph_is_clean(tmp_path) -> None:
    model = random_model()
    res = export_onnx(model, tmp_path / "m.onnx")
    assert res.format == "onnx" and res.max_abs_diff is not None
    # batch 5: neither the export's example batch (2) nor its check's (3)
    assert_runs_like_pytorch(res.path, model, torch.randn(5, 3, 96, 96))
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
    # No Pad and no shape arithmetic: each stride-2 conv pads itself, TF SAME being ONNX's
    # SAME_UPPER (a separate Pad made ONNX Runtime 1.5x slower, issue 13).
    ops = _ops(res.path)
    assert set(ops) == {"Conv", "Clip", "Add", "GlobalAveragePool", "Flatten", "Gemm"}
    auto = [a.s for n in onnx.load(str(res.path)).graph.node if n.op_type == "Conv"
            for a in n.attribute if a.name == "auto_pad"]
    assert auto == [b"SAME_UPPER"] * 5  # the stem and four stride-2 depthwise convs
    # odd and even sizes: TF SAME puts the odd pixel at the bottom/right
    for size in (65, 96, 113, 130):
        assert_runs_like_pytorch(res.path, model, torch.randn(2, 3, size, size))


def test_tf_same_dynamic_keeps_its_pads_without_onnxruntime(tmp_path, monkeypatch) -> None:
    # Nothing to check the amounts with: the exact, computed Pads stay.
    import sys

    model = random_model(padding="tf_same")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    res = export_onnx(model, tmp_path / "m.onnx", dynamic_hw=True, verify=False)
    monkeypatch.undo()
    assert _ops(res.path).count("Pad") == 5
    assert_runs_like_pytorch(res.path, model, torch.randn(1, 3, 65, 65))


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
    assert res.format == "torchscript" and res.max_abs_diff is not None
    files = {"meta.json": ""}
    loaded = torch.jit.load(str(res.path), _extra_files=files)
    meta = json.loads(files["meta.json"])
    assert json.loads(meta["preprocessing"])["crop"] == 96 and meta["precision"] == "fp32"
    x = torch.randn(2, 3, 80, 80)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=1e-4, rtol=0)


def test_export_cli(tmp_path, capsys) -> None:
    from mobilenetv2.weights.format import save

    weights = save(random_model(), tmp_path / "w.safetensors")
    assert main(["export", "--weights", str(weights), "-o", str(tmp_path / "w.onnx")]) == 0
    out = capsys.readouterr().out
    assert "max abs diff vs PyTorch" in out and (tmp_path / "w.onnx").is_file()
    assert main(["export", "--weights", str(tmp_path / "nope.safetensors"), "-o",
                 str(tmp_path / "x.onnx")]) == 2
    assert "nope.safetensors" in capsys.readouterr().err


@pytest.mark.parametrize("size,uneven", [(96, 5), (98, 1)])
def test_tf_same_padding_at_a_static_size_is_the_convs_own(tmp_path, size, uneven) -> None:
    # At a static size TF's SAME amounts are constants: the graph is the same clean one as
    # the symmetric model's, each stride-2 conv carrying its asymmetric pads (issue 13:
    # a separate Pad made ONNX Runtime 1.5x slower).
    model = random_model(padding="tf_same")
    res = export_onnx(model, tmp_path / "m.onnx", input_size=size)
    ops = _ops(res.path)
    assert set(ops) == {"Conv", "Clip", "Add", "GlobalAveragePool", "Flatten", "Gemm"}
    assert ops.count("Conv") == 52
    pads = [list(a.ints) for n in onnx.load(str(res.path)).graph.node if n.op_type == "Conv"
            for a in n.attribute if a.name == "pads"]
    # TF SAME at stride 2 puts the odd pixel at the bottom/right: a 3x3 conv on an even
    # input pads (0, 0, 1, 1), on an odd one 1 on every side. The five stride-2 convs see
    # 96, 48, 24, 12, 6 (all even) or 98, 49, 25, 13, 7 (one even).
    asymmetric = [p for p in pads if p[:2] != p[2:]]
    assert len(asymmetric) == uneven
    assert all(p == [0, 0, 1, 1] for p in asymmetric)
    assert_runs_like_pytorch(res.path, model, torch.randn(3, 3, size, size))


def test_official_tflite_model_exports(fixtures_dir, tmp_path) -> None:
    from mobilenetv2.data.images import open_rgb
    from mobilenetv2.data.transforms import eval_transform

    model = official_model(fixtures_dir).eval()
    res = export_onnx(model, tmp_path / "official.onnx", dynamic_hw=True)
    tf = eval_transform(model.meta.preprocessing)
    x = torch.stack([tf(open_rgb(fixtures_dir / p)) for p in PHOTO_LABELS])
    logits = ort_logits(res.path, x)
    assert [model.meta.labels[i] for i in logits.argmax(1)] == list(PHOTO_LABELS.values())
    assert_runs_like_pytorch(res.path, model, x)
    assert_runs_like_pytorch(res.path, model, torch.randn(1, 3, 225, 225))  # dynamic H, W


@pytest.mark.slow  # the torch.export-based exporter takes 5-10 s even for width 0.35
def test_dynamo_exporter_also_verifies(tmp_path) -> None:
    model = random_model()
    res = export_onnx(model, tmp_path / "d.onnx", exporter="dynamo")
    assert_runs_like_pytorch(res.path, model, torch.randn(3, 3, 96, 96))
    ops = set(_ops(res.path))
    assert "Clip" in ops and "BatchNormalization" not in ops  # BN folded, ReLU6 a clamp
