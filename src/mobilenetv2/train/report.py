"""Run observability: `metrics.jsonl`, `curves.png` (rewritten after every epoch) and the
final `report.md`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["MetricsLog", "plot_curves", "save_figure", "write_report"]


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
    axes[1].plot(x, [100 * r["train_acc"] for r in epochs], "o-", label="train")
    axes[1].plot(x, [100 * r["val_top1"] for r in epochs], "s-", label="validation top-1")
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


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Write a matplotlib figure atomically (a viewer never sees a half-written PNG while the
    run rewrites it every epoch) and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def write_report(path: str | os.PathLike, *, config: dict[str, Any], summary: dict[str, Any],
                 epochs: list[dict[str, Any]], per_class: dict[str, float],
                 skipped: list[str], files: dict[str, str]) -> Path:
    """A human-readable summary of the run in Markdown."""
    lines = ["# Training report", ""]
    lines += [f"- {k}: {v}" for k, v in summary.items()]
    lines += ["", "## Files", ""] + [f"- {k}: `{v}`" for k, v in files.items()]
    lines += ["", "## Epochs", "",
              "| epoch | train loss | train acc | val loss | val top-1 | val top-5 | lr | img/s |",
              "|---|---|---|---|---|---|---|---|"]
    for r in epochs:
        lines.append(
            f"| {r['epoch']} | {r['train_loss']:.4f} | {r['train_acc']:.2%} | "
            f"{r['val_loss']:.4f} | {r['val_top1']:.2%} | {r['val_top5']:.2%} | "
            f"{r['lr']:.3g} | {r['img_s']:.0f} |")
    lines += ["", "## Per-class accuracy (final model)", "", "| class | accuracy |", "|---|---|"]
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
