"""The one width search: which width multiplier (paper section 3.4) and last-layer rule
reproduce the channel counts a foreign file holds.

Several widths round (`make_divisible`) to identical channels, so the search order decides
which one a converted file reports: the published widths first (the registry's variants, the
widths of the paper's Table 6 and every official release), then every multiple of 0.005 from
0.01 to 4, nearest first to the width the last stage's channels suggest (320 x width), so an
equivalent width is also the most natural one. Each width is tried with the last-layer rule
on and off (`finegrain_classification_mode`). The converters only say what "reproduces"
means (tensor shapes for torchvision / timm, layer facts for Keras and TFLite) and how to
report a failure.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from mobilenetv2.config import ModelConfig
from mobilenetv2.model.arch import STAGES, ArchSpec, resolve
from mobilenetv2.registry import VARIANTS

__all__ = ["STANDARD_WIDTHS", "fit_width", "nearest_width"]

# The published widths: 0.35, 0.5, 0.75, 1.0, 1.3, 1.4.
STANDARD_WIDTHS: tuple[float, ...] = tuple(
    cfg.width for cfg in VARIANTS.values() if cfg.task == "classify"
)
_GRID = tuple(round(0.005 * i, 3) for i in range(2, 801))  # 0.01 ... 4.0


def nearest_width(last_channels: int | None) -> float:
    """The width the last stage's channels suggest (its 320 channels at width 1), to 0.01."""
    return (round(last_channels / STAGES[-1].c, 2) or 1.0) if last_channels else 1.0


def _candidates(last_channels: int | None, prefer: Sequence[float] = ()) -> Iterator[float]:
    """`prefer`, the published widths, then the grid nearest first to the suggested width."""
    guess = last_channels / STAGES[-1].c if last_channels else 1.0
    yield from prefer
    yield from STANDARD_WIDTHS
    yield from sorted(_GRID, key=lambda w: (abs(w - guess), w))


def fit_width(
    base: ModelConfig,
    fits: Callable[[ArchSpec], bool],
    last_channels: int | None,
    prefer: Sequence[float] = (),
) -> ModelConfig | None:
    """The first config (`base` with a candidate width and last-layer rule) whose resolved
    architecture `fits`; None when no width does.

    Args:
        base: Every other field (resolution, classes, padding, BN, output stride).
        fits: Whether a resolved architecture reproduces the file.
        last_channels: Output channels of the file's last block (orders the grid search).
        prefer: Widths to try before the published ones (e.g. one a file name states).
    """
    for width in _candidates(last_channels, prefer):
        for finegrain in (True, False):
            cfg = base.replace(width=width, finegrain_classification_mode=finegrain)
            if fits(resolve(cfg)):
                return cfg
    return None
