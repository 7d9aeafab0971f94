"""Table 2 resolution: channel plans, rounding, residual placement, strides."""

from __future__ import annotations

import pytest

from mobilenetv2 import ModelConfig, make_divisible, resolve
from mobilenetv2.model.arch import STAGES


def stage_channels(width: float, **kw) -> list[int]:
    arch = resolve(ModelConfig(width=width, **kw))
    outs = []
    for stage in range(len(STAGES)):
        outs.append(next(b.out_channels for b in arch.blocks if b.stage == stage))
    return [arch.stem_channels, *outs, arch.head_channels]


@pytest.mark.parametrize(
    "width, plan",
    [
        (1.0, [32, 16, 24, 32, 64, 96, 160, 320, 1280]),
        (0.35, [16, 8, 8, 16, 24, 32, 56, 112, 1280]),
        (1.4, [48, 24, 32, 48, 88, 136, 224, 448, 1792]),
        (1.3, [40, 24, 32, 40, 80, 128, 208, 416, 1664]),
        (0.5, [16, 8, 16, 16, 32, 48, 80, 160, 1280]),
        (0.75, [24, 16, 24, 24, 48, 72, 120, 240, 1280]),
    ],
)
def test_channel_plans(width: float, plan: list[int]) -> None:
    assert stage_channels(width) == plan


def test_tf_slim_bare_head_shrinks() -> None:
    assert stage_channels(0.5, finegrain_classification_mode=False)[-1] == 640
    assert stage_channels(1.4, finegrain_classification_mode=False)[-1] == 1792


@pytest.mark.parametrize(
    "value, expected",
    [(11.2, 16), (5.6, 8), (8.4, 8), (22.4, 24), (33.6, 32), (44.8, 48), (89.6, 88),
     (134.4, 136), (1, 8), (1792.0, 1792), (12.0, 16), (20.0, 24)],
)
def test_make_divisible(value: float, expected: int) -> None:
    assert make_divisible(value, 8) == expected


@pytest.mark.parametrize("width", [0.1, 0.35, 0.5, 0.75, 0.9, 1.0, 1.3, 1.4, 2.0, 0.123])
def test_rounding_never_loses_more_than_10_percent(width: float) -> None:
    arch = resolve(ModelConfig(width=width))
    for b in arch.blocks:
        c = STAGES[b.stage].c * width
        assert b.out_channels % 8 == 0
        assert b.out_channels >= 0.9 * c or b.out_channels == 8


@pytest.mark.parametrize("width", [0.35, 0.5, 0.75, 1.0, 1.3, 1.4])
def test_residual_and_expansion_placement(width: float) -> None:
    arch = resolve(ModelConfig(width=width))
    assert len(arch.blocks) == 17
    assert not arch.blocks[0].has_expand
    assert all(b.has_expand for b in arch.blocks[1:])
    assert all(b.hidden_channels == b.in_channels * 6 for b in arch.blocks[1:])
    # Residuals: every repeat after the first within a stage (stride 1, same channels).
    residual = [b.index for b in arch.blocks if b.residual]
    assert residual == [2, 4, 5, 7, 8, 9, 11, 12, 14, 15]
    strides = [b.stride for b in arch.blocks]
    assert strides == [1, 2, 1, 2, 1, 1, 2, 1, 1, 1, 1, 1, 1, 2, 1, 1, 1]
    assert arch.total_stride == 32


@pytest.mark.parametrize(
    "os_, strides, dilations",
    [
        (32, [1, 2, 1, 2, 1, 1, 2, 1, 1, 1, 1, 1, 1, 2, 1, 1, 1], [1] * 17),
        (16, [1, 2, 1, 2, 1, 1, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1], [1] * 14 + [2, 2, 2]),
        (8, [1, 2, 1, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1], [1] * 7 + [2] * 7 + [4] * 3),
    ],
)
def test_output_stride_turns_strides_into_dilation(
    os_: int, strides: list[int], dilations: list[int]
) -> None:
    # TF-slim / DeepLab: the block that loses its stride keeps the current rate, the
    # following blocks use rate * stride.
    arch = resolve(ModelConfig(output_stride=os_))
    assert [b.stride for b in arch.blocks] == strides
    assert [b.dilation for b in arch.blocks] == dilations
    assert arch.total_stride == os_


def test_small_input_preset_strides() -> None:
    arch = resolve(ModelConfig(small_input=True, resolution=32))
    assert arch.stem_stride == 1
    assert [b.stride for b in arch.blocks][:3] == [1, 1, 1]
    assert arch.total_stride == 8
