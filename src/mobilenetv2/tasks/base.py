"""What a task (classification, segmentation, detection) gives the shared training machinery.

The paper applies one backbone to three tasks (sections 6.1-6.3). `train.run` owns what they
share: DDP, resume, EMA, mixed precision, channels_last, checkpoints, progress bars,
metrics.jsonl, curves and report.md. A `Task` owns what differs: its data, how a network is
built or adapted from `--weights`, the loss of one micro-batch, the evaluation loop and its
report files. `tasks.get_task(cfg.model.task)` picks one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data import Dataset

from mobilenetv2.config import RunConfig
from mobilenetv2.data.loaders import collate_skipping
from mobilenetv2.data.preprocessing import Preprocessing

__all__ = ["Metrics", "StepOut", "Task", "TaskData"]


@dataclass
class TaskData:
    """What a training run trains and validates on.

    Datasets yield `(image CHW tensor, target)` (float, or uint8 with `normalize`), or
    `(data.datasets.SKIPPED, path)` for a sample that cannot be read; `collate` turns a list
    of those into `(images, targets, skipped paths)`.
    """

    pre: Preprocessing          # evaluation preprocessing, recorded in the shipped weights
    train: Dataset
    val: Dataset
    classes: list[str]
    source: str                 # "bundled digits (scikit-learn)", a folder path ...
    val_name: str               # "test", "val", "held-out 10%"
    unreadable: list[str] = field(default_factory=list)
    collate: Callable[[list], tuple[Any, Any, list]] = collate_skipping
    # Applied to each training batch on the device before the step: turns a uint8 batch into
    # the normalized float the network takes (`data.transforms.BatchNormalize`); None when
    # the training set already yields normalized floats.
    normalize: Callable[[Any], Any] | None = None


@dataclass
class StepOut:
    """One micro-batch's loss, and the progress bar's running accuracy `correct / total`
    (top-1 for classification, pixel accuracy for segmentation; total 0 hides it)."""

    loss: torch.Tensor          # float32 scalar
    correct: float
    total: float


class Metrics(Protocol):
    """What an evaluation returns."""

    loss: float
    count: int                  # images evaluated
    skipped: list[str]

    @property
    def score(self) -> float:
        """Higher is better (top-1, mIoU, mAP): picks `best.pt`."""
        ...

    def summary(self) -> str:
        """One line for people, e.g. "top-1 95.00%"."""
        ...

    def record(self) -> dict[str, float]:
        """Merged into each epoch's metrics.jsonl record; keys start with "val_"."""
        ...

    def accuracy(self) -> dict[str, float]:
        """Stored in the weights file's `accuracy` section."""
        ...

    def per_class(self, classes: list[str]) -> dict[str, float]:
        """Class name -> accuracy / IoU / AP, for report.md."""
        ...


class Task(Protocol):
    """One of the paper's applications, as the training machinery sees it."""

    name: str

    def data(self, cfg: RunConfig, size: int) -> TaskData: ...

    def build_model(self, cfg: RunConfig, num_classes: int) -> nn.Module:
        """A new network of `cfg.model`, or `cfg.train.weights` adapted to `num_classes`."""
        ...

    def targets_to(self, y: Any, device: torch.device) -> Any: ...

    def step(self, model: nn.Module, x: torch.Tensor, y: Any, ctx: Any,
             seed: int) -> StepOut:
        """Forward and loss of one micro-batch, inside the caller's autocast; `ctx` is the
        loop's `train.engine.StepContext`, `seed` the micro-batch's own seed."""
        ...

    def evaluate(self, model: nn.Module, loader: torch.utils.data.DataLoader,
                 device: torch.device, amp_dtype: torch.dtype | None = None,
                 memory_format: torch.memory_format = torch.contiguous_format,
                 sum_over_ranks: Callable[[torch.Tensor], Any] | None = None,
                 progress: bool = True, desc: str = "eval") -> Metrics: ...

    def write_reports(self, metrics: Metrics, classes: list[str],
                      out: Path) -> dict[str, str]:
        """eval.json and figures into `out`; returns {what: path}."""
        ...
