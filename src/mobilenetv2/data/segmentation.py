"""Segmentation data (paper section 6.3): image + class-mask pairs, read jointly, augmented jointly.

Layouts:
- PASCAL VOC 2012 (`VOCdevkit/VOC2012` or any folder holding it): `JPEGImages/<id>.jpg`,
  `SegmentationClass/<id>.png` (palette PNGs whose indices are the classes, 255 on object
  boundaries = ignore), `ImageSets/Segmentation/{train,val}.txt`. SBD's "trainaug" (10,582
  images) is used when `ImageSets/Segmentation/trainaug.txt` and `SegmentationClassAug/`
  are there (DeepLab's training set for Table 7).
- Users' folders: `images/` + `masks/` (a mask per image, same stem, `.png`), either inside
  `train/` and `val/` or alone (then `val_split` of the pairs is held out). Masks hold class
  indices (grayscale or palette PNG) or PASCAL palette colours (RGB); 255 is ignored. Class
  names come from `labels.txt` (one per line) beside `images/`, else from the largest index.

A pair is bad when its mask is missing, either file is unreadable, or the sizes differ: bad
pairs are reported (one warning with the first few) and left out, or fatal with
`strict_images`. A pair that fails only when decoded during training is skipped like a
corrupt classification image (`datasets.SKIPPED`).

Augmentation is DeepLab's (`input_preprocess.py`): random scale 0.5-2.0 (bilinear image,
nearest mask), padding to the crop with the mean pixel and the ignore label, a random crop,
a random left-right flip, the same draws applied to image and mask. Evaluation keeps the
image's aspect: the longer side is brought down to the evaluation size if larger, then the
image is padded (mask with ignore) to a square, as DeepLab evaluates on 513x513 padded crops.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from mobilenetv2.data.datasets import SKIPPED
from mobilenetv2.data.images import IMAGE_SUFFIXES, ImageError, image_files, open_rgb
from mobilenetv2.data.preprocessing import Preprocessing
from mobilenetv2.errors import UserError

__all__ = [
    "IGNORE_INDEX",
    "PASCAL_VOC_CLASSES",
    "SegPair",
    "SegmentationDataset",
    "SegTransform",
    "collate_segment",
    "find_pairs",
    "open_mask",
    "voc_palette",
]

log = logging.getLogger(__name__)

IGNORE_INDEX = 255
PASCAL_VOC_CLASSES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
]


def voc_palette() -> list[int]:
    """The PASCAL VOC colour map (VOCdevkit's `labelcolormap`: bits of the index spread over
    R, G, B), 256 x RGB flat, as PIL's `putpalette` takes it; 255 is (224, 224, 192)."""
    pal = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


@dataclass(frozen=True)
class SegPair:
    image: str
    mask: str


def open_mask(path: str | os.PathLike) -> np.ndarray:
    """Class indices (H, W) uint8 of a mask file: palette/grayscale indices as stored, RGB
    colours through the PASCAL palette (an unknown colour is an `ImageError`)."""
    p = Path(path)
    try:
        with Image.open(p) as im:
            im.load()
            if im.mode in ("P", "L"):
                return np.asarray(im, dtype=np.uint8).copy()
            if im.mode in ("I", "I;16", "I;16L", "I;16B"):
                arr = np.asarray(im)
                if arr.max() > 255:
                    raise ImageError(f"{p}: mask value {int(arr.max())} above 255")
                return arr.astype(np.uint8)
            rgb = np.asarray(im.convert("RGB"), dtype=np.int64)
    except ImageError:
        raise
    except FileNotFoundError as e:
        raise ImageError(f"{p}: no such file") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{p}: unreadable mask ({e})") from e
    pal = np.asarray(voc_palette(), dtype=np.int64).reshape(256, 3)
    keys = (pal[:, 0] << 16) | (pal[:, 1] << 8) | pal[:, 2]
    lut = {int(k): i for i, k in reversed(list(enumerate(keys)))}
    flat = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    uniq, inv = np.unique(flat, return_inverse=True)
    bad = [u for u in uniq.tolist() if u not in lut]
    if bad:
        c = bad[0]
        raise ImageError(f"{p}: colour {(c >> 16, (c >> 8) & 255, c & 255)} is not a PASCAL "
                         "palette colour; save masks as class indices (grayscale PNG)")
    return np.asarray([lut[u] for u in uniq.tolist()], np.uint8)[inv].reshape(flat.shape)


# ---------------------------------------------------------------------------------------------
# Finding pairs


@dataclass
class Pairs:
    train: list[SegPair]
    val: list[SegPair]
    classes: list[str]
    source: str
    val_name: str
    bad: list[str] = field(default_factory=list)


