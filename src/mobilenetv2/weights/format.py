"""Our checkpoint format: safetensors with the model config, preprocessing, labels and
provenance in the file's metadata, so `load` rebuilds the model from the file alone and never
unpickles anything. `read_meta` reads the metadata without the tensors; `save` writes a model,
`save_state_dict` converted tensors with their metadata; `load_state_dict_checked` is the one
check that a state dict fits a model, with a report of what does not.

Provenance records where weights came from; a file's hash is always under `source_sha256`
(`source_provenance`). Files written before that name was settled carry `sha256` and are read
as if they said `source_sha256`.

Foreign files are read in `mobilenetv2.weights.convert`, never here.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mobilenetv2._files import atomic_write
from mobilenetv2.config import ModelConfig
from mobilenetv2.data.preprocessing import Preprocessing
from mobilenetv2.errors import UserError
from mobilenetv2.weights._common import existing_file, few, strip_prefixes

__all__ = [
    "FORMAT",
    "Converted",
    "WeightsMeta",
    "is_our_checkpoint",
    "load",
    "load_state_dict_checked",
    "meta_or_default",
    "read_meta",
    "save",
    "save_state_dict",
    "sha256_file",
    "source_provenance",
]

FORMAT = "mobilenetv2/1"
# The provenance key of the source file's hash, and the one files written before it used.
SHA256_KEY = "source_sha256"
_OLD_SHA256_KEY = "sha256"


@dataclass
class WeightsMeta:
    """Everything a checkpoint file says about itself besides the tensors."""

    config: ModelConfig
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    labels: list[str] | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    accuracy: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Labels index the classifier's outputs: too few give IndexError with --topk 5 and a
        # wrong name with --topk 1, so a file whose labels do not fit is refused on load.
        if self.labels is None:
            return
        if not isinstance(self.labels, list) or not all(isinstance(x, str)
                                                        for x in self.labels):
            raise ValueError(f"labels must be a list of strings, got "
                             f"{type(self.labels).__name__}")
        if len(self.labels) != self.config.num_classes:
            raise ValueError(f"{len(self.labels)} labels given for a model with "
                             f"{self.config.num_classes} classes")

    def to_metadata(self) -> dict[str, str]:
        """safetensors metadata is str -> str: one JSON document per section."""
        return {
            "format": FORMAT,
            "config": self.config.to_json(),
            "preprocessing": json.dumps(asdict(self.preprocessing)),
            "labels": json.dumps(self.labels),
            "provenance": json.dumps(self.provenance),
            "accuracy": json.dumps(self.accuracy),
            "extra": json.dumps(self.extra),
        }

    @classmethod
    def from_metadata(cls, meta: Mapping[str, str], source: str = "file") -> WeightsMeta:
        if meta.get("format") != FORMAT or "config" not in meta:
            raise UserError(
                f"{source} is a safetensors file but not a mobilenetv2 checkpoint (no "
                f"'{FORMAT}' metadata); convert it first: mobilenetv2 convert {source} -o OUT"
            )
        try:
            provenance = json.loads(meta.get("provenance", "{}"))
            if _OLD_SHA256_KEY in provenance:
                provenance.setdefault(SHA256_KEY, provenance.pop(_OLD_SHA256_KEY))
            return cls(
                config=ModelConfig.from_json(meta["config"]),
                preprocessing=Preprocessing.from_dict(json.loads(meta.get("preprocessing", "{}"))),
                labels=json.loads(meta.get("labels", "null")),
                provenance=provenance,
                accuracy=json.loads(meta.get("accuracy", "{}")),
                extra=json.loads(meta.get("extra", "{}")),
            )
        except (ValueError, TypeError) as e:
            raise UserError(f"{source}: corrupt mobilenetv2 metadata ({e})") from e


@dataclass
class Converted:
    """What every converter returns: our config, a state dict for it, and its metadata."""

    state_dict: dict[str, torch.Tensor]
    meta: WeightsMeta


def meta_or_default(model: nn.Module) -> WeightsMeta:
    """The model's weights metadata, or the defaults for its config (ImageNet preprocessing,
    no labels) for a network that was built rather than loaded."""
    meta = getattr(model, "meta", None)  # any nn.Module is accepted, not only ours
    return meta if meta is not None else WeightsMeta(config=model.config)


def save(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    preprocessing: Preprocessing | None = None,
    labels: Sequence[str] | None = None,
    provenance: Mapping[str, Any] | None = None,
    accuracy: Mapping[str, float] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write `model` (a MobileNetV2 with `.config`) to `path` as safetensors, atomically.

    Metadata not given is taken from `model.meta` when the model was loaded from a file.
    """
    old = meta_or_default(model)
    meta = WeightsMeta(
        config=model.config,
        preprocessing=preprocessing or old.preprocessing,
        labels=list(labels) if labels is not None else old.labels,
        provenance=dict(provenance) if provenance is not None else old.provenance,
        accuracy=dict(accuracy) if accuracy is not None else old.accuracy,
        extra=dict(extra) if extra is not None else old.extra,
    )
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    return save_state_dict(tensors, meta, path)


