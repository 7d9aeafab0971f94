"""Training throughput on CPU: our default training path against the plain recipe users copy
from torchvision's references/classification/train.py (eager, NCHW, fp32), in the same run.

Shapes: 224x224 batch 32 (MobileNetV2 1.0, ImageNet-style) and 32x32 batch 128 (the digits
network: width 0.5, small_input). "ours" is `mobilenetv2.train.engine.train_one_epoch` with the
memory format and autocast that `train.amp` picks for that shape on this CPU; "plain" is
the reference loop (forward, cross-entropy, zero_grad, backward, SGD step, loss.item()).
Variants run in interleaved rounds (A B, then B A, ...) and each round gives a paired ratio;
the table reports medians, so load from other processes on a shared machine cancels out as
far as it can.

    python bench/train_throughput.py            # full: the numbers for docs/BENCHMARKS.md
    python bench/train_throughput.py --quick    # a fast check of the script
    python bench/train_throughput.py --probe    # bf16 vs fp32 (both channels_last) per size
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from mobilenetv2 import MobileNetV2, ModelConfig
from mobilenetv2.config import TrainConfig
from mobilenetv2.runtime.cpu import cpu_has_bf16
from mobilenetv2.train.amp import choose_amp, choose_memory_format
from mobilenetv2.train.distributed import DistInfo
from mobilenetv2.train.engine import StepContext, TrainState, train_one_epoch

# (input side, model, batch). The two shapes on the default network (width 1.0), and
# the digits network of `make demo` (width 0.5, small_input) at 32x32, whose large early
# feature maps (no stride in the stem and first stride-2 stage) make it the harder case.
ROWS = (
    (224, ModelConfig(width=1.0, num_classes=1000), 32),
    (32, ModelConfig(width=1.0, resolution=32, num_classes=10), 128),
    (32, ModelConfig(width=0.5, small_input=True, resolution=32, num_classes=10), 128),
)
SHAPES = {size: (cfg, batch) for size, cfg, batch in reversed(ROWS)}  # size -> digits net


def make_batches(size: int, batch: int, classes: int, steps: int) -> list:
    g = torch.Generator().manual_seed(size)
    return [(torch.randn(batch, 3, size, size, generator=g),
             torch.randint(0, classes, (batch,), generator=g), []) for _ in range(steps)]


def plain_runner(cfg: ModelConfig, batches: list):
    """torchvision references' train_one_epoch, minus logging: eager, NCHW, fp32."""
    torch.manual_seed(0)
    model = MobileNetV2(cfg).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=4e-5)

    def run() -> None:
        for x, y, _ in batches:
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss.item()
    return run


def ours_runner(cfg: ModelConfig, batches: list, amp: str = "auto",
                memory_format: str = "auto"):
    """Our engine with the per-shape defaults of `train.amp`."""
    from mobilenetv2.train.optim import build_optimizer

    torch.manual_seed(0)
    tc = TrainConfig(amp=amp, memory_format=memory_format, lr=0.01)
    device = torch.device("cpu")
    fmt = choose_memory_format(tc)
    dtype = choose_amp(tc, device, cfg, batches[0][0].shape[-1])
    model = MobileNetV2(cfg).to(memory_format=fmt)
    opt = build_optimizer(model, tc, 0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    ctx = StepContext(device=device, num_classes=cfg.num_classes, amp_dtype=dtype,
                      memory_format=fmt, label_smoothing=0.1, mixup_alpha=0.0,
                      cutmix_alpha=0.0, grad_accum=1, clip_grad_norm=0.0, seed=0,
                      steps_per_epoch=len(batches), max_steps=0, dist=DistInfo(),
                      progress=False)

    def run() -> None:
        train_one_epoch(model, batches, opt, sched, scaler, ctx, TrainState())
    return run, dtype, fmt


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def compare(a, b, images: int, rounds: int) -> tuple[float, float, float, list[float]]:
    """Interleaved rounds; returns median img/s of a and b, the median paired ratio b/a,
    and the per-round ratios."""
    a(), b()  # warm-up (oneDNN primitive caches, allocator)
    ta, tb, ratios = [], [], []
    for r in range(rounds):
        if r % 2 == 0:
            x, y = timed(a), timed(b)
        else:
            y, x = timed(b), timed(a)
        ta.append(images / x)
        tb.append(images / y)
        ratios.append(x / y)
    return statistics.median(ta), statistics.median(tb), statistics.median(ratios), ratios


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="few steps and rounds (a check)")
    p.add_argument("--probe", action="store_true", help="bf16 vs fp32 per input size")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    p.add_argument("--sizes", type=int, nargs="+", choices=sorted(SHAPES), default=None,
                   help="which input sides to measure (default: every row)")
    p.add_argument("--md", type=Path, help="also write the markdown table to this file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    steps, rounds = (2, 3) if args.quick else (4, 7)
    cpu = torch.backends.cpu.get_cpu_capability()
    lines = [
        f"CPU: {cpu}, native bf16: {cpu_has_bf16()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; {rounds} interleaved rounds of {steps} steps, "
        "medians.", "",
    ]
    if args.probe:
        lines += ["| input | batch | fp32 channels_last img/s | bf16 channels_last img/s | "
                  "bf16 / fp32 |", "|---|---|---|---|---|"]
        for size in (32, 64, 96, 128, 160, 224):
            cfg = ModelConfig(width=1.0, num_classes=1000) if size >= 64 else SHAPES[32][0]
            batch = 32 if size >= 64 else 128
            batches = make_batches(size, batch, cfg.num_classes, steps)
            a = ours_runner(cfg, batches, amp="off")[0]
            b = ours_runner(cfg, batches, amp="bf16")[0]
            ia, ib, ratio, _ = compare(a, b, batch * steps, rounds)
            lines.append(f"| {size} | {batch} | {ia:.1f} | {ib:.1f} | {ratio:.2f}x |")
            print(lines[-1], file=sys.stderr)
    else:
        lines += ["| input | batch | model | plain (NCHW fp32) img/s | ours img/s | "
                  "our path | speed-up (median of paired rounds) | per-round ratios |",
                  "|---|---|---|---|---|---|---|---|"]
        for size, cfg, batch in ROWS:
            if args.sizes and size not in args.sizes:
                continue
            batches = make_batches(size, batch, cfg.num_classes, steps)
            plain = plain_runner(cfg, batches)
            ours, dtype, fmt = ours_runner(cfg, batches)
            path = ("channels_last" if fmt == torch.channels_last else "NCHW") + (
                f" + {str(dtype).replace('torch.', '')} autocast" if dtype else " fp32")
            ip, io, ratio, ratios = compare(plain, ours, batch * steps, rounds)
            model = f"width {cfg.width}" + (", small_input" if cfg.small_input else "")
            lines.append(f"| {size}x{size} | {batch} | {model} | {ip:.1f} | {io:.1f} | {path} "
                         f"| **{ratio:.2f}x** | {', '.join(f'{r:.2f}' for r in ratios)} |")
            print(lines[-1], file=sys.stderr)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.md:
        args.md.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
