"""`train(cfg)`: wires data, model, optimizer, schedule, EMA, mixed precision, DDP,
checkpoints and reports together (DESIGN example 11). One process, or one per GPU/CPU under
torchrun.

Three steps: `_setup` builds everything a run holds (a `_Run`), `_loop` trains and evaluates
epoch by epoch, `_finish` writes the shipped weights and reports. The recipe of the paper
(section 6.1) and the others live in `train.recipes`; the loop in `train.engine`; what
differs between classification, segmentation and detection (data, model, loss, evaluation,
report files) in the run's `tasks.Task`. The run directory receives `config.json`,
`metrics.jsonl`, `curves.png`, TensorBoard events (`tb/`), `checkpoint-<step>.pt` (last
`keep_last`), `best.pt`, and at the end `model.safetensors` (the EMA weights when the EMA
is on), the task's `eval.json` and figures (`confusion.png` ...) and `report.md`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mobilenetv2.config import RunConfig, TrainConfig
from mobilenetv2.data.loaders import make_loader
from mobilenetv2.errors import UserError
from mobilenetv2.model import bnact
from mobilenetv2.tasks import Metrics, Task, TaskData, get_task
from mobilenetv2.train import checkpoint as ckpt
from mobilenetv2.train.amp import resolve_device
from mobilenetv2.train.distributed import (
    DistInfo,
    all_reduce_sum,
    barrier,
    cleanup,
    init_distributed,
    unwrap,
)
from mobilenetv2.train.ema import ModelEma
from mobilenetv2.train.engine import StepContext, TrainState, train_one_epoch
from mobilenetv2.train.finetune import apply_freeze
from mobilenetv2.train.malloc import allocator_note
from mobilenetv2.train.optim import build_optimizer, lr_at
from mobilenetv2.train.report import RunLog, plot_curves, write_report
from mobilenetv2.train.setup import choose_step_setup, configure_torch, seed_everything
from mobilenetv2.train.steptimer import StepTimer
from mobilenetv2.train.tune import keep_fp32

__all__ = ["TrainResult", "train"]

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a finished run produced."""

    out: Path
    model_path: Path
    metrics: Metrics             # the final evaluation of the shipped weights
    epochs: int
    steps: int
    seconds: float
    skipped: list[str]
    files: dict[str, str]
    model: nn.Module | None = None  # the final (evaluated) model, on every rank

    @property
    def top1(self) -> float:
        """Classification's top-1 (NaN for other tasks; their figures are in `metrics`)."""
        return self.metrics.accuracy().get("top1", float("nan"))

    @property
    def top5(self) -> float:
        return self.metrics.accuracy().get("top5", float("nan"))


def train(cfg: RunConfig, resume: str | os.PathLike | None = None,
          progress: bool = True) -> TrainResult:
    """Train, evaluate and write the run directory `cfg.out` (see the module docstring).

    Args:
        cfg: The effective configuration (see `train.recipes.make_config`).
        resume: A checkpoint file, a run directory whose newest checkpoint is used, or
            "auto" for the newest checkpoint in `cfg.out`.
        progress: Show tqdm progress bars on stderr.
    """
    t_start = time.perf_counter()
    ckpt.check_run_dir(cfg.out, cfg.train.weights)
    device = resolve_device(cfg.train.device)
    dist = init_distributed(device)
    try:
        run = _setup(cfg, device, dist, resume, progress)
        return _finish(run, _loop(run), t_start)
    finally:
        cleanup(dist)


