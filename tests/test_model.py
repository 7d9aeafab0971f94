"""The modules: forward passes, padding, feature taps, output stride, errors."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mobilenetv2 import VARIANTS, MobileNetV2, ModelConfig, create_model
from mobilenetv2.model.layers import ConvBNAct, ReLU6, tf_same_padding


@pytest.mark.parametrize("name", [n for n, c in VARIANTS.items() if c.task == "classify"])
def test_every_variant_builds_and_runs(name: str) -> None:
    model = create_model(name, num_classes=7).eval()
    out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("size", [32, 33, 47, 64, 97, 130])
def test_any_resolution_at_least_32(size: int) -> None:
    model = MobileNetV2(ModelConfig(width=0.35, num_classes=3)).eval()
    assert model(torch.randn(1, 3, size, size + 5)).shape == (1, 3)


def test_module_names_follow_the_paper() -> None:
    model = MobileNetV2(ModelConfig(width=0.5))
    keys = set(model.state_dict())
    assert "stem.conv.weight" in keys
    assert "blocks.0.depthwise.conv.weight" in keys
    assert not any(k.startswith("blocks.0.expand") for k in keys)
    assert "blocks.1.expand.conv.weight" in keys
    assert "blocks.1.project.bn.running_var" in keys
    assert "head.conv.weight" in keys and "classifier.weight" in keys
    # Linear bottleneck: nothing after the projection's BN.
    assert not hasattr(model.blocks[3].project, "act")
    assert isinstance(model.blocks[3].depthwise.act, nn.ReLU6)
    assert isinstance(model.blocks[3].expand.act, nn.ReLU6)


def test_in_place_relu6_matches_torchs_values_and_gradients() -> None:
    """The one-pass training ReLU6 gives torch's outputs and input gradients, at the bounds
    (0 and 6 exactly: no gradient there, as torch) and for NaN too; without autograd or
    under tracing it is torch's own forward, so exported graphs keep their hardtanh."""
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(3, 5, 4, 4, generator=g) * 5).to(memory_format=torch.channels_last)
    x[0, 0, 0, :3] = torch.tensor([0.0, 6.0, float("nan")])
    grad = torch.randn(x.shape, generator=g)
    results = []
    for act in (nn.ReLU6(inplace=True), ReLU6(inplace=True)):
        leaf = x.clone().requires_grad_(True)
        y = act(leaf * 1.0)   # in place on a non-leaf, as after a BatchNorm
        y.backward(grad)
        results.append((y.detach(), leaf.grad, type(y.grad_fn).__name__))
    (y0, g0, fn0), (y1, g1, fn1) = results
    assert fn0 == "HardtanhBackward0" and fn1 != fn0   # the fast path was taken
    assert torch.equal(y0.nan_to_num(-1.0), y1.nan_to_num(-1.0))
    assert torch.equal(g0, g1)
    assert y1.is_contiguous(memory_format=torch.channels_last)
    traced = torch.jit.trace(ConvBNAct(2, 3, 1).train(), torch.randn(2, 2, 4, 4))
    assert "hardtanh" in str(traced.inlined_graph)
    fx = torch.fx.symbolic_trace(ConvBNAct(2, 3, 1).train())   # what `profile --memory` traces
    assert "hardtanh" in fx.code
    assert isinstance(ConvBNAct(2, 3, 1).act, ReLU6)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_conv_bn_relu6_scripts_and_matches_eager() -> None:
    """TorchScript compiles ConvBNAct with its ReLU6 (the training fast paths are
    `jit.unused`), and the scripted layer computes what the eager one does, in eval and in
    training (batch statistics, in-place ReLU6, gradients)."""
    torch.manual_seed(0)
    layer = ConvBNAct(3, 8, 3, stride=2)
    with torch.no_grad():
        layer.bn.weight.fill_(4.0)   # so that training outputs reach the clamp at 6
    scripted = torch.jit.script(copy.deepcopy(layer))
    x = torch.randn(2, 3, 16, 16) * 4
    layer.eval(), scripted.eval()
    assert torch.allclose(scripted(x), layer(x), atol=1e-5)
    layer.train(), scripted.train()
    xs, xe = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ys, ye = scripted(xs), layer(xe)
    assert ye.min() == 0 and ye.max() == 6   # the clamp is exercised at both ends
    assert torch.allclose(ys, ye, atol=1e-5)
    ys.square().sum().backward()
    ye.square().sum().backward()
    assert torch.allclose(xs.grad, xe.grad, atol=1e-4, rtol=1e-4)


