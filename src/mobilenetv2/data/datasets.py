"""Datasets for training and evaluation: class-per-folder directories (ImageFolder layout)
with a reproducible held-out split, and the bundled digits. Unreadable files are skipped with a
warning and counted (or fatal on request); empty classes and single-class datasets are errors
found before any training starts. Which files count as images is `data.images.image_files`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from mobilenetv2.config import DataConfig
from mobilenetv2.data.digits import DigitsDataset
from mobilenetv2.data.images import (
    IMAGE_SUFFIXES,
    ImageError,
    image_files,
    open_image,
    readable_header,
)
from mobilenetv2.errors import UserError

__all__ = [
    "FolderDataset",
    "SKIPPED",
    "Splits",
    "build_splits",
    "labelled_dataset",
    "scan_folder",
]

log = logging.getLogger(__name__)

# What a dataset returns in place of an image it could not read; the collate function drops it
# and counts the file.
SKIPPED = "__skipped__"
_WARNED: set[str] = set()


def scan_folder(root: str | os.PathLike, classes: Sequence[str] | None = None,
                strict: bool = False, unreadable: list[str] | None = None,
                ) -> tuple[list[str], list[tuple[str, int]]]:
    """Classes (sorted sub-folder names) and (path, class index) samples of an ImageFolder.

    Every file's header is read (`data.images.readable_header`: format and size, no
    decoding), so files that are not images, are empty, unreadable or too large are left out
    of the samples (and appended to `unreadable`, or fatal with `strict`), and a class whose
    every file is unreadable is found here, before training. A file truncated after a valid
    header is only found when it is decoded, and is then skipped (`FolderDataset`).

    Raises:
        UserError: `root` is missing, has no class folders, only one class, or a class folder
            without readable image files.
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
    empty, corrupt, bad = [], [], []
    for idx, name in enumerate(classes):
        files = [str(p) for p in image_files(root / name)]
        good = []
        for f in files:
            try:
                readable_header(f)
                good.append(f)
            except ImageError as e:
                if strict:
                    raise
                log.warning("skipping unreadable image: %s", e)
                bad.append(f)
        if not files:
            empty.append(name)
        elif not good:
            corrupt.append(name)
        samples += [(f, idx) for f in good]
    if unreadable is not None:
        unreadable += bad
    if empty:
        raise UserError(f"{root}: empty class folder(s) with no image files: "
                        f"{', '.join(empty)} (extensions {', '.join(IMAGE_SUFFIXES)})")
    if corrupt and len(corrupt) == len(classes):
        raise UserError(f"{root}: no readable images ({len(bad)} files, all unreadable)")
    if corrupt:
        raise UserError(f"{root}: no readable images in class folder(s) {', '.join(corrupt)}")
    return list(classes), samples


class FolderDataset(Dataset):
    """(transformed image, label) for a list of files; unreadable files yield `SKIPPED`."""

    def __init__(self, samples: Sequence[tuple[str, int]], classes: Sequence[str],
                 transform: Callable | None = None, strict: bool = False,
                 unreadable: Sequence[str] = (), min_side: int | None = None) -> None:
        self.samples = list(samples)
        self.min_side = min_side  # JPEGs decode at reduced size down to this side (open_rgb)
        # Files left out when the folder was scanned (`scan_folder`): reported with the files
        # skipped while loading.
        self.unreadable = list(unreadable)
        self.classes = list(classes)
        self.targets = [t for _, t in self.samples]
        self.transform = transform
        self.strict = strict

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        path, target = self.samples[i]
        try:
            return open_image(path, self.transform or (lambda img: img),
                              self.min_side), target
        except ImageError as e:
            if self.strict:
                raise
            if path not in _WARNED:  # once per file, not once per epoch
                _WARNED.add(path)
                log.warning("skipping unreadable image: %s", e)
            return SKIPPED, path  # type: ignore[return-value]


@dataclass
class Splits:
    """A training set, a validation set and what they came from."""

    train: Dataset
    val: Dataset
    classes: list[str]
    source: str
    val_name: str
    unreadable: list[str] = field(default_factory=list)  # left out by `scan_folder`


def build_splits(cfg: DataConfig, train_tf: Callable, eval_tf: Callable,
                 decode_sides: tuple[int | None, int | None] = (None, None)) -> Splits:
    """Training and validation datasets for `cfg.data` (see `DataConfig.data`).

    Args:
        decode_sides: The smallest image side the training and the evaluation transform
            need; larger JPEGs are decoded at a reduced scale (`data.images.open_rgb`).
    """
    if cfg.data == "digits":
        return Splits(DigitsDataset("train", train_tf), DigitsDataset("test", eval_tf),
                      list(DigitsDataset.classes), "bundled digits (scikit-learn)", "test")
    root = _data_root(cfg.data)
    bad_train: list[str] = []
    bad_val: list[str] = []
    if _has_train_val(root):
        classes, train = scan_folder(root / "train", None, cfg.strict_images, bad_train)
        _, val = scan_folder(root / "val", classes, cfg.strict_images, bad_val)
        name = "val"
    else:
        classes, samples = scan_folder(root, None, cfg.strict_images, bad_train)
        train, val = _held_out(samples, len(classes), cfg.val_split, cfg.split_seed)
        if not val:
            raise UserError(f"{root}: too few images to hold out a validation split")
        name = f"held-out {cfg.val_split:.0%}"
    return Splits(FolderDataset(train, classes, train_tf, cfg.strict_images, bad_train,
                                decode_sides[0]),
                  FolderDataset(val, classes, eval_tf, cfg.strict_images, bad_val,
                                decode_sides[1]),
                  classes, str(root), name, bad_train + bad_val)


def labelled_dataset(data: str, transform: Callable, labels: Sequence[str] | None = None,
                     ) -> tuple[Dataset, list[str]]:
    """The dataset `eval` measures on, and its class names.

    Args:
        data: "digits" (the bundled test split), an ImageFolder directory, or a training root
            with `train/` and `val/` (its `val/` is used).
        transform: Applied to every PIL image.
        labels: The weights' class names; the folder's classes must be the same names, and
            targets follow this order. None keeps the folder's sorted order.
    """
    if data == "digits":
        return DigitsDataset("test", transform), list(DigitsDataset.classes)
    root = _data_root(data)
    if _has_train_val(root):
        root = root / "val"  # a training root: evaluate its validation split
    unreadable: list[str] = []
    classes, samples = scan_folder(root, unreadable=unreadable)
    if labels is not None:
        labels = list(labels)
        if sorted(classes) != sorted(labels):
            raise UserError(
                f"{root}: class folders {classes} do not match the weights' labels "
                f"({len(labels)} labels: {', '.join(labels[:5])}"
                f"{' ...' if len(labels) > 5 else ''})"
            )
        # Map folder names to the weights' label order.
        remap = {name: labels.index(name) for name in classes}
        samples = [(p, remap[classes[t]]) for p, t in samples]
        classes = labels
    return FolderDataset(samples, classes, transform, unreadable=unreadable), classes


def _data_root(data: str) -> Path:
    root = Path(data).expanduser()
    if not root.is_dir():
        raise UserError(f"--data: not 'digits' and not a folder: {data}")
    return root


def _has_train_val(root: Path) -> bool:
    return (root / "train").is_dir() and (root / "val").is_dir()


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
