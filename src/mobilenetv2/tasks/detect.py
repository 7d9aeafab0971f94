"""Object detection with SSDLite (paper section 6.2) as a `Task`: COCO json / Pascal VOC /
demo canvases, SSD augmentation, matching + smooth L1 + hard negative mining (or focal) loss,
and COCO mAP@[.5:.95] through pycocotools (`tasks.coco`).

Detections are scored in the original images' pixels (boxes mapped back from the network's
square input), so COCO's small / medium / large ranges mean what they mean on COCO.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mobilenetv2._files import atomic_write
from mobilenetv2.config import RunConfig
from mobilenetv2.data.det_canvases import canvas_image, canvas_samples
from mobilenetv2.data.det_transforms import (
    detection_eval_transform,
    detection_preprocessing,
    detection_train_transform,
)
from mobilenetv2.data.detection import (
    DetectionDataset,
    DetectionSamples,
    collate_detection,
    load_coco,
    load_voc,
)
from mobilenetv2.errors import UserError
from mobilenetv2.evaluate import eval_batches
from mobilenetv2.model.heads.anchors import ssd_anchors
from mobilenetv2.model.heads.ssd_loss import ssd_loss
from mobilenetv2.model.heads.ssd_post import postprocess
from mobilenetv2.model.heads.ssdlite_arch import feature_shapes
from mobilenetv2.tasks.base import StepOut, TaskData
from mobilenetv2.tasks.coco import COCO_STATS, CocoResult, coco_evaluate, coco_results

__all__ = ["DetectMetrics", "DetectTask", "build_detector", "detection_data", "evaluate_detector"]

log = logging.getLogger(__name__)
DEMO_SOURCES = ("digits", "canvases")
DEMO_NAME = "digit canvases (scikit-learn digits on its two sample photographs)"


def anchors_for(height: int, width: int, device: torch.device) -> torch.Tensor:
    return _anchors(int(height), int(width)).to(device)


_ANCHORS: dict[tuple[int, int], torch.Tensor] = {}


def _anchors(h: int, w: int) -> torch.Tensor:
    if (h, w) not in _ANCHORS:
        _ANCHORS[(h, w)] = ssd_anchors(feature_shapes(h, w), (h, w))
    return _ANCHORS[(h, w)]


# ---------------------------------------------------------------------------------------------
# Data


def _held_out(s: DetectionSamples, fraction: float, seed: int
              ) -> tuple[DetectionSamples, DetectionSamples]:
    order = np.random.default_rng(seed).permutation(len(s.samples))
    n_val = max(1, round(len(order) * fraction))
    pick = lambda idx: DetectionSamples([s.samples[i] for i in sorted(idx)],  # noqa: E731
                                        s.classes, s.category_ids, s.problems)
    return pick(order[n_val:]), pick(order[:n_val])


def _coco_pair(root: Path) -> tuple[Path, Path] | None:
    ann = root / "annotations"
    train = sorted(ann.glob("instances_train*.json")) if ann.is_dir() else []
    val = sorted(ann.glob("instances_val*.json")) if ann.is_dir() else []
    return (train[-1], val[-1]) if train and val else None


def detection_samples(data: str, val_split: float = 0.1, seed: int = 0, size: int = 320
                      ) -> tuple[DetectionSamples, DetectionSamples, str, str]:
    """(train, val, source description, val name) of a `--data` value for detection."""
    if data in DEMO_SOURCES:
        return (canvas_samples("train", size), canvas_samples("val", size), DEMO_NAME,
                "val canvases (held-out digits)")
    p = Path(data)
    if p.suffix.lower() == ".json":
        train, val = _held_out(load_coco(p), val_split, seed)
        return train, val, f"COCO json {p}", f"held-out {val_split:.0%}"
    if not p.is_dir():
        raise UserError(f"--data {data}: no such file or folder (detection takes 'canvases', "
                        "a COCO json, a COCO folder with annotations/, or a Pascal VOC folder)")
    pair = _coco_pair(p)
    if pair:
        tj, vj = pair
        # instances_train2017.json -> images in train2017/
        tr = load_coco(tj, p / tj.stem.split("_", 1)[1])
        va = load_coco(vj, p / vj.stem.split("_", 1)[1])
        if tr.classes != va.classes:
            raise UserError(f"{tj.name} and {vj.name} declare different categories")
        return tr, va, f"COCO {p}", vj.stem.split("_", 1)[1]
    if (p / "Annotations").is_dir():
        sets = p / "ImageSets" / "Main"
        if (sets / "train.txt").is_file() and (sets / "val.txt").is_file():
            tr = load_voc(p, "train")
            va = load_voc(p, "val", classes=tr.classes[1:])
            return tr, va, f"Pascal VOC {p}", "val"
        train, val = _held_out(load_voc(p), val_split, seed)
        return train, val, f"Pascal VOC {p}", f"held-out {val_split:.0%}"
    raise UserError(f"--data {p}: neither a COCO folder (annotations/instances_*.json) nor "
                    "a Pascal VOC folder (Annotations/, JPEGImages/)")


def detection_data(cfg: RunConfig, size: int) -> TaskData:
    dc = cfg.data
    train, val, source, val_name = detection_samples(dc.data, dc.val_split, dc.split_seed, size)
    for what, s in (("training", train), ("validation", val)):
        s.report(f"{source} ({what})")
        if not s.samples:
            raise UserError(f"{source}: no usable {what} images")
    pre = detection_preprocessing(size)
    demo = dc.data in DEMO_SOURCES
    image_of = canvas_image if demo else None
    # Digits are not mirror-symmetric: the demo never flips (DataConfig.hflip=False there).
    hflip = dc.hflip and not demo
    return TaskData(
        pre=pre,
        # --preset small: light augmentation (photometric + flip) instead of SSD's full one
        train=DetectionDataset(train.samples,
                               detection_train_transform(pre, hflip, light=dc.preset == "small"),
                               image_of),
        val=DetectionDataset(val.samples, detection_eval_transform(pre), image_of),
        classes=train.classes, source=source, val_name=val_name,
        unreadable=sorted({p.split(":")[0] for p in train.problems + val.problems
                           if "missing image file" in p}),
        collate=collate_detection)


# ---------------------------------------------------------------------------------------------
# Model


def build_detector(cfg: RunConfig, num_classes: int) -> nn.Module:
    """A new SSDLite of `cfg.model`, or `cfg.train.weights`: a detector (new class heads if
    its classes differ) or any classifier's weights as the backbone (paper 6.2 starts from
    ImageNet weights)."""
    from mobilenetv2.model.heads.ssdlite import SSDLite

    mcfg = cfg.model.replace(task="detect", num_classes=num_classes)
    if not cfg.train.weights:
        return SSDLite(mcfg)
    from mobilenetv2.weights import load_weights

    src = load_weights(cfg.train.weights)
    if src.config.task == "detect" and src.config.num_classes == num_classes:
        return src
    model = SSDLite(mcfg.replace(width=src.config.width, padding=src.config.padding,
                                 bn_eps=src.config.bn_eps))
    own = model.state_dict()
    prefixes = ("stem.", "blocks.", "head.") if src.config.task != "detect" else tuple(
        k.split(".")[0] + "." for k in own if not k.startswith("class_heads."))
    state = {k: v for k, v in src.state_dict().items()
             if k.startswith(prefixes) and k in own and own[k].shape == v.shape}
    model.load_state_dict(state, strict=False)
    log.info("detector from %s: %d of %d tensors loaded (backbone%s)", cfg.train.weights,
             len(state), len(own), " and box heads" if src.config.task == "detect" else "")
    return model


# ---------------------------------------------------------------------------------------------
# Metrics


@dataclass
class DetectMetrics:
    """COCO numbers of one evaluation (fractions in [0, 1])."""

    coco: CocoResult
    loss: float
    count: int
    skipped: list[str] = field(default_factory=list)

    @property
    def score(self) -> float:
        return self.coco.stats["map"]

    def summary(self) -> str:
        s = self.coco.stats
        return (f"COCO mAP@[.5:.95] {s['map']:.1%}, AP50 {s['ap50']:.1%}, "
                f"AP75 {s['ap75']:.1%}")

    def record(self) -> dict[str, float]:
        s = self.coco.stats
        return {"val_loss": self.loss, "val_map": s["map"], "val_ap50": s["ap50"],
                "val_ap75": s["ap75"]}

    def accuracy(self) -> dict[str, float]:
        return {k: self.coco.stats[k] for k in COCO_STATS[:6]}

    def per_class(self, classes: list[str]) -> dict[str, float]:
        return {classes[k]: v for k, v in self.coco.per_class.items() if k < len(classes)}


def _gather(obj: Any) -> list[Any]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        out: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    return [obj]


@torch.no_grad()
def evaluate_detector(model: nn.Module, loader: torch.utils.data.DataLoader,
                      device: torch.device, amp_dtype: torch.dtype | None = None,
                      memory_format: torch.memory_format = torch.contiguous_format,
                      progress: bool = True, desc: str = "eval",
                      score_threshold: float = 0.01, forward: Callable | None = None,
                      ) -> DetectMetrics:
    """COCO mAP of a detector over `loader` (batches of `collate_detection`).

    `forward` (images -> box codes, logits) replaces the model, e.g. an ONNX Runtime session;
    decoding and NMS are then the same as PyTorch's.
    """
    if model is not None:
        model.eval()
    run = forward or model
    gts, dets = [], []
    loss_sum, n, skipped = 0.0, 0, []
    num_classes = None
    for x, targets in eval_batches(loader, device, memory_format, skipped, desc=desc,
                                   progress=progress):
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            codes, logits = run(x)
        codes, logits = torch.as_tensor(codes).float(), torch.as_tensor(logits).float()
        num_classes = logits.shape[-1]
        h, w = x.shape[-2:]
        anchors = anchors_for(h, w, codes.device)
        loss, _ = ssd_loss(codes, logits, targets, anchors, (h, w))
        loss_sum += float(loss) * len(x)
        n += len(x)
        for t, d in zip(targets, postprocess(codes, logits, anchors, (h, w),
                                             score_threshold=score_threshold)):
            oh, ow = t["size"]
            scale = torch.tensor([ow / w, oh / h, ow / w, oh / h])
            gts.append({"image_id": t["image_id"], "height": oh, "width": ow,
                        "boxes": t["orig_boxes"].numpy(), "labels": t["orig_labels"].numpy(),
                        "crowd": t["crowd"].numpy()})
            dets += coco_results(t["image_id"], (d["boxes"].cpu() * scale).numpy(),
                                 d["scores"].cpu().numpy(), d["labels"].cpu().numpy(),
                                 list(range(num_classes)))
    parts = _gather((gts, dets, loss_sum, n, skipped, num_classes))
    gts = [g for p in parts for g in p[0]]
    dets = [d for p in parts for d in p[1]]
    n = sum(p[3] for p in parts)
    num_classes = max((p[5] or 0) for p in parts)
    coco = coco_evaluate(gts, dets, num_classes) if gts else CocoResult(
        {k: 0.0 for k in COCO_STATS}, {})
    return DetectMetrics(coco, sum(p[2] for p in parts) / max(1, n), n,
                         [s for p in parts for s in p[4]])


def write_detection_report(metrics: DetectMetrics, classes: list[str], out: Path
                           ) -> dict[str, str]:
    """eval.json (every COCO number, per-class AP) and ap_per_class.png."""
    from mobilenetv2.evaluate import save_figure

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    per_class = metrics.per_class(classes)
    doc = {"task": "detect", "images": metrics.count, "loss": metrics.loss,
           "coco": metrics.coco.stats, "ap_per_class": per_class,
           "skipped": metrics.skipped}
    json_path = atomic_write(out / "eval.json",
                             lambda tmp: Path(tmp).write_text(json.dumps(doc, indent=2)),
                             suffix=".json")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(per_class)
    fig, ax = plt.subplots(figsize=(max(5, 0.35 * len(names) + 2), 4))
    ax.bar(range(len(names)), [max(0.0, per_class[k]) * 100 for k in names])
    ax.set_xticks(range(len(names)), names, rotation=90 if len(names) > 12 else 0)
    ax.set_ylabel("AP@[.5:.95] (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"per-class AP; mAP {metrics.coco.stats['map']:.1%} on {metrics.count} images")
    fig.tight_layout()
    png = save_figure(fig, out / "ap_per_class.png")
    return {"eval report": str(json_path), "per-class AP": str(png)}


# ---------------------------------------------------------------------------------------------
# The task


class DetectTask:
    name = "detect"

    def __init__(self) -> None:
        self.focal = False

    def data(self, cfg: RunConfig, size: int) -> TaskData:
        self.focal = cfg.train.det_loss == "focal"
        return detection_data(cfg, size)

    def build_model(self, cfg: RunConfig, num_classes: int) -> nn.Module:
        return build_detector(cfg, num_classes)

    def targets_to(self, y: list[dict[str, Any]], device: torch.device) -> list[dict]:
        return [{**t, "boxes": t["boxes"].to(device, non_blocking=True),
                 "labels": t["labels"].to(device, non_blocking=True)} for t in y]

    def step(self, model: nn.Module, x: torch.Tensor, y: list[dict[str, Any]], ctx: Any,
             seed: int) -> StepOut:
        codes, logits = model(x)
        h, w = x.shape[-2:]
        loss, _ = ssd_loss(codes, logits, y, anchors_for(h, w, x.device), (h, w),
                           focal=self.focal)
        return StepOut(loss, 0.0, 0.0)

    def evaluate(self, model: nn.Module, loader: torch.utils.data.DataLoader,
                 device: torch.device, amp_dtype: torch.dtype | None = None,
                 memory_format: torch.memory_format = torch.contiguous_format,
                 sum_over_ranks: Callable[[torch.Tensor], Any] | None = None,
                 progress: bool = True, desc: str = "eval") -> DetectMetrics:
        return evaluate_detector(model, loader, device, amp_dtype, memory_format,
                                 progress=progress, desc=desc)

    def write_reports(self, metrics: DetectMetrics, classes: list[str],
                      out: Path) -> dict[str, str]:
        return write_detection_report(metrics, classes, out)


