"""Segmentation data: joint augmentation keeps image and mask aligned, bad pairs, layouts,
the PASCAL palette, the demo canvases; and the mIoU metric against scikit-learn's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mobilenetv2.data.canvases import CANVAS_CLASSES, make_canvas
from mobilenetv2.data.preprocessing import Preprocessing
from mobilenetv2.data.segmentation import (
    IGNORE_INDEX,
    PASCAL_VOC_CLASSES,
    SegmentationDataset,
    SegTransform,
    find_pairs,
    open_mask,
    voc_palette,
)
from mobilenetv2.errors import UserError
from mobilenetv2.tasks.segment_metrics import SegmentMetrics, pixel_confusion

PRE = Preprocessing(resize=64, crop=64, mean=(0.0,) * 3, std=(1.0,) * 3)
COLOURS = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]], np.uint8)


def _blocks(h: int = 48, w: int = 80, seed: int = 0) -> tuple[Image.Image, np.ndarray]:
    """A mask of 8x8 blocks of random classes and the image painting each class its colour."""
    rng = np.random.default_rng(seed)
    mask = np.kron(rng.integers(0, len(COLOURS), (h // 8, w // 8)), np.ones((8, 8), int))
    return Image.fromarray(COLOURS[mask]), mask.astype(np.uint8)


@pytest.mark.parametrize("seed", range(6))
def test_joint_augmentation_keeps_image_and_mask_aligned(seed: int) -> None:
    """Scale, pad, crop and flip draw once for both: every labelled pixel still shows its
    class's colour (bilinear blending aside, at block edges), padding is labelled ignore."""
    img, mask = _blocks(seed=seed)
    torch.manual_seed(seed)
    x, y = SegTransform(64, PRE, train=True)(img, mask)
    assert x.shape == (3, 64, 64) and y.shape == (64, 64)
    rgb = (x.permute(1, 2, 0).numpy() * 255).round()
    nearest = np.abs(rgb[:, :, None, :] - COLOURS[None, None].astype(float)).sum(-1).argmin(-1)
    labelled = y.numpy() != IGNORE_INDEX
    assert labelled.any()
    agree = (nearest[labelled] == y.numpy()[labelled]).mean()
    assert agree > 0.97, agree
    # Padding (image 0 = the mean pixel) carries the ignore label, never a class.
    assert (x[:, ~torch.from_numpy(labelled)].abs().sum(0) == 0).all()


def test_flip_alone_mirrors_both() -> None:
    img, mask = _blocks(64, 64)
    tf = SegTransform(64, PRE, train=True, scale=(1.0, 1.0))
    flipped = 0
    for seed in range(8):
        torch.manual_seed(seed)
        x, y = tf(img, mask)
        if torch.equal(y, torch.from_numpy(mask.astype(np.int64)).flip(-1)):
            flipped += 1
            assert torch.allclose(x, torch.from_numpy(np.asarray(img) / 255.0).permute(
                2, 0, 1).float().flip(-1))
    assert 0 < flipped < 8


def test_eval_transform_keeps_aspect_and_pads_with_ignore() -> None:
    img, mask = _blocks(48, 128)
    x, y = SegTransform(64, PRE, train=False)(img, mask)
    assert x.shape == (3, 64, 64)
    assert (y[:24] != IGNORE_INDEX).all() and (y[24:] == IGNORE_INDEX).all()


def test_voc_palette_is_pascals() -> None:
    """Colours from VOCdevkit's colour map: aeroplane, person, the 255 outline."""
    pal = np.asarray(voc_palette()).reshape(256, 3)
    assert pal[1].tolist() == [128, 0, 0] and pal[15].tolist() == [192, 128, 128]
    assert pal[255].tolist() == [224, 224, 192] and pal[0].tolist() == [0, 0, 0]


def _save_mask(path: Path, mask: np.ndarray, mode: str = "P") -> None:
    im = Image.fromarray(mask, "L" if mode == "L" else "P")
    if mode == "P":
        im.putpalette(voc_palette())
    im.save(path)


def test_masks_read_as_indices_whatever_their_mode(tmp_path: Path) -> None:
    mask = np.array([[0, 1, 15], [255, 3, 0]], np.uint8)
    _save_mask(tmp_path / "p.png", mask)
    _save_mask(tmp_path / "l.png", mask, "L")
    rgb = np.asarray(voc_palette(), np.uint8).reshape(256, 3)[mask]
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    for name in ("p.png", "l.png", "rgb.png"):
        assert (open_mask(tmp_path / name) == mask).all(), name
    Image.fromarray(np.full((2, 2, 3), 7, np.uint8)).save(tmp_path / "odd.png")
    with pytest.raises(UserError, match="not a PASCAL palette colour"):
        open_mask(tmp_path / "odd.png")


