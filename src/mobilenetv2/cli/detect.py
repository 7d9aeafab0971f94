"""`mobilenetv2 detect`: SSDLite detections of images, drawn into PNGs (paper section 6.2)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from mobilenetv2.cli.options import option, shared
from mobilenetv2.cli.report import report_results

__all__ = ["Args", "run"]


@dataclass(frozen=True, kw_only=True)
class Args:
    """detect objects in images (files or folders) with SSDLite weights

    Boxes, labels and scores of each image, with the preprocessing and labels stored with the
    weights; each image's detections are drawn into OUT/<name>.detections.png. --json prints
    COCO's results format (image_id = the image's position, with its file_name).
    """

    paths: list[str] = option(positional=True, nargs="+", metavar="IMAGE_OR_DIR",
                              help="image files or folders")
    weights: str = shared("weights")
    out: str = shared("out", "runs/detect", note="the folder for the drawn PNGs",
                      metavar="DIR")
    score_threshold: float = option(0.3, minimum=0, metavar="S", help="lowest score shown")
    iou_threshold: float = option(0.6, minimum=0, metavar="IOU",
                                  help="NMS IoU threshold (TF's 0.6)")
    max_detections: int = option(100, minimum=1, metavar="N", help="boxes per image at most")
    json: bool = shared("json", False)
    threads: int = shared("threads", 0)


def run(args: Args) -> int:
    from mobilenetv2.cli.backend import apply_threads
    from mobilenetv2.detect import coco_results_of, detect_images
    from mobilenetv2.errors import UserError
    from mobilenetv2.weights import load_weights

    apply_threads(args.threads)
    model = load_weights(args.weights)
    if model.config.task != "detect":
        raise UserError(f"{args.weights} holds a {model.config.task} network, not a detector; "
                        "use `mobilenetv2 predict` for a classifier")
    results = detect_images(model, args.paths, out=args.out,
                            score_threshold=args.score_threshold,
                            iou_threshold=args.iou_threshold,
                            max_detections=args.max_detections)

    def lines(r):
        yield f"{r.path}: {len(r.detections)} object(s) -> {r.png}"
        for d in r.detections:
            x1, y1, x2, y2 = d["box"]
            yield f"  {d['score']:6.3f}  {d['label']:<12} [{x1:.0f}, {y1:.0f}, {x2:.0f}, {y2:.0f}]"

    return report_results(
        "detect", results,
        (lambda: "[" + ",\n ".join(json.dumps(r) for r in coco_results_of(results)) + "]")
        if args.json else None,
        lines)
