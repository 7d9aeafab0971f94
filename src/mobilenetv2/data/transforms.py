"""Transform presets. `eval_transform` turns a weight set's `Preprocessing` into the exact
torchvision pipeline (resize, center crop, scaling) those weights were trained with."""

from __future__ import annotations

from typing import Any

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

from mobilenetv2.data.images import check_pixels
from mobilenetv2.data.preprocessing import Preprocessing

__all__ = ["BatchNormalize", "ResizeBound", "eval_transform", "interpolation_mode"]


def interpolation_mode(name: str) -> InterpolationMode:
    return {
        "bilinear": InterpolationMode.BILINEAR,
        "bicubic": InterpolationMode.BICUBIC,
        "nearest": InterpolationMode.NEAREST,
    }[name]


def eval_transform(pre: Preprocessing) -> T.Compose:
    """PIL RGB image -> normalized float tensor (3, crop, crop)."""
    interp = interpolation_mode(pre.interpolation)
    size = pre.resize if pre.resize_mode == "shorter" else (pre.resize, pre.resize)
    return T.Compose(
        [
            ResizeBound(pre),
            T.ToImage(),
            T.Resize(size, interpolation=interp, antialias=True),
            T.CenterCrop(pre.crop),
            T.ToDtype(torch.float32, scale=True),
            T.Normalize(mean=list(pre.mean), std=list(pre.std)),
        ]
    )


class BatchNormalize:
    """uint8 images -> normalized float, on a whole batch, after it reaches the device.

    The training loader yields uint8 tensors (issue 14): collating and copying a batch of 32
    224x224 images moves 4.8 MB instead of 19 MB of float32, and the per-image float
    conversion and normalization in the loader become one pass over the batch, in the memory
    format the step uses: `x * (1 / (255 std)) - mean / std`. A float batch (a dataset that
    already normalizes) passes through unchanged.
    """

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        m, s = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
        self.scale = 1.0 / (255.0 * s)
        self.shift = -m / s

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.uint8:
            return x
        if self.scale.device != x.device:
            self.scale, self.shift = self.scale.to(x.device), self.shift.to(x.device)
        # In place on the fresh float copy: keeps the batch's memory format (channels_last).
        return x.float().mul_(self.scale).add_(self.shift)


class ResizeBound:
    """Refuse (`ImageError`) an image whose resize would exceed `data.images.MAX_PIXELS`: a
    100000x3 strip whose short side is resized to 256 would become 8.5 G pixels."""

    def __init__(self, pre: Preprocessing) -> None:
        self.pre = pre

    def __call__(self, img: Any) -> Any:
        w, h = img.size
        r = self.pre.resize
        if self.pre.resize_mode == "shorter":
            scale = r / max(min(w, h), 1)
            w, h = round(w * scale), round(h * scale)
        else:
            w, h = r, r
        check_pixels(w, h, what=f"resized for these weights (resize {r}, "
                     f"{self.pre.resize_mode}), the image")
        return img
