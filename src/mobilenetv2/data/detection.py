"""Detection datasets: COCO-format json and Pascal VOC XML layouts (paper section 6.2).

Every annotation is checked when the dataset is read: a box outside the image or of zero
area after clipping to it, a category the file does not declare, an image file that is
missing - each is reported (one line per problem in `DetectionSamples.problems`, logged as
a summary) and skipped, never trained on. COCO's `iscrowd` and VOC's `difficult` boxes are
kept as crowd regions: not trained on, and ignored by the COCO evaluation as pycocotools
does for crowds.

Classes are `["__background__", *names]`: label 0 is SSD's background, label k the k-th
class, and `category_ids[k]` its id in the source file (COCO's 1..90 with gaps).
"""

from __future__ import annotations

import json
import logging
import os
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from mobilenetv2.data.datasets import SKIPPED
from mobilenetv2.data.images import ImageError, open_rgb
from mobilenetv2.errors import UserError

__all__ = ["BACKGROUND", "DetectionDataset", "DetectionSample", "DetectionSamples",
           "collate_detection", "load_coco", "load_voc"]

log = logging.getLogger(__name__)
BACKGROUND = "__background__"


@dataclass
class DetectionSample:
    """One image and its boxes (x1, y1, x2, y2 pixels), labels (1..) and crowd flags."""

    path: str
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    crowd: np.ndarray
    image_id: int = 0


@dataclass
class DetectionSamples:
    samples: list[DetectionSample]
    classes: list[str]                  # classes[0] is the background
    category_ids: list[int]             # category_ids[label]: the source file's id (0: bg)
    problems: list[str] = field(default_factory=list)

    def report(self, what: str) -> None:
        if self.problems:
            log.warning("%s: %d bad annotation(s) skipped, e.g. %s", what, len(self.problems),
                        "; ".join(self.problems[:3]))


def _check_box(box: list[float], w: int, h: int, where: str,
               problems: list[str]) -> list[float] | None:
    x1, y1, x2, y2 = box
    if not all(np.isfinite(box)):
        problems.append(f"{where}: non-finite box {box}")
        return None
    cx1, cy1, cx2, cy2 = max(x1, 0.0), max(y1, 0.0), min(x2, float(w)), min(y2, float(h))
    if cx2 <= cx1 or cy2 <= cy1:
        kind = "zero-area" if x2 <= x1 or y2 <= y1 else "outside the image"
        problems.append(f"{where}: {kind} box {[round(v, 1) for v in box]} "
                        f"(image {w}x{h})")
        return None
    return [cx1, cy1, cx2, cy2]


def load_coco(annotations: str | os.PathLike, images: str | os.PathLike | None = None
              ) -> DetectionSamples:
    """Samples of a COCO-format annotation file; image paths relative to `images` (default:
    the json's folder, or its sibling `images/` when that exists)."""
    ann_path = Path(annotations)
    if not ann_path.is_file():
        raise UserError(f"no such annotation file: {ann_path}")
    try:
        doc = json.loads(ann_path.read_text())
        cats = sorted(doc["categories"], key=lambda c: c["id"])
        imgs = doc["images"]
        anns = doc.get("annotations", [])
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{ann_path}: not a COCO detection file ({e})") from e
    root = Path(images) if images else (ann_path.parent / "images"
                                       if (ann_path.parent / "images").is_dir()
                                       else ann_path.parent)
    label_of = {c["id"]: i + 1 for i, c in enumerate(cats)}
    classes = [BACKGROUND] + [str(c["name"]) for c in cats]
    category_ids = [0] + [int(c["id"]) for c in cats]
    problems: list[str] = []
    by_image: dict[Any, list[dict]] = {}
    for a in anns:
        by_image.setdefault(a.get("image_id"), []).append(a)
    samples = []
    for im in imgs:
        path = root / im["file_name"]
        if not path.is_file():
            problems.append(f"{path}: missing image file")
            continue
        w, h = int(im["width"]), int(im["height"])
        boxes, labels, crowd = [], [], []
        for a in by_image.get(im["id"], []):
            where = f"{im['file_name']} annotation {a.get('id')}"
            if a.get("category_id") not in label_of:
                problems.append(f"{where}: unknown category_id {a.get('category_id')!r}")
                continue
            try:
                x, y, bw, bh = (float(v) for v in a["bbox"])
            except (KeyError, TypeError, ValueError):
                problems.append(f"{where}: no valid bbox")
                continue
            box = _check_box([x, y, x + bw, y + bh], w, h, where, problems)
            if box is None:
                continue
            boxes.append(box)
            labels.append(label_of[a["category_id"]])
            crowd.append(bool(a.get("iscrowd", 0)))
        samples.append(_sample(str(path), w, h, boxes, labels, crowd, int(im["id"])))
    return DetectionSamples(samples, classes, category_ids, problems)


