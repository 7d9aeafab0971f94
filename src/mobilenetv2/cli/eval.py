"""`mobilenetv2 eval`: top-1/top-5, per-class accuracy, confusion matrix PNG and JSON report
of a weight set on a labelled folder (or the digits test split), with the preprocessing
recorded in the weights' metadata."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

from mobilenetv2.cli.backend import RuntimeArgs, model_and_session
from mobilenetv2.cli.options import option, shared

__all__ = ["Args", "run"]


@dataclass(frozen=True, kw_only=True)
class Args(RuntimeArgs):
    """accuracy, per-class accuracy and confusion matrix of weights on a dataset

    Evaluate weights on an ImageFolder directory (class sub-folders; a root with train/ and
    val/ means val/) or 'digits' (the bundled test split), using the preprocessing stored
    with the weights.
    """

    weights: str = shared("weights")
    data: str = shared("data", "digits")
    out: str = shared("out", "runs/eval", note="the report folder", metavar="DIR")
    batch_size: int = shared("batch_size", 128)
    num_workers: int = option(-1, minimum=-1, metavar="N",
                              help="data-loading worker processes; -1: automatic")
    device: str = option("cpu", help="cpu, cuda or cuda:N; the runtime options apply to cpu")
    json: bool = shared("json", False)
    # Segmentation weights (dispatched to `segment.run_segment_eval`): --data is PASCAL VOC,
    # an images/masks folder or 'canvases'.
    output_stride: int | None = option(None, choices=(8, 16), metavar="8|16",
                                       help="segmentation: evaluate at this output stride",
                                       default_help="the weights' own")
    multi_scale: bool = option(False, help="segmentation: DeepLab's six scales (MF)")
    flip: bool = option(False, help="segmentation: also average left-right flips")


def run(args: Args) -> int:
    from mobilenetv2.evaluate import run_eval, topk_text
    from mobilenetv2.segment import weights_task
    from mobilenetv2.weights import load_weights

    if weights_task(args.weights) == "segment":
        return _run_segment(args)
    if weights_task(args.weights) == "detect":
        return _run_detector(args)

    if str(args.device) == "cpu":
        # the fastest correct CPU backend (issue 5); other devices run the PyTorch model
        model, session = model_and_session(args)
        if args.backend != "auto" or args.precision != "fp32":
            print(f"running on {session.describe()}", file=sys.stderr)
        model = session.as_module(model)
    elif args.backend not in ("auto", "torch") or args.precision != "fp32":
        raise ValueError(f"--backend/--precision apply to --device cpu, not {args.device}")
    else:
        model = load_weights(args.weights)
    report = run_eval(model, args.data, args.out, batch_size=args.batch_size,
                      num_workers=args.num_workers, device=args.device)
    if args.json:
        print(json.dumps(report.to_dict(), indent=1))
        return 0
    r = report.result
    print(f"{topk_text(r.top1, r.top5, len(report.labels), '  ')}  on {r.count} images "
          f"({args.data})")
    worst = sorted(zip(report.labels, r.per_class), key=lambda t: t[1])[:5]
    print("lowest per-class accuracy: " + ", ".join(f"{k} {v:.1%}" for k, v in worst))
    if r.skipped:
        print(f"skipped {len(r.skipped)} unreadable file(s)")
    print(f"report:           {report.json_path}")
    print(f"confusion matrix: {report.png_path}")
    return 0


def _run_segment(args: Args) -> int:
    """`eval` of segmentation weights: mIoU, per-class IoU, pixel accuracy, confusion."""
    from mobilenetv2.errors import UserError
    from mobilenetv2.segment import run_segment_eval
    from mobilenetv2.weights import load_weights

    if args.backend not in ("auto", "torch") or args.precision != "fp32":
        raise UserError("segmentation weights are evaluated in PyTorch fp32 (--backend and "
                        "--precision apply to classifiers; `quantize` measures int8 mIoU)")
    if str(args.weights).lower().endswith(".onnx"):
        raise UserError(f"{args.weights}: eval runs a segmentation model from its PyTorch "
                        "weights (.safetensors); `quantize` reports the int8 ONNX model's mIoU")
    if args.data == "digits":
        raise UserError("--data: segmentation weights need masks: PASCAL VOC 2012, a folder "
                        "with images/ and masks/, or 'canvases' (the demo's)")
    model = load_weights(args.weights)
    metrics, classes, files = run_segment_eval(
        model, args.data, args.out, batch_size=min(args.batch_size, 16),
        num_workers=args.num_workers, device=args.device, output_stride=args.output_stride,
        multi_scale=args.multi_scale, flip=args.flip, progress=sys.stderr.isatty())
    if args.json:
        print(json.dumps(metrics.to_dict(classes), indent=1))
        return 0
    print(f"{metrics.summary()}  on {metrics.count} images ({args.data})")
    ious = [(k, v) for k, v in metrics.per_class(classes).items() if v == v]
    worst = sorted(ious, key=lambda t: t[1])[:5]
    print("lowest IoU: " + ", ".join(f"{k} {v:.1%}" for k, v in worst))
    if metrics.skipped:
        print(f"skipped {len(metrics.skipped)} unreadable file(s)")
    for what, path in files.items():
        print(f"{what + ':':<18}{path}")
    return 0


def _run_detector(args: Args) -> int:
    """A detector's weights: COCO mAP (pycocotools) on --data ('digits'/'canvases': the
    demo canvases' validation split, a COCO json or folder, a Pascal VOC folder)."""
    from mobilenetv2.detect import evaluate_detection
    from mobilenetv2.weights import load_weights

    if args.backend not in ("auto", "torch") or args.precision != "fp32":
        raise ValueError("--backend/--precision: a detector is evaluated with PyTorch here; "
                         "`mobilenetv2 quantize` measures its ONNX fp32 and int8 mAP")
    model = load_weights(args.weights)
    metrics, files, what = evaluate_detection(
        model, args.data, args.out, batch_size=args.batch_size,
        num_workers=max(0, args.num_workers), device=args.device,
        progress=sys.stderr.isatty())
    if args.json:
        print(json.dumps({"evaluated_on": what, "images": metrics.count,
                          "coco": metrics.coco.stats, "files": files}, indent=1))
        return 0
    s = metrics.coco.stats
    print(f"COCO mAP@[.5:.95] {s['map']:.1%}  AP50 {s['ap50']:.1%}  AP75 {s['ap75']:.1%}  "
          f"on {metrics.count} images ({what})")
    print(f"AP small {s['ap_small']:.1%}  medium {s['ap_medium']:.1%}  "
          f"large {s['ap_large']:.1%}  (-100% = no such objects)")
    for what_file, path in files.items():
        print(f"{what_file + ':':<17} {path}")
    return 0
