"""Evaluation: the metric loop of each task and the `eval` verb's report.

- Classification (the paper's section 6.1 reports single center-crop top-1): `topk_metrics`
  runs a model over a loader and returns `TopKMetrics` (top-1/top-5, mean loss, confusion
  matrix, per-class accuracy). Training evaluates with it every epoch; segmentation (mIoU)
  and detection (COCO mAP) metrics go beside it, each a loop over a loader and a result.
- Segmentation (section 6.3): `segment_metrics` (mIoU, per-class IoU, pixel accuracy, the
  pixel confusion matrix; optional multi-scale + flip, the paper's "MF") and
  `write_segment_report` (eval.json, confusion.png, iou.png).
- `run_eval` is the library function of `mobilenetv2 eval --weights W --data DIR`: the
  weights' own preprocessing, top-k metrics, and `eval.json` + `confusion.png` via
  `write_eval_report`.
- `save_figure` writes every PNG of the package atomically (the confusion matrix here, the
  training curves of `train.report`, which imports it from this layer).

The loop knows nothing of DDP: a training run passes `sum_over_ranks` (a sum across
processes) so each rank evaluates its shard and all agree on the totals.
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
from tqdm import tqdm

from mobilenetv2._files import atomic_write
from mobilenetv2.data.datasets import FolderDataset, labelled_dataset
from mobilenetv2.data.loaders import make_loader
from mobilenetv2.data.transforms import eval_transform
from mobilenetv2.errors import UserError

__all__ = [
    "EvalReport",
    "SegmentMetrics",
    "pixel_confusion",
    "segment_metrics",
    "segment_probs",
    "write_segment_report",
    "TopKMetrics",
    "plot_confusion",
    "run_eval",
    "save_figure",
    "topk_text",
    "topk_metrics",
    "write_eval_report",
]


@dataclass
class TopKMetrics:
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
def topk_metrics(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    device: torch.device,
    num_classes: int,
    amp_dtype: torch.dtype | None = None,
    memory_format: torch.memory_format = torch.contiguous_format,
    sum_over_ranks: Callable[[torch.Tensor], torch.Tensor] | None = None,
    progress: bool = True,
    desc: str = "eval",
) -> TopKMetrics:
    """Accuracy of `model` over `loader`, whose batches are (images, targets, skipped paths).

    Args:
        sum_over_ranks: Sums a tensor in place across processes (DDP: each rank evaluates
            its shard); None in a single process.
        progress: Show a tqdm bar (pass False on all but one rank).
    """
    model.eval()
    k = min(5, num_classes)
    sums = torch.zeros(4, dtype=torch.float64, device=device)   # loss*n, top1, topk, n
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    skipped: list[str] = []
    for x, y, bad in tqdm(loader, desc=desc, unit="batch", leave=False, dynamic_ncols=True,
                          disable=not progress):
        skipped += [str(b) for b in bad]
        if not len(x):
            continue
        x = x.to(device, non_blocking=True, memory_format=memory_format)
        y = y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(x).float()
        sums[0] += F.cross_entropy(logits, y, reduction="sum")
        top = logits.topk(k, 1).indices
        sums[1] += (top[:, 0] == y).sum()
        sums[2] += (top == y[:, None]).any(1).sum()
        sums[3] += len(y)
        confusion += torch.bincount(y * num_classes + top[:, 0],
                                    minlength=num_classes ** 2).view(num_classes, num_classes)
    if sum_over_ranks is not None:
        sum_over_ranks(sums)
        sum_over_ranks(confusion)
    n = max(1.0, sums[3].item())
    return TopKMetrics(loss=sums[0].item() / n, top1=sums[1].item() / n,
                       top5=sums[2].item() / n, confusion=confusion.cpu(),
                       count=int(sums[3].item()), skipped=skipped)


@dataclass
class EvalReport:
    """The result of `run_eval` and where its files are."""

    result: TopKMetrics
    labels: list[str]
    json_path: Path | None
    png_path: Path | None

    def to_dict(self) -> dict[str, Any]:
        r = self.result
        return {
            "top1": r.top1, "top5": r.top5, "loss": r.loss, "count": r.count,
            "per_class": dict(zip(self.labels, r.per_class)),
            "confusion": r.confusion.tolist(), "labels": self.labels,
            "skipped_files": r.skipped,
        }


def run_eval(model: nn.Module, data: str, out: str | os.PathLike | None = None,
             batch_size: int = 128, num_workers: int = -1,
             device: str | torch.device = "cpu", progress: bool = True) -> EvalReport:
    """Evaluate `model` (with `.meta` from its weights file) on `data` ("digits", an
    ImageFolder directory, or a root whose `val/` is one) using the weights' preprocessing.

    Writes `eval.json` and `confusion.png` into `out` when given.
    """
    meta = model.meta
    if meta is None:
        raise UserError("the model carries no metadata (preprocessing, labels); load it "
                        "with mobilenetv2.weights.load_weights")
    ds, labels = labelled_dataset(data, eval_transform(meta.preprocessing), meta.labels)
    if len(labels) != model.num_classes:
        raise UserError(f"{data}: {len(labels)} classes but the weights have "
                        f"{model.num_classes} outputs")
    device = torch.device(device)
    loader = make_loader(ds, batch_size, train=False, seed=0, num_workers=num_workers)
    result = topk_metrics(model.to(device), loader, device, len(labels), progress=progress)
    if isinstance(ds, FolderDataset):  # files its folder scan left out
        result.skipped[:0] = ds.unreadable
    report = EvalReport(result, labels, None, None)
    if out is not None:
        report.json_path, report.png_path = write_eval_report(report, out)
    return report


def write_eval_report(report: EvalReport, out: str | os.PathLike,
                      stem: str = "eval") -> tuple[Path, Path]:
    """`<out>/<stem>.json` and `<out>/confusion.png`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"{stem}.json"
    json_path.write_text(json.dumps(report.to_dict(), indent=1))
    png = plot_confusion(report.result.confusion, report.labels, out / "confusion.png",
                         title=f"top-1 {report.result.top1:.2%} on {report.result.count} images")
    return json_path, png


