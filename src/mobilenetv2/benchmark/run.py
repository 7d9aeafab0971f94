"""`run_benchmark`: build the variants, time them in interleaved rounds, report.

Measures batch-1 latency (median and p90 over every timed run) and large-batch throughput
of torchvision's eager MobileNetV2 (the baseline), our `InferenceSession` paths (fp32, bf16,
int8 on each backend) and ONNX Runtime / OpenVINO run directly on the same ONNX files
(`benchmark.variants`), interleaved (`benchmark.timing`), against the CPU's estimated fp32
roofline (`benchmark.report`).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mobilenetv2.benchmark.report import make_report
from mobilenetv2.benchmark.timing import time_interleaved
from mobilenetv2.benchmark.variants import (
    benchmark_model,
    build_variants,
    file_sizes,
    versions,
)
from mobilenetv2.runtime.cpu import cpu_peak

__all__ = ["BenchmarkConfig", "run_benchmark"]


@dataclass(frozen=True)
class BenchmarkConfig:
    """What to run.

    Attributes:
        weights: `--weights` spec; None benchmarks width `width` with random weights whose
            BatchNorm statistics are re-estimated (`benchmark.variants.random_model`).
        size: Input side.
        threads: Intra-op threads for every runtime (default: the usable cores).
        rounds: Interleaved rounds.
        runs: Timed batch-1 runs per variant and round.
        batch: Throughput batch size.
        batch_runs: Timed throughput batches per variant and round.
        width: Width of the random-weight model (and of the torchvision baseline).
        cpu_ghz: Clock for the roofline (default: detected; /proc/cpuinfo may report the
            base clock rather than the sustained all-core one).
        phone: Also time LiteRT and ExecuTorch (XNNPACK) on our .tflite / .pte exports
            where installed (ExecuTorch's lowering adds a minute or two).
        padding: "symmetric" or "tf_same" to time the model with its stride-2 padding
            switched (same weights; `benchmark.variants.benchmark_model`); None keeps it.
    """

    weights: str | None = None
    size: int = 224
    threads: int | None = None
    rounds: int = 10
    runs: int = 10
    batch: int = 32
    batch_runs: int = 2
    width: float = 1.0
    cpu_ghz: float | None = None
    phone: bool = True
    padding: str | None = None

    @classmethod
    def quick(cls, **kw: Any) -> BenchmarkConfig:
        """A seconds-long smoke run (tests, checks): small model, few rounds."""
        # One thread: on a loaded 2-core machine a 2-thread OpenMP region waits for a
        # descheduled thread at every layer (measured: 2.4 s instead of 7 ms per image).
        base = {"size": 64, "rounds": 2, "runs": 3, "batch": 4, "batch_runs": 1,
                "width": 0.35, "threads": 1, "phone": False}
        base.update(kw)
        return cls(**base)


def run_benchmark(cfg: BenchmarkConfig, progress: bool = True) -> dict[str, Any]:
    """Run the interleaved benchmark; returns the JSON-ready report (`benchmark.report`)."""
    from mobilenetv2.profile import profile

    threads = cfg.threads or len(os.sched_getaffinity(0))
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    x1 = rng.standard_normal((1, 3, cfg.size, cfg.size), dtype=np.float32)
    xb = rng.standard_normal((cfg.batch, 3, cfg.size, cfg.size), dtype=np.float32)
    try:
        model, what = benchmark_model(cfg.weights, cfg.width, cfg.size, cfg.padding)
        with tempfile.TemporaryDirectory(prefix="mobilenetv2-bench-") as tmp:
            variants = build_variants(model, cfg.size, cfg.width, threads, Path(tmp),
                                      phone=cfg.phone)
            sizes = file_sizes(Path(tmp))
            timings = time_interleaved({v.name: v.run for v in variants}, x1, xb,
                                       rounds=cfg.rounds, runs=cfg.runs,
                                       batch_runs=cfg.batch_runs, progress=progress)
    finally:
        torch.set_num_threads(prev_threads)
    flops = 2 * profile(model.config, cfg.size).madds
    report = make_report(asdict(cfg), variants, timings, what, threads, flops,
                         cpu_peak(threads, cfg.cpu_ghz), versions())
    report["file_sizes"] = sizes
    return report
