"""Evaluating a weight set on a labelled dataset with the preprocessing its metadata records:
top-1/top-5, per-class accuracy, a confusion matrix PNG and a JSON report.

`mobilenetv2 eval --weights W --data DIR` is a thin layer over `evaluate_weights`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mobilenetv2.data.datasets import FolderDataset, scan_folder
from mobilenetv2.data.digits import DigitsDataset
from mobilenetv2.data.loaders import make_loader
from mobilenetv2.data.transforms import eval_transform
from mobilenetv2.errors import UserError
from mobilenetv2.train.engine import EvalResult, evaluate
from mobilenetv2.train.report import save_figure

__all__ = ["EvalReport", "evaluate_weights", "plot_confusion", "write_eval_report"]


@dataclass
class EvalReport:
    """The result of `evaluate_weights` and where its files are."""

    result: EvalResult
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


def _dataset(data: str, transform: Any, labels: list[str] | None) -> tuple[Any, list[str]]:
    if data == "digits":
        return DigitsDataset("test", transform), list(DigitsDataset.classes)
    root = Path(data).expanduser()
    if not root.is_dir():
        raise UserError(f"--data: not 'digits' and not a folder: {data}")
    if (root / "train").is_dir() and (root / "val").is_dir():
        root = root / "val"  # a training root: evaluate its validation split
    classes, samples = scan_folder(root)
    if labels is not None:
        if sorted(classes) != sorted(labels):
            raise UserError(
                f"{root}: class folders {classes} do not match the weights' labels "
                f"({len(labels)} labels: {', '.join(labels[:5])}"
                f"{' ...' if len(labels) > 5 else ''})"
            )
        # Map folder names to the weights' label order.
        remap = {name: labels.index(name) for name in classes}
        samples = [(p, remap[classes[t]]) for p, t in samples]
        classes = list(labels)
    return FolderDataset(samples, classes, transform), classes


def evaluate_weights(model: nn.Module, data: str, out: str | os.PathLike | None = None,
                     batch_size: int = 128, num_workers: int = -1,
                     device: str | torch.device = "cpu", progress: bool = True) -> EvalReport:
    """Evaluate `model` (with `.meta` from its weights file) on `data` ("digits", an
    ImageFolder directory, or a root whose `val/` is one) using the weights' preprocessing.

    Writes `eval.json` and `confusion.png` into `out` when given.
    """
    meta = getattr(model, "meta", None)
    if meta is None:
        raise UserError("the model carries no metadata (preprocessing, labels); load it "
                        "with mobilenetv2.weights.load_weights")
    ds, labels = _dataset(data, eval_transform(meta.preprocessing), meta.labels)
    if len(labels) != model.num_classes:
        raise UserError(f"{data}: {len(labels)} classes but the weights have "
                        f"{model.num_classes} outputs")
    device = torch.device(device)
    loader = make_loader(ds, batch_size, train=False, seed=0, num_workers=num_workers)
    result = evaluate(model.to(device), loader, device, len(labels), progress=progress)
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
