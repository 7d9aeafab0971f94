"""The detection verbs as library functions (paper section 6.2): `detect_images` (boxes
drawn into PNGs, COCO results), `evaluate_detection` (COCO mAP of weights on a dataset),
and `quantize_detector` (int8 ONNX with mAP before and after). The other verbs dispatch on
a weights file's task with `segment.weights_task`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn

from mobilenetv2._files import atomic_write
from mobilenetv2.data.det_transforms import detection_eval_transform, detection_preprocessing
from mobilenetv2.data.images import ImageError, input_files, open_rgb
from mobilenetv2.errors import UserError
from mobilenetv2.model.heads.ssd_post import postprocess

__all__ = ["DetectResult", "detect_images", "evaluate_detection", "quantize_detector"]

log = logging.getLogger(__name__)


def _preprocessing(model: nn.Module) -> Any:
    meta = getattr(model, "meta", None)
    if meta is not None and meta.preprocessing.resize_mode == "exact":
        return meta.preprocessing
    return detection_preprocessing(model.config.resolution)


def _labels(model: nn.Module) -> list[str]:
    meta = getattr(model, "meta", None)
    if meta is not None and meta.labels and len(meta.labels) == model.config.num_classes:
        return list(meta.labels)
    return ["__background__"] + [str(i) for i in range(1, model.config.num_classes)]


@dataclass
class DetectResult:
    """One image's detections, boxes in its own pixels (x1, y1, x2, y2)."""

    path: str
    detections: list[dict[str, Any]] = field(default_factory=list)
    png: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _draw(img: Image.Image, dets: list[dict[str, Any]], path: Path) -> Path:
    img = img.copy()
    draw = ImageDraw.Draw(img)
    width = max(2, round(min(img.size) / 150))
    palette = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
               (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212)]
    for d in dets:
        color = palette[d["label_id"] % len(palette)]
        x1, y1, x2, y2 = d["box"]
        draw.rectangle([x1, y1, x2, y2], outline=color, width=width)
        text = f"{d['label']} {d['score']:.2f}"
        tb = draw.textbbox((x1, y1), text)
        ty = y1 - (tb[3] - tb[1]) - 4 if y1 > (tb[3] - tb[1]) + 4 else y1
        draw.rectangle([x1, ty, x1 + tb[2] - tb[0] + 4, ty + tb[3] - tb[1] + 4], fill=color)
        draw.text((x1 + 2, ty + 1), text, fill=(0, 0, 0))
    return atomic_write(path, lambda tmp: img.save(tmp, format="PNG"), suffix=".png")


@torch.no_grad()
def detect_images(model: nn.Module, paths: list[str], *, out: str | os.PathLike | None = None,
                  score_threshold: float = 0.3, iou_threshold: float = 0.6,
                  max_detections: int = 100) -> list[DetectResult]:
    """Detections of every image under `paths` (files or folders); with `out`, a PNG per
    image with boxes, labels and scores (`<stem>.detections.png`; inputs never overwritten).
    """
    files = input_files(paths)
    pre = _preprocessing(model)
    labels = _labels(model)
    tf = detection_eval_transform(pre)
    model = model.eval()
    results = []
    used: set[str] = set()
    for f in files:
        try:
            img = open_rgb(f)
        except (ImageError, OSError) as e:
            results.append(DetectResult(str(f), error=str(e)))
            continue
        x, _, _ = tf(img, np.zeros((0, 4), np.float32), np.zeros(0, np.int64))
        codes, logits = model(x[None])
        size = (pre.crop, pre.crop)
        d = postprocess(codes, logits, model.anchors(*size), size, score_threshold,
                        iou_threshold, max_detections)[0]
        sx, sy = img.width / size[1], img.height / size[0]
        dets = [{"box": [round(float(b[0]) * sx, 2), round(float(b[1]) * sy, 2),
                         round(float(b[2]) * sx, 2), round(float(b[3]) * sy, 2)],
                 "label_id": int(k), "label": labels[int(k)], "score": round(float(s), 4)}
                for b, k, s in zip(d["boxes"], d["labels"], d["scores"])]
        r = DetectResult(str(f), dets)
        if out is not None:
            name = f"{f.stem}.detections.png"
            while name in used:  # two inputs with one stem in different folders
                name = f"{f.stem}.{len(used)}.detections.png"
            used.add(name)
            target = Path(out) / name
            if target.resolve() == f.resolve():
                raise UserError(f"refusing to overwrite the input {f}")
            r.png = str(_draw(img, dets, target))
        results.append(r)
    return results


