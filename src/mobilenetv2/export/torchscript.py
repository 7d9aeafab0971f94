"""Export to TorchScript (`torch.jit.load` needs no mobilenetv2 code), verified against
PyTorch.

Tracing rather than scripting: the traced graph of the BN-folded network (`model.fuse`) is
the plain conv/clamp/add sequence, frozen; the weights' metadata goes into the archive's
`extra_files` (`meta.json`). torch 2.14 marks `torch.jit` deprecated; TorchScript is still
what C++ (libtorch) deployments load, so it is offered as long as torch ships it.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from mobilenetv2._files import atomic_write
from mobilenetv2.errors import UserError
from mobilenetv2.export.common import DEFAULT_ATOL, ExportResult, example_size, export_metadata
from mobilenetv2.model.fuse import fuse, is_fused

__all__ = ["export_torchscript"]


def export_torchscript(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    input_size: int | None = None,
    verify: bool = True,
    atol: float = DEFAULT_ATOL,
) -> ExportResult:
    """Trace the fused `model` to TorchScript at `path`; with `verify`, reload the file and
    raise `UserError` when its logits differ from `model`'s by more than `atol`."""
    path = Path(path)
    reference = model.eval()
    net = reference if is_fused(reference) else fuse(reference)
    size = example_size(model, input_size)
    example = torch.randn(2, 3, size, size).to(memory_format=torch.channels_last)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(net, (example,), check_trace=False)
        traced = torch.jit.freeze(traced.eval())
    files = {"meta.json": json.dumps(export_metadata(model))}
    diffs: list[float | None] = []

    def write(tmp: Path) -> None:
        # Saved and verified under a temporary name; the destination is replaced only by a
        # verified file.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
            torch.jit.save(traced, str(tmp), _extra_files=files)
            loaded = torch.jit.load(str(tmp)) if verify else None
        diff = None
        if loaded is not None:
            x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))
            with torch.inference_mode():
                got, ref = loaded(x), reference(x)
            if not (torch.isfinite(got).all() and torch.isfinite(ref).all()):
                raise UserError(f"{path}: non-finite outputs (NaN or inf): the weights are "
                                f"broken, nothing to verify against")
            diff = float((got - ref).abs().max())
            if diff > atol:
                raise UserError(f"{path}: TorchScript output differs from PyTorch by "
                                f"{diff:.3g}")
        diffs.append(diff)

    atomic_write(path, write, suffix=".pt")
    return ExportResult(path=path, max_abs_diff=diffs[0], format="torchscript")
