"""`mobilenetv2 quantize`: int8 QDQ ONNX by post-training calibration or QAT."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mobilenetv2.cli.backend import apply_threads
from mobilenetv2.cli.options import option, shared

__all__ = ["Args", "run"]

_QAT = "QAT"


@dataclass(frozen=True, kw_only=True)
class Args:
    """int8 quantization (PTQ or QAT) to a portable QDQ ONNX model

    Quantize to int8: per-channel symmetric weights, uint8 activations, ReLU6 kept, as a QDQ
    ONNX model that ONNX Runtime and OpenVINO run. Writes OUT.fp32.onnx and OUT.int8.onnx and
    reports fp32 vs int8 top-1.
    """

    weights: str = shared("weights")
    calib: str = shared("calib", note="for QAT, labelled training images")
    method: Literal["ptq", "qat"] = option("ptq", help="post-training calibration or QAT")
    out: str | None = shared("out", None, note="the output stem", metavar="OUT",
                             default_help="next to the weights, or ./model for registry names")
    calib_images: int = option(256, minimum=1, metavar="N", help="calibration images used")
    eval_data: str | None = option(
        None, flags=("--eval",), metavar="DIR|digits",
        help="labelled images to measure fp32 and int8 top-1 on (default: digits test split "
        "when --calib digits)")
    eval_images: int | None = option(None, minimum=1, metavar="N",
                                     help="limit the evaluation images")
    threads: int = shared("threads", 0)
    epochs: int = option(3, minimum=1, group=_QAT, help="QAT epochs")
    freeze_bn_after: int = option(1, minimum=0, group=_QAT, metavar="N",
                                  help="freeze BatchNorm statistics after N epochs")
    freeze_observers_after: int = option(2, minimum=0, group=_QAT, metavar="N",
                                         help="freeze activation ranges after N epochs")
    lr: float = option(1e-4, minimum=0, group=_QAT, help="QAT learning rate")


def run(args: Args) -> int:
    from pathlib import Path

    from mobilenetv2._files import check_output
    from mobilenetv2.quant.ptq import fp32_int8_paths, quantize_ptq
    from mobilenetv2.quant.qat import quantize_qat
    from mobilenetv2.weights import load_weights

    out = args.out
    if out is None:
        w = Path(args.weights)
        out = str(w.with_suffix("")) if w.exists() else "model"
    for path in fp32_int8_paths(out):
        check_output(path, [args.weights, args.calib], what="a quantized model")
    apply_threads(args.threads)
    model = load_weights(args.weights)
    if model.config.task == "segment":
        return _quantize_segmenter(args, model, out)
    if model.config.task == "detect":
        return _quantize_detector(args, model, out)
    if args.method == "ptq":
        result = quantize_ptq(model, out, args.calib, calib_images=args.calib_images,
                              eval_data=args.eval_data, eval_images=args.eval_images)
    else:
        result = quantize_qat(model, out, args.calib, epochs=args.epochs,
                              freeze_bn_after=args.freeze_bn_after,
                              freeze_observers_after=args.freeze_observers_after,
                              lr=args.lr, calib_images=args.calib_images,
                              eval_data=args.eval_data)
    print(f"float model: {result.float_path} (verified against PyTorch)")
    print(f"int8 model:  {result.int8_path} (QDQ, per-channel weights, {result.method}, "
          f"{result.calibration_images} calibration images)")
    if result.accuracy:
        print(f"top-1 on {result.eval_images} images: fp32 {result.accuracy['fp32']:.2f}%  "
              f"int8 {result.accuracy['int8']:.2f}%  "
              f"(delta {result.accuracy['int8'] - result.accuracy['fp32']:+.2f} points)")
    if result.agreement is not None:
        print(f"int8 and fp32 top-1 agree on {result.agreement:.2f}% of {result.eval_images} "
              f"images ({result.eval_source})")
    return 0


def _quantize_segmenter(args: Args, model: object, out: str) -> int:
    """PTQ of Mobile DeepLabv3 weights, mIoU of fp32 and int8 on --calib's validation split."""
    from mobilenetv2.errors import UserError
    from mobilenetv2.segment import quantize_segmenter

    if args.method != "ptq":
        raise UserError("segmentation weights: --method ptq only (QAT trains classifiers)")
    if args.calib == "digits":
        raise UserError("--calib: segmentation weights calibrate on their own kind of data: "
                        "'canvases', PASCAL VOC 2012 or an images/masks folder")
    r = quantize_segmenter(model, out, args.calib, calib_images=min(args.calib_images, 256),
                           eval_images=args.eval_images)
    print(f"float model: {r['float_path']} (verified against PyTorch)")
    print(f"int8 model:  {r['int8_path']} (QDQ, per-channel weights, "
          f"{r['calibration_images']} calibration images)")
    print(f"mIoU on {r['eval_images']} validation images: fp32 {r['miou']['fp32']:.2%}  "
          f"int8 {r['miou']['int8']:.2%}  (pixel agreement {r['pixel_agreement']:.2%})")
    return 0


def _quantize_detector(args: Args, model: object, out: str) -> int:
    """SSDLite PTQ: fp32 and int8 ONNX, COCO mAP of PyTorch, fp32 and int8 on --calib's
    validation split (calibrated on its training split)."""
    from mobilenetv2.detect import quantize_detector
    from mobilenetv2.errors import UserError

    if args.method != "ptq":
        raise UserError("QAT is for classifiers; a detector is quantized with --method ptq")
    r = quantize_detector(model, args.calib, out, calibration_images=args.calib_images)
    print(f"float model: {r['fp32_onnx']} (verified against PyTorch)")
    print(f"int8 model:  {r['int8_onnx']} (QDQ, per-channel weights, {r['calibration']})")
    for name, m in r["map"].items():
        print(f"  {name:<10} COCO mAP {m:.1%}  AP50 {r['ap50'][name]:.1%}  "
              f"({r['evaluated_on']})")
    return 0
