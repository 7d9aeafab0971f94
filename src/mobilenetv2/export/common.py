"""What every export format shares: the result record, the tolerance, the metadata written
into the file, and the example input's side."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mobilenetv2.errors import UserError

__all__ = ["DEFAULT_ATOL", "ExportResult", "capture_graph", "check_agreement",
           "checked_calibration", "detector_anchors", "example_size", "export_metadata",
           "is_detector", "one_thread", "phone_metadata", "verify_fp32"]

# Largest accepted max abs difference of the logits between an export and PyTorch.
DEFAULT_ATOL = 1e-4


@dataclass
class ExportResult:
    """Where an export went and how closely it reproduces PyTorch."""

    path: Path
    max_abs_diff: float | None
    format: str
    # int8 exports: % of verification images whose top-1 equals PyTorch's float top-1
    agreement: float | None = None
    images: int = 0
    per_pixel: bool = False  # a segmenter's agreement counts pixels, not images

    def __str__(self) -> str:
        diff = "not verified" if self.max_abs_diff is None else (
            f"max |diff| vs PyTorch {self.max_abs_diff:.2e}")
        if self.agreement is not None and self.per_pixel:
            diff += (f", per-pixel class equal to PyTorch float on {self.agreement:.1f}% of "
                     f"the pixels of {self.images} images")
        elif self.agreement is not None:
            diff += (f", top-1 equal to PyTorch float on {self.agreement:.1f}% of "
                     f"{self.images} images")
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


def capture_graph(model: nn.Module, size: int, dynamic_batch: bool = False) -> Any:
    """The BN-folded float network as an ATen graph (`torch.export`, batch 1, NCHW), the one
    graph the phone formats lower (TFLite op by op, ExecuTorch to XNNPACK).

    `dynamic_batch`: the batch dimension stays symbolic, so int8 calibration can feed whole
    batches (one call per image through the observers cost ~0.1 s each); the program written
    to the phone file is exported again at batch 1 from the converted graph."""
    import torch

    from mobilenetv2.model.fuse import fuse, is_fused

    net = model.eval() if is_fused(model) else fuse(model.eval(), channels_last=False)
    net = net.to(memory_format=torch.contiguous_format).float()
    if not dynamic_batch:
        return torch.export.export(net, (torch.zeros(1, 3, size, size),)).module()
    # an example batch of 2: torch.export specialises a dimension it sees as 1
    return torch.export.export(net, (torch.zeros(2, 3, size, size),),
                               dynamic_shapes=({0: torch.export.Dim("batch")},)).module()


def phone_metadata(model: nn.Module, precision: str, fmt: str,
                   extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a phone file carries, as one JSON-ready document: `export_metadata`'s entries
    decoded (config, preprocessing, labels, provenance, ...), precision, format and `extra`
    (the input/output tensors)."""
    doc: dict[str, Any] = {}
    for key, value in export_metadata(model, {"precision": precision}).items():
        try:
            doc[key] = json.loads(value)
        except ValueError:
            doc[key] = value
    doc["exported_format"] = fmt
    doc.update(extra or {})
    return doc


def check_agreement(model: nn.Module, run: Any, x: np.ndarray, path: Path,
                    fmt: str) -> ExportResult:
    """An int8 export's top-1 agreement with the float PyTorch model on `x` (at most 64
    images), and the max |diff| of the logits (quantization error, reported not bounded)."""
    import torch

    x = x[:64]
    with torch.inference_mode():
        ref = model.eval()(torch.from_numpy(np.ascontiguousarray(x))).float().numpy()
    got = np.concatenate([run(x[i:i + 16]) for i in range(0, len(x), 16)])
    if not np.isfinite(got).all():
        raise UserError(f"{path}: the exported model computes non-finite outputs")
    agree = float((got.argmax(1) == ref.argmax(1)).mean() * 100)
    return ExportResult(path, float(np.abs(got - ref).max()), fmt, agree, len(x),
                        per_pixel=got.ndim == 4)


def checked_calibration(precision: str, calibration: Any) -> np.ndarray | None:
    """The int8 calibration array (required for int8; ignored for fp32)."""
    if precision != "int8":
        return None
    if calibration is None or len(calibration) == 0:
        raise UserError("int8 export needs calibration images: --calib digits or a folder "
                        "of images like the ones the model will see")
    if hasattr(calibration, "detach"):
        calibration = calibration.detach().float().numpy()
    return np.ascontiguousarray(calibration, dtype=np.float32)


