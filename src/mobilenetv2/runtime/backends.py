"""The inference backends, and the only place that creates their sessions.

One table, `BACKENDS`: a backend's name, the package it imports (which is also its pip
name), the precisions it runs, whether it runs a PyTorch module or an ONNX file, and the
factory that turns that source into a `Runner` (a float32 NCHW array in, float32 logits
out). A new backend is one entry here. `AUTO_ORDER` is the order `backend="auto"` tries
them in per precision (fp32: the native engine where built, then ONNX Runtime, OpenVINO,
PyTorch; bf16: OpenVINO first; int8: the native int8 engine where built, then OpenVINO,
ONNX Runtime; docs/BENCHMARKS.md).

Precision is what it says. OpenVINO silently runs "fp32" models in bf16 on CPUs with bf16
units unless `INFERENCE_PRECISION_HINT` is `f32`, so the hint is always set (f32 for int8
too: otherwise the non-quantized ops of an int8 model run in bf16), and the compiled
model's reported precision is checked against the request. ONNX Runtime has no bf16 CPU
kernels and PyTorch no portable int8 path: `BACKENDS[name].precisions` says so, and the
session raises one clear error for a combination that is not there.

`onnxruntime_session` and `openvino_compile` are the two creators everything else uses too:
export verification, int8 accuracy measurement and the benchmark's "direct" peers (which
pass `plain=True`: the runtime's own defaults apart from threads and the precision hint).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from mobilenetv2._optional import require
from mobilenetv2.errors import UserError

__all__ = [
    "AUTO_ORDER",
    "BACKENDS",
    "PRECISIONS",
    "Backend",
    "Runner",
    "available_backends",
    "backend_installed",
    "helper_threads",
    "onnx_runner",
    "onnxruntime_session",
    "openvino_compile",
    "openvino_config",
    "precision_unavailable",
    "source_kind",
]

Runner = Callable[[np.ndarray], np.ndarray]

PRECISIONS = ("fp32", "bf16", "int8")
# OpenVINO compiles one static-shape model per input shape (its CPU plugin runs static shapes
# faster than a dynamic batch); this many are kept before the cache starts over.
OPENVINO_SHAPES_KEPT = 8


@dataclass(frozen=True)
class Backend:
    """One inference backend.

    Attributes:
        name: What `--backend` takes.
        package: The module imported to run it, also the name to `pip install`.
        precisions: Numeric precisions it runs correctly.
        runs: "module" (a PyTorch `nn.Module`), "onnx" (an ONNX file), "tflite" or "pte"
            (the phone formats, `runtime.phone`).
        build: `build(source, precision, threads) -> Runner`, `source` a module or a path.
        unavailable: For a backend that ships with this package: `() -> reason` it cannot run
            here ("" when it can); None: installed means its package imports.
        accepts: For a "module" backend that runs only some networks: `(module) -> bool`
            (`auto` skips it for the others; asked explicitly, it says why in one line).
        runs_for: Precisions for which it runs another kind of source than `runs` (the
            native engine: a module in fp32, our QDQ `.int8.onnx` file in int8).
        unavailable_for: `(precision) -> reason` it cannot run that precision here ("" when
            it can), for a backend whose precisions have their own kernels.
    """

    name: str
    package: str
    precisions: tuple[str, ...]
    runs: str
    build: Callable[[Any, str, int | None], Runner]
    unavailable: Callable[[], str] | None = None
    accepts: Callable[[Any], bool] | None = None
    runs_for: tuple[tuple[str, str], ...] = ()
    unavailable_for: Callable[[str], str] | None = None


def source_kind(name: str, precision: str) -> str:
    """What backend `name` runs in `precision`: "module", "onnx", "tflite" or "pte"."""
    spec = BACKENDS[name]
    return dict(spec.runs_for).get(precision, spec.runs)


def precision_unavailable(name: str, precision: str) -> str:
    """Why an installed backend cannot run `precision` here ("" when it can)."""
    spec = BACKENDS[name]
    return spec.unavailable_for(precision) if spec.unavailable_for is not None else ""


def backend_installed(name: str) -> bool:
    """True when the backend can run here: its package imports (and it is ready)."""
    spec = BACKENDS[name]
    if spec.unavailable is not None:
        return not spec.unavailable()
    try:
        importlib.import_module(BACKENDS[name].package)
    except ImportError:
        return False
    return True


def available_backends() -> list[str]:
    return [b for b in BACKENDS if backend_installed(b)]


# ----------------------------------------------------------------------- ONNX Runtime
def onnxruntime_session(
    path: str | os.PathLike, threads: int | None = None, *, plain: bool = False,
    purpose: str = "running an ONNX model",
) -> Any:
    """An `onnxruntime.InferenceSession` on the CPU provider.

    Args:
        threads: Intra-op threads (default: ONNX Runtime's, all usable cores).
        plain: Only `threads` set (the benchmark's direct peer); else also all graph
            optimizations and one inter-op thread, stated rather than left to defaults.
        purpose: What needs ONNX Runtime, for the error when it is not installed.
    """
    ort = require("onnxruntime", purpose)
    ort.set_default_logger_severity(3)
    opts = ort.SessionOptions()
    if not plain:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        opts.intra_op_num_threads = threads
        if not plain:
            opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _onnxruntime_runner(path: str | os.PathLike, precision: str, threads: int | None,
                        purpose: str = "running an ONNX model") -> Runner:
    sess = onnxruntime_session(path, threads, purpose=purpose)
    name = sess.get_inputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        return sess.run(None, {name: x})[0]

    return run


# ----------------------------------------------------------------------- OpenVINO
def openvino_config(precision: str, threads: int | None = None, *,
                    latency: bool = True) -> dict[str, Any]:
    """OpenVINO CPU compile options: the precision hint always set (module docstring)."""
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16"
                              else "f32"}
    if latency:
        config["PERFORMANCE_HINT"] = "LATENCY"
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = threads
    return config


def openvino_compile(
    model: str | os.PathLike | Any, precision: str = "fp32", threads: int | None = None, *,
    plain: bool = False, core: Any = None, shape: tuple[int, ...] | None = None,
    hint: str | None = None,
) -> Any:
    """An OpenVINO `CompiledModel` on the CPU, in the precision asked for.

    Args:
        model: An ONNX file or an `ov.Model` (not modified).
        plain: Precision hint and threads only (the export check); else also the latency
            performance hint.
        shape: Compile for this static input shape (OpenVINO's CPU plugin runs a static
            shape faster than a dynamic batch).
        hint: `PERFORMANCE_HINT` to set ("LATENCY", "THROUGHPUT"), over `plain`'s choice.
    """
    ov = require("openvino", "running on OpenVINO")
    core = core or ov.Core()
    source = str(model) if isinstance(model, (str, os.PathLike)) else model
    if shape is not None:
        source = core.read_model(source) if isinstance(source, str) else source.clone()
        source.reshape({source.inputs[0].any_name: ov.PartialShape(list(shape))})
    config = openvino_config(precision, threads, latency=not plain)
    if hint is not None:
        config["PERFORMANCE_HINT"] = hint
    return core.compile_model(source, "CPU", config)


def _openvino_runner(path: str | os.PathLike, precision: str, threads: int | None) -> Runner:
    import openvino as ov

    core = ov.Core()
    if precision == "bf16" and "BF16" not in core.get_property(
            "CPU", "OPTIMIZATION_CAPABILITIES"):
        raise UserError("this CPU has no bf16 support in OpenVINO; use --precision fp32")
    model = core.read_model(str(path))
    want = ("bf16", "bfloat16") if precision == "bf16" else ("f32", "float32")
    compiled: dict[tuple[int, ...], Any] = {}

    def request_for(shape: tuple[int, ...]) -> Any:
        if shape not in compiled:
            if len(compiled) >= OPENVINO_SHAPES_KEPT:
                compiled.clear()
            cm = openvino_compile(model, precision, threads, core=core, shape=shape)
            got = str(cm.get_property("INFERENCE_PRECISION_HINT")).lower()
            if not any(w in got for w in want):
                raise RuntimeError(f"OpenVINO compiled {got}, not {want[0]}")
            compiled[shape] = cm.create_infer_request()
        return compiled[shape]

    def run(x: np.ndarray) -> np.ndarray:
        return request_for(tuple(x.shape)).infer({0: x})[0].copy()

    return run


# ----------------------------------------------------------------------- PyTorch
def _torch_runner(module: nn.Module, precision: str, threads: int | None) -> Runner:
    """BN folded, channels_last (oneDNN's fastest layout), fp32 or bf16 weights."""
    from mobilenetv2.model.fuse import fuse

    if threads is not None:
        torch.set_num_threads(threads)  # process-wide: torch has no per-model pool
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    net = fuse(module).to(dtype)

    def run(x: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(x).to(dtype).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            return net(t).float().numpy()

    return run


# ----------------------------------------------------------------------- native
def _native_unavailable() -> str:
    from mobilenetv2.runtime import native

    if not native.AVAILABLE:
        return native.UNAVAILABLE
    return "" if native.cpu_isas() else "the native backend has no kernels for this CPU"


def _native_accepts(module: Any) -> bool:
    from mobilenetv2.model.classifier import MobileNetV2

    return isinstance(module, MobileNetV2) and not module.arch.blocks[0].has_expand


def _native_int8_unavailable(precision: str) -> str:
    if precision != "int8":
        return ""
    from mobilenetv2.runtime.native.int8 import int8_isas

    return "" if int8_isas() else ("the native backend has no int8 kernels for this CPU "
                                   "(they need AVX2)")


def _native_runner(source: Any, precision: str, threads: int | None) -> Runner:
    """fp32: the fused inverted-residual engine (`runtime.native`) on the module, BN folded;
    int8: the int8 engine (`runtime.native.int8`) on our QDQ `.int8.onnx` file."""
    if precision == "int8":
        from mobilenetv2.runtime.native.int8 import NativeInt8Engine

        return NativeInt8Engine(source, threads=threads)
    from mobilenetv2.runtime.native import NativeEngine

    return NativeEngine(source, threads=threads)


def _phone_runner(kind: str) -> Callable[[Any, str, int | None], Runner]:
    """LiteRT or ExecuTorch on XNNPACK (`runtime.phone`, imported when first used)."""

    def build(path: Any, precision: str, threads: int | None) -> Runner:
        from mobilenetv2.runtime import phone

        return getattr(phone, f"{kind}_runner")(path, precision, threads)

    return build


BACKENDS: dict[str, Backend] = {b.name: b for b in (
    Backend("native", "mobilenetv2", ("fp32", "int8"), "module", _native_runner,
            unavailable=_native_unavailable, accepts=_native_accepts,
            runs_for=(("int8", "onnx"),), unavailable_for=_native_int8_unavailable),
    Backend("torch", "torch", ("fp32", "bf16"), "module", _torch_runner),
    Backend("onnxruntime", "onnxruntime", ("fp32", "int8"), "onnx", _onnxruntime_runner),
    Backend("openvino", "openvino", ("fp32", "bf16", "int8"), "onnx", _openvino_runner),
    # the phone runtimes, on this CPU: never started by `auto` for weights alone (they need
    # an export first); `auto` on a .tflite / .pte file runs it in its own runtime, and
    # weights with such a file beside them (`phone_file`) race it too (session.py)
    Backend("litert", "ai_edge_litert", ("fp32", "int8"), "tflite", _phone_runner("litert")),
    Backend("executorch", "executorch", ("fp32", "int8"), "pte",
            _phone_runner("executorch")),
)}
AUTO_ORDER = {
    "fp32": ("native", "onnxruntime", "openvino", "torch"),
    "bf16": ("openvino", "torch"),
    # the native int8 engine races OpenVINO and ONNX Runtime where built (an int8 file it
    # cannot run drops it from the race, session.py)
    "int8": ("native", "openvino", "onnxruntime"),
}


def helper_threads() -> int:
    """Threads for the library's own helper sessions (export verification, quantization's
    measurements): PyTorch's intra-op count, which the CLI's `--threads` sets, so one
    option bounds every runtime a verb starts."""
    return torch.get_num_threads()


def onnx_runner(path: str | os.PathLike, purpose: str) -> Runner:
    """A runner for an ONNX file in true fp32: ONNX Runtime, else OpenVINO (f32 hint), on
    `helper_threads()` threads."""
    if backend_installed("onnxruntime"):
        return _onnxruntime_runner(path, "fp32", helper_threads(), purpose)
    if not backend_installed("openvino"):
        require("onnxruntime", purpose)  # raises the one clear error
    compiled = openvino_compile(path, "fp32", helper_threads(), plain=True)
    return lambda x: compiled({0: x})[0]
