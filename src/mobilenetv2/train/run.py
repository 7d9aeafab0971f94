"""`train(cfg)`: wires data, model, optimizer, schedule, EMA, precision, DDP, checkpoints and
reports together (DESIGN example 11). One process, or one per GPU/CPU under torchrun.

The recipe of the paper (section 6.1) and the others live in `train.recipes`; the loops in
`train.engine`. The run directory receives `config.json`, `metrics.jsonl`, `curves.png`,
TensorBoard events (`tb/`), `checkpoint-<step>.pt` (last `keep_last`), `best.pt`, and at the
end `model.safetensors` (the EMA weights when the EMA is on), `eval.json`, `confusion.png`
and `report.md`.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mobilenetv2.config import DataConfig, ModelConfig, TrainConfig, config_from_dict
from mobilenetv2.data.datasets import build_splits
from mobilenetv2.data.loaders import make_loader
from mobilenetv2.data.presets import eval_preprocessing, train_transform
from mobilenetv2.data.transforms import eval_transform
from mobilenetv2.errors import UserError
from mobilenetv2.evaluate import EvalReport, write_eval_report
from mobilenetv2.model import MobileNetV2
from mobilenetv2.train import checkpoint as ckpt
from mobilenetv2.train.distributed import DistInfo, barrier, cleanup, init_distributed, unwrap
from mobilenetv2.train.ema import ModelEma
from mobilenetv2.train.engine import StepContext, TrainState, evaluate, train_one_epoch
from mobilenetv2.train.optim import build_optimizer, lr_at
from mobilenetv2.train.precision import choose_amp, choose_memory_format, resolve_device
from mobilenetv2.train.recipes import RECIPES, default_recipe
from mobilenetv2.train.report import MetricsLog, plot_curves, write_report

__all__ = ["RunConfig", "TrainResult", "load_config_file", "make_config", "train"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunConfig:
    """The effective configuration of a run: saved as `config.json` and in every checkpoint."""

    model: ModelConfig
    data: DataConfig
    train: TrainConfig
    out: str = "runs/train"

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model.to_dict(), "data": asdict(self.data),
                "train": asdict(self.train), "out": self.out}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        return cls(model=ModelConfig.from_dict(d["model"]),
                   data=config_from_dict(DataConfig, _tuples(d["data"])),
                   train=config_from_dict(TrainConfig, d["train"]), out=d.get("out", "runs"))


def _tuples(d: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


def load_config_file(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """A YAML or JSON file with optional `model:`, `data:`, `train:` sections (and `out`)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--config: no such file: {p}")
    text = p.read_text()
    try:
        if p.suffix.lower() == ".json":
            doc = json.loads(text)
        else:
            import yaml

            doc = yaml.safe_load(text)
    except Exception as e:
        raise UserError(f"--config {p}: not valid YAML/JSON ({e})") from e
    if doc is None:
        return {}
    if not isinstance(doc, dict) or set(doc) - {"model", "data", "train", "out", "recipe"}:
        raise UserError(f"--config {p}: expected sections model, data, train (and out, "
                        f"recipe); got {list(doc) if isinstance(doc, dict) else type(doc)}")
    return doc


def make_config(
    recipe: str | None = None,
    file: str | os.PathLike | None = None,
    model: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
    train: dict[str, Any] | None = None,
    out: str | None = None,
) -> RunConfig:
    """Dataclass defaults, then the recipe, then the config file, then explicit overrides."""
    doc = load_config_file(file) if file else {}
    model, data, train = dict(model or {}), dict(data or {}), dict(train or {})
    data_src = data.get("data", doc.get("data", {}).get("data", "digits"))
    weights = train.get("weights", doc.get("train", {}).get("weights"))
    name = recipe or doc.get("recipe") or default_recipe(data_src, weights)
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose from {', '.join(RECIPES)}")
    preset = RECIPES[name]
    base = dict(preset.model)
    if weights and Path(weights).is_file():
        # Fine-tuning starts from the architecture (and resolution) the weights were made for.
        from mobilenetv2.weights.format import read_meta

        base = {**read_meta(weights).config.to_dict(), "dropout": base.get("dropout", 0.2)}
        del base["num_classes"]  # the new head gets the data's classes
    m = {**base, **doc.get("model", {}), **model}
    d = {**preset.data, **_tuples(doc.get("data", {})), **data}
    t = {"recipe": name, **preset.train, **doc.get("train", {}), **train}
    return RunConfig(model=ModelConfig().replace(**m), data=DataConfig().replace(**d),
                     train=TrainConfig().replace(**t), out=out or doc.get("out", "runs/train"))


