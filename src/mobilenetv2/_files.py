"""Writing files safely: the one atomic writer, and the guard that no verb overwrites its
own input or writes a format under another format's suffix.

`atomic_write` writes through a temporary file in the destination's folder, fsyncs it and
renames it over the destination, so a crash, a full disk or a failed verification never
leaves a half-written file (or destroys the old one). The temporary file is created 0600 by
`mkstemp`; the result gets the permissions any other file of the user gets (0666 less the
umask), so models, ONNX files, JSON and PNGs are alike.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from mobilenetv2.errors import UserError

__all__ = ["atomic_write", "check_output", "umask_mode"]


def umask_mode() -> int:
    """0666 less the process's umask: the mode `open()` would give a new file."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object],
                 suffix: str = ".tmp") -> Path:
    """Call `write(tmp)` to produce the file at a temporary path beside `path`, then fsync
    and rename it to `path`. `suffix` is the temporary file's (some writers choose the
    format by suffix). Nothing is left behind when `write` raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, umask_mode())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:  # some filesystems cannot open folders; the rename itself is done
        return path
    try:
        os.fsync(dir_fd)  # the rename itself survives a power loss
    finally:
        os.close(dir_fd)
    return path


def check_output(out: str | os.PathLike, inputs: Iterable[str | os.PathLike | None] = (),
                 suffixes: Iterable[str] = (), what: str = "the output") -> Path:
    """Refuse (`UserError`) an output path that is one of the verb's inputs, or whose
    suffix is not one the format implies (`suffixes`, case-insensitive; empty: any)."""
    out = Path(out)
    allowed = tuple(s.lower() for s in suffixes)
    if allowed and not out.name.lower().endswith(allowed):
        raise UserError(f"{out}: {what} must end in {' or '.join(allowed)} (the suffix says "
                        f"what the file is)")
    for src in inputs:
        if src is None or not os.path.exists(src):
            continue
        if out.exists() and os.path.samefile(out, src):
            raise UserError(f"{out}: is an input of this command ({src}); refusing to "
                            f"overwrite it: choose another output name")
    return out
