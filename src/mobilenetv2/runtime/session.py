"""`InferenceSession`: one call, the fastest correct CPU backend for a model and a precision.

Backends: `torch` (BN folded, channels_last, oneDNN; fp32 and bf16), `onnxruntime` (fp32 and
int8 QDQ) and `openvino` (fp32, bf16 and int8 QDQ). `backend="auto"` takes the first
installed backend of `AUTO_ORDER[precision]` (fp32: ONNX Runtime, OpenVINO, PyTorch; bf16
and int8: OpenVINO first), then times each new input shape once on it and the next installed
backend and keeps the faster: on this project's CPU (AVX-512 VNNI/BF16, docs/BENCHMARKS.md)
the fp32 winner between ONNX Runtime and OpenVINO changed from run to run.

Precision is what it says. OpenVINO silently runs "fp32" models in bf16 on CPUs with bf16
units unless `INFERENCE_PRECISION_HINT` is `f32`, so the hint is always set, and the
compiled model's reported precision is checked against the request. A backend that cannot
run a precision (ONNX Runtime has no bf16 CPU kernels, PyTorch no portable int8 path)
raises one clear error instead of silently running something else.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mobilenetv2.errors import UserError

__all__ = [
    "AUTO_ORDER",
    "BACKENDS",
    "PRECISIONS",
    "InferenceSession",
    "available_backends",
    "backend_installed",
    "cpu_has_bf16",
]

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnxruntime", "openvino")
PRECISIONS = ("fp32", "bf16", "int8")
SUPPORTED = {
    "torch": ("fp32", "bf16"),
    "onnxruntime": ("fp32", "int8"),
    "openvino": ("fp32", "bf16", "int8"),
}
AUTO_ORDER = {
    "fp32": ("onnxruntime", "openvino", "torch"),
    "bf16": ("openvino", "torch"),
    "int8": ("openvino", "onnxruntime"),
}
# Every new input shape, batch 1 included, is timed once on the two leading backends: which
# of ONNX Runtime and OpenVINO wins fp32 changed between runs on the same CPU (batch 1:
# ONNX Runtime 2.9 vs OpenVINO 3.6 ms in one run, 3.0 vs 2.2 ms in another; docs/BENCHMARKS.md).
TUNE_MIN_BATCH = 1
_MODULE = {"torch": "torch", "onnxruntime": "onnxruntime", "openvino": "openvino"}


def backend_installed(name: str) -> bool:
    """True when the backend's package imports."""
    import importlib

    try:
        importlib.import_module(_MODULE[name])
    except ImportError:
        return False
    return True


def available_backends() -> list[str]:
    return [b for b in BACKENDS if backend_installed(b)]