def coco_results_of(results: list[DetectResult]) -> list[dict[str, Any]]:
    """COCO results format (image_id = position in the list, bbox = x, y, w, h), with each
    entry's `file_name` so the ids can be mapped to files."""
    out = []
    for i, r in enumerate(results):
        for d in r.detections:
            x1, y1, x2, y2 = d["box"]
            out.append({"image_id": i + 1, "file_name": r.path, "category_id": d["label_id"],
                        "bbox": [x1, y1, round(x2 - x1, 2), round(y2 - y1, 2)],
                        "score": d["score"]})
    return out


def _val_loader(model: nn.Module, data: str, batch_size: int, num_workers: int = 0,
                val_split: float = 0.1, seed: int = 0, split: str = "val"
                ) -> tuple[Any, list[str], str]:
    from mobilenetv2.data.det_canvases import canvas_image
    from mobilenetv2.data.detection import DetectionDataset, collate_detection
    from mobilenetv2.data.loaders import make_loader
    from mobilenetv2.tasks.detect import DEMO_SOURCES, detection_samples

    pre = _preprocessing(model)
    train, val, source, val_name = detection_samples(data, val_split, seed, pre.crop)
    if split == "train":
        val, val_name = train, "training split"
    val.report(source)
    ds = DetectionDataset(val.samples, detection_eval_transform(pre),
                          canvas_image if data in DEMO_SOURCES else None)
    loader = make_loader(ds, batch_size, train=False, seed=0, num_workers=num_workers,
                         collate_fn=collate_detection)
    return loader, val.classes, f"{source}, {val_name}"


def evaluate_detection(model: nn.Module, data: str, out: str | os.PathLike | None = None, *,
                       batch_size: int = 32, num_workers: int = 0,
                       device: str = "cpu", progress: bool = True) -> tuple[Any, dict, str]:
    """COCO mAP of a detector on `data` ("canvases", a COCO json or folder, a VOC folder);
    with `out`, eval.json and ap_per_class.png. Returns (metrics, files, what was evaluated).
    """
    from mobilenetv2.tasks import get_task

    loader, classes, what = _val_loader(model, data, batch_size, num_workers)
    task = get_task("detect")
    metrics = task.evaluate(model.to(device), loader, torch.device(device), progress=progress)
    files = task.write_reports(metrics, classes, Path(out)) if out is not None else {}
    return metrics, files, what


def quantize_detector(model: nn.Module, data: str, out: str | os.PathLike, *,
                      calibration_images: int = 64, batch_size: int = 32
                      ) -> dict[str, Any]:
    """fp32 ONNX and static int8 QDQ ONNX (ONNX Runtime, per-channel weights) of a detector,
    calibrated on `calibration_images` of the training split, and COCO mAP of PyTorch, fp32
    ONNX and int8 ONNX on the validation split, through the same post-processing."""
    from mobilenetv2.export.onnx_detect import export_detector_onnx, onnx_detector_outputs
    from mobilenetv2.quant.ptq import fp32_int8_paths, quantize_onnx
    from mobilenetv2.tasks.detect import evaluate_detector

    fp32, int8 = fp32_int8_paths(out)   # OUT.fp32.onnx, OUT.int8.onnx as for classifiers
    size = _preprocessing(model).crop
    export_detector_onnx(model, fp32, input_size=size)
    loader, _, what = _val_loader(model, data, batch_size)
    calib_loader, _, _ = _val_loader(model, data, batch_size, split="train")
    calib = []
    for x, _, _ in calib_loader:
        calib.append(x.numpy())
        if sum(len(c) for c in calib) >= calibration_images:
            break
    quantize_onnx(fp32, int8, np.concatenate(calib)[:calibration_images])
    cpu = torch.device("cpu")
    scores = {"pytorch": evaluate_detector(model, loader, cpu, progress=False)}
    for name, path in (("onnx_fp32", fp32), ("onnx_int8", int8)):
        def run(x: torch.Tensor, path: Path = path) -> tuple[np.ndarray, np.ndarray]:
            return onnx_detector_outputs(path, x.numpy())[:2]
        scores[name] = evaluate_detector(None, loader, cpu, forward=run, progress=False)
    return {"evaluated_on": what, "fp32_onnx": str(fp32), "int8_onnx": str(int8),
            "calibration": f"{calibration_images} training images",
            "map": {k: v.coco.stats["map"] for k, v in scores.items()},
            "ap50": {k: v.coco.stats["ap50"] for k, v in scores.items()}}
