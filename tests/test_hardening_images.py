"""Issue 12: images that would crash a verb or take unbounded memory, and folders whose
images are all unreadable, give one clear line; the good images of the same call are still
processed. Every entry point uses the one opener (`data.images.open_rgb` / `open_image`)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mobilenetv2 import create_model
from mobilenetv2.cli import main
from mobilenetv2.data.images import ImageError, open_rgb
from mobilenetv2.data.preprocessing import Preprocessing
from mobilenetv2.errors import UserError
from mobilenetv2.quant.ptq import labelled_arrays
from mobilenetv2.weights import save


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A valid PNG signature and IHDR declaring `width` x `height`: a few dozen bytes that
    ask a decoder for width * height pixels (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat)
                     + chunk(b"IEND", b""))
    return path


def photo(path: Path, h: int = 40, w: int = 50, seed: int = 0) -> Path:
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return path


@pytest.fixture
def weights(tmp_path) -> Path:
    model = create_model("mobilenetv2_035", num_classes=3).eval()
    return save(model, tmp_path / "w.safetensors", preprocessing=Preprocessing(resize=72, crop=64),
                labels=["a", "b", "c"])


def test_decompression_bomb_is_one_line_and_the_rest_is_predicted(tmp_path, weights,
                                                                  capsys) -> None:
    bomb = png_header_only(tmp_path / "bomb.png", 40000, 40000)
    assert bomb.stat().st_size < 200
    with pytest.raises(ImageError, match="bomb.png"):
        open_rgb(bomb)
    good = photo(tmp_path / "good.png")
    rc = main(["predict", str(bomb), str(good), "--weights", str(weights), "--backend", "torch"])
    out, err = capsys.readouterr()
    assert rc == 1
    assert "good.png" in out and "Traceback" not in err
    errors = [line for line in err.splitlines() if "error" in line]
    assert len(errors) == 1 and "bomb.png" in errors[0]


def test_a_strip_whose_resize_would_explode_is_refused(tmp_path, weights, capsys) -> None:
    """100000 x 3 pixels decode to 300 kB, but resized to a 72-pixel short side they would be
    2.4 G pixels; the image is refused with one line, the other image is predicted."""
    strip = tmp_path / "strip.png"
    Image.new("RGB", (100000, 3), (200, 10, 10)).save(strip)
    good = photo(tmp_path / "good.png")
    rc = main(["predict", str(strip), str(good), "--weights", str(weights), "--backend", "torch"])
    out, err = capsys.readouterr()
    assert rc == 1 and "good.png" in out
    errors = [line for line in err.splitlines() if "error" in line]
    assert len(errors) == 1 and "strip.png" in errors[0] and "pixels" in errors[0]


def test_unreadable_for_permissions_says_so(tmp_path, monkeypatch) -> None:
    f = photo(tmp_path / "locked.png")

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(f))

    monkeypatch.setattr(Image, "open", denied)
    with pytest.raises(ImageError, match="locked.png: permission denied"):
        open_rgb(f)


def _folder(root: Path, corrupt_class: bool = True, all_corrupt: bool = False) -> Path:
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            if all_corrupt or (corrupt_class and c == "dog"):
                (root / c / f"{i}.jpg").write_text("not an image")
            else:
                photo(root / c / f"{i}.png", seed=i)
    return root


def test_a_class_of_only_corrupt_images_fails_before_training(tmp_path, capsys) -> None:
    root = _folder(tmp_path / "d")
    out = tmp_path / "run"
    assert main(["train", "--data", str(root), "--out", str(out), "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "no readable images" in err and "dog" in err and "Traceback" not in err
    assert not out.exists()


def test_a_folder_of_only_corrupt_images_says_no_readable_images(tmp_path, capsys) -> None:
    root = _folder(tmp_path / "d", all_corrupt=True)
    assert main(["train", "--data", str(root), "--out", str(tmp_path / "run"),
                 "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "no readable images" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_calibration_skips_a_corrupt_image(tmp_path) -> None:
    root = tmp_path / "calib"
    root.mkdir()
    for i in range(3):
        photo(root / f"{i}.png", seed=i)
    (root / "broken.jpg").write_text("not an image")
    x, _ = labelled_arrays(root, Preprocessing(resize=40, crop=32), split="train")
    assert x.shape == (3, 3, 32, 32)
    for f in root.glob("*.png"):
        f.unlink()
    with pytest.raises(UserError, match="no readable images"):
        labelled_arrays(root, Preprocessing(resize=40, crop=32), split="train")
