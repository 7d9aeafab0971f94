"""Datasets for training: class-per-folder directories (ImageFolder layout) with a reproducible
held-out split, and the bundled digits. Unreadable files are skipped with a warning and
counted (or fatal on request); empty classes and single-class datasets are errors found
before any training starts.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from mobilenetv2.config import DataConfig
from mobilenetv2.data.digits import DigitsDataset
from mobilenetv2.data.images import ImageError, open_rgb
from mobilenetv2.errors import UserError

__all__ = [
    "IMAGE_EXTENSIONS",
    "FolderDataset",
    "SKIPPED",
    "Splits",
    "build_splits",
    "scan_folder",
]

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
                    ".pgm")
# What a dataset returns in place of an image it could not read; the collate function drops it
# and counts the file.
SKIPPED = "__skipped__"
_WARNED: set[str] = set()


def scan_folder(root: str | os.PathLike, classes: Sequence[str] | None = None,
                ) -> tuple[list[str], list[tuple[str, int]]]:
    """Classes (sorted sub-folder names) and (path, class index) samples of an ImageFolder.

    Raises:
        UserError: `root` is missing, has no class folders, only one class, or a class folder
            without image files.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"dataset folder not found: {root}")
    found = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if classes is None:
        classes = found
        if len(classes) == 0:
            raise UserError(f"{root}: no class sub-folders (expected {root}/<class>/<image>)")
        if len(classes) == 1:
            raise UserError(f"{root}: only one class ({classes[0]!r}); a classifier needs at "
                            "least two class sub-folders")
    elif sorted(found) != sorted(classes):
        raise UserError(f"{root}: class folders {found} differ from the training classes "
                        f"{list(classes)}")
    samples: list[tuple[str, int]] = []
    empty = []
    for idx, name in enumerate(classes):
        files = sorted(
            str(p) for p in (root / name).rglob("*")
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not files:
            empty.append(name)
        samples += [(f, idx) for f in files]
    if empty:
        raise UserError(f"{root}: empty class folder(s) with no image files: "
                        f"{', '.join(empty)} (extensions {', '.join(IMAGE_EXTENSIONS)})")
    return list(classes), samples


class FolderDataset(Dataset):
    """(transformed image, label) for a list of files; unreadable files yield `SKIPPED`."""

    def __init__(self, samples: Sequence[tuple[str, int]], classes: Sequence[str],
                 transform: Callable | None = None, strict: bool = False) -> None:
        self.samples = list(samples)
        self.classes = list(classes)
        self.targets = [t for _, t in self.samples]
        self.transform = transform
        self.strict = strict

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        path, target = self.samples[i]
        try:
            img = open_rgb(path)
        except ImageError as e:
            if self.strict:
                raise
            if path not in _WARNED:  # once per file, not once per epoch
                _WARNED.add(path)
                log.warning("skipping unreadable image: %s", e)
            return SKIPPED, path  # type: ignore[return-value]
        return (self.transform(img) if self.transform else img), target


@dataclass
class Splits:
    """A training set, a validation set and what they came from."""

    train: Dataset
    val: Dataset
    classes: list[str]
    source: str
    val_name: str


def build_splits(cfg: DataConfig, train_tf: Callable, eval_tf: Callable) -> Splits:
    """Training and validation datasets for `cfg.data` (see `DataConfig.data`)."""
    if cfg.data == "digits":
        return Splits(DigitsDataset("train", train_tf), DigitsDataset("test", eval_tf),
                      list(DigitsDataset.classes), "bundled digits (scikit-learn)", "test")
    root = Path(cfg.data).expanduser()
    if not root.is_dir():
        raise UserError(f"--data: not 'digits' and not a folder: {cfg.data}")
    if (root / "train").is_dir() and (root / "val").is_dir():
        classes, train = scan_folder(root / "train")
        _, val = scan_folder(root / "val", classes)
        name = "val"
    else:
        classes, samples = scan_folder(root)
        train, val = _held_out(samples, len(classes), cfg.val_split, cfg.split_seed)
        if not val:
            raise UserError(f"{root}: too few images to hold out a validation split")
        name = f"held-out {cfg.val_split:.0%}"
    return Splits(FolderDataset(train, classes, train_tf, cfg.strict_images),
                  FolderDataset(val, classes, eval_tf, cfg.strict_images),
                  classes, str(root), name)


def _held_out(samples: list[tuple[str, int]], num_classes: int, fraction: float, seed: int,
              ) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """Stratified split: `fraction` of every class (at least one image when a class has two
    or more) goes to validation, chosen by a seeded permutation."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in range(num_classes):
        items = [s for s in samples if s[1] == c]
        order = rng.permutation(len(items))
        k = min(len(items) - 1, max(1, round(len(items) * fraction))) if len(items) > 1 else 0
        val += [items[i] for i in order[:k]]
        train += [items[i] for i in order[k:]]
    return train, val
