"""Post-training static int8 quantization to a portable QDQ ONNX model.

Toolchain (what runs with torch 2.14 on CPU): the BN-folded float model is exported to ONNX
(`export.onnx`), then ONNX Runtime's `quantize_static` inserts QuantizeLinear /
DequantizeLinear pairs (QDQ format) with activation ranges calibrated on real images.
Weights are int8, symmetric and per output channel: per-tensor scales collapse depthwise
convolutions, whose channels differ in range by orders of magnitude (Krishnamoorthi 2018,
"Quantizing deep convolutional networks for efficient inference", section 3.1; USERS.md
point 2). Activations are uint8 asymmetric (ONNX Runtime's U8S8 kernels, OpenVINO's LPT
both consume this). Weights use 7 bits of the 8 (`reduce_range`): on x86 CPUs without VNNI
(AVX2-only, e.g. AMD Zen 3) both runtimes multiply u8 x s8 pairs with VPMADDUBSW, whose
16-bit sums saturate with full-range weights (ONNX Runtime's quantization docs say so). The
digits model measured on an AMD EPYC Zen 3: fp32 96.7%, int8 with 8-bit weights 86.6% (ONNX
Runtime) / 89.4% (OpenVINO), with 7-bit weights 97.5% / 96.1%. The file travels, so it is
quantized for every CPU, not for the one that quantized it. ReLU6 stays a `Clip(0, 6)` whose
bounds fold into the activation range.
The QDQ file runs on ONNX Runtime and on OpenVINO (which lowers QDQ to its int8 kernels).

`torch.ao.quantization.quantize_pt2e` is gone from torch 2.14 (moved to torchao), which is
why the PyTorch side only prepares the float graph; QAT (`quant.qat`) trains in PyTorch and
hands its weights to this same QDQ step.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mobilenetv2._optional import require
from mobilenetv2.data.images import IMAGE_SUFFIXES, image_files
from mobilenetv2.errors import UserError

__all__ = [
    "QuantizeResult",
    "calibration_arrays",
    "fp32_int8_paths",
    "labelled_arrays",
    "measure",
    "onnx_logits",
    "quantize_onnx",
    "quantize_ptq",
    "read_accuracy",
]

log = logging.getLogger(__name__)


@dataclass
class QuantizeResult:
    """The float and int8 ONNX files and what was measured on them."""

    float_path: Path
    int8_path: Path
    method: str
    calibration_images: int
    accuracy: dict[str, float] = field(default_factory=dict)
    agreement: float | None = None
    eval_images: int = 0
    eval_source: str = ""

    def summary(self) -> str:
        parts = [f"int8 ({self.method}, {self.calibration_images} calibration images) -> "
                 f"{self.int8_path}"]
        if self.accuracy:
            parts.append(", ".join(f"{k} top-1 {v:.2f}%" for k, v in self.accuracy.items())
                         + f" on {self.eval_images} images")
        if self.agreement is not None:
            parts.append(f"int8 top-1 agrees with fp32 on {self.agreement:.2f}% of images")
        return "; ".join(parts)


def _image_files(root: Path) -> list[Path]:
    files = image_files(root)
    if not files:
        raise UserError(f"{root}: no images found (looked for {', '.join(IMAGE_SUFFIXES)})")
    return files


def labelled_arrays(
    source: str | os.PathLike, preprocessing: Any, split: str = "test",
    limit: int | None = None, labels: list[str] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Preprocessed float32 NCHW images and labels from `digits` or an image folder.

    `source="digits"` is the bundled digits split `split`; a directory is read recursively
    and, when it has one sub-folder per class named as in `labels` (ImageFolder layout),
    the labels come from the folder names (else they are None).
    """
    from mobilenetv2.data.transforms import eval_transform

    transform = eval_transform(preprocessing)
    if str(source) == "digits":
        from mobilenetv2.data.digits import DigitsDataset

        ds = DigitsDataset(split)
        idx = range(len(ds)) if limit is None else _spread(len(ds), limit)
        xs = [transform(ds[i][0]).numpy() for i in idx]
        ys = np.array([ds.labels[i] for i in idx], dtype=np.int64)
        return np.stack(xs).astype(np.float32), ys
    from mobilenetv2.data.images import ImageError, open_image

    root = Path(source)
    if not root.exists():
        raise FileNotFoundError(2, "No such file or directory", str(root))
    if not root.is_dir():
        raise UserError(f"{root}: --calib takes a folder of images or 'digits'")
    files = _image_files(root)
    if limit is not None:
        files = [files[i] for i in _spread(len(files), limit)]
    # An unreadable file is skipped and counted, as train and predict do; none readable is
    # an error.
    xs, kept = [], []
    for f in files:
        try:
            xs.append(open_image(f, transform).numpy())
            kept.append(f)
        except ImageError as e:
            log.warning("skipping unreadable calibration image: %s", e)
    if not xs:
        raise UserError(f"{root}: no readable images ({len(files)} files, all unreadable)")
    if len(kept) < len(files):
        log.warning("%s: skipped %d unreadable of %d images", root, len(files) - len(kept),
                    len(files))
    files = kept
    ys = None
    if labels:
        index = {name: i for i, name in enumerate(labels)}
        found = [index.get(f.parent.name) for f in files]
        if all(v is not None for v in found) and any(f.parent != root for f in files):
            ys = np.array(found, dtype=np.int64)
    return np.stack(xs).astype(np.float32), ys


