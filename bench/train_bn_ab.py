"""The fused training BatchNorm + ReLU6 (issue 14, `mobilenetv2.model.bnact`) against torch's
BatchNorm2d + ReLU6: one training step of MobileNetV2 1.0 at 224x224, batch 32, channels_last
fp32 (what the tuner picks at 224 on an AVX2 CPU), SGD, in the same process. The two paths
alternate per round (A B, B A, ...; MOBILENETV2_FUSED_BN switches them), so load from other
processes hits both alike; medians of per-step milliseconds.

    python bench/train_bn_ab.py                 # 224 b32, 6 rounds of 2 steps each
    python bench/train_bn_ab.py --profile       # + torch.profiler self-CPU top ops per path
    python bench/train_bn_ab.py --size 32 --batch 128 --width 0.5 --small-input   # digits net
    python bench/train_bn_ab.py --switch MOBILENETV2_FUSED_DW   # our depthwise conv on/off,
                                                                # the fused BN on in both
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

from mobilenetv2 import MobileNetV2, ModelConfig
from mobilenetv2.model import bnact
from mobilenetv2.runtime.cpu import cpu_info
from mobilenetv2.train.malloc import retain_freed_memory


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--small-input", action="store_true")
    p.add_argument("--nchw", action="store_true", help="NCHW instead of channels_last")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--pool", choices=("omp", "own"), default=None,
                   help="the fused kernel's threads: torch's OpenMP team (default) or its own")
    p.add_argument("--switch", default="MOBILENETV2_FUSED_BN",
                   choices=("MOBILENETV2_FUSED_BN", "MOBILENETV2_FUSED_DW"),
                   help="the variable the A/B turns off (FUSED_BN=0 turns off both kernels)")
    args = p.parse_args()
    off_name = "torch BN" if args.switch == "MOBILENETV2_FUSED_BN" else "torch depthwise"
    if args.pool and bnact.AVAILABLE:
        bnact._bnact.set_pool(args.pool)
    # as the CLI's training does (train.malloc): without it, page faults on the large
    # activations cost both paths alike and hide the difference
    note = retain_freed_memory()
    info = cpu_info()
    isa = "avx512f" if "avx512f" in info.flags else "avx2+fma" if "fma" in info.flags else "sse"
    print(f"CPU: {info.model} ({isa}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; {note}; {bnact.describe()}")
    fmt = torch.contiguous_format if args.nchw else torch.channels_last
    torch.manual_seed(0)
    cfg = ModelConfig(width=args.width, small_input=args.small_input, resolution=args.size,
                      num_classes=1000 if args.size >= 128 else 10)
    model = MobileNetV2(cfg).train().to(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(args.batch, 3, args.size, args.size).to(memory_format=fmt)
    y = torch.randint(0, cfg.num_classes, (args.batch,))

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def run(fused: bool, steps: int) -> float:
        os.environ[args.switch] = "1" if fused else "0"
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        return (time.perf_counter() - t0) / steps * 1e3

    run(True, 1), run(False, 1)  # warm-up
    ms: dict[bool, list[float]] = {True: [], False: []}
    for r in range(args.rounds):
        for fused in ((True, False) if r % 2 == 0 else (False, True)):
            ms[fused].append(run(fused, args.steps))
    on, off = statistics.median(ms[True]), statistics.median(ms[False])
    print(f"{args.size}x{args.size} batch {args.batch} width {args.width} "
          f"{'NCHW' if args.nchw else 'channels_last'} fp32, {args.rounds} interleaved rounds "
          f"of {args.steps} steps, median ms/step: {off_name} {off:.0f}, ours {on:.0f} "
          f"({off / on:.2f}x)")
    if args.profile:
        for fused in (False, True):
            os.environ[args.switch] = "1" if fused else "0"
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                step()
            print(f"--- {'ours' if fused else off_name}: one step, self CPU")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
