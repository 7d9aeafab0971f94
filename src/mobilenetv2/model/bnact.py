"""Fused training BatchNorm (+ ReLU6) for `ConvBNAct` (issue 14).

Why: on a CPU, a training step of MobileNetV2 at 224x224 spends about as long in BatchNorm
and the ReLU6 backward as in the convolutions' forward (profile in docs/BENCHMARKS.md): each
is a separate memory-bound pass over tensors of up to 154 MB. The fused op (C++, `_bnact.cpp`)
reads x once for the batch statistics and once to write y = clamp(BN(x), 0, 6); its backward
recomputes the ReLU6 mask from x with the same inline code (bit-identical to the forward's),
sums dz and dz * (x - mean) in one pass and writes dx in a second: about 5 passes instead of 14.

Only the plain case is fused, so everything else keeps torch's own path unchanged: training
mode, grad enabled, an exact `nn.BatchNorm2d` (not SyncBatchNorm) with affine weights and
running statistics, an exact `ReLU6` (ours, in place) or no activation, a float32 CPU tensor
in channels_last layout, no hooks on the BN or activation (nor global module hooks), no
tracing / scripting / compiling, no autocast. MOBILENETV2_FUSED_BN=0 turns it off (A/B).
"""

from __future__ import annotations

import logging
import os

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn.modules import module as _module

log = logging.getLogger(__name__)

__all__ = ["AVAILABLE", "UNAVAILABLE", "describe", "describe_depthwise", "enabled", "fused_bn_act"]

try:
    import mobilenetv2.model._bnact as _bnact  # type: ignore[import-not-found]
except ImportError as exc:  # not built (no compiler at install time) or a broken build
    _bnact = None
    UNAVAILABLE = (f"the fused training BatchNorm is unavailable ({exc}); it is built by "
                   f"`pip install -e .` with a C++17 compiler; BatchNorm trains through torch")
else:
    UNAVAILABLE = ""
AVAILABLE = _bnact is not None
_told = False


def enabled() -> bool:
    """Whether training may take the fused path (built, and not turned off by the env)."""
    global _told
    if os.environ.get("MOBILENETV2_FUSED_BN", "1") == "0":
        return False
    if not AVAILABLE:
        if not _told:
            log.warning("%s", UNAVAILABLE)
            _told = True
        return False
    return True


def describe() -> str:
    """One line for the run log and the tuner's cache key: which BatchNorm and depthwise
    convolution paths train."""
    if os.environ.get("MOBILENETV2_FUSED_BN", "1") == "0":
        return "BatchNorm: torch (MOBILENETV2_FUSED_BN=0)"
    if not AVAILABLE:
        return "BatchNorm: torch (fused kernel not built)"
    return (f"BatchNorm: fused BN+ReLU6 ({_bnact.isa()}, {_bnact.pool()} threads) for "
            f"channels_last fp32, torch otherwise; {describe_depthwise()}")


def describe_depthwise() -> str:
    """The depthwise 3x3 convolution's path (model.dwconv, in this module's extension; here
    so that describe() needs no import of dwconv, which imports this module)."""
    if os.environ.get("MOBILENETV2_FUSED_DW", "1") == "0":
        return "depthwise 3x3: torch (MOBILENETV2_FUSED_DW=0)"
    if not enabled():
        return "depthwise 3x3: torch"
    return f"depthwise 3x3: ours ({_bnact.isa()}) for channels_last fp32, torch otherwise"


def _autocasting() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled()


def _hooked(*mods: nn.Module) -> bool:
    if (_module._global_forward_hooks or _module._global_forward_pre_hooks
            or _module._global_backward_hooks or _module._global_backward_pre_hooks):
        return True
    return any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
               or m._backward_pre_hooks for m in mods)


def fusable(x: object, bn: nn.Module, act: nn.Module | None, act_ok: bool) -> bool:
    """Whether `act(bn(x))` may run fused (every condition in the module docstring); `act_ok`:
    the caller's word that `act` is none or the in-place ReLU6 the fused op computes."""
    return (isinstance(x, torch.Tensor) and type(bn) is nn.BatchNorm2d and bn.training
            and torch.is_grad_enabled() and act_ok
            and bn.affine and bn.track_running_stats and bn.running_mean is not None
            and bn.num_batches_tracked is not None
            and x.dtype == torch.float32 and x.device.type == "cpu" and x.dim() == 4
            and x.is_contiguous(memory_format=torch.channels_last)
            and bn.weight.dtype == torch.float32 and bn.running_mean.dtype == torch.float32
            and not torch.jit.is_scripting() and not torch.jit.is_tracing()
            and not torch.compiler.is_compiling() and not _autocasting()
            and enabled() and not _hooked(bn, *(() if act is None else (act,))))


def _ptr(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


class _FusedBNAct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, bn, clamp):  # noqa: ANN001, ANN205
        n, c, h, w = x.shape
        m = n * h * w
        y = torch.empty_like(x)
        mean = x.new_empty(c)
        invstd = x.new_empty(c)
        rm, rv = bn.running_mean, bn.running_var
        # the running statistics as torch's BatchNorm2d.forward updates them
        bn.num_batches_tracked.add_(1)
        factor = (1.0 / float(bn.num_batches_tracked) if bn.momentum is None
                  else bn.momentum)
        w_, b_ = weight.contiguous(), bias.contiguous()
        _bnact.forward(x.data_ptr(), y.data_ptr(), m, c, w_.data_ptr(), b_.data_ptr(),
                       _ptr(rm), _ptr(rv), mean.data_ptr(), invstd.data_ptr(), factor,
                       bn.eps, clamp, torch.get_num_threads())
        ctx.save_for_backward(x, w_, b_, mean, invstd)
        ctx.clamp = clamp
        return y

    @staticmethod
    @once_differentiable  # a second derivative through it raises instead of being wrong
    def backward(ctx, dy):  # noqa: ANN001, ANN205
        x, w, b, mean, invstd = ctx.saved_tensors
        n, c, h, wd = x.shape
        dy = dy.contiguous(memory_format=torch.channels_last)
        dx = torch.empty_like(x) if ctx.needs_input_grad[0] else None
        dw = torch.empty_like(w)
        db = torch.empty_like(b)
        _bnact.backward(x.data_ptr(), dy.data_ptr(), _ptr(dx), n * h * wd, c, w.data_ptr(),
                        b.data_ptr(), mean.data_ptr(), invstd.data_ptr(), dw.data_ptr(),
                        db.data_ptr(), ctx.clamp, torch.get_num_threads())
        return (dx, dw if ctx.needs_input_grad[1] else None,
                db if ctx.needs_input_grad[2] else None, None, None)


def fused_bn_act(x: torch.Tensor, bn: nn.BatchNorm2d, clamp: bool) -> torch.Tensor:
    """`ReLU6(bn(x))` (clamp) or `bn(x)` in training mode, fused; call only when `fusable`."""
    # torch raises for one value per channel in training; so do we, with its message
    F._verify_batch_size(x.size())
    return _FusedBNAct.apply(x, bn.weight, bn.bias, bn, clamp)