def plot_confusion(confusion: torch.Tensor, labels: list[str], path: str | os.PathLike,
                   title: str = "") -> Path:
    """A readable confusion matrix: counts in each cell up to 30 classes, row-normalised
    colours, true class on the vertical axis."""
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
        ticks = range(n)
        ax.set_xticks(ticks, labels, rotation=90 if n > 10 else 0)
        ax.set_yticks(ticks, labels)
        for i in range(n):
            for j in range(n):
                v = int(confusion[i, j])
                if v:
                    ax.text(j, i, str(v), ha="center", va="center", fontsize=8,
                            color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title or "confusion matrix")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)


def topk_text(top1: float, top5: float, num_classes: int, sep: str = ", ") -> str:
    """"top-1 X%, top-5 Y%" for people; top-5 only with more than 5 classes (with 5 or fewer
    it is 100% by construction and says nothing)."""
    text = f"top-1 {top1:.2%}"
    return text + (f"{sep}top-5 {top5:.2%}" if num_classes > 5 else "")


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Write a matplotlib figure atomically (a viewer never sees a half-written PNG while a
    training run rewrites it every epoch) and close it."""
    import matplotlib.pyplot as plt

    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi), suffix=".png")
    finally:
        plt.close(fig)


# ---------------------------------------------------------------------------------------------
# Segmentation (paper section 6.3, Table 7): mIoU from one confusion matrix over all pixels
# of the split (PASCAL VOC's and DeepLab's definition; ignore-labelled pixels left out).

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
    for x, y, bad in tqdm(loader, desc=desc, unit="batch", leave=False, dynamic_ncols=True,
                          disable=not progress):
        skipped += [str(b) for b in bad]
        if not len(x):
            continue
        x = x.to(device, non_blocking=True, memory_format=memory_format)
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
