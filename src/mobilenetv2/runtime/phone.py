"""The phone runtimes on this machine: LiteRT (`.tflite`) and ExecuTorch (`.pte`), both on
their XNNPACK CPU backends, and what our phone files say about themselves.

A runner takes float32 NCHW (what every backend of `runtime.backends` takes) and returns
float32 logits: NCHW -> NHWC for LiteRT, int8 input quantized with the file's own input
parameters and the int8 output dequantized with its output parameters (an app does the
same). A file with several outputs (a detector's box codes and class logits) gives a
tuple of them, in the file's order. ExecuTorch programs are lowered at batch 1 (a phone
classifies one camera frame at a time), so a batch runs image by image.

`phone_metadata(path)` is the JSON document our exports write: the `mobilenetv2` metadata
entry of a `.tflite` file, the `mobilenetv2_metadata` constant method of a `.pte` program.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mobilenetv2._optional import require
from mobilenetv2.errors import UserError

__all__ = ["PHONE_SUFFIXES", "executorch_runner", "litert_interpreter", "litert_runner",
           "phone_metadata", "phone_precision", "phone_weights_meta"]

Runner = Callable[[np.ndarray], np.ndarray]

# file suffix -> what BACKENDS[...].runs says
PHONE_SUFFIXES = {".tflite": "tflite", ".pte": "pte"}
TFLITE_METADATA = "mobilenetv2"
PTE_METADATA = "mobilenetv2_metadata"


def litert_interpreter(path: str | os.PathLike, threads: int | None = None) -> Any:
    """The LiteRT interpreter with its default delegates (XNNPACK on CPU)."""
    require("ai_edge_litert", "running a .tflite model")
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(model_path=str(path), num_threads=threads)


def litert_runner(path: str | os.PathLike, precision: str, threads: int | None) -> Runner:
    interp = litert_interpreter(path, threads)
    inp = interp.get_input_details()[0]
    outs = interp.get_output_details()
    in_scale, in_zp = inp["quantization"]
    in_dtype = inp["dtype"]
    current: list[tuple[int, ...]] = [tuple(inp["shape"])]
    interp.allocate_tensors()

    def run(x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        if x.shape != current[0]:
            interp.resize_tensor_input(inp["index"], list(x.shape))
            interp.allocate_tensors()
            current[0] = x.shape
        if np.issubdtype(in_dtype, np.integer):
            info = np.iinfo(in_dtype)
            x = np.clip(np.round(x / in_scale) + in_zp, info.min, info.max).astype(in_dtype)
        interp.set_tensor(inp["index"], x)
        interp.invoke()
        ys = [_litert_output(interp, out) for out in outs]
        return ys[0] if len(ys) == 1 else tuple(ys)

    return run


def _litert_output(interp: Any, out: dict[str, Any]) -> np.ndarray:
    y = interp.get_tensor(out["index"])
    if np.issubdtype(y.dtype, np.integer):
        scale, zp = out["quantization"]
        y = (y.astype(np.float32) - zp) * np.float32(scale)
    if y.ndim == 4:  # a dense head's map (segmentation): back to PyTorch's NCHW
        y = y.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(y, dtype=np.float32)


def executorch_runner(path: str | os.PathLike, precision: str, threads: int | None) -> Runner:
    require("executorch", "running a .pte program")
    import torch
    from executorch.runtime import Runtime

    if threads is not None:
        # XNNPACK's thread pool is process-wide in ExecuTorch's Python runtime
        from executorch.extension.pybindings import portable_lib

        portable_lib._unsafe_reset_threadpool(threads)
    program = Runtime.get().load_program(Path(path))
    method = program.load_method("forward")

    def run(x: np.ndarray) -> np.ndarray:
        per_image = []
        for i in range(len(x)):
            t = torch.from_numpy(np.ascontiguousarray(x[i:i + 1]))
            per_image.append([o.float().numpy() for o in method.execute([t])])
        ys = [np.concatenate(o) for o in zip(*per_image)]
        return ys[0] if len(ys) == 1 else tuple(ys)

    return run


def phone_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Our JSON document in a `.tflite` or `.pte` file; empty for foreign files."""
    p = Path(path)
    kind = PHONE_SUFFIXES.get(p.suffix.lower())
    try:
        if kind == "tflite":
            raw = _tflite_entry(p.read_bytes(), TFLITE_METADATA)
        elif kind == "pte":
            raw = _pte_entry(p)
        else:
            raise UserError(f"{p}: not a .tflite or .pte file")
        return json.loads(raw) if raw else {}
    except UserError:
        raise
    except Exception as e:  # corrupt files raise assorted errors in both readers
        raise UserError(f"{p}: unreadable {kind} file ({type(e).__name__}: {e})") from e


def _tflite_entry(data: bytes, name: str) -> bytes | None:
    require("tflite", "reading .tflite metadata")
    import tflite

    if len(data) < 8 or data[4:8] != b"TFL3":
        raise UserError("not a TensorFlow Lite model (no 'TFL3' file identifier)")
    model = tflite.Model.GetRootAs(data, 0)
    for i in range(model.MetadataLength()):
        m = model.Metadata(i)
        if (m.Name() or b"").decode() == name:
            return model.Buffers(m.Buffer()).DataAsNumpy().tobytes()
    return None


def _pte_entry(path: Path) -> bytes | None:
    require("executorch", "reading .pte metadata")
    from executorch.runtime import Runtime

    program = Runtime.get().load_program(path)
    if PTE_METADATA not in program.method_names:
        return None
    return bytes(program.load_method(PTE_METADATA).execute([])[0].tolist())


def phone_precision(doc: dict[str, Any], path: str | os.PathLike) -> str:
    """The precision our metadata records; a foreign file's from its input tensor."""
    if doc.get("precision"):
        return str(doc["precision"])
    if Path(path).suffix.lower() == ".tflite":
        interp = litert_interpreter(path)
        return "int8" if np.issubdtype(interp.get_input_details()[0]["dtype"],
                                       np.integer) else "fp32"
    return "fp32"


def phone_weights_meta(doc: dict[str, Any]) -> Any:
    """The `WeightsMeta` recorded in our document (None for foreign files)."""
    from mobilenetv2.weights.format import WeightsMeta

    if "config" not in doc:
        return None
    flat = {k: v if isinstance(v, str) else json.dumps(v) for k, v in doc.items()}
    try:
        return WeightsMeta.from_metadata(flat)
    except UserError:
        return None
