"""What the inference benchmark times: the model, and every path that runs it.

torchvision's eager MobileNetV2 (the baseline), our `InferenceSession` pinned to each
backend and precision, `backend="auto"` per precision, and ONNX Runtime / OpenVINO run
directly with their plain APIs on the very ONNX files our sessions run (the "peers").
With `phone`, also the phone runtimes on this CPU (kind "phone"): our `.tflite` in LiteRT
and our `.pte` in ExecuTorch, both on XNNPACK, fp32 and int8 (calibrated on the same
images as the ONNX int8 model); `file_sizes` lists every exported file's size.

Without `--weights` the model has random weights whose BatchNorm statistics are
re-estimated (`random_model`): with the raw initialisation the activations collapse to
~1e-9, which would make int8 calibration and any output check meaningless.
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mobilenetv2.config import ModelConfig
from mobilenetv2.errors import UserError
from mobilenetv2.model import MobileNetV2
from mobilenetv2.runtime.backends import backend_installed
from mobilenetv2.runtime.cpu import cpu_has_bf16
from mobilenetv2.runtime.session import InferenceSession

__all__ = ["Variant", "auto_variant", "benchmark_model", "build_variants", "file_sizes",
           "phone_variants", "random_model", "versions"]

log = logging.getLogger(__name__)

# BatchNorm re-estimation for random weights: 2 batches of 8 noise images normalise every
# layer (model.fuse.reestimate_bn); more changes nothing a benchmark or a test can see.
BN_STEPS, BN_BATCH = 2, 8


@dataclass
class Variant:
    """One timed path: `kind` is "baseline", "ours", "auto" or "peer"."""

    name: str
    kind: str
    backend: str
    precision: str
    run: Callable[[np.ndarray], Any]


def random_model(config: ModelConfig, size: int | None = None,
                 labels: Sequence[str] | None = None) -> MobileNetV2:
    """A MobileNetV2 with random weights and re-estimated BatchNorm statistics, in eval mode,
    with weights metadata (preprocessing: resize and crop `size`, default the config's
    resolution) as if loaded from a file."""
    from mobilenetv2.data.preprocessing import Preprocessing
    from mobilenetv2.model.fuse import reestimate_bn
    from mobilenetv2.weights.format import WeightsMeta

    size = size or config.resolution
    model = MobileNetV2(config)
    reestimate_bn(model, steps=BN_STEPS, batch_size=BN_BATCH, size=size)
    model.meta = WeightsMeta(config=config, preprocessing=Preprocessing(resize=size, crop=size),
                             labels=list(labels) if labels is not None else None)
    return model


def benchmark_model(weights: str | None, width: float, size: int,
                    padding: str | None = None) -> tuple[MobileNetV2, str]:
    """The model to time and how the report describes it.

    `padding` ("symmetric" or "tf_same") switches the loaded model's stride-2 padding, same
    weights: the runtimes run the two modes differently (a TF-converted model's asymmetric
    SAME padding is a `Pad` or asymmetric `pads` in ONNX), so a benchmark covers both with
    real weights. The switched model's outputs are not the original's; it is timed only.
    """
    if weights is not None:
        from mobilenetv2.weights import load_weights

        model, what = load_weights(weights).eval(), f"weights {weights}"
    else:
        model = random_model(ModelConfig(width=width, resolution=max(size, 32)), size)
        what = f"width {width}, random weights with re-estimated BatchNorm statistics"
    if padding is not None and padding != model.config.padding:
        model = _with_padding(model, padding)
        what += f", padding switched to {padding} (timing only)"
    return model, f"{what}; padding {model.config.padding}"


def _with_padding(model: MobileNetV2, padding: str) -> MobileNetV2:
    """`model` with its config's padding replaced (same parameters and metadata)."""
    from dataclasses import replace

    config = replace(model.config, padding=padding)
    out = MobileNetV2(config)
    out.load_state_dict(model.state_dict())
    meta = getattr(model, "meta", None)
    if meta is not None:
        out.meta = replace(meta, config=config)
    return out.eval()


