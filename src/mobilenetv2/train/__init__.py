"""Training: recipes, loops, optimizers, EMA, checkpoints, DDP (paper section 6.1).

`train`, `make_config`, `RunConfig` and `TrainResult` load lazily, so that
`mobilenetv2.evaluate` can use `train.engine` without importing the whole run machinery.
"""

from __future__ import annotations

from typing import Any

__all__ = ["RunConfig", "TrainResult", "make_config", "train"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from mobilenetv2.train import run

        return getattr(run, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
