"""The training loop (DESIGN example 11): `train_one_epoch`, a plain function over a model, a
loader and a small context; DDP, mixed precision, channels_last, gradient accumulation,
clipping and frozen BatchNorm statistics are switches of that context, and the forward pass
and loss of a micro-batch are the task's (`tasks.Task.step`). Its partner, the evaluation
loop, is the task's `evaluate`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm import tqdm

from mobilenetv2.errors import UserError
from mobilenetv2.tasks import Task
from mobilenetv2.tasks.classify import ClassifyTask
from mobilenetv2.train.distributed import DistInfo, all_reduce_sum, unwrap
from mobilenetv2.train.ema import ModelEma
from mobilenetv2.train.steptimer import StepTimer

__all__ = ["NonFiniteLoss", "StepContext", "TrainState", "keep_frozen_bn", "train_one_epoch"]

log = logging.getLogger(__name__)

# The progress bar's figures are refreshed every this many steps: formatting them is cheap,
# but redrawing the bar every step of a fast (small-input) run is not free.
BAR_EVERY = 5


class NonFiniteLoss(UserError):
    """The loss became NaN or infinite; training stops before the weights are touched."""


@dataclass
class TrainState:
    """Counters that, with the RNG states, fix where a resumed run continues."""

    epoch: int = 0
    step: int = 0                 # optimizer steps taken in total
    epoch_step: int = 0           # optimizer steps taken in the current epoch
    best_top1: float = -1.0       # the best `Metrics.score` so far (top-1, mIoU or mAP)
    # loss*n, correct, n (images), total (what `correct` counts: images, pixels ...)
    sums: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0])
    skipped: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"epoch": self.epoch, "step": self.step, "epoch_step": self.epoch_step,
                "best_top1": self.best_top1, "sums": list(self.sums),
                "skipped": list(self.skipped)}

    @classmethod
    def from_dict(cls, d: dict) -> TrainState:
        return cls(epoch=int(d["epoch"]), step=int(d["step"]), epoch_step=int(d["epoch_step"]),
                   best_top1=float(d["best_top1"]), sums=_sums(d["sums"]),
                   skipped=list(d["skipped"]))


@dataclass
class StepContext:
    """What a training step needs besides model, data and optimizer."""

    device: torch.device
    num_classes: int
    amp_dtype: torch.dtype | None
    memory_format: torch.memory_format
    label_smoothing: float
    mixup_alpha: float
    cutmix_alpha: float
    grad_accum: int
    clip_grad_norm: float
    seed: int
    steps_per_epoch: int
    max_steps: int
    dist: DistInfo
    progress: bool = True
    frozen_bn: tuple[nn.Module, ...] = ()  # parts whose BatchNorm layers stay in eval mode
    task: Task = field(default_factory=ClassifyTask)  # loss and targets of this run's task
    # The batch on the device -> the network's input (uint8 -> normalized float), or None.
    normalize: Callable[[torch.Tensor], torch.Tensor] | None = None
    timer: StepTimer = field(default_factory=StepTimer)  # --profile-steps (off: no-op)


def train_one_epoch(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    ctx: StepContext,
    state: TrainState,
    on_step: Callable[[TrainState, dict], None] | None = None,
    ema: ModelEma | None = None,
) -> dict:
    """Run the remaining optimizer steps of epoch `state.epoch`, starting at
    `state.epoch_step` (the loader's sampler must already skip the batches before it).

    Args:
        on_step: Called after every optimizer step with the state and the step's loss,
            accuracy, learning rate and throughput.
        ema: Updated from the (unwrapped) model after every `ema.every`-th step.

    Returns the epoch's mean loss, accuracy and throughput over all ranks.
    """
    model.train()
    keep_frozen_bn(ctx.frozen_bn)
    remaining = ctx.steps_per_epoch - state.epoch_step
    if ctx.max_steps:
        remaining = min(remaining, ctx.max_steps - state.step)
    bar = tqdm(total=ctx.steps_per_epoch, initial=state.epoch_step, unit="step",
               desc=f"epoch {state.epoch + 1}", disable=not (ctx.progress and ctx.dist.is_main),
               dynamic_ncols=True, leave=False)
    it = iter(loader)
    timer = ctx.timer
    t0, seen = time.perf_counter(), 0
    try:
        for _ in range(max(0, remaining)):
            timer.start_step()
            step_loss, step_correct, step_total, step_n = 0.0, 0.0, 0.0, 0
            for micro in range(ctx.grad_accum):
                with timer.phase("data"):
                    x, y, skipped = next(it)
                state.skipped += [str(s) for s in skipped if str(s) not in state.skipped]
                with timer.phase("h2d"):
                    x = x.to(ctx.device, non_blocking=True, memory_format=ctx.memory_format)
                    if ctx.normalize is not None:
                        x = ctx.normalize(x)
                    y = ctx.task.targets_to(y, ctx.device)
                seed = (ctx.seed * 1_000_003 + state.step) * 64 + micro
                sync = micro == ctx.grad_accum - 1 or not hasattr(model, "no_sync")
                with (nullcontext() if sync else model.no_sync()):
                    with timer.phase("forward"):
                        with torch.autocast(ctx.device.type, dtype=ctx.amp_dtype,
                                            enabled=ctx.amp_dtype is not None):
                            out = ctx.task.step(model, x, y, ctx, seed) if len(x) else None
                        # The one host sync a step needs: a non-finite loss must stop the run
                        # before the optimizer touches the weights; its value is reused below.
                        loss_value = _check_finite(out.loss if out is not None else None,
                                                   ctx, state)
                    if out is not None:
                        with timer.phase("backward"):
                            scaler.scale(out.loss / ctx.grad_accum).backward()
                        step_loss += loss_value * len(x)
                        step_correct += out.correct
                        step_total += out.total
                        step_n += len(x)
            with timer.phase("optimizer"):
                if ctx.clip_grad_norm > 0:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), ctx.clip_grad_norm)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
            if ema is not None and state.step % ema.every == ema.every - 1:
                with timer.phase("ema"):
                    ema.update(unwrap(model))
            state.step += 1
            state.epoch_step += 1
            state.sums[0] += step_loss
            state.sums[1] += step_correct
            state.sums[2] += step_n
            state.sums[3] += step_total
            seen += step_n
            with timer.phase("logging"):
                rate = seen * ctx.dist.world_size / max(1e-9, time.perf_counter() - t0)
                info = {"loss": step_loss / max(1, step_n),
                        "lr": optimizer.param_groups[0]["lr"], "img_s": rate}
                if step_total:  # tasks without a per-step accuracy (detection) show none
                    info["acc"] = step_correct / step_total
                if state.epoch_step % BAR_EVERY == 0 or state.epoch_step == ctx.steps_per_epoch:
                    shown = {"loss": f"{info['loss']:.3f}"}
                    if "acc" in info:
                        shown["acc"] = f"{info['acc']:.3f}"
                    bar.set_postfix(**shown, img_s=f"{rate:.0f}", refresh=False)
                bar.update(1)
            if on_step is not None:
                on_step(state, info)
            timer.end_step()
            if timer.done and not timer.reported and ctx.dist.is_main:
                timer.reported = True
                log.info("%s", timer.table(step_n * ctx.dist.world_size))
    finally:
        bar.close()
    totals = all_reduce_sum(torch.tensor(state.sums, dtype=torch.float64, device=ctx.device),
                            ctx.dist).tolist()
    elapsed = time.perf_counter() - t0
    return {"train_loss": totals[0] / max(1, totals[2]),
            "train_acc": totals[1] / totals[3] if totals[3] else float("nan"),
            "img_s": seen * ctx.dist.world_size / max(1e-9, elapsed)}


def _sums(saved: list) -> list[float]:
    """Checkpoints written before tasks existed hold three sums; their total is n."""
    sums = [float(v) for v in saved]
    return sums if len(sums) == 4 else [*sums, sums[2]]


def keep_frozen_bn(parts: Sequence[nn.Module]) -> None:
    """Frozen parts keep their BatchNorm statistics: BN layers inside `parts` (what
    `train.finetune.freeze` returns) go back to eval mode after `model.train()`. With frozen
    statistics a sample's gradient does not depend on its batch, which is what lets the DDP
    test compare 2 x 4 images with 1 x 8."""
    for part in parts:
        for mod in part.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                mod.eval()


def _check_finite(loss: torch.Tensor | None, ctx: StepContext, state: TrainState) -> float:
    """The loss as a float (0 for an empty micro-batch); raises `NonFiniteLoss` on any rank's
    NaN or infinity. One device-to-host read; the all-reduce only under DDP."""
    value = loss.item() if loss is not None else 0.0
    bad = 0.0 if math.isfinite(value) else 1.0
    if ctx.dist.enabled:
        bad = all_reduce_sum(torch.tensor(bad, device=ctx.device), ctx.dist).item()
    if bad > 0:
        raise NonFiniteLoss(
            f"the loss became {value if loss is not None else 'non-finite'} at step "
            f"{state.step + 1} (epoch {state.epoch + 1}); training stopped before updating "
            "the weights. Lower the learning rate (--lr), enable --clip-grad-norm, or check "
            "the data; the last good checkpoint is intact"
        )
    return value

