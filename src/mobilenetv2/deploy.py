"""Deployment: from a float model to the files a backend runs, and `make demo`'s comparison.

`open_session` is what the CLI's `--backend/--precision/--calib` options call: it asks the
session's backend choice (`runtime.session.choose_backends`) whether an ONNX backend will
run, and only then makes the ONNX file that backend needs: the BN-folded fp32 export
(verified against PyTorch) and, for int8, the QDQ model calibrated on real images
(`quant.ptq`). The fp32 export is made once per model (`model_key`: a hash of its tensors
and metadata) into the user's cache, `$MOBILENETV2_CACHE/onnx/`, and `auto`'s race winners
are remembered beside it (`runtime.race_cache`), so a one-image `predict` neither exports
nor races again; int8 files (which depend on the calibration images) live in a temporary
folder the session removes on `close()`.

`deploy_demo` is the deployment half of `make demo`. From one trained checkpoint: the fp32
ONNX model, the int8 QDQ model (per-channel weights, calibrated on the training split),
both run through the fastest backend `InferenceSession` picks for their precision, with
top-1 accuracy on the evaluation set and batch-1 latency measured in interleaved rounds
(`benchmark.timing`), so both numbers see the same machine state.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from mobilenetv2.errors import UserError
from mobilenetv2.runtime.backends import BACKENDS, source_kind
from mobilenetv2.runtime.phone import PHONE_SUFFIXES
from mobilenetv2.runtime.race_cache import RaceCache
from mobilenetv2.runtime.session import (
    INT8_NEEDS_A_QUANTIZED_MODEL,
    InferenceSession,
    choose_backends,
    refused_backends,
)
from mobilenetv2.weights.hub import cache_dir

__all__ = ["DeployRow", "deploy_demo", "format_rows", "model_key", "open_session"]

log = logging.getLogger(__name__)


def open_session(
    model: nn.Module | str | os.PathLike,
    backend: str = "auto",
    precision: str = "fp32",
    threads: int | None = None,
    *,
    calib: Any = None,
    input_size: int | None = None,
) -> InferenceSession:
    """An `InferenceSession` for float weights, with the ONNX files its backends need made.

    Args:
        model: An `nn.Module` (MobileNetV2), a `--weights` spec, or a `.onnx` file.
        backend: "auto" or a backend name (`runtime.backends.BACKENDS`).
        precision: "fp32", "bf16" or "int8". int8 from float weights (or a float `.onnx`
            file) needs `calib`.
        threads: Intra-op threads (default: the backend's).
        calib: Calibration images for int8: "digits", a folder, or a preprocessed array
            (see `quant.ptq.calibration_arrays`).
        input_size: Example input side of the export (default: the weights' crop).
    """
    if isinstance(model, (str, os.PathLike)) and str(model).lower().endswith(".onnx"):
        return _onnx_session(Path(model), backend, precision, threads, calib)
    if isinstance(model, (str, os.PathLike)) and Path(model).suffix.lower() in PHONE_SUFFIXES:
        return InferenceSession(model, backend, precision, threads)
    if not isinstance(model, nn.Module):
        from mobilenetv2.weights import load_weights

        model = load_weights(str(model))
    names = choose_backends(backend, precision, module=True, onnx=True,
                            files=frozenset(PHONE_SUFFIXES.values()),
                            refused=refused_backends(model))
    if source_kind(names[0], precision) in PHONE_SUFFIXES.values():
        return _phone_session(model, names[0], precision, threads, calib, input_size)
    if all(source_kind(n, precision) != "onnx" for n in names):
        return InferenceSession(model, backend, precision, threads)
    if precision == "int8" and calib is None:
        raise UserError(INT8_NEEDS_A_QUANTIZED_MODEL)
    from mobilenetv2.weights.format import meta_or_default

    key = model_key(model, input_size)
    path = _cached_export(model, key, input_size)
    if precision != "int8":
        session = InferenceSession(model, backend, precision, threads, onnx_file=path)
        session.race_cache = RaceCache(cache_dir() / "races.json", key)
        return session
    tmp = tempfile.TemporaryDirectory(prefix="mobilenetv2-")
    try:
        int8 = _quantize(path, Path(tmp.name), calib, meta_or_default(model).preprocessing)
        return InferenceSession(model, backend, precision, threads, onnx_file=int8,
                                cleanup=tmp.cleanup)
    except BaseException:
        tmp.cleanup()
        raise


def _phone_session(model: nn.Module, backend: str, precision: str, threads: int | None,
                   calib: Any, input_size: int | None) -> InferenceSession:
    """Weights on litert / executorch: exported (verified) into a temporary folder that the
    session removes on `close()`."""
    from mobilenetv2.export.executorch import export_executorch
    from mobilenetv2.export.tflite import export_tflite
    from mobilenetv2.weights.format import meta_or_default

    if precision == "int8" and calib is None:
        raise UserError(INT8_NEEDS_A_QUANTIZED_MODEL)
    data = None
    if precision == "int8":
        from mobilenetv2.quant.ptq import calibration_arrays

        data = calibration_arrays(calib, meta_or_default(model).preprocessing)
    kind = BACKENDS[backend].runs
    export = export_tflite if kind == "tflite" else export_executorch
    tmp = tempfile.TemporaryDirectory(prefix="mobilenetv2-")
    try:
        path = export(model, Path(tmp.name) / f"model.{precision}.{kind}", precision=precision,
                      calibration=data, input_size=input_size).path
        return InferenceSession(model, backend, precision, threads, phone_file=path,
                                cleanup=tmp.cleanup)
    except BaseException:
        tmp.cleanup()
        raise


def model_key(model: nn.Module, input_size: int | None = None) -> str:
    """A short hash of what an ONNX export of `model` depends on: every tensor, the config,
    the preprocessing and labels (written into the file), the example size, and the versions
    of this package and torch."""
    import hashlib

    import torch

    from mobilenetv2._version import __version__
    from mobilenetv2.weights.format import meta_or_default

    h = hashlib.sha256()
    meta = meta_or_default(model).to_metadata()
    h.update(json.dumps([meta, input_size, __version__, torch.__version__]).encode())
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:24]


def _cached_export(model: nn.Module, key: str, input_size: int | None) -> Path:
    """The fp32 ONNX export of `model`, made once per `model_key` into the user's cache
    (`$MOBILENETV2_CACHE/onnx/`): a one-image `predict` on the default backend exported the
    model on every call. Written atomically, so a concurrent or killed run leaves no
    half-file."""
    from mobilenetv2.export.onnx import export_onnx

    path = cache_dir() / "onnx" / f"{key}.fp32.onnx"
    if path.is_file():
        log.debug("ONNX export from the cache: %s", path)
        return path
    return export_onnx(model, path, input_size=input_size).path


def _onnx_session(path: Path, backend: str, precision: str, threads: int | None,
                  calib: Any) -> InferenceSession:
    """A session on an ONNX file; a float file asked for int8 is quantized first."""
    from mobilenetv2.runtime.onnx_meta import onnx_metadata, onnx_precision, onnx_weights_meta

    if precision != "int8" or calib is None or not path.is_file():
        return InferenceSession(path, backend, precision, threads)
    props = onnx_metadata(path)
    if onnx_precision(path, props) == "int8":
        return InferenceSession(path, backend, precision, threads)
    from mobilenetv2.data.preprocessing import Preprocessing

    meta = onnx_weights_meta(props)
    tmp = tempfile.TemporaryDirectory(prefix="mobilenetv2-")
    try:
        pre = meta.preprocessing if meta is not None else Preprocessing()
        int8 = _quantize(path, Path(tmp.name), calib, pre)
        return InferenceSession(int8, backend, precision, threads, cleanup=tmp.cleanup)
    except BaseException:
        tmp.cleanup()
        raise


def _quantize(float_path: Path, work: Path, calib: Any, preprocessing: Any) -> Path:
    from mobilenetv2.quant.ptq import calibration_arrays, quantize_onnx

    data = calibration_arrays(calib, preprocessing)
    return quantize_onnx(float_path, work / "model.int8.onnx", data)


@dataclass
class DeployRow:
    """One precision's artifact and measurements."""

    precision: str
    path: Path
    backend: str
    top1: float
    latency_ms: float
    verified: str


def deploy_demo(
    weights: str,
    out_dir: str | os.PathLike,
    *,
    data: str = "digits",
    calib_images: int = 256,
    rounds: int = 10,
    runs: int = 20,
    threads: int | None = None,
) -> list[DeployRow]:
    """Export + quantize `weights` into `out_dir` and measure fp32 and int8 side by side.

    Args:
        weights: A `--weights` spec (e.g. `runs/demo/model.safetensors`).
        out_dir: Where `model.fp32.onnx` and `model.int8.onnx` go.
        data: "digits" or a labelled image folder: calibration (train split) and accuracy
            (test split).
        rounds: Interleaved latency rounds; `runs` batch-1 runs per precision and round.
    """
    from mobilenetv2.benchmark.timing import time_interleaved
    from mobilenetv2.quant.ptq import labelled_arrays, quantize_ptq
    from mobilenetv2.weights import load_weights

    model = load_weights(weights)
    out = Path(out_dir) / "model"
    result = quantize_ptq(model, out, data, calib_images=calib_images, eval_data=data)
    x, y = labelled_arrays(data, model.meta.preprocessing, split="test",
                           labels=model.meta.labels)
    sessions = {
        "fp32": InferenceSession(result.float_path, precision="fp32", threads=threads),
        "int8": InferenceSession(result.int8_path, precision="int8", threads=threads),
    }
    top1 = {}
    for p, sess in sessions.items():
        pred = np.concatenate([sess(x[i:i + 64]) for i in range(0, len(x), 64)]).argmax(1)
        top1[p] = float((pred == y).mean() * 100) if y is not None else float("nan")
    timings = time_interleaved(sessions, x[:1], rounds=rounds, runs=runs)
    rows = []
    for p, sess in sessions.items():
        verified = ("ONNX Runtime vs PyTorch within 1e-4" if p == "fp32" else
                    f"top-1 agrees with fp32 on {result.agreement:.1f}% of test images")
        latency = statistics.median(statistics.median(t) for t in timings[p].batch1)
        rows.append(DeployRow(p, Path(sess.onnx_path), sess.backend, top1[p], latency * 1e3,
                              verified))
    for sess in sessions.values():
        sess.close()
    return rows


def format_rows(rows: list[DeployRow]) -> str:
    """Side-by-side table of the deploy rows."""
    lines = [f"{'precision':<10}{'backend':<13}{'top-1 %':>9}{'batch-1 ms':>12}  "
             f"{'file':<28}verified"]
    for r in rows:
        lines.append(f"{r.precision:<10}{r.backend:<13}{r.top1:>9.2f}{r.latency_ms:>12.3f}  "
                     f"{r.path.name:<28}{r.verified}")
    if len(rows) == 2:
        a, b = rows
        speed = a.latency_ms / b.latency_ms
        # A 32x32 model is so small that int8's (de)quantization overhead can outweigh its
        # faster arithmetic: say which way it went instead of printing "0.9x faster".
        verdict = (f"{speed:.2f}x faster" if speed >= 1 else f"{1 / speed:.2f}x slower")
        lines.append(f"int8 vs fp32: {b.top1 - a.top1:+.2f} top-1 points, "
                     f"{verdict} at batch 1")
    return "\n".join(lines)
