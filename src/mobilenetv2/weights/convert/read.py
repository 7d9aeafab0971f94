"""Reading foreign PyTorch weight files safely: `read_foreign_state_dict`.

`.pth` / `.pt` / `.bin` / `.ckpt` files are read with `torch.load(weights_only=True)` only: a
pickle that would need code execution (any global outside PyTorch's tensor allowlist) is
refused, never run. Foreign `.safetensors` files are read with safetensors. Training
checkpoints that nest the weights under `state_dict`, `model` or `model_ema` are unwrapped, and
DDP / torch.compile key prefixes stripped.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from mobilenetv2.errors import UserError
from mobilenetv2.weights._common import existing_file, few, strip_prefixes

__all__ = ["NESTED_EMA_KEYS", "NESTED_KEYS", "TORCH_SUFFIXES", "read_foreign_state_dict"]

log = logging.getLogger(__name__)

# Where training scripts nest the weights: torchvision's reference scripts save
# {"model", "model_ema", ...}, timm's {"state_dict", "state_dict_ema", ...}, Lightning
# {"state_dict"}. The plain weights come first (timm's `load_checkpoint` default); EMA when
# asked for or when it is the only copy; the key used is logged and kept in the provenance.
NESTED_KEYS = ("state_dict", "model")
NESTED_EMA_KEYS = ("model_ema", "state_dict_ema")
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")


def read_foreign_state_dict(
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
    path = existing_file(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            raw: Any = load_file(str(path), device="cpu")
        except Exception as e:
            raise UserError(f"{path}: not a readable safetensors file ({e})") from e
    else:
        raw = _torch_load_safe(path)
    state, key = _unwrap(raw, path, use_ema)
    return {strip_prefixes(k): v for k, v in state.items()}, key


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
            f"{few(sorted(map(str, raw)))}"
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
            f"{path}: not a state dict: non-tensor entries {few(bad)}"
            + (f" (weights are under {hint[0]!r}?)" if hint else "")
        )
    return state, key


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