def _folder(root: Path, n: int = 6) -> None:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        img, mask = _blocks(seed=i)
        img.save(root / "images" / f"im{i}.jpg")
        _save_mask(root / "masks" / f"im{i}.png", mask)


def test_bad_pairs_are_reported_and_left_out_or_fatal(tmp_path: Path, caplog) -> None:
    root = tmp_path / "data"
    _folder(root)
    (root / "masks" / "im0.png").unlink()                                   # missing mask
    _save_mask(root / "masks" / "im1.png", np.zeros((10, 10), np.uint8))    # size mismatch
    (root / "images" / "im2.jpg").write_bytes(b"not a jpeg")                 # unreadable
    pairs = find_pairs(str(root), val_split=0.34)
    assert len(pairs.train) + len(pairs.val) == 3 and len(pairs.bad) == 3
    assert "3 bad image/mask pair(s)" in caplog.text
    assert any("no mask" in b for b in pairs.bad)
    assert any("mask 10x10 but image 80x48" in b for b in pairs.bad)
    assert pairs.classes == ["background", "class_1", "class_2", "class_3", "class_4"]
    with pytest.raises(UserError, match="3 bad image/mask pair.*--strict-images"):
        find_pairs(str(root), strict=True)


def test_a_pair_that_fails_when_decoded_is_skipped(tmp_path: Path) -> None:
    root = tmp_path / "data"
    _folder(root, 2)
    pairs = find_pairs(str(root), val_split=0.5)
    ds = SegmentationDataset(pairs.train, SegTransform(64, PRE, train=False), 5)
    Path(pairs.train[0].image).write_bytes(Path(pairs.train[0].image).read_bytes()[:200])
    x, path = ds[0]
    assert x == "__skipped__" and path == pairs.train[0].image
    small = SegmentationDataset(pairs.val, SegTransform(64, PRE, train=False), 3)
    assert small[0][0] == "__skipped__"  # classes 3, 4 beyond a 3-class model


def test_voc_layout(tmp_path: Path) -> None:
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / d).mkdir(parents=True)
    for split, ids in (("train", ["a", "b"]), ("val", ["c"])):
        (voc / "ImageSets/Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
        for i in ids:
            img, mask = _blocks()
            img.save(voc / "JPEGImages" / f"{i}.jpg")
            _save_mask(voc / "SegmentationClass" / f"{i}.png", mask)
    pairs = find_pairs(str(tmp_path))
    assert pairs.classes == PASCAL_VOC_CLASSES and len(pairs.classes) == 21
    assert [Path(p.image).stem for p in pairs.train] == ["a", "b"] and pairs.val_name == "val"
    with pytest.raises(UserError, match="neither PASCAL VOC"):
        find_pairs(str(tmp_path / "VOCdevkit" / "VOC2012" / "JPEGImages"))


def test_canvases_label_the_ink_and_split_honestly() -> None:
    img, labels = make_canvas("train", 3)
    assert img.size == (64, 64) and labels.shape == (64, 64)
    found = set(np.unique(labels)) - {0}
    assert 1 <= len(found) <= 3 and max(found) < len(CANVAS_CLASSES)
    # Deterministic, and the validation canvases are others.
    assert (make_canvas("train", 3)[1] == labels).all()
    assert not (make_canvas("val", 3)[1] == labels).all()


def test_miou_matches_scikit_learn() -> None:
    from sklearn.metrics import confusion_matrix, jaccard_score

    rng = np.random.default_rng(0)
    target = rng.integers(0, 5, (4, 16, 16))
    pred = np.where(rng.random(target.shape) < 0.7, target, rng.integers(0, 5, target.shape))
    target[0, :4] = IGNORE_INDEX
    conf = pixel_confusion(torch.from_numpy(pred), torch.from_numpy(target), 6)
    keep = target != IGNORE_INDEX
    assert (conf.numpy() == confusion_matrix(target[keep], pred[keep], labels=range(6))).all()
    m = SegmentMetrics(0.0, conf, 4, [])
    # Class 5 never occurs: left out of the mean, as sklearn's labels= selection does.
    ref = jaccard_score(target[keep], pred[keep], labels=range(5), average="macro")
    assert m.miou == pytest.approx(ref)
    assert m.pixel_acc == pytest.approx((pred[keep] == target[keep]).mean())
