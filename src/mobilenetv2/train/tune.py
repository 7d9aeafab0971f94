"""The precision and memory layout a training step uses on this machine, chosen by measuring
(issue 14), not by a rule fitted on one CPU.

AMX, AVX512-BF16 and AVX2-only CPUs disagree about what is fastest: bf16 autocast pays a
cast around every convolution and BatchNorm and only native bf16 dot products repay it, and
how much depends on the work per image (`train.amp`); channels_last is oneDNN's native
layout for the depthwise and 1x1 convolutions, but whether it beats NCHW over a whole training
step (BatchNorm, ReLU6 and their backward passes included) differs between CPUs. So
`choose_setup` times a few training steps of each candidate on a copy of the run's own model,
at its input size and batch, and keeps the fastest:

- fp32 channels_last, fp32 NCHW: always;
- bf16 channels_last, and bf16 with the stride-2 depthwise convolutions kept in fp32 (their
  strided 3x3 taps are the layers where bf16 kernels were slowest, so the mixed candidate can
  beat both pure ones): only on CPUs with native bf16 dot products (`runtime.cpu.
  cpu_has_bf16`: AVX512-BF16 or AMX). Elsewhere oneDNN emulates bf16 with conversions around
  fp32 arithmetic, which cannot be faster than fp32; `--amp bf16` still forces it.

`--amp` and `--memory-format` override: a fixed value removes the other candidates, and when
both are fixed nothing is measured. The choice is cached in `$MOBILENETV2_CACHE/
train_tune.json`, keyed by the CPU (model name and ISA flags), the torch version, the
thread count, the model's configuration, the input size and the batch, so a machine measures
each shape once. CUDA keeps the fixed rule of `train.amp` (bf16 where supported, else fp16,
channels_last).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mobilenetv2.config import TrainConfig
from mobilenetv2.model import bnact
from mobilenetv2.runtime.cpu import cpu_has_bf16, cpu_info
from mobilenetv2.train.amp import choose_amp, choose_memory_format
from mobilenetv2.train.malloc import allocator_note

__all__ = ["Candidate", "TuneChoice", "candidates", "choose_setup", "keep_fp32",
           "pick_fastest", "time_steps"]

log = logging.getLogger(__name__)

CACHE_NAME = "train_tune.json"
WARMUP_STEPS = 1   # oneDNN builds its kernels (and the allocator its pools) on the first step
TIMED_STEPS = 3
# Each candidate is measured this many times, in alternating order (A B, B A), and keeps its
# fastest: a burst of other work on a shared machine during one candidate's steps must not
# decide a choice that is cached for good. (It did: a cached digits entry had channels_last
# at 7484 ms per step against 585 ms for NCHW; measured again, 459 vs 542 ms.)
MEASURE_ROUNDS = 2


@dataclass(frozen=True)
class Candidate:
    """One way to run the training step."""

    name: str
    amp_dtype: torch.dtype | None
    memory_format: torch.memory_format
    fp32_stride2_dw: bool = False   # stride-2 depthwise convolutions outside autocast


FP32_CL = Candidate("fp32 channels_last", None, torch.channels_last)
FP32_NCHW = Candidate("fp32 NCHW", None, torch.contiguous_format)
BF16_CL = Candidate("bf16 channels_last", torch.bfloat16, torch.channels_last)
BF16_CL_DW32 = Candidate("bf16 channels_last, stride-2 depthwise fp32", torch.bfloat16,
                         torch.channels_last, fp32_stride2_dw=True)
ALL = (FP32_CL, FP32_NCHW, BF16_CL, BF16_CL_DW32)


@dataclass(frozen=True)
class TuneChoice:
    """What the run uses, and how it was decided."""

    candidate: Candidate
    how: str                            # "measured", "cached", "fixed" (options / CUDA rule)
    timings: dict[str, float] | None = None   # seconds per step, per candidate name

    def describe(self) -> str:
        if not self.timings:
            return f"{self.candidate.name} ({self.how})"
        times = ", ".join(f"{k} {1000 * v:.0f} ms" for k, v in self.timings.items())
        return f"{self.candidate.name} ({self.how}: {times} per step)"


def candidates(amp: str, memory_format: str, native_bf16: bool) -> list[Candidate]:
    """The CPU candidates the options and the CPU allow, the default (fp32 channels_last)
    first, so it wins ties.

    Args:
        amp: `TrainConfig.amp` ("auto", "off", "bf16"; "fp16" is CUDA-only).
        memory_format: `TrainConfig.memory_format` ("auto", "channels_last", "contiguous").
        native_bf16: The CPU has native bf16 dot products.
    """
    if amp == "fp16":
        raise ValueError("amp fp16 needs a CUDA device; use bf16 on CPUs")
    out = []
    for c in ALL:
        if amp == "off" and c.amp_dtype is not None:
            continue
        if amp == "bf16" and c.amp_dtype is None:
            continue
        if amp == "auto" and c.amp_dtype is not None and not native_bf16:
            continue
        if memory_format == "channels_last" and c.memory_format != torch.channels_last:
            continue
        if memory_format == "contiguous" and c.memory_format != torch.contiguous_format:
            continue
        out.append(c)
    if not out:  # --amp bf16 --memory-format contiguous: no tuned candidate, run as asked
        out.append(Candidate("bf16 NCHW", torch.bfloat16, torch.contiguous_format))
    return out


def pick_fastest(timings: dict[str, float], order: Sequence[str]) -> str:
    """The fastest candidate; within 2% of it, the earliest in `order` (the defaults come
    first: a difference inside the noise of a few steps is no reason to leave them)."""
    best = min(timings.values())
    return next(name for name in order if name in timings and timings[name] <= best * 1.02)


def time_steps(step: Callable[[], None], steps: int = TIMED_STEPS, warmup: int = WARMUP_STEPS,
               clock: Callable[[], float] = time.perf_counter) -> float:
    """Seconds per call of `step`: the median of `steps` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t = clock()
        step()
        times.append(clock() - t)
    return sorted(times)[len(times) // 2]


def keep_fp32(model: nn.Module) -> list[Any]:
    """Run the stride-2 depthwise convolutions (with their BatchNorm and ReLU6) outside
    autocast, in fp32: hooks, so the model's modules and state_dict keys do not change.
    Returns the hook handles (`handle.remove()` undoes it)."""
    from mobilenetv2.model.blocks import InvertedResidual

    handles: list[Any] = []
    stack: list[Any] = []

    def enter(mod: nn.Module, args: tuple) -> tuple:
        ctx = torch.autocast(args[0].device.type, enabled=False)
        ctx.__enter__()
        stack.append(ctx)
        return (args[0].float(), *args[1:])

    def leave(mod: nn.Module, args: tuple, out: Any) -> Any:
        stack.pop().__exit__(None, None, None)
        return out

    for m in model.modules():
        if isinstance(m, InvertedResidual) and m.spec.stride == 2:
            handles.append(m.depthwise.register_forward_pre_hook(enter))
            handles.append(m.depthwise.register_forward_hook(leave))
    return handles


def choose_setup(tc: TrainConfig, device: torch.device, model: nn.Module, size: int,
                 batch: int, measure: Callable[[Candidate], float] | None = None,
                 cache: Path | None = None, broadcast: Callable[[Any], Any] | None = None,
                 ) -> TuneChoice:
    """The precision and layout for training `model` at `size` x `size`, batch `batch`.

    Args:
        measure: Seconds per training step of a candidate (default: `measure_step` on a copy
            of `model`); tests inject fake timings here.
        cache: The cache file (default `$MOBILENETV2_CACHE/train_tune.json`); None with
            `measure` given: no cache.
        broadcast: Under DDP, sends rank 0's choice (a candidate name) to every rank, so the
            ranks agree; only rank 0 measures.
    """
    if device.type != "cpu":
        cfg = model.config if hasattr(model, "config") else None
        dtype = choose_amp(tc, device, cfg, size)  # type: ignore[arg-type]
        fmt = choose_memory_format(tc)
        return TuneChoice(Candidate("cuda rule", dtype, fmt), "fixed")
    cands = candidates(tc.amp, tc.memory_format, cpu_has_bf16())
    if len(cands) == 1:
        return TuneChoice(cands[0], "fixed")
    by_name = {c.name: c for c in cands}
    if broadcast is not None and not _is_rank0():
        return TuneChoice(by_name[broadcast(None)], "rank 0's")
    if cache is None and measure is None:
        from mobilenetv2.weights.hub import cache_dir

        cache = cache_dir() / CACHE_NAME
    key = _key(model, size, batch, [c.name for c in cands])
    saved = _read(cache).get(key) if cache is not None else None
    if saved and saved.get("choice") in by_name:
        choice = TuneChoice(by_name[saved["choice"]], "cached", saved.get("timings"))
    else:
        measure = measure or (lambda c: measure_step(model, c, size, batch))
        timings: dict[str, float] = {}
        for r in range(MEASURE_ROUNDS):
            for c in cands if r % 2 == 0 else cands[::-1]:
                timings[c.name] = min(timings.get(c.name, float("inf")), float(measure(c)))
        best = pick_fastest(timings, [c.name for c in cands])
        choice = TuneChoice(by_name[best], "measured", timings)
        if cache is not None:
            _write(cache, key, {"choice": best, "timings": timings,
                                "about": _about(model, size, batch)})
    if broadcast is not None:
        broadcast(choice.candidate.name)
    return choice


def measure_step(model: nn.Module, cand: Candidate, size: int, batch: int,
                 clock: Callable[[], float] = time.perf_counter) -> float:
    """Seconds per training step (forward, cross-entropy, backward, SGD) of a copy of `model`
    run as `cand` says, on a synthetic batch; the model and the global RNG are untouched."""
    with torch.random.fork_rng(devices=[]):
        net = copy.deepcopy(model).train().to(memory_format=cand.memory_format)
        if cand.fp32_stride2_dw:
            keep_fp32(net)
        params = [p for p in net.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=1e-6, momentum=0.9)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(batch, 3, size, size, generator=g).to(memory_format=cand.memory_format)
        classes = getattr(net, "num_classes", 10)
        y = torch.randint(0, classes, (batch,), generator=g)

        def step() -> None:
            with torch.autocast("cpu", dtype=cand.amp_dtype, enabled=cand.amp_dtype is not None):
                out = net(x)
            loss = nn.functional.cross_entropy(out.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss.item()

        return time_steps(step, clock=clock)


def _is_rank0() -> bool:
    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0


def _about(model: nn.Module, size: int, batch: int) -> dict[str, Any]:
    info = cpu_info()
    cfg = model.config.to_dict() if hasattr(model, "config") else type(model).__name__
    return {"cpu": info.model,
            "flags": hashlib.sha1(" ".join(sorted(info.flags)).encode()).hexdigest()[:12],
            "torch": torch.__version__, "threads": torch.get_num_threads(), "model": cfg,
            # the allocator changes what a step costs (train.malloc): measured per setting
            "malloc": allocator_note(),
            # so does the fused training BatchNorm (model.bnact, channels_last fp32 only)
            "bn": bnact.describe(),
            "frozen": sum(not p.requires_grad for p in model.parameters()),
            "size": size, "batch": batch}


def _key(model: nn.Module, size: int, batch: int, names: list[str]) -> str:
    # "rounds": entries measured in one round (before MEASURE_ROUNDS) are measured again
    about = {**_about(model, size, batch), "candidates": names, "rounds": MEASURE_ROUNDS}
    return hashlib.sha1(json.dumps(about, sort_keys=True, default=str).encode()).hexdigest()


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}   # no cache yet, or a damaged one: measure again


def _write(path: Path, key: str, entry: dict[str, Any]) -> None:
    data = _read(path)
    data[key] = entry
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{id(entry)}.tmp")
        tmp.write_text(json.dumps(data, indent=1, default=str))
        tmp.replace(path)
    except OSError as e:  # a read-only cache costs a re-measurement next time, nothing more
        log.warning("could not cache the training setup in %s: %s", path, e)
