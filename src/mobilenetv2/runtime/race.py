"""`race`: which of several runners is fastest on one input, measured so that it cannot be
fooled by another runtime's spinning threads or by one noisy run (issue 13). The session
(`runtime.session`) races each new input shape once; `runtime.race_cache` remembers winners
across processes.
"""

from __future__ import annotations

import logging
import resource
import time
from collections.abc import Callable, Mapping

import numpy as np

from mobilenetv2.runtime.backends import Runner

__all__ = ["IDLE_WAIT_MAX_S", "process_cpu_seconds", "race", "wait_for_idle_threads",
           "waits_until_busy"]

log = logging.getLogger(__name__)

IDLE_WAIT_MAX_S = 0.5  # wait_for_idle_threads gives up after this long


def process_cpu_seconds() -> float:
    """CPU seconds of every thread of this process, to the microsecond (getrusage)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def wait_for_idle_threads(
    max_s: float = IDLE_WAIT_MAX_S, *, quantum_s: float = 0.005, busy_fraction: float = 0.2,
    cpu_seconds: Callable[[], float] = process_cpu_seconds,
    sleep: Callable[[float], None] = time.sleep,
) -> float:
    """Sleep until no other thread of this process uses the CPU (at most `max_s`), so the
    next runtime timed starts on idle cores. Returns the seconds waited.

    A runtime's worker threads keep spinning after its call returns. ONNX Runtime 1.32's did
    for about 70 ms on a 2-core Zen 3 (4-8 ms of CPU time per 5 ms of wall clock, then 0.1),
    and whatever ran next there was 1.3-1.6x slower: the native engine 6.70 -> 10.71 ms,
    OpenVINO 8.52 -> 10.23 ms, XNNPACK 7.9 -> 10.5 ms. An untimed run or two does not cover
    70 ms. While this thread sleeps, the process's CPU time grows only by what other threads
    use, so the wait ends at the first `quantum_s` in which they used less than
    `busy_fraction` of it. Threads that stay busy (the caller's own work, not a runtime's
    leftover spinning) end the wait at `max_s`; callers then stop waiting (race).
    """
    waited = 0.0
    while waited < max_s:
        before = cpu_seconds()
        sleep(quantum_s)
        waited += quantum_s
        if cpu_seconds() - before < busy_fraction * quantum_s:
            break
    return waited


def waits_until_busy(settle: Callable[[], float | None]) -> Callable[[], float | None]:
    """`settle`, until one of its waits reaches IDLE_WAIT_MAX_S; no waits after that. A wait
    that long means some thread of the caller's stays busy, not a runtime's leftover
    spinning, and every later turn would spend the limit too (race, benchmark.timing)."""
    on = [True]

    def call() -> float | None:
        if not on[0]:
            return None
        waited = settle()
        if waited is not None and waited >= IDLE_WAIT_MAX_S:
            log.info("other threads of this process stay busy; timing without waiting for them")
            on[0] = False
        return waited

    return call


def race(
    runners: Mapping[str, Runner], x: np.ndarray, *, rounds: int = 5, runs: int = 3,
    clock: Callable[[], float] = time.perf_counter,
    settle: Callable[[], float | None] = wait_for_idle_threads,
) -> tuple[str, dict[str, float]]:
    """The fastest of `runners` on `x`; returns the winner and each runner's typical time
    (the median over rounds of its mean time per run).

    Two ways a race is fooled, and what this one does about each (issue 13: a one-warm-up,
    best-of-3 race picked ONNX Runtime at 9.3 ms over OpenVINO at 5.8 ms):
    - A runtime's worker threads keep spinning for a while after its call returns, so the
      runtime timed right after it runs on contended cores. Before each runner's turn the
      race waits until the other threads are idle (`settle`: wait_for_idle_threads), then
      gives it an untimed run, and the order rotates every round.
    - One run can be slowed by anything else on the machine. Each round times `runs` runs
      and the rounds' median decides, so a single outlier, either way, moves nothing.
    One warm-up run each first (OpenVINO compiles there); a runner that fails it (a phone
    file made for another input size) sits the race out, unless all fail. If a wait reaches
    its limit, the race stops waiting (waits_until_busy).
    """
    settle = waits_until_busy(settle)
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
            settle()  # the previous runtime's threads stop spinning on no one's time
            run(x)  # untimed: first-call effects of this runner's own
            t0 = clock()
            for _ in range(runs):
                run(x)
            times[name].append((clock() - t0) / runs)
    typical = {name: float(np.median(t)) for name, t in times.items()}
    return min(typical, key=typical.get), typical
