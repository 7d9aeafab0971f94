"""The one place that turns a `ModelConfig` into a network, by its task.

Loading a weights file, converting, `create_model` and fine-tuning all build through
`build_model`, so a segmentation or detection checkpoint comes back as the network it was
saved from. A new task adds one row to `BUILDERS` (see docs/ARCHITECTURE.md).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from mobilenetv2.config import ModelConfig
from mobilenetv2.model.classifier import MobileNetV2

__all__ = ["BUILDERS", "build_model"]


def _classifier(cfg: ModelConfig) -> nn.Module:
    return MobileNetV2(cfg)


def _segmenter(cfg: ModelConfig) -> nn.Module:
    from mobilenetv2.model.heads.deeplabv3 import DeepLabV3

    return DeepLabV3(cfg)


def _detector(cfg: ModelConfig) -> nn.Module:
    from mobilenetv2.model.heads.ssdlite import SSDLite

    return SSDLite(cfg)


# task -> builder. Each builder returns a module with `.config` (the config it was built
# from) and a declared `.meta` attribute (None until weights are loaded).
BUILDERS: dict[str, Callable[[ModelConfig], nn.Module]] = {
    "classify": _classifier,
    "segment": _segmenter,
    "detect": _detector,
}


def build_model(cfg: ModelConfig) -> nn.Module:
    """The network `cfg` describes: a classifier, a segmenter or a detector."""
    try:
        builder = BUILDERS[cfg.task]
    except KeyError:
        raise ValueError(f"no network is defined for task {cfg.task!r}; known: "
                         f"{', '.join(BUILDERS)}") from None
    return builder(cfg)
