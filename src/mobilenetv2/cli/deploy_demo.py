"""`mobilenetv2 deploy-demo`: export + int8 + verification + fp32/int8 comparison."""

from __future__ import annotations

from dataclasses import dataclass

from mobilenetv2.cli.backend import threads_or_none
from mobilenetv2.cli.options import shared

__all__ = ["Args", "run"]


@dataclass(frozen=True, kw_only=True)
class Args:
    """export a trained model to ONNX, quantize to int8, compare accuracy and latency

    The deployment steps of `make demo`: fp32 ONNX (verified against PyTorch) and int8 QDQ
    ONNX, then top-1 and batch-1 latency of both side by side.
    """

    weights: str = shared("weights")
    out: str | None = shared("out", None, note="the output folder", metavar="DIR",
                             default_help="the weights' folder")
    data: str = shared("data", "digits", note="calibration and evaluation images")
    threads: int = shared("threads", 0)


def run(args: Args) -> int:
    from pathlib import Path

    from mobilenetv2.deploy import deploy_demo, format_rows

    out = args.out or (str(Path(args.weights).parent) if Path(args.weights).exists() else ".")
    rows = deploy_demo(args.weights, out, data=args.data, threads=threads_or_none(args.threads))
    print(format_rows(rows))
    return 0
