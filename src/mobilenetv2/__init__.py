"""mobilenetv2: MobileNetV2 (Sandler et al., CVPR 2018, arXiv 1801.04381) done right.

The public API. Its names load on first use (PEP 562 `__getattr__`), so `import mobilenetv2`
and the command's `--help` do not import torch; `from mobilenetv2 import MobileNetV2` and
`mobilenetv2.create_model(...)` work as if they were imported here.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from mobilenetv2._version import __version__

if TYPE_CHECKING:  # what the names below are, for readers and type checkers
    from mobilenetv2.config import ModelConfig
    from mobilenetv2.model import (
        MobileNetV2,
        MobileNetV2Backbone,
        MobileNetV2Features,
        make_divisible,
        resolve,
    )
    from mobilenetv2.profile import profile
    from mobilenetv2.registry import VARIANTS, create_model
    from mobilenetv2.weights import load, load_weights, save

# Public name -> the module it comes from.
_SOURCES: dict[str, str] = {
    "VARIANTS": "mobilenetv2.registry",
    "MobileNetV2": "mobilenetv2.model",
    "MobileNetV2Backbone": "mobilenetv2.model",
    "MobileNetV2Features": "mobilenetv2.model",
    "ModelConfig": "mobilenetv2.config",
    "create_model": "mobilenetv2.registry",
    "load": "mobilenetv2.weights",
    "load_weights": "mobilenetv2.weights",
    "make_divisible": "mobilenetv2.model",
    "profile": "mobilenetv2.profile",
    "resolve": "mobilenetv2.model",
    "save": "mobilenetv2.weights",
}

__all__ = [
    "VARIANTS",
    "MobileNetV2",
    "MobileNetV2Backbone",
    "MobileNetV2Features",
    "ModelConfig",
    "__version__",
    "create_model",
    "load",
    "load_weights",
    "make_divisible",
    "profile",
    "resolve",
    "save",
]


def __getattr__(name: str) -> Any:
    if name not in _SOURCES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_SOURCES[name]), name)
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """The package module, which keeps each public name meaning the function it exports.

    Importing a submodule binds it on the package under its own name; `mobilenetv2.profile`
    is both a submodule and the public function `profile`. An eager `from ... import` in
    this file used to rebind the function afterwards; lazily, the submodule is not bound over
    the name instead.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _SOURCES and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
