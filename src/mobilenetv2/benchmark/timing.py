"""Timing in interleaved rounds, so that every variant sees the same machine state.

The machine this project is developed on switches for tens of seconds between a quiet state
and one 1.4-1.7x slower, so no variant is timed in a block of its own: every variant runs in
every round, in a new random order each round, and ratios are computed per round
(`benchmark.report`). A cyclic rotation would keep every variant behind the same
predecessor, and a predecessor matters: ONNX Runtime's worker threads keep spinning after a
run and slow whatever runs next on a 2-core CPU by up to 1.8x (measured: OpenVINO bf16
1.2 ms -> 2.1 ms). They spin for about 70 ms, more than a couple of untimed runs cover, so
before each variant's turn the timer also waits until the process's other threads are idle
(`runtime.race.wait_for_idle_threads`), then gives it untimed runs: the previous runtime's
spinning threads and cache contents are a cost that belongs to no one.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mobilenetv2.runtime.race import wait_for_idle_threads, waits_until_busy

__all__ = ["Timings", "time_interleaved"]

WARMUP_RUNS = 3  # first-call allocations; OpenVINO compiles a shape on its first run
UNTIMED_RUNS = 2  # before each variant's timed runs in every round (module docstring)


@dataclass
class Timings:
    """One variant's measurements.

    Attributes:
        batch1: Seconds of each timed batch-1 run, one list per round.
        images_per_s: Throughput on the large batch, one value per round (empty when no
            large batch was timed).
    """

    batch1: list[list[float]] = field(default_factory=list)
    images_per_s: list[float] = field(default_factory=list)


def time_interleaved(
    runners: Mapping[str, Callable[[np.ndarray], Any]],
    x1: np.ndarray,
    xb: np.ndarray | None = None,
    *,
    rounds: int,
    runs: int,
    batch_runs: int = 1,
    seed: int = 0,
    progress: bool = False,
    clock: Callable[[], float] = time.perf_counter,
    settle: Callable[[], float | None] = wait_for_idle_threads,
) -> dict[str, Timings]:
    """Time every runner on `x1` (and on the batch `xb`) in `rounds` interleaved rounds.

    Args:
        runners: name -> function running one input batch.
        x1: The batch-1 input; `runs` timed runs per runner and round.
        xb: A large batch timed `batch_runs` times per runner and round (throughput).
        seed: Seeds the per-round order.
        clock: The timer (a test passes a fake one).
        settle: Called before each variant's turn (module docstring), until one of its
            waits reaches its limit (`runtime.race.waits_until_busy`).
    """
    settle = waits_until_busy(settle)
    from tqdm import tqdm

    out = {name: Timings() for name in runners}
    for run in runners.values():
        for _ in range(WARMUP_RUNS):
            run(x1)
        if xb is not None:
            run(xb)
    shuffle = random.Random(seed)
    for _round in tqdm(range(rounds), desc="bench rounds", disable=not progress):
        order = list(runners)
        shuffle.shuffle(order)
        for name in order:
            run = runners[name]
            settle()
            for _ in range(UNTIMED_RUNS):
                run(x1)
            times = []
            for _ in range(runs):
                t0 = clock()
                run(x1)
                times.append(clock() - t0)
            out[name].batch1.append(times)
        if xb is None:
            continue
        for name in order:
            settle()
            t0 = clock()
            for _ in range(batch_runs):
                runners[name](xb)
            out[name].images_per_s.append(len(xb) * batch_runs / (clock() - t0))
    return out
