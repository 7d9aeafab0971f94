"""Classification (paper section 6.1) as a `Task`: the folder/digits data, cross-entropy with
label smoothing and mixup/cutmix, top-k accuracy. The functions it wraps are the ones the
classifier used before tasks existed, so this path is exactly as fast as it was.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mobilenetv2 import evaluate
from mobilenetv2.config import ModelConfig, RunConfig
from mobilenetv2.data.datasets import build_splits
from mobilenetv2.data.loaders import mix_batch
from mobilenetv2.data.presets import decode_side, eval_preprocessing, train_transform
from mobilenetv2.data.transforms import BatchNormalize, eval_transform
from mobilenetv2.errors import UserError
from mobilenetv2.evaluate import EvalReport, TopKMetrics, topk_metrics, write_eval_report
from mobilenetv2.model import MobileNetV2
from mobilenetv2.tasks.base import StepOut, TaskData

__all__ = ["ClassifyMetrics", "ClassifyTask", "build_classifier"]

log = logging.getLogger(__name__)


def build_classifier(cfg: RunConfig, num_classes: int) -> MobileNetV2:
    """`cfg.train.weights` with a `num_classes` head and the configured dropout, or a new
    network of `cfg.model` (the caller seeds torch first)."""
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


@dataclass
class ClassifyMetrics:
    """`TopKMetrics` with the `Metrics` protocol's view of it."""

    result: TopKMetrics
    num_classes: int

    @property
    def loss(self) -> float:
        return self.result.loss

    @property
    def count(self) -> int:
        return self.result.count

    @property
    def skipped(self) -> list[str]:
        return self.result.skipped

    @property
    def score(self) -> float:
        return self.result.top1

    def summary(self) -> str:
        return evaluate.topk_text(self.result.top1, self.result.top5, self.num_classes)

    def record(self) -> dict[str, float]:
        return {"val_loss": self.result.loss, "val_top1": self.result.top1,
                "val_top5": self.result.top5}

    def accuracy(self) -> dict[str, float]:
        return {"top1": self.result.top1, "top5": self.result.top5}

    def per_class(self, classes: list[str]) -> dict[str, float]:
        return dict(zip(classes, self.result.per_class))


class ClassifyTask:
    name = "classify"

    def data(self, cfg: RunConfig, size: int) -> TaskData:
        dc = cfg.data
        pre = eval_preprocessing(dc, dc.eval_size or size)
        # The training images stay uint8 until the batch is on the device (BatchNormalize,
        # issue 14); JPEGs decode at the reduced scale each transform still resolves.
        splits = build_splits(dc, train_transform(dc, size, batch_normalize=True),
                              eval_transform(pre),
                              decode_sides=(decode_side(dc, size), pre.resize))
        num_classes = len(splits.classes)
        if cfg.model.num_classes not in (num_classes, ModelConfig().num_classes):
            raise UserError(f"--num-classes {cfg.model.num_classes} but {splits.source} has "
                            f"{num_classes} classes ({', '.join(splits.classes[:5])} ...)")
        return TaskData(pre=pre, train=splits.train, val=splits.val, classes=splits.classes,
                        source=splits.source, val_name=splits.val_name,
                        unreadable=list(splits.unreadable),
                        normalize=BatchNormalize(pre.mean, pre.std))

    def build_model(self, cfg: RunConfig, num_classes: int) -> nn.Module:
        return build_classifier(cfg, num_classes)

    def targets_to(self, y: torch.Tensor, device: torch.device) -> torch.Tensor:
        return y.to(device, non_blocking=True)

    def step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: Any,
             seed: int) -> StepOut:
        xm, target = mix_batch(x, y, ctx.num_classes, ctx.mixup_alpha, ctx.cutmix_alpha,
                               seed)
        logits = model(xm)
        loss = F.cross_entropy(logits.float(), target, label_smoothing=ctx.label_smoothing)
        return StepOut(loss, float((logits.argmax(1) == y).sum()), float(len(y)))

    def evaluate(self, model: nn.Module, loader: torch.utils.data.DataLoader,
                 device: torch.device, amp_dtype: torch.dtype | None = None,
                 memory_format: torch.memory_format = torch.contiguous_format,
                 sum_over_ranks: Callable[[torch.Tensor], Any] | None = None,
                 progress: bool = True, desc: str = "eval") -> ClassifyMetrics:
        num_classes = model.num_classes
        return ClassifyMetrics(
            topk_metrics(model, loader, device, num_classes, amp_dtype, memory_format,
                         sum_over_ranks=sum_over_ranks, progress=progress, desc=desc),
            num_classes)

    def write_reports(self, metrics: ClassifyMetrics, classes: list[str],
                      out: Path) -> dict[str, str]:
        json_path, png = write_eval_report(EvalReport(metrics.result, classes, None, None), out)
        return {"eval report": str(json_path), "confusion matrix": str(png)}