def _voc_root(root: Path) -> Path | None:
    for cand in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (cand / "JPEGImages").is_dir() and (cand / "SegmentationClass").is_dir():
            return cand
    return None


def find_pairs(data: str, val_split: float = 0.1, split_seed: int = 0,
               strict: bool = False) -> Pairs:
    """The training and validation pairs of a VOC root or an images/masks folder."""
    root = Path(data)
    if not root.is_dir():
        raise UserError(f"--data {data}: no such directory (expected PASCAL VOC 2012 or a "
                        "folder with images/ and masks/)")
    voc = _voc_root(root)
    if voc is not None:
        sets = voc / "ImageSets" / "Segmentation"
        aug = (sets / "trainaug.txt").is_file() and (voc / "SegmentationClassAug").is_dir()
        train_ids = _ids(sets / ("trainaug.txt" if aug else "train.txt"))
        val_ids = _ids(sets / "val.txt")
        masks = "SegmentationClassAug" if aug else "SegmentationClass"
        train = [SegPair(str(voc / "JPEGImages" / f"{i}.jpg"), str(voc / masks / f"{i}.png"))
                 for i in train_ids]
        val = [SegPair(str(voc / "JPEGImages" / f"{i}.jpg"),
                       str(voc / "SegmentationClass" / f"{i}.png")) for i in val_ids]
        pairs = Pairs(train, val, list(PASCAL_VOC_CLASSES),
                      f"PASCAL VOC 2012 ({'trainaug' if aug else 'train'}) at {voc}", "val")
    elif (root / "train" / "images").is_dir() and (root / "val" / "images").is_dir():
        train, bad_t = _folder_pairs(root / "train")
        val, bad_v = _folder_pairs(root / "val")
        pairs = Pairs(train, val, [], str(root), "val", bad_t + bad_v)
    elif (root / "images").is_dir():
        every, bad = _folder_pairs(root)
        rng = np.random.default_rng(split_seed)
        order = rng.permutation(len(every))
        n_val = max(1, round(len(every) * val_split)) if len(every) > 1 else 0
        val = [every[i] for i in sorted(order[:n_val])]
        train = [every[i] for i in sorted(order[n_val:])]
        pairs = Pairs(train, val, [], str(root), f"held-out {val_split:.0%}", bad)
    else:
        raise UserError(f"--data {data}: neither PASCAL VOC 2012 (JPEGImages/, "
                        "SegmentationClass/) nor a folder with images/ and masks/ (or train/ "
                        "and val/ each holding them)")
    pairs.train, bad_t = _check_pairs(pairs.train)
    pairs.val, bad_v = _check_pairs(pairs.val)
    pairs.bad += bad_t + bad_v
    if pairs.bad:
        msg = (f"{len(pairs.bad)} bad image/mask pair(s) in {data}: "
               + "; ".join(pairs.bad[:3]) + (" ..." if len(pairs.bad) > 3 else ""))
        if strict:
            raise UserError(msg + " (--strict-images)")
        log.warning("%s; left out (--strict-images makes this fatal)", msg)
    if not pairs.train or not pairs.val:
        raise UserError(f"--data {data}: {len(pairs.train)} training and {len(pairs.val)} "
                        "validation pairs; need at least one of each")
    if not pairs.classes:
        pairs.classes = _folder_classes(root, pairs.train + pairs.val)
    return pairs


def _ids(path: Path) -> list[str]:
    if not path.is_file():
        raise UserError(f"{path}: missing (PASCAL VOC lists its splits there)")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _folder_pairs(root: Path) -> tuple[list[SegPair], list[str]]:
    masks = {p.stem: p for p in (root / "masks").glob("*")
             if p.suffix.lower() in IMAGE_SUFFIXES} if (root / "masks").is_dir() else {}
    pairs, bad = [], []
    for img in image_files(root / "images"):
        m = masks.get(img.stem)
        if m is None:
            bad.append(f"{img}: no mask {root / 'masks' / (img.stem + '.png')}")
        else:
            pairs.append(SegPair(str(img), str(m)))
    return pairs, bad