@dataclass
class _Run:
    """Everything a run holds from setup to finish: the state the loop and its per-step hooks
    (`on_step`, `write_checkpoint`) share, as fields rather than closures."""

    cfg: RunConfig
    dist: DistInfo
    task: Task
    splits: TaskData
    model: nn.Module             # the network itself, on the device
    train_model: nn.Module       # the same, compiled and/or DDP-wrapped for training
    ema: ModelEma | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    ctx: StepContext
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader
    state: TrainState
    log: RunLog | None = None    # on the writing rank only
    hooks: list[Any] = field(default_factory=list)  # train.tune.keep_fp32's, removed at the end

    @property
    def out(self) -> Path:
        return Path(self.cfg.out)

    @property
    def eval_model(self) -> nn.Module:
        """The weights evaluated and shipped: the EMA when it is on."""
        return self.ema.module if self.ema is not None else self.model

    def snapshot(self) -> dict[str, Any]:
        """A resumable checkpoint; every rank takes part in gathering the RNG states."""
        rngs = [ckpt.rng_state()]
        if self.dist.enabled:
            gathered: list[Any] = [None] * self.dist.world_size
            torch.distributed.all_gather_object(gathered, rngs[0])
            rngs = gathered
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "state": self.state.to_dict(), "rng": rngs, "config": self.cfg.to_dict()}

    def best_snapshot(self) -> dict[str, Any]:
        """`best.pt`: the evaluated weights only (not resumable; a pointer for selection)."""
        return {"model": self.eval_model.state_dict(), "state": self.state.to_dict(),
                "config": self.cfg.to_dict()}

    def write_checkpoint(self) -> None:
        snap = self.snapshot()
        if self.dist.is_main:
            ckpt.save_checkpoint(snap, self.out / ckpt.checkpoint_name(self.state.step))
            ckpt.prune_checkpoints(self.out, self.cfg.train.keep_last)

    def on_step(self, st: TrainState, info: dict) -> None:
        """After every optimizer step: a metrics line every `log_every` steps, and the
        mid-epoch checkpoints of `checkpoint_every`."""
        tc = self.cfg.train
        if self.log is not None and st.step % tc.log_every == 0:
            with self.ctx.timer.phase("logging"):
                self.log.step(st.epoch + 1, st.step, info)
        if tc.checkpoint_every and st.step % tc.checkpoint_every == 0 \
                and st.epoch_step < self.ctx.steps_per_epoch:
            with self.ctx.timer.phase("checkpoint"):
                self.write_checkpoint()

    def evaluate(self, desc: str = "eval") -> Metrics:
        return self.task.evaluate(
            self.eval_model, self.val_loader, self.ctx.device,
            self.ctx.amp_dtype, self.ctx.memory_format,
            sum_over_ranks=partial(all_reduce_sum, info=self.dist),
            progress=self.ctx.progress and self.dist.is_main, desc=desc)


# ---------------------------------------------------------------------------------------------
# Setup


