"""Named variants: a small dict of configs (the widths of the paper's Figure 5 / Table 6).

`create_model("mobilenetv2_050", num_classes=10)` builds a variant with config overrides;
`features_only=True` returns the backbone that yields the tensors at `out_features`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from mobilenetv2.config import ModelConfig
from mobilenetv2.model import MobileNetV2Features, build_model
from mobilenetv2.model.backbone import DEFAULT_OUT_FEATURES

__all__ = ["DETECTION_VARIANTS", "VARIANTS", "create_model", "resolve_variant", "variant_config"]

VARIANTS: dict[str, ModelConfig] = {
    "mobilenetv2_035": ModelConfig(width=0.35),
    "mobilenetv2_050": ModelConfig(width=0.5),
    "mobilenetv2_075": ModelConfig(width=0.75),
    "mobilenetv2_100": ModelConfig(width=1.0),
    "mobilenetv2_130": ModelConfig(width=1.3),
    "mobilenetv2_140": ModelConfig(width=1.4),
    # Mobile DeepLabv3 (paper section 6.3): output stride 16, PASCAL VOC's 21 classes, the
    # 513x513 crop DeepLab trains and exports at, dropout 0.1 (TF's keep_prob 0.9). Width
    # 0.5 rounds channels as DeepLab's depth multiplier does (multiples of 1).
    "deeplabv3_mobilenetv2_100": ModelConfig(
        task="segment", output_stride=16, num_classes=21, resolution=513, dropout=0.1
    ),
    "deeplabv3_mobilenetv2_050": ModelConfig(
        task="segment", width=0.5, round_nearest=1, output_stride=16, num_classes=21,
        resolution=513, dropout=0.1,
    ),
}

# SSDLite detectors (paper section 6.2, Table 6): 320x320 as the paper, 91 classes as TF's
# COCO label map (index 0 = background, 90 category ids), BatchNorm as torchvision's SSDLite
# (eps 1e-3, momentum 0.03; TF's decay 0.97 / 0.9997 configs are close to it).
DETECTION_VARIANTS: dict[str, ModelConfig] = {
    f"ssdlite_mobilenetv2_{suffix}": ModelConfig(
        width=width, task="detect", resolution=320, num_classes=91, bn_eps=1e-3,
        bn_momentum=0.03)
    for suffix, width in (("050", 0.5), ("100", 1.0))
}


def variant_config(name: str, **overrides: Any) -> ModelConfig:
    """The config of a named variant with some fields overridden."""
    known = {**VARIANTS, **DETECTION_VARIANTS}
    if name not in known:
        raise ValueError(f"unknown variant {name!r}; choose from {', '.join(known)}")
    return known[name].replace(**overrides)


def resolve_variant(variant: str | None, width: float | None, **overrides: Any) -> ModelConfig:
    """Config from either a variant name or a width (CLI helper); both is a contradiction."""
    if variant is not None and width is not None:
        raise ValueError(
            f"give either a variant ({variant!r}) or a width ({width!r}), not both"
        )
    if variant is not None:
        return variant_config(variant, **overrides)
    return ModelConfig(width=1.0 if width is None else width).replace(**overrides)


def create_model(
    name: str = "mobilenetv2_100",
    *,
    features_only: bool = False,
    out_features: Sequence[str] = DEFAULT_OUT_FEATURES,
    **overrides: Any,
) -> nn.Module:
    """Build a named variant; `overrides` are `ModelConfig` fields (width, num_classes ...)."""
    cfg = variant_config(name, **overrides)
    if features_only:
        return MobileNetV2Features(cfg, out_features=out_features)
    return build_model(cfg)