def _check_pairs(pairs: Sequence[SegPair]) -> tuple[list[SegPair], list[str]]:
    """Headers only (size and readability): cheap enough for every pair of VOC."""
    good, bad = [], []
    for p in pairs:
        try:
            sizes = []
            for f in (p.image, p.mask):
                if not Path(f).is_file():
                    raise ImageError(f"{f}: no such file")
                try:
                    with Image.open(f) as im:
                        sizes.append(im.size)
                except (OSError, SyntaxError, ValueError) as e:
                    raise ImageError(f"{f}: unreadable ({e})") from e
            if sizes[0] != sizes[1]:
                raise ImageError(f"{p.mask}: mask {sizes[1][0]}x{sizes[1][1]} but image "
                                 f"{sizes[0][0]}x{sizes[0][1]}")
        except ImageError as e:
            bad.append(str(e))
        else:
            good.append(p)
    return good, bad


def _folder_classes(root: Path, pairs: Sequence[SegPair]) -> list[str]:
    for cand in (root / "labels.txt", root / "train" / "labels.txt"):
        if cand.is_file():
            names = [s.strip() for s in cand.read_text().splitlines() if s.strip()]
            if names:
                return names
    top = 0
    for p in pairs:
        m = open_mask(p.mask)
        valid = m[m != IGNORE_INDEX]
        top = max(top, int(valid.max()) if valid.size else 0)
    return ["background"] + [f"class_{i}" for i in range(1, top + 1)]


# ---------------------------------------------------------------------------------------------
# Joint transforms


@dataclass(frozen=True)
class SegTransform:
    """Image + mask -> (normalised CHW float tensor, HW int64 mask), augmented jointly in
    training (see the module docstring); `scale` is the random scale range."""

    size: int
    pre: Preprocessing
    train: bool
    scale: tuple[float, float] = (0.5, 2.0)
    flip: bool = True

    def __call__(self, img: Image.Image, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        m = Image.fromarray(mask)
        if self.train:
            s = self.scale[0] + float(torch.rand(())) * (self.scale[1] - self.scale[0])
            w, h = max(1, round(img.width * s)), max(1, round(img.height * s))
            img, m = img.resize((w, h), Image.BILINEAR), m.resize((w, h), Image.NEAREST)
        else:
            big = max(img.size)
            if big > self.size:
                w = max(1, round(img.width * self.size / big))
                h = max(1, round(img.height * self.size / big))
                img, m = img.resize((w, h), Image.BILINEAR), m.resize((w, h), Image.NEAREST)
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
        mean = torch.tensor(self.pre.mean).view(3, 1, 1)
        x = (x - mean) / torch.tensor(self.pre.std).view(3, 1, 1)
        y = torch.from_numpy(np.asarray(m, dtype=np.int64).copy())
        # Pad with the mean pixel (0 after normalisation) and the ignore label.
        ph, pw = max(0, self.size - x.shape[1]), max(0, self.size - x.shape[2])
        if ph or pw:
            x = torch.nn.functional.pad(x, (0, pw, 0, ph))
            y = torch.nn.functional.pad(y, (0, pw, 0, ph), value=IGNORE_INDEX)
        if self.train:
            top = int(torch.randint(0, x.shape[1] - self.size + 1, ()))
            left = int(torch.randint(0, x.shape[2] - self.size + 1, ()))
            x = x[:, top:top + self.size, left:left + self.size]
            y = y[top:top + self.size, left:left + self.size]
            if self.flip and float(torch.rand(())) < 0.5:
                x, y = x.flip(-1), y.flip(-1)
        return x.contiguous(), y.contiguous()


class SegmentationDataset(Dataset):
    """Pairs -> transformed (image, mask); an unreadable pair -> (`SKIPPED`, path)."""

    def __init__(self, pairs: Sequence[SegPair], transform: SegTransform,
                 num_classes: int) -> None:
        self.pairs = list(pairs)
        self.transform = transform
        self.num_classes = num_classes

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int):  # noqa: ANN204
        p = self.pairs[index]
        try:
            img, mask = open_rgb(p.image), open_mask(p.mask)
            if mask.shape != (img.height, img.width):
                raise ImageError(f"{p.mask}: size differs from {p.image}")
            bad = mask[(mask != IGNORE_INDEX) & (mask >= self.num_classes)]
            if bad.size:
                raise ImageError(f"{p.mask}: class {int(bad[0])} but only "
                                 f"{self.num_classes} classes")
        except ImageError as e:
            log.warning("skipping %s", e)
            return SKIPPED, p.image
        return self.transform(img, mask)


def collate_segment(batch: list) -> tuple[torch.Tensor, torch.Tensor, list]:
    """Stack images and masks, dropping the samples marked unreadable."""
    good = [(x, y) for x, y in batch if not (isinstance(x, str) and x == SKIPPED)]
    skipped = [y for x, y in batch if isinstance(x, str) and x == SKIPPED]
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), skipped
    return torch.stack([x for x, _ in good]), torch.stack([y for _, y in good]), skipped
