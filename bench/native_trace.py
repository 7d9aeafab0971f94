"""Where the native engine's threads spend a batch-1 forward (issue 13, parallel efficiency).

    python bench/native_trace.py [--runs 200] [--threads 2] [--padding symmetric] [--so PATH]

Runs the width-1.0 224x224 model at batch 1 in the engine's trace mode (`run(x, out, 2)`:
per thread and per layer, the seconds of work and of waiting at barriers) and prints, per
layer, the median work of each thread, the median barrier wait, and the median imbalance
(the slower thread's work minus the faster's, per run); then totals and the barrier count.
A thread's wait is its partner's extra work plus the barrier's own cost (wake-up, cache-line
transfer), so `wait - imbalance` estimates that cost. `rs tN`: the row-slices thread N
computed in the row-split blocks (an output row's share of one channel slice of the
expansion; pairs of threads claim them as they go, so a slower thread takes fewer).
`--handicap-us U` makes the last thread busy-wait U microseconds before each block, as a
slower core would, to see the rows move.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from mobilenetv2.config import ModelConfig
from mobilenetv2.model.classifier import MobileNetV2
from mobilenetv2.runtime.cpu import cpu_info
from mobilenetv2.runtime.native import _spec


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--padding", default="symmetric", choices=("symmetric", "tf_same"))
    p.add_argument("--isa", default="avx2")
    p.add_argument("--so", help="an engine build to load instead of the package's")
    p.add_argument("--handicap-us", type=int, default=0,
                   help="the last thread waits this long before each block")
    args = p.parse_args()
    if args.so:
        from native_ab import load_build  # bench/, this script's folder, is on sys.path

        mod = load_build(args.so)
    else:
        from mobilenetv2.runtime.native import _engine as mod
    torch.manual_seed(0)
    model = MobileNetV2(ModelConfig(width=1.0, padding=args.padding)).eval()
    with torch.no_grad():
        blocks, head, fc, tf_same = _spec(model)
    engine = mod.Engine(blocks, head, fc, args.threads, args.isa, tf_same)
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    out = np.empty((1, 1000), np.float32)
    for _ in range(20):
        engine.run(x, out)
    # [run][thread][layer][work, wait]
    tr = np.array([engine.run(x, out, 2, args.handicap_us) for _ in range(args.runs)])
    tr = tr.reshape(args.runs, args.threads, -1, 3)
    work, wait, rows = tr[..., 0] * 1e3, tr[..., 1] * 1e3, tr[..., 2]
    imb = work.max(axis=1) - work.min(axis=1)  # [run][layer]
    names = ["stem+b0", *(f"b{i}" for i in range(1, len(blocks))), "head+fc"]
    print(f"CPU: {cpu_info().model}; ISA {args.isa}; {args.threads} threads; width 1.0, "
          f"224x224, padding {args.padding}; medians of {args.runs} traced forwards (ms)")
    hdr = " ".join(f"work t{t}" for t in range(args.threads))
    hdr += " " + " ".join(f"wait t{t}" for t in range(args.threads))
    hdr += " " + " ".join(f"{f'rs t{t}':>7s}" for t in range(args.threads))
    print(f"{'layer':8s} {hdr} {'imbal':>7s}")
    med = lambda a: np.median(a, axis=0)  # noqa: E731
    mw, mq, mi, mr = med(work), med(wait), med(imb), med(rows)
    for i, n in enumerate(names):
        ws = " ".join(f"{mw[t, i]:7.3f}" for t in range(args.threads))
        qs = " ".join(f"{mq[t, i]:7.3f}" for t in range(args.threads))
        rs = " ".join(f"{mr[t, i]:7.0f}" for t in range(args.threads))
        print(f"{n:8s} {ws} {qs} {rs} {mi[i]:7.3f}")
    tot_work = work.sum(axis=2)  # [run][thread]
    tot_wait = wait.sum(axis=2)
    fwd = (work + wait).sum(axis=2).max(axis=1)
    print(f"total work per thread (median): "
          f"{', '.join(f'{v:.3f}' for v in np.median(tot_work, axis=0))} ms; "
          f"wait: {', '.join(f'{v:.3f}' for v in np.median(tot_wait, axis=0))} ms; "
          f"forward (traced) median {np.median(fwd):.3f} p90 {np.percentile(fwd, 90):.3f} ms")
    print(f"sum of per-layer imbalance (median run): {np.median(imb.sum(axis=1)):.3f} ms; "
          f"parallel efficiency (sum of work / (threads x forward)): "
          f"{np.median(tot_work.sum(axis=1) / (args.threads * fwd)):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
