"""Exact arithmetic: the known totals and a cross-check against torch's FLOP counter."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from mobilenetv2 import MobileNetV2, ModelConfig, profile

RES = (96, 128, 160, 192, 224)


def test_known_totals_width_1_224() -> None:
    p = profile(ModelConfig())
    assert p.params == 3_504_872  # torchvision's mobilenet_v2 parameter count
    assert p.madds == 300_774_272  # ~300M of the paper's Table 3 / Figure 5
    assert round(profile(ModelConfig(num_classes=1001)).weights_excluding_bn / 1e6, 2) == 3.47


@pytest.mark.parametrize(
    "width, res, params_m, madds_m",
    # The official TF-slim checkpoint table (MACs in millions, params in millions, 1001
    # classes, weights excluding BatchNorm).
    [(1.4, 224, 6.06, 582), (1.3, 224, 5.34, 509)]
    + [(1.0, r, 3.47, m) for r, m in zip(RES, (56, 99, 154, 221, 300))]
    + [(0.75, r, 2.61, m) for r, m in zip(RES, (39, 69, 107, 153, 209))]
    + [(0.5, r, 1.95, m) for r, m in zip(RES, (18, 32, 50, 71, 97))]
    + [(0.35, r, 1.66, m) for r, m in zip(RES, (11, 20, 30, 43, 59))],
)
def test_official_checkpoint_table(width: float, res: int, params_m: float, madds_m: int) -> None:
    p = profile(ModelConfig(width=width, num_classes=1001, resolution=res))
    assert round(p.weights_excluding_bn / 1e6, 2) == params_m
    assert int(p.madds / 1e6) == madds_m  # the table truncates to whole millions


@pytest.mark.parametrize(
    "width, res, kw",
    [(0.35, 96, {}), (0.5, 128, {}), (1.0, 160, {}), (1.4, 64, {}), (0.75, 97, {}),
     (1.0, 64, {"output_stride": 8}), (0.5, 32, {"small_input": True}),
     (1.0, 65, {"padding": "tf_same"})],
)
def test_madds_match_flop_counter(width: float, res: int, kw: dict) -> None:
    cfg = ModelConfig(width=width, resolution=res, num_classes=10, **kw)
    model = MobileNetV2(cfg).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.randn(1, 3, res, res))
    # torch counts a multiply-accumulate as 2 FLOPs.
    assert counter.get_total_flops() == 2 * profile(cfg).madds


def test_shapes_and_activation_memory_match_modules() -> None:
    cfg = ModelConfig(width=0.5, resolution=96)
    model = MobileNetV2(cfg).eval()
    shapes = {}
    hooks = [
        m.register_forward_hook(lambda mod, inp, out, n=name: shapes.__setitem__(n, out.shape))
        for name, m in model.named_modules()
        if name in {layer.name for layer in profile(cfg).layers}
    ]
    model(torch.randn(1, 3, 96, 96))
    for h in hooks:
        h.remove()
    for layer in profile(cfg).layers:
        if layer.name in shapes and layer.name != "pool":
            got = tuple(shapes[layer.name][1:]) or (shapes[layer.name][1], 1, 1)
            assert got in (layer.out_shape, layer.out_shape[:1]), layer.name
            assert layer.activation_bytes == 4 * torch.Size(layer.out_shape).numel()
    assert profile(cfg).peak_activation_bytes > 0


def test_profile_rejects_tiny_resolution() -> None:
    with pytest.raises(ValueError, match="resolution 8"):
        profile(ModelConfig(), resolution=8)
