"""What every export format shares: the result record, the tolerance, the metadata written
into the file, and the example input's side."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

__all__ = ["DEFAULT_ATOL", "ExportResult", "example_size", "export_metadata"]

# Largest accepted max abs difference of the logits between an export and PyTorch.
DEFAULT_ATOL = 1e-4


@dataclass
class ExportResult:
    """Where an export went and how closely it reproduces PyTorch."""

    path: Path
    max_abs_diff: float | None
    format: str

    def __str__(self) -> str:
        diff = "not verified" if self.max_abs_diff is None else (
            f"max |diff| vs PyTorch {self.max_abs_diff:.2e}")
        return f"{self.format} -> {self.path} ({diff})"


def export_metadata(model: nn.Module, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The weights' metadata (config, preprocessing, labels, provenance) as the string
    entries an exported file carries, `precision` "fp32" unless `extra` says otherwise."""
    from mobilenetv2.weights.format import meta_or_default

    props = meta_or_default(model).to_metadata()
    props.setdefault("precision", "fp32")
    props.update(extra or {})
    return props


def example_size(model: nn.Module, input_size: int | None) -> int:
    """The export's example input side: given, else the weights' crop, else the config's
    resolution."""
    if input_size is not None:
        return input_size
    if model.meta is not None:
        return model.meta.preprocessing.crop
    return model.config.resolution
