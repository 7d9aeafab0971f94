"""Typed, frozen configuration that travels from the CLI into every checkpoint.

`ModelConfig` holds every architectural choice of MobileNetV2 (Sandler et al., 2018,
arXiv 1801.04381): the two knobs of section 3.4 (width multiplier, input resolution) and the
options users of the official TF-slim / Keras releases need to reproduce them exactly.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, fields
from typing import Any, Literal, get_args

__all__ = ["ModelConfig", "PADDINGS", "config_from_dict", "config_to_dict"]

Padding = Literal["symmetric", "tf_same"]
PADDINGS: tuple[str, ...] = get_args(Padding)
OUTPUT_STRIDES = (8, 16, 32)


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to build a MobileNetV2 classifier or backbone.

    Attributes:
        width: Width multiplier (the paper's alpha, section 3.4); any float > 0.
        resolution: Nominal input resolution; recorded, and used by the profiler. Any input
            at least `min_input_size` pixels works at inference (global pooling).
        num_classes: Classifier outputs; 1001 reproduces TF releases (index 0 = background).
        dropout: Dropout *rate* before the classifier (0.2 in the paper's recipe).
        bn_eps: BatchNorm epsilon; 1e-5 is PyTorch's, 1e-3 matches Keras and TF-slim.
        bn_momentum: BatchNorm momentum in PyTorch semantics (weight of the new batch);
            TF's decay 0.999 corresponds to 0.001 here.
        padding: "symmetric" (PyTorch convention) or "tf_same" (TensorFlow's asymmetric
            SAME padding for stride-2 layers, computed from the actual input size).
        output_stride: 32, 16 or 8. Below 32 the later strides become dilations, as
            DeepLabv3 does (paper section 6.3).
        small_input: Preset for 32x32 inputs (CIFAR-style): stem and the first stride-2
            stage run at stride 1, so the network downsamples 8x instead of 32x.
        finegrain_classification_mode: TF-slim's name. True keeps the last 1x1 conv at
            1280 channels for widths below 1 (every official checkpoint, torchvision and
            Keras do); False also shrinks it with the width (TF-slim's bare behaviour).
        round_nearest: Channel counts are rounded to multiples of this (8 everywhere).
    """

    width: float = 1.0
    resolution: int = 224
    num_classes: int = 1000
    dropout: float = 0.2
    bn_eps: float = 1e-5
    bn_momentum: float = 0.1
    padding: Padding = "symmetric"
    output_stride: int = 32
    small_input: bool = False
    finegrain_classification_mode: bool = True
    round_nearest: int = 8

    def __post_init__(self) -> None:
        _check(
            isinstance(self.width, (int, float))
            and math.isfinite(self.width)
            and self.width > 0,
            f"width must be a finite number > 0, got {self.width!r}",
        )
        _check(
            _is_int(self.num_classes) and self.num_classes >= 1,
            f"num_classes must be an integer >= 1, got {self.num_classes!r}",
        )
        _check(
            isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0,
            f"dropout is a rate in [0, 1), got {self.dropout!r}"
            + (" (did you pass a keep probability?)" if self.dropout == 1 else ""),
        )
        _check(
            isinstance(self.bn_eps, (int, float)) and self.bn_eps > 0,
            f"bn_eps must be > 0, got {self.bn_eps!r}",
        )
        _check(
            isinstance(self.bn_momentum, (int, float)) and 0.0 < self.bn_momentum <= 0.5,
            f"bn_momentum is PyTorch's (weight of the new batch, e.g. 0.1 or 0.001), got "
            f"{self.bn_momentum!r}"
            + (
                "; a TF decay like 0.997 is momentum 1 - decay"
                if isinstance(self.bn_momentum, (int, float)) and self.bn_momentum > 0.5
                else ""
            ),
        )
        _check(
            self.padding in PADDINGS,
            f"padding must be one of {', '.join(PADDINGS)}, got {self.padding!r}",
        )
        _check(
            self.output_stride in OUTPUT_STRIDES,
            f"output_stride must be 8, 16 or 32, got {self.output_stride!r}",
        )
        _check(
            _is_int(self.round_nearest) and self.round_nearest >= 1,
            f"round_nearest must be an integer >= 1, got {self.round_nearest!r}",
        )
        _check(
            not (self.small_input and self.output_stride != 32),
            f"small_input already reduces the network stride to 8; output_stride="
            f"{self.output_stride} contradicts it (leave output_stride at 32)",
        )
        _check(
            _is_int(self.resolution) and self.resolution >= self.min_input_size,
            f"resolution {self.resolution!r} is smaller than this network allows "
            f"(at least {self.min_input_size} pixels"
            + (", or use small_input=True for 32x32 images" if not self.small_input else "")
            + ")",
        )

    @property
    def min_input_size(self) -> int:
        """Smallest input side: the network's total downsampling (32, or 8 for small_input)."""
        return 8 if self.small_input else 32

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with some fields changed; unknown names raise `ValueError`."""
        unknown = sorted(set(changes) - {f.name for f in fields(self)})
        if unknown:
            raise ValueError(
                f"unknown model option(s): {', '.join(unknown)}; "
                f"known: {', '.join(f.name for f in fields(self))}"
            )
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Build from a dict (e.g. checkpoint metadata); unknown keys raise `ValueError`."""
        return cls().replace(**data)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        return cls.from_dict(json.loads(text))


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Any config dataclass to a JSON-ready dict."""
    return dataclasses.asdict(cfg)


def config_from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Build config dataclass `cls` from `data`, naming unknown keys in a `ValueError`."""
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} option(s): {', '.join(unknown)}")
    return cls(**data)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)