def cpu_has_bf16() -> bool:
    """Native bf16 arithmetic (AVX-512 BF16 or AMX); without it bf16 is emulated and slow."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


class InferenceSession:
    """Logits for preprocessed image batches on the fastest correct backend.

    `InferenceSession("model.safetensors")`, `InferenceSession(model, precision="bf16")`,
    `InferenceSession("model.int8.onnx")`; then `session(batch)` with a float32 NCHW array
    or tensor gives float32 logits as a NumPy array.

    Args:
        model: An `nn.Module` (MobileNetV2), a `--weights` spec (resolved by
            `mobilenetv2.weights.load_weights`) or a `.onnx` file (ours carry their
            preprocessing, labels and precision in `metadata_props`).
        backend: "auto", "torch", "onnxruntime" or "openvino".
        precision: "fp32", "bf16" or "int8". An int8 `.onnx` file implies int8; int8 from a
            float model needs `calib` (images to calibrate on, see `quant.quantize_ptq`).
        threads: Intra-op threads (default: the backend's, i.e. all usable cores). The
            torch backend applies it process-wide (`torch.set_num_threads`).
        calib: Calibration source for int8 from a float model ("digits", a folder, an
            array).
        input_size: Example input side for exports (default: the weights' crop).
    """

    def __init__(
        self,
        model: nn.Module | str | os.PathLike,
        backend: str = "auto",
        precision: str = "fp32",
        threads: int | None = None,
        calib: Any = None,
        input_size: int | None = None,
    ) -> None:
        _check_choice("backend", backend, ("auto",) + BACKENDS)
        _check_choice("precision", precision, PRECISIONS)
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be an integer >= 1, got {threads!r}")
        self.threads = threads
        self._tmp: tempfile.TemporaryDirectory | None = None
        self.module: nn.Module | None = None
        self.onnx_path: Path | None = None
        self.meta: Any = None
        self.metadata: dict[str, str] = {}
        if isinstance(model, nn.Module):
            self.module = model.eval()
            self.meta = getattr(model, "meta", None)
        elif str(model).lower().endswith(".onnx"):
            from mobilenetv2.export.onnx import onnx_metadata

            self.onnx_path = Path(model)
            if not self.onnx_path.is_file():
                raise FileNotFoundError(2, "No such file", str(self.onnx_path))
            self.metadata = onnx_metadata(self.onnx_path)
            self.meta = _meta_from_props(self.metadata)
            file_precision = self.metadata.get("precision") or (
                "int8" if _has_qdq(self.onnx_path) else "fp32")
            if file_precision == "int8" and precision == "fp32":
                precision = "int8"  # the file decides; never report int8 as fp32
            elif file_precision == "int8" and precision != "int8":
                raise UserError(f"{model} is an int8 model; precision {precision} "
                                f"cannot run it (use --precision int8)")
        else:
            from mobilenetv2.weights import load_weights

            self.module = load_weights(str(model)).eval()
            self.meta = getattr(self.module, "meta", None)
        self.precision = precision
        self.input_size = input_size or (self.meta.preprocessing.crop if self.meta else None)
        self.backend = self._pick(backend)
        self._calib = calib
        self._run = getattr(self, f"_build_{self.backend}")()
        # auto: another installed backend may be faster for some shapes (see
        # TUNE_MIN_BATCH), so each new input shape is timed once on both.
        others = [b for b in AUTO_ORDER[self.precision] if b != self.backend
                  and backend_installed(b) and (b != "torch" or self.module is not None)]
        self._alternates = others[:1] if backend == "auto" else []
        self._runners: dict[str, Any] = {self.backend: self._run}
        self.chosen: dict[tuple[int, ...], str] = {}
        log.debug("InferenceSession: %s", self.describe())

    # ----------------------------------------------------------------- selection
    def _pick(self, backend: str) -> str:
        candidates = AUTO_ORDER[self.precision] if backend == "auto" else (backend,)
        if self.onnx_path is not None:
            candidates = tuple(b for b in candidates if b != "torch")
            if not candidates:
                raise UserError("the torch backend runs our .safetensors weights, not .onnx "
                                "files; use --backend onnxruntime or openvino")
        if backend != "auto":
            if self.precision not in SUPPORTED[backend]:
                hint = ", ".join(b for b in BACKENDS if self.precision in SUPPORTED[b])
                raise UserError(f"backend {backend} cannot run {self.precision} "
                                f"(backends for {self.precision}: {hint})")
            if not backend_installed(backend):
                raise UserError(f"backend {backend} is not installed (pip install "
                                f"{_MODULE[backend]}); installed: "
                                f"{', '.join(available_backends())}")
            return backend
        for name in candidates:
            if backend_installed(name):
                return name
        raise UserError(f"no installed backend runs {self.precision} (tried "
                        f"{', '.join(candidates)}; pip install {_MODULE[candidates[0]]})")

    def describe(self) -> str:
        threads = self.threads if self.threads is not None else "default"
        tuned = "".join(f"; batch {s[0]}: {b}" for s, b in self.chosen.items()
                        if b != self.backend)
        return f"{self.backend} {self.precision} (threads: {threads}{tuned})"

    # ----------------------------------------------------------------- artifacts
    def _workdir(self) -> Path:
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="mobilenetv2-")
        return Path(self._tmp.name)

    def _onnx(self) -> Path:
        """The ONNX file this session runs: given, or exported (and verified) once."""
        if getattr(self, "_artifact", None) is not None:
            return self._artifact
        self._artifact = self._make_onnx()
        return self._artifact

    def _make_onnx(self) -> Path:
        if self.onnx_path is not None and not (
                self.precision == "int8" and self.metadata.get("precision") != "int8"):
            return self.onnx_path
        from mobilenetv2.export.onnx import export_onnx

        work = self._workdir()
        if self.onnx_path is None:
            float_path = work / "model.fp32.onnx"
            export_onnx(self.module, float_path, input_size=self.input_size)
        else:
            float_path = self.onnx_path
        if self.precision != "int8":
            self.onnx_path = float_path
            return float_path
        if self._calib is None:
            raise UserError("int8 needs a quantized model: pass a .int8.onnx from "
                            "`mobilenetv2 quantize`, or calibration images (calib=...)")
        from mobilenetv2.data.preprocessing import Preprocessing
        from mobilenetv2.quant.ptq import calibration_arrays, quantize_onnx

        pre = self.meta.preprocessing if self.meta else Preprocessing()
        data = calibration_arrays(self._calib, pre)
        self.onnx_path = quantize_onnx(float_path, work / "model.int8.onnx", data)
        return self.onnx_path

    # ----------------------------------------------------------------- backends
    def _build_torch(self):
        from mobilenetv2.model.fuse import fuse

        if self.threads is not None:
            torch.set_num_threads(self.threads)
        net = fuse(self.module)
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        net = net.to(dtype)

        def run(x: np.ndarray) -> np.ndarray:
            t = torch.from_numpy(x).to(dtype).contiguous(memory_format=torch.channels_last)
            with torch.inference_mode():
                return net(t).float().numpy()

        self.torch_module = net
        return run

    def _build_onnxruntime(self):
        import onnxruntime as ort

        ort.set_default_logger_severity(3)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.threads is not None:
            opts.intra_op_num_threads = self.threads
            opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(str(self._onnx()), opts, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name

        def run(x: np.ndarray) -> np.ndarray:
            return sess.run(None, {name: x})[0]

        return run

    def _build_openvino(self):
        import openvino as ov

        core = ov.Core()
        if self.precision == "bf16" and "BF16" not in core.get_property(
                "CPU", "OPTIMIZATION_CAPABILITIES"):
            raise UserError("this CPU has no bf16 support in OpenVINO; use --precision fp32")
        # f32 for fp32 *and* int8: otherwise the non-quantized ops of an int8 model run bf16.
        config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": "bf16" if self.precision == "bf16" else "f32",
            "PERFORMANCE_HINT": "LATENCY",
        }
        if self.threads is not None:
            config["INFERENCE_NUM_THREADS"] = self.threads
        model = core.read_model(str(self._onnx()))
        compiled: dict[tuple[int, ...], Any] = {}

        def compile_for(shape: tuple[int, ...]):
            # One static-shape compilation per input shape: OpenVINO's CPU plugin runs
            # static shapes faster than a dynamic batch.
            if shape not in compiled:
                if len(compiled) >= 8:
                    compiled.clear()
                m = model.clone()
                m.reshape({m.inputs[0].any_name: ov.PartialShape(list(shape))})
                cm = core.compile_model(m, "CPU", config)
                got = str(cm.get_property("INFERENCE_PRECISION_HINT")).lower()
                want = ("bf16", "bfloat16") if self.precision == "bf16" else ("f32", "float32")
                if not any(w in got for w in want):
                    raise RuntimeError(f"OpenVINO compiled {got}, not {want[0]}")
                compiled[shape] = cm.create_infer_request()
            return compiled[shape]

        def run(x: np.ndarray) -> np.ndarray:
            req = compile_for(tuple(x.shape))
            return req.infer({0: x})[0].copy()

        return run

    # ----------------------------------------------------------------- use
    def __call__(self, batch: np.ndarray | torch.Tensor) -> np.ndarray:
        """Logits (N, classes) for a preprocessed float32 batch (N, 3, H, W)."""
        if isinstance(batch, torch.Tensor):
            batch = batch.detach().cpu().float().numpy()
        x = np.ascontiguousarray(batch, dtype=np.float32)
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected a batch of shape (N, 3, H, W), got {x.shape}")
        if self._alternates and len(x) >= TUNE_MIN_BATCH:
            return self._runners[self._choose(x)](x)
        return self._run(x)

    def _choose(self, x: np.ndarray) -> str:
        """The faster backend for this input shape, timed once (interleaved, best of 3)."""
        import time

        shape = tuple(x.shape)
        if shape not in self.chosen:
            for name in self._alternates:
                if name not in self._runners:
                    self._runners[name] = getattr(self, f"_build_{name}")()
            best: dict[str, float] = {}
            for run in self._runners.values():  # warm-up (OpenVINO compiles here)
                run(x)
            for _ in range(3):
                for name, run in self._runners.items():
                    t0 = time.perf_counter()
                    run(x)
                    best[name] = min(best.get(name, float("inf")), time.perf_counter() - t0)
            self.chosen[shape] = min(best, key=best.get)
            log.debug("batch shape %s: %s (%s)", shape, self.chosen[shape], best)
            # a losing runtime is dropped (it is rebuilt if another shape is tuned): its
            # idle thread pool would otherwise compete with the winner's on a small CPU
            used = {self.backend, *self.chosen.values()}
            for name in [n for n in self._runners if n not in used]:
                del self._runners[name]
        return self.chosen[shape]

    def as_module(self, model: nn.Module | None = None) -> nn.Module:
        """This session as an `nn.Module` (CPU tensors in, logits out) for code written
        against PyTorch modules, such as `mobilenetv2.evaluate`; `meta` and `num_classes`
        come from `model` (default: the session's own module)."""
        return _SessionModule(self, model if model is not None else self.module)

    @property
    def labels(self) -> list[str] | None:
        return self.meta.labels if self.meta is not None else None

    def transform(self):
        """The eval transform (PIL image -> tensor) of the weights' preprocessing."""
        from mobilenetv2.data.preprocessing import Preprocessing
        from mobilenetv2.data.transforms import eval_transform

        return eval_transform(self.meta.preprocessing if self.meta else Preprocessing())

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> InferenceSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _SessionModule(nn.Module):
    def __init__(self, session: InferenceSession, model: nn.Module | None) -> None:
        super().__init__()
        self.session = session
        self.meta = getattr(model, "meta", None) or session.meta
        if model is not None and hasattr(model, "num_classes"):
            self.num_classes = model.num_classes
        elif self.meta is not None:
            self.num_classes = self.meta.config.num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session(x.detach().cpu().float().contiguous().numpy()))


def _meta_from_props(props: dict[str, str]) -> Any:
    from mobilenetv2.weights.format import WeightsMeta

    if "config" not in props:
        return None
    try:
        return WeightsMeta.from_metadata(props)
    except UserError:
        return None


def _has_qdq(path: Path) -> bool:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return any(n.op_type == "QuantizeLinear" for n in proto.graph.node)
