"""`mobilenetv2 export`: ONNX or TorchScript, verified against PyTorch on the same inputs."""

from __future__ import annotations

import argparse

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export to ONNX or TorchScript (BN folded, verified numerically)",
        description="Export weights to ONNX (dynamic batch, Clip for ReLU6, GlobalAveragePool, "
        "preprocessing and labels in metadata_props) or TorchScript. Every export is run "
        "on the same inputs as PyTorch and the max abs difference printed; it fails above "
        "--atol.",
    )
    p.add_argument("--weights", required=True, metavar="NAME|PATH", help="weights to export")
    p.add_argument("--format", choices=("onnx", "torchscript"), default="onnx")
    p.add_argument("-o", "--out", required=True, help="output file (.onnx or .pt)")
    p.add_argument("--input-size", type=int, help="example input side (default: the "
                   "weights' crop size)")
    p.add_argument("--dynamic-hw", action="store_true",
                   help="ONNX: also make height and width dynamic")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default: 17)")
    p.add_argument("--exporter", choices=("torchscript", "dynamo"), default="torchscript",
                   help="torch.onnx exporter (default: torchscript, see docs)")
    p.add_argument("--atol", type=float, default=1e-4,
                   help="largest accepted max abs difference (default: 1e-4)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mobilenetv2.export import export_onnx, export_torchscript
    from mobilenetv2.weights import load_weights

    model = load_weights(args.weights)
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
