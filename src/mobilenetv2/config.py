"""Typed, frozen configuration that travels from the CLI into every checkpoint.

`ModelConfig` holds every architectural choice of MobileNetV2 (Sandler et al., 2018,
arXiv 1801.04381): the two knobs of section 3.4 (width multiplier, input resolution) and the
options users of the official TF-slim / Keras releases need to reproduce them exactly.
`DataConfig` and `TrainConfig` say how a network is trained (section 6.1); `RunConfig` bundles
the three with the run directory, and is what `config.json` and every checkpoint store.
`load_config_file` reads the YAML/JSON file that sets defaults below the command line.

Long because every field is documented here, once: the CLI builds each
option's --help text from these Attributes sections.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal, get_args

from mobilenetv2.errors import UserError

__all__ = [
    "DEFAULT_RUN_DIR",
    "DataConfig",
    "ModelConfig",
    "PADDINGS",
    "TASKS",
    "RunConfig",
    "TrainConfig",
    "config_from_dict",
    "config_to_dict",
    "load_config_file",
]

Padding = Literal["symmetric", "tf_same"]
PADDINGS: tuple[str, ...] = get_args(Padding)
# The paper's three applications: classification (section 6.1), object detection with
# SSDLite (6.2), semantic segmentation with Mobile DeepLabv3 (6.3). A weights file records
# its task in its config, and every verb dispatches on it.
Task = Literal["classify", "segment", "detect"]
TASKS: tuple[str, ...] = get_args(Task)
OUTPUT_STRIDES = (8, 16, 32)


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to build a MobileNetV2 classifier or backbone.

    Attributes:
        width: Width multiplier (the paper's alpha, section 3.4); any float > 0.
        resolution: Nominal input resolution; recorded, and used by the profiler. Any input
            at least `min_input_size` pixels works at inference (global pooling).
        num_classes: Classifier outputs; 1001 reproduces TF releases (index 0 = background).
        dropout: Dropout *rate* before the classifier (0.2 in the paper's recipe).
        bn_eps: BatchNorm epsilon; 1e-5 is PyTorch's, 1e-3 matches Keras and TF-slim.
        bn_momentum: BatchNorm momentum in PyTorch semantics (weight of the new batch);
            TF's decay 0.999 corresponds to 0.001 here.
        padding: "symmetric" (PyTorch convention) or "tf_same" (TensorFlow's asymmetric
            SAME padding for stride-2 layers, computed from the actual input size).
        output_stride: 32, 16 or 8. Below 32 the later strides become dilations, as
            DeepLabv3 does (paper section 6.3).
        small_input: Preset for 32x32 inputs (CIFAR-style): stem and the first stride-2
            stage run at stride 1, so the network downsamples 8x instead of 32x.
        finegrain_classification_mode: TF-slim's name. True keeps the last 1x1 conv at
            1280 channels for widths below 1 (every official checkpoint, torchvision and
            Keras do); False also shrinks it with the width (TF-slim's bare behaviour).
        round_nearest: Channel counts are rounded to multiples of this (8 everywhere
            except DeepLab, whose depth multiplier rounds to multiples of 1).
        task: "classify" (the classifier), "segment" (Mobile DeepLabv3) or "detect"
            (SSDLite); `model.build.build_model` builds the network a config describes.
        aspp: Segmentation only: add DeepLabv3's three 3x3 atrous branches (rates 6/12/18
            at output stride 16, doubled at 8) to the head; False is the paper's on-device
            model (section 6.3, Table 7).
    """

    width: float = 1.0
    resolution: int = 224
    num_classes: int = 1000
    dropout: float = 0.2
    bn_eps: float = 1e-5
    bn_momentum: float = 0.1
    padding: Padding = "symmetric"
    output_stride: int = 32
    small_input: bool = False
    finegrain_classification_mode: bool = True
    round_nearest: int = 8
    task: Task = "classify"
    aspp: bool = False

    def __post_init__(self) -> None:
        _check(
            isinstance(self.width, (int, float))
            and math.isfinite(self.width)
            and self.width > 0,
            f"width must be a finite number > 0, got {self.width!r}",
        )
        _check(
            _is_int(self.num_classes) and self.num_classes >= 1,
            f"num_classes must be an integer >= 1, got {self.num_classes!r}",
        )
        _check(
            isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0,
            f"dropout is a rate in [0, 1), got {self.dropout!r}"
            + (" (did you pass a keep probability?)" if self.dropout == 1 else ""),
        )
        _check(
            isinstance(self.bn_eps, (int, float)) and self.bn_eps > 0,
            f"bn_eps must be > 0, got {self.bn_eps!r}",
        )
        _check(
            isinstance(self.bn_momentum, (int, float)) and 0.0 < self.bn_momentum <= 0.5,
            f"bn_momentum is PyTorch's (weight of the new batch, e.g. 0.1 or 0.001), got "
            f"{self.bn_momentum!r}"
            + (
                "; a TF decay like 0.997 is momentum 1 - decay"
                if isinstance(self.bn_momentum, (int, float)) and self.bn_momentum > 0.5
                else ""
            ),
        )
        _check(
            self.padding in PADDINGS,
            f"padding must be one of {', '.join(PADDINGS)}, got {self.padding!r}",
        )
        _check(
            self.output_stride in OUTPUT_STRIDES,
            f"output_stride must be 8, 16 or 32, got {self.output_stride!r}",
        )
        _check(
            self.task in TASKS,
            f"task must be one of {', '.join(TASKS)}, got {self.task!r}",
        )
        _check(
            _is_int(self.round_nearest) and self.round_nearest >= 1,
            f"round_nearest must be an integer >= 1, got {self.round_nearest!r}",
        )
        _check(
            not (self.small_input and self.output_stride != 32),
            f"small_input already reduces the network stride to 8; output_stride="
            f"{self.output_stride} contradicts it (leave output_stride at 32)",
        )
        _check(
            _is_int(self.resolution) and self.resolution >= self.min_input_size,
            f"resolution {self.resolution!r} is smaller than this network allows "
            f"(at least {self.min_input_size} pixels"
            + (", or use small_input=True for 32x32 images" if not self.small_input else "")
            + ")",
        )

    @property
    def min_input_size(self) -> int:
        """Smallest input side: the network's total downsampling (32, or 8 for small_input)."""
        return 8 if self.small_input else 32

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with some fields changed; unknown names raise `ValueError`."""
        return _replace(self, changes, "model")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Build from a dict (e.g. checkpoint metadata); unknown keys raise `ValueError`."""
        return cls().replace(**data)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        return cls.from_dict(json.loads(text))


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Any config dataclass to a JSON-ready dict."""
    return dataclasses.asdict(cfg)


def config_from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Build config dataclass `cls` from `data`, naming unknown keys in a `ValueError`."""
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} option(s): {', '.join(unknown)}")
    return cls(**data)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


