"""Any foreign weights file -> our checkpoint format: format detection and provenance.

`convert_file` detects the format (torchvision or timm key layout for `.pth`/`.pt`/`.bin`
and foreign `.safetensors`, `.h5` -> Keras, `.tflite` -> TensorFlow Lite, `.tgz` -> the
`.tflite` inside a TFLite hosted-model archive), runs the matching pure converter and records
where the weights came from (format, path and sha256 of the source file).
`model_from_converted` is the one place a converted state dict is checked against the model
it is for (`load_state_dict_checked`); `convert` writes the result as one of our
`.safetensors` files and is what `mobilenetv2 convert` calls.

One module per source: `read` (safe PyTorch reading), `keymap` (torchvision and timm key
layouts as data), `keras`, `tflite/`; `fit` is the width search they share. A new format adds
one module here, its name in `FORMATS` and its branch in `convert_file`.
"""

from __future__ import annotations

import logging
import os
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from mobilenetv2._files import check_output
from mobilenetv2.errors import UserError
from mobilenetv2.weights._common import existing_file
from mobilenetv2.weights.convert.keymap import LAYOUTS, convert_layout, layout_of
from mobilenetv2.weights.convert.read import TORCH_SUFFIXES, read_foreign_state_dict
from mobilenetv2.weights.format import (
    Converted,
    is_our_checkpoint,
    load_state_dict_checked,
    save_state_dict,
    source_provenance,
)

__all__ = [
    "FORMATS",
    "convert",
    "convert_file",
    "detect_format",
    "extract_member",
    "model_from_converted",
    "read_labels",
]

log = logging.getLogger(__name__)

FORMATS = ("torchvision", "timm", "keras", "tflite")
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
    if name.endswith((*TORCH_SUFFIXES, ".safetensors")):
        state, _ = read_foreign_state_dict(p)
        return _layout_name(state, p)
    raise UserError(
        f"{p}: unknown weights format (suffix {p.suffix or 'none'}); expected .pth/.pt "
        f"(torchvision, timm), .safetensors, .h5 (Keras), .tflite or .tgz (TensorFlow Lite); "
        f"or name the format: mobilenetv2 convert --from {{{','.join(FORMATS)}}}"
    )


def _layout_name(state: dict[str, Any], path: Path) -> str:
    layout = layout_of(state)
    if layout is not None:
        return layout.name
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
    """Convert a foreign weights file, recording its format, path and sha256 in the provenance.

    Args:
        path: The file.
        fmt: torchvision, timm, keras or tflite; detected when None.
        use_ema: Take the EMA weights of a training checkpoint.
        member: For a `.tgz` archive, the file inside to convert (default: its one .tflite).
    """
    p = existing_file(path)
    if fmt is not None and fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    if p.name.endswith(".safetensors") and is_our_checkpoint(p):
        raise UserError(f"{p}: already a mobilenetv2 checkpoint; nothing to convert")
    state = nested = None
    if fmt in (None, *LAYOUTS) and p.name.lower().endswith((*TORCH_SUFFIXES, ".safetensors")):
        state, nested = read_foreign_state_dict(p, use_ema=use_ema)  # read once, detect
        fmt = fmt or _layout_name(state, p)
    fmt = fmt or detect_format(p)
    if fmt in LAYOUTS:
        if state is None:
            state, nested = read_foreign_state_dict(p, use_ema=use_ema)
        conv = convert_layout(state, LAYOUTS[fmt], name=str(p), checkpoint_key=nested)
    elif fmt == "keras":
        from mobilenetv2.weights.convert.keras import convert_keras

        conv = convert_keras(str(p))
    else:
        conv = _convert_tflite_file(p, member)
    conv.meta.provenance.update(source_provenance(p, fmt))
    return conv


def _convert_tflite_file(p: Path, member: str | None) -> Converted:
    from mobilenetv2.weights.convert.tflite import convert_tflite

    if not p.name.lower().endswith(_ARCHIVE_SUFFIXES):
        return convert_tflite(str(p))
    with tempfile.TemporaryDirectory() as tmp:
        inner = extract_member(p, member, Path(tmp))
        try:
            conv = convert_tflite(str(inner))
        except UserError as e:
            # Name what the user has, archive:member, not the deleted temporary copy.
            raise UserError(str(e).replace(str(inner), f"{p}:{inner.name}")) from e
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
    """Build our model from a converter's output, checking that every tensor fits it (the one
    check, with a report of missing, unexpected and mis-shaped keys); `model.meta` holds its
    metadata."""
    from mobilenetv2.model import build_model

    model = build_model(conv.meta.config)
    load_state_dict_checked(model, conv.state_dict, source=str(conv.meta.provenance.get(
        "source", "converted weights")))
    model.meta = conv.meta
    return model.eval()


def read_labels(path: str | os.PathLike) -> list[str]:
    """Class names from a text file, one per line (trailing blank lines ignored)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"--labels {path}: cannot read a text file ({e})") from e
    while lines and not lines[-1].strip():
        lines.pop()
    return [line.strip() for line in lines]


def convert(
    src: str | os.PathLike, out: str | os.PathLike, fmt: str | None = None,
    *, use_ema: bool = False, labels: str | os.PathLike | None = None,
) -> Path:
    """Convert `src` and write it to `out` in our format (atomic write).

    `labels`: a text file with one class name per line (TF / Coral label files), for a
    model whose classes are not ImageNet's (a fine-tuned one); the count must match the
    classifier's outputs.
    """
    out = check_output(out, [src], [".safetensors"], "the converted weights")
    conv = convert_file(src, fmt, use_ema=use_ema)
    if labels is not None:
        names = read_labels(labels)
        n = conv.meta.config.num_classes
        if len(names) != n:
            raise UserError(f"--labels {labels}: {len(names)} names for a classifier with {n} "
                            f"outputs")
        conv.meta.labels = names
    model_from_converted(conv)  # proves the tensors fit before anything is written
    return save_state_dict(
        {k: v.contiguous() for k, v in conv.state_dict.items()}, conv.meta, out
    )