def test_residual_is_really_added() -> None:
    model = MobileNetV2(ModelConfig(width=0.35)).eval()
    block = model.blocks[2]
    assert block.use_residual
    x = torch.randn(1, block.spec.in_channels, 16, 16)
    inner = block.project(block.depthwise(block.expand(x)))
    torch.testing.assert_close(block(x), x + inner)
    assert model.blocks[1].add is None


def test_param_count_matches_module() -> None:
    from mobilenetv2 import profile

    for width in (0.35, 1.0, 1.4):
        cfg = ModelConfig(width=width)
        n = sum(p.numel() for p in MobileNetV2(cfg).parameters())
        assert n == profile(cfg).params


@pytest.mark.parametrize("size", [32, 33, 224, 225, 57])
@pytest.mark.parametrize("stride, dilation", [(2, 1), (1, 1), (1, 2)])
def test_tf_same_equals_explicit_pad_then_valid(size: int, stride: int, dilation: int) -> None:
    layer = ConvBNAct(4, 6, 3, stride=stride, dilation=dilation, padding="tf_same").eval()
    x = torch.randn(1, 4, size, size + 1)
    top, bottom = tf_same_padding(size, 3, stride, dilation)
    left, right = tf_same_padding(size + 1, 3, stride, dilation)
    ref = F.conv2d(
        F.pad(x, [left, right, top, bottom]),
        layer.conv.weight,
        stride=stride,
        dilation=dilation,
    )
    ref = layer.act(layer.bn(ref))
    torch.testing.assert_close(layer(x), ref)
    # TF's out size is ceil(size / stride).
    assert layer(x).shape[-2] == -(-size // stride)


def test_tf_same_pads_after_not_before() -> None:
    assert tf_same_padding(224, 3, 2) == (0, 1)
    assert tf_same_padding(225, 3, 2) == (1, 1)
    assert tf_same_padding(224, 3, 1) == (1, 1)
    sym = MobileNetV2(ModelConfig(width=0.35)).eval()
    tf = MobileNetV2(ModelConfig(width=0.35, padding="tf_same")).eval()
    tf.load_state_dict(sym.state_dict())
    x = torch.randn(1, 3, 64, 64)
    assert not torch.allclose(sym(x), tf(x))


@pytest.mark.parametrize("os_", [32, 16, 8])
def test_output_stride_feature_sizes(os_: int) -> None:
    model = MobileNetV2(ModelConfig(width=0.35, output_stride=os_)).eval()
    feats = model.forward_features(torch.randn(1, 3, 128, 96))
    assert feats.shape[-2:] == (128 // os_, 96 // os_)


@pytest.mark.parametrize("os_", [32, 16])
def test_feature_info_matches_real_feature_maps(os_: int) -> None:
    model = create_model("mobilenetv2_050", output_stride=os_).eval()
    names = [f.name for f in model.feature_info]
    outs = model.forward_taps(torch.randn(1, 3, 96, 128), names)
    assert len(outs) == len(model.feature_info)
    for info, out in zip(model.feature_info, outs):
        assert out.shape[1] == info.channels, info
        assert out.shape[-2:] == (96 // info.stride, 128 // info.stride), info
    ssd = {f.name: f for f in model.feature_info}["blocks.13.expand"]
    assert ssd.tf_name == "layer_15/expansion_output"
    assert ssd.channels == 96 * 6 // 2 and ssd.stride == 16


def test_features_only_at_chosen_taps() -> None:
    taps = ("blocks.13.expand", "head", "blocks.2")
    model = create_model("mobilenetv2_100", features_only=True, out_features=taps).eval()
    outs = model(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [576, 1280, 24]
    default = create_model("mobilenetv2_035", features_only=True).eval()
    assert [o.shape[1] for o in default(torch.randn(1, 3, 64, 64))] == [8, 8, 16, 32, 112]
    assert not hasattr(default, "head")


def test_features_only_equals_classifier_features() -> None:
    full = create_model("mobilenetv2_050").eval()
    feats = create_model("mobilenetv2_050", features_only=True, out_features=["head"]).eval()
    missing, unexpected = feats.load_state_dict(full.state_dict(), strict=False)
    assert not missing and unexpected == ["classifier.weight", "classifier.bias"]
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(feats(x)[0], full.forward_features(x))


def test_forward_head_pre_logits_and_reset_classifier() -> None:
    model = create_model("mobilenetv2_035").eval()
    x = torch.randn(2, 3, 64, 64)
    emb = model.forward_head(model.forward_features(x), pre_logits=True)
    assert emb.shape == (2, 1280)
    torch.testing.assert_close(model.classifier(emb), model(x))
    model.reset_classifier(5)
    assert model(x).shape == (2, 5) and model.config.num_classes == 5
    with pytest.raises(ValueError, match="num_classes"):
        model.reset_classifier(0)


def test_torchvision_style_init() -> None:
    model = MobileNetV2(ModelConfig(width=0.5))
    w = model.blocks[1].expand.conv.weight
    fan_out = w.shape[0] * w.shape[2] * w.shape[3]
    assert abs(w.std().item() - (2.0 / fan_out) ** 0.5) < 0.2 * (2.0 / fan_out) ** 0.5
    assert torch.all(model.blocks[1].expand.bn.weight == 1)
    assert abs(model.classifier.weight.std().item() - 0.01) < 0.002


def test_bn_options_reach_every_layer() -> None:
    model = MobileNetV2(ModelConfig(width=0.35, bn_eps=1e-3, bn_momentum=0.001))
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 52
    assert all(m.eps == 1e-3 and m.momentum == 0.001 for m in bns)


def test_running_stats_update_sanely() -> None:
    model = MobileNetV2(ModelConfig(width=0.35)).train()
    x = torch.randn(8, 3, 64, 64) * 2 + 1
    model(x)
    bn = model.stem.bn
    # One step with momentum 0.1 moves the running mean a tenth of the way to the batch mean.
    batch_mean = model.stem.conv(x).mean(dim=(0, 2, 3))
    torch.testing.assert_close(bn.running_mean, 0.1 * batch_mean, rtol=1e-4, atol=1e-5)


def test_dropout_is_a_rate_and_layout_is_fixed() -> None:
    a = MobileNetV2(ModelConfig(width=0.35, dropout=0.0))
    b = MobileNetV2(ModelConfig(width=0.35, dropout=0.5))
    assert list(a.state_dict()) == list(b.state_dict())
    assert b.dropout.p == 0.5


def test_small_input_preset() -> None:
    model = MobileNetV2(ModelConfig(width=0.5, small_input=True, resolution=32)).eval()
    assert model.forward_features(torch.randn(1, 3, 32, 32)).shape[-2:] == (4, 4)


def test_fusable_sequences_and_residual_op() -> None:
    from torch.ao.quantization import fuse_modules

    model = MobileNetV2(ModelConfig(width=0.35)).eval()
    x = torch.randn(1, 3, 64, 64)
    ref = model(x)
    # Eager-mode fusion has no Conv-BN-ReLU6 pattern; Conv-BN folds and ReLU6 stays a clamp
    # (never silently swapped for ReLU).
    fused = fuse_modules(model, [["stem.conv", "stem.bn"],
                                 ["blocks.1.project.conv", "blocks.1.project.bn"]])
    assert isinstance(fused.stem.act, nn.ReLU6)
    torch.testing.assert_close(fused(x), ref, rtol=1e-4, atol=1e-5)
    from mobilenetv2.model.layers import ResidualAdd

    assert sum(isinstance(m, ResidualAdd) for m in model.modules()) == 10


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"width": 0}, "width"),
        ({"width": -0.5}, "width"),
        ({"width": float("nan")}, "width"),
        ({"num_classes": 0}, "num_classes"),
        ({"dropout": 1.0}, "keep probability"),
        ({"bn_momentum": 0.997}, "1 - decay"),
        ({"padding": "same"}, "padding"),
        ({"output_stride": 4}, "output_stride"),
        ({"resolution": 16}, "resolution 16"),
        ({"small_input": True, "output_stride": 16}, "contradicts"),
        ({"color": "red"}, "color"),
    ],
)
def test_bad_configs_raise_value_error(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        create_model("mobilenetv2_100", **kwargs)


def test_bad_name_and_small_input_raise() -> None:
    with pytest.raises(ValueError, match="mobilenetv2_999"):
        create_model("mobilenetv2_999")
    model = create_model("mobilenetv2_035").eval()
    with pytest.raises(ValueError, match="16x16"):
        model(torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match="unknown feature tap"):
        create_model("mobilenetv2_035", features_only=True, out_features=["blocks.99"])


def test_config_roundtrip() -> None:
    cfg = ModelConfig(width=0.75, num_classes=1001, padding="tf_same", bn_eps=1e-3)
    assert ModelConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ValueError, match="unknown model option"):
        ModelConfig.from_dict({"width": 1.0, "alpha": 2})