@dataclass
class TrainResult:
    """What a finished run produced."""

    out: Path
    model_path: Path
    top1: float
    top5: float
    epochs: int
    steps: int
    seconds: float
    skipped: list[str]
    files: dict[str, str]
    model: nn.Module | None = None  # the final (evaluated) model, on every rank


def _seed_everything(seed: int, rank: int) -> None:
    random.seed(seed + rank)
    np.random.seed((seed + rank) % 2**32)
    torch.manual_seed(seed + rank)


def _build_model(cfg: RunConfig, num_classes: int) -> nn.Module:
    if cfg.train.weights:
        from mobilenetv2.weights import load_weights

        model = load_weights(cfg.train.weights)
        if model.num_classes != num_classes:
            log.info("new %d-class head on %s (was %d classes)", num_classes,
                     cfg.train.weights, model.num_classes)
            model.reset_classifier(num_classes)
        if model.config.dropout != cfg.model.dropout:
            model.config = model.config.replace(dropout=cfg.model.dropout)
            model.dropout.p = cfg.model.dropout
        return model
    return MobileNetV2(cfg.model.replace(num_classes=num_classes))


def apply_freeze(model: MobileNetV2, freeze: str, freeze_bn: bool) -> None:
    """`backbone`: only the classifier trains; `stages:K`: the stem and Table 2's first K
    stages are frozen. `freeze_bn` keeps every BatchNorm in eval mode (see
    `engine.keep_frozen_bn`)."""
    frozen: list[nn.Module] = []
    if freeze == "backbone":
        frozen = [model.stem, model.blocks, model.head]
    elif freeze.startswith("stages:"):
        k = int(freeze.split(":")[1])
        frozen = [model.stem] + [b for b, spec in zip(model.blocks, model.arch.blocks)
                                 if spec.stage < k]
    for m in frozen:
        for p in m.parameters():
            p.requires_grad_(False)
    model._frozen_modules = frozen  # read by engine.keep_frozen_bn after model.train()
    model._freeze_bn = freeze_bn


def train(cfg: RunConfig, resume: str | os.PathLike | None = None,
          progress: bool = True) -> TrainResult:
    """Train, evaluate and write the run directory `cfg.out` (see the module docstring).

    Args:
        cfg: The effective configuration (see `make_config`).
        resume: A checkpoint file, or a run directory whose newest checkpoint is used.
        progress: Show tqdm progress bars on stderr.
    """
    t_start = time.perf_counter()
    tc, dc = cfg.train, cfg.data
    device = resolve_device(tc.device)
    dist = init_distributed(device)
    try:
        return _train(cfg, tc, dc, device, dist, resume, progress, t_start)
    finally:
        cleanup(dist)


