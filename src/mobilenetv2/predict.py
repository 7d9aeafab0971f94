"""Classify image files with a weight set's own preprocessing and labels.

`predict(model, paths)` opens every image through `data.images.open_rgb` (EXIF orientation;
grayscale, RGBA, palette, CMYK and 16-bit images), applies `eval_transform` of the weights'
`meta.preprocessing` (the transform their accuracy was measured with, paper section 6.1
reports single center-crop accuracy), runs batches and returns the top-k labels by name.
A file that cannot be read becomes a `Prediction` with an `error` naming it; the others are
still predicted. Folders are walked by `data.images.image_files` (the same files `train` and
`quantize --calib` see); files named explicitly are tried whatever their suffix. The model
call is one small function, `run_model`, the hook where other backends (ONNX Runtime,
OpenVINO) plug in.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from mobilenetv2.data.images import ImageError, image_files, open_image
from mobilenetv2.data.transforms import eval_transform
from mobilenetv2.errors import UserError
from mobilenetv2.weights.format import meta_or_default

__all__ = ["Prediction", "find_images", "predict", "run_model"]

log = logging.getLogger(__name__)


@dataclass
class Prediction:
    """Top-k classes of one image, or why it could not be classified.

    Attributes:
        path: The image file.
        top: (class index, label, probability) pairs, most likely first.
        error: One line naming the file and the problem, when it failed.
    """

    path: str
    top: list[tuple[int, str, float]] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["top"] = [{"index": i, "label": label, "probability": p} for i, label, p in self.top]
        return d


def find_images(paths: Iterable[str | os.PathLike]) -> tuple[list[Path], list[Prediction]]:
    """Files to classify: given files as is, directories walked by `image_files`.

    Returns the files and an error `Prediction` for each path that does not exist or a
    directory without images.
    """
    files: list[Path] = []
    errors: list[Prediction] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = image_files(p)
            if not found:
                errors.append(Prediction(str(p), error=f"{p}: no image files in this folder"))
            files.extend(found)
        elif p.exists():
            files.append(p)
        else:
            errors.append(Prediction(str(p), error=f"{p}: no such file"))
    return files, errors


def run_model(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Logits for a preprocessed batch (N, 3, H, W): the single place the network runs."""
    with torch.inference_mode():
        return model(batch)


def predict(
    model: nn.Module,
    paths: Sequence[str | os.PathLike] | str | os.PathLike,
    topk: int = 5,
    batch_size: int = 32,
    *,
    runner: Callable[[nn.Module, torch.Tensor], torch.Tensor] = run_model,
    progress: bool = False,
) -> list[Prediction]:
    """Classify image files and directories of images.

    Args:
        model: A classifier with `.meta` (from `load_weights` / `load`); without it the
            torchvision ImageNet preprocessing is assumed and classes are unnamed.
        paths: Image files and/or directories (walked recursively).
        topk: Classes reported per image (capped at the class count).
        batch_size: Images per forward pass.
        runner: The function that runs a batch (default: the PyTorch model, eval mode).
        progress: Show a tqdm bar on stderr.

    Returns:
        One `Prediction` per file, in input order (paths that do not exist, or folders without
        images, last); failures carry `error` and no `top`.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
        raise ValueError(f"topk must be an integer >= 1, got {topk!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if model.meta is None:
        log.warning("model has no weights metadata: assuming ImageNet mean/std, resize 256, "
                    "crop 224, and unnamed classes")
    meta = meta_or_default(model)
    labels = meta.labels
    transform = eval_transform(meta.preprocessing)
    model.eval()
    param = next(model.parameters(), None)  # a session's adapter has none: CPU tensors
    device = param.device if param is not None else torch.device("cpu")

    files, errors = find_images(paths)
    results: dict[int, Prediction] = {}
    order = list(range(len(files)))
    from tqdm import tqdm

    with tqdm(total=len(files), unit="img", disable=not progress, leave=False) as bar:
        for start in range(0, len(files), batch_size):
            chunk = order[start:start + batch_size]
            tensors, kept = [], []
            for i in chunk:
                try:
                    tensors.append(open_image(files[i], transform))
                    kept.append(i)
                except ImageError as e:
                    results[i] = Prediction(str(files[i]), error=str(e))
            if tensors:
                logits = runner(model, torch.stack(tensors).to(device)).float()
                bad = [str(files[kept[r]]) for r in range(len(kept))
                       if not torch.isfinite(logits[r]).all()]
                if bad:  # a model problem, not an image problem: nothing here is valid
                    raise UserError(f"the weights compute non-finite logits (NaN or inf) for "
                                    f"{bad[0]}{f' and {len(bad) - 1} more' if len(bad) > 1 else ''}"
                                    f": the weights are broken")
                probs = torch.softmax(logits, 1)
                k = min(topk, probs.shape[1])
                values, indices = probs.topk(k, dim=1)
                for row, i in enumerate(kept):
                    top = [
                        (int(c), labels[int(c)] if labels else str(int(c)), float(p))
                        for p, c in zip(values[row], indices[row])
                    ]
                    results[i] = Prediction(str(files[i]), top=top)
            bar.update(len(chunk))
    return [results[i] for i in order] + errors