# ---------------------------------------------------------------------------------------------
# Training and data configuration (DESIGN example 5): the same frozen-dataclass pattern as
# ModelConfig; `mobilenetv2.train.recipes` holds the named presets that fill them in.

Preset = Literal["auto", "imagenet", "inception", "small"]
AutoAugment = Literal["none", "trivial", "autoaugment"]
Optimizer = Literal["sgd", "rmsprop_tf", "adamw"]
Schedule = Literal["cosine", "exponential", "constant", "poly"]
Amp = Literal["auto", "off", "bf16", "fp16"]
MemoryFormat = Literal["auto", "channels_last", "contiguous"]


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from and how they are prepared.

    Attributes:
        data: "digits" (the bundled dataset), an ImageFolder root with `train/` and `val/`
            sub-folders, or a single class-per-folder directory from which `val_split` of
            each class is held out.
        val_split: Fraction of each class held out for validation when `data` has no `val/`.
        split_seed: Seed of the held-out split (fixed, so every run sees the same split).
        preset: Transform preset: "imagenet" (RandomResizedCrop, flip, augment, erasing),
            "inception" (TF Inception preprocessing, [-1, 1] scaling), "small" (small inputs:
            pad-and-crop, small affine jitter, no flip), "auto" picks from the data.
        auto_augment: "none", "trivial" (TrivialAugmentWide) or "autoaugment" (ImageNet policy).
        random_erasing: Probability of RandomErasing on each training image (0 disables).
        hflip: Random horizontal flips in the imagenet preset (off for digits and text).
        mixup_alpha: Beta(alpha, alpha) of mixup (0 disables).
        cutmix_alpha: Beta(alpha, alpha) of cutmix (0 disables); with both, one per batch.
        eval_crop_ratio: Center-crop ratio at evaluation: resize to crop / ratio, then crop.
        eval_size: Evaluation crop size; 0 means the training resolution (the modern recipe
            trains at 176 and evaluates at 224, torchvision's FixRes mitigation).
        interpolation: "bilinear" or "bicubic".
        batch_size: Images per process per step (the global batch is this x processes).
        num_workers: Data-loading worker processes per process; -1 picks automatically.
        strict_images: Make a corrupt, truncated or non-image file fatal instead of skipping
            it with a warning.
    """

    data: str = "digits"
    val_split: float = 0.1
    split_seed: int = 0
    preset: Preset = "auto"
    auto_augment: AutoAugment = "none"
    random_erasing: float = 0.0
    hflip: bool = True
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    eval_crop_ratio: float = 0.875
    eval_size: int = 0
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"
    batch_size: int = 128
    num_workers: int = -1
    strict_images: bool = False

    def __post_init__(self) -> None:
        _check(0.0 < self.val_split < 1.0, f"val_split must be in (0, 1), got {self.val_split!r}")
        _check(
            0.0 <= self.random_erasing <= 1.0,
            f"random_erasing is a probability, got {self.random_erasing!r}",
        )
        _check(self.mixup_alpha >= 0, f"mixup_alpha must be >= 0, got {self.mixup_alpha!r}")
        _check(self.cutmix_alpha >= 0, f"cutmix_alpha must be >= 0, got {self.cutmix_alpha!r}")
        _check(
            0.0 < self.eval_crop_ratio <= 1.0,
            f"eval_crop_ratio must be in (0, 1], got {self.eval_crop_ratio!r}",
        )
        _check(
            _is_int(self.batch_size) and self.batch_size >= 1,
            f"batch_size must be an integer >= 1, got {self.batch_size!r}",
        )
        _check(
            _is_int(self.num_workers) and self.num_workers >= -1,
            f"num_workers must be -1 (auto) or >= 0, got {self.num_workers!r}",
        )

    def replace(self, **changes: Any) -> DataConfig:
        return _replace(self, changes)


@dataclass(frozen=True)
class TrainConfig:
    """How to optimise: recipe, schedule, precision, checkpoints, logging.

    Attributes:
        recipe: Name of the preset these values came from (paper, modern, finetune, digits).
        epochs: Number of passes over the training set.
        optimizer: "sgd" (momentum, Nesterov off), "rmsprop_tf" (TF semantics: epsilon inside
            the square root, mean square initialised to 1) or "adamw".
        lr: Peak learning rate for a global batch of `lr_batch` images.
        lr_batch: Reference batch of `lr`; the rate is scaled linearly with the global batch.
        schedule: "cosine" (to `min_lr`), "exponential" (x `lr_decay` per epoch), "constant"
            or "poly" (DeepLab's: lr x (1 - step / steps) ^ 0.9).
        lr_decay: Per-epoch decay factor of the exponential schedule (0.98 in the paper).
        warmup_epochs: Linear warmup from `warmup_start` x lr, in epochs (fractions allowed).
        warmup_start: Starting fraction of the learning rate during warmup.
        min_lr: Final learning rate of the cosine schedule.
        momentum: Momentum of SGD and RMSProp.
        rmsprop_decay: Decay of RMSProp's mean square (TF's rho, 0.9).
        rmsprop_eps: RMSProp epsilon, added inside the square root as TF does (1.0 in TF-slim).
        weight_decay: L2 weight decay (coupled for SGD/RMSProp, decoupled for AdamW).
        decay_all: Also decay BatchNorm, biases and depthwise kernels (the recipes do not).
        label_smoothing: Label smoothing of the cross-entropy loss.
        ema_decay: Decay of the exponential moving average of weights (0 disables).
        ema_every: Update the EMA every this many optimizer steps (decay adjusted to match).
        ema_warmup: Ramp the EMA decay up as (1 + n) / (10 + n) early in training.
        grad_accum: Micro-batches accumulated per optimizer step.
        clip_grad_norm: Clip the global gradient norm to this value (0 disables).
        amp: Mixed precision: "auto" (on a CPU measured per machine and model shape among
            fp32 and, with native bf16, bf16: `train.tune`; bf16 or fp16 on CUDA), "off",
            "bf16" or "fp16".
        memory_format: "auto" (on a CPU measured: channels_last or NCHW, `train.tune`; else
            channels_last), "channels_last", "contiguous".
        compile: Wrap the model in `torch.compile`.
        sync_bn: Use SyncBatchNorm under DDP.
        freeze: Fine-tuning: "none", "backbone" (train only the classifier) or "stages:K"
            (freeze the stem and the first K stages of Table 2).
        freeze_bn: Keep BatchNorm layers in eval mode (running statistics frozen).
        weights: Initial weights (fine-tuning); a head of the data's class count replaces the
            file's head when they differ.
        seed: Seed of weights, data order and augmentation.
        deterministic: Request deterministic algorithms (for bit-exact resume tests).
        checkpoint_every: Also checkpoint every this many optimizer steps (0: epochs only).
        keep_last: Number of recent checkpoints kept (besides `best.pt`).
        max_steps: Stop after this many optimizer steps (0: run all epochs); for smoke tests.
        log_every: Write a step line to metrics.jsonl every this many optimizer steps.
        device: "auto", "cpu", "cuda" or "cuda:N".
        tensorboard: Write TensorBoard event files when tensorboard is installed.
        threads: CPU threads for intra-op parallelism (0: the cores the loader workers
            leave, `train.budget`).
        profile_steps: Time this many optimizer steps phase by phase (data wait, host-to-
            device, forward, backward, optimizer, EMA, logging, checkpoint) and log the
            table (0: off; `train.steptimer`).
        det_loss: Detection's classification loss: "hard_negatives" (softmax cross-entropy
            with 3:1 hard negative mining, TF's SSD config) or "focal" (all anchors).
    """

    recipe: str = "digits"
    epochs: int = 10
    optimizer: Optimizer = "sgd"
    lr: float = 0.1
    lr_batch: int = 128
    schedule: Schedule = "cosine"
    lr_decay: float = 0.98
    warmup_epochs: float = 0.0
    warmup_start: float = 0.1
    min_lr: float = 0.0
    momentum: float = 0.9
    rmsprop_decay: float = 0.9
    rmsprop_eps: float = 1.0
    weight_decay: float = 4e-5
    decay_all: bool = False
    label_smoothing: float = 0.1
    ema_decay: float = 0.0
    ema_every: int = 1
    ema_warmup: bool = True
    grad_accum: int = 1
    clip_grad_norm: float = 0.0
    amp: Amp = "auto"
    memory_format: MemoryFormat = "auto"
    compile: bool = False
    sync_bn: bool = False
    freeze: str = "none"
    freeze_bn: bool = False
    weights: str | None = None
    seed: int = 0
    deterministic: bool = False
    checkpoint_every: int = 0
    keep_last: int = 2
    max_steps: int = 0
    log_every: int = 10
    device: str = "auto"
    tensorboard: bool = True
    threads: int = 0
    profile_steps: int = 0
    det_loss: Literal["hard_negatives", "focal"] = "hard_negatives"

    def __post_init__(self) -> None:
        _check(_is_int(self.epochs) and self.epochs >= 1, f"epochs must be >= 1, got "
               f"{self.epochs!r}")
        _check(
            isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0,
            f"lr must be a finite number > 0, got {self.lr!r}",
        )
        _check(_is_int(self.lr_batch) and self.lr_batch >= 1,
               f"lr_batch must be >= 1, got {self.lr_batch!r}")
        _check(0.0 < self.lr_decay <= 1.0, f"lr_decay must be in (0, 1], got {self.lr_decay!r}")
        _check(self.warmup_epochs >= 0, f"warmup_epochs must be >= 0, got {self.warmup_epochs!r}")
        _check(0.0 <= self.momentum < 1.0, f"momentum must be in [0, 1), got {self.momentum!r}")
        _check(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay!r}")
        _check(self.rmsprop_eps > 0, f"rmsprop_eps must be > 0, got {self.rmsprop_eps!r}")
        _check(
            0.0 <= self.label_smoothing < 1.0,
            f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}",
        )
        _check(
            0.0 <= self.ema_decay < 1.0,
            f"ema_decay must be in [0, 1) (0 disables), got {self.ema_decay!r}",
        )
        _check(_is_int(self.ema_every) and self.ema_every >= 1,
               f"ema_every must be >= 1, got {self.ema_every!r}")
        _check(_is_int(self.grad_accum) and self.grad_accum >= 1,
               f"grad_accum must be >= 1, got {self.grad_accum!r}")
        _check(self.clip_grad_norm >= 0, f"clip_grad_norm must be >= 0, got "
               f"{self.clip_grad_norm!r}")
        _check(
            self.freeze in ("none", "backbone") or _is_stages(self.freeze),
            f"freeze must be 'none', 'backbone' or 'stages:K' (K in 0..7), got {self.freeze!r}",
        )
        _check(_is_int(self.checkpoint_every) and self.checkpoint_every >= 0,
               f"checkpoint_every must be >= 0, got {self.checkpoint_every!r}")
        _check(_is_int(self.keep_last) and self.keep_last >= 1,
               f"keep_last must be >= 1, got {self.keep_last!r}")
        _check(_is_int(self.max_steps) and self.max_steps >= 0,
               f"max_steps must be >= 0, got {self.max_steps!r}")
        _check(_is_int(self.log_every) and self.log_every >= 1,
               f"log_every must be >= 1, got {self.log_every!r}")
        _check(_is_int(self.profile_steps) and self.profile_steps >= 0,
               f"profile_steps must be >= 0, got {self.profile_steps!r}")

    def replace(self, **changes: Any) -> TrainConfig:
        return _replace(self, changes)


def _is_stages(text: str) -> bool:
    head, _, k = text.partition(":")
    return head == "stages" and k.isdigit() and 0 <= int(k) <= 7


def _replace(cfg: Any, changes: dict[str, Any], what: str | None = None) -> Any:
    """`dataclasses.replace` that names unknown fields (`what`: how the message calls them)."""
    unknown = sorted(set(changes) - {f.name for f in fields(cfg)})
    if unknown:
        raise ValueError(
            f"unknown {what or type(cfg).__name__} option(s): {', '.join(unknown)}; "
            f"known: {', '.join(f.name for f in fields(cfg))}"
        )
    return dataclasses.replace(cfg, **changes)


# ---------------------------------------------------------------------------------------------
# A run: the three configurations and where the run writes.

DEFAULT_RUN_DIR = "runs/train"
# Top-level keys of a --config file; `recipe` names the preset below the file's values.
CONFIG_FILE_KEYS = ("model", "data", "train", "out", "recipe")


@dataclass(frozen=True)
class RunConfig:
    """The effective configuration of a run: saved as `config.json` and in every checkpoint."""

    model: ModelConfig
    data: DataConfig
    train: TrainConfig
    out: str = DEFAULT_RUN_DIR

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model.to_dict(), "data": config_to_dict(self.data),
                "train": config_to_dict(self.train), "out": self.out}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        return cls(model=ModelConfig.from_dict(d["model"]),
                   data=config_from_dict(DataConfig, d["data"]),
                   train=config_from_dict(TrainConfig, d["train"]),
                   out=d.get("out", DEFAULT_RUN_DIR))


def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML or JSON file with optional `model:`, `data:`, `train:` sections (and `out`,
    `recipe`)."""
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
    if not isinstance(doc, dict) or set(doc) - set(CONFIG_FILE_KEYS):
        raise UserError(f"--config {p}: expected sections model, data, train (and out, "
                        f"recipe); got {list(doc) if isinstance(doc, dict) else type(doc)}")
    return doc