def _train(cfg: RunConfig, tc: TrainConfig, dc: DataConfig, device: torch.device,
           dist: DistInfo, resume: str | os.PathLike | None, progress: bool,
           t_start: float) -> TrainResult:
    out = Path(cfg.out)
    if tc.threads:
        torch.set_num_threads(tc.threads)
    if tc.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    _seed_everything(tc.seed, dist.rank)

    # Data first: a bad dataset fails before any model is built.
    size = cfg.model.resolution
    pre = eval_preprocessing(dc, dc.eval_size or size)
    splits = build_splits(dc, train_transform(dc, size), eval_transform(pre))
    num_classes = len(splits.classes)
    if cfg.model.num_classes not in (num_classes, ModelConfig().num_classes):
        raise UserError(f"--num-classes {cfg.model.num_classes} but {splits.source} has "
                        f"{num_classes} classes ({', '.join(splits.classes[:5])} ...)")
    model = _build_model(cfg, num_classes)
    cfg = RunConfig(model.config, dc, tc, cfg.out)  # the model's true config (fine-tuning)
    apply_freeze(model, tc.freeze, tc.freeze_bn)
    amp_dtype = choose_amp(tc, device, model.config, size)
    fmt = choose_memory_format(tc)
    if tc.sync_bn and device.type == "cpu":
        raise UserError("--sync-bn needs GPUs: torch's SyncBatchNorm has no CPU kernel")
    if dist.enabled and tc.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(device, memory_format=fmt)
    ema = ModelEma(model, tc.ema_decay, tc.ema_every, tc.ema_warmup) if tc.ema_decay else None

    train_loader = make_loader(splits.train, dc.batch_size, train=True, seed=tc.seed,
                               num_workers=dc.num_workers, world_size=dist.world_size,
                               rank=dist.rank, pin_memory=device.type == "cuda")
    val_loader = make_loader(splits.val, dc.batch_size, train=False, seed=tc.seed,
                             num_workers=dc.num_workers, world_size=dist.world_size,
                             rank=dist.rank, pin_memory=device.type == "cuda")
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
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    train_model: nn.Module = model
    if tc.compile:
        train_model = torch.compile(train_model)
    if dist.enabled:
        train_model = nn.parallel.DistributedDataParallel(
            train_model, device_ids=[device.index] if device.type == "cuda" else None)

    state = TrainState()
    resume_path = _resolve_resume(resume, out)
    if resume_path is not None:
        saved = ckpt.load_checkpoint(resume_path)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        scaler.load_state_dict(saved["scaler"])
        if ema is not None:
            ema.load_state_dict(saved["ema"])
        state = TrainState.from_dict(saved["state"])
        rngs = saved["rng"]
        ckpt.set_rng_state(rngs[dist.rank] if dist.rank < len(rngs) else rngs[0])
        log.info("resumed from %s at epoch %d, step %d", resume_path, state.epoch + 1,
                 state.step)

    writer = None
    metrics: MetricsLog | None = None
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
        metrics = MetricsLog(out / "metrics.jsonl",
                             resume_step=state.step if resume_path else None)
        if tc.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                writer = SummaryWriter(str(out / "tb"))
            except ImportError:
                log.info("tensorboard not installed: no event files")
        log.info(
            "training %s on %s (%d train / %d %s images, %d classes), %s x %d process(es), "
            "amp %s, %s, %d steps/epoch, lr %.4g for global batch %d",
            f"MobileNetV2 width {cfg.model.width}", splits.source, len(splits.train),
            len(splits.val), splits.val_name, num_classes, device, dist.world_size,
            amp_dtype or "off", "channels_last" if fmt == torch.channels_last else "NCHW",
            steps_per_epoch, base_lr, global_batch)

    ctx = StepContext(
        device=device, num_classes=num_classes, amp_dtype=amp_dtype, memory_format=fmt,
        label_smoothing=tc.label_smoothing, mixup_alpha=dc.mixup_alpha,
        cutmix_alpha=dc.cutmix_alpha, grad_accum=tc.grad_accum,
        clip_grad_norm=tc.clip_grad_norm, seed=tc.seed, steps_per_epoch=steps_per_epoch,
        max_steps=tc.max_steps, dist=dist, progress=progress)

    def snapshot() -> dict[str, Any]:
        rng = ckpt.rng_state()
        if dist.enabled:
            gathered: list[Any] = [None] * dist.world_size
            torch.distributed.all_gather_object(gathered, rng)
            rngs = gathered
        else:
            rngs = [rng]
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                "ema": ema.state_dict() if ema is not None else None,
                "state": state.to_dict(), "rng": rngs, "config": cfg.to_dict()}

    def write_checkpoint() -> None:
        snap = snapshot()  # every rank takes part in the RNG gather
        if dist.is_main:
            ckpt.save_checkpoint(snap, out / ckpt.checkpoint_name(state.step))
            ckpt.prune_checkpoints(out, tc.keep_last)

    def on_step(st: TrainState, info: dict) -> None:
        if metrics is not None and st.step % tc.log_every == 0:
            metrics.write({"kind": "step", "epoch": st.epoch + 1, "step": st.step, **info})
            if writer is not None:
                for k, v in info.items():
                    writer.add_scalar(f"step/{k}", v, st.step)
        if tc.checkpoint_every and st.step % tc.checkpoint_every == 0 \
                and st.epoch_step < steps_per_epoch:
            write_checkpoint()

    def ema_update() -> None:
        if ema is not None and state.step % tc.ema_every == tc.ema_every - 1:
            ema.update(model)

    eval_model = ema.module if ema is not None else model
    last_eval = None
    while state.epoch < tc.epochs and not (tc.max_steps and state.step >= tc.max_steps):
        t_epoch = time.perf_counter()
        train_loader.sampler.set_epoch(state.epoch)
        train_loader.sampler.set_start(state.epoch_step * tc.grad_accum)
        stats = train_one_epoch(train_model, train_loader, optimizer, scheduler, scaler, ctx,
                                state, on_step=on_step, ema_update=ema_update)
        last_eval = evaluate(eval_model, val_loader, device, num_classes, amp_dtype, fmt, dist,
                             progress, desc=f"eval {state.epoch + 1}")
        finished_epoch = state.epoch_step >= steps_per_epoch
        record = {"kind": "epoch", "epoch": state.epoch + 1, "step": state.step, **stats,
                  "val_loss": last_eval.loss, "val_top1": last_eval.top1,
                  "val_top5": last_eval.top5, "lr": optimizer.param_groups[0]["lr"],
                  "seconds": time.perf_counter() - t_epoch}
        if finished_epoch:
            state.epoch += 1
            state.epoch_step = 0
            state.sums = [0.0, 0.0, 0.0]
        improved = last_eval.top1 > state.best_top1
        state.best_top1 = max(state.best_top1, last_eval.top1)
        write_checkpoint()
        if dist.is_main and metrics is not None:
            if improved:
                ckpt.save_checkpoint(snapshot_for_best(model, ema, cfg, state),
                                     out / "best.pt")
            metrics.write(record)
            if writer is not None:
                for k in ("train_loss", "train_acc", "val_loss", "val_top1", "val_top5", "lr",
                          "img_s"):
                    writer.add_scalar(f"epoch/{k}", record[k], record["epoch"])
                writer.flush()
            plot_curves(metrics.epochs(), out / "curves.png")
            log.info("epoch %d/%d: train loss %.4f acc %.2f%% | %s top-1 %.2f%% top-5 %.2f%% "
                     "| %.0f img/s, %.1fs", record["epoch"], tc.epochs, stats["train_loss"],
                     100 * stats["train_acc"], splits.val_name, 100 * last_eval.top1,
                     100 * last_eval.top5, stats["img_s"], record["seconds"])
    barrier(dist)
    if writer is not None:
        writer.close()
    if last_eval is None:  # resumed a finished run: evaluate what it produced
        last_eval = evaluate(eval_model, val_loader, device, num_classes, amp_dtype, fmt,
                             dist, progress)
    return _finish(cfg, out, dist, unwrap(eval_model), pre, splits, last_eval, state,
                   metrics, t_start)


