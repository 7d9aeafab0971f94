"""Depthwise 3x3 convolution for training on a CPU (issue 14), in the `_bnact` extension.

Why: in a MobileNetV2 training step at 224x224 on a 2-core AVX2 CPU, torch's depthwise
convolutions (oneDNN) take 2.2x (forward) and 3.4x (backward) the time of the bytes they must
move (bench/train_dw_ab.py). The C++ kernels (`_dwconv.inc`) move each tensor once: forward
reads x and writes y; backward reads x and dy and writes dx, the weight gradient summed in the
same pass, per-chunk partials added in a fixed order (results independent of the thread count).

Taken only in the plain case, the rest keeps torch's path: the conditions of the fused
BatchNorm (`bnact.fusable`: training, grad enabled, float32 CPU channels_last, no hooks, no
tracing / scripting / compiling / autocast) and an exact `nn.Conv2d` with groups == in ==
out channels, a 3x3 kernel, no bias, equal strides, equal dilations, zero padding of 0 or
the dilation on every side (`(k - 1) // 2 * dilation`; 0 after a `SamePad2d`).
MOBILENETV2_FUSED_DW=0 turns it off alone, MOBILENETV2_FUSED_BN=0 turns off both.
"""

from __future__ import annotations

import os

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from mobilenetv2.model import bnact

__all__ = ["depthwise_conv", "describe", "enabled", "fusable"]


def enabled() -> bool:
    """Whether training may take the depthwise kernel (built, and neither switch is off)."""
    return os.environ.get("MOBILENETV2_FUSED_DW", "1") != "0" and bnact.enabled()


def describe() -> str:
    """One line for the run log (and the tuner's cache key, through bnact.describe)."""
    return bnact.describe_depthwise()


def fusable(x: torch.Tensor, conv: nn.Module) -> bool:
    """Whether `conv(x)` may run on our kernel (every condition in the module docstring);
    call after the caller has checked training mode and grad (ConvBNAct._fused_forward)."""
    if not (type(conv) is nn.Conv2d and conv.bias is None and conv.padding_mode == "zeros"
            and conv.groups == conv.in_channels == conv.out_channels
            and conv.kernel_size == (3, 3) and isinstance(conv.padding, tuple)):
        return False
    (sh, sw), (dh, dw), (ph, pw) = conv.stride, conv.dilation, conv.padding
    return (sh == sw and dh == dw and ph == pw and ph in (0, dh)
            and isinstance(x, torch.Tensor) and x.dtype == torch.float32
            and x.device.type == "cpu" and x.dim() == 4 and x.shape[1] == conv.in_channels
            and x.is_contiguous(memory_format=torch.channels_last)
            and x.shape[2] + 2 * ph > 2 * dh and x.shape[3] + 2 * ph > 2 * dh
            and conv.weight.dtype == torch.float32 and conv.weight.device.type == "cpu"
            and not torch.jit.is_scripting() and not torch.jit.is_tracing()
            and not torch.compiler.is_compiling() and not bnact._autocasting()
            and enabled() and not bnact._hooked(conv))


def _geometry(x: torch.Tensor, stride: int, pad: int, dil: int) -> tuple[int, ...]:
    n, c, h, w = x.shape
    oh = (h + 2 * pad - 2 * dil - 1) // stride + 1
    ow = (w + 2 * pad - 2 * dil - 1) // stride + 1
    return n, h, w, c, oh, ow, stride, pad, dil


class _DepthwiseConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, stride, pad, dil):  # noqa: ANN001, ANN205
        g = _geometry(x, stride, pad, dil)
        n, _, _, c, oh, ow = g[:6]
        w = weight.contiguous()
        y = torch.empty((n, c, oh, ow), dtype=x.dtype, memory_format=torch.channels_last)
        bnact._bnact.dw_forward(x.data_ptr(), w.data_ptr(), y.data_ptr(), 0, 0, *g,
                                torch.get_num_threads())
        ctx.save_for_backward(x, w)
        ctx.geometry = g
        return y

    @staticmethod
    @once_differentiable  # a second derivative through it raises instead of being wrong
    def backward(ctx, dy):  # noqa: ANN001, ANN205
        x, w = ctx.saved_tensors
        dy = dy.contiguous(memory_format=torch.channels_last)
        dx = torch.empty_like(x) if ctx.needs_input_grad[0] else None
        dw = torch.empty_like(w) if ctx.needs_input_grad[1] else None
        bnact._bnact.dw_backward(x.data_ptr(), w.data_ptr(), dy.data_ptr(), bnact._ptr(dx),
                                 bnact._ptr(dw), *ctx.geometry, torch.get_num_threads())
        return dx, dw, None, None, None


def depthwise_conv(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """`conv(x)` on our kernel; call only when `fusable(x, conv)`."""
    return _DepthwiseConv.apply(x, conv.weight, conv.stride[0], conv.padding[0],
                                conv.dilation[0])