def _setup(cfg: RunConfig, device: torch.device, dist: DistInfo,
           resume: str | os.PathLike | None, progress: bool) -> _Run:
    tc, dc = cfg.train, cfg.data
    budget = configure_torch(tc, dc.num_workers, device, dist)
    seed_everything(tc.seed, dist.rank)
    size = cfg.model.resolution
    task = get_task(cfg.model.task)
    splits = task.data(cfg, size)  # data first: a bad dataset fails before any model is built
    num_classes = len(splits.classes)
    model = task.build_model(cfg, num_classes)
    cfg = RunConfig(model.config, dc, tc, cfg.out)  # the model's true config (fine-tuning)
    frozen_bn = apply_freeze(model, tc.freeze, tc.freeze_bn)
    setup = choose_step_setup(tc, device, model, size, dc.batch_size, dist, task)
    amp_dtype, fmt = setup.candidate.amp_dtype, setup.candidate.memory_format
    if tc.sync_bn and device.type == "cpu":
        raise UserError("--sync-bn needs GPUs: torch's SyncBatchNorm has no CPU kernel")
    if dist.enabled and tc.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # frozen parts stay the same
    model = model.to(device, memory_format=fmt)
    ema = ModelEma(model, tc.ema_decay, tc.ema_every, tc.ema_warmup) if tc.ema_decay else None
    hooks = keep_fp32(model) if setup.candidate.fp32_stride2_dw else []
    train_loader, val_loader = (
        make_loader(ds, dc.batch_size, train=is_train, seed=tc.seed, num_workers=budget.workers,
                    world_size=dist.world_size, rank=dist.rank,
                    pin_memory=device.type == "cuda", collate_fn=splits.collate)
        for ds, is_train in ((splits.train, True), (splits.val, False)))
    steps_per_epoch = len(train_loader) // tc.grad_accum
    if steps_per_epoch == 0:
        raise UserError(
            f"the training set ({len(splits.train)} images over {dist.world_size} process(es)) "
            f"is smaller than one step ({dc.batch_size} x {tc.grad_accum} accumulation); "
            "lower --batch-size")
    global_batch = dc.batch_size * dist.world_size * tc.grad_accum
    base_lr = tc.lr * global_batch / tc.lr_batch
    optimizer = build_optimizer(model, tc, base_lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_at(s, tc, steps_per_epoch, base_lr) / base_lr)
    ctx = StepContext(
        device=device, num_classes=num_classes, amp_dtype=amp_dtype, memory_format=fmt,
        label_smoothing=tc.label_smoothing, mixup_alpha=dc.mixup_alpha,
        cutmix_alpha=dc.cutmix_alpha, grad_accum=tc.grad_accum,
        clip_grad_norm=tc.clip_grad_norm, seed=tc.seed, steps_per_epoch=steps_per_epoch,
        max_steps=tc.max_steps, dist=dist, progress=progress, frozen_bn=frozen_bn, task=task,
        normalize=splits.normalize, timer=StepTimer(tc.profile_steps, device=device))
    run = _Run(cfg=cfg, dist=dist, task=task, splits=splits, model=model,
               train_model=_wrap_for_training(model, tc, dist, device), ema=ema,
               optimizer=optimizer, scheduler=scheduler,
               scaler=torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16),
               ctx=ctx, train_loader=train_loader, val_loader=val_loader,
               state=TrainState(skipped=list(splits.unreadable)), hooks=hooks)
    resume_path = ckpt.resolve_resume(resume, cfg.out)
    if resume_path is not None:
        _restore(run, resume_path)
    if dist.is_main:
        _start_log(run, resumed=resume_path is not None)
        log.info(
            "training %s on %s (%d train / %d %s images, %d classes), %s x %d process(es), "
            "amp %s, %s, %d steps/epoch, lr %.4g for global batch %d",
            f"MobileNetV2 width {cfg.model.width} ({task.name})", splits.source, len(splits.train),
            len(splits.val), splits.val_name, num_classes, device, dist.world_size,
            amp_dtype or "off", "channels_last" if fmt == torch.channels_last else "NCHW",
            steps_per_epoch, base_lr, global_batch)
        log.info("step setup: %s; %s; %s; %s", setup.describe(), budget.describe(),
                 allocator_note(), bnact.describe())
    return run


def _start_log(run: _Run, resumed: bool) -> None:
    """The writing rank: the run directory, `config.json`, and the metrics log (cut back to
    the resumed step)."""
    run.out.mkdir(parents=True, exist_ok=True)
    (run.out / "config.json").write_text(json.dumps(run.cfg.to_dict(), indent=2))
    run.log = RunLog(run.out, resume_step=run.state.step if resumed else None,
                     tensorboard=run.cfg.train.tensorboard)


def _wrap_for_training(model: nn.Module, tc: TrainConfig, dist: DistInfo,
                       device: torch.device) -> nn.Module:
    if tc.compile:
        model = torch.compile(model)
    if dist.enabled:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    return model


def _restore(run: _Run, path: Path) -> None:
    saved = ckpt.load_checkpoint(path)
    run.model.load_state_dict(saved["model"])
    run.optimizer.load_state_dict(saved["optimizer"])
    run.scheduler.load_state_dict(saved["scheduler"])
    run.scaler.load_state_dict(saved["scaler"])
    if run.ema is not None:
        run.ema.load_state_dict(saved["ema"])
    run.state = TrainState.from_dict(saved["state"])
    rngs = saved["rng"]
    ckpt.set_rng_state(rngs[run.dist.rank] if run.dist.rank < len(rngs) else rngs[0])
    log.info("resumed from %s at epoch %d, step %d", path, run.state.epoch + 1,
             run.state.step)


# ---------------------------------------------------------------------------------------------
# Loop


def _loop(run: _Run) -> Metrics:
    """Train the remaining epochs; the last evaluation of the shipped weights."""
    tc, state = run.cfg.train, run.state
    result = None
    while state.epoch < tc.epochs and not (tc.max_steps and state.step >= tc.max_steps):
        result = _epoch(run)
    barrier(run.dist)
    if run.log is not None:
        run.log.close()
    if result is None:  # resumed a finished run: evaluate what it produced
        result = run.evaluate()
    return result


