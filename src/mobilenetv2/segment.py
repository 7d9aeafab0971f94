"""Semantic segmentation of photos and evaluation by mIoU (paper section 6.3): the library
functions of the `segment` verb and of `eval` for a segmentation weights file.

`segment(model, paths, out)` labels each image with the weights' own preprocessing and
writes, per image, `<stem>.labels.png` (class indices with the PASCAL VOC palette, what
VOC's SegmentationClass PNGs are) and `<stem>.overlay.png` (the photo with the classes
coloured in, background left as it is), and returns the classes found with their share of
the pixels.

How an image is prepared: weights converted from TFLite record `resize_mode="exact"` (the
whole image resized to the model's square input, as Coral's example does); weights trained
here record "shorter", meaning for a segmenter: keep the aspect ratio, longer side brought to
`crop` (DeepLab evaluates unpadded content the same way). Either way the logits are resized
back to the photo's size (bilinear) before the per-pixel argmax, so labels line up with the
photo's own pixels.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm import tqdm

from mobilenetv2._files import atomic_write
from mobilenetv2.data.images import ImageError, input_files, open_rgb
from mobilenetv2.data.segmentation import (
    SegmentationDataset,
    SegTransform,
    collate_segment,
    find_pairs,
    voc_palette,
)
from mobilenetv2.errors import UserError
from mobilenetv2.tasks.segment_metrics import (
    MF_SCALES,
    SegmentMetrics,
    pixel_confusion,
    segment_metrics,
    segment_probs,
)

__all__ = [
    "SegmentResult", "check_segmenter", "quantize_segmenter", "run_segment_eval", "segment",
    "segment_image", "weights_task",
]

log = logging.getLogger(__name__)


@dataclass
class SegmentResult:
    """One image: the classes found (name, index, pixel share) and the files written."""

    path: str
    classes: list[tuple[str, int, float]] = field(default_factory=list)
    labels_png: str | None = None
    overlay_png: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "error": self.error, "labels_png": self.labels_png,
                "overlay_png": self.overlay_png,
                "classes": [{"name": n, "index": i, "share": s} for n, i, s in self.classes]}


def check_segmenter(model: nn.Module, what: str = "") -> None:
    """`UserError` unless `model` is a segmentation network with metadata."""
    task = getattr(getattr(model, "config", None), "task", None)
    if task != "segment":
        raise UserError(f"{what or 'the weights'}: a {task or 'non-PyTorch'} model, not a "
                        "segmenter (segment needs Mobile DeepLabv3 weights, e.g. converted "
                        "from deeplabv3_mnv2_pascal_quant.tflite or trained with "
                        "--recipe segment-demo)")
    if model.meta is None:
        raise UserError("the model carries no metadata (preprocessing, labels); load it with "
                        "mobilenetv2.weights.load_weights")


def _input(model: nn.Module, img: Image.Image) -> torch.Tensor:
    pre = model.meta.preprocessing
    if pre.resize_mode == "exact":
        w = h = pre.crop
    else:
        s = pre.crop / max(img.size)
        w, h = max(32, round(img.width * s)), max(32, round(img.height * s))
    resample = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC,
                "nearest": Image.NEAREST}[pre.interpolation]
    x = torch.from_numpy(np.asarray(img.resize((w, h), resample), np.float32) / 255.0)
    x = x.permute(2, 0, 1)[None]
    return (x - torch.tensor(pre.mean).view(1, 3, 1, 1)) / torch.tensor(pre.std).view(1, 3, 1, 1)


@torch.no_grad()
def segment_image(model: nn.Module, img: Image.Image, scales: Sequence[float] = (1.0,),
                  flip: bool = False) -> np.ndarray:
    """(H, W) uint8 class indices of a PIL RGB image, at the image's own size."""
    model.eval()
    x = _input(model, img).to(next(model.parameters()).device)
    probs, _ = segment_probs(model, x, tuple(scales), flip)
    probs = F.interpolate(probs, size=(img.height, img.width), mode="bilinear",
                          align_corners=False)
    return probs.argmax(1)[0].to(torch.uint8).cpu().numpy()


def _overlay(img: Image.Image, labels: np.ndarray, palette: np.ndarray) -> Image.Image:
    rgb = np.asarray(img, np.float32)
    colour = palette[labels].astype(np.float32)
    alpha = np.where(labels[..., None] > 0, 0.55, 0.0)
    return Image.fromarray(np.clip(rgb * (1 - alpha) + colour * alpha + 0.5, 0, 255)
                           .astype(np.uint8))


