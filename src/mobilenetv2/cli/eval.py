"""`mobilenetv2 eval`: top-1/top-5, per-class accuracy, confusion matrix PNG and JSON report
of a weight set on a labelled folder (or the digits test split), with the preprocessing
recorded in the weights' metadata."""

from __future__ import annotations

import argparse
import json
import sys

from mobilenetv2.cli.backend import add_backend_options, session_from_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="accuracy, per-class accuracy and confusion matrix of weights on a dataset",
        description="Evaluate weights on an ImageFolder directory (class sub-folders; a root "
        "with train/ and val/ means val/) or 'digits' (the bundled test split), using the "
        "preprocessing stored with the weights.",
    )
    p.add_argument("--weights", required=True, help="weights file or name")
    p.add_argument("--data", default="digits", help="folder or 'digits' (default: digits)")
    p.add_argument("--out", default="runs/eval", help="report folder (default: runs/eval)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--num-workers", type=int, default=-1, help="-1: automatic")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="print the JSON report")
    add_backend_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mobilenetv2.evaluate import run_eval
    from mobilenetv2.weights import load_weights

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    model = load_weights(args.weights)
    if str(args.device) == "cpu":
        # the fastest correct CPU backend (issue 5); other devices run the PyTorch model
        session = session_from_args(model, args)
        if args.backend != "auto" or args.precision != "fp32":
            print(f"running on {session.describe()}", file=sys.stderr)
        model = session.as_module(model)
    elif args.backend not in ("auto", "torch") or args.precision != "fp32":
        raise ValueError(f"--backend/--precision apply to --device cpu, not {args.device}")
    report = run_eval(model, args.data, args.out, batch_size=args.batch_size,
                      num_workers=args.num_workers, device=args.device)
    if args.json:
        print(json.dumps(report.to_dict(), indent=1))
        return 0
    r = report.result
    print(f"top-1 {r.top1:.2%}  top-5 {r.top5:.2%}  on {r.count} images ({args.data})")
    worst = sorted(zip(report.labels, r.per_class), key=lambda t: t[1])[:5]
    print("lowest per-class accuracy: " + ", ".join(f"{k} {v:.1%}" for k, v in worst))
    if r.skipped:
        print(f"skipped {len(r.skipped)} unreadable file(s)")
    print(f"report:           {report.json_path}")
    print(f"confusion matrix: {report.png_path}")
    return 0
