"""The bundled dataset: scikit-learn's handwritten digits (1,797 real 8x8 grayscale scans of
handwritten 0-9, UCI ML hand-written digits), split reproducibly into train and test.

Items are PIL RGB images, so the same `Preprocessing` path as any photo applies (the digits
weights record `resize=32, crop=32, resize_mode="exact"`: 8x8 -> 32x32 bilinear).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

__all__ = ["DIGITS_LABELS", "DigitsDataset", "digits_arrays", "export_digits_imagefolder"]

DIGITS_LABELS = [str(i) for i in range(10)]
TEST_FRACTION = 0.2
SPLIT_SEED = 0


def digits_arrays(split: str, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, 8, 8) scaled from the 0-16 range to 0-255, and int64 labels.

    A stratified split: `seed` 0 gives the project's fixed 1,437 / 360 train / test split.
    """
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    from sklearn.datasets import load_digits

    data = load_digits()
    images = np.clip(np.rint(data.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    labels = data.target.astype(np.int64)
    if split == "all":
        return images, labels
    rng = np.random.default_rng(seed)
    test_idx = []
    for cls in range(10):
        idx = np.flatnonzero(labels == cls)
        rng.shuffle(idx)
        test_idx.extend(idx[: round(len(idx) * TEST_FRACTION)].tolist())
    mask = np.zeros(len(labels), dtype=bool)
    mask[test_idx] = True
    keep = mask if split == "test" else ~mask
    return images[keep], labels[keep]


class DigitsDataset(Dataset):
    """Digits as (transformed PIL RGB image, label) pairs, like an ImageFolder."""

    classes = DIGITS_LABELS

    def __init__(
        self, split: str = "train", transform: Callable[[Image.Image], Any] | None = None,
        seed: int = SPLIT_SEED,
    ) -> None:
        self.images, self.labels = digits_arrays(split, seed)
        self.targets = self.labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        img = Image.fromarray(self.images[i]).convert("RGB")
        return (self.transform(img) if self.transform else img), int(self.labels[i])


def export_digits_imagefolder(root: str | os.PathLike, split: str = "test") -> Path:
    """Write a split as PNGs in ImageFolder layout (`root/<digit>/<index>.png`), so the
    directory-based commands (`eval --data`, `quantize --calib`) can be tried on real data."""
    root = Path(root)
    images, labels = digits_arrays(split)
    for i, (img, label) in enumerate(zip(images, labels)):
        d = root / DIGITS_LABELS[label]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(d / f"{i:04d}.png")
    return root
