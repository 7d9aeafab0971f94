"""Per-block table of the native engine (issue 13): where the time goes and how far from peak.

    python bench/native_blocks.py [--width 1.0] [--size 224] [--threads 2] [--repeats 30]

For each fused inverted residual (block 0 includes the stem; the last row is the head conv +
global pool + classifier): MAdds, the bytes it must move at least (its bottleneck input and
output once, its weights once: the fused schedule never writes the expanded tensor), the
best-of-`repeats` wall time (`NativeEngine.profile`, every thread meeting at a barrier after
each block), achieved GFLOP/s (2 FLOPs per MAdd) and that as a fraction of this CPU's fp32
peak (`runtime.cpu.cpu_peak`). Random weights: the time does not depend on their values.
"""

from __future__ import annotations

import argparse

import numpy as np

from mobilenetv2.config import ModelConfig
from mobilenetv2.model.classifier import MobileNetV2
from mobilenetv2.runtime.cpu import cpu_info, cpu_peak
from mobilenetv2.runtime.native import NativeEngine, cpu_isas


def block_costs(model: MobileNetV2, size: int) -> list[tuple[str, int, int]]:
    """(name, MAdds, minimum bytes moved) per fused block, then the head, at `size`."""
    rows, h = [], size
    arch = model.arch
    h = -(-h // arch.stem_stride)
    for b in arch.blocks:
        ho = -(-h // b.stride)
        madds = (h * h * b.in_channels * b.hidden_channels if b.has_expand else 0)
        madds += ho * ho * b.hidden_channels * 9 + ho * ho * b.hidden_channels * b.out_channels
        weights = (b.in_channels * b.hidden_channels if b.has_expand else 0) + \
            b.hidden_channels * 9 + b.hidden_channels * b.out_channels
        moved = 4 * (h * h * b.in_channels + ho * ho * b.out_channels + weights)
        name = f"blocks.{b.index}"
        if b.index == 0:  # the stem is its expansion: it reads the image
            madds += h * h * 27 * arch.stem_channels
            moved += 4 * (3 * size * size + 27 * arch.stem_channels - h * h * b.in_channels)
            name = "stem+blocks.0"
        rows.append((name, madds, moved))
        h = ho
    last = arch.blocks[-1].out_channels
    madds = h * h * last * arch.head_channels + arch.head_channels * arch.num_classes
    moved = 4 * (h * h * last + last * arch.head_channels + arch.head_channels *
                 arch.num_classes)
    rows.append(("head+pool+classifier", madds, moved))
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=30)
    args = p.parse_args()
    model = MobileNetV2(ModelConfig(width=args.width)).eval()
    engine = NativeEngine(model, threads=args.threads)
    x = np.random.default_rng(0).standard_normal((1, 3, args.size, args.size),
                                                 dtype=np.float32)
    best = None
    for _ in range(args.repeats):
        t = engine.profile(x)
        best = t if best is None else [min(a, b) for a, b in zip(best, t)]
    peak = cpu_peak(args.threads)
    print(f"CPU: {cpu_info().model}; native ISA {engine.isa} (this CPU runs "
          f"{', '.join(cpu_isas())}); {args.threads} threads; {peak.describe()}")
    print(f"width {args.width}, {args.size}x{args.size}, batch 1, best of {args.repeats}; "
          f"working memory {engine.memory_bytes:,} B\n")
    print("| block | MAdds | bytes moved (min) | time (ms) | GFLOP/s | of fp32 peak |")
    print("|---|---:|---:|---:|---:|---:|")
    total_m = total_b = 0
    for (name, madds, moved), t in zip(block_costs(model, args.size), best):
        total_m += madds
        total_b += moved
        gf = 2 * madds / t / 1e9
        print(f"| {name} | {madds / 1e6:.1f} M | {moved / 1e3:.0f} kB | {t * 1e3:.3f} | "
              f"{gf:.1f} | {gf / peak.gflops:.0%} |")
    t = sum(best)
    gf = 2 * total_m / t / 1e9
    print(f"| **total** | {total_m / 1e6:.1f} M | {total_b / 1e3:.0f} kB | {t * 1e3:.3f} | "
          f"{gf:.1f} | {gf / peak.gflops:.0%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