def calibration_arrays(source: str | os.PathLike | np.ndarray | torch.Tensor,
                       preprocessing: Any, limit: int = 256) -> np.ndarray:
    """Calibration inputs: an array/tensor as is, else `labelled_arrays` of the train split."""
    if isinstance(source, torch.Tensor):
        return source.detach().float().numpy()
    if isinstance(source, np.ndarray):
        return source.astype(np.float32)
    return labelled_arrays(source, preprocessing, split="train", limit=limit)[0]


def _spread(n: int, k: int) -> list[int]:
    """k indices spread evenly over range(n): a class-balanced sample of sorted folders."""
    if k >= n:
        return list(range(n))
    return sorted({int(i) for i in np.linspace(0, n - 1, k)})


class _Reader:
    """onnxruntime.quantization.CalibrationDataReader over an array, in small batches."""

    def __init__(self, name: str, data: np.ndarray, batch: int = 16) -> None:
        self.name, self.data, self.batch = name, data, batch
        self._it: Iterator[dict[str, np.ndarray]] | None = None

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._it is None:
            self._it = ({self.name: self.data[i:i + self.batch]}
                        for i in range(0, len(self.data), self.batch))
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = None


def quantize_onnx(
    float_path: str | os.PathLike,
    int8_path: str | os.PathLike,
    calibration: np.ndarray,
    *,
    metadata: dict[str, str] | None = None,
    reduce_range: bool = True,
) -> Path:
    """Static QDQ int8 quantization of a float ONNX classifier with ONNX Runtime.

    Args:
        float_path: Float model (as written by `export_onnx`).
        int8_path: Output QDQ model.
        calibration: Preprocessed float32 NCHW calibration images.
        metadata: Extra `metadata_props`; the float model's are kept and `precision` is
            set to "int8".
        reduce_range: 7-bit weights, exact on CPUs without VNNI (module docstring); False
            gives full 8-bit weights for a file that only ever runs on VNNI CPUs.
    """
    from mobilenetv2.runtime.onnx_meta import set_onnx_metadata

    ort = require("onnxruntime", "int8 quantization")
    onnx = require("onnx", "int8 quantization")
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if len(calibration) == 0:
        raise UserError("no calibration images")
    int8_path = Path(int8_path)
    int8_path.parent.mkdir(parents=True, exist_ok=True)
    proto = onnx.load(str(float_path))
    name = proto.graph.input[0].name
    ort.set_default_logger_severity(3)
    with tempfile.TemporaryDirectory(prefix="mobilenetv2-quant-") as tmp:
        # ONNX Runtime's recommended pre-pass (shape inference, constant folding): without
        # it the Clip bounds stay behind as Constant nodes beside the QDQ graph.
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(float_path), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre),
            str(int8_path),
            _Reader(name, calibration),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            reduce_range=reduce_range,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
        )
    q = onnx.load(str(int8_path))
    props = {p.key: p.value for p in proto.metadata_props}
    props.update(metadata or {})
    props["precision"] = "int8"
    set_onnx_metadata(q, props)
    onnx.save(q, str(int8_path))
    return int8_path


def onnx_logits(path: str | os.PathLike, x: np.ndarray, batch: int = 64) -> np.ndarray:
    """Logits of an ONNX model on ONNX Runtime's CPU provider, in batches."""
    from mobilenetv2.runtime.backends import helper_threads, onnxruntime_session

    sess = onnxruntime_session(path, helper_threads())
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i:i + batch]})[0]
                           for i in range(0, len(x), batch)])


