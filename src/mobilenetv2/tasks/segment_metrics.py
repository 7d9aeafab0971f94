"""Segmentation metrics (paper section 6.3, Table 7): mIoU, per-class IoU, pixel accuracy
and the pixel confusion matrix, from one confusion matrix over all pixels of the split
(PASCAL VOC's and DeepLab's definition; pixels labelled 255 are left out), optionally with
DeepLab's multi-scale + flip inference (the paper's "MF" rows); and the report files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mobilenetv2._files import atomic_write
from mobilenetv2.errors import UserError
from mobilenetv2.evaluate import eval_batches, save_figure

__all__ = [
    "IGNORE_INDEX",
    "MF_SCALES",
    "SegmentMetrics",
    "pixel_confusion",
    "segment_metrics",
    "segment_probs",
    "write_segment_report",
]

IGNORE_INDEX = 255
# DeepLab's multi-scale evaluation (`eval.py --eval_scales`): the paper's "MF" rows.
MF_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


@dataclass
class SegmentMetrics:
    """mIoU, per-class IoU, pixel accuracy and the pixel confusion matrix (rows: true)."""

    loss: float
    confusion: torch.Tensor
    count: int
    skipped: list[str]

    @property
    def iou(self) -> list[float]:
        """Per-class IoU; NaN for a class absent from both labels and predictions."""
        c = self.confusion.double()
        inter = c.diagonal()
        union = c.sum(0) + c.sum(1) - inter
        return torch.where(union > 0, inter / union.clamp(min=1),
                           torch.tensor(float("nan"), dtype=torch.float64)).tolist()

    @property
    def miou(self) -> float:
        vals = [v for v in self.iou if v == v]
        return sum(vals) / len(vals) if vals else 0.0

    @property
    def pixel_acc(self) -> float:
        c = self.confusion.double()
        return float(c.diagonal().sum() / c.sum().clamp(min=1))

    @property
    def score(self) -> float:
        return self.miou

    def summary(self) -> str:
        return f"mIoU {self.miou:.2%}, pixel acc {self.pixel_acc:.2%}"

    def record(self) -> dict[str, float]:
        return {"val_loss": self.loss, "val_miou": self.miou, "val_pixel_acc": self.pixel_acc}

    def accuracy(self) -> dict[str, float]:
        return {"miou": self.miou, "pixel_acc": self.pixel_acc}

    def per_class(self, classes: list[str]) -> dict[str, float]:
        return dict(zip(classes, self.iou))

    def to_dict(self, classes: list[str]) -> dict[str, Any]:
        return {"miou": self.miou, "pixel_acc": self.pixel_acc, "loss": self.loss,
                "count": self.count,
                "per_class_iou": {k: (None if v != v else v)
                                  for k, v in self.per_class(classes).items()},
                "confusion": self.confusion.tolist(), "labels": classes,
                "skipped_files": self.skipped}


def pixel_confusion(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(num_classes, num_classes) counts of (true, predicted) over pixels not ignored."""
    keep = target != IGNORE_INDEX
    t, p = target[keep].long(), pred[keep].long()
    if t.numel() and int(t.max()) >= num_classes:
        raise UserError(f"a mask holds class {int(t.max())}, but the model has "
                        f"{num_classes} classes")
    return torch.bincount(t * num_classes + p, minlength=num_classes ** 2).view(
        num_classes, num_classes)


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


