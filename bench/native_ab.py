"""A/B of native engine builds in one process: which kernel change wins (issue 13).

    python bench/native_ab.py base=/path/old/_engine.so new=/path/new/_engine.so \\
        [--rounds 25] [--runs 10] [--threads 2] [--padding symmetric] [--profile] \\
        [--precision fp32|int8] [--batch N]

Each `name=path.so` is a build of `_engine.cpp` (copy the .so aside before rebuilding); a
suffix `,VAR:value` sets an environment variable before that engine's first run (for knobs
read when its pool or plan is made). The builds run the same random-weight width-1.0 224x224
model on the same image, in interleaved rounds (each round: one untimed call, then `runs`
timed batch-1 calls per build), so outside load hits every build alike; on a shared machine
compare p10/min and, with `--profile`, the per-block best times (thread 0's clock: since the
threads claim rows and channels as they go, a block can look short in a run where thread 0
came to it late and the other thread had done most of it, so read the sum with care). Their
logits are checked against the first build's first. `--precision int8`: the int8 engine on
our QDQ export of that model (BatchNorm re-estimated on random images, calibrated on 16
random N(0, 1) images), at its default `fuse_rows`; `--batch N` also times one batch of N
per build and round (images/s).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import time

import numpy as np
import torch

from mobilenetv2.config import ModelConfig
from mobilenetv2.model.classifier import MobileNetV2
from mobilenetv2.runtime.cpu import cpu_info
from mobilenetv2.runtime.native import _spec


def load_build(path: str):
    """A separate module object per .so path (CPython keys extension modules by path)."""
    spec = importlib.util.spec_from_file_location("mobilenetv2.runtime.native._engine", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _int8_maker(model, args):
    """`make(module)`: an Int8Engine of `module` on our QDQ export of `model`."""
    import tempfile
    from pathlib import Path

    from mobilenetv2.export.onnx import export_onnx
    from mobilenetv2.model.fuse import reestimate_bn
    from mobilenetv2.quant.ptq import quantize_onnx
    from mobilenetv2.runtime.native.int8 import FUSE_ROWS, int8_ops

    reestimate_bn(model, steps=1, batch_size=2, size=224, seed=0)
    work = Path(tempfile.mkdtemp(prefix="native-ab-"))
    export_onnx(model.eval(), work / "m.onnx")
    calib = np.random.default_rng(1).standard_normal((16, 3, 224, 224), dtype=np.float32)
    ops, classes, _ = int8_ops(quantize_onnx(work / "m.onnx", work / "m.int8.onnx", calib))
    # --isa names an fp32 ISA by default ("avx2", "avx512"); int8 has its own kernel names
    isa = args.isa if args.isa in ("avx512vnni", "avxvnni") else "avx2"
    return lambda module: module.Int8Engine(ops, args.threads, isa, classes, False, FUSE_ROWS)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("variants", nargs="+", help="name=path.so[,VAR:value...]")
    p.add_argument("--rounds", type=int, default=25)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--padding", default="symmetric", choices=("symmetric", "tf_same"))
    p.add_argument("--isa", default="avx2")
    p.add_argument("--profile", action="store_true", help="also per-block best times (fp32)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "int8"))
    p.add_argument("--batch", type=int, default=0, help="also time a batch of this size")
    args = p.parse_args()
    if args.profile and args.precision == "int8":
        p.error("--profile times the fp32 engine's blocks; the int8 engine has no profile")
    torch.manual_seed(0)
    model = MobileNetV2(ModelConfig(width=1.0, padding=args.padding)).eval()
    if args.precision == "int8":
        make = _int8_maker(model, args)
    else:
        with torch.no_grad():
            blocks, head, fc, tf_same = _spec(model)

        def make(module):
            return module.Engine(blocks, head, fc, args.threads, args.isa, tf_same)
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    xb = np.random.default_rng(1).standard_normal((max(args.batch, 1), 3, 224, 224)).astype(
        np.float32)
    engines, ref = {}, None
    for v in args.variants:
        name, rest = v.split("=", 1)
        path, *env = rest.split(",")
        for key in [k for k in os.environ if k.startswith("MOBILENETV2_NATIVE_")]:
            del os.environ[key]
        for kv in env:
            key, value = kv.split(":", 1)
            os.environ[key] = value
        engine = make(load_build(path))
        out = np.empty((1, 1000), np.float32)
        engine.run(x, out)  # makes the pool and the plan under this variant's environment
        ref = out if ref is None else ref
        print(f"{name}: max |logit - first build's| = {float(np.abs(out - ref).max()):.3g}")
        engines[name] = engine
    print(f"CPU: {cpu_info().model}; ISA {args.isa}; {args.threads} threads; width 1.0, "
          f"224x224, padding {args.padding}; {args.rounds} interleaved rounds x {args.runs}")
    times = {n: [] for n in engines}
    prof = {n: [] for n in engines}
    per_s = {n: [] for n in engines}
    out = np.empty((1, 1000), np.float32)
    outb = np.empty((len(xb), 1000), np.float32)
    for _ in range(args.rounds):
        for name, engine in engines.items():
            engine.run(x, out)
            for _ in range(args.runs):
                t = time.perf_counter()
                engine.run(x, out)
                times[name].append(time.perf_counter() - t)
            if args.batch:
                t = time.perf_counter()
                engine.run(xb, outb)
                per_s[name].append(len(xb) / (time.perf_counter() - t))
            if args.profile:
                for _ in range(5):
                    prof[name].append(np.diff([0.0, *engine.run(x, out, True)]))
    for name, t in times.items():
        ms = np.array(t) * 1e3
        batch = f"  batch {args.batch} {np.median(per_s[name]):.0f} img/s" if args.batch else ""
        print(f"{name:10s} median {np.median(ms):.3f} ms  p10 {np.percentile(ms, 10):.3f}  "
              f"p90 {np.percentile(ms, 90):.3f}  min {ms.min():.3f}{batch}")
    if args.profile:
        names = ["stem+b0", *(f"b{i}" for i in range(1, len(blocks))), "head+fc"]
        best = {n: np.min(np.array(p), axis=0) * 1e3 for n, p in prof.items()}
        print("block    " + " ".join(f"{n:>8s}" for n in engines))
        for i, label in enumerate(names):
            print(f"{label:8s} " + " ".join(f"{best[n][i]:8.3f}" for n in engines))
        print("sum      " + " ".join(f"{best[n].sum():8.3f}" for n in engines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
