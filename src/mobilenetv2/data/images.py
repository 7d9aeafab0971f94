"""Images on disk: the one safe opener, the one suffix list and the one folder walker.

`open_rgb` opens any image a user has as RGB: EXIF orientation, grayscale, RGBA, palette,
CMYK and 16-bit images; a clear `ImageError` naming the file for anything that is not an image.

`image_files` is how every folder of images is read (`train` and `eval` class folders,
`quantize --calib`, `predict DIR`), so all of them see the same files in the same folder:

- Suffixes: `IMAGE_SUFFIXES`, the formats Pillow decodes that cameras, datasets and the web
  use (JPEG with its `.jfif` alias, PNG, BMP, GIF, TIFF, WebP and the netpbm family), matched
  case-insensitively (`IMG_0001.JPG` from a camera counts).
- Hidden entries are skipped: files and folders whose name starts with "." below the root.
  They are never images a user meant to include: macOS writes `._name.jpg` AppleDouble
  files (metadata, not JPEGs) next to every copied image, and Jupyter keeps duplicate
  `.ipynb_checkpoints/` copies; counting them would report bogus unreadable files or train on
  duplicates. A file named explicitly (`predict ._x.jpg`) is not walked and is always tried.
- Order: sorted by path string, so a dataset's sample order (and with it the held-out split
  and the data order of a seed) is the same on every machine.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mobilenetv2.errors import UserError

__all__ = ["IMAGE_SUFFIXES", "ImageError", "image_files", "open_rgb"]

IMAGE_SUFFIXES: tuple[str, ...] = (
    ".jpg", ".jpeg", ".jfif", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm",
    ".pbm", ".pnm",
)


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


def image_files(root: str | os.PathLike) -> list[Path]:
    """Image files under `root` (recursively), hidden entries skipped, sorted; see the module
    docstring for which files count. An empty list when there are none."""
    root = Path(root)
    found = [
        p for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
        and p.is_file()
    ]
    return sorted(found, key=str)


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