def segment(model: nn.Module, paths: Sequence[str | os.PathLike], out: str | os.PathLike,
            scales: Sequence[float] = (1.0,), flip: bool = False,
            progress: bool = False) -> list[SegmentResult]:
    """Label every image of `paths` (files or folders) and write its two PNGs into `out`.

    An unreadable image gets a result with `error` set; the others are still processed.
    Outputs never overwrite an input: a name clash with an input file is an error.
    """
    check_segmenter(model)
    names = model.meta.labels or [f"class {i}" for i in range(model.num_classes)]
    files = input_files(paths)
    out = Path(out)
    inputs = {f.resolve() for f in files if f.exists()}
    pal = voc_palette()
    palette = np.asarray(pal, np.uint8).reshape(256, 3)
    results = []
    for f in tqdm(files, desc="segment", unit="image", disable=not progress):
        r = SegmentResult(str(f))
        try:
            img = open_rgb(f)
        except ImageError as e:
            r.error = str(e)
            results.append(r)
            continue
        labels = segment_image(model, img, scales, flip)
        counts = np.bincount(labels.ravel(), minlength=len(names))
        r.classes = sorted(((names[i], i, float(c / labels.size)) for i, c in enumerate(counts)
                            if c), key=lambda t: -t[2])
        lab_path, ov_path = out / f"{f.stem}.labels.png", out / f"{f.stem}.overlay.png"
        for dest in (lab_path, ov_path):
            if dest.resolve() in inputs:
                raise UserError(f"{dest} is one of the input images; choose another --out")
        lab = Image.fromarray(labels, mode="P")
        lab.putpalette(pal)
        r.labels_png = str(atomic_write(lab_path, lambda t, im=lab: im.save(t, format="PNG"),
                                        suffix=".png"))
        ov = _overlay(img, labels, palette)
        r.overlay_png = str(atomic_write(ov_path, lambda t, im=ov: im.save(t, format="PNG"),
                                         suffix=".png"))
        results.append(r)
    return results


def run_segment_eval(model: nn.Module, data: str, out: str | os.PathLike | None = None,
                     batch_size: int = 8, num_workers: int = -1, device: str = "cpu",
                     output_stride: int | None = None, multi_scale: bool = False,
                     flip: bool = False, strict_images: bool = False,
                     progress: bool = True) -> tuple[SegmentMetrics, list[str], dict[str, str]]:
    """mIoU of a segmenter on PASCAL VOC val, an images/masks folder's validation pairs, or
    `canvases` (the demo's validation canvases), with the weights' normalisation and crop
    size; `output_stride` 8 re-runs the same weights with denser features (DeepLab's eval
    setting), `multi_scale`/`flip` average DeepLab's six scales and flips (the paper's MF).

    Returns the metrics, the class names and the report files written into `out`.
    """
    from mobilenetv2.data.loaders import make_loader
    from mobilenetv2.model.heads.deeplabv3 import with_output_stride
    from mobilenetv2.tasks.segment import (
        CANVASES,
        CANVASES_DIGITS,
        CanvasDataset,
        canvas_classes,
    )
    from mobilenetv2.tasks.segment_metrics import write_segment_report

    check_segmenter(model)
    pre = model.meta.preprocessing
    size = pre.crop
    tf = SegTransform(size, pre, train=False)
    n = model.num_classes
    if data in (CANVASES, CANVASES_DIGITS):
        ds = CanvasDataset("val", tf, digits=data == CANVASES_DIGITS)
        classes = canvas_classes(data)
        if len(classes) != n:
            raise UserError(f"--data {data} has {len(classes)} classes but the weights have {n}")
    else:
        pairs = find_pairs(data, strict=strict_images)
        if len(pairs.classes) != n:
            raise UserError(f"{data}: {len(pairs.classes)} classes but the weights have {n}")
        ds, classes = SegmentationDataset(pairs.val, tf, n), pairs.classes
    if output_stride is not None:
        model = with_output_stride(model, output_stride)
    dev = torch.device(device)
    loader = make_loader(ds, batch_size, train=False, seed=0, num_workers=num_workers,
                         collate_fn=collate_segment)
    metrics = segment_metrics(model.to(dev), loader, dev, n, progress=progress,
                              scales=MF_SCALES if multi_scale else (1.0,), flip=flip)
    files = write_segment_report(metrics, classes, out) if out is not None else {}
    return metrics, classes, files


