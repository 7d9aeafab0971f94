"""How a training step runs on its device: the device itself, automatic mixed precision (the
autocast dtype) and the memory format, chosen per device and input size.

(Named `amp`, not `precision`: in this package "precision" is the numeric precision of an
inference session, `runtime`'s fp32 / bf16 / int8.)

Training runs on a CPU no longer use this rule: `train.tune` measures the candidates on the
machine (issue 14). The rule stays for CUDA, for `bench/train_throughput.py`, and as the
documented reason why bf16 is only a candidate on CPUs with native bf16.

The rule for `amp="auto"` (measured with `bench/train_throughput.py`, docs/BENCHMARKS.md):

- CUDA: bf16 autocast where the GPU supports it (Ampere and later), else fp16 with a
  GradScaler.
- CPU: bf16 autocast only when the CPU has native bf16 dot products (`runtime.cpu`: the
  ISA flags AVX512-BF16 or AMX) *and* the network does at least `CPU_BF16_MIN_MADDS`
  multiply-adds per image (the exact count of `mobilenetv2.profile`). Autocast pays a cast
  around every convolution and BatchNorm; only enough arithmetic per image repays it.
  Measured on 2 Zen cores, training step speed of bf16 autocast over fp32 (both
  channels_last): width 1.0 at 32x32 (6M MAdds) 0.43x, width 0.5 at 64x64 (8M) 0.66x,
  the digits network (width 0.5, small_input, 32x32: 28M) 1.34x, width 1.0 at 224x224
  (301M) 1.82x. So the rule is about work per image, not input size: the small-input
  digits network at 32x32 does more arithmetic than the ImageNet network at 64x64.

`memory_format="auto"` is channels_last: oneDNN's and cuDNN's depthwise and 1x1 kernels
run natively in NHWC, where NCHW pays a reorder around every convolution.
"""

from __future__ import annotations

import torch

from mobilenetv2.config import ModelConfig, TrainConfig
from mobilenetv2.runtime.cpu import cpu_has_bf16

__all__ = ["CPU_BF16_MIN_MADDS", "choose_amp", "choose_memory_format", "cpu_has_bf16",
           "resolve_device"]

# Between the slowest bf16 case measured (8M multiply-adds per image, 0.66x) and the
# fastest fp32-losing one (28M, 1.34x); see the module docstring.
CPU_BF16_MIN_MADDS = 20_000_000


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


def choose_amp(
    cfg: TrainConfig, device: torch.device, model: ModelConfig, size: int
) -> torch.dtype | None:
    """The autocast dtype for training `model` at `size` x `size` on `device`, or None for
    fp32."""
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
    if device.type == "cpu" and cpu_has_bf16() and _madds(model, size) >= CPU_BF16_MIN_MADDS:
        return torch.bfloat16
    return None


def choose_memory_format(cfg: TrainConfig) -> torch.memory_format:
    return torch.contiguous_format if cfg.memory_format == "contiguous" else torch.channels_last


def _madds(model: ModelConfig, size: int) -> int:
    from mobilenetv2.profile import profile

    return profile(model, max(size, model.min_input_size)).madds
