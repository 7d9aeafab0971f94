"""torchvision and timm converters: logits parity against the real implementations.

Same seeded random weights on both sides, with BatchNorm running statistics and affine
parameters randomised too: with torchvision's init (gamma 1, beta 0, mean 0, var 1) a wrong
BN mapping would hardly show. The measured max abs difference is printed (pytest -s).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mobilenetv2.config import ModelConfig
from mobilenetv2.errors import UserError
from mobilenetv2.model import MobileNetV2
from mobilenetv2.model.arch import resolve
from mobilenetv2.weights import load_state_dict_checked
from mobilenetv2.weights.convert.keymap import convert_timm, convert_torchvision

TOL = 1e-5


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights, BN affine and running stats, so every tensor matters for the logits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            elif isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return model.eval()


def ours_from(converted) -> MobileNetV2:
    model = MobileNetV2(converted.meta.config)
    load_state_dict_checked(model, converted.state_dict)
    return model.eval()


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


@pytest.mark.parametrize("width", [0.35, 0.5, 0.75, 1.0, 1.3, 1.4, 0.6])
def test_torchvision_parity(width: float) -> None:
    import torchvision

    ref = randomize(torchvision.models.mobilenet_v2(width_mult=width, num_classes=1000))
    conv = convert_torchvision(ref.state_dict())
    ours = ours_from(conv)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        want, got = ref(x), ours(x)
    diff = max_diff(want, got)
    print(f"torchvision width {width}: logits max abs diff {diff:.3g} (logit std "
          f"{float(want.std()):.3g})")
    assert float(want.std()) > 0.1  # the comparison is not between near-zero tensors
    assert diff <= TOL
    assert conv.meta.labels is not None and conv.meta.labels[0] == "tench"
    if width in (0.35, 0.5, 0.75, 1.0, 1.3, 1.4):
        assert conv.meta.config.width == width


def test_torchvision_num_classes_and_bad_input() -> None:
    import torchvision

    ref = torchvision.models.mobilenet_v2(width_mult=0.5, num_classes=7)
    conv = convert_torchvision(ref.state_dict())
    assert conv.meta.config.num_classes == 7 and conv.meta.labels is None
    tf_head = convert_torchvision(torchvision.models.mobilenet_v2(width_mult=0.35,
                                                                  num_classes=1001).state_dict())
    assert tf_head.meta.labels[:2] == ["background", "tench"]  # the one ImageNet default
    sd = dict(ref.state_dict())
    sd["features.5.conv.1.0.weight"] = sd["features.5.conv.1.0.weight"][:, :, :2]
    with pytest.raises(UserError, match=r"fit no MobileNetV2 width|shape mismatch"):
        convert_torchvision(sd)
    sd = dict(ref.state_dict())
    sd["features.19.extra"] = torch.zeros(1)
    with pytest.raises(UserError, match=r"unexpected key.*features.19.extra"):
        convert_torchvision(sd)
    sd = dict(ref.state_dict())
    del sd["features.3.conv.3.running_var"]
    with pytest.raises(UserError, match=r"missing key.*features.3.conv.3.running_var"):
        convert_torchvision(sd)


@pytest.mark.parametrize("name", ["mobilenetv2_035", "mobilenetv2_050", "mobilenetv2_075",
                                  "mobilenetv2_100", "mobilenetv2_140"])
def test_timm_parity(name: str) -> None:
    timm = pytest.importorskip("timm", reason="timm (peers extra) not installed")

    ref = randomize(timm.create_model(name, pretrained=False))
    conv = convert_timm(ref.state_dict())
    ours = ours_from(conv)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        want, got = ref(x), ours(x)
    diff = max_diff(want, got)
    print(f"timm {name}: logits max abs diff {diff:.3g} (logit std {float(want.std()):.3g})")
    assert float(want.std()) > 0.1
    assert diff <= TOL
    assert conv.meta.config.width == {"035": 0.35, "050": 0.5, "075": 0.75, "100": 1.0,
                                      "140": 1.4}[name[-3:]]


@pytest.mark.parametrize("width", [0.6, 1.2])
def test_timm_other_widths_follow_the_same_rounding(width: float) -> None:
    """timm's own builder at widths it ships no variant for: same channels, same logits."""
    pytest.importorskip("timm", reason="timm (peers extra) not installed")
    from timm.models.efficientnet import _gen_mobilenet_v2

    ref = randomize(_gen_mobilenet_v2("mobilenetv2_100", width, pretrained=False))
    ours = ours_from(convert_timm(ref.state_dict()))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        diff = max_diff(ref(x), ours(x))
    print(f"timm channel_multiplier {width}: logits max abs diff {diff:.3g}")
    assert diff <= TOL


def test_timm_deeper_variants_refused() -> None:
    timm = pytest.importorskip("timm", reason="timm (peers extra) not installed")

    sd = timm.create_model("mobilenetv2_110d", pretrained=False).state_dict()
    with pytest.raises(UserError, match=r"blocks per stage \(1, 3, 4, 5, 4, 4, 1\).*110d"):
        convert_timm(sd)


def test_torchvision_file_without_num_batches_tracked(tmp_path) -> None:
    """Files saved before torch 0.4.1 (like the original torchvision release) have no
    `num_batches_tracked`; they convert, and a `.pth` is read through the safe loader."""
    import torchvision

    ref = randomize(torchvision.models.mobilenet_v2(width_mult=0.5))
    sd = {k: v for k, v in ref.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(sd, tmp_path / "mobilenet_v2-old.pth")
    ours = ours_from(convert_torchvision(tmp_path / "mobilenet_v2-old.pth"))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert max_diff(ref(x), ours(x)) <= TOL


def test_width_search_order() -> None:
    """Several widths resolve to the same network; the one search reports the published width
    first, then a preferred one (a file name's alpha), then the grid width nearest the one the
    last stage's channels suggest (not the smallest equivalent)."""
    from mobilenetv2.weights.convert.fit import fit_width

    base = ModelConfig()

    def same_as(width: float):
        want = resolve(base.replace(width=width))
        return lambda arch: arch == want

    assert fit_width(base, same_as(0.995), 320).width == 1.0  # 0.995 resolves as 1.0 does
    assert fit_width(base, same_as(1.0), 320, prefer=(0.995,)).width == 0.995
    assert fit_width(base, same_as(0.6), 192).width == 0.6  # 0.595 and 0.605 are the same net
    assert fit_width(base, lambda arch: False, 320) is None
