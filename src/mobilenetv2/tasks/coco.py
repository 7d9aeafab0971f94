"""COCO detection metrics through pycocotools, the reference implementation.

pycocotools (cocodataset/cocoapi) is what the paper's 22.1 mAP, TF's Object Detection API
and torchvision's reference scripts all report with; `faster-coco-eval` is a faster
re-implementation, but every published number is pycocotools', so agreement by construction
beats speed here (evaluating the demo takes well under a second either way).

`coco_evaluate` takes ground truth and detections as plain per-image lists, builds the two
COCO objects in memory and returns the 12 standard numbers plus per-class AP@[.5:.95].
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from typing import Any

import numpy as np

from mobilenetv2._optional import require

__all__ = ["COCO_STATS", "CocoResult", "coco_evaluate", "coco_results"]

# COCOeval.stats, in order.
COCO_STATS = ("map", "ap50", "ap75", "ap_small", "ap_medium", "ap_large",
              "ar1", "ar10", "ar100", "ar_small", "ar_medium", "ar_large")


@dataclass(frozen=True)
class CocoResult:
    stats: dict[str, float]           # COCO_STATS -> value in [0, 1] (-1: no such boxes)
    per_class: dict[int, float]       # label -> AP@[.5:.95] (-1: no ground truth)


def coco_results(image_id: int, boxes: Any, scores: Any, labels: Any,
                 category_ids: list[int]) -> list[dict[str, Any]]:
    """Detections (x1, y1, x2, y2) as COCO's results format (bbox = x, y, w, h)."""
    out = []
    for (x1, y1, x2, y2), s, lab in zip(np.asarray(boxes, float).tolist(),
                                        np.asarray(scores, float).tolist(),
                                        np.asarray(labels).tolist()):
        out.append({"image_id": int(image_id), "category_id": int(category_ids[lab]),
                    "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)],
                    "score": round(s, 5)})
    return out


def coco_evaluate(ground_truth: list[dict[str, Any]], detections: list[dict[str, Any]],
                  num_classes: int) -> CocoResult:
    """COCO mAP of `detections` (COCO results, category_id = label) against `ground_truth`.

    Args:
        ground_truth: per image {"image_id", "height", "width", "boxes" (x1 y1 x2 y2),
            "labels" (1..), "crowd" (bool)}.
        detections: COCO results entries (`coco_results` with `category_ids` the identity).
        num_classes: Labels 1 .. num_classes - 1 are the categories (0 is background).
    """
    require("pycocotools", "COCO mAP evaluation")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, anns = [], []
    for g in ground_truth:
        images.append({"id": int(g["image_id"]), "height": int(g["height"]),
                       "width": int(g["width"])})
        for (x1, y1, x2, y2), lab, crowd in zip(np.asarray(g["boxes"], float).reshape(-1, 4),
                                                np.asarray(g["labels"]).tolist(),
                                                np.asarray(g["crowd"]).tolist()):
            anns.append({"id": len(anns) + 1, "image_id": int(g["image_id"]),
                         "category_id": int(lab), "bbox": [x1, y1, x2 - x1, y2 - y1],
                         "area": (x2 - x1) * (y2 - y1), "iscrowd": int(crowd)})
    gt = COCO()
    gt.dataset = {"images": images, "annotations": anns,
                  "categories": [{"id": c} for c in range(1, num_classes)]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        if not detections:
            return CocoResult({k: 0.0 for k in COCO_STATS},
                              {c: 0.0 for c in range(1, num_classes)})
        dt = gt.loadRes(detections)
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    # precision: [IoU thresholds, recall points, classes, area ranges, max dets]
    precision = ev.eval["precision"][:, :, :, 0, -1]
    per_class = {}
    for k, cat in enumerate(ev.params.catIds):
        p = precision[:, :, k]
        per_class[int(cat)] = float(p[p > -1].mean()) if (p > -1).any() else -1.0
    return CocoResult(dict(zip(COCO_STATS, (float(s) for s in ev.stats))), per_class)
