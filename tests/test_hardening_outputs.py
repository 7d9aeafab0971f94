"""Issue 12: no verb overwrites its own input or writes a format under another's suffix;
outputs get the user's umask; non-finite weights and outputs are errors naming what is
broken; labels must fit the classifier; `--opset` and `--out` are checked up front."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mobilenetv2 import create_model
from mobilenetv2.cli import main
from mobilenetv2.data.preprocessing import Preprocessing
from mobilenetv2.errors import UserError
from mobilenetv2.export.onnx import export_onnx
from mobilenetv2.predict import predict
from mobilenetv2.weights import load, save

PRE = Preprocessing(resize=40, crop=32)


@pytest.fixture
def weights(tmp_path) -> Path:
    model = create_model("mobilenetv2_035", num_classes=3).eval()
    return save(model, tmp_path / "mine.safetensors", preprocessing=PRE, labels=["a", "b", "c"])


def test_export_never_overwrites_its_input(weights, capsys) -> None:
    before = weights.read_bytes()
    rc = main(["export", "--weights", str(weights), "--format", "torchscript", "-o",
               str(weights)])
    err = capsys.readouterr().err
    assert rc != 0 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert weights.read_bytes() == before  # nothing lost
    assert load(weights).num_classes == 3


def test_export_suffix_must_match_the_format(weights, tmp_path, capsys) -> None:
    rc = main(["export", "--weights", str(weights), "--format", "onnx", "-o",
               str(tmp_path / "model.safetensors")])
    err = capsys.readouterr().err
    assert rc != 0 and ".onnx" in err and not (tmp_path / "model.safetensors").exists()


def test_convert_and_quantize_refuse_their_input_as_output(weights, tmp_path, capsys) -> None:
    tv = tmp_path / "tv.safetensors"
    save_file(load_file(weights), tv)  # a foreign-looking safetensors name is not the point
    assert main(["convert", str(weights), "-o", str(weights)]) != 0
    assert "input" in capsys.readouterr().err
    stem = tmp_path / "mine"
    (tmp_path / "mine.int8.onnx").write_bytes(b"an earlier file the user keeps")
    assert main(["quantize", "--weights", str(tmp_path / "mine.int8.onnx"), "--calib",
                 "digits", "-o", str(stem)]) != 0
    assert (tmp_path / "mine.int8.onnx").read_bytes() == b"an earlier file the user keeps"


def test_outputs_follow_the_umask(weights, tmp_path) -> None:
    old = os.umask(0o022)
    try:
        out = save(load(weights), tmp_path / "copy.safetensors")
        onnx = export_onnx(load(weights), tmp_path / "m.onnx").path
    finally:
        os.umask(old)
    for f in (out, onnx):
        assert stat.S_IMODE(f.stat().st_mode) == 0o644, f


def test_failed_verification_leaves_no_file(weights, tmp_path) -> None:
    model = load(weights)
    with torch.no_grad():
        model.classifier.weight[0, 0] = float("nan")
    with pytest.raises(UserError, match="not finite|non-finite"):
        export_onnx(model, tmp_path / "nan.onnx")
    assert not (tmp_path / "nan.onnx").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["mine.safetensors"]  # no temp files


def test_non_finite_weights_are_refused_with_the_tensor_name(weights, tmp_path,
                                                             capsys) -> None:
    state = load_file(weights)
    state["blocks.3.project.bn.running_var"][:5] = float("nan")
    from safetensors import safe_open

    with safe_open(str(weights), "pt") as f:
        meta = f.metadata()
    bad = tmp_path / "nan.safetensors"
    save_file(state, bad, metadata=meta)
    with pytest.raises(UserError, match=r"blocks\.3\.project\.bn\.running_var has 5"):
        load(bad)
    img = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (40, 40), (90, 120, 30)).save(img)
    assert main(["predict", str(img), "--weights", str(bad), "--backend", "torch"]) != 0
    assert "running_var" in capsys.readouterr().err


def test_non_finite_outputs_stop_predict(weights, tmp_path) -> None:
    from PIL import Image

    img = tmp_path / "x.png"
    Image.new("RGB", (40, 40), (90, 120, 30)).save(img)
    model = load(weights)
    with torch.no_grad():
        model.classifier.bias[1] = float("inf")
    with pytest.raises(UserError, match="non-finite logits"):
        predict(model, [img])


@pytest.mark.parametrize("labels,match", [(["a", "b"], "2 labels"),
                                          ("abc", "list of strings")])
def test_labels_that_do_not_fit_are_refused_on_load(weights, tmp_path, labels, match) -> None:
    from safetensors import safe_open

    with safe_open(str(weights), "pt") as f:
        meta = dict(f.metadata())
    meta["labels"] = json.dumps(labels)
    bad = tmp_path / "labels.safetensors"
    save_file(load_file(weights), bad, metadata=meta)
    with pytest.raises(UserError, match=match):
        load(bad)


def test_opset_out_of_range_is_one_line(weights, tmp_path, capsys) -> None:
    rc = main(["export", "--weights", str(weights), "--opset", "3", "-o",
               str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err
    assert rc != 0 and "opset" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_train_out_that_is_a_file_is_one_line(tmp_path, capsys) -> None:
    f = tmp_path / "afile"
    f.write_text("keep me")
    assert main(["train", "--out", str(f), "--epochs", "1"]) != 0
    err = capsys.readouterr().err
    assert "afile" in err and "Traceback" not in err and f.read_text() == "keep me"


def test_predict_and_eval_run_our_onnx_files(weights, tmp_path, capsys) -> None:
    """The `.onnx` files export and quantize write are accepted wherever a runtime can run
    them (predict, eval), with labels and preprocessing from their metadata; where they
    cannot serve (export, train), one line says so."""
    from PIL import Image

    model = load(weights)
    onnx = export_onnx(model, tmp_path / "m.fp32.onnx").path
    img = tmp_path / "x.png"
    Image.new("RGB", (40, 40), (90, 120, 30)).save(img)
    assert main(["predict", str(img), "--weights", str(onnx), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)[0]["top"][0]
    ref = predict(model, [img])[0].top[0]
    assert got["label"] == ref[1] and abs(got["probability"] - ref[2]) < 1e-4
    data = tmp_path / "d"
    for i, c in enumerate(("a", "b", "c")):
        (data / c).mkdir(parents=True)
        Image.new("RGB", (40, 40), (40 * i, 90, 30)).save(data / c / "0.png")
    assert main(["eval", "--weights", str(onnx), "--data", str(data), "--out",
                 str(tmp_path / "ev"), "--num-workers", "0"]) == 0
    assert json.loads((tmp_path / "ev" / "eval.json").read_text())["count"] == 3
    shown = capsys.readouterr().out
    assert "top-1" in shown and "top-5" not in shown  # 3 classes: top-5 is 100% by design
    assert main(["export", "--weights", str(onnx), "-o", str(tmp_path / "again.onnx")]) != 0
    err = capsys.readouterr().err
    assert "ONNX model runs in `predict` and `eval`" in err and "Traceback" not in err
