"""Transform presets. `eval_transform` turns a weight set's `Preprocessing` into the exact
torchvision pipeline (resize, center crop, scaling) those weights were trained with."""

from __future__ import annotations

from typing import Any

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

from mobilenetv2.data.images import check_pixels
from mobilenetv2.data.preprocessing import Preprocessing

__all__ = ["ResizeBound", "eval_transform", "interpolation_mode"]


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
