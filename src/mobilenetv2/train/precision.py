"""Choosing the fast path per device and input size: mixed precision and memory format.

The rule for `amp="auto"` (measured with `bench/train_throughput.py`, docs/BENCHMARKS.md):

- CUDA: bf16 autocast where the GPU supports it (Ampere and later), else fp16 with a
  GradScaler.
- CPU: bf16 autocast only when the CPU has native bf16 dot products (oneDNN reports bf16
  support: AVX512-BF16 or AMX) *and* the input is at least `CPU_BF16_MIN_SIZE` pixels. On
  small inputs (32x32 digits) the per-op casts cost more than the bf16 math saves, and
  training is slower than fp32, so fp32 it is.

`memory_format="auto"` is channels_last: oneDNN's and cuDNN's depthwise and 1x1 kernels
run natively in NHWC, where NCHW pays a reorder around every convolution.
"""

from __future__ import annotations

import torch

from mobilenetv2.config import TrainConfig

__all__ = ["CPU_BF16_MIN_SIZE", "choose_amp", "choose_memory_format", "cpu_has_bf16",
           "resolve_device"]

CPU_BF16_MIN_SIZE = 128


def resolve_device(name: str) -> torch.device:
    """"auto" is the first CUDA GPU (the LOCAL_RANK-th under torchrun) or the CPU."""
    import os

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"device: unknown device {name!r}") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    return device


def cpu_has_bf16() -> bool:
    """Native bf16 arithmetic on this CPU, as oneDNN sees it."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def choose_amp(cfg: TrainConfig, device: torch.device, size: int) -> torch.dtype | None:
    """The autocast dtype for training at `size` x `size` on `device`, or None for fp32."""
    if cfg.amp == "off":
        return None
    if cfg.amp == "bf16":
        return torch.bfloat16
    if cfg.amp == "fp16":
        if device.type != "cuda":
            raise ValueError("amp fp16 needs a CUDA device; use bf16 on CPUs")
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_bf16() and size >= CPU_BF16_MIN_SIZE:
        return torch.bfloat16
    return None


def choose_memory_format(cfg: TrainConfig) -> torch.memory_format:
    return torch.contiguous_format if cfg.memory_format == "contiguous" else torch.channels_last