def versions() -> dict[str, str]:
    """Python, torch, torchvision and the installed runtimes' versions."""
    import torchvision

    out = {"python": platform.python_version(), "torch": torch.__version__,
           "torchvision": torchvision.__version__}
    for name in ("onnxruntime", "openvino"):
        if backend_installed(name):
            mod = __import__(name)
            out[name] = getattr(mod, "__version__", None) or mod.get_version()
    from importlib.metadata import PackageNotFoundError, version

    for name in ("ai-edge-litert", "executorch"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def _torchvision(width: float, size: int) -> Callable[[np.ndarray], Any]:
    import torchvision

    from mobilenetv2.model.fuse import reestimate_bn

    tv = torchvision.models.mobilenet_v2(width_mult=width)
    reestimate_bn(tv, steps=BN_STEPS, batch_size=BN_BATCH, size=size)

    def run(x: np.ndarray) -> Any:
        with torch.inference_mode():
            return tv(torch.from_numpy(x))

    return run


def _peer(backend: str, path: Path, precision: str, threads: int) -> Callable[[np.ndarray], Any]:
    """ONNX Runtime or OpenVINO through their plain APIs, at their best settings: ONNX
    Runtime with every graph optimization (`plain=True`); OpenVINO compiled for each static
    input shape (a dynamic batch runs slower) with the LATENCY hint at every batch size: one
    synchronous request under THROUGHPUT gets one stream of the cores (measured on 2 cores:
    int8 batch 32 at 112 img/s vs 212 with LATENCY)."""
    from mobilenetv2.runtime.backends import onnxruntime_session, openvino_compile

    if backend == "onnxruntime":
        sess = onnxruntime_session(path, threads, plain=True)
        name = sess.get_inputs()[0].name
        return lambda x: sess.run(None, {name: x})
    requests: dict[tuple[int, ...], Any] = {}

    def run(x: np.ndarray) -> Any:
        if x.shape not in requests:
            requests[x.shape] = openvino_compile(path, precision, threads, plain=True,
                                                 shape=x.shape,
                                                 hint="LATENCY").create_infer_request()
        return requests[x.shape].infer({0: x})

    return run


def build_variants(model: MobileNetV2, size: int, width: float, threads: int,
                   work: Path, phone: bool = False) -> list[Variant]:
    """Every path to time; the fp32 and int8 ONNX files go to `work`.

    Args:
        model: Our model (exported and quantized here).
        size: Input side.
        width: Width of the torchvision baseline.
        threads: Intra-op threads for every runtime.
        phone: Also export and time the LiteRT and ExecuTorch files (`phone_variants`).
    """
    from mobilenetv2.export.onnx import export_onnx
    from mobilenetv2.quant.ptq import quantize_onnx

    gen = torch.Generator().manual_seed(0)
    fp32 = export_onnx(model, work / "model.fp32.onnx", input_size=size).path
    have_ort, have_ov = backend_installed("onnxruntime"), backend_installed("openvino")
    int8 = None
    if have_ort:
        calib = torch.randn(32, 3, size, size, generator=gen).numpy()
        int8 = quantize_onnx(fp32, work / "model.int8.onnx", calib)
    files = {"fp32": fp32, "bf16": fp32, "int8": int8}
    bf16 = cpu_has_bf16()
    precisions = [p for p in ("fp32", "bf16", "int8") if (p != "bf16" or bf16)
                  and files[p] is not None]
    variants = [Variant("torchvision eager", "baseline", "torch", "fp32",
                        _torchvision(width, size))]
    plan = [("native", "fp32"), ("torch", "fp32"), ("torch", "bf16"), ("onnxruntime", "fp32"),
            ("openvino", "fp32"),
            ("openvino", "bf16"), ("native", "int8"), ("onnxruntime", "int8"),
            ("openvino", "int8")]
    for backend, precision in plan:
        if precision not in precisions or not backend_installed(backend):
            continue
        source = (model if backend == "torch" or (backend, precision) == ("native", "fp32")
                  else files[precision])  # native int8 runs the QDQ file
        try:
            sess = InferenceSession(source, backend=backend, precision=precision,
                                    threads=threads)
        except UserError as e:  # e.g. native int8 on a CPU without AVX2
            log.warning("no %s %s row: %s", backend, precision, e)
            continue
        variants.append(Variant(f"ours {backend} {precision}", "ours", backend, precision,
                                sess))
    phone_rows: list[Variant] = []
    if phone:
        calib = torch.randn(32, 3, size, size, generator=gen).numpy()
        phone_rows = phone_variants(model, size, threads, work, calib)
    for precision in precisions:
        # auto races every runtime it has a file for, as a user's session with those exports
        # beside the weights does: the ExecuTorch program where there is one (XNNPACK ran
        # MobileNetV2 ahead of ONNX Runtime and OpenVINO on some CPUs, issue 13)
        pte = work / f"model.{precision}.pte"
        pte_file = pte if pte.is_file() else None
        try:
            if precision == "int8" and pte_file is None:
                sess = InferenceSession(int8, precision=precision, threads=threads)
            else:
                sess = InferenceSession(model, precision=precision, threads=threads,
                                        onnx_file=files[precision], phone_file=pte_file)
        except UserError as e:
            log.warning("no auto path for %s: %s", precision, e)
            continue
        variants.append(Variant(f"ours auto {precision}", "auto", "auto", precision, sess))
    for backend, have in (("onnxruntime", have_ort), ("openvino", have_ov)):
        for precision in precisions:
            if have and (backend, precision) != ("onnxruntime", "bf16"):
                variants.append(Variant(f"{backend} direct {precision}", "peer", backend,
                                        precision, _peer(backend, files[precision], precision,
                                                         threads)))
    return variants + phone_rows


def phone_variants(model: MobileNetV2, size: int, threads: int, work: Path,
                   calib: np.ndarray) -> list[Variant]:
    """Our .tflite in LiteRT and .pte in ExecuTorch (XNNPACK), fp32 and int8, as sessions
    pinned to those backends; files written to `work`."""
    from mobilenetv2.export.executorch import export_executorch
    from mobilenetv2.export.tflite import export_tflite

    out = []
    for backend, export, suffix in (("litert", export_tflite, "tflite"),
                                    ("executorch", export_executorch, "pte")):
        if not backend_installed(backend):
            log.warning("%s is not installed: no %s rows", backend, backend)
            continue
        for precision in ("fp32", "int8"):
            path = export(model, work / f"model.{precision}.{suffix}", precision=precision,
                          calibration=calib if precision == "int8" else None,
                          input_size=size).path
            sess = InferenceSession(path, backend=backend, precision=precision,
                                    threads=threads)
            out.append(Variant(f"{backend} xnnpack {precision}", "phone", backend, precision,
                               sess))
    return out


def file_sizes(work: Path) -> dict[str, int]:
    """Every exported file in `work` (ONNX, tflite, pte) and its size in bytes."""
    return {p.name: p.stat().st_size for p in sorted(work.iterdir())
            if p.suffix in (".onnx", ".tflite", ".pte")}


def auto_variant(variants: list[Variant], precision: str) -> Variant | None:
    """The `InferenceSession(backend="auto")` variant for `precision`."""
    return next((v for v in variants if v.kind == "auto" and v.precision == precision), None)
