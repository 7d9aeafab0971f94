"""Shared `--backend/--precision/--threads/--calib` options for the verbs that run a model
(predict, eval, ...), and the `runner` they pass to the library (`deploy.open_session`)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["add_backend_options", "session_from_args", "session_runner"]


def add_backend_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("inference backend")
    g.add_argument("--backend", choices=("auto", "torch", "onnxruntime", "openvino"),
                   default="auto", help="runtime (default: auto, the fastest installed for "
                   "the precision)")
    g.add_argument("--precision", choices=("fp32", "bf16", "int8"), default="fp32",
                   help="arithmetic actually used (default: fp32)")
    g.add_argument("--threads", type=int, help="intra-op threads (default: all cores)")
    g.add_argument("--calib", metavar="DIR|digits",
                   help="calibration images when --precision int8 starts from float weights")


def session_from_args(model: Any, args: argparse.Namespace):
    """An `InferenceSession` for `model` (an nn.Module or a .onnx path) from the options,
    with the ONNX files its backends need exported / quantized (`deploy.open_session`)."""
    from mobilenetv2.deploy import open_session

    return open_session(model, backend=args.backend, precision=args.precision,
                        threads=args.threads, calib=args.calib)


def session_runner(session: Any) -> Callable[[Any, torch.Tensor], torch.Tensor]:
    """`runner(model, batch) -> logits` running `session` (the hook `predict` takes),
    through the session's one tensor adapter (`InferenceSession.as_module`)."""
    module = session.as_module()

    def run(_model: Any, batch: torch.Tensor) -> torch.Tensor:
        return module(batch)

    return run
