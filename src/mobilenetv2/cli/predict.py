"""`mobilenetv2 predict`: top-k classes of image files, with the weights' own preprocessing."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

from mobilenetv2.cli.backend import RuntimeArgs, model_and_session, session_runner
from mobilenetv2.cli.options import option, shared
from mobilenetv2.cli.report import report_results

__all__ = ["Args", "run"]


@dataclass(frozen=True, kw_only=True)
class Args(RuntimeArgs):
    """classify images (files or folders) with pretrained or converted weights

    Top-k classes of each image, using the preprocessing and labels stored with the weights.
    Unreadable files get one error line each; the rest are still classified, and the exit
    status is 1 if any failed.
    """

    paths: list[str] = option(positional=True, nargs="+", metavar="IMAGE_OR_DIR",
                              help="image files or folders")
    weights: str = shared("weights")
    topk: int = option(5, minimum=1, metavar="K", help="classes per image")
    batch_size: int = shared("batch_size", 32)
    json: bool = shared("json", False)


def run(args: Args) -> int:
    from mobilenetv2.errors import UserError
    from mobilenetv2.predict import predict
    from mobilenetv2.segment import weights_task

    if weights_task(args.weights) == "segment":
        from mobilenetv2.errors import UserError

        raise UserError(f"{args.weights} is a segmentation model (Mobile DeepLabv3): predict "
                        f"names one class per image; for per-pixel classes run `mobilenetv2 "
                        f"segment IMAGE_OR_DIR --weights {args.weights}`")
    if weights_task(args.weights) == "detect":
        raise UserError(f"{args.weights} is an SSDLite detector: `mobilenetv2 detect` draws "
                        "its boxes (predict classifies whole images)")
    model, session = model_and_session(args)
    if args.backend != "auto" or args.precision != "fp32":
        # stderr, so --json stays parseable: a bf16/int8 result is never taken for fp32
        print(f"running on {session.describe()}", file=sys.stderr)
    results = predict(model, args.paths, topk=args.topk, batch_size=args.batch_size,
                      runner=session_runner(session), progress=sys.stderr.isatty())
    return report_results(
        "predict", results,
        (lambda: json.dumps([r.to_dict() for r in results], indent=2)) if args.json else None,
        lambda r: [r.path] + [f"  {prob:7.4f}  {label} ({index})" for index, label, prob in r.top])
