"""Semantic segmentation with Mobile DeepLabv3 (paper section 6.3) as a `Task`.

- Data: PASCAL VOC 2012 or an images/masks folder (`data.segmentation`), or `canvases` /
  `canvases-digits`, the demo's digits-on-photographs (`data.canvases`); DeepLab's joint
  augmentation in training.
- Model: a new `DeepLabV3`, or `--weights`: segmentation weights (a new logits conv when the
  class count differs) or classification weights, whose stem and blocks become the backbone
  (the ImageNet initialisation DeepLab starts from; the 1x1 conv to 1280 and the classifier
  are not used).
- Loss: per-pixel cross-entropy on the logits upsampled to the crop, pixels labelled 255 left
  out (DeepLab's `upsample_logits=True`, `ignore_label=255`).
- Evaluation: mIoU over the split's pixel confusion matrix (`tasks.segment_metrics`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from mobilenetv2.config import ModelConfig, RunConfig
from mobilenetv2.data.canvases import CANVAS_CLASSES, make_canvas
from mobilenetv2.data.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from mobilenetv2.data.segmentation import (
    IGNORE_INDEX,
    SegmentationDataset,
    SegTransform,
    collate_segment,
    find_pairs,
)
from mobilenetv2.errors import UserError
from mobilenetv2.model.heads.deeplabv3 import DeepLabV3
from mobilenetv2.tasks.base import StepOut, TaskData
from mobilenetv2.tasks.segment_metrics import (
    SegmentMetrics,
    segment_metrics,
    write_segment_report,
)

__all__ = ["CANVASES", "CANVASES_DIGITS", "CanvasDataset", "SegmentTask", "build_segmenter",
           "canvas_classes"]

log = logging.getLogger(__name__)

# The demo's bundled datasets (800 training, 200 validation canvases, data/canvases.py):
# `canvases` labels handwriting against the photograph (2 classes); `canvases-digits` labels
# each digit's strokes with its class (11 classes), a much slower task to learn from scratch
# (measured: 10% mIoU after 480 steps of batch 16, where `canvases` reaches 68% after 160).
CANVASES = "canvases"
CANVASES_DIGITS = "canvases-digits"
CANVAS_COUNTS = {"train": 800, "val": 200}
STROKE_CLASSES = ["background", "handwriting"]


def canvas_classes(data: str) -> list[str]:
    return list(CANVAS_CLASSES) if data == CANVASES_DIGITS else list(STROKE_CLASSES)


class CanvasDataset(Dataset):
    """The demo canvases of one split, through a `SegTransform`; `digits` keeps the digit
    classes, else every stroke is class 1."""

    def __init__(self, split: str, transform: SegTransform, seed: int = 0,
                 digits: bool = False) -> None:
        self.split, self.transform, self.seed, self.digits = split, transform, seed, digits

    def __len__(self) -> int:
        return CANVAS_COUNTS[self.split]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        img, labels = make_canvas(self.split, index, self.seed)
        if not self.digits:
            labels = (labels > 0).astype(labels.dtype)
        return self.transform(img, labels)


def _weights_model(spec: str) -> nn.Module:
    from mobilenetv2.weights import load_weights

    return load_weights(spec)


def build_segmenter(cfg: RunConfig, num_classes: int,
                    start: nn.Module | None = None) -> DeepLabV3:
    """A new segmenter of `cfg.model`, or one started from `start` (the loaded `--weights`):
    segmentation weights as they are (new logits for another class count), or a classifier's
    stem and blocks as the backbone."""
    mc = cfg.model.replace(task="segment", num_classes=num_classes)
    if start is None:
        return DeepLabV3(mc)
    sc = start.config
    if sc.task == "segment":
        model = start
        if model.num_classes != num_classes:
            log.info("new %d-class logits on %s (was %d classes)", num_classes,
                     cfg.train.weights, model.num_classes)
            model.reset_classifier(num_classes)
        if model.head.dropout.p != cfg.model.dropout:
            model.head.dropout.p = cfg.model.dropout
            model.config = model.config.replace(dropout=cfg.model.dropout)
        return model.train()
    if sc.task != "classify":
        raise UserError(f"--weights {cfg.train.weights}: a {sc.task} model cannot start a "
                        "segmenter (give classification or segmentation weights)")
    # The backbone is the classifier's: same width, rounding, padding and BatchNorm.
    mc = mc.replace(width=sc.width, round_nearest=sc.round_nearest, padding=sc.padding,
                    bn_eps=sc.bn_eps, bn_momentum=sc.bn_momentum,
                    finegrain_classification_mode=sc.finegrain_classification_mode)
    model = DeepLabV3(mc)
    own = model.backbone.state_dict()
    theirs = {k: v for k, v in start.state_dict().items() if k in own}
    missing = sorted(set(own) - set(theirs))
    if missing:
        raise UserError(f"--weights {cfg.train.weights}: the classifier lacks backbone "
                        f"tensors {', '.join(missing[:3])} ...")
    model.backbone.load_state_dict(theirs)
    log.info("backbone from %s (classification weights); new DeepLabv3 head for %d classes",
             cfg.train.weights, num_classes)
    return model


class SegmentTask:
    name = "segment"

    def data(self, cfg: RunConfig, size: int) -> TaskData:
        dc = cfg.data
        mean, std = IMAGENET_MEAN, IMAGENET_STD
        if cfg.train.weights:
            # The backbone's own normalisation (TF weights take [-1, 1], torchvision's the
            # ImageNet mean/std), so its features mean what they meant in pretraining.
            pre = _weights_model(cfg.train.weights).meta.preprocessing
            mean, std = pre.mean, pre.std
        # Recorded in the weights: `segment` keeps the aspect ratio, longer side -> `size`.
        pre = Preprocessing(resize=size, crop=size, resize_mode="shorter",
                            interpolation="bilinear", mean=tuple(mean), std=tuple(std))
        if dc.data in (CANVASES, CANVASES_DIGITS):
            # The canvases are already at scale: a milder jitter than VOC's 0.5-2.0.
            train_tf = SegTransform(size, pre, train=True, scale=(0.75, 1.5), flip=dc.hflip)
            eval_tf = SegTransform(size, pre, train=False)
            digits = dc.data == CANVASES_DIGITS
            return TaskData(pre=pre,
                            train=CanvasDataset("train", train_tf, dc.split_seed, digits),
                            val=CanvasDataset("val", eval_tf, dc.split_seed, digits),
                            classes=canvas_classes(dc.data),
                            source="digits on photographs (scikit-learn, bundled)",
                            val_name="val", collate=collate_segment)
        pairs = find_pairs(dc.data, dc.val_split, dc.split_seed, dc.strict_images)
        n = len(pairs.classes)
        if cfg.model.num_classes not in (n, ModelConfig().num_classes):
            raise UserError(f"--num-classes {cfg.model.num_classes} but {pairs.source} has "
                            f"{n} classes")
        train_tf = SegTransform(size, pre, train=True, flip=dc.hflip)
        eval_tf = SegTransform(size, pre, train=False)
        return TaskData(pre=pre, train=SegmentationDataset(pairs.train, train_tf, n),
                        val=SegmentationDataset(pairs.val, eval_tf, n), classes=pairs.classes,
                        source=pairs.source, val_name=pairs.val_name, unreadable=pairs.bad,
                        collate=collate_segment)

    def build_model(self, cfg: RunConfig, num_classes: int) -> nn.Module:
        start = _weights_model(cfg.train.weights) if cfg.train.weights else None
        return build_segmenter(cfg, num_classes, start)

    def targets_to(self, y: torch.Tensor, device: torch.device) -> torch.Tensor:
        return y.to(device, non_blocking=True)

    def step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: Any,
             seed: int) -> StepOut:
        logits = model(x)
        loss = F.cross_entropy(logits.float(), y, ignore_index=IGNORE_INDEX)
        valid = y != IGNORE_INDEX
        correct = float(((logits.argmax(1) == y) & valid).sum())
        return StepOut(loss, correct, float(valid.sum()))

    def evaluate(self, model: nn.Module, loader: torch.utils.data.DataLoader,
                 device: torch.device, amp_dtype: torch.dtype | None = None,
                 memory_format: torch.memory_format = torch.contiguous_format,
                 sum_over_ranks: Callable[[torch.Tensor], Any] | None = None,
                 progress: bool = True, desc: str = "eval") -> SegmentMetrics:
        return segment_metrics(model, loader, device, model.num_classes, amp_dtype,
                               memory_format, sum_over_ranks=sum_over_ranks,
                               progress=progress, desc=desc)

    def write_reports(self, metrics: SegmentMetrics, classes: list[str],
                      out: Path) -> dict[str, str]:
        return write_segment_report(metrics, classes, out)
