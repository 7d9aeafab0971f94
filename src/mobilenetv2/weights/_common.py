"""Small helpers the weights modules share: the file check before reading, the short lists in
error messages, and the wrapper prefixes (DDP, torch.compile) stripped from state-dict keys."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

__all__ = ["existing_file", "few", "strip_prefixes"]

# DistributedDataParallel saves `module.*`, torch.compile `_orig_mod.*` (both may nest).
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def existing_file(path: str | os.PathLike) -> Path:
    """`path` as a Path; FileNotFoundError / IsADirectoryError (which the CLI prints as one
    line naming the path) when it is missing or a folder."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(2, "No such file", str(p))
    if p.is_dir():
        raise IsADirectoryError(21, "Is a directory, not a weights file", str(p))
    return p


def strip_prefixes(key: str) -> str:
    """A state-dict key without the prefixes DDP and torch.compile add."""
    for prefix in WRAPPER_PREFIXES:
        while key.startswith(prefix):
            key = key[len(prefix):]
    return key


def few(items: Sequence[str], n: int = 4) -> str:
    """The first `n` items, comma-separated, and how many more there are."""
    return ", ".join(items[:n]) + (f" (+{len(items) - n} more)" if len(items) > n else "")