def fp32_int8_paths(out: str | os.PathLike) -> tuple[Path, Path]:
    """`STEM.fp32.onnx` and `STEM.int8.onnx` beside `out` (`STEM`, `STEM.onnx` or
    `STEM.int8.onnx`): where PTQ and QAT write the float and the int8 model."""
    out = Path(out)
    stem = out.name[:-len(".onnx")] if out.name.endswith(".onnx") else out.name
    stem = stem[:-len(".int8")] if stem.endswith(".int8") else stem
    return out.with_name(stem + ".fp32.onnx"), out.with_name(stem + ".int8.onnx")


def quantize_ptq(
    model: nn.Module,
    out: str | os.PathLike,
    calib: str | os.PathLike | np.ndarray | torch.Tensor,
    *,
    calib_images: int = 256,
    eval_data: str | os.PathLike | None = None,
    eval_images: int | None = None,
    input_size: int | None = None,
) -> QuantizeResult:
    """Fuse, export (verified), calibrate and quantize `model`; measure the result.

    Args:
        model: Float MobileNetV2 with `.meta` (its preprocessing prepares the images).
        out: Output path; writes `STEM.fp32.onnx` and `STEM.int8.onnx` beside it.
        calib: "digits", a folder of images, or preprocessed inputs (N, 3, H, W).
        calib_images: At most this many calibration images (spread over the folder).
        eval_data: "digits" or a labelled image folder (ImageFolder layout); top-1 of fp32
            and int8 is measured on it. Default: the calibration source (for digits its
            test split).
        eval_images: Limit the evaluation set.
    """
    from mobilenetv2.data.preprocessing import Preprocessing
    from mobilenetv2.export.onnx import export_onnx
    from mobilenetv2.weights.format import meta_or_default

    meta = meta_or_default(model)
    pre: Preprocessing = meta.preprocessing
    float_path, int8_path = fp32_int8_paths(out)
    export_onnx(model, float_path, input_size=input_size or pre.crop)
    data = calibration_arrays(calib, pre, limit=calib_images)
    quantize_onnx(float_path, int8_path, data)
    result = QuantizeResult(float_path, int8_path, "ptq", len(data))
    if eval_data is None and isinstance(calib, (str, os.PathLike)):
        # digits: its test split; a folder: the calibration images themselves (agreement
        # only, unless they sit in class folders), better than no measurement at all
        eval_data = calib
    if eval_data is not None:
        measure(result, eval_data, pre, meta.labels, eval_images)
        result.eval_source = str(eval_data) + (" test split" if str(eval_data) == "digits"
                                               else "")
    return result


def measure(result: QuantizeResult, eval_data: str | os.PathLike, pre: Any,
            labels: list[str] | None, limit: int | None = None) -> QuantizeResult:
    """Top-1 of fp32 and int8 (ONNX Runtime) on `eval_data` ("digits": its test split, or a
    folder) and their top-1 agreement, into `result` and the int8 file's metadata."""
    x, y = labelled_arrays(eval_data, pre, split="test", limit=limit, labels=labels)
    fp = onnx_logits(result.float_path, x).argmax(1)
    q = onnx_logits(result.int8_path, x).argmax(1)
    result.eval_images = len(x)
    result.agreement = float((fp == q).mean() * 100)
    if y is not None:
        result.accuracy = {"fp32": float((fp == y).mean() * 100),
                           "int8": float((q == y).mean() * 100)}
    _record_accuracy(result)
    return result


def _record_accuracy(result: QuantizeResult) -> None:
    """Write the measured numbers into the int8 file's metadata (`accuracy` key)."""
    import json

    from mobilenetv2.runtime.onnx_meta import set_onnx_metadata

    onnx = require("onnx", "int8 quantization")
    q = onnx.load(str(result.int8_path))
    props = {p.key: p.value for p in q.metadata_props}
    props["accuracy"] = json.dumps({
        **{f"top1_{k}": v for k, v in result.accuracy.items()},
        "top1_agreement_with_fp32": result.agreement, "eval_images": result.eval_images,
        "method": result.method})
    set_onnx_metadata(q, props)
    onnx.save(q, str(result.int8_path))


def read_accuracy(path: str | os.PathLike) -> dict[str, Any]:
    """The accuracy recorded in an int8 ONNX file by `quantize_ptq` / `quantize_qat`."""
    import json

    from mobilenetv2.runtime.onnx_meta import onnx_metadata

    return json.loads(onnx_metadata(path).get("accuracy", "{}") or "{}")

