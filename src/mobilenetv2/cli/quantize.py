"""`mobilenetv2 quantize`: int8 QDQ ONNX by post-training calibration or QAT."""

from __future__ import annotations

import argparse

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quantize",
        help="int8 quantization (PTQ or QAT) to a portable QDQ ONNX model",
        description="Quantize to int8: per-channel symmetric weights, uint8 activations, "
        "ReLU6 kept, as a QDQ ONNX model that ONNX Runtime and OpenVINO run. Writes "
        "OUT.fp32.onnx and OUT.int8.onnx and reports fp32 vs int8 top-1.",
    )
    p.add_argument("--weights", required=True, metavar="NAME|PATH")
    p.add_argument("--calib", required=True, metavar="DIR|digits",
                   help="calibration images (QAT: labelled training images)")
    p.add_argument("--method", choices=("ptq", "qat"), default="ptq")
    p.add_argument("-o", "--out", help="output stem (default: next to the weights, or "
                   "./model for registry names)")
    p.add_argument("--calib-images", type=int, default=256,
                   help="calibration images used (default: 256)")
    p.add_argument("--eval", dest="evaluate", metavar="DIR|digits",
                   help="labelled images to measure fp32 and int8 top-1 on "
                   "(default: digits test split when --calib digits)")
    p.add_argument("--eval-images", type=int, help="limit the evaluation images")
    q = p.add_argument_group("QAT")
    q.add_argument("--epochs", type=int, default=3, help="QAT epochs (default: 3)")
    q.add_argument("--freeze-bn-after", type=int, default=1,
                   help="freeze BatchNorm statistics after N epochs (default: 1)")
    q.add_argument("--freeze-observers-after", type=int, default=2,
                   help="freeze activation ranges after N epochs (default: 2)")
    q.add_argument("--lr", type=float, default=1e-4, help="QAT learning rate (default: 1e-4)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mobilenetv2.quant.ptq import quantize_ptq
    from mobilenetv2.quant.qat import quantize_qat
    from mobilenetv2.weights import load_weights

    if args.calib_images < 1:
        raise ValueError(f"--calib-images must be >= 1, got {args.calib_images}")
    model = load_weights(args.weights)
    out = args.out
    if out is None:
        w = Path(args.weights)
        out = str(w.with_suffix("")) if w.exists() else "model"
    if args.method == "ptq":
        result = quantize_ptq(model, out, args.calib, calib_images=args.calib_images,
                              eval_data=args.evaluate, eval_images=args.eval_images)
    else:
        result = quantize_qat(model, out, args.calib, epochs=args.epochs,
                              freeze_bn_after=args.freeze_bn_after,
                              freeze_observers_after=args.freeze_observers_after,
                              lr=args.lr, calib_images=args.calib_images,
                              eval_data=args.evaluate)
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
