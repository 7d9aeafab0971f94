"""`mobilenetv2 deploy-demo`: export + int8 + verification + fp32/int8 comparison."""

from __future__ import annotations

import argparse

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "deploy-demo",
        help="export a trained model to ONNX, quantize to int8, compare accuracy and latency",
        description="The deployment steps of `make demo`: fp32 ONNX (verified against "
        "PyTorch) and int8 QDQ ONNX, then top-1 and batch-1 latency of both side by side.",
    )
    p.add_argument("--weights", required=True, metavar="NAME|PATH")
    p.add_argument("--out", default=None, help="output folder (default: the weights' folder)")
    p.add_argument("--data", default="digits", metavar="DIR|digits",
                   help="calibration and evaluation data (default: digits)")
    p.add_argument("--threads", type=int, help="inference threads (default: all cores)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mobilenetv2.deploy import deploy_demo, format_rows

    out = args.out or (str(Path(args.weights).parent) if Path(args.weights).exists() else ".")
    rows = deploy_demo(args.weights, out, data=args.data, threads=args.threads)
    print(format_rows(rows))
    return 0
