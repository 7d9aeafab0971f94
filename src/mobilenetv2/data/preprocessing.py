"""How images are prepared for a weight set: resize, crop, interpolation, normalisation.

Lives below `weights/` because datasets, transforms and every weights format need it, and a
weights file only records it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "MAX_SIDE", "Preprocessing"]

# The largest resize or crop side a weights file may ask for: 8x MobileNetV2's 224 and well
# above every published input size (DeepLab's 513, EfficientNet-B7's 600).
MAX_SIDE = 4096

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """How images must be prepared for a weight set.

    Attributes:
        resize: Size the image is resized to before cropping.
        crop: Size of the square center crop fed to the network.
        resize_mode: "shorter" resizes the shorter side to `resize` (torchvision, Keras
            eval); "exact" resizes the whole image to `resize` x `resize` (TFLite examples).
        interpolation: "bilinear", "bicubic" or "nearest".
        mean: Per-channel mean subtracted after scaling pixels to [0, 1].
        std: Per-channel divisor. mean = std = 0.5 is TF's [-1, 1] scaling; 128/255 is
            TFLite's (pixel - 128) / 128.
    """

    resize: int = 256
    crop: int = 224
    resize_mode: str = "shorter"
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        # Checked wherever preprocessing comes from (our files, converted files, ONNX
        # metadata): a file asking for a 60000-pixel resize would allocate ~11 GB per image.
        for name in ("resize", "crop"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_SIDE:
                raise ValueError(f"preprocessing {name} must be an integer from 1 to "
                                 f"{MAX_SIDE}, got {v!r}")
        for name in ("mean", "std"):
            v = getattr(self, name)
            if (len(v) != 3 or not all(isinstance(x, (int, float)) and math.isfinite(x)
                                       for x in v)):
                raise ValueError(f"preprocessing {name} must be 3 finite numbers, got {v!r}")
        if min(self.std) <= 0:
            raise ValueError(f"preprocessing std must be positive, got {self.std!r}")
        if self.resize_mode not in ("shorter", "exact"):
            raise ValueError(f"resize_mode must be 'shorter' or 'exact', got {self.resize_mode!r}")
        if self.interpolation not in ("bilinear", "bicubic", "nearest"):
            raise ValueError(f"unknown interpolation {self.interpolation!r}")
        if self.crop > self.resize:
            raise ValueError(f"crop {self.crop} is larger than resize {self.resize}")

    @classmethod
    def tf_inception(cls, size: int = 224) -> Preprocessing:
        """[-1, 1] scaling, as Keras and TF-slim checkpoints expect."""
        return cls(resize=round(size / 0.875), crop=size, mean=(0.5,) * 3, std=(0.5,) * 3)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Preprocessing:
        data = dict(data)
        for key in ("mean", "std"):
            if key in data:
                data[key] = tuple(data[key])
        known = {f.name for f in fields(cls)}
        bad = sorted(set(data) - known)
        if bad:
            raise ValueError(f"unknown preprocessing field(s): {', '.join(bad)}")
        return cls(**data)
