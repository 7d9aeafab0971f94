"""`InferenceSession`: logits for image batches on the fastest correct backend it was given.

A session runs what it is handed and makes nothing: a PyTorch model (runs on the `torch`
backend), an ONNX file (ONNX Runtime, OpenVINO), or both, a model and its ONNX export.
Making the ONNX file a backend needs (fp32 export, int8 quantization with calibration) is
`mobilenetv2.deploy.open_session`'s job, a layer above.

`backend="auto"` starts on the first installed backend of `AUTO_ORDER[precision]` that can
run the sources given, then races each new input shape once on it and on the next such
backend and keeps the faster (`race`: rotating interleaved rounds, an untimed run before
each runner's timed runs, the median round decides): on this project's CPU (AVX-512 VNNI/BF16,
docs/BENCHMARKS.md) the fp32 winner between ONNX Runtime and OpenVINO changed from run to
run, at batch 1 too (ONNX Runtime 2.9 vs OpenVINO 3.6 ms in one run, 3.0 vs 2.2 ms in
another). ExecuTorch and LiteRT join that race where installed when the session also has a
file in their format (`phone_file`). Backends, their precisions and the precision rules:
`runtime.backends`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mobilenetv2.errors import UserError
from mobilenetv2.runtime.backends import (
    AUTO_ORDER,
    BACKENDS,
    PRECISIONS,
    Runner,
    available_backends,
    backend_installed,
    precision_unavailable,
    source_kind,
)
from mobilenetv2.runtime.phone import PHONE_SUFFIXES
from mobilenetv2.runtime.race import race
from mobilenetv2.runtime.race_cache import RaceCache

__all__ = ["INT8_NEEDS_A_QUANTIZED_MODEL", "InferenceSession", "choose_backends", "race",
           "refused_backends"]

log = logging.getLogger(__name__)

INT8_NEEDS_A_QUANTIZED_MODEL = (
    "int8 needs a quantized model: pass a .int8.onnx from `mobilenetv2 quantize`, or "
    "calibration images (calib=...)")


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


def choose_backends(backend: str, precision: str, *, module: bool, onnx: bool,
                    files: frozenset[str] = frozenset(),
                    refused: frozenset[str] = frozenset()) -> list[str]:
    """The backend a session starts on, then (for "auto") the one it races it against.

    Args:
        backend: "auto" or a name of `BACKENDS`.
        precision: One of `PRECISIONS`.
        module: A PyTorch model is available (the `torch` backend can run).
        onnx: An ONNX file in this precision is available (the ONNX backends can run).
        files: Kinds of phone file available ("tflite", "pte"; `runtime.phone`): `auto`
            runs such a file in its own runtime.
        refused: Backends that cannot run this particular module (`Backend.accepts`):
            `auto` leaves them out.

    Raises:
        UserError: The backend cannot run the precision or the sources, or is not installed.
    """
    _check_choice("backend", backend, ("auto", *BACKENDS))
    _check_choice("precision", precision, PRECISIONS)
    candidates = AUTO_ORDER[precision] if backend == "auto" else (backend,)
    if backend == "auto":
        candidates = tuple(b for b in candidates if b not in refused)
    if backend == "auto" and files and not module and not onnx:
        candidates = tuple(b for b in BACKENDS if BACKENDS[b].runs in files)
    phone = backend != "auto" and BACKENDS[backend].runs not in ("module", "onnx")
    if not module:
        candidates = tuple(b for b in candidates if source_kind(b, precision) != "module")
        if not candidates:
            raise UserError("the torch backend runs our .safetensors weights, not .onnx, "
                            ".tflite or .pte files; use --backend onnxruntime, openvino, "
                            "litert or executorch")
    if backend != "auto":
        if precision not in BACKENDS[backend].precisions:
            hint = ", ".join(b for b in BACKENDS if precision in BACKENDS[b].precisions)
            raise UserError(f"backend {backend} cannot run {precision} "
                            f"(backends for {precision}: {hint})")
        spec = BACKENDS[backend]
        if spec.unavailable is not None and (why := spec.unavailable()):
            raise UserError(why)
        if not backend_installed(backend):
            raise UserError(f"backend {backend} is not installed (pip install "
                            f"{BACKENDS[backend].package}); installed: "
                            f"{', '.join(available_backends())}")
        if why := precision_unavailable(backend, precision):
            raise UserError(why)
    runnable = [b for b in candidates
                if (kind := source_kind(b, precision)) == "module"
                or (kind == "onnx" and onnx) or kind in files]
    if not runnable:
        if phone:
            kind = BACKENDS[backend].runs
            raise UserError(f"backend {backend} runs .{kind} files: pass one (`mobilenetv2 "
                            f"export --format {'tflite' if kind == 'tflite' else 'executorch'}"
                            f"`), or our weights through mobilenetv2.deploy.open_session, "
                            f"which exports them")
        if precision == "int8":
            raise UserError(INT8_NEEDS_A_QUANTIZED_MODEL)
        raise UserError(f"backend {backend} runs ONNX files: pass one (`mobilenetv2 "
                        f"export`), or open the session with mobilenetv2.deploy.open_session, "
                        f"which exports the model")
    if backend != "auto":
        return [backend]
    installed = [b for b in runnable if backend_installed(b)
                 and not precision_unavailable(b, precision)]
    if not installed:
        raise UserError(f"no installed backend runs {precision} (tried "
                        f"{', '.join(candidates)}; pip install "
                        f"{BACKENDS[candidates[0]].package})")
    # The native engine races as an extra entrant: the two best runtimes still race each
    # other (which of ONNX Runtime and OpenVINO wins changes from run to run, see above).
    racing = installed[:3] if installed[0] == "native" else installed[:2]
    return racing + _phone_entrants(precision, files, racing)


def refused_backends(module: nn.Module) -> frozenset[str]:
    """Backends that cannot run this module (`Backend.accepts`; `choose_backends(refused=)`)."""
    return frozenset(b for b, spec in BACKENDS.items()
                     if spec.accepts is not None and not spec.accepts(module))


def _phone_entrants(precision: str, files: frozenset[str], racing: list[str]) -> list[str]:
    """ExecuTorch and LiteRT join `auto`'s race where installed and a file in their format
    is at hand (a `phone_file` beside the weights): on this CPU ExecuTorch on XNNPACK ran
    MobileNetV2 fastest of all in a first try (issue 13), so it must be able to win."""
    return [b for b, spec in BACKENDS.items()
            if spec.runs in files and precision in spec.precisions and b not in racing
            and backend_installed(b)]


class InferenceSession:
    """Logits for preprocessed image batches on the fastest correct backend.

    `InferenceSession("model.safetensors")`, `InferenceSession(model, precision="bf16")`,
    `InferenceSession("model.int8.onnx")`; then `session(batch)` with a float32 NCHW array
    or tensor gives float32 logits as a NumPy array. For a model on the ONNX backends (the
    default fp32 path, int8 from float weights) use `mobilenetv2.deploy.open_session`,
    which exports and quantizes what the session then runs.

    Args:
        model: An `nn.Module` (MobileNetV2), a `--weights` spec (resolved by
            `mobilenetv2.weights.load_weights`) or a `.onnx` file (ours carry their
            preprocessing, labels and precision in `metadata_props`; the file decides
            between int8 and float).
        backend: "auto" or a name of `runtime.backends.BACKENDS`.
        precision: "fp32", "bf16" or "int8".
        threads: Intra-op threads (default: the backend's, i.e. all usable cores). The
            torch backend applies it process-wide (`torch.set_num_threads`).
        onnx_file: With a module: its ONNX export in `precision` (float for fp32 and bf16,
            QDQ for int8), so that the ONNX backends can run it too.
        phone_file: With a module: its `.tflite` or `.pte` export in `precision`, for the
            litert / executorch backends. `model` may also be such a file itself.
        cleanup: Called by `close()` (e.g. removing the folder `onnx_file` lives in).
    """

    def __init__(
        self,
        model: nn.Module | str | os.PathLike,
        backend: str = "auto",
        precision: str = "fp32",
        threads: int | None = None,
        *,
        onnx_file: str | os.PathLike | None = None,
        phone_file: str | os.PathLike | None = None,
        cleanup: Callable[[], None] | None = None,
    ) -> None:
        _check_choice("backend", backend, ("auto", *BACKENDS))
        _check_choice("precision", precision, PRECISIONS)
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be an integer >= 1, got {threads!r}")
        self.threads = threads
        self._cleanup = cleanup
        self.module: nn.Module | None = None
        self.onnx_path: Path | None = None
        self.phone_path: Path | None = None
        self.meta: Any = None
        self.metadata: dict[str, str] = {}
        # the timer `auto` races backends with (a test replaces it with a fake clock), and
        # where race winners are remembered across processes (`deploy.open_session` sets it)
        self.clock: Callable[[], float] = time.perf_counter
        self.race_cache: RaceCache | None = None
        if isinstance(model, nn.Module):
            self.module = model.eval()
            self.meta = model.meta
            if onnx_file is not None:
                self.onnx_path = _existing(onnx_file)
            if phone_file is not None:
                self.phone_path = _existing(phone_file)
        elif str(model).lower().endswith(".onnx"):
            precision = self._open_onnx(_existing(model), precision)
        elif Path(model).suffix.lower() in PHONE_SUFFIXES:
            precision = self._open_phone(_existing(model), precision)
        else:
            from mobilenetv2.weights import load_weights

            self.module = load_weights(str(model)).eval()
            self.meta = self.module.meta
        self.precision = precision
        files = frozenset() if self.phone_path is None else frozenset(
            {PHONE_SUFFIXES[self.phone_path.suffix.lower()]})
        refused = frozenset() if self.module is None else refused_backends(self.module)
        names = choose_backends(backend, precision, module=self.module is not None,
                                onnx=self.onnx_path is not None, files=files,
                                refused=refused)
        run: Runner | None = None
        if backend == "auto" and len(names) > 1 and names[0] == "native" and \
                precision == "int8":
            # the native int8 engine runs our own QDQ export only: on another int8 file it
            # says why in one line, and `auto` goes on without it
            try:
                run = self._build("native")
            except UserError as exc:
                log.info("native int8 engine left out: %s", exc)
                names = names[1:]
        self.backend = names[0]
        self._alternates = names[1:]
        self._run = run if run is not None else self._build(self.backend)
        self._runners: dict[str, Runner] = {self.backend: self._run}
        self.chosen: dict[tuple[int, ...], str] = {}
        log.debug("InferenceSession: %s", self.describe())

    def _open_onnx(self, path: Path, precision: str) -> str:
        """Read the file's metadata; returns the precision it runs in."""
        from mobilenetv2.runtime.onnx_meta import onnx_metadata, onnx_precision, onnx_weights_meta

        self.onnx_path = path
        self.metadata = onnx_metadata(path)
        self.meta = onnx_weights_meta(self.metadata)
        file_precision = onnx_precision(path, self.metadata)
        if file_precision == "int8" and precision == "fp32":
            return "int8"  # the file decides; never report int8 as fp32
        if file_precision == "int8" and precision != "int8":
            raise UserError(f"{path} is an int8 model; precision {precision} "
                            f"cannot run it (use --precision int8)")
        if file_precision != "int8" and precision == "int8":
            raise UserError(INT8_NEEDS_A_QUANTIZED_MODEL)
        return precision

    def _open_phone(self, path: Path, precision: str) -> str:
        """Read a .tflite / .pte file's metadata; returns the precision it runs in."""
        from mobilenetv2.runtime.phone import phone_metadata, phone_precision, phone_weights_meta

        self.phone_path = path
        doc = phone_metadata(path)
        self.metadata = {k: v if isinstance(v, str) else json.dumps(v) for k, v in doc.items()}
        self.meta = phone_weights_meta(doc)
        if self.meta is None and path.suffix.lower() == ".tflite":
            # a foreign classifier: what the converter infers (input range, labels)
            from mobilenetv2.weights.convert.tflite import convert_tflite

            try:
                self.meta = convert_tflite(path).meta
            except UserError:
                pass
        file_precision = phone_precision(doc, path)
        if file_precision != precision and precision != "fp32":
            raise UserError(f"{path} is an {file_precision} model; it cannot run in "
                            f"{precision} (export it again with --precision {precision})")
        return file_precision  # the file decides; never report int8 as fp32

    def _build(self, name: str) -> Runner:
        spec = BACKENDS[name]
        source = {"module": self.module, "onnx": self.onnx_path}.get(
            source_kind(name, self.precision), self.phone_path)
        return spec.build(source, self.precision, self.threads)

    def describe(self) -> str:
        threads = self.threads if self.threads is not None else "default"
        tuned = "".join(f"; batch {s[0]}: {b}" for s, b in self.chosen.items()
                        if b != self.backend)
        return f"{self.backend} {self.precision} (threads: {threads}{tuned})"

    # ----------------------------------------------------------------- use
    def __call__(self, batch: np.ndarray | torch.Tensor) -> np.ndarray:
        """Logits (N, classes) for a preprocessed float32 batch (N, 3, H, W)."""
        if isinstance(batch, torch.Tensor):
            batch = batch.detach().cpu().float().numpy()
        x = np.ascontiguousarray(batch, dtype=np.float32)
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected a batch of shape (N, 3, H, W), got {x.shape}")
        if self._alternates:
            return self._runners[self._choose(x)](x)
        return self._run(x)

    def _choose(self, x: np.ndarray) -> str:
        """The faster backend for this input shape, raced once."""
        shape = tuple(x.shape)
        key = None
        if shape not in self.chosen and self.race_cache is not None:
            key = self.race_cache.key(shape, self.precision, self.threads,
                                      [self.backend, *self._alternates])
            known = self.race_cache.get(key)
            if known in (self.backend, *self._alternates):
                if known not in self._runners:
                    self._runners[known] = self._build(known)
                self.chosen[shape] = known
        if shape not in self.chosen:
            for name in self._alternates:
                if name not in self._runners:
                    self._runners[name] = self._build(name)
            self.chosen[shape], best = race(self._runners, x, clock=self.clock)
            log.debug("batch shape %s: %s (%s)", shape, self.chosen[shape], best)
            if key is not None:
                self.race_cache.put(key, self.chosen[shape])
            # a losing runtime is dropped (it is rebuilt if another shape is raced): its
            # idle thread pool would otherwise compete with the winner's on a small CPU
            used = {self.backend, *self.chosen.values()}
            for name in [n for n in self._runners if n not in used]:
                del self._runners[name]
        return self.chosen[shape]

    def as_module(self, model: nn.Module | None = None) -> nn.Module:
        """This session as an `nn.Module` (CPU tensors in, logits out) for code written
        against PyTorch modules, such as `mobilenetv2.evaluate` and `predict`'s runner;
        `meta` and `num_classes` come from `model` (default: the session's own module)."""
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
        if self._cleanup is not None:
            self._cleanup()
            self._cleanup = None

    def __enter__(self) -> InferenceSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _SessionModule(nn.Module):
    """The one adapter from a session (NumPy) to PyTorch code (tensors)."""

    def __init__(self, session: InferenceSession, model: nn.Module | None) -> None:
        super().__init__()
        self.session = session
        self.meta = (model.meta if model is not None else None) or session.meta
        if model is not None and hasattr(model, "num_classes"):
            self.num_classes = model.num_classes
        elif self.meta is not None:
            self.num_classes = self.meta.config.num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session(x))


def _existing(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(2, "No such file", str(p))
    return p
