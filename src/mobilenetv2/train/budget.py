"""How a training process splits the machine's cores between compute threads and loader
workers (issue 14).

A loader worker is a whole process: it decodes and augments JPEGs on a core of its own, and
while it does, that core is not running the convolutions. On up to 2 cores there is no core
to spare: loading in-line costs the step the decode and augmentation time (about 3 ms per
400x300 JPEG at 224x224 on a Zen 3 core, 4% of a batch-32 step on 2 cores, measured with
`--profile-steps`), and a worker would take the same CPU time from the cores the math uses,
plus a third busy thread on two cores (measured in docs/BENCHMARKS.md: no clear gain beyond
the noise, at most the 4% it could hide). On larger machines a few workers keep the batches
coming and the rest of the cores compute, so threads + workers never exceed the cores unless
the user asks.

`plan_budget` is a pure function of (cores, requested workers, requested threads): what a
user asks for explicitly is kept, only "auto" values are filled in.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["Budget", "available_cores", "plan_budget"]

# Above this many cores, one loader worker per this many cores (at most MAX_WORKERS).
CORES_PER_WORKER = 4
MAX_WORKERS = 8


@dataclass(frozen=True)
class Budget:
    """Compute threads (`torch.set_num_threads`) and loader worker processes."""

    threads: int
    workers: int
    cores: int

    @property
    def oversubscribed(self) -> bool:
        return self.threads + self.workers > self.cores

    def describe(self) -> str:
        return (f"{self.threads} compute thread(s) + {self.workers} loader worker(s) on "
                f"{self.cores} core(s)")


def available_cores() -> int:
    """The cores this process may run on (its affinity mask, e.g. under taskset or a
    container's cpuset), not the machine's count."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def plan_budget(cores: int, workers: int = -1, threads: int = 0) -> Budget:
    """Split `cores` between compute threads and loader workers.

    Args:
        cores: Cores available to this process (per process under torchrun: divide first).
        workers: Requested loader workers; -1 picks (0 on up to 2 cores, else one per
            `CORES_PER_WORKER` cores, at most `MAX_WORKERS`).
        threads: Requested compute threads; 0 picks the cores the workers leave (at least 1).

    Returns the budget; explicit requests are kept even when they oversubscribe the cores
    (`Budget.oversubscribed` tells the caller to warn).
    """
    if cores < 1:
        raise ValueError(f"cores must be >= 1, got {cores}")
    if workers < -1 or threads < 0:
        raise ValueError(f"workers must be >= -1 and threads >= 0, got {workers}, {threads}")
    if workers == -1:
        if cores <= 2:
            workers = 0
        elif threads:
            # The user fixed the math's share: the loader gets what is left, at least one.
            workers = max(1, min(MAX_WORKERS, cores - threads))
        else:
            workers = min(MAX_WORKERS, max(1, cores // CORES_PER_WORKER))
    if threads == 0:
        threads = max(1, cores - workers)
    return Budget(threads=threads, workers=workers, cores=cores)
