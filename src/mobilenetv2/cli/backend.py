"""The runtime options of the verbs that run a model (`--backend/--precision/--threads/
--calib`), and the session and `runner` they give the library (`deploy.open_session`).

`--threads` means the same in every verb: intra-op threads, 0 for the library's choice.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mobilenetv2.cli.options import add_options, shared

if TYPE_CHECKING:
    import torch

__all__ = [
    "RuntimeArgs",
    "add_backend_options",
    "apply_threads",
    "model_and_session",
    "session_from_args",
    "session_runner",
    "threads_or_none",
]

_GROUP = "inference backend"


@dataclass(frozen=True, kw_only=True)
class RuntimeArgs:
    """The runtime options; a verb's `Args` that runs a model inherits them."""

    backend: str = shared("backend", "auto", group=_GROUP)
    precision: str = shared("precision", "fp32", group=_GROUP)
    threads: int = shared("threads", 0, group=_GROUP)
    calib: str | None = shared("calib", None, group=_GROUP,
                               note="used when --precision int8 starts from float weights")


def add_backend_options(p: argparse.ArgumentParser) -> None:
    """Add the runtime options to a parser of one's own."""
    add_options(p, RuntimeArgs)


def threads_or_none(threads: int | None) -> int | None:
    """`--threads` for a library call whose default is None: 0 (or None) becomes None."""
    return threads or None


def apply_threads(threads: int) -> None:
    """`--threads` for a library call that takes none: set PyTorch's intra-op threads for
    this process (0 leaves PyTorch's default)."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def session_from_args(model: Any, args: Any) -> Any:
    """An `InferenceSession` for `model` (an nn.Module or a .onnx path) from the runtime
    options (a `RuntimeArgs` or an argparse namespace with the same names), with the ONNX
    files its backends need exported / quantized (`deploy.open_session`)."""
    from mobilenetv2.deploy import open_session

    return open_session(model, backend=args.backend, precision=args.precision,
                        threads=threads_or_none(args.threads), calib=args.calib)


def model_and_session(args: Any) -> tuple[Any, Any]:
    """The model and session of a verb that runs `--weights` (predict, eval): a PyTorch
    weights spec is loaded and handed to the session; one of our `.onnx` files (export,
    quantize) is run as it is, its preprocessing and labels read from its metadata, and the
    model is the session's tensor adapter."""
    if str(args.weights).lower().endswith((".onnx", ".pte")) or _runs_as_tflite(args):
        session = session_from_args(args.weights, args)
        return session.as_module(), session
    from mobilenetv2.weights import load_weights

    model = load_weights(args.weights)
    return model, session_from_args(model, args)


def _runs_as_tflite(args: Any) -> bool:
    """A .tflite runs in LiteRT as it is when we wrote it (its metadata says what it
    needs) or when `--backend litert` asks; any other .tflite is converted, as before."""
    from pathlib import Path

    if not str(args.weights).lower().endswith(".tflite") or not Path(args.weights).is_file():
        return False
    if args.backend == "litert":
        return True
    from mobilenetv2.runtime.phone import phone_metadata

    return "config" in phone_metadata(args.weights)


def session_runner(session: Any) -> Callable[[Any, torch.Tensor], torch.Tensor]:
    """`runner(model, batch) -> logits` running `session` (the hook `predict` takes), through
    the session's own tensor adapter (`InferenceSession.as_module`)."""
    module = session.as_module()
    return lambda _model, batch: module(batch)
