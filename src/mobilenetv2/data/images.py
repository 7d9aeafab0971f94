"""Images on disk: the one safe opener, the one suffix list and the one folder walker.

`open_rgb` opens any image a user has as RGB: EXIF orientation, grayscale, RGBA, palette,
CMYK and 16-bit images; a clear `ImageError` naming the file for anything that is not an image,
cannot be read, or would take unbounded memory. Every image entry point (train, eval, predict,
quantize calibration) goes through it (`open_image` adds the transform).

Memory is bounded per image: a few-hundred-byte PNG can declare 40000x40000 pixels (6.4 GB
decoded), and a 100000x3 strip resized to a 256 short side becomes 8.5 G pixels. `MAX_PIXELS`
(2**27, about 134 M pixels: an 11.5k x 11.5k image, above the largest phone and DSLR photos
of 100-110 MP) bounds both the decoded image and the image after the preprocessing resize.

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

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mobilenetv2.errors import UserError

__all__ = [
    "input_files",
    "IMAGE_SUFFIXES",
    "MAX_PIXELS",
    "ImageError",
    "check_pixels",
    "image_files",
    "open_image",
    "open_rgb",
    "readable_header",
]

MAX_PIXELS = 1 << 27

IMAGE_SUFFIXES: tuple[str, ...] = (
    ".jpg", ".jpeg", ".jfif", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm",
    ".pbm", ".pnm",
)


class ImageError(UserError):
    """A file that cannot be read as an image (corrupt, truncated, empty, not an image)."""


def open_rgb(path: str | os.PathLike, min_side: int | None = None) -> Image.Image:
    """Decode `path` into an 8-bit RGB PIL image, upright per its EXIF orientation.

    Transparent images are composited on white (what a viewer shows); 16-bit and float
    images are scaled to 8 bits from their full range.

    Args:
        min_side: The smallest side the caller needs (its resize target). A JPEG larger than
            that is decoded at a reduced scale (1/2, 1/4 or 1/8: libjpeg's DCT scaling via
            PIL's draft mode) that still keeps both sides >= `min_side`, which decodes a 12 MP
            photo for a 256-pixel resize several times faster (issue 14). The later resize
            then starts from fewer pixels, so the result matches the full decode within
            resize tolerance (tested). None decodes every pixel.
    """
    p = Path(path)
    with _errors(p):
        with _open(p) as im:
            if min_side and im.format == "JPEG" and min(im.size) >= 2 * min_side:
                # EXIF rotation swaps the sides, which min(...) does not care about.
                im.draft(None, (min_side, min_side))  # keep the mode; scale only
            im.load()  # decode now: truncated files fail here, not later
            im = ImageOps.exif_transpose(im)
            return _to_rgb(im)


def open_image(path: str | os.PathLike, transform: Callable[[Image.Image], Any],
               min_side: int | None = None) -> Any:
    """`transform(open_rgb(path, min_side))`, with an `ImageError` from the transform (the
    resize bound of `check_pixels`) named after the file too."""
    img = open_rgb(path, min_side)
    try:
        return transform(img)
    except ImageError as e:
        raise ImageError(f"{path}: {e}") from e


def readable_header(path: str | os.PathLike) -> None:
    """Raise `ImageError` unless `path` opens as an image within `MAX_PIXELS`: reads the
    header only (format and size), so a dataset can be checked before training without
    decoding it; a file truncated after its header is only found when it is decoded."""
    p = Path(path)
    with _errors(p), _open(p):
        pass


def check_pixels(width: int, height: int, what: str = "image") -> None:
    """Raise `ImageError` if a `width` x `height` image exceeds `MAX_PIXELS`."""
    if width * height > MAX_PIXELS:
        raise ImageError(f"{what} of {width}x{height} = {width * height:,} pixels exceeds the "
                         f"limit of {MAX_PIXELS:,} pixels per image")


def _open(p: Path) -> Image.Image:
    if p.stat().st_size == 0:
        raise ImageError(f"{p}: empty file (0 bytes)")
    im = Image.open(p)
    try:
        check_pixels(*im.size, what=f"{p}: an image")
    except ImageError:
        im.close()
        raise
    return im


@contextlib.contextmanager
def _errors(p: Path) -> Iterator[None]:
    """Every way reading an image fails, as one `ImageError` line naming the file."""
    try:
        yield
    except ImageError:
        raise
    except FileNotFoundError as e:
        raise ImageError(f"{p}: no such file") from e
    except IsADirectoryError as e:
        raise ImageError(f"{p}: is a directory") from e
    except PermissionError as e:
        raise ImageError(f"{p}: permission denied") from e
    except Image.DecompressionBombError as e:
        # PIL's own guard (2 x Image.MAX_IMAGE_PIXELS) fires inside Image.open, before ours.
        raise ImageError(f"{p}: image too large to decode safely ({e})") from e
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


def input_files(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """The files a verb runs on: each path as given, each folder as its images (a folder
    with none is a `UserError`)."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = image_files(p)
            if not found:
                raise UserError(f"{p}: no image files in this folder")
            files += found
        else:
            files.append(p)
    return files


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
