"""Converter from torchvision's `mobilenet_v2` (torchvision/models/mobilenetv2.py).

torchvision keeps the network in `features` (0 = stem ConvBNReLU, 1..17 = InvertedResidual
blocks, 18 = the 1x1 head ConvBNReLU) and `classifier` (Dropout, Linear). Its blocks are
`conv` Sequentials: for t = 1 `[ConvBNReLU dw, Conv pw-linear, BN]`, otherwise
`[ConvBNReLU expand, ConvBNReLU dw, Conv pw-linear, BN]`. Same arithmetic as ours (symmetric
padding, BN eps 1e-5, `_make_divisible`, last layer 1280 * max(1, width)), so the mapping is
a pure rename; the width and class count are inferred from the tensor shapes.

Official files (`mobilenet_v2-b0353104.pth` = IMAGENET1K_V1, `mobilenet_v2-7ebf99e0.pth` =
IMAGENET1K_V2) are plain state dicts with exactly this layout.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch

from mobilenetv2.data.preprocessing import Preprocessing
from mobilenetv2.weights.format import Converted
from mobilenetv2.weights.layout import Layout, convert_layout

__all__ = ["LAYOUT", "convert_torchvision", "looks_like_torchvision"]

LAYOUT = Layout(
    name="torchvision",
    stem={"conv": "features.0.0", "bn": "features.0.1"},
    block_t1={
        "depthwise.conv": "conv.0.0",
        "depthwise.bn": "conv.0.1",
        "project.conv": "conv.1",
        "project.bn": "conv.2",
    },
    block={
        "expand.conv": "conv.0.0",
        "expand.bn": "conv.0.1",
        "depthwise.conv": "conv.1.0",
        "depthwise.bn": "conv.1.1",
        "project.conv": "conv.2",
        "project.bn": "conv.3",
    },
    head={"conv": "features.{last}.0", "bn": "features.{last}.1"},
    classifier="classifier.1",
    block_prefix=lambda spec, arch: f"features.{spec.index + 1}.",
)


def looks_like_torchvision(state: Mapping[str, Any]) -> bool:
    return "features.0.0.weight" in state and "classifier.1.weight" in state


def convert_torchvision(
    source: Mapping[str, torch.Tensor] | str | os.PathLike,
    *,
    preprocessing: Preprocessing | None = None,
    labels: list[str] | None = None,
    name: str | None = None,
) -> Converted:
    """A torchvision `mobilenet_v2` state dict (any width) or `.pth` file -> our weights.

    Args:
        source: A state dict, or a path read safely (`torch.load(weights_only=True)`).
        preprocessing: Defaults to torchvision's IMAGENET1K_V1 eval transform (resize 256,
            crop 224, bilinear, ImageNet mean/std); pass IMAGENET1K_V2's (resize 232) for it.
        labels: Defaults to the ImageNet names for a 1000-class model, else none.
        name: What error messages call the source (default: its path).
    """
    return convert_layout(source, LAYOUT, default_preprocessing=Preprocessing(),
                          preprocessing=preprocessing, labels=labels, name=name)
