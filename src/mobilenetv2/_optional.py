"""Optional dependencies: import one, or fail with a single error that names the package.

The package's core needs only torch; ONNX, ONNX Runtime and OpenVINO are extras that only
the deployment verbs import, lazily, through `require`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from mobilenetv2.errors import UserError

__all__ = ["require"]


def require(module: str, purpose: str) -> ModuleType:
    """Import `module` (e.g. "onnxruntime.quantization") or raise one `UserError` naming the
    package to install (for every optional dependency here the top-level import name is the
    pip name) and what needed it."""
    pip = module.split(".")[0]
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise UserError(
            f"{purpose} needs the '{pip}' package, which is not installed "
            f"(pip install {pip}): {e}"
        ) from e
