"""Building blocks shared by every MobileNetV2 module: one Conv-BN-Act helper.

`ConvBNAct` is an `nn.Sequential` with fixed child names (`pad`, `conv`, `bn`, `act`), so
Conv-BN-ReLU6 fusion for quantization (DESIGN example 13) is a fixed list of names and the
state-dict keys are stable across options.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from mobilenetv2.model import bnact, dwconv

__all__ = ["ConvBNAct", "ReLU6", "ResidualAdd", "SamePad2d", "tf_same_padding"]


def tf_same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow's SAME padding for one spatial side: (before, after).

    TF pads `total = max((ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 -
    size, 0)` and puts the odd pixel *after* (bottom/right); PyTorch's symmetric padding puts
    it on both sides, which shifts every stride-2 output by half a pixel relative to TF.
    """
    out = (size + stride - 1) // stride
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class SamePad2d(nn.Module):
    """Zero padding computed from the actual input size, as TF's "SAME" does.

    Computed in `forward` from the input's shape (not fixed at construction), so any input
    size is exact; the arithmetic traces to shape ops for export.
    """

    def __init__(self, kernel: int, stride: int, dilation: int = 1) -> None:
        super().__init__()
        self.kernel, self.stride, self.dilation = kernel, stride, dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = tf_same_padding(x.shape[-2], self.kernel, self.stride, self.dilation)
        left, right = tf_same_padding(x.shape[-1], self.kernel, self.stride, self.dilation)
        return F.pad(x, [left, right, top, bottom])

    def extra_repr(self) -> str:
        return f"kernel={self.kernel}, stride={self.stride}, dilation={self.dilation}"


class _ClampInPlace(torch.autograd.Function):
    """ReLU6 in place with one pass over memory, for training.

    Why: `nn.ReLU6(inplace=True)` under autograd runs `hardtanh_` as clone + clamp + copy
    back (three passes over the tensor), and `Tensor.clamp_` clones the input too, because
    its backward formula reads the input. Both are avoidable: ReLU6's gradient can be read
    off its output (it passes where 0 < y < 6, exactly where 0 < x < 6, and NaN stays NaN so
    neither passes it), which is what `hardtanh_backward` computes given the output. Measured
    on an AMD EPYC Zen 3 (2 threads, MobileNetV2 1.0, 224x224, batch 32): docs/BENCHMARKS.md.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        x.clamp_(0.0, 6.0)
        ctx.mark_dirty(x)
        ctx.save_for_backward(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        (y,) = ctx.saved_tensors
        return torch.ops.aten.hardtanh_backward(grad, y, 0.0, 6.0)


class ReLU6(nn.ReLU6):
    """`nn.ReLU6` (an instance of it, so quantization, fusion and export see a ReLU6) whose
    in-place training forward is `_ClampInPlace`. Tracing, scripting and compiling (ONNX,
    TFLite, torch.export, torch.compile) and anything without a gradient take `nn.ReLU6`'s
    own path, so exported graphs keep their `hardtanh`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # TorchScript compiles only the plain line below (it can neither compile an autograd
        # Function nor `super()`), so a scripted model keeps working; `_one_pass` is unused there
        if not torch.jit.is_scripting():
            y = self._one_pass(x)
            if y is not None:
                return y
        return F.hardtanh(x, self.min_val, self.max_val, self.inplace)

    @torch.jit.unused
    def _one_pass(self, x: torch.Tensor) -> Optional[torch.Tensor]:  # noqa: UP045
        # isinstance first: under torch.fx's symbolic tracing (the memory profile) `x` is a
        # Proxy, whose `requires_grad` cannot decide control flow
        if (isinstance(x, torch.Tensor) and self.inplace and x.requires_grad
                and torch.is_grad_enabled() and not torch.jit.is_tracing()
                and not torch.compiler.is_compiling()):
            return _ClampInPlace.apply(x)
        return None


# ConvBNAct's children in the layouts its constructor builds (see _fused_forward)
_PLAIN_CHILDREN = {("conv", "bn"), ("conv", "bn", "act"), ("pad", "conv", "bn"),
                   ("pad", "conv", "bn", "act")}


class ConvBNAct(nn.Sequential):
    """Conv2d (no bias) -> BatchNorm2d -> activation (ReLU6 by default, None = linear).

    With `padding="symmetric"` the conv pads `(k - 1) // 2 * dilation` on every side. With
    `"tf_same"`, stride-1 layers pad the same way (SAME is symmetric for odd kernels at
    stride 1) and stride-2 layers get a `SamePad2d` child in front of an unpadded conv.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        dilation: int = 1,
        act: type[nn.Module] | None = nn.ReLU6,
        padding: str = "symmetric",
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
    ) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        pad = (kernel_size - 1) // 2 * dilation
        if padding == "tf_same" and stride > 1:
            layers["pad"] = SamePad2d(kernel_size, stride, dilation)
            pad = 0
        layers["conv"] = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=pad,
            dilation=dilation,
            groups=groups,
            bias=False,
        )
        layers["bn"] = nn.BatchNorm2d(out_channels, eps=bn_eps, momentum=bn_momentum)
        if act is not None:
            if act is nn.ReLU6:
                act = ReLU6
            layers["act"] = act(inplace=True) if act in (ReLU6, nn.ReLU) else act()
        super().__init__(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Training on a CPU: BN (+ ReLU6) as one fused op (model.bnact, issue 14), a depthwise
        # 3x3 conv on our kernel (model.dwconv). Scripting
        # compiles only the plain loop below; everything `bnact.fusable` rejects (eval,
        # tracing, compiling, other layouts, hooks, ...) takes it too, module by module.
        if not torch.jit.is_scripting():
            y = self._fused_forward(x)
            if y is not None:
                return y
        for module in self:
            x = module(x)
        return x

    @torch.jit.unused
    def _fused_forward(self, x: torch.Tensor) -> Optional[torch.Tensor]:  # noqa: UP045
        bn, act = self._modules.get("bn"), self._modules.get("act")
        # the cheap checks first: eval, no_grad, a torch.fx Proxy, children changed (fusion
        # for quantization swaps them: Identity, ConvBnReLU2d, ...)
        if not (isinstance(x, torch.Tensor) and type(bn) is nn.BatchNorm2d and bn.training
                and torch.is_grad_enabled() and tuple(self._modules) in _PLAIN_CHILDREN):
            return None
        if "pad" in self._modules:
            x = self._modules["pad"](x)
        conv = self._modules["conv"]
        # a depthwise 3x3 conv on our kernel (model.dwconv), under the same conditions
        x = dwconv.depthwise_conv(x, conv) if dwconv.fusable(x, conv) else conv(x)
        act_ok = act is None or (type(act) is ReLU6 and act.inplace)
        if bnact.fusable(x, bn, act, act_ok):
            return bnact.fused_bn_act(x, bn, clamp=act is not None)
        x = bn(x)
        return act(x) if act is not None else x


class ResidualAdd(nn.Module):
    """The shortcut addition as a module, so quantization can swap in a quantized add."""

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x + y
