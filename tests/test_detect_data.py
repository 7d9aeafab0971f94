"""Detection data and metrics: COCO / VOC reading with bad annotations reported and
skipped, SSD augmentation keeping boxes on their pixels, the demo canvases' exact boxes, and
our COCO evaluation against pycocotools run directly on COCO files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mobilenetv2.data.det_canvases import canvas_samples, render_canvas
from mobilenetv2.data.det_transforms import (
    detection_eval_transform,
    detection_preprocessing,
    detection_train_transform,
)
from mobilenetv2.data.detection import load_coco, load_voc

pytest.importorskip("pycocotools")


def _write_coco(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    for name in ("a.png", "b.png"):
        Image.new("RGB", (100, 80), (90, 90, 90)).save(root / "images" / name)
    doc = {
        "images": [{"id": 1, "file_name": "a.png", "width": 100, "height": 80},
                   {"id": 2, "file_name": "b.png", "width": 100, "height": 80},
                   {"id": 3, "file_name": "missing.png", "width": 100, "height": 80}],
        "categories": [{"id": 3, "name": "car"}, {"id": 7, "name": "dog"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 10, 30, 20], "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 7, "bbox": [50, 40, 40, 30], "iscrowd": 0},
            {"id": 3, "image_id": 1, "category_id": 3, "bbox": [150, 10, 20, 20]},  # outside
            {"id": 4, "image_id": 2, "category_id": 7, "bbox": [20, 20, 0, 10]},    # zero area
            {"id": 5, "image_id": 2, "category_id": 99, "bbox": [20, 20, 10, 10]},  # unknown
            {"id": 6, "image_id": 2, "category_id": 7, "bbox": [90, 60, 30, 30]},   # clipped
            {"id": 7, "image_id": 2, "category_id": 3, "bbox": [5, 5, 20, 20], "iscrowd": 1},
        ]}
    path = root / "annotations.json"
    path.write_text(json.dumps(doc))
    return path


def test_coco_bad_annotations_are_reported_and_skipped(tmp_path: Path) -> None:
    s = load_coco(_write_coco(tmp_path))
    assert s.classes == ["__background__", "car", "dog"] and s.category_ids == [0, 3, 7]
    assert [Path(x.path).name for x in s.samples] == ["a.png", "b.png"]
    kinds = " | ".join(s.problems)
    for expected in ("missing.png: missing image file", "annotation 3: outside the image",
                     "annotation 4: zero-area box", "annotation 5: unknown category_id 99"):
        assert expected in kinds
    assert len(s.problems) == 4
    a, b = s.samples
    np.testing.assert_array_equal(a.boxes, [[10, 10, 40, 30], [50, 40, 90, 70]])
    np.testing.assert_array_equal(a.labels, [1, 2])
    np.testing.assert_array_equal(b.boxes, [[90, 60, 100, 80], [5, 5, 25, 25]])  # clipped
    np.testing.assert_array_equal(b.crowd, [False, True])


def test_voc_layout_and_its_bad_annotations(tmp_path: Path) -> None:
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "JPEGImages").mkdir()
    Image.new("RGB", (64, 48)).save(tmp_path / "JPEGImages" / "x.jpg")

    def obj(name: str, box: tuple[int, ...], difficult: int = 0) -> str:
        x1, y1, x2, y2 = box
        return (f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox>"
                f"<xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax>"
                "</bndbox></object>")

    (tmp_path / "Annotations" / "x.xml").write_text(
        "<annotation><filename>x.jpg</filename><size><width>64</width><height>48</height>"
        "</size>" + obj("cat", (1, 1, 20, 30)) + obj("cat", (70, 50, 90, 60))
        + obj("dog", (10, 10, 8, 40)) + obj("dog", (30, 5, 60, 40), difficult=1)
        + "</annotation>")
    (tmp_path / "Annotations" / "y.xml").write_text(
        "<annotation><filename>y.jpg</filename><size><width>10</width><height>10</height>"
        "</size>" + obj("cat", (1, 1, 5, 5)) + "</annotation>")
    (tmp_path / "Annotations" / "z.xml").write_text("<annotation><size>")
    s = load_voc(tmp_path)
    assert s.classes == ["__background__", "cat", "dog"]
    assert len(s.samples) == 1
    x = s.samples[0]
    np.testing.assert_array_equal(x.boxes, [[0, 0, 20, 30], [29, 4, 60, 40]])  # 1-based
    np.testing.assert_array_equal(x.crowd, [False, True])                      # difficult
    text = " | ".join(s.problems)
    assert "outside the image" in text and "zero-area" in text
    assert "y.jpg: missing image file" in text and "z.xml: unreadable annotation" in text


@pytest.mark.parametrize("seed", range(6))
def test_augmentation_moves_boxes_with_their_pixels(seed: int) -> None:
    # A white rectangle on black: after any crop / zoom-out / flip / resize, the box must
    # still frame exactly the white pixels (photometric changes keep it the brightest).
    a = np.zeros((120, 200, 3), np.uint8)
    a[30:70, 50:130] = 255
    box = np.array([[50.0, 30.0, 130.0, 70.0]])
    pre = detection_preprocessing(96, mean=(0.0,) * 3, std=(1.0,) * 3)
    torch.manual_seed(seed)
    x, boxes, labels = detection_train_transform(pre, hflip=True)(Image.fromarray(a), box,
                                                                   np.array([4]))
    if len(boxes) == 0:  # the crop left the object out: it was dropped with its label
        assert len(labels) == 0
        return
    assert labels.tolist() == [4]
    gray = x.mean(0)
    x1, y1, x2, y2 = boxes[0].round().int().tolist()
    inside = gray[y1 + 1:y2 - 1, x1 + 1:x2 - 1]
    outside = gray.clone()
    outside[max(0, y1 - 1):y2 + 1, max(0, x1 - 1):x2 + 1] = 0
    assert inside.min() > outside.max()


def test_eval_transform_scales_boxes_exactly() -> None:
    pre = detection_preprocessing(64)
    img = Image.new("RGB", (128, 256))
    _, boxes, _ = detection_eval_transform(pre)(img, np.array([[16.0, 32.0, 64.0, 128.0]]),
                                                np.array([1]))
    torch.testing.assert_close(boxes, torch.tensor([[8.0, 8.0, 32.0, 32.0]]))


def test_demo_canvas_boxes_frame_the_pasted_digits() -> None:
    s = canvas_samples("val", 128, count=5)
    for i, sample in enumerate(s.samples):
        img, boxes, labels = render_canvas("val", i, 128)
        np.testing.assert_array_equal(boxes, sample.boxes)
        np.testing.assert_array_equal(labels, sample.labels)
        assert ((labels >= 1) & (labels <= 10)).all()
        # every box holds ink and ink touches each of its four edges; outside the boxes only
        # the faint fringe (opacity <= 0.2, so at most 0.2 x 255) differs from the photograph
        from mobilenetv2.data.det_canvases import _background, _layout

        bg = _background(_layout("val", i, 128, 0), 128)
        diff = np.abs(np.asarray(img, np.float32) - bg).max(2)
        outside = diff.copy()
        for x1, y1, x2, y2 in boxes.astype(int):
            region = diff[y1:y2, x1:x2]
            assert region.max() > 60
            assert region[:, 0].max() > 1 and region[:, -1].max() > 1
            assert region[0].max() > 1 and region[-1].max() > 1
            outside[y1:y2, x1:x2] = 0
        assert outside.max() <= 0.2 * 255 + 1


def test_coco_evaluation_agrees_with_pycocotools(tmp_path: Path) -> None:
    """A hand-made case: two images, three classes, a crowd region, detections at several
    IoUs, a duplicate and a false positive; our pipeline vs pycocotools on COCO files."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from mobilenetv2.tasks.coco import coco_evaluate, coco_results

    gts = [
        {"image_id": 1, "height": 200, "width": 300, "crowd": np.array([False, False, True]),
         "boxes": np.array([[10, 10, 60, 90], [100, 50, 250, 180], [0, 150, 40, 200.0]]),
         "labels": np.array([1, 2, 1])},
        {"image_id": 2, "height": 200, "width": 300, "crowd": np.array([False, False]),
         "boxes": np.array([[20, 30, 40, 44], [150, 20, 290, 190.0]]),
         "labels": np.array([3, 1])},
    ]
    dets = (coco_results(1, [[12, 8, 61, 92], [105, 60, 240, 170], [101, 52, 248, 181],
                             [5, 155, 35, 195], [200, 10, 260, 40]],
                         [0.9, 0.8, 0.6, 0.7, 0.5], [1, 2, 2, 1, 3], [0, 1, 2, 3])
            + coco_results(2, [[22, 31, 41, 45], [140, 30, 280, 180], [150, 20, 290, 190]],
                           [0.4, 0.95, 0.3], [3, 1, 1], [0, 1, 2, 3]))
    ours = coco_evaluate(gts, dets, num_classes=4)

    # the same case written as COCO files and scored by pycocotools directly
    anns = []
    for g in gts:
        for (x1, y1, x2, y2), lab, crowd in zip(g["boxes"], g["labels"], g["crowd"]):
            anns.append({"id": len(anns) + 1, "image_id": g["image_id"], "category_id": int(lab),
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                         "iscrowd": int(crowd)})
    gt_file = tmp_path / "gt.json"
    gt_file.write_text(json.dumps({
        "images": [{"id": g["image_id"], "height": 200, "width": 300} for g in gts],
        "annotations": anns, "categories": [{"id": c, "name": str(c)} for c in (1, 2, 3)]},
        default=float))
    dt_file = tmp_path / "dt.json"
    dt_file.write_text(json.dumps(dets))
    gt = COCO(str(gt_file))
    ev = COCOeval(gt, gt.loadRes(str(dt_file)), "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    np.testing.assert_allclose(list(ours.stats.values()), ev.stats, atol=1e-9)
    assert 0.0 < ours.stats["map"] < 1.0
    # By hand, class 3: one box, a false positive scored 0.5 then a hit at IoU 0.75 (0.4):
    # precision 1/2 at full recall for thresholds 0.50 ... 0.75 (6 of 10), else 0 -> 0.3.
    assert ours.per_class[3] == pytest.approx(0.3)
    # perfect detections score 1.0
    perfect = [d for g in gts for d in coco_results(
        g["image_id"], g["boxes"][~g["crowd"]], np.ones((~g["crowd"]).sum()),
        g["labels"][~g["crowd"]], [0, 1, 2, 3])]
    assert coco_evaluate(gts, perfect, 4).stats["map"] == pytest.approx(1.0)
