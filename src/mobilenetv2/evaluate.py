"""Evaluation: the metric loop of each task and the `eval` verb's report.

- Classification (the paper's section 6.1 reports single center-crop top-1): `topk_metrics`
  runs a model over a loader and returns `TopKMetrics` (top-1/top-5, mean loss, confusion
  matrix, per-class accuracy). Training evaluates with it every epoch; segmentation (mIoU)
  and detection (COCO mAP) metrics go beside it, each a loop over a loader and a result.
- Segmentation's mIoU loop is `tasks.segment_metrics`.
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
from collections.abc import Callable, Iterator
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


def eval_batches(loader: Any, device: torch.device, memory_format: torch.memory_format,
                 skipped: list[str], *, desc: str = "eval", progress: bool = True,
                 ) -> Iterator[tuple[torch.Tensor, Any]]:
    """The batches of `loader` (images, targets, paths it could not read) that hold images,
    the images on `device` in `memory_format`, under a progress bar; the unreadable paths are
    appended to `skipped` (every evaluation reports them instead of failing on them)."""
    for x, y, bad in tqdm(loader, desc=desc, unit="batch", leave=False, dynamic_ncols=True,
                          disable=not progress):
        skipped += [str(b) for b in bad]
        if len(x):
            yield x.to(device, non_blocking=True, memory_format=memory_format), y


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
    for x, y in eval_batches(loader, device, memory_format, skipped, desc=desc,
                             progress=progress):
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
