"""predict and the predict verb, on good and broken files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from mobilenetv2 import create_model
from mobilenetv2.cli import main
from mobilenetv2.data.preprocessing import Preprocessing
from mobilenetv2.predict import predict
from mobilenetv2.weights import load_weights, save


@pytest.fixture
def weights(tmp_path):
    model = create_model("mobilenetv2_035", num_classes=3).eval()
    with torch.no_grad():  # a classifier bias that makes class "b" win on every image
        model.classifier.bias.copy_(torch.tensor([0.0, 50.0, 0.0]))
    pre = Preprocessing(resize=72, crop=64)
    return save(model, tmp_path / "w.safetensors", preprocessing=pre, labels=["a", "b", "c"])


@pytest.fixture
def images(tmp_path):
    d = tmp_path / "imgs"
    (d / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    Image.fromarray(arr).save(d / "rgb.jpg")
    Image.fromarray(arr).convert("L").save(d / "gray.png")
    Image.fromarray(arr).convert("RGBA").save(d / "sub" / "rgba.png")
    Image.fromarray(arr).convert("P").save(d / "pal.gif")
    Image.fromarray(arr).convert("CMYK").save(d / "cmyk.tiff")
    Image.fromarray(arr[..., 0].astype(np.uint16) * 257).save(d / "deep16.png")
    (d / "notes.txt").write_text("ignored by the directory walk")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "zero.jpg").write_bytes(b"")
    (bad / "text.png").write_text("not an image")
    data = (d / "rgb.jpg").read_bytes()
    (bad / "trunc.jpg").write_bytes(data[: len(data) // 3])
    png = (d / "gray.png").read_bytes()
    (bad / "corrupt.png").write_bytes(png[:40] + b"\x00" * 64 + png[104:])
    return d, bad


def test_predict_modes_labels_batches(weights, images) -> None:
    good, _ = images
    model = load_weights(str(weights))
    results = predict(model, [good], topk=2, batch_size=4)
    names = sorted(r.path.rsplit("/", 1)[-1] for r in results)
    assert names == ["cmyk.tiff", "deep16.png", "gray.png", "pal.gif", "rgb.jpg", "rgba.png"]
    for r in results:
        assert r.ok and len(r.top) == 2 and r.top[0][:2] == (1, "b") and r.top[0][2] > 0.99
    one = predict(model, [good], topk=3, batch_size=1)
    for a, b in zip(results, one):
        assert a.path == b.path and abs(a.top[1][2] - b.top[1][2]) < 1e-5
    assert len(one[0].top) == 3  # capped at the class count
    with pytest.raises(ValueError, match="topk"):
        predict(model, [good], topk=0)


def test_predict_bad_files_one_error_each(weights, images) -> None:
    good, bad = images
    model = load_weights(str(weights))
    files = sorted(bad.iterdir())
    results = predict(model, [good / "rgb.jpg", *files, bad / "missing.jpg"])
    ok = [r for r in results if r.ok]
    failed = {r.path.rsplit("/", 1)[-1]: r.error for r in results if not r.ok}
    assert len(ok) == 1 and ok[0].path.endswith("rgb.jpg")
    assert set(failed) == {"zero.jpg", "text.png", "trunc.jpg", "corrupt.png", "missing.jpg"}
    for name, err in failed.items():
        assert name in err and "\n" not in err


def test_cli_predict_exit_status_and_json(weights, images, capsys) -> None:
    good, bad = images
    rc = main(["predict", str(good), str(bad / "zero.jpg"), str(bad / "trunc.jpg"),
               "--weights", str(weights), "--json", "--topk", "1"])
    out, err = capsys.readouterr()
    assert rc == 1
    lines = err.strip().splitlines()
    assert len(lines) == 2 and "zero.jpg" in lines[0] and "trunc.jpg" in lines[1]
    data = json.loads(out)
    assert len(data) == 8 and sum(d["error"] is None for d in data) == 6
    assert all(d["top"][0]["label"] == "b" for d in data if d["error"] is None)
    assert main(["predict", str(good / "rgb.jpg"), "--weights", str(weights)]) == 0
    assert "b (1)" in capsys.readouterr().out