def save_state_dict(
    tensors: Mapping[str, torch.Tensor], meta: WeightsMeta, path: str | os.PathLike
) -> Path:
    """Atomic write (temporary file in the same folder, fsync, rename)."""
    from safetensors.torch import save_file

    return atomic_write(path, lambda tmp: save_file(dict(tensors), str(tmp),
                                                    metadata=meta.to_metadata()))


def read_meta(path: str | os.PathLike) -> WeightsMeta:
    """Read only the metadata of one of our checkpoints (no tensors, no model)."""
    from safetensors import safe_open

    path = existing_file(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            return WeightsMeta.from_metadata(f.metadata() or {}, str(path))
    except UserError:
        raise
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise UserError(f"{path}: not a readable safetensors file ({e})") from e


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model from one of our `.safetensors` files alone; `model.meta` holds
    its preprocessing, labels, provenance and accuracy."""
    from safetensors.torch import load_file

    from mobilenetv2.model import build_model

    meta = read_meta(path)
    try:
        state = load_file(str(path), device=str(map_location))
    except Exception as e:
        raise UserError(f"{path}: corrupt or truncated safetensors file ({e})") from e
    model = build_model(meta.config)
    load_state_dict_checked(model, state, source=str(path))
    model.meta = meta
    return model


def load_state_dict_checked(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint"
) -> None:
    """`load_state_dict(strict=True)` with a precise report: missing and unexpected keys and
    differing shapes, naming the width and resolution the model expected. DDP's `module.`
    (and torch.compile's `_orig_mod.`) prefixes are accepted."""
    state = {strip_prefixes(k): v for k, v in state_dict.items()}
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        cfg = getattr(model, "config", None)
        what = (
            f"width {cfg.width}, resolution {cfg.resolution}, {cfg.num_classes} classes"
            if cfg is not None
            else type(model).__name__
        )
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {few(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {few(unexpected)}")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatch(es): {few(shapes)}")
        raise UserError(f"{source} does not fit MobileNetV2 ({what}): " + "; ".join(parts))
    # NaN or inf weights would predict garbage with exit 0 and "verify" as equal (NaN vs
    # NaN): refuse them here, the one place every route to a model goes through.
    for k, v in state.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            n = int((~torch.isfinite(v)).sum())
            raise UserError(f"{source}: tensor {k} has {n} non-finite value(s) (NaN or inf) "
                            f"of {v.numel()}: the weights are broken")
    model.load_state_dict(state, strict=True)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def source_provenance(path: str | os.PathLike, fmt: str) -> dict[str, str]:
    """Where converted weights came from: the format, the source file and its sha256."""
    return {"format": fmt, "source": str(path), SHA256_KEY: sha256_file(path)}


def is_our_checkpoint(path: str | os.PathLike) -> bool:
    """Whether `path` is a safetensors file with our metadata (False if unreadable)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("format") == FORMAT
    except Exception:  # unreadable: let the reader report it precisely
        return False