def segment_probs(model: nn.Module, x: torch.Tensor, scales: tuple[float, ...] = (1.0,),
                  flip: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Class probabilities at the input size, averaged over `scales` (and left-right flips),
    as DeepLab's `predict_labels_multi_scale` does; also the scale-1 logits (for the loss).
    A scale s resizes an H-pixel side to int((H - 1) * s + 1) (DeepLab's scale_dimension)."""
    size = x.shape[-2:]
    total, base = None, None
    for s in scales:
        xs = x if s == 1.0 else _resize(x, (int((size[0] - 1) * s + 1),
                                            int((size[1] - 1) * s + 1)))
        for flipped in ((False, True) if flip else (False,)):
            out = model(xs.flip(-1) if flipped else xs).float()
            if flipped:
                out = out.flip(-1)
            if out.shape[-2:] != size:
                out = _resize(out, size)
            if s == 1.0 and not flipped:
                base = out
            p = out.softmax(1)
            total = p if total is None else total + p
    assert total is not None
    return total / (len(scales) * (2 if flip else 1)), base if base is not None else total.log()


@torch.no_grad()
def segment_metrics(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    device: torch.device,
    num_classes: int,
    amp_dtype: torch.dtype | None = None,
    memory_format: torch.memory_format = torch.contiguous_format,
    sum_over_ranks: Callable[[torch.Tensor], torch.Tensor] | None = None,
    progress: bool = True,
    desc: str = "eval",
    scales: tuple[float, ...] = (1.0,),
    flip: bool = False,
) -> SegmentMetrics:
    """mIoU of a segmenter over `loader` (batches of images, (N, H, W) masks, skipped paths);
    the loss is the single-scale cross-entropy over pixels not ignored."""
    model.eval()
    sums = torch.zeros(2, dtype=torch.float64, device=device)   # loss * pixels, pixels
    images = torch.zeros(1, dtype=torch.float64, device=device)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    skipped: list[str] = []
    for x, y in eval_batches(loader, device, memory_format, skipped, desc=desc,
                             progress=progress):
        y = y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            probs, logits = segment_probs(model, x, scales, flip)
        valid = int((y != IGNORE_INDEX).sum())
        if valid:
            sums[0] += F.cross_entropy(logits.float(), y, ignore_index=IGNORE_INDEX,
                                       reduction="sum")
            sums[1] += valid
        images += len(x)
        confusion += pixel_confusion(probs.argmax(1), y, num_classes)
    if sum_over_ranks is not None:
        sum_over_ranks(sums)
        sum_over_ranks(images)
        sum_over_ranks(confusion)
    return SegmentMetrics(loss=sums[0].item() / max(1.0, sums[1].item()),
                          confusion=confusion.cpu(), count=int(images.item()), skipped=skipped)


def write_segment_report(metrics: SegmentMetrics, classes: list[str],
                         out: str | os.PathLike, stem: str = "eval") -> dict[str, str]:
    """`<out>/<stem>.json` (mIoU, per-class IoU, pixel accuracy, confusion), the pixel
    confusion matrix `confusion.png` and the per-class IoU bars `iou.png`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    json_path = atomic_write(out / f"{stem}.json", lambda tmp: Path(tmp).write_text(
        json.dumps(metrics.to_dict(classes), indent=1)), suffix=".json")
    title = f"{metrics.summary()} on {metrics.count} images"
    png = _plot_pixel_confusion(metrics.confusion, classes, out / "confusion.png", title)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.4 * len(classes) + 2), 4))
    ious = [0.0 if v != v else v for v in metrics.iou]
    ax.bar(range(len(classes)), [100 * v for v in ious], color="tab:blue")
    ax.axhline(100 * metrics.miou, color="tab:red", ls="--", label=f"mIoU {metrics.miou:.1%}")
    ax.set_xticks(range(len(classes)), classes, rotation=90 if len(classes) > 8 else 0)
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 100)
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    bars = save_figure(fig, out / "iou.png")
    return {"eval report": str(json_path), "confusion matrix": str(png),
            "per-class IoU": str(bars)}


def _plot_pixel_confusion(confusion: torch.Tensor, labels: list[str], path: Path,
                          title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = confusion.double()
    norm = c / c.sum(1, keepdim=True).clamp(min=1)
    n = len(labels)
    size = min(16.0, max(5.0, 0.45 * n + 2))
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    im = ax.imshow(norm.numpy(), cmap="Blues", vmin=0, vmax=1)
    if n <= 30:
        ax.set_xticks(range(n), labels, rotation=90 if n > 10 else 0)
        ax.set_yticks(range(n), labels)
        for i in range(n):
            for j in range(n):
                if norm[i, j] >= 0.005:
                    ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04,
                 label="fraction of the true class's pixels")
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)
