"""The deployment half of `make demo`: export, quantize, verify, and compare fp32 vs int8.

From one trained checkpoint: the BN-folded fp32 ONNX model (verified against PyTorch), the
int8 QDQ model (per-channel weights, calibrated on the training split), both run through the
fastest backend `InferenceSession` picks for their precision, with top-1 accuracy on the
evaluation set and batch-1 latency measured in interleaved rounds (fp32, int8, fp32, ...)
so both numbers see the same machine state.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["DeployRow", "deploy_demo", "format_rows"]


@dataclass
class DeployRow:
    """One precision's artifact and measurements."""

    precision: str
    path: Path
    backend: str
    top1: float
    latency_ms: float
    verified: str


def deploy_demo(
    weights: str,
    out_dir: str | os.PathLike,
    *,
    data: str = "digits",
    calib_images: int = 256,
    rounds: int = 10,
    runs: int = 20,
    threads: int | None = None,
) -> list[DeployRow]:
    """Export + quantize `weights` into `out_dir` and measure fp32 and int8 side by side.

    Args:
        weights: A `--weights` spec (e.g. `runs/demo/model.safetensors`).
        out_dir: Where `model.fp32.onnx` and `model.int8.onnx` go.
        data: "digits" or a labelled image folder: calibration (train split) and accuracy
            (test split).
        rounds: Interleaved latency rounds; `runs` batch-1 runs per precision and round.
    """
    from mobilenetv2.quant.ptq import labelled_arrays, quantize_ptq
    from mobilenetv2.runtime.session import InferenceSession
    from mobilenetv2.weights import load_weights

    model = load_weights(weights)
    out = Path(out_dir) / "model"
    result = quantize_ptq(model, out, data, calib_images=calib_images, evaluate=data)
    x, y = labelled_arrays(data, model.meta.preprocessing, split="test",
                           labels=model.meta.labels)
    sessions = {
        "fp32": InferenceSession(result.float_path, precision="fp32", threads=threads),
        "int8": InferenceSession(result.int8_path, precision="int8", threads=threads),
    }
    top1 = {}
    for p, sess in sessions.items():
        pred = np.concatenate([sess(x[i:i + 64]) for i in range(0, len(x), 64)]).argmax(1)
        top1[p] = float((pred == y).mean() * 100) if y is not None else float("nan")
    one = x[:1]
    for sess in sessions.values():
        for _ in range(5):
            sess(one)
    per_round: dict[str, list[float]] = {p: [] for p in sessions}
    for _ in range(rounds):
        for p, sess in sessions.items():
            times = []
            for _ in range(runs):
                t0 = time.perf_counter()
                sess(one)
                times.append(time.perf_counter() - t0)
            per_round[p].append(statistics.median(times))
    rows = []
    for p, sess in sessions.items():
        verified = ("ONNX Runtime vs PyTorch within 1e-4" if p == "fp32" else
                    f"top-1 agrees with fp32 on {result.agreement:.1f}% of test images")
        rows.append(DeployRow(p, Path(sess.onnx_path), sess.backend, top1[p],
                              statistics.median(per_round[p]) * 1e3, verified))
    for sess in sessions.values():
        sess.close()
    return rows


def format_rows(rows: list[DeployRow]) -> str:
    """Side-by-side table of the deploy rows."""
    lines = [f"{'precision':<10}{'backend':<13}{'top-1 %':>9}{'batch-1 ms':>12}  "
             f"{'file':<28}verified"]
    for r in rows:
        lines.append(f"{r.precision:<10}{r.backend:<13}{r.top1:>9.2f}{r.latency_ms:>12.3f}  "
                     f"{r.path.name:<28}{r.verified}")
    if len(rows) == 2:
        a, b = rows
        speed = a.latency_ms / b.latency_ms
        # A 32x32 model is so small that int8's (de)quantization overhead can outweigh its
        # faster arithmetic: say which way it went instead of printing "0.9x faster".
        verdict = (f"{speed:.2f}x faster" if speed >= 1 else f"{1 / speed:.2f}x slower")
        lines.append(f"int8 vs fp32: {b.top1 - a.top1:+.2f} top-1 points, "
                     f"{verdict} at batch 1")
    return "\n".join(lines)
