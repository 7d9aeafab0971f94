"""How much one runtime slows the next one timed in the same process (issue 13's race).

    python bench/runtime_interference.py [--rounds 8] [--width 1.0] [--size 224] [--no-phone]

Part 1: after three ONNX Runtime calls, the process's CPU time (getrusage, every thread) in
each 5 ms of wall clock while the calling thread sleeps: what ONNX Runtime's worker threads
use after its call has returned. Part 2: each runtime at batch 1 (fp32, the same weights,
each at the settings bench/native_peers.py gives it), timed after 150 ms idle and right after
three calls of each other runtime, with one untimed call between (what the race and the
benchmark timer did before `runtime.race.wait_for_idle_threads`): the median over `rounds`
of the mean of 10 calls, in ms. This is what made the timers wait for idle threads.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from mobilenetv2.config import ModelConfig
from mobilenetv2.export.onnx import export_onnx
from mobilenetv2.model.classifier import MobileNetV2
from mobilenetv2.model.fuse import reestimate_bn
from mobilenetv2.runtime.backends import backend_installed, onnxruntime_session, openvino_compile
from mobilenetv2.runtime.cpu import cpu_info
from mobilenetv2.runtime.native import NativeEngine
from mobilenetv2.runtime.race import process_cpu_seconds


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-phone", action="store_true", help="skip LiteRT and ExecuTorch")
    args = p.parse_args()
    args.precision, args.batch = "fp32", 1  # what native_peers._phone_runners reads
    from native_peers import _first_output, _phone_runners  # bench/, this script's folder

    model = MobileNetV2(ModelConfig(width=args.width)).eval()
    reestimate_bn(model, steps=2, batch_size=4, size=args.size)
    work = Path(tempfile.mkdtemp(prefix="interference-"))
    onnx = export_onnx(model, work / "m.onnx", input_size=args.size).path
    x = np.random.default_rng(0).standard_normal((1, 3, args.size, args.size), dtype=np.float32)
    runners = {"native": NativeEngine(model, threads=args.threads)}
    sess = onnxruntime_session(onnx, args.threads)
    name = sess.get_inputs()[0].name
    runners["onnxruntime"] = lambda a: sess.run(None, {name: a})[0]
    if backend_installed("openvino"):
        runners["openvino"] = _first_output(openvino_compile(
            onnx, "fp32", args.threads, plain=True, shape=x.shape,
            hint="LATENCY").create_infer_request())
    if not args.no_phone:
        runners.update({k: v[1] for k, v in _phone_runners(model, work, args, None).items()})
    for run in runners.values():
        for _ in range(3):
            run(x)
    print(f"CPU: {cpu_info().model}; {args.threads} threads; width {args.width}, "
          f"{args.size}x{args.size}, batch 1, fp32")

    for _ in range(3):
        runners["onnxruntime"](x)
    used = []
    for _ in range(30):
        before = process_cpu_seconds()
        time.sleep(0.005)
        used.append((process_cpu_seconds() - before) * 1e3)
    print("CPU ms used by the process per 5 ms of sleep after ONNX Runtime: "
          + " ".join(f"{v:.1f}" for v in used))

    names = list(runners)
    res: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for target in names:
            for before in ["idle", *(n for n in names if n != target)]:
                if before == "idle":
                    time.sleep(0.15)
                else:
                    for _ in range(3):
                        runners[before](x)
                runners[target](x)  # untimed
                t0 = time.perf_counter()
                for _ in range(10):
                    runners[target](x)
                res.setdefault((target, before), []).append((time.perf_counter() - t0) / 10)
    print(f"\n| timed \\ right after | idle 150 ms | {' | '.join(names)} |")
    print("|---|---:|" + "---:|" * len(names))
    for target in names:
        cells = [f"{np.median(res[(target, b)]) * 1e3:.2f}" if (target, b) in res else "-"
                 for b in ["idle", *names]]
        print(f"| {target} | {' | '.join(cells)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
