"""Where a training step's time goes (issue 14): `--profile-steps N` times the phases of N
optimizer steps on the real training path (data wait, host-to-device copy, forward, backward,
optimizer, EMA, logging, checkpoint) and logs a table of milliseconds per step.

The timer is a context manager per phase. Disabled (the default) it is a shared no-op, so the
loop pays one attribute lookup per phase. On CUDA each phase boundary synchronizes the device
(kernels are asynchronous; without it a phase would be charged to whichever phase first waits
on the GPU); this is why it is off unless asked for.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

__all__ = ["PHASES", "StepTimer"]

PHASES = ("data", "h2d", "forward", "backward", "optimizer", "ema", "logging", "checkpoint")
_NAMES = {"data": "data wait", "h2d": "host-to-device"}


class StepTimer:
    """Accumulates wall time per phase over the first `steps` timed steps after `skip`
    warm-up steps (oneDNN builds its kernels on the first steps)."""

    def __init__(self, steps: int = 0, skip: int = 1, device: torch.device | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.steps = steps
        self.skip = skip
        self.clock = clock
        self._sync = (torch.cuda.synchronize if device is not None and device.type == "cuda"
                      else (lambda: None))
        self.totals = dict.fromkeys(PHASES, 0.0)
        self.seen = 0       # steps finished (warm-up included)
        self._t_step = 0.0
        self.step_total = 0.0
        self.reported = False

    @property
    def active(self) -> bool:
        return self.skip <= self.seen < self.skip + self.steps

    @property
    def done(self) -> bool:
        return self.steps > 0 and self.seen >= self.skip + self.steps

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if not self.active:
            yield
            return
        self._sync()
        t = self.clock()
        try:
            yield
        finally:
            self._sync()
            self.totals[name] += self.clock() - t

    def start_step(self) -> None:
        if self.active:
            self._t_step = self.clock()

    def end_step(self) -> None:
        if self.active:
            self.step_total += self.clock() - self._t_step
        self.seen += 1

    def table(self, batch: int | None = None) -> str:
        """Milliseconds per step per phase, and the share of the step each takes."""
        n = max(1, min(self.steps, self.seen - self.skip))
        total = self.step_total / n
        lines = [f"per-step time over {n} steps (after {self.skip} warm-up):",
                 f"  {'phase':<16}{'ms/step':>10}{'share':>8}"]
        for name in PHASES:
            ms = 1000 * self.totals[name] / n
            lines.append(f"  {_NAMES.get(name, name):<16}{ms:>10.1f}"
                         f"{100 * self.totals[name] / n / max(total, 1e-12):>7.1f}%")
        other = total - sum(self.totals.values()) / n
        lines.append(f"  {'other':<16}{1000 * other:>10.1f}"
                     f"{100 * other / max(total, 1e-12):>7.1f}%")
        rate = f", {batch / total:.1f} img/s" if batch and total > 0 else ""
        lines.append(f"  {'step':<16}{1000 * total:>10.1f}{100.0:>7.1f}%{rate}")
        return "\n".join(lines)


