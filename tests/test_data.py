"""data.images: the one folder walker. `train` (class folders), `eval`, `quantize --calib` and
`predict DIR` see exactly the same files in the same folder: camera suffixes in capitals
count, hidden files and folders (macOS `._*` AppleDouble files, `.ipynb_checkpoints/`) and
non-image suffixes do not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mobilenetv2.data.datasets import scan_folder
from mobilenetv2.data.images import image_files
from mobilenetv2.data.preprocessing import Preprocessing
from mobilenetv2.predict import find_images

COUNTED = ["cat/IMG_0001.JPG", "cat/b.png", "cat/deep/c.webp", "dog/a.jfif", "dog/b.pbm",
           "dog/c.TIFF"]
IGNORED = ["cat/._IMG_0001.JPG", "cat/.hidden.png", "cat/.ipynb_checkpoints/b-checkpoint.png",
           "dog/notes.txt", "dog/b.png.json"]


@pytest.fixture
def folder(tmp_path) -> Path:
    # The root itself may sit below a hidden folder (~/.cache/...): only entries below it count.
    root = tmp_path / ".cache" / "pets"
    pixels = np.random.default_rng(0).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    for name in COUNTED:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        fmt = {".jpg": "JPEG", ".jfif": "JPEG", ".pbm": "PPM", ".tiff": "TIFF",
               ".webp": "PNG"}.get(Path(name).suffix.lower(), "PNG")
        Image.fromarray(pixels).save(root / name, format=fmt)
    for name in IGNORED:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"\x00\x05\x16\x07 not an image")  # AppleDouble-like junk
    return root


def test_walker_counts_images_only(folder) -> None:
    assert [str(p.relative_to(folder)) for p in image_files(folder)] == sorted(COUNTED)
    assert image_files(folder / "cat" / "deep" / "c.webp") == []  # a file is not a folder


def test_train_calibration_and_predict_see_the_same_files(folder) -> None:
    from mobilenetv2.quant.ptq import labelled_arrays

    expected = sorted(str(folder / name) for name in COUNTED)
    classes, samples = scan_folder(folder)
    assert classes == ["cat", "dog"]
    assert sorted(path for path, _ in samples) == expected
    files, errors = find_images([folder])
    assert sorted(map(str, files)) == expected and errors == []
    # Calibration opens every file it walks: one junk file counted would raise ImageError.
    x, _ = labelled_arrays(folder, Preprocessing(resize=8, crop=8))
    assert x.shape == (len(COUNTED), 3, 8, 8)


def test_scan_folder_names_the_suffixes_of_an_empty_class(tmp_path) -> None:
    from mobilenetv2.errors import UserError

    for name in ("a/x.png", "b/._x.png", "b/readme.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4)).save(tmp_path / name, format="PNG")
    with pytest.raises(UserError, match=r"empty class folder.*: b \(extensions .*\.jfif"):
        scan_folder(tmp_path)
