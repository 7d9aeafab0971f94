"""The native int8 engine (issue 13): our QDQ int8 ONNX model in one C++ call.

The model is the file `mobilenetv2 quantize` writes (`quant.ptq`: ONNX Runtime's QDQ format,
per-channel symmetric int8 weights, uint8 activations with calibrated scale / zero point).
`native.int8_qdq` reads every scale, zero point and integer weight from its QuantizeLinear /
DequantizeLinear nodes, checks that the graph is one the engine runs (stem, depthwise and 1x1
convolutions, residual adds, global average pool, flatten, classifier; anything else is a
one-line error), and packs the weights for the kernels (`_int8.inc`, `_kernels_int8.inc`).
The C++ side computes what ONNX Runtime computes for the same file: int32 accumulation,
per-channel float multipliers `s_x * s_w / s_y`, rounding half to even, saturation, so its
logits equal ONNX Runtime's up to rare one-step ties.

Kernels: AVX2 (u8 x s8 with VPMADDUBSW, exact for the export's 7-bit weights: the reason it
writes `reduce_range` ones), or VPDPBUSD where the CPU has AVX512-VNNI or AVX-VNNI (compiled,
chosen at run time; untested on the AVX2-only CPU this was written on).

    engine = NativeInt8Engine("model.int8.onnx", threads=2)
    logits = engine(x)            # x: float32 (N, 3, H, W), preprocessed as for fp32
    engine.memory_bytes           # working memory of the last call
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from mobilenetv2.errors import UserError
from mobilenetv2.runtime.native import UNAVAILABLE, _engine, checked_batch, default_threads
from mobilenetv2.runtime.native.int8_qdq import int8_ops, int8_tensor_names

__all__ = ["FUSE_ROWS", "NativeInt8Engine", "int8_isas", "int8_ops", "int8_tensor_names"]

# NativeInt8Engine's default `fuse_rows` (its docstring says why)
FUSE_ROWS = 28

def int8_isas() -> list[str]:
    """int8 ISAs the engine can run on this CPU, widest first ("avx512vnni", "avxvnni",
    "avx2"); empty where it has no int8 kernels (not built, or no AVX2)."""
    if _engine is None or not hasattr(_engine, "int8_isas"):
        return []
    return list(_engine.int8_isas())


class NativeInt8Engine:
    """Our QDQ int8 ONNX classifier on the native int8 engine (module docstring).

    Args:
        path: The `.int8.onnx` file (`mobilenetv2 quantize`).
        threads: Threads the forward runs on (default: every usable core); batch 1 splits
            each layer over them, a batch of at least `threads` images gives each thread
            whole images.
        isa: "avx512vnni", "avxvnni" or "avx2" (default: the widest this CPU runs).
        keep: Keep every layer's output (no buffer reuse, nothing fused) for `tensor(i)`:
            tests only.
        fuse_rows: Run an inverted residual fused, row by row (its expanded tensor never
            whole, paper section 5.1), where its depthwise output has at least this many
            rows; the default 28 fuses blocks 0-5 at 224x224 (below that, measured on a
            2-core Zen 3, fusing cost time and saved little memory). The logits do not
            depend on it.

    Raises:
        UserError: Not built, no int8 kernels for this CPU, or a model it does not run.
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None,
                 isa: str | None = None, *, keep: bool = False,
                 fuse_rows: int = FUSE_ROWS) -> None:
        if _engine is None:
            raise UserError(UNAVAILABLE)
        isas = int8_isas()
        if not isas:
            raise UserError("the native int8 engine needs an x86-64 CPU with AVX2")
        threads = default_threads() if threads is None else threads
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise UserError(f"threads must be an integer >= 1, got {threads!r}")
        if isinstance(fuse_rows, bool) or not isinstance(fuse_rows, int) or fuse_rows < 1:
            raise UserError(f"fuse_rows must be an integer >= 1, got {fuse_rows!r}")
        isa = isa or isas[0]
        if isa not in isas:
            raise UserError(f"this CPU cannot run the native int8 engine's {isa} kernels "
                            f"(it runs: {', '.join(isas)})")
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(2, "No such file or directory", str(path))
        ops, classes, self.input_size = int8_ops(path)
        try:
            self._engine = _engine.Int8Engine(ops, threads, isa, classes, keep, fuse_rows)
        except ValueError as exc:  # e.g. 8-bit weights on a CPU without VNNI
            raise UserError(f"{path}: {exc}") from None
        self.path, self.threads, self.isa, self.num_classes = path, threads, isa, classes

    @property
    def fused_blocks(self) -> int:
        """Inverted residuals the last forward ran fused (0 before the first, or with keep)."""
        return int(self._engine.fused_blocks())

    @property
    def memory_bytes(self) -> int:
        """Working memory after the last forward: activation slots and scratch, not weights."""
        return int(self._engine.memory_bytes())

    def tensor(self, i: int) -> np.ndarray:
        """Tensor `i` (uint8 (H, W, C); the quantized input is (3, H, W)) of the last call's
        first image; needs `keep=True`."""
        data, h, w, cs = self._engine.tensor(i)
        a = np.frombuffer(data, np.uint8)
        return a.reshape(3, h, w) if i == 0 else a.reshape(h, w, cs)

    def __call__(self, x: Any) -> np.ndarray:
        """Logits (N, classes) float32 for a float32 (N, 3, H, W) batch."""
        x = checked_batch(x, "the native int8 engine")
        if self.input_size is not None and tuple(x.shape[2:]) != self.input_size:
            raise UserError(f"{self.path.name} was exported for {self.input_size[0]}x"
                            f"{self.input_size[1]} images, got {x.shape[2]}x{x.shape[3]}")
        out = np.empty((x.shape[0], self.num_classes), np.float32)
        try:
            self._engine.run(np.ascontiguousarray(x), out)
        except ValueError as exc:
            raise UserError(f"input {x.shape[2]}x{x.shape[3]}: {exc}") from None
        return out
