"""The MobileNetV2 feature extractor: stem, bottleneck blocks, head conv (paper Table 2).

Also the backbone API that detection and segmentation heads use (paper sections 6.2, 6.3):
a declarative `feature_info` (name, stride, channels) listing every tap, including the
expansion outputs such as the one of TF-slim's `layer_15` that SSDLite attaches to, and
`output_stride` 16 or 8 through dilation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mobilenetv2.config import ModelConfig
from mobilenetv2.model.arch import ArchSpec, resolve
from mobilenetv2.model.blocks import InvertedResidual
from mobilenetv2.model.layers import ConvBNAct

__all__ = ["DEFAULT_OUT_FEATURES", "FeatureInfo", "MobileNetV2Backbone", "MobileNetV2Features"]


@dataclass(frozen=True)
class FeatureInfo:
    """One place the backbone can be tapped.

    Attributes:
        name: Module path (`stem`, `blocks.13`, `blocks.13.expand`, `head`).
        stride: Cumulative stride of the tapped tensor relative to the input.
        channels: Channels of the tapped tensor.
        kind: "stem", "block", "expansion" or "head".
        tf_name: TF-slim end-point name (`layer_15/expansion_output` ...), so recipes written
            for the official object-detection and DeepLab code translate directly.
    """

    name: str
    stride: int
    channels: int
    kind: str
    tf_name: str


# The last block of each stride level: strides 2, 4, 8, 16, 32 at output_stride 32.
DEFAULT_OUT_FEATURES = ("blocks.0", "blocks.2", "blocks.5", "blocks.12", "blocks.16")


def feature_info_for(arch: ArchSpec) -> tuple[FeatureInfo, ...]:
    """Every tap of a resolved architecture, in execution order."""
    infos = [FeatureInfo("stem", arch.stem_stride, arch.stem_channels, "stem", "layer_1")]
    for b in arch.blocks:
        layer = f"layer_{b.index + 2}"
        if b.has_expand:
            # The expansion runs before the depthwise stride: it is at the input's stride.
            infos.append(
                FeatureInfo(
                    f"blocks.{b.index}.expand",
                    b.in_stride,
                    b.hidden_channels,
                    "expansion",
                    f"{layer}/expansion_output",
                )
            )
        infos.append(FeatureInfo(f"blocks.{b.index}", b.out_stride, b.out_channels, "block", layer))
    last = arch.blocks[-1]
    infos.append(
        FeatureInfo("head", last.out_stride, arch.head_channels, "head", f"layer_{last.index + 3}")
    )
    return tuple(infos)


class MobileNetV2Backbone(nn.Module):
    """Stem, 17 inverted residual blocks and the 1x1 head conv, built from a `ModelConfig`."""

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else ModelConfig()
        self.arch = resolve(self.config)
        cfg, arch = self.config, self.arch
        norm = {"bn_eps": cfg.bn_eps, "bn_momentum": cfg.bn_momentum, "padding": cfg.padding}
        self.stem = ConvBNAct(3, arch.stem_channels, 3, stride=arch.stem_stride, **norm)
        self.blocks = nn.Sequential(*(InvertedResidual(spec, **norm) for spec in arch.blocks))
        self.head = ConvBNAct(arch.blocks[-1].out_channels, arch.head_channels, 1, **norm)
        self.feature_info: tuple[FeatureInfo, ...] = feature_info_for(arch)
        self.num_features = arch.head_channels
        # The weights' metadata (`mobilenetv2.weights.WeightsMeta`: preprocessing, labels,
        # provenance), set by the loaders and by training; None for a fresh network. Declared
        # here so that every caller reads `model.meta` instead of probing for it.
        self.meta: Any = None
        _init_weights(self)

    @property
    def min_input_size(self) -> int:
        return self.config.min_input_size

    def _check_input(self, x: torch.Tensor) -> None:
        if torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling():
            return
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(
                f"expected an image batch of shape (N, 3, H, W), got {tuple(x.shape)}"
            )
        h, w = x.shape[-2:]
        if min(h, w) < self.min_input_size:
            raise ValueError(
                f"input {h}x{w} is smaller than this network allows (at least "
                f"{self.min_input_size}x{self.min_input_size} for width {self.config.width}"
                f"{', small_input' if self.config.small_input else ''})"
            )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Input images -> head activations (N, num_features, H/32, W/32)."""
        self._check_input(x)
        return self.head(self.blocks(self.stem(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)

    def feature_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.feature_info)

    def forward_taps(self, x: torch.Tensor, names: Sequence[str]) -> list[torch.Tensor]:
        """The tensors at the named taps (see `feature_info`), in the order requested."""
        known = {f.name: i for i, f in enumerate(self.feature_info)}
        missing = [n for n in names if n not in known]
        if missing:
            raise ValueError(
                f"unknown feature tap(s) {', '.join(map(repr, missing))}; "
                f"available: {', '.join(known)}"
            )
        self._check_input(x)
        wanted = set(names)
        last = max(known[n] for n in names)
        found: dict[str, torch.Tensor] = {}
        x = self.stem(x)
        found["stem"] = x
        for i, block in enumerate(self.blocks if last > known["stem"] else ()):
            name = f"blocks.{i}"
            if f"{name}.expand" in wanted:
                x, found[f"{name}.expand"] = block.forward_with_expansion(x)
            else:
                x = block(x)
            found[name] = x
            if known[name] >= last:
                break
        if "head" in wanted:
            found["head"] = self.head(x)
        return [found[n] for n in names]


class MobileNetV2Features(MobileNetV2Backbone):
    """`features_only` model: returns the tensors at `out_features`, in that order."""

    def __init__(
        self, config: ModelConfig | None = None, out_features: Sequence[str] = DEFAULT_OUT_FEATURES
    ) -> None:
        super().__init__(config)
        if isinstance(out_features, str) or not out_features:
            raise ValueError(f"out_features must be a non-empty list of tap names, got "
                             f"{out_features!r}")
        names = self.feature_names()
        bad = [n for n in out_features if n not in names]
        if bad:
            raise ValueError(
                f"unknown feature tap(s) {', '.join(map(repr, bad))}; available: "
                f"{', '.join(names)}"
            )
        self.out_features = tuple(out_features)
        by_name = {f.name: f for f in self.feature_info}
        self.out_feature_info = tuple(by_name[n] for n in self.out_features)
        if "head" not in self.out_features:
            # Unused parameters would break DDP and waste memory.
            del self.head

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # type: ignore[override]
        return self.forward_taps(x, self.out_features)


def _init_weights(module: nn.Module) -> None:
    """torchvision's initialisation for MobileNetV2 (models/mobilenetv2.py)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)
