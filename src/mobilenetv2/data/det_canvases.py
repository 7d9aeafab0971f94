"""The demo detection dataset: real handwritten digits on crops of real photographs.

No detection dataset is reachable offline, so this one is built from real material that is:
the 1,797 handwritten digit scans of scikit-learn's `load_digits` (8x8, UCI) and its two
sample photographs (`load_sample_images`: china.jpg and flower.jpg, 427x640). Each canvas is a
random crop of one photograph (30-100% of its shorter side) resized to a square, with 1-4
digits pasted at 12-45% of the canvas side (aspect jittered 0.8-1.25), in black or white ink,
whichever contrasts more with the photograph under it, never overlapping. A digit's box is
exact: the bounding box of its ink (alpha > 0.2) after scaling. Training canvases use the
project's fixed digits train split, validation canvases the held-out test split (unseen
writers' digits; the two photographs are shared, at different random crops). 10 classes.
Every canvas is a pure function of (split, index, seed), rendered on demand.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from mobilenetv2.data.detection import BACKGROUND, DetectionSample, DetectionSamples
from mobilenetv2.data.digits import DIGITS_LABELS, digits_arrays

__all__ = ["CANVAS_SIZES", "canvas_samples", "render_canvas"]

CANVAS_SIZES = {"train": 1000, "val": 200}
_SPLIT_CODE = {"train": 1, "val": 2}


@lru_cache(maxsize=1)
def _photos() -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_sample_images

    return tuple(load_sample_images().images)


@lru_cache(maxsize=2)
def _digits(split: str) -> tuple[np.ndarray, np.ndarray]:
    return digits_arrays("train" if split == "train" else "test")


@dataclass(frozen=True)
class _Layout:
    photo: int
    crop: tuple[int, int, int]             # top, left, side in the photograph
    glyphs: tuple[tuple[int, int, int, int, int, int], ...]  # digit, x, y, w, h, ink


def _glyph(digit: np.ndarray, w: int, h: int) -> np.ndarray:
    """Ink opacity of a scaled digit; the scans' faint 1/16-2/16 levels become transparent,
    so a glyph is strokes, not a visible rectangle."""
    a = np.asarray(Image.fromarray(digit).resize((w, h), Image.BILINEAR), np.float32) / 255.0
    return np.clip((a - 0.15) / 0.7, 0.0, 1.0)


def _layout(split: str, index: int, size: int, seed: int) -> _Layout:
    rng = np.random.default_rng([seed, _SPLIT_CODE[split], index])
    photos = _photos()
    p = int(rng.integers(len(photos)))
    ph, pw = photos[p].shape[:2]
    side = int(rng.uniform(0.3, 1.0) * min(ph, pw))
    top, left = int(rng.integers(ph - side + 1)), int(rng.integers(pw - side + 1))
    images, _ = _digits(split)
    glyphs: list[tuple[int, int, int, int, int, int]] = []
    placed: list[tuple[int, int, int, int]] = []
    for _ in range(int(rng.integers(1, 5))):
        for _try in range(20):
            s = rng.uniform(0.12, 0.45) * size
            aspect = float(np.exp(rng.uniform(np.log(0.8), np.log(1.25))))
            w, h = max(8, int(s * np.sqrt(aspect))), max(8, int(s / np.sqrt(aspect)))
            x, y = int(rng.integers(size - w + 1)), int(rng.integers(size - h + 1))
            if all(x + w + 2 <= a or a + c + 2 <= x or y + h + 2 <= b or b + d + 2 <= y
                   for a, b, c, d in placed):
                placed.append((x, y, w, h))
                glyphs.append((int(rng.integers(len(images))), x, y, w, h, 0))
                break
    return _Layout(p, (top, left, side), tuple(glyphs))


def _background(layout: _Layout, size: int) -> np.ndarray:
    top, left, side = layout.crop
    crop = _photos()[layout.photo][top:top + side, left:left + side]
    return np.asarray(Image.fromarray(crop).resize((size, size), Image.BILINEAR), np.float32)


def render_canvas(split: str, index: int, size: int = 128, seed: int = 0
                  ) -> tuple[Image.Image, np.ndarray, np.ndarray]:
    """Canvas `index` of `split`: (RGB image, boxes (K, 4) x1 y1 x2 y2, labels 1..10)."""
    layout = _layout(split, index, size, seed)
    img = _background(layout, size)
    images, labels = _digits(split)
    boxes, classes = [], []
    for d, x, y, w, h, _ in layout.glyphs:
        alpha = _glyph(images[d], w, h)
        region = img[y:y + h, x:x + w]
        ink = 0.0 if region.mean() > 127 else 255.0  # contrast with the photograph under it
        img[y:y + h, x:x + w] = region * (1 - alpha[..., None]) + ink * alpha[..., None]
        ys, xs = np.nonzero(alpha > 0.2)
        boxes.append([x + xs.min(), y + ys.min(), x + xs.max() + 1, y + ys.max() + 1])
        classes.append(int(labels[d]) + 1)
    return (Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8)),
            np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(classes, np.int64))


def canvas_samples(split: str, size: int = 128, seed: int = 0, count: int | None = None
                   ) -> DetectionSamples:
    """The split's canvases as samples (boxes computed, pixels rendered by `image_of`)."""
    n = CANVAS_SIZES[split] if count is None else count
    samples = []
    images, labels = _digits(split)
    for i in range(n):
        layout = _layout(split, i, size, seed)
        boxes, classes = [], []
        for d, x, y, w, h, _ in layout.glyphs:
            ys, xs = np.nonzero(_glyph(images[d], w, h) > 0.2)
            boxes.append([x + xs.min(), y + ys.min(), x + xs.max() + 1, y + ys.max() + 1])
            classes.append(int(labels[d]) + 1)
        samples.append(DetectionSample(
            f"canvas:{split}:{i}", size, size, np.asarray(boxes, np.float32).reshape(-1, 4),
            np.asarray(classes, np.int64), np.zeros(len(classes), bool), i + 1))
    return DetectionSamples(samples, [BACKGROUND, *DIGITS_LABELS], list(range(11)))


def canvas_image(sample: DetectionSample, seed: int = 0) -> Image.Image:
    """`DetectionDataset`'s `image_of` for canvas samples."""
    _, split, index = sample.path.split(":")
    return render_canvas(split, int(index), sample.width, seed)[0]


def write_samples(out: str, count: int = 4, size: int = 256) -> list[str]:
    """Validation canvases as PNG files, to try `mobilenetv2 detect` on."""
    from pathlib import Path

    from mobilenetv2._files import atomic_write

    paths = []
    for i in range(count):
        img, _, _ = render_canvas("val", i, size)
        p = Path(out) / f"val_canvas_{i}.png"
        paths.append(str(atomic_write(p, lambda t, img=img: img.save(t, format="PNG"),
                                      suffix=".png")))
    return paths


if __name__ == "__main__":  # `python -m mobilenetv2.data.det_canvases DIR` (make demo-detect)
    import sys

    for path in write_samples(sys.argv[1] if len(sys.argv) > 1 else "runs/detect-demo/samples"):
        print(path)
