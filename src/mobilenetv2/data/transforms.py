"""Transform presets. `eval_transform` turns a weight set's `Preprocessing` into the exact
torchvision pipeline (resize, center crop, scaling) those weights were trained with."""

from __future__ import annotations

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

from mobilenetv2.data.preprocessing import Preprocessing

__all__ = ["eval_transform", "interpolation_mode"]


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
            T.ToImage(),
            T.Resize(size, interpolation=interp, antialias=True),
            T.CenterCrop(pre.crop),
            T.ToDtype(torch.float32, scale=True),
            T.Normalize(mean=list(pre.mean), std=list(pre.std)),
        ]
    )
