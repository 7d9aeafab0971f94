"""Any foreign weights file -> our checkpoint format: format detection and provenance.

`convert_file` detects the format (torchvision or timm key layout for `.pth`/`.pt`/`.bin`
and foreign `.safetensors`, `.h5` -> Keras, `.tflite` -> TensorFlow Lite, `.tgz` -> the
`.tflite` inside a TFLite hosted-model archive), runs the matching pure converter and records
where the weights came from (path and sha256 of the source file). `convert` writes the result
as one of our `.safetensors` files; it is what `mobilenetv2 convert` calls.
"""

from __future__ import annotations

import logging
import os
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from mobilenetv2.errors import UserError
from mobilenetv2.weights.format import (
    FORMAT,
    Converted,
    load_state_dict_checked,
    read_state_dict,
    save_state_dict,
    sha256_file,
)

__all__ = [
    "FORMATS",
    "convert",
    "convert_file",
    "detect_format",
    "extract_member",
    "is_our_checkpoint",
    "model_from_converted",
]

log = logging.getLogger(__name__)

FORMATS = ("torchvision", "timm", "keras", "tflite")
_TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
_ARCHIVE_SUFFIXES = (".tgz", ".tar.gz", ".tar")
# A .tflite MobileNetV2 is at most ~25 MB (width 1.4 float); refuse absurd members.
_MAX_MEMBER_BYTES = 1 << 30


def detect_format(path: str | os.PathLike) -> str:
    """torchvision, timm, keras or tflite, from the suffix and (for PyTorch files) key layout."""
    p = Path(path)
    name = p.name.lower()
    if name.endswith((".h5", ".hdf5", ".keras")):
        return "keras"
    if name.endswith(".tflite") or name.endswith(_ARCHIVE_SUFFIXES):
        return "tflite"
    if name.endswith((*_TORCH_SUFFIXES, ".safetensors")):
        state, _ = read_state_dict(p)
        return _layout_of(state, p)
    raise UserError(
        f"{p}: unknown weights format (suffix {p.suffix or 'none'}); expected .pth/.pt "
        f"(torchvision, timm), .safetensors, .h5 (Keras), .tflite or .tgz (TensorFlow Lite); "
        f"or name the format: mobilenetv2 convert --from {{{','.join(FORMATS)}}}"
    )


def _layout_of(state: dict[str, Any], path: Path) -> str:
    from mobilenetv2.weights.timm import looks_like_timm
    from mobilenetv2.weights.torchvision import looks_like_torchvision

    if looks_like_torchvision(state):
        return "torchvision"
    if looks_like_timm(state):
        return "timm"
    if "stem.conv.weight" in state:
        raise UserError(
            f"{path}: already has our key layout but no mobilenetv2 metadata; load it with "
            f"MobileNetV2(config).load_state_dict or re-save it with mobilenetv2.save"
        )
    raise UserError(
        f"{path}: neither a torchvision nor a timm MobileNetV2 state dict (first keys: "
        f"{', '.join(list(state)[:4])})"
    )


