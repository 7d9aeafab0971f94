"""Run observability: `metrics.jsonl`, TensorBoard events, `curves.png` (rewritten after
every epoch) and the final `report.md`. PNGs are written by `evaluate.save_figure`."""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from mobilenetv2.evaluate import save_figure

__all__ = ["MetricsLog", "RunLog", "plot_curves", "write_report"]

log = logging.getLogger(__name__)

# The epoch record's values mirrored to TensorBoard.
EPOCH_SCALARS = ("train_loss", "train_acc", "val_loss", "val_top1", "val_top5", "lr", "img_s")


_NAMES = {"val_top1": "top-1", "val_top5": "top-5", "val_miou": "mIoU",
          "val_pixel_acc": "pixel acc", "val_map": "mAP", "val_ap50": "AP50",
          "val_ap75": "AP75"}


def _val_keys(record: dict[str, Any]) -> list[str]:
    """The task's validation metrics in an epoch record (val_top1, val_miou ...)."""
    return [k for k in record if k.startswith("val_") and k != "val_loss"]


class MetricsLog:
    """Appends one JSON object per line; on resume, drops lines past the resumed step so a
    killed run's tail is not counted twice."""

    def __init__(self, path: str | os.PathLike, resume_step: int | None = None) -> None:
        self.path = Path(path)
        if resume_step is not None and self.path.exists():
            keep = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            self.path.write_text("".join(line + "\n" for line in keep))
        elif resume_step is None:
            self.path.write_text("")

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def epochs(self) -> list[dict[str, Any]]:
        return [r for r in self.read() if r.get("kind") == "epoch"]

    def read(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


class RunLog:
    """What the writing rank records while a run trains: `metrics.jsonl`, TensorBoard events
    (`tb/`, when asked for and installed) and `curves.png` after every epoch."""

    def __init__(self, out: Path, resume_step: int | None, tensorboard: bool) -> None:
        self.out = out
        self.metrics = MetricsLog(out / "metrics.jsonl", resume_step=resume_step)
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(out / "tb"))
            except ImportError:
                log.info("tensorboard not installed: no event files")

    def step(self, epoch: int, step: int, info: dict[str, float]) -> None:
        self.metrics.write({"kind": "step", "epoch": epoch, "step": step, **info})
        if self.writer is not None:
            for k, v in info.items():
                self.writer.add_scalar(f"step/{k}", v, step)

    def epoch(self, record: dict[str, Any]) -> None:
        self.metrics.write(record)
        if self.writer is not None:
            for k in dict.fromkeys((*EPOCH_SCALARS, *_val_keys(record))):
                if k in record:
                    self.writer.add_scalar(f"epoch/{k}", record[k], record["epoch"])
            self.writer.flush()
        plot_curves(self.metrics.epochs(), self.out / "curves.png")

    def epochs(self) -> list[dict[str, Any]]:
        return self.metrics.epochs()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def plot_curves(epochs: list[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Loss, accuracy and learning rate per epoch, in three panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r["epoch"] for r in epochs]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    axes[0].plot(x, [r["train_loss"] for r in epochs], "o-", label="train")
    axes[0].plot(x, [r["val_loss"] for r in epochs], "s-", label="validation")
    axes[0].set_title("loss (log scale)")
    axes[0].set_yscale("log")  # early validation losses of an untrained BN dwarf the rest
    if not all(math.isnan(r["train_acc"]) for r in epochs):  # detection has none
        axes[1].plot(x, [100 * r["train_acc"] for r in epochs], "o-", label="train")
    head = _val_keys(epochs[-1])[:1] if epochs else []
    for k in head:  # the task's headline metric: top-1, mIoU, mAP
        axes[1].plot(x, [100 * r.get(k, float("nan")) for r in epochs], "s-",
                     label=f"validation {_NAMES.get(k, k[4:])}")
    axes[1].set_title("accuracy (%)")
    axes[2].plot(x, [r["lr"] for r in epochs], "o-", color="tab:green")
    axes[2].set_title("learning rate (end of epoch)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend()
    axes[1].legend()
    fig.tight_layout()
    return save_figure(fig, path, dpi=90)


def write_report(path: str | os.PathLike, *, config: dict[str, Any], summary: dict[str, Any],
                 epochs: list[dict[str, Any]], per_class: dict[str, float],
                 skipped: list[str], files: dict[str, str]) -> Path:
    """A human-readable summary of the run in Markdown."""
    lines = ["# Training report", ""]
    lines += [f"- {k}: {v}" for k, v in summary.items()]
    lines += ["", "## Files", ""] + [f"- {k}: `{v}`" for k, v in files.items()]
    keys = _val_keys(epochs[-1]) if epochs else []
    lines += ["", "## Epochs", "",
              "| epoch | train loss | train acc | val loss | "
              + "".join(f"val {_NAMES.get(k, k[4:])} | " for k in keys) + "lr | img/s |",
              "|---|---|---|---|" + "---|" * len(keys) + "---|---|"]
    for r in epochs:
        lines.append(
            f"| {r['epoch']} | {r['train_loss']:.4f} | {r['train_acc']:.2%} | "
            f"{r['val_loss']:.4f} | " + "".join(f"{r.get(k, float('nan')):.2%} | " for k in keys)
            + f"{r['lr']:.3g} | {r['img_s']:.0f} |")
    what = "IoU" if "val_miou" in keys else "AP" if "val_map" in keys else "accuracy"
    lines += ["", f"## Per-class {what} (final model)", "", f"| class | {what} |", "|---|---|"]
    lines += [f"| {k} | {v:.2%} |" for k, v in per_class.items()]
    lines += ["", f"## Skipped files ({len(skipped)})", ""]
    lines += [f"- `{s}`" for s in skipped[:100]] or ["none"]
    if len(skipped) > 100:
        lines.append(f"- ... and {len(skipped) - 100} more")
    lines += ["", "## Effective configuration", "", "```json",
              json.dumps(config, indent=2), "```", ""]
    path = Path(path)
    path.write_text("\n".join(lines))
    return path