def _sample(path: str, w: int, h: int, boxes: list, labels: list, crowd: list,
            image_id: int) -> DetectionSample:
    return DetectionSample(path, w, h, np.asarray(boxes, np.float32).reshape(-1, 4),
                           np.asarray(labels, np.int64), np.asarray(crowd, bool), image_id)


def load_voc(root: str | os.PathLike, split: str | None = None,
             classes: list[str] | None = None) -> DetectionSamples:
    """Samples of a Pascal VOC layout: `Annotations/*.xml`, `JPEGImages/`, and optionally
    `ImageSets/Main/<split>.txt` naming the images of a split. Classes: `classes`, else the
    sorted names found in the XML files."""
    root = Path(root)
    ann_dir = root / "Annotations"
    if not ann_dir.is_dir():
        raise UserError(f"{root}: no Annotations/ folder (Pascal VOC layout expected)")
    if split is not None:
        ids = (root / "ImageSets" / "Main" / f"{split}.txt").read_text().split()
        xmls = [ann_dir / f"{i}.xml" for i in ids]
    else:
        xmls = sorted(ann_dir.glob("*.xml"))
    problems: list[str] = []
    parsed = []
    for xml in xmls:
        try:
            tree = ET.parse(xml).getroot()
            fname = tree.findtext("filename") or f"{xml.stem}.jpg"
            size = tree.find("size")
            w, h = int(size.findtext("width")), int(size.findtext("height"))
            objs = []
            for o in tree.findall("object"):
                bb = o.find("bndbox")
                # VOC boxes are 1-based inclusive pixel indices.
                box = [float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]
                box = [box[0] - 1, box[1] - 1, box[2], box[3]]
                objs.append((o.findtext("name", "").strip(), box,
                             o.findtext("difficult", "0").strip() == "1"))
        except (OSError, ET.ParseError, AttributeError, TypeError, ValueError) as e:
            problems.append(f"{xml}: unreadable annotation ({e})")
            continue
        parsed.append((xml, fname, w, h, objs))
    names = classes or sorted({n for *_, objs in parsed for n, _, _ in objs})
    label_of = {n: i + 1 for i, n in enumerate(names)}
    samples = []
    for i, (xml, fname, w, h, objs) in enumerate(parsed):
        path = root / "JPEGImages" / fname
        if not path.is_file():
            problems.append(f"{path}: missing image file")
            continue
        boxes, labels, crowd = [], [], []
        for name, box, difficult in objs:
            where = f"{xml.name} object {name!r}"
            if name not in label_of:
                problems.append(f"{where}: unknown class")
                continue
            box = _check_box(box, w, h, where, problems)
            if box is not None:
                boxes.append(box)
                labels.append(label_of[name])
                crowd.append(difficult)
        samples.append(_sample(str(path), w, h, boxes, labels, crowd, i + 1))
    return DetectionSamples(samples, [BACKGROUND, *names], list(range(len(names) + 1)),
                            problems)


class DetectionDataset(Dataset):
    """(image tensor, target) with target {"boxes", "labels", "image_id", "size"}; crowd
    boxes are left out of training targets. An unreadable image yields (SKIPPED, path)."""

    def __init__(self, samples: list[DetectionSample],
                 transform: Callable[[Image.Image, np.ndarray, np.ndarray], Any],
                 image_of: Callable[[DetectionSample], Image.Image] | None = None) -> None:
        self.samples = samples
        self.transform = transform
        self.image_of = image_of or (lambda s: open_rgb(s.path))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Any, Any]:
        s = self.samples[i]
        try:
            img = self.image_of(s)
        except ImageError as e:
            log.warning("skipping %s", e)
            return SKIPPED, s.path
        keep = ~s.crowd
        x, boxes, labels = self.transform(img, s.boxes[keep], s.labels[keep])
        # The untransformed annotation rides along for the COCO evaluation, which scores
        # detections mapped back to the original pixels (COCO's size ranges are in those).
        return x, {"boxes": boxes, "labels": labels, "image_id": s.image_id,
                   "size": (img.height, img.width), "orig_boxes": torch.from_numpy(s.boxes),
                   "orig_labels": torch.from_numpy(s.labels),
                   "crowd": torch.from_numpy(s.crowd)}


def collate_detection(batch: list[tuple[Any, Any]]) -> tuple[torch.Tensor, list[dict], list]:
    """Images stacked, targets as a list of dicts (torchvision's detection convention)."""
    good = [(x, y) for x, y in batch if not (isinstance(x, str) and x == SKIPPED)]
    skipped = [y for x, y in batch if isinstance(x, str) and x == SKIPPED]
    if not good:
        return torch.empty(0), [], skipped
    return torch.stack([x for x, _ in good]), [y for _, y in good], skipped
