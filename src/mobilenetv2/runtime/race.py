"""`race`: which of several runners is fastest on one input, measured so that it cannot be
fooled by another runtime's spinning threads or by one noisy run (issue 13). The session
(`runtime.session`) races each new input shape once; `runtime.race_cache` remembers winners
across processes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

import numpy as np

from mobilenetv2.runtime.backends import Runner

__all__ = ["race"]

log = logging.getLogger(__name__)


def race(
    runners: Mapping[str, Runner], x: np.ndarray, *, rounds: int = 5, runs: int = 3,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[str, dict[str, float]]:
    """The fastest of `runners` on `x`; returns the winner and each runner's typical time
    (the median over rounds of its mean time per run).

    Two ways a race is fooled, and what this one does about each (issue 13: a one-warm-up,
    best-of-3 race picked ONNX Runtime at 9.3 ms over OpenVINO at 5.8 ms):
    - A runtime's worker threads keep spinning for a while after its call returns, so the
      runtime timed right after it runs on contended cores. Each runner gets an untimed run
      right before its timed ones, and the order rotates every round, so no runner always
      follows the same other one.
    - One run can be slowed by anything else on the machine. Each round times `runs` runs
      and the rounds' median decides, so a single outlier, either way, moves nothing.
    One warm-up run each first (OpenVINO compiles there); a runner that fails it (a phone
    file made for another input size) sits the race out, unless all fail.
    """
    names, failed = [], {}
    for name in runners:
        try:
            runners[name](x)
        except Exception as e:  # noqa: BLE001 (any runtime's error: it sits this shape out)
            failed[name] = e
        else:
            names.append(name)
    if not names:
        raise next(iter(failed.values()))
    for name, e in failed.items():
        # e.g. a .pte program lowered for one input size, given another
        log.info("%s cannot run shape %s (%s: %s); not raced", name, x.shape,
                 type(e).__name__, e)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            run = runners[name]
            run(x)  # untimed: the previous runtime's threads settle on this one's time
            t0 = clock()
            for _ in range(runs):
                run(x)
            times[name].append((clock() - t0) / runs)
    typical = {name: float(np.median(t)) for name, t in times.items()}
    return min(typical, key=typical.get), typical
