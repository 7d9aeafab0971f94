"""Converter from timm's `mobilenetv2_*` (timm/models/efficientnet.py, `_gen_mobilenet_v2`).

timm builds MobileNetV2 as an EfficientNet: `conv_stem`/`bn1`, `blocks[stage][repeat]`
(stage 0 a `DepthwiseSeparableConv`: conv_dw, bn1, conv_pw, bn2; the others
`InvertedResidual`: conv_pw, bn1, conv_dw, bn2, conv_pwl, bn3), `conv_head`/`bn2` and
`classifier`. Its channel arithmetic equals ours for `mobilenetv2_035/050/075/100/140`:
`round_channels` is `make_divisible(c * width, 8, round_limit=0.9)` (TF's "never more than
10% down"), the head is `max(1280, round(1280 * width))` and the stem is rounded like every
other layer (0.35 x 32 -> 16), BN eps 1e-5, symmetric padding. (The parity tests check this
for every width.) The hidden width of a block is `make_divisible(in * t)`, equal to ours
because every in-channel count is already a multiple of 8.

Not supported: the deeper `mobilenetv2_110d` / `_120d`. They scale the block *count* (timm's
`depth_multiplier`, 17 -> 22 / 26 blocks, distributed with ceil rounding) and keep the stem at
32 and the head at 1280 (`fix_stem_head`), which `ModelConfig` cannot express; such a file is
refused with the count of blocks it has.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch

from mobilenetv2.data.preprocessing import Preprocessing
from mobilenetv2.errors import UserError
from mobilenetv2.model.arch import STAGES, ArchSpec, BlockSpec
from mobilenetv2.weights.format import Converted
from mobilenetv2.weights.layout import Layout, convert_layout

__all__ = ["LAYOUT", "TIMM_PREPROCESSING", "convert_timm", "looks_like_timm"]


def _block_prefix(spec: BlockSpec, arch: ArchSpec) -> str:
    first = next(b.index for b in arch.blocks if b.stage == spec.stage)
    return f"blocks.{spec.stage}.{spec.index - first}."


LAYOUT = Layout(
    name="timm",
    stem={"conv": "conv_stem", "bn": "bn1"},
    block_t1={
        "depthwise.conv": "conv_dw",
        "depthwise.bn": "bn1",
        "project.conv": "conv_pw",
        "project.bn": "bn2",
    },
    block={
        "expand.conv": "conv_pw",
        "expand.bn": "bn1",
        "depthwise.conv": "conv_dw",
        "depthwise.bn": "bn2",
        "project.conv": "conv_pwl",
        "project.bn": "bn3",
    },
    head={"conv": "conv_head", "bn": "bn2"},
    classifier="classifier",
    block_prefix=_block_prefix,
)

# timm's pretrained_cfg for mobilenetv2_* (efficientnet.py `_cfg`): bicubic, crop_pct 0.875,
# ImageNet mean/std.
TIMM_PREPROCESSING = Preprocessing(resize=256, crop=224, interpolation="bicubic")


def looks_like_timm(state: Mapping[str, Any]) -> bool:
    return "conv_stem.weight" in state and "conv_head.weight" in state


def convert_timm(
    source: Mapping[str, torch.Tensor] | str | os.PathLike,
    *,
    preprocessing: Preprocessing | None = None,
    labels: list[str] | None = None,
    name: str | None = None,
) -> Converted:
    """A timm `mobilenetv2_*` state dict or file (`.pth`, `.bin`, `.safetensors`) -> ours.

    Args:
        source: A state dict, or a path read safely (never unpickled).
        preprocessing: Defaults to timm's pretrained config for these models.
        labels: Defaults to the ImageNet names for a 1000-class model, else none.
        name: What error messages call the source (default: its path).
    """
    return convert_layout(source, LAYOUT, default_preprocessing=TIMM_PREPROCESSING,
                          preprocessing=preprocessing, labels=labels, name=name,
                          check=_check_depth)


def _check_depth(state: Mapping[str, Any], source: str) -> None:
    repeats: dict[int, set[int]] = {}
    for key in state:
        parts = key.split(".")
        if parts[0] == "blocks" and len(parts) > 2 and parts[1].isdigit() and parts[2].isdigit():
            repeats.setdefault(int(parts[1]), set()).add(int(parts[2]))
    found = tuple(len(repeats[s]) for s in sorted(repeats))
    paper = tuple(st.n for st in STAGES)
    if found and found != paper:
        raise UserError(
            f"{source}: blocks per stage {found} (total {sum(found)}) differ from the paper's "
            f"{paper} (17): a depth-scaled timm variant such as mobilenetv2_110d/120d, which "
            f"this library does not express"
        )
