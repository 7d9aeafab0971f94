"""ONNX Runtime latency of a dynamic-H/W tf_same export: separate `Pad` ops vs `auto_pad`.

Random width-1.0 weights with tf_same padding, batch 1, 224x224, 2 threads, interleaved
rounds (the faster-first order alternates), median of 15 rounds of 10 runs. The `Pad`
variant is the export made without ONNX Runtime at hand (the computed Pads stay).
Run: `python bench/onnx_same_pad.py` (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch

from mobilenetv2 import MobileNetV2, ModelConfig
from mobilenetv2.export import export_onnx
from mobilenetv2.runtime.backends import onnxruntime_session


def main() -> None:
    torch.manual_seed(0)
    model = MobileNetV2(ModelConfig(padding="tf_same")).eval()
    tmp = Path(tempfile.mkdtemp(prefix="mobilenetv2-bench-"))
    paths = {"auto_pad": export_onnx(model, tmp / "auto.onnx", dynamic_hw=True,
                                     input_size=224).path}
    sys.modules["onnxruntime"] = None  # type: ignore[assignment]
    paths["Pad"] = export_onnx(model, tmp / "pad.onnx", dynamic_hw=True, input_size=224,
                               verify=False).path
    del sys.modules["onnxruntime"]
    for name, path in paths.items():
        ops = [n.op_type for n in onnx.load(str(path)).graph.node]
        print(f"{name}: {ops.count('Pad')} Pad ops, {len(ops)} nodes")
    x = np.random.rand(1, 3, 224, 224).astype(np.float32)
    sessions = {k: onnxruntime_session(p, 2, plain=True) for k, p in paths.items()}
    feeds = {k: {s.get_inputs()[0].name: x} for k, s in sessions.items()}
    outs = [s.run(None, feeds[k])[0] for k, s in sessions.items()]
    print(f"max |diff| between the two: {float(abs(outs[0] - outs[1]).max()):.2e}")
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for r in range(15):
        for k in list(sessions) if r % 2 else list(sessions)[::-1]:
            for _ in range(3):  # untimed: the other session's threads settle
                sessions[k].run(None, feeds[k])
            t0 = time.perf_counter()
            for _ in range(10):
                sessions[k].run(None, feeds[k])
            times[k].append((time.perf_counter() - t0) / 10 * 1e3)
    for k, v in times.items():
        print(f"{k}: median {statistics.median(v):.2f} ms, min {min(v):.2f} ms")


if __name__ == "__main__":
    main()
