"""The segmentation demo's data: real handwritten digits composited onto real photographs.

No segmentation dataset is reachable offline, so the demo builds one from real material that
is: scikit-learn's 1,797 scanned handwritten digits (8x8, from the UCI optdigits set) and its
two sample photographs (`china.jpg`, `flower.jpg`, 640x427). Each canvas is a crop of a
photograph (random position and scale) with one or two digits pasted in, each upscaled
to 3/8-11/16 of the canvas (24-44 pixels at 64x64) and drawn in a colour that contrasts with
the crop under it, the scanned intensity acting as the ink's opacity. The per-pixel label is
the digit's class (1-10 for the digits 0-9) on its strokes (ink covering more than half the
pixel), thickened by a max filter of 1/9 of the digit's size, else background (0); digits
never overlap.

The split is honest: training canvases use the digits of the project's fixed training split
and the left 70% of each photograph; validation canvases use the test-split digits and the
right 30%. Canvases are a pure function of (split, index, seed), so a run sees the same data
on every machine.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image, ImageFilter

from mobilenetv2.data.digits import digits_arrays

__all__ = ["CANVAS_CLASSES", "CANVAS_SIZE", "make_canvas"]

CANVAS_CLASSES = ["background"] + [f"digit {i}" for i in range(10)]
CANVAS_SIZE = 64
_TRAIN_PART = 0.7  # of each photograph's width


@lru_cache(maxsize=1)
def _photos() -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_sample_images

    return tuple(np.asarray(im, dtype=np.uint8) for im in load_sample_images().images)


@lru_cache(maxsize=2)
def _digits(split: str) -> tuple[np.ndarray, np.ndarray]:
    return digits_arrays("train" if split == "train" else "test")


def make_canvas(split: str, index: int, seed: int = 0,
                size: int = CANVAS_SIZE) -> tuple[Image.Image, np.ndarray]:
    """Canvas `index` of `split` ("train" or "val"): an RGB image and its (H, W) uint8 labels."""
    rng = np.random.default_rng([seed, 0 if split == "train" else 1, index])
    photo = _photos()[int(rng.integers(len(_photos())))]
    h, w = photo.shape[:2]
    lo, hi = (0, int(w * _TRAIN_PART)) if split == "train" else (int(w * _TRAIN_PART), w)
    # A crop of 0.5-1.5x the canvas size from the split's part of the photograph, resized.
    side = int(min(hi - lo, h, size * rng.uniform(0.5, 1.5)))
    x0 = int(rng.integers(lo, hi - side + 1))
    y0 = int(rng.integers(0, h - side + 1))
    crop = Image.fromarray(photo[y0:y0 + side, x0:x0 + side]).resize((size, size),
                                                                     Image.BILINEAR)
    canvas = np.asarray(crop, dtype=np.float32)
    labels = np.zeros((size, size), np.uint8)
    images, classes = _digits(split)
    taken = np.zeros((size, size), bool)
    for _ in range(int(rng.integers(1, 3))):
        k = int(rng.integers(len(images)))
        d = int(rng.integers(size * 3 // 8, size * 11 // 16 + 1))  # 24-44 px at 64
        ink = np.asarray(Image.fromarray(images[k]).resize((d, d), Image.BILINEAR),
                         np.float32) / 255.0
        for _try in range(20):  # digits do not overlap: each pixel has one true class
            top, left = int(rng.integers(0, size - d + 1)), int(rng.integers(0, size - d + 1))
            if not taken[top:top + d, left:left + d].any():
                break
        else:
            continue
        taken[top:top + d, left:left + d] = True
        region = canvas[top:top + d, left:left + d]
        # Light ink on dark ground and dark ink on light ground, in a random hue.
        bright = region.mean() < 128
        colour = rng.uniform(170, 255, 3) if bright else rng.uniform(0, 85, 3)
        a = ink[..., None]
        canvas[top:top + d, left:left + d] = region * (1 - a) + colour * a
        # The strokes, thickened by a max filter of 1/9 of the digit's size: DeepLabv3's
        # logits are 8x coarser than the pixels (no decoder), and 2-pixel strokes are below
        # what it can outline; the thickened strokes are still the digit's shape.
        stroke = Image.fromarray(((ink > 0.5) * 255).astype(np.uint8))
        stroke = stroke.filter(ImageFilter.MaxFilter(max(3, d // 9 | 1)))
        labels[top:top + d, left:left + d][np.asarray(stroke) > 0] = classes[k] + 1
    return Image.fromarray(np.clip(canvas + 0.5, 0, 255).astype(np.uint8)), labels
