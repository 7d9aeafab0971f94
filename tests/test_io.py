"""Our checkpoint format: round trip, metadata, mismatch reports, robust image loading."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mobilenetv2 import create_model
from mobilenetv2.data import ImageError, eval_transform, open_rgb
from mobilenetv2.data.preprocessing import Preprocessing
from mobilenetv2.errors import UserError
from mobilenetv2.weights import load, load_state_dict_checked, read_meta, save


def test_roundtrip_rebuilds_model_from_file(tmp_path) -> None:
    model = create_model("mobilenetv2_035", num_classes=3, padding="tf_same").eval()
    pre = Preprocessing.tf_inception(96)
    path = save(model, tmp_path / "m.safetensors", preprocessing=pre, labels=["a", "b", "c"],
                provenance={"source": "test"}, accuracy={"top1": 50.0})
    loaded = load(path).eval()
    x = torch.randn(1, 3, 96, 96)
    torch.testing.assert_close(loaded(x), model(x))
    meta = read_meta(path)
    assert meta.config == model.config and meta.preprocessing == pre
    assert meta.labels == ["a", "b", "c"] and meta.accuracy == {"top1": 50.0}
    assert not list(tmp_path.glob("*.tmp"))


def test_mismatch_names_keys_shapes_width(tmp_path) -> None:
    model = create_model("mobilenetv2_050")
    other = create_model("mobilenetv2_035").state_dict()
    with pytest.raises(UserError, match=r"width 0.5, resolution 224.*shape mismatch"):
        load_state_dict_checked(model, other)
    sd = {f"module.{k}": v for k, v in model.state_dict().items()}
    load_state_dict_checked(model, sd)  # DDP prefixes are fine
    del sd["module.classifier.bias"]
    sd["module.extra"] = torch.zeros(1)
    with pytest.raises(UserError, match=r"missing key.*classifier.bias.*unexpected key.*extra"):
        load_state_dict_checked(model, sd)


def test_old_sha256_provenance_key_reads_as_source_sha256(tmp_path) -> None:
    """Files written before the key was settled say `sha256`; they load with one key."""
    model = create_model("mobilenetv2_035", num_classes=3)
    path = save(model, tmp_path / "old.safetensors", provenance={"format": "keras",
                                                                 "sha256": "ab" * 32})
    provenance = read_meta(path).provenance
    assert provenance == {"format": "keras", "source_sha256": "ab" * 32}
    assert load(path).meta.provenance == provenance


def test_labels_must_match_classes(tmp_path) -> None:
    with pytest.raises(ValueError, match="2 labels"):
        save(create_model("mobilenetv2_035", num_classes=3), tmp_path / "x.safetensors",
             labels=["a", "b"])


def test_foreign_safetensors_refused(tmp_path) -> None:
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, tmp_path / "f.safetensors")
    with pytest.raises(UserError, match="not a mobilenetv2 checkpoint"):
        load(tmp_path / "f.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(UserError):
        load(tmp_path / "junk.safetensors")


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "I;16", "LA", "1"])
def test_open_rgb_modes(tmp_path, mode: str) -> None:
    arr = (np.arange(32 * 40) % 256).reshape(32, 40).astype(np.uint8)
    if mode == "I;16":
        im = Image.fromarray(arr.astype(np.uint16) * 256)
    else:
        im = Image.fromarray(arr).convert(mode)
    ext = "tiff" if mode in ("CMYK", "I;16") else "png"
    path = tmp_path / f"im.{ext}"
    im.save(path)
    out = open_rgb(path)
    assert out.mode == "RGB" and out.size == (40, 32)


def test_open_rgb_exif_orientation(tmp_path) -> None:
    im = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    im.save(tmp_path / "r.jpg", exif=exif)
    assert open_rgb(tmp_path / "r.jpg").size == (20, 40)


def test_open_rgb_bad_files(tmp_path) -> None:
    (tmp_path / "zero.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    Image.new("RGB", (64, 64)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    for name, needle in [("zero.jpg", "empty"), ("text.jpg", "not an image"),
                         ("trunc.png", "truncated"), ("missing.jpg", "no such file")]:
        with pytest.raises(ImageError, match=needle) as info:
            open_rgb(tmp_path / name)
        assert name in str(info.value)


def test_eval_transform_shapes() -> None:
    im = Image.new("RGB", (300, 200), (128, 128, 128))
    x = eval_transform(Preprocessing())(im)
    assert x.shape == (3, 224, 224)
    x = eval_transform(Preprocessing(resize=224, crop=224, resize_mode="exact",
                                     mean=(128 / 255,) * 3, std=(128 / 255,) * 3))(im)
    assert x.shape == (3, 224, 224) and torch.allclose(x, torch.zeros_like(x), atol=1e-6)


def test_digits_split_is_reproducible_and_stratified() -> None:
    from mobilenetv2.data.digits import DigitsDataset, digits_arrays

    tr_x, tr_y = digits_arrays("train")
    te_x, te_y = digits_arrays("test")
    assert len(tr_y) + len(te_y) == 1797 and len(te_y) == 359  # 20% of each class, rounded
    assert np.array_equal(te_y, digits_arrays("test")[1])
    assert set(np.bincount(te_y)) <= {35, 36, 37}
    img, label = DigitsDataset("test")[0]
    assert img.size == (8, 8) and img.mode == "RGB" and label == te_y[0]
    assert te_x.max() == 255


class _Evil:
    """Unpickling this would create a file: proof that nothing from the pickle runs."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path) -> None:
    from mobilenetv2.weights.convert.read import read_foreign_state_dict

    target = tmp_path / "pwned.txt"
    path = tmp_path / "evil.pth"
    torch.save({"stem.conv.weight": torch.zeros(1), "payload": _Evil(str(target))}, path)
    assert not target.exists()
    with pytest.raises(UserError, match=r"evil.pth: refused: loading it would execute code"
                                        r".*open"):
        read_foreign_state_dict(path)
    assert not target.exists()
    # The same through the one entry point every --weights goes through.
    from mobilenetv2.weights import load_weights

    with pytest.raises(UserError, match="refused"):
        load_weights(str(path))
    assert not target.exists()


