"""`mobilenetv2 predict`: top-k classes of image files, with the weights' own preprocessing."""

from __future__ import annotations

import argparse
import json
import sys

from mobilenetv2.cli.backend import add_backend_options, session_from_args, session_runner
from mobilenetv2.predict import predict
from mobilenetv2.weights import load_weights


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="classify images (files or folders) with pretrained or converted weights",
        description="Top-k classes of each image, using the preprocessing and labels stored "
        "with the weights. Unreadable files get one error line each; the rest are still "
        "classified, and the exit status is 1 if any failed.",
    )
    p.add_argument("paths", nargs="+", metavar="IMAGE_OR_DIR", help="image files or folders")
    p.add_argument("--weights", required=True, metavar="NAME|PATH",
                   help="a pretrained name (see `mobilenetv2 pretrained`), one of our "
                   ".safetensors files, or a foreign file (.pth, .h5, .tflite) to convert")
    p.add_argument("--topk", type=int, default=5, help="classes per image (default: 5)")
    p.add_argument("--batch-size", type=int, default=32, help="images per batch (default: 32)")
    p.add_argument("--json", action="store_true", help="machine-readable JSON on stdout")
    add_backend_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    model = load_weights(args.weights)
    session = session_from_args(model, args)
    if args.backend != "auto" or args.precision != "fp32":
        # stderr, so --json stays parseable: a bf16/int8 result is never taken for fp32
        print(f"running on {session.describe()}", file=sys.stderr)
    results = predict(model, args.paths, topk=args.topk, batch_size=args.batch_size,
                      runner=session_runner(session), progress=sys.stderr.isatty())
    for r in results:
        if r.error:
            print(f"mobilenetv2 predict: error: {r.error}", file=sys.stderr)
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
    else:
        for r in results:
            if r.ok:
                print(r.path)
                for index, label, prob in r.top:
                    print(f"  {prob:7.4f}  {label} ({index})")
    return 1 if any(not r.ok for r in results) else 0
