"""Our checkpoint format: safetensors with the model config, preprocessing, labels and
provenance in the file's metadata, so `load` rebuilds the model from the file alone and never
unpickles anything.

Foreign PyTorch files (`.pth`, `.pt`) are read by `read_state_dict` with
`torch.load(weights_only=True)` only: a pickle that would need code execution (any global
outside PyTorch's tensor allowlist) is refused, never run. Training checkpoints that nest the
weights under `state_dict`, `model` or `model_ema` are unwrapped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mobilenetv2.config import ModelConfig
from mobilenetv2.data.preprocessing import Preprocessing
from mobilenetv2.errors import UserError

__all__ = [
    "Converted",
    "WeightsMeta",
    "load",
    "load_meta",
    "load_state_dict_checked",
    "meta_or_default",
    "read_state_dict",
    "save",
    "sha256_file",
]

log = logging.getLogger(__name__)

# Where training scripts nest the weights: torchvision's reference scripts save
# {"model", "model_ema", ...}, timm's {"state_dict", "state_dict_ema", ...}, Lightning
# {"state_dict"}. The plain weights come first (timm's `load_checkpoint` default); EMA when
# asked for or when it is the only copy; the key used is logged and kept in the provenance.
NESTED_KEYS = ("state_dict", "model")
NESTED_EMA_KEYS = ("model_ema", "state_dict_ema")
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")

FORMAT = "mobilenetv2/1"


@dataclass
class WeightsMeta:
    """Everything a checkpoint file says about itself besides the tensors."""

    config: ModelConfig
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    labels: list[str] | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    accuracy: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

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
            return cls(
                config=ModelConfig.from_json(meta["config"]),
                preprocessing=Preprocessing.from_dict(json.loads(meta.get("preprocessing", "{}"))),
                labels=json.loads(meta.get("labels", "null")),
                provenance=json.loads(meta.get("provenance", "{}")),
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
    old: WeightsMeta | None = getattr(model, "meta", None)
    meta = WeightsMeta(
        config=model.config,
        preprocessing=preprocessing or (old.preprocessing if old else Preprocessing()),
        labels=list(labels) if labels is not None else (old.labels if old else None),
        provenance=dict(provenance) if provenance is not None else (old.provenance if old else {}),
        accuracy=dict(accuracy) if accuracy is not None else (old.accuracy if old else {}),
        extra=dict(extra) if extra is not None else (old.extra if old else {}),
    )
    if meta.labels is not None and len(meta.labels) != meta.config.num_classes:
        raise ValueError(
            f"{len(meta.labels)} labels given for a model with {meta.config.num_classes} classes"
        )
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    return save_state_dict(tensors, meta, path)


def save_state_dict(
    tensors: Mapping[str, torch.Tensor], meta: WeightsMeta, path: str | os.PathLike
) -> Path:
    """Atomic write (temporary file in the same folder, fsync, rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(dict(tensors), tmp, metadata=meta.to_metadata())
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_meta(path: str | os.PathLike) -> WeightsMeta:
    """Read only the metadata of one of our checkpoints."""
    from safetensors import safe_open

    path = _existing(path)
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

    from mobilenetv2.model import MobileNetV2

    meta = load_meta(path)
    try:
        state = load_file(str(path), device=str(map_location))
    except Exception as e:
        raise UserError(f"{path}: corrupt or truncated safetensors file ({e})") from e
    model = MobileNetV2(meta.config)
    load_state_dict_checked(model, state, source=str(path))
    model.meta = meta
    return model


def load_state_dict_checked(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint"
) -> None:
    """`load_state_dict(strict=True)` with a precise report: missing and unexpected keys and
    differing shapes, naming the width and resolution the model expected. DDP's `module.`
    (and torch.compile's `_orig_mod.`) prefixes are accepted."""
    state = {_strip_prefixes(k): v for k, v in state_dict.items()}
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
            parts.append(f"{len(missing)} missing key(s): {_few(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {_few(unexpected)}")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatch(es): {_few(shapes)}")
        raise UserError(f"{source} does not fit MobileNetV2 ({what}): " + "; ".join(parts))
    model.load_state_dict(state, strict=True)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_state_dict(
    path: str | os.PathLike, *, use_ema: bool = False
) -> tuple[dict[str, torch.Tensor], str | None]:
    """Tensors of a foreign weights file, without ever executing code from it.

    `.safetensors` files are read with safetensors; anything else with
    `torch.load(weights_only=True)`, which refuses any pickled global outside PyTorch's
    tensor allowlist (a file that needs code execution raises `UserError`, nothing runs).
    Weights nested under `state_dict` / `model` (or `model_ema` / `state_dict_ema` with
    `use_ema=True`) are unwrapped, and DDP / torch.compile key prefixes stripped.

    Returns:
        The flat state dict and the key it was nested under (None for a plain state dict).
    """
    path = _existing(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            raw: Any = load_file(str(path), device="cpu")
        except Exception as e:
            raise UserError(f"{path}: not a readable safetensors file ({e})") from e
    else:
        raw = _torch_load_safe(path)
    state, key = _unwrap(raw, path, use_ema)
    return {_strip_prefixes(k): v for k, v in state.items()}, key


def _torch_load_safe(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch names the offending global ("Unsupported global: GLOBAL argparse.Namespace");
        # show just that, not its multi-paragraph advice to turn the protection off.
        found = re.search(r"(?:Unsupported global|Unsupported operand)[^.]*?: ?(GLOBAL )?([\w.]+)",
                          str(e))
        what = found.group(2) if found else "a non-tensor Python object"
        raise UserError(
            f"{path}: refused: loading it would execute code from the file (it references "
            f"{what}); only plain tensor checkpoints are read (torch.load weights_only=True). "
            f"If you trust its source, re-save just its state dict as safetensors or .pth"
        ) from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable PyTorch checkpoint ({_first_line(e)})") from e


def _unwrap(
    raw: Any, path: Path, use_ema: bool
) -> tuple[Mapping[str, torch.Tensor], str | None]:
    if not isinstance(raw, Mapping):
        raise UserError(
            f"{path}: holds a {type(raw).__name__}, not a state dict (a mapping of names to "
            f"tensors)"
        )
    # EMA weights only on request, or when they are all the checkpoint holds.
    order = NESTED_EMA_KEYS if use_ema else (*NESTED_KEYS, *NESTED_EMA_KEYS)
    key = next((k for k in order if isinstance(raw.get(k), Mapping)), None)
    if use_ema and key is None:
        raise UserError(
            f"{path}: no EMA weights (none of {', '.join(NESTED_EMA_KEYS)}); top-level keys: "
            f"{_few(sorted(map(str, raw)))}"
        )
    if key is not None:
        log.info("%s: using the weights nested under %r", path, key)
        state = dict(raw[key])
        # torch.optim.swa_utils.AveragedModel (torchvision's EMA) adds a step counter.
        state.pop("n_averaged", None)
        state.pop("module.n_averaged", None)
    else:
        state = dict(raw)
    bad = sorted(str(k) for k, v in state.items() if not isinstance(v, torch.Tensor))
    if bad:
        hint = [k for k in (*NESTED_KEYS, *NESTED_EMA_KEYS) if k in raw]
        raise UserError(
            f"{path}: not a state dict: non-tensor entries {_few(bad)}"
            + (f" (weights are under {hint[0]!r}?)" if hint else "")
        )
    return state, key


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _strip_prefixes(key: str) -> str:
    for prefix in ("module.", "_orig_mod."):
        while key.startswith(prefix):
            key = key[len(prefix):]
    return key


def _few(items: Sequence[str], n: int = 4) -> str:
    return ", ".join(items[:n]) + (f" (+{len(items) - n} more)" if len(items) > n else "")


def _existing(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(2, "No such file", str(p))
    if p.is_dir():
        raise IsADirectoryError(21, "Is a directory", str(p))
    return p