def convert_file(
    path: str | os.PathLike, fmt: str | None = None, *, use_ema: bool = False,
    member: str | None = None,
) -> Converted:
    """Convert a foreign weights file, recording its path and sha256 in the provenance.

    Args:
        path: The file.
        fmt: torchvision, timm, keras or tflite; detected when None.
        use_ema: Take the EMA weights of a training checkpoint.
        member: For a `.tgz` archive, the file inside to convert (default: its one .tflite).
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(2, "No such file", str(p))
    if p.is_dir():
        raise IsADirectoryError(21, "Is a directory, not a weights file", str(p))
    if fmt is not None and fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    if p.name.endswith(".safetensors") and is_our_checkpoint(p):
        raise UserError(f"{p}: already a mobilenetv2 checkpoint; nothing to convert")
    state = None
    if fmt in (None, "torchvision", "timm") and p.name.lower().endswith(
        (*_TORCH_SUFFIXES, ".safetensors")
    ):
        state, nested = read_state_dict(p, use_ema=use_ema)  # read once, detect from keys
        fmt = fmt or _layout_of(state, p)
    fmt = fmt or detect_format(p)
    if fmt in ("torchvision", "timm"):
        if state is None:
            state, nested = read_state_dict(p, use_ema=use_ema)
        if fmt == "torchvision":
            from mobilenetv2.weights.torchvision import convert_torchvision as fn
        else:
            from mobilenetv2.weights.timm import convert_timm as fn
        conv = fn(state, name=str(p))
        if nested:
            conv.meta.provenance["checkpoint_key"] = nested
    elif fmt == "keras":
        from mobilenetv2.weights.keras import convert_keras

        conv = convert_keras(str(p))
    else:
        conv = _convert_tflite_file(p, member)
    if conv.meta.labels is None and conv.meta.config.num_classes in (1000, 1001):
        from mobilenetv2.weights.imagenet import imagenet_labels

        conv.meta.labels = imagenet_labels(conv.meta.config.num_classes)
        conv.meta.provenance["labels"] = "ImageNet (assumed from the class count)"
    conv.meta.provenance.update(
        {"format": fmt, "source": str(p), "source_sha256": sha256_file(p)}
    )
    return conv


def _convert_tflite_file(p: Path, member: str | None) -> Converted:
    from mobilenetv2.weights.tflite import convert_tflite

    if not p.name.lower().endswith(_ARCHIVE_SUFFIXES):
        return convert_tflite(str(p))
    with tempfile.TemporaryDirectory() as tmp:
        inner = extract_member(p, member, Path(tmp))
        conv = convert_tflite(str(inner))
        conv.meta.provenance["archive_member"] = inner.name
        return conv


def extract_member(archive: Path, member: str | None, dest_dir: Path) -> Path:
    """Copy one regular-file member out of a tar archive, safely.

    Never `extractall`: the member is matched by base name (or, with `member=None`, the one
    `.tflite` file), must be a regular file (no links, devices) of sane size, and is written
    under `dest_dir` by our own name, so no archive path can escape it.
    """
    try:
        with tarfile.open(archive) as tar:
            files = [m for m in tar.getmembers() if m.isfile()]
            if member is None:
                found = [m for m in files if m.name.lower().endswith(".tflite")]
                if len(found) != 1:
                    raise UserError(
                        f"{archive}: expected one .tflite file inside, found {len(found)}: "
                        f"{', '.join(m.name for m in found) or 'none'}"
                    )
            else:
                found = [m for m in files if Path(m.name).name == member]
                if not found:
                    raise UserError(
                        f"{archive}: no {member!r} inside (files: "
                        f"{', '.join(Path(m.name).name for m in files[:8])})"
                    )
            info = found[0]
            if info.size > _MAX_MEMBER_BYTES:
                raise UserError(f"{archive}: member {info.name} is implausibly large")
            src = tar.extractfile(info)
            if src is None:
                raise UserError(f"{archive}: member {info.name} is not a regular file")
            out = dest_dir / Path(info.name).name
            with src, open(out, "wb") as f:
                while block := src.read(1 << 20):
                    f.write(block)
            return out
    except (tarfile.TarError, EOFError, OSError) as e:
        raise UserError(f"{archive}: corrupt or truncated archive ({e})") from e


def model_from_converted(conv: Converted) -> nn.Module:
    """Build our model from a converter's output; `model.meta` holds its metadata."""
    from mobilenetv2.model import MobileNetV2

    model = MobileNetV2(conv.meta.config)
    load_state_dict_checked(model, conv.state_dict, source=str(conv.meta.provenance.get(
        "source", "converted weights")))
    model.meta = conv.meta
    return model.eval()


def convert(
    src: str | os.PathLike, out: str | os.PathLike, fmt: str | None = None,
    *, use_ema: bool = False,
) -> Path:
    """Convert `src` and write it to `out` in our format (atomic write)."""
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ValueError(f"output must be a .safetensors file, got {out}")
    if Path(src).resolve() == out.resolve():
        raise ValueError(f"output {out} would overwrite the source")
    conv = convert_file(src, fmt, use_ema=use_ema)
    model_from_converted(conv)  # proves the tensors fit before anything is written
    return save_state_dict(
        {k: v.contiguous() for k, v in conv.state_dict.items()}, conv.meta, out
    )


def is_our_checkpoint(p: str | os.PathLike) -> bool:
    """Whether `p` is a safetensors file with our metadata (False if unreadable)."""
    from safetensors import safe_open

    try:
        with safe_open(str(p), framework="pt") as f:
            return (f.metadata() or {}).get("format") == FORMAT
    except Exception:  # unreadable: let the reader report it precisely
        return False
