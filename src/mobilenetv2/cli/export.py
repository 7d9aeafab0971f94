"""`mobilenetv2 export`: ONNX, TorchScript, LiteRT (.tflite) or ExecuTorch (.pte), each
verified against PyTorch on the same inputs in its own runtime."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mobilenetv2.cli.backend import apply_threads
from mobilenetv2.cli.options import option, shared

__all__ = ["Args", "run"]


@dataclass(frozen=True, kw_only=True)
class Args:
    """export to ONNX, TorchScript, LiteRT or ExecuTorch (BN folded, verified numerically)

    Export weights to ONNX (dynamic batch, Clip for ReLU6, GlobalAveragePool, preprocessing
    and labels in metadata_props), TorchScript, LiteRT .tflite (fp32, or full-integer int8
    calibrated on --calib) or ExecuTorch .pte lowered to XNNPACK (fp32, or int8 via PT2E).
    Every export is run on the same inputs as PyTorch in its own runtime and the max abs
    difference printed; an fp32 export fails above --atol; an int8 one reports its top-1
    agreement with the float model on the calibration images.
    """

    weights: str = shared("weights")
    format: Literal["onnx", "torchscript", "tflite", "executorch"] = option(
        "onnx", help="what to write")
    out: str = shared("out", note="the .onnx, .pt, .tflite or .pte file", metavar="FILE")
    precision: Literal["fp32", "int8"] = option(
        "fp32", help="tflite/executorch: fp32, or int8 calibrated on --calib (for ONNX int8 "
        "use `mobilenetv2 quantize`)")
    calib: str | None = shared("calib", None, note="int8 tflite/executorch")
    calib_images: int = option(256, minimum=1, metavar="N",
                               help="at most this many calibration images")
    input_size: int | None = option(None, minimum=1, metavar="N",
                                    help="example input side (default: the weights' crop size)")
    dynamic_hw: bool = option(False, help="ONNX: also make height and width dynamic")
    opset: int = option(17, minimum=1, help="ONNX opset")
    exporter: Literal["torchscript", "dynamo"] = option(
        "torchscript", help="torch.onnx exporter (see docs)")
    atol: float = option(1e-4, minimum=0, help="largest accepted max abs difference")
    threads: int = shared("threads", 0)


# What each format's file is called (a .safetensors name for a TorchScript file is how
# `export -o mine.safetensors` once destroyed the weights it read).
SUFFIXES = {"onnx": (".onnx",), "torchscript": (".pt", ".pth", ".ts", ".torchscript"),
            "tflite": (".tflite",), "executorch": (".pte",)}


def run(args: Args) -> int:
    from mobilenetv2._files import check_output
    from mobilenetv2.errors import UserError
    from mobilenetv2.export import export_onnx, export_torchscript
    from mobilenetv2.weights import load_weights

    check_output(args.out, [args.weights], SUFFIXES[args.format], f"the {args.format} export")
    apply_threads(args.threads)
    model = load_weights(args.weights)
    if args.format in ("tflite", "executorch"):
        # every task: a detector's file holds the network, its anchors ride in the metadata
        return _phone(args, model)
    if model.config.task == "detect":
        return _export_detector(args, model)
    if args.precision != "fp32":
        raise UserError(f"--precision {args.precision} is for tflite and executorch; an int8 "
                        f"ONNX model comes from `mobilenetv2 quantize`")
    if args.format == "onnx":
        result = export_onnx(model, args.out, input_size=args.input_size,
                             dynamic_hw=args.dynamic_hw, opset=args.opset,
                             exporter=args.exporter, atol=args.atol)
    else:
        result = export_torchscript(model, args.out, input_size=args.input_size,
                                    atol=args.atol)
    print(f"wrote {result.path} ({result.format}); verified: max abs diff vs PyTorch "
          f"{result.max_abs_diff:.2e} (limit {args.atol:g})")
    return 0


def _phone(args: Args, model) -> int:
    from mobilenetv2.errors import UserError

    if args.precision == "int8" and args.calib is None:
        raise UserError("--precision int8 needs --calib: 'digits' or a folder of images like "
                        "the ones the model will see")
    data = None
    if args.precision == "int8":
        from mobilenetv2.quant.ptq import calibration_arrays
        from mobilenetv2.weights.format import meta_or_default

        data = calibration_arrays(args.calib, meta_or_default(model).preprocessing,
                                  limit=args.calib_images)
    if args.format == "tflite":
        from mobilenetv2.export.tflite import export_tflite as export
    else:
        from mobilenetv2.export.executorch import export_executorch as export
    result = export(model, args.out, precision=args.precision, calibration=data,
                    input_size=args.input_size, atol=args.atol)
    print(f"wrote {result}")
    return 0


def _export_detector(args: Args, model: object) -> int:
    """SSDLite: ONNX of the network with its anchors; decoding and NMS stay outside."""
    from mobilenetv2.errors import UserError
    from mobilenetv2.export.onnx_detect import export_detector_onnx

    if args.format != "onnx" or args.dynamic_hw or args.exporter != "torchscript":
        raise UserError("a detector exports to onnx (the default exporter), tflite or "
                        "executorch, at a fixed input size: its anchors depend on it")
    result = export_detector_onnx(model, args.out, input_size=args.input_size,
                                  opset=args.opset, atol=args.atol)
    print(f"wrote {result.path} (onnx: outputs box_codes, class_logits, anchors); verified: "
          f"boxes after mobilenetv2.model.heads.ssd_post.postprocess differ from PyTorch's "
          f"by {result.max_abs_diff:.2e} px (limit {args.atol:g} of the image side)")
    return 0
