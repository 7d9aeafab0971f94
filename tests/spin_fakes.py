"""Fake runtimes whose worker threads keep spinning after a call, on a fake clock: for the
tests of the race (test_runtime.py) and of the benchmark's timer (test_bench.py)."""

from __future__ import annotations

import numpy as np


def spinning_runners(clock, spin_s: float):
    """"a" (3 ms a run) leaves worker threads spinning for `spin_s` after each call, as ONNX
    Runtime does (~70 ms measured); "b" takes 2 ms a run alone and 5 ms while they spin.
    `clock.now` is the fake time the runs advance. Also returns the process's CPU time (what
    getrusage counts: it grows while a's threads spin) and a sleep, both on the fake clock,
    for `runtime.race.wait_for_idle_threads`."""
    state = {"until": 0.0, "cpu": 0.0}

    def run_a(x: np.ndarray) -> np.ndarray:
        clock.now += 0.003 * len(x)
        state["until"] = clock.now + spin_s
        return np.zeros((len(x), 10), np.float32)

    def run_b(x: np.ndarray) -> np.ndarray:
        clock.now += (0.005 if clock.now < state["until"] else 0.002) * len(x)
        return np.zeros((len(x), 10), np.float32)

    def sleep(seconds: float) -> None:
        state["cpu"] += max(0.0, min(clock.now + seconds, state["until"]) - clock.now)
        clock.now += seconds

    return {"a": run_a, "b": run_b}, (lambda: state["cpu"]), sleep
