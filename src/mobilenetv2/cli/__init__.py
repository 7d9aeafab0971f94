"""The `mobilenetv2` command: one entry point, one thin module per verb.

Each verb module declares its options as a dataclass `Args` and calls the library in
`run(args: Args) -> int` (`cli.options` says how a verb declares options, shared ones
included). Library modules are imported inside `run`, so `mobilenetv2 --help` and
`mobilenetv2 VERB --help` do not import torch. A usage mistake is one line on stderr and
exit status 2; so is a user mistake found later (`ValueError`, `FileNotFoundError`,
`UserError`), never a traceback.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Sequence

from mobilenetv2._version import __version__
from mobilenetv2.cli.options import Parser, add_verb, args_from_namespace
from mobilenetv2.errors import UserError

__all__ = ["VERBS", "build_parser", "main"]

# Verb name -> module under mobilenetv2.cli (a module per verb, named after it).
VERBS: dict[str, str] = {
    "variants": "variants",
    "profile": "profile",
    "convert": "convert",
    "pretrained": "pretrained",
    "predict": "predict",
    "detect": "detect",
    "export": "export",
    "quantize": "quantize",
    "bench": "bench",
    "deploy-demo": "deploy_demo",
    "train": "train",
    "eval": "eval",
    "segment": "segment",
}


def build_parser() -> Parser:
    parser = Parser(
        prog="mobilenetv2",
        description="MobileNetV2 (Sandler et al., CVPR 2018) done right: build, profile, "
        "convert, train, evaluate, predict, export, quantize, benchmark.",
    )
    parser.add_argument("--version", action="version", version=f"mobilenetv2 {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for name, module in VERBS.items():
        verb = importlib.import_module(f"mobilenetv2.cli.{module}")
        add_verb(sub, name, verb.Args, verb.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns, extra = parser.parse_known_args(argv)
    verb = getattr(ns, "_verb", None)
    if extra:  # reported by the verb's parser, so the hint names the verb's --help
        (verb.parser if verb else parser).error(f"unrecognized arguments: {' '.join(extra)}")
    _configure_logging(ns.verbose)
    if verb is None:
        parser.print_help()
        return 2
    try:
        return int(verb.run(args_from_namespace(verb.args, ns)) or 0)
    except (UserError, ValueError, FileNotFoundError, IsADirectoryError, PermissionError) as e:
        print(f"mobilenetv2 {verb.name}: error: {_message(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mobilenetv2 {verb.name}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `mobilenetv2 profile ... | head` closed our stdout: what the reader wanted was printed.
        # Point stdout at /dev/null so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _configure_logging(verbose: bool) -> None:
    """Our messages at INFO (DEBUG with -v); other libraries' only from WARNING up (with -v,
    everything): ONNX Runtime's quantizer logs a line per bias it copies ("Created a copy of
    bias input ...", about 40 per model) at INFO through the root logger."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(message)s")
    logging.getLogger("mobilenetv2").setLevel(logging.DEBUG if verbose else logging.INFO)


def _message(e: BaseException) -> str:
    if isinstance(e, (FileNotFoundError, IsADirectoryError, PermissionError)) and e.filename:
        return f"{e.strerror or e}: {e.filename}"
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
