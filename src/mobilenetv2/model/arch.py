"""The architecture as data: the paper's Table 2 and the one function that resolves it.

Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018,
arXiv 1801.04381. Table 2 lists, after a 32-filter 3x3 stride-2 stem, seven stages of
bottleneck blocks (t = expansion factor, c = output channels, n = repeats, s = stride of the
first repeat), then a 1x1 conv to 1280 channels, global average pooling and a classifier.

Everything width- or stride-dependent happens in `resolve()`, in exactly one place, so the
modules, the profiler and the converters all consume the same `BlockSpec` tuple. Pure Python:
no torch import.
"""

from __future__ import annotations

from dataclasses import dataclass

from mobilenetv2.config import ModelConfig

__all__ = [
    "HEAD_CHANNELS",
    "STAGES",
    "STEM_CHANNELS",
    "ArchSpec",
    "BlockSpec",
    "Stage",
    "make_divisible",
    "resolve",
]


@dataclass(frozen=True)
class Stage:
    """One row of Table 2: `n` bottleneck blocks with expansion `t`, `c` output channels,
    the first of them with stride `s` (the others stride 1)."""

    t: int
    c: int
    n: int
    s: int


# Table 2 of the paper (input 224x224x3):
#   input       operator     t    c    n  s
#   224^2x3     conv2d       -   32    1  2      <- STEM_CHANNELS
#   112^2x32    bottleneck   1   16    1  1
#   112^2x16    bottleneck   6   24    2  2
#   56^2x24     bottleneck   6   32    3  2
#   28^2x32     bottleneck   6   64    4  2
#   14^2x64     bottleneck   6   96    3  1
#   14^2x96     bottleneck   6  160    3  2
#   7^2x160     bottleneck   6  320    1  1
#   7^2x320     conv2d 1x1   -  1280   1  1      <- HEAD_CHANNELS
#   7^2x1280    avgpool 7x7  -   -     1  -      (global pooling here: any resolution)
#   1x1x1280    conv2d 1x1   -   k     -  -      (the classifier)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
STAGES: tuple[Stage, ...] = (
    Stage(t=1, c=16, n=1, s=1),
    Stage(t=6, c=24, n=2, s=2),
    Stage(t=6, c=32, n=3, s=2),
    Stage(t=6, c=64, n=4, s=2),
    Stage(t=6, c=96, n=3, s=1),
    Stage(t=6, c=160, n=3, s=2),
    Stage(t=6, c=320, n=1, s=1),
)
STEM_STRIDE = 2
# TF-slim rounds the expansion (t x input channels) to multiples of 8 at every width.
EXPANSION_DIVISOR = 8


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """TF-slim's channel rounding: nearest multiple of `divisor`, never more than 10% down.

    `max(min_value, int(v + divisor / 2) // divisor * divisor)`, plus one `divisor` when that
    lost more than 10% of `v` (so 0.35 x 32 = 11.2 becomes 16, not 8). This is
    `_make_divisible` of TF-slim's mobilenet.py, Keras Applications and torchvision.
    """
    if min_value is None:
        min_value = divisor
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return new_value


@dataclass(frozen=True)
class BlockSpec:
    """One inverted residual block (paper section 3.3, Table 1), fully resolved.

    `in_stride` / `out_stride` are the network's cumulative strides at the block's input and
    output (after dilation has replaced strides for `output_stride` < 32).
    """

    index: int
    stage: int
    in_channels: int
    hidden_channels: int
    out_channels: int
    expand_ratio: int
    stride: int
    dilation: int
    in_stride: int
    out_stride: int

    @property
    def has_expand(self) -> bool:
        """t = 1 blocks (the first one) have no 1x1 expansion conv."""
        return self.expand_ratio != 1

    @property
    def residual(self) -> bool:
        """Shortcut between thin bottlenecks: only when shape is preserved (section 3.3)."""
        return self.stride == 1 and self.in_channels == self.out_channels


@dataclass(frozen=True)
class ArchSpec:
    """The resolved network: stem, bottleneck blocks, head conv, classifier."""

    stem_channels: int
    stem_stride: int
    blocks: tuple[BlockSpec, ...]
    head_channels: int
    num_classes: int

    @property
    def total_stride(self) -> int:
        return self.blocks[-1].out_stride


def resolve(cfg: ModelConfig) -> ArchSpec:
    """Apply width, rounding, the last-layer rule, small-input and output-stride settings.

    The width multiplier scales the stem and every block (TF-slim applies it to all layers).
    The last conv keeps 1280 channels for widths below 1 (`finegrain_classification_mode`,
    as in every official checkpoint); above 1 it grows (1664 at 1.3, 1792 at 1.4).
    """
    div = cfg.round_nearest
    stem_channels = make_divisible(STEM_CHANNELS * cfg.width, div)
    head_scale = max(1.0, cfg.width) if cfg.finegrain_classification_mode else cfg.width
    head_channels = make_divisible(HEAD_CHANNELS * head_scale, div)

    stage_strides = [st.s for st in STAGES]
    stem_stride = STEM_STRIDE
    if cfg.small_input:
        # CIFAR-style preset: keep resolution through the stem and the first stride-2
        # stage (Table 2 row 3), leaving three stride-2 stages: 32x32 -> 4x4.
        stem_stride = 1
        first_s2 = stage_strides.index(2)
        stage_strides[first_s2] = 1

    blocks: list[BlockSpec] = []
    in_channels = stem_channels
    current_stride = stem_stride
    rate = 1
    index = 0
    for stage_index, (stage, stage_stride) in enumerate(zip(STAGES, stage_strides)):
        out_channels = make_divisible(stage.c * cfg.width, div)
        for repeat in range(stage.n):
            stride = stage_stride if repeat == 0 else 1
            if current_stride == cfg.output_stride and stride > 1:
                # DeepLab (paper section 6.3; TF-slim mobilenet.py): once the target output
                # stride is reached, further strides become atrous rates. The block that
                # loses its stride keeps the current rate; the following ones use rate*s.
                layer_stride, dilation = 1, rate
                rate *= stride
            else:
                layer_stride, dilation = stride, rate
                current_stride *= stride
            # The expansion is rounded to multiples of 8 whatever `round_nearest` says:
            # TF-slim's `expand_input_by_factor(n, divisible_by=8)` (mobilenet_v2.py) keeps
            # its own divisor, and DeepLab's depth multiplier (divisible_by=1) only reaches
            # the layers' `num_outputs`. For round_nearest=8 this changes nothing.
            hidden = (
                in_channels
                if stage.t == 1
                else make_divisible(in_channels * stage.t, EXPANSION_DIVISOR)
            )
            blocks.append(
                BlockSpec(
                    index=index,
                    stage=stage_index,
                    in_channels=in_channels,
                    hidden_channels=hidden,
                    out_channels=out_channels,
                    expand_ratio=stage.t,
                    stride=layer_stride,
                    dilation=dilation,
                    in_stride=current_stride // layer_stride,
                    out_stride=current_stride,
                )
            )
            in_channels = out_channels
            index += 1
    return ArchSpec(
        stem_channels=stem_channels,
        stem_stride=stem_stride,
        blocks=tuple(blocks),
        head_channels=head_channels,
        num_classes=cfg.num_classes,
    )