def _epoch(run: _Run) -> Metrics:
    """The rest of the current epoch (or up to `max_steps`), its evaluation, checkpoint,
    metrics and curves."""
    tc, state = run.cfg.train, run.state
    t_epoch = time.perf_counter()
    run.train_loader.sampler.set_epoch(state.epoch)
    run.train_loader.sampler.set_start(state.epoch_step * tc.grad_accum)
    stats = train_one_epoch(run.train_model, run.train_loader, run.optimizer, run.scheduler,
                            run.scaler, run.ctx, state, on_step=run.on_step, ema=run.ema)
    result = run.evaluate(desc=f"eval {state.epoch + 1}")
    record = {"kind": "epoch", "epoch": state.epoch + 1, "step": state.step, **stats,
              "val_loss": result.loss, **result.record(),
              "lr": run.optimizer.param_groups[0]["lr"],
              "seconds": time.perf_counter() - t_epoch}
    if state.epoch_step >= run.ctx.steps_per_epoch:  # a whole epoch, not a max_steps stop
        state.epoch += 1
        state.epoch_step = 0
        state.sums = [0.0, 0.0, 0.0, 0.0]
    improved = result.score > state.best_top1
    state.best_top1 = max(state.best_top1, result.score)
    run.write_checkpoint()
    if run.log is not None:
        if improved:
            ckpt.save_checkpoint(run.best_snapshot(), run.out / "best.pt")
        run.log.epoch(record)
        log.info("epoch %d/%d: train loss %.4f acc %.2f%% | %s %s | %.0f img/s, %.1fs",
                 record["epoch"], tc.epochs, stats["train_loss"], 100 * stats["train_acc"],
                 run.splits.val_name, result.summary(), stats["img_s"], record["seconds"])
    return result


# ---------------------------------------------------------------------------------------------
# Finish


def _finish(run: _Run, result: Metrics, t_start: float) -> TrainResult:
    """Rank 0 writes `model.safetensors`, the task's reports (`eval.json`, figures), the final
    curves and `report.md`; every rank returns the result."""
    cfg, out, state, splits = run.cfg, run.out, run.state, run.splits
    model_path = out / "model.safetensors"
    files = {"model": str(model_path), "curves": str(out / "curves.png")}
    for hook in run.hooks:
        hook.remove()
    final = unwrap(run.eval_model)
    if run.log is not None:
        final = final.to("cpu", memory_format=torch.contiguous_format)
        split_name = f"{splits.val_name} ({result.count} images)"
        _save_weights(run, final, model_path, result, split_name)
        files.update(run.task.write_reports(result, splits.classes, out))
        files.update({"metrics": str(out / "metrics.jsonl"), "report": str(out / "report.md"),
                      "config": str(out / "config.json")})
        seconds = time.perf_counter() - t_start
        epochs = run.log.epochs()
        if epochs:
            plot_curves(epochs, out / "curves.png")
        write_report(
            out / "report.md", config=cfg.to_dict(),
            summary={"recipe": cfg.train.recipe, "dataset": splits.source,
                     "evaluated on": split_name,
                     "final accuracy": result.summary(),
                     "weights evaluated": "EMA" if cfg.train.ema_decay else "trained",
                     "epochs": state.epoch, "optimizer steps": state.step,
                     "skipped unreadable files": len(state.skipped),
                     "wall time": f"{seconds:.1f} s"},
            epochs=epochs, per_class=result.per_class(splits.classes),
            skipped=state.skipped, files=files)
    barrier(run.dist)
    return TrainResult(out=out, model_path=model_path, metrics=result,
                       epochs=state.epoch, steps=state.step,
                       seconds=time.perf_counter() - t_start, skipped=state.skipped,
                       files=files, model=final)


def _save_weights(run: _Run, final: nn.Module, path: Path, result: Metrics,
                  split_name: str) -> None:
    from mobilenetv2.weights.format import save

    cfg = run.cfg
    save(final, path, preprocessing=run.splits.pre, labels=run.splits.classes,
         accuracy=result.accuracy(),
         provenance={"source": "mobilenetv2 train", "recipe": cfg.train.recipe,
                     "dataset": run.splits.source, "evaluated_on": split_name,
                     "ema": bool(cfg.train.ema_decay), "steps": run.state.step},
         extra={"train_config": cfg.to_dict()})
