"""Opening any image a user has as RGB: EXIF orientation, grayscale, RGBA, palette, CMYK and
16-bit images; a clear `ImageError` naming the file for anything that is not an image."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mobilenetv2.errors import UserError

__all__ = ["ImageError", "open_rgb"]


class ImageError(UserError):
    """A file that cannot be read as an image (corrupt, truncated, empty, not an image)."""


def open_rgb(path: str | os.PathLike) -> Image.Image:
    """Decode `path` fully into an 8-bit RGB PIL image, upright per its EXIF orientation.

    Transparent images are composited on white (what a viewer shows); 16-bit and float
    images are scaled to 8 bits from their full range.
    """
    p = Path(path)
    try:
        if p.stat().st_size == 0:
            raise ImageError(f"{p}: empty file (0 bytes)")
        with Image.open(p) as im:
            im.load()  # decode now: truncated files fail here, not later
            im = ImageOps.exif_transpose(im)
            return _to_rgb(im)
    except ImageError:
        raise
    except FileNotFoundError as e:
        raise ImageError(f"{p}: no such file") from e
    except IsADirectoryError as e:
        raise ImageError(f"{p}: is a directory") from e
    except UnidentifiedImageError as e:
        raise ImageError(f"{p}: not an image (unrecognised format)") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{p}: corrupt or truncated image ({e})") from e


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if im.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        arr = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr).convert("RGB")
    if im.mode == "P":
        im = im.convert("RGBA") if "transparency" in im.info else im.convert("RGB")
    if im.mode in ("RGBA", "LA", "PA"):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, im).convert("RGB")
    if im.mode != "RGB":
        return im.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV
    return im