def snapshot_for_best(model: nn.Module, ema: ModelEma | None, cfg: RunConfig,
                      state: TrainState) -> dict[str, Any]:
    """`best.pt`: the evaluated weights only (not resumable; a pointer for model selection)."""
    src = ema.module if ema is not None else model
    return {"model": src.state_dict(), "state": state.to_dict(), "config": cfg.to_dict()}


def _finish(cfg: RunConfig, out: Path, dist: DistInfo, final: nn.Module, pre: Any,
            splits: Any, result: Any, state: TrainState, metrics: MetricsLog | None,
            t_start: float) -> TrainResult:
    from mobilenetv2.weights.format import save

    model_path = out / "model.safetensors"
    files = {"model": str(model_path), "curves": str(out / "curves.png"),
             "confusion matrix": str(out / "confusion.png"), "eval report": str(out / "eval.json"),
             "metrics": str(out / "metrics.jsonl"), "report": str(out / "report.md"),
             "config": str(out / "config.json")}
    if dist.is_main:
        final = final.to("cpu", memory_format=torch.contiguous_format)
        split_name = f"{splits.val_name} ({result.count} images)"
        save(final, model_path, preprocessing=pre, labels=splits.classes,
             accuracy={"top1": result.top1, "top5": result.top5},
             provenance={"source": "mobilenetv2 train", "recipe": cfg.train.recipe,
                         "dataset": splits.source, "evaluated_on": split_name,
                         "ema": bool(cfg.train.ema_decay), "steps": state.step},
             extra={"train_config": cfg.to_dict()})
        report = EvalReport(result, splits.classes, None, None)
        write_eval_report(report, out)
        seconds = time.perf_counter() - t_start
        epochs = metrics.epochs() if metrics is not None else []
        if epochs:
            plot_curves(epochs, out / "curves.png")
        write_report(
            out / "report.md", config=cfg.to_dict(),
            summary={"recipe": cfg.train.recipe, "dataset": splits.source,
                     "evaluated on": split_name,
                     "final top-1": f"{result.top1:.2%}", "final top-5": f"{result.top5:.2%}",
                     "weights evaluated": "EMA" if cfg.train.ema_decay else "trained",
                     "epochs": state.epoch, "optimizer steps": state.step,
                     "skipped unreadable files": len(state.skipped),
                     "wall time": f"{seconds:.1f} s"},
            epochs=epochs, per_class=dict(zip(splits.classes, result.per_class)),
            skipped=state.skipped, files=files)
    barrier(dist)
    return TrainResult(out=out, model_path=model_path, top1=result.top1, top5=result.top5,
                       epochs=state.epoch, steps=state.step,
                       seconds=time.perf_counter() - t_start, skipped=state.skipped,
                       files=files, model=final)


def _resolve_resume(resume: str | os.PathLike | None, out: Path) -> Path | None:
    if resume is None:
        return None
    p = Path(resume)
    if p.is_dir():
        latest = ckpt.find_latest(p)
        if latest is None:
            raise UserError(f"--resume: no checkpoint-*.pt in {p}")
        return latest
    if str(resume) == "auto":
        latest = ckpt.find_latest(out)
        if latest is None:
            raise UserError(f"--resume: no checkpoint-*.pt in {out}")
        return latest
    return p
