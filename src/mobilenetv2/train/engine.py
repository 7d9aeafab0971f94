"""The two loops (DESIGN example 11): `train_one_epoch` and `evaluate`.

Both are plain functions over a model, a loader and a small context; DDP, mixed precision,
channels_last, gradient accumulation and clipping are switches of that context.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from mobilenetv2.data.loaders import mix_batch
from mobilenetv2.errors import UserError
from mobilenetv2.train.distributed import DistInfo, all_reduce_sum, unwrap

__all__ = ["EvalResult", "NonFiniteLoss", "StepContext", "TrainState", "evaluate",
           "keep_frozen_bn", "train_one_epoch"]


class NonFiniteLoss(UserError):
    """The loss became NaN or infinite; training stops before the weights are touched."""


@dataclass
class TrainState:
    """Counters that, with the RNG states, fix where a resumed run continues."""

    epoch: int = 0
    step: int = 0                 # optimizer steps taken in total
    epoch_step: int = 0           # optimizer steps taken in the current epoch
    best_top1: float = -1.0
    sums: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # loss*n, correct, n
    skipped: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"epoch": self.epoch, "step": self.step, "epoch_step": self.epoch_step,
                "best_top1": self.best_top1, "sums": list(self.sums),
                "skipped": list(self.skipped)}

    @classmethod
    def from_dict(cls, d: dict) -> TrainState:
        return cls(epoch=int(d["epoch"]), step=int(d["step"]), epoch_step=int(d["epoch_step"]),
                   best_top1=float(d["best_top1"]), sums=[float(v) for v in d["sums"]],
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


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def train_one_epoch(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    ctx: StepContext,
    state: TrainState,
    on_step: Callable[[TrainState, dict], None] | None = None,
    ema_update: Callable[[], None] | None = None,
) -> dict:
    """Run the remaining optimizer steps of epoch `state.epoch`, starting at
    `state.epoch_step` (the loader's sampler must already skip the batches before it).

    Returns the epoch's mean loss, accuracy and throughput over all ranks.
    """
    model.train()
    keep_frozen_bn(model)
    remaining = ctx.steps_per_epoch - state.epoch_step
    if ctx.max_steps:
        remaining = min(remaining, ctx.max_steps - state.step)
    bar = tqdm(total=ctx.steps_per_epoch, initial=state.epoch_step, unit="step",
               desc=f"epoch {state.epoch + 1}", disable=not (ctx.progress and ctx.dist.is_main),
               dynamic_ncols=True, leave=False)
    it = iter(loader)
    t0, seen = time.perf_counter(), 0
    try:
        for _ in range(max(0, remaining)):
            step_loss, step_correct, step_n = 0.0, 0, 0
            for micro in range(ctx.grad_accum):
                x, y, skipped = next(it)
                state.skipped += [str(s) for s in skipped if str(s) not in state.skipped]
                x = x.to(ctx.device, non_blocking=True, memory_format=ctx.memory_format)
                y = y.to(ctx.device, non_blocking=True)
                seed = (ctx.seed * 1_000_003 + state.step) * 64 + micro
                xm, target = mix_batch(x, y, ctx.num_classes, ctx.mixup_alpha,
                                       ctx.cutmix_alpha, seed) if len(x) else (x, None)
                sync = micro == ctx.grad_accum - 1 or not hasattr(model, "no_sync")
                with (nullcontext() if sync else model.no_sync()):
                    with _autocast(ctx.device, ctx.amp_dtype):
                        logits = model(xm) if len(x) else None
                        loss = (F.cross_entropy(logits.float(), target,
                                                label_smoothing=ctx.label_smoothing)
                                if logits is not None else None)
                    _check_finite(loss, ctx, state)
                    if loss is not None:
                        scaler.scale(loss / ctx.grad_accum).backward()
                        step_loss += loss.item() * len(x)
                        step_correct += int((logits.argmax(1) == y).sum())
                        step_n += len(x)
            if ctx.clip_grad_norm > 0:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), ctx.clip_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            if ema_update is not None:
                ema_update()
            state.step += 1
            state.epoch_step += 1
            state.sums[0] += step_loss
            state.sums[1] += step_correct
            state.sums[2] += step_n
            seen += step_n
            rate = seen * ctx.dist.world_size / max(1e-9, time.perf_counter() - t0)
            info = {"loss": step_loss / max(1, step_n), "acc": step_correct / max(1, step_n),
                    "lr": optimizer.param_groups[0]["lr"], "img_s": rate}
            bar.set_postfix(loss=f"{info['loss']:.3f}", acc=f"{info['acc']:.3f}",
                            img_s=f"{rate:.0f}", refresh=False)
            bar.update(1)
            if on_step is not None:
                on_step(state, info)
    finally:
        bar.close()
    totals = all_reduce_sum(torch.tensor(state.sums, dtype=torch.float64, device=ctx.device),
                            ctx.dist).tolist()
    elapsed = time.perf_counter() - t0
    return {"train_loss": totals[0] / max(1, totals[2]),
            "train_acc": totals[1] / max(1, totals[2]),
            "img_s": seen * ctx.dist.world_size / max(1e-9, elapsed)}


def keep_frozen_bn(model: nn.Module) -> None:
    """Frozen parts keep their BatchNorm statistics: BN layers inside them (or all of them,
    with `freeze_bn`) go back to eval mode after `model.train()`. With frozen statistics a
    sample's gradient does not depend on its batch, which is what lets the DDP test compare
    2 x 4 images with 1 x 8."""
    m = unwrap(model)
    targets = [m] if getattr(m, "_freeze_bn", False) else getattr(m, "_frozen_modules", [])
    for part in targets:
        for mod in part.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                mod.eval()


def _check_finite(loss: torch.Tensor | None, ctx: StepContext, state: TrainState) -> None:
    bad = torch.tensor(
        0.0 if loss is None or math.isfinite(loss.item()) else 1.0, device=ctx.device)
    if all_reduce_sum(bad, ctx.dist).item() > 0:
        raise NonFiniteLoss(
            f"the loss became {loss.item() if loss is not None else 'non-finite'} at step "
            f"{state.step + 1} (epoch {state.epoch + 1}); training stopped before updating "
            "the weights. Lower the learning rate (--lr), enable --clip-grad-norm, or check "
            "the data; the last good checkpoint is intact"
        )


@dataclass
class EvalResult:
    """Top-1/top-5 accuracy, mean loss and the confusion matrix (rows: true class)."""

    loss: float
    top1: float
    top5: float
    confusion: torch.Tensor
    count: int
    skipped: list[str]

    @property
    def per_class(self) -> list[float]:
        c = self.confusion.double()
        return (c.diagonal() / c.sum(1).clamp(min=1)).tolist()


@torch.no_grad()
def evaluate(model: nn.Module, loader: torch.utils.data.DataLoader, device: torch.device,
             num_classes: int, amp_dtype: torch.dtype | None = None,
             memory_format: torch.memory_format = torch.contiguous_format,
             dist: DistInfo | None = None, progress: bool = True, desc: str = "eval",
             ) -> EvalResult:
    """Accuracy of `model` over `loader` (sharded across ranks and summed)."""
    dist = dist or DistInfo()
    model.eval()
    k = min(5, num_classes)
    sums = torch.zeros(4, dtype=torch.float64, device=device)   # loss*n, top1, topk, n
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    skipped: list[str] = []
    for x, y, bad in tqdm(loader, desc=desc, unit="batch", leave=False, dynamic_ncols=True,
                          disable=not (progress and dist.is_main)):
        skipped += [str(b) for b in bad]
        if not len(x):
            continue
        x = x.to(device, non_blocking=True, memory_format=memory_format)
        y = y.to(device, non_blocking=True)
        with _autocast(device, amp_dtype):
            logits = model(x).float()
        sums[0] += F.cross_entropy(logits, y, reduction="sum")
        top = logits.topk(k, 1).indices
        sums[1] += (top[:, 0] == y).sum()
        sums[2] += (top == y[:, None]).any(1).sum()
        sums[3] += len(y)
        confusion += torch.bincount(y * num_classes + top[:, 0],
                                    minlength=num_classes ** 2).view(num_classes, num_classes)
    all_reduce_sum(sums, dist)
    all_reduce_sum(confusion, dist)
    n = max(1.0, sums[3].item())
    return EvalResult(loss=sums[0].item() / n, top1=sums[1].item() / n, top5=sums[2].item() / n,
                      confusion=confusion.cpu(), count=int(sums[3].item()), skipped=skipped)