def weights_task(spec: str | os.PathLike) -> str:
    """The task of a `--weights` spec, read cheaply where the file says it (our safetensors
    and ONNX metadata, the pretrained table, a TFLite graph's operators); else "classify"."""
    s = os.fspath(spec)
    p = Path(s)
    try:
        if s.lower().endswith(".safetensors") and p.is_file():
            from mobilenetv2.weights.format import is_our_checkpoint, read_meta

            if is_our_checkpoint(p):
                return read_meta(p).config.task
        elif s.lower().endswith(".onnx") and p.is_file():
            from mobilenetv2.runtime.onnx_meta import onnx_metadata, onnx_weights_meta

            meta = onnx_weights_meta(onnx_metadata(p))
            return meta.config.task if meta is not None else "classify"
        elif s.lower().endswith(".tflite") and p.is_file():
            from mobilenetv2.weights.convert.tflite.deeplab import is_deeplab
            from mobilenetv2.weights.convert.tflite.reader import read_tflite_graph

            return "segment" if is_deeplab(read_tflite_graph(p)) else "classify"
        else:
            from mobilenetv2.weights.pretrained import PRETRAINED

            if s in PRETRAINED:
                return PRETRAINED[s].config.task
    except UserError:
        pass  # the verb's own loading reports what is wrong with the file
    return "classify"


def quantize_segmenter(model: nn.Module, out: str | os.PathLike, data: str,
                       calib_images: int = 64, eval_images: int | None = None,
                       progress: bool = False) -> dict[str, Any]:
    """Int8 PTQ of a segmenter (the QDQ recipe of `quant.ptq`: per-channel int8 weights,
    uint8 activations calibrated on `calib_images` training images of `data`) and its mIoU
    before and after, both run by ONNX Runtime on the validation split of `data`.

    Writes `STEM.fp32.onnx` (verified against PyTorch) and `STEM.int8.onnx`.
    """
    from mobilenetv2.export.onnx import export_onnx
    from mobilenetv2.quant.ptq import fp32_int8_paths, onnx_logits, quantize_onnx
    from mobilenetv2.tasks.segment import CANVASES, CANVASES_DIGITS, CanvasDataset

    check_segmenter(model)
    pre = model.meta.preprocessing
    tf = SegTransform(pre.crop, pre, train=False)
    n = model.num_classes
    if data in (CANVASES, CANVASES_DIGITS):
        digits = data == CANVASES_DIGITS
        calib_ds = CanvasDataset("train", tf, digits=digits)
        val_ds = CanvasDataset("val", tf, digits=digits)
    else:
        pairs = find_pairs(data)
        calib_ds = SegmentationDataset(pairs.train, tf, n)
        val_ds = SegmentationDataset(pairs.val, tf, n)
    float_path, int8_path = fp32_int8_paths(out)
    export_onnx(model, float_path, input_size=pre.crop)
    idx = np.linspace(0, len(calib_ds) - 1, min(calib_images, len(calib_ds))).astype(int)
    calib = [calib_ds[int(i)] for i in idx]
    x = torch.stack([c[0] for c in calib if not isinstance(c[0], str)]).numpy()
    quantize_onnx(float_path, int8_path, x)
    count = len(val_ds) if eval_images is None else min(eval_images, len(val_ds))
    conf = {k: torch.zeros(n, n, dtype=torch.int64) for k in ("fp32", "int8")}
    agree = total = 0
    for start in tqdm(range(0, count, 16), desc="fp32 vs int8", disable=not progress):
        items = [val_ds[i] for i in range(start, min(count, start + 16))]
        items = [it for it in items if not isinstance(it[0], str)]
        if not items:
            continue
        xb = torch.stack([it[0] for it in items]).numpy()
        yb = torch.stack([it[1] for it in items])
        preds = {k: torch.from_numpy(onnx_logits(p, xb).argmax(1))
                 for k, p in (("fp32", float_path), ("int8", int8_path))}
        for k, pr in preds.items():
            conf[k] += pixel_confusion(pr, yb, n)
        agree += int((preds["fp32"] == preds["int8"]).sum())
        total += preds["fp32"].numel()
    miou = {k: SegmentMetrics(0.0, c, count, []).miou for k, c in conf.items()}
    return {"float_path": str(float_path), "int8_path": str(int8_path),
            "calibration_images": len(x), "eval_images": count, "miou": miou,
            "pixel_agreement": agree / max(1, total)}
