"""The `mobilenetv2` command: one entry point, one thin module per verb.

Each verb module defines `add_parser(subparsers)` (which registers its options and sets
`func`) and a `run(args) -> int` that calls library functions. A user mistake raises
`ValueError`, `FileNotFoundError` or `UserError`; `main` turns it into one clear line on
stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from mobilenetv2.errors import UserError

__all__ = ["VERBS", "build_parser", "main"]

# Verb name -> module under mobilenetv2.cli. Later verbs (train, eval, convert, predict,
# export, quantize, bench) register here.
VERBS: dict[str, str] = {
    "variants": "variants",
    "profile": "profile",
    "convert": "convert",
    "pretrained": "pretrained",
    "predict": "predict",
    "export": "export",
    "quantize": "quantize",
    "bench": "bench",
    "deploy-demo": "deploy_demo",
    "train": "train",
    "eval": "eval",
}


def build_parser() -> argparse.ArgumentParser:
    from mobilenetv2 import __version__

    parser = argparse.ArgumentParser(
        prog="mobilenetv2",
        description="MobileNetV2 (Sandler et al., CVPR 2018) done right: build, profile, "
        "convert, train, evaluate, predict, export, quantize, benchmark.",
    )
    parser.add_argument("--version", action="version", version=f"mobilenetv2 {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for module in VERBS.values():
        importlib.import_module(f"mobilenetv2.cli.{module}").add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (UserError, ValueError, FileNotFoundError, IsADirectoryError, PermissionError) as e:
        print(f"mobilenetv2 {args.verb}: error: {_message(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mobilenetv2 {args.verb}: interrupted", file=sys.stderr)
        return 130


def _message(e: BaseException) -> str:
    if isinstance(e, (FileNotFoundError, IsADirectoryError, PermissionError)) and e.filename:
        return f"{e.strerror or e}: {e.filename}"
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
