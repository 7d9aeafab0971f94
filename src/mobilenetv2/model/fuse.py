"""Graph preparation for deployment: BatchNorm folded into the convolutions, channels_last.

At inference a BatchNorm is an affine map per channel, so it folds into the preceding
convolution (Jacob et al., CVPR 2018, section 3.2; torch.ao's `fuse_conv_bn_eval`):
`w' = w * gamma / sqrt(var + eps)`, `b' = beta - mean * gamma / sqrt(var + eps)`. ReLU6 stays
a clamp to [0, 6] (exported as ONNX `Clip`), never a ReLU: the upper bound is what keeps
activations in a range int8 represents well (paper section 3.2, "robust with low-precision").

`reestimate_bn` is for benchmarks and tests with random weights: with the raw
initialisation the activations shrink layer after layer to about 1e-9, so any output check
or int8 calibration on such a model is meaningless; a few forward passes in train mode give
every BatchNorm statistics that normalise its input.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import nn

from mobilenetv2.model.layers import ConvBNAct

__all__ = ["fold_conv_bn", "fuse", "is_fused", "reestimate_bn"]


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new convolution computing `bn(conv(x))` with BatchNorm's running statistics."""
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=True,
        padding_mode=conv.padding_mode,
    ).to(conv.weight.device)
    with torch.no_grad():
        # float64 keeps the fold itself from adding rounding error on top of fp32's.
        scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
        w = conv.weight.double() * scale.reshape(-1, 1, 1, 1)
        b = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
        fused.weight.copy_(w.to(conv.weight.dtype))
        fused.bias.copy_(((b - bn.running_mean.double()) * scale + bn.bias.double()).to(
            conv.weight.dtype))
    return fused


def fuse(model: nn.Module, channels_last: bool = True) -> nn.Module:
    """A copy of `model` in eval mode with every Conv-BN pair folded into one convolution.

    The module tree keeps its names (`blocks.3.depthwise.conv` ...; each `bn` becomes an
    `Identity`), activations stay `ReLU6`, and `config` / `meta` attributes carry over, so
    the result exports, scripts and compiles like the original.

    Args:
        model: A MobileNetV2 (any module built from `ConvBNAct` works).
        channels_last: Store weights and expect inputs in NHWC memory format, the layout
            oneDNN's convolutions run fastest in on CPU.
    """
    fused = copy.deepcopy(model).eval()
    for module in fused.modules():
        if isinstance(module, ConvBNAct) and isinstance(getattr(module, "bn", None),
                                                        nn.BatchNorm2d):
            module.conv = fold_conv_bn(module.conv, module.bn)
            module.bn = nn.Identity()
    for name in ("config", "meta"):
        if hasattr(model, name):
            setattr(fused, name, getattr(model, name))
    fused.fused = True
    if channels_last:
        fused = fused.to(memory_format=torch.channels_last)
    return fused


def is_fused(model: nn.Module) -> bool:
    """True when no BatchNorm is left to fold."""
    return not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@torch.no_grad()
def reestimate_bn(
    model: nn.Module,
    batches: Iterable[torch.Tensor] | None = None,
    *,
    steps: int = 8,
    batch_size: int = 8,
    size: int = 224,
    seed: int = 0,
) -> nn.Module:
    """Recompute every BatchNorm's running statistics from forward passes, in place.

    Args:
        model: The model; returned in eval mode.
        batches: Input batches; default `steps` batches of Gaussian noise
            (`batch_size` x 3 x `size` x `size`, seeded), enough for random-weight
            benchmarks and tests.
    """
    if batches is None:
        gen = torch.Generator().manual_seed(seed)
        batches = [torch.randn(batch_size, 3, size, size, generator=gen) for _ in range(steps)]
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.training) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over all batches
    model.eval()
    for m in bns:
        m.train()
    for x in batches:
        model(x)
    for m, (momentum, _) in zip(bns, saved):
        m.momentum = momentum
    return model.eval()
