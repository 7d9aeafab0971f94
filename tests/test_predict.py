"""predict and the convert / predict / pretrained verbs, on good and broken files."""

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
from mobilenetv2.weights.format import load_meta, sha256_file


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


def test_cli_convert_torchvision_and_timm(tmp_path, capsys) -> None:
    import timm
    import torchvision

    tv = torchvision.models.mobilenet_v2(width_mult=0.5)
    torch.save({"model": tv.state_dict(), "epoch": 7}, tmp_path / "ckpt.pth")
    tm = timm.create_model("mobilenetv2_035", pretrained=False, num_classes=10)
    torch.save(tm.state_dict(), tmp_path / "timm.pt")
    for src, fmt, width, classes in [("ckpt.pth", "torchvision", 0.5, 1000),
                                     ("timm.pt", "timm", 0.35, 10)]:
        out = tmp_path / f"{src}.safetensors"
        assert main(["convert", str(tmp_path / src), "-o", str(out)]) == 0
        meta = load_meta(out)
        assert meta.provenance["format"] == fmt and meta.config.width == width
        assert meta.config.num_classes == classes
        assert meta.provenance["source_sha256"] == sha256_file(tmp_path / src)
        assert meta.provenance["source"] == str(tmp_path / src)
    assert load_meta(tmp_path / "ckpt.pth.safetensors").provenance["checkpoint_key"] == "model"
    # The wrong --from fails loudly, naming the file.
    rc = main(["convert", str(tmp_path / "timm.pt"), "-o", str(tmp_path / "x.safetensors"),
               "--from", "torchvision"])
    err = capsys.readouterr().err
    assert rc == 2 and "timm.pt" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.safetensors").exists()
    # A foreign file goes straight to --weights, converted on the fly.
    model = load_weights(str(tmp_path / "timm.pt"))
    assert model.meta.config.num_classes == 10 and model.meta.provenance["format"] == "timm"


def test_cli_refuses_malicious_pickle(tmp_path, capsys) -> None:
    target = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(target), "w"))

    torch.save({"features.0.0.weight": Evil()}, tmp_path / "evil.pth")
    rc = main(["convert", str(tmp_path / "evil.pth"), "-o", str(tmp_path / "o.safetensors")])
    err = capsys.readouterr().err
    assert rc == 2 and "refused" in err and len(err.strip().splitlines()) == 1
    assert not target.exists() and not (tmp_path / "o.safetensors").exists()


def test_cli_pretrained_lists_registry(capsys) -> None:
    assert main(["pretrained", "--json"]) == 0
    names = [e["name"] for e in json.loads(capsys.readouterr().out)]
    assert "torchvision_imagenet1k_v2" in names and "tflite_1.0_224_quant" in names


# README of the fixtures: what the reference interpreter says for each photo.
FIXTURE_TOP1 = {"cat.bmp": "Egyptian cat", "grace_hopper.bmp": "military uniform",
                "parrot.jpg": "macaw", "bird.bmp": "chickadee"}


def test_fixture_tflite_converted_then_predicted(fixtures_dir, tmp_path, capsys) -> None:
    """Acceptance: the official TFLite model, converted to our format, gives the README's
    labels on the four fixture photos (via the CLI, as a user would run it)."""
    out = tmp_path / "mnv2_quant.safetensors"
    assert main(["convert", str(fixtures_dir / "mobilenet_v2_1.0_224_quant.tflite"),
                 "-o", str(out)]) == 0
    capsys.readouterr()
    photos = [str(fixtures_dir / name) for name in FIXTURE_TOP1]
    assert main(["predict", *photos, "--weights", str(out), "--json", "--topk", "3"]) == 0
    results = json.loads(capsys.readouterr().out)
    for r in results:
        name = r["path"].rsplit("/", 1)[-1]
        top = r["top"][0]
        print(f"{name}: {top['label']} {top['probability']:.3f}")
        assert top["label"] == FIXTURE_TOP1[name]


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_cli_convert_keras_h5_detected(tmp_path) -> None:
    """A legacy Keras `.h5` (the official files' layout) converts with the format detected
    from the suffix, and the file agrees with the live Keras model."""
    helpers = pytest.importorskip("test_keras", reason="needs keras (peers extra)")
    model = helpers._keras_model(0.35)
    src = tmp_path / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_96.h5"
    helpers.write_legacy_h5(model, src)
    out = tmp_path / "k.safetensors"
    assert main(["convert", str(src), "-o", str(out)]) == 0
    meta = load_meta(out)
    assert meta.provenance["format"] == "keras" and meta.config.width == 0.35
    assert meta.config.padding == "tf_same" and meta.provenance["source_sha256"]
    x = helpers._inputs()
    diff = np.abs(helpers._keras_out(model, x) - helpers._our_out(load_weights(str(out)), x))
    assert float(diff.max()) <= 1e-4
