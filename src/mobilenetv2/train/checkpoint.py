"""Training checkpoints: everything needed to resume bit-exactly, written atomically.

A checkpoint holds the model, optimizer, scheduler, EMA and AMP-scaler states, the step and
epoch counters, every RNG state (Python, NumPy, torch CPU and CUDA; the data order itself is a
function of seed and epoch, see `data.loaders`) and the effective configuration. Files are
written to a temporary name in the same folder, fsynced, then renamed, so a crash or SIGKILL
leaves either the previous or the new checkpoint, never half of one. The shipped weights
(`model.safetensors`) use our safetensors format instead; these `.pt` files exist to resume.
"""

from __future__ import annotations

import logging
import os
import random
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mobilenetv2._files import atomic_write, check_output
from mobilenetv2.errors import UserError

__all__ = [
    "check_run_dir",
    "checkpoint_name",
    "find_latest",
    "load_checkpoint",
    "prune_checkpoints",
    "resolve_resume",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
]

log = logging.getLogger(__name__)
PATTERN = re.compile(r"^checkpoint-(\d{8})\.pt$")


def rng_state() -> dict[str, Any]:
    """Every RNG state as plain tensors, lists and ints (loadable with weights_only=True)."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": _to_plain(random.getstate()),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)),
                  *[_to_plain(s) for s in np_state[2:]]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_to_tuple(state["python"]))
    np_state = state["numpy"]
    np.random.set_state((np_state[0], np_state[1].numpy().astype(np.uint32), *np_state[2:]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def check_run_dir(out: str | os.PathLike, weights: str | None) -> None:
    """Before anything starts: `out` must be a folder (or not exist yet), and the files a
    run writes there must not be the weights it starts from."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is a file, not a run directory")
    for name in ("model.safetensors", "best.pt"):
        check_output(out / name, [weights], what="the run's weights")


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """`torch.save` through the atomic writer (temporary file, fsync, rename)."""
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a training checkpoint (tensors and plain containers only: weights_only)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--resume: no checkpoint at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a corrupt file raises many different error types
        raise UserError(f"--resume: {path} is not a readable training checkpoint ({e})") from e


def find_latest(run_dir: str | os.PathLike) -> Path | None:
    """The newest `checkpoint-<step>.pt` in `run_dir`, or None."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return None
    found = sorted(p for p in run_dir.iterdir() if PATTERN.match(p.name))
    return found[-1] if found else None


def resolve_resume(resume: str | os.PathLike | None, out: str | os.PathLike) -> Path | None:
    """The checkpoint `--resume` means: None for no resume; "auto" is the newest checkpoint in
    the run directory `out`, a directory its newest checkpoint, anything else a checkpoint
    file (checked when it is loaded).

    In a directory, a newest checkpoint that cannot be read (a run killed while the disk was
    full, a truncated copy) is passed over with a warning naming it and the older intact one
    used instead.

    Raises:
        UserError: The directory holds no (readable) `checkpoint-<step>.pt`.
    """
    if resume is None:
        return None
    src = Path(out) if str(resume) == "auto" else Path(resume)
    if str(resume) != "auto" and not src.is_dir():
        return src
    found = sorted((p for p in src.iterdir() if PATTERN.match(p.name)), reverse=True) \
        if src.is_dir() else []
    if not found:
        raise UserError(f"--resume: no checkpoint-*.pt in {src}")
    for i, path in enumerate(found):
        # A torch checkpoint is a zip archive whose directory is written last: a truncated
        # one has none. Checking that is enough to choose, without unpickling every tensor
        # once more (the chosen file is loaded by the caller anyway).
        try:
            with zipfile.ZipFile(path):
                pass
        except (zipfile.BadZipFile, OSError) as e:
            log.warning("--resume: %s is not a readable training checkpoint (%s)", path, e)
            continue
        if i:
            log.warning("--resume: the newest checkpoint %s is unreadable; resuming from %s, "
                        "the newest intact one", found[0].name, path.name)
        return path
    raise UserError(f"--resume: none of the {len(found)} checkpoints in {src} is readable "
                    f"(newest: {found[0].name})")


def prune_checkpoints(run_dir: str | os.PathLike, keep: int) -> None:
    """Delete all but the newest `keep` step checkpoints (best.pt is never touched)."""
    found = sorted(p for p in Path(run_dir).iterdir() if PATTERN.match(p.name))
    for old in found[:-keep]:
        old.unlink(missing_ok=True)


def checkpoint_name(step: int) -> str:
    return f"checkpoint-{step:08d}.pt"


def _to_plain(obj: Any) -> Any:
    if isinstance(obj, tuple):
        return [_to_plain(o) for o in obj]
    return obj


def _to_tuple(obj: Any) -> Any:
    if isinstance(obj, list):
        return tuple(_to_tuple(o) for o in obj)
    return obj