def test_read_foreign_state_dict_unwraps_training_checkpoints(tmp_path) -> None:
    from mobilenetv2.weights.convert.read import read_foreign_state_dict

    sd = {"module.a.weight": torch.ones(2), "b": torch.zeros(1)}
    ema = {"module.a.weight": torch.full((2,), 3.0), "module.b": torch.zeros(1),
           "n_averaged": torch.tensor(5)}
    for key in ("state_dict", "model"):
        torch.save({key: sd, "epoch": 3, "model_ema": ema}, tmp_path / f"{key}.pth")
        state, nested = read_foreign_state_dict(tmp_path / f"{key}.pth")
        assert nested == key and set(state) == {"a.weight", "b"}
        assert torch.equal(state["a.weight"], torch.ones(2))
        state, nested = read_foreign_state_dict(tmp_path / f"{key}.pth", use_ema=True)
        assert nested == "model_ema" and torch.equal(state["a.weight"], torch.full((2,), 3.0))
        assert "n_averaged" not in state
    torch.save({"model_ema": ema, "epoch": 1}, tmp_path / "ema_only.pth")
    state, nested = read_foreign_state_dict(tmp_path / "ema_only.pth")
    assert nested == "model_ema" and torch.equal(state["a.weight"], torch.full((2,), 3.0))
    torch.save(sd, tmp_path / "plain.pt")
    assert read_foreign_state_dict(tmp_path / "plain.pt")[1] is None
    with pytest.raises(UserError, match="no EMA weights"):
        read_foreign_state_dict(tmp_path / "plain.pt", use_ema=True)
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(UserError, match="not a state dict"):
        read_foreign_state_dict(tmp_path / "list.pt")
    (tmp_path / "junk.pth").write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(UserError, match="not a readable PyTorch checkpoint"):
        read_foreign_state_dict(tmp_path / "junk.pth")
