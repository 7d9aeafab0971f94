"""Which backend won `auto`'s race, remembered across processes.

A one-image `predict` with `--backend auto` paid for a race (warm-up and timed runs on two
runtimes) on every call. The winner depends on the model, the input shape, the precision,
the thread count and the machine, so the result is stored under all of these in one small
JSON file (`<cache>/races.json`) and reused; a different CPU model, thread count or set of
installed backends races again, and so does an upgrade of any of them (each candidate's
installed version, or for the native engine its build, is part of the key: a winner timed
against last month's ONNX Runtime says nothing about this month's).
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from mobilenetv2._files import atomic_write
from mobilenetv2.runtime.cpu import cpu_info

__all__ = ["RaceCache", "backend_build"]

log = logging.getLogger(__name__)


# Distributions a backend's module may come from, beyond its own name with "_" as "-"
# (importlib.metadata.packages_distributions() would find them all, in 0.5 s here).
_OTHER_DISTRIBUTIONS = {"onnxruntime": ("onnxruntime-gpu", "onnxruntime-openvino")}


def backend_build(name: str) -> str:
    """What identifies the installed build of backend `name`: its distribution's version,
    or for the native engine (built in place by the install, whatever the package version)
    its compiled module's size and modification time. Nothing is imported but our own
    extension: a cache hit must not pay for loading OpenVINO."""
    from mobilenetv2.runtime.backends import BACKENDS

    if name == "native":
        from mobilenetv2.runtime import native

        engine = getattr(native, "_engine", None)
        if engine is None or not getattr(engine, "__file__", None):
            return "unbuilt"
        st = os.stat(engine.__file__)
        return f"{st.st_size}-{st.st_mtime_ns}"
    package = BACKENDS[name].package.split(".")[0] if name in BACKENDS else name
    for dist in (package.replace("_", "-"), *_OTHER_DISTRIBUTIONS.get(package, ())):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "unknown"


class RaceCache:
    """Race winners in a JSON file, keyed by model, shape, precision, threads and machine.

    Args:
        path: The JSON file (created on first `put`).
        model_key: What identifies the model's weights (e.g. a hash of its tensors).
    """

    def __init__(self, path: str | os.PathLike, model_key: str) -> None:
        self.path = Path(path)
        self.model_key = model_key

    def key(self, shape: Sequence[int], precision: str, threads: int | None,
            candidates: Sequence[str]) -> str:
        return "|".join([self.model_key, "x".join(map(str, shape)), precision,
                         str(threads or "default"),
                         ",".join(f"{c}={backend_build(c)}" for c in candidates),
                         cpu_info().model])

    def _read(self) -> dict[str, str]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}  # none yet, or unreadable: race again and rewrite it
        return data if isinstance(data, dict) else {}

    def get(self, key: str) -> str | None:
        return self._read().get(key)

    def put(self, key: str, winner: str) -> None:
        data = self._read()
        data[key] = winner
        try:
            atomic_write(self.path, lambda tmp: tmp.write_text(json.dumps(data, indent=1)))
        except OSError as e:  # a read-only cache costs speed, never the prediction
            log.debug("race cache %s not written: %s", self.path, e)
