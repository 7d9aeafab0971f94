"""The native engine beside ONNX Runtime and OpenVINO at their best settings (issue 13 targets).

    python bench/native_peers.py [--width 1.0] [--size 224] [--threads 2] [--rounds 7]
        [--padding symmetric|tf_same] [--weights SPEC]

Same weights in every runtime (our ONNX export of the model), batch 1 latency and batch 32
throughput, interleaved rounds (each round runs every runtime in turn, one untimed call
before its timed ones so the previous runtime's spinning threads do not count against it);
the figure is the median over rounds. Peers' settings, stated:
- ONNX Runtime: ORT_ENABLE_ALL graph optimizations, `threads` intra-op threads, 1 inter-op;
- OpenVINO: static input shape per batch size, INFERENCE_PRECISION_HINT=f32, PERFORMANCE_HINT
  LATENCY at both batch sizes (the batch runs as one synchronous request, which THROUGHPUT
  gives only one stream of the cores: half the speed on 2 cores), INFERENCE_NUM_THREADS=threads;
- native: `NativeEngine(model, threads)`, the ISA it picks.
Prints the CPU model and ISA with the figures.
"""

from __future__ import annotations

import argparse
import statistics
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
from mobilenetv2.runtime.native import NativeEngine, cpu_isas


def _first_output(request):
    return lambda x: request.infer({0: x})[0]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--runs", type=int, default=10, help="timed batch-1 runs per round")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--padding", default="symmetric", choices=("symmetric", "tf_same"))
    p.add_argument("--weights", help="weights spec (default: random, BN re-estimated)")
    args = p.parse_args()
    if args.weights:
        from mobilenetv2.weights import load_weights

        model = load_weights(args.weights).eval()
    else:
        model = MobileNetV2(ModelConfig(width=args.width, padding=args.padding)).eval()
        reestimate_bn(model, steps=2, batch_size=4, size=args.size)
    tmp = tempfile.TemporaryDirectory(prefix="native-bench-")
    onnx = export_onnx(model, Path(tmp.name) / "m.onnx", input_size=args.size).path
    rng = np.random.default_rng(0)
    x1 = rng.standard_normal((1, 3, args.size, args.size), dtype=np.float32)
    xb = rng.standard_normal((args.batch, 3, args.size, args.size), dtype=np.float32)
    native = NativeEngine(model, threads=args.threads)
    ref = native(x1)
    runners: dict[str, dict[int, object]] = {"native": {1: native, args.batch: native}}
    if backend_installed("onnxruntime"):
        sess = onnxruntime_session(onnx, args.threads)
        name = sess.get_inputs()[0].name
        ort = lambda x: sess.run(None, {name: x})[0]  # noqa: E731
        runners["onnxruntime"] = {1: ort, args.batch: ort}
    if backend_installed("openvino"):
        runners["openvino"] = {
            b: _first_output(openvino_compile(onnx, "fp32", args.threads, plain=True,
                                              shape=x.shape, hint=hint).create_infer_request())
            for b, x, hint in ((1, x1, "LATENCY"), (args.batch, xb, "LATENCY"))}
    for peer, run in runners.items():  # same weights: the same logits
        err = float(np.abs(np.asarray(run[1](x1)) - ref).max())
        assert err < 1e-3 * max(1.0, float(np.abs(ref).max())), (peer, err)
    times: dict[tuple[str, int], list[float]] = {}
    names = list(runners)
    for r in range(args.rounds):
        for peer in names[r % len(names):] + names[:r % len(names)]:
            for batch, x, n in ((1, x1, args.runs), (args.batch, xb, 1)):
                run = runners[peer][batch]
                run(x)  # untimed
                t0 = time.perf_counter()
                for _ in range(n):
                    run(x)
                times.setdefault((peer, batch), []).append((time.perf_counter() - t0) / n)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"CPU: {cpu_info().model}; native ISA {native.isa} (this CPU runs "
          f"{', '.join(cpu_isas())}); {args.threads} threads; width {args.width}, "
          f"{args.size}x{args.size}, padding {model.config.padding}; median of {args.rounds} "
          f"interleaved rounds\n")
    print(f"| runtime | batch 1 latency (ms) | batch {args.batch} throughput (img/s) |")
    print("|---|---:|---:|")
    for peer in names:
        print(f"| {peer} | {med[(peer, 1)] * 1e3:.2f} | "
              f"{args.batch / med[(peer, args.batch)]:.0f} |")
    peers = [n for n in names if n != "native"]
    if peers:
        b1 = min(med[(n, 1)] for n in peers)
        bt = min(med[(n, args.batch)] for n in peers)
        print(f"\nnative vs best peer: batch 1 latency ratio {med[('native', 1)] / b1:.2f} "
              f"(target <= 0.8), batch {args.batch} throughput ratio "
              f"{bt / med[('native', args.batch)]:.2f} (target >= 1.2)")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
