"""`mobilenetv2 segment`: per-pixel classes of photos with Mobile DeepLabv3 weights (paper
section 6.3): a label PNG (PASCAL VOC palette) and a colour overlay per image, and the
classes found with their share of the pixels."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

from mobilenetv2.cli.options import option, shared
from mobilenetv2.cli.report import report_results

__all__ = ["Args", "run"]


@dataclass(frozen=True, kw_only=True)
class Args:
    """label every pixel of images (files or folders) with segmentation weights

    Semantic segmentation with Mobile DeepLabv3 weights (converted from the official DeepLab
    TFLite models, or trained with --recipe segment-demo / deeplab-voc), using the
    preprocessing and class names stored with them. Writes <stem>.labels.png (class indices,
    PASCAL palette) and <stem>.overlay.png (the photo with the classes coloured in) per image.
    """

    paths: list[str] = option(positional=True, nargs="+", metavar="IMAGE_OR_DIR",
                              help="image files or folders")
    weights: str = shared("weights")
    out: str = shared("out", "runs/segment", note="the folder for the PNGs", metavar="DIR")
    multi_scale: bool = option(False, help="average DeepLab's six scales 0.5-1.75 (slower)")
    flip: bool = option(False, help="also average left-right flipped inputs")
    output_stride: int | None = option(None, choices=(8, 16), metavar="8|16",
                                       help="run the weights at this output stride",
                                       default_help="the weights' own")
    json: bool = shared("json", False)


def run(args: Args) -> int:
    from mobilenetv2.model.heads.deeplabv3 import with_output_stride
    from mobilenetv2.segment import check_segmenter, segment
    from mobilenetv2.tasks.segment_metrics import MF_SCALES
    from mobilenetv2.weights import load_weights

    model = load_weights(args.weights)
    check_segmenter(model, args.weights)
    if args.output_stride is not None:
        model = with_output_stride(model, args.output_stride)
    results = segment(model, args.paths, args.out,
                      scales=MF_SCALES if args.multi_scale else (1.0,), flip=args.flip,
                      progress=sys.stderr.isatty())

    def lines(r):
        yield r.path
        for name, index, share in r.classes:
            yield f"  {share:7.2%}  {name} ({index})"
        yield f"  labels:  {r.labels_png}\n  overlay: {r.overlay_png}"

    return report_results(
        "segment", results,
        (lambda: json.dumps([r.to_dict() for r in results], indent=2)) if args.json else None,
        lines)