def boxes_diff(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> float:
    """Largest box difference between two detection lists; inf when the detections differ
    in number or labels."""
    worst = 0.0
    for da, db in zip(a, b):
        if len(da["boxes"]) != len(db["boxes"]) or not torch.equal(da["labels"], db["labels"]):
            return float("inf")
        if len(da["boxes"]):
            worst = max(worst, float((da["boxes"] - db["boxes"]).abs().max()))
    return worst


def write_verified(path: str | Any, content: bytes, fmt: str, precision: str, suffix: str,
                   verify: Callable[[Path], ExportResult] | None) -> ExportResult:
    """Write a phone export's bytes atomically, verified in its own runtime under the
    temporary name first: a failed check leaves no file, and its message names `path`."""
    from mobilenetv2._files import atomic_write

    path = Path(path)
    results: list[ExportResult] = []

    def write(tmp: Path) -> None:
        tmp.write_bytes(content)
        if verify is not None:
            try:
                results.append(verify(tmp))
            except UserError as e:
                raise UserError(str(e).replace(str(tmp), str(path))) from e

    atomic_write(path, write, suffix=suffix)  # the runtimes know a file by its suffix
    result = results[0] if results else ExportResult(path, None, fmt)
    result.path, result.format = path, f"{fmt} {precision}"
    return result


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """PyTorch on one intra-op thread for the calibration loops (one small image at a time):
    measured on the loaded 2-core machine, 64 digits images took 59 s on 2 threads (each
    OpenMP region waits for a descheduled thread) and 1.2 s on 1."""
    import torch

    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def is_detector(model: nn.Module) -> bool:
    return getattr(getattr(model, "config", None), "task", None) == "detect"


def detector_anchors(model: nn.Module, size: int) -> np.ndarray:
    """A detector's anchors (A, 4) at input side `size`: normalised (ymin, xmin, ymax, xmax)
    in the order of the box codes' rows, what `ssd_post.postprocess` decodes against."""
    return model.anchors(size, size).detach().float().numpy()


def verify_fp32(model: nn.Module, run: Callable[[np.ndarray], Any], size: int, atol: float,
                path: Path, fmt: str, runtime: str) -> ExportResult:
    """An fp32 phone file against PyTorch on random inputs (batch 3): every output (logits:
    classifier (N, C), segmenter (N, C, H, W); detector: box codes and class logits) within
    `atol`, else UserError. A detector's boxes after the shared post-processing
    (`ssd_post.postprocess`, on the file's outputs and the anchors it carries) must also
    equal PyTorch's in number and labels and agree to `atol` of the image side."""
    import torch

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 3, size, size, generator=gen).numpy()
    with torch.inference_mode():
        ref = model.eval()(torch.from_numpy(x))
    refs = [r.float().numpy() for r in (ref if isinstance(ref, (tuple, list)) else [ref])]
    got = run(x)
    gots = list(got) if isinstance(got, tuple) else [got]
    if len(gots) != len(refs):
        raise UserError(f"{path}: {len(gots)} outputs, PyTorch has {len(refs)}")
    for g, r in zip(gots, refs):
        if not np.isfinite(g).all():
            raise UserError(f"{path}: the exported model computes non-finite outputs")
        if g.shape != r.shape:
            raise UserError(f"{path}: {runtime} output shape {g.shape}, PyTorch's {r.shape}")
    diff = max(float(np.abs(g - r).max()) for g, r in zip(gots, refs))
    if diff > atol:
        raise UserError(f"{path}: {runtime} output differs from PyTorch by {diff:.3g} (more "
                        f"than {atol:g}); the export is wrong")
    if is_detector(model):
        from mobilenetv2.model.heads.ssd_post import postprocess

        anchors = torch.from_numpy(detector_anchors(model, size))
        boxes_ref = postprocess(*(torch.from_numpy(r) for r in refs), anchors, (size, size))
        boxes = postprocess(*(torch.from_numpy(g) for g in gots), anchors, (size, size))
        box_diff = boxes_diff(boxes_ref, boxes)
        if box_diff / size > atol:
            raise UserError(f"{path}: {runtime}'s detections differ from PyTorch's by "
                            f"{box_diff:.3g} pixels after post-processing (more than {atol:g} "
                            f"of the {size}-pixel side); the export is wrong")
    return ExportResult(path, diff, fmt)
