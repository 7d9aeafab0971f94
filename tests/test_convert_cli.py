"""The convert verb: foreign files of every format to ours, detected, with provenance, and
refused loudly when they are not what they claim."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mobilenetv2.cli import main
from mobilenetv2.weights import load_weights
from mobilenetv2.weights.format import read_meta, sha256_file


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
        meta = read_meta(out)
        assert meta.provenance["format"] == fmt and meta.config.width == width
        assert meta.config.num_classes == classes
        assert meta.provenance["source_sha256"] == sha256_file(tmp_path / src)
        assert meta.provenance["source"] == str(tmp_path / src)
    assert read_meta(tmp_path / "ckpt.pth.safetensors").provenance["checkpoint_key"] == "model"
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
    helpers = pytest.importorskip("support.keras_models", reason="needs keras (peers extra)")
    model = helpers.keras_model(0.35)
    src = tmp_path / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_96.h5"
    helpers.write_legacy_h5(model, src)
    out = tmp_path / "k.safetensors"
    assert main(["convert", str(src), "-o", str(out)]) == 0
    meta = read_meta(out)
    assert meta.provenance["format"] == "keras" and meta.config.width == 0.35
    assert meta.config.padding == "tf_same" and meta.provenance["source_sha256"]
    x = helpers.inputs()
    diff = np.abs(helpers.keras_out(model, x) - helpers.our_out(load_weights(str(out)), x))
    assert float(diff.max()) <= 1e-4
