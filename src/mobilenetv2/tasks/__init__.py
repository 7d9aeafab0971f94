"""The paper's applications as the training machinery sees them (see `tasks.base`).

`get_task(name)` returns the `Task` for `ModelConfig.task`; a new task adds one row here.
"""

from __future__ import annotations

import importlib

from mobilenetv2.tasks.base import Metrics, StepOut, Task, TaskData

__all__ = ["Metrics", "StepOut", "Task", "TaskData", "get_task"]

# task name -> (module, class); imported on first use.
_TASKS: dict[str, tuple[str, str]] = {
    "classify": ("mobilenetv2.tasks.classify", "ClassifyTask"),
    "segment": ("mobilenetv2.tasks.segment", "SegmentTask"),
    "detect": ("mobilenetv2.tasks.detect", "DetectTask"),
}


def get_task(name: str) -> Task:
    """The `Task` for `ModelConfig.task`."""
    try:
        module, cls = _TASKS[name]
    except KeyError:
        raise ValueError(f"no training task {name!r}; known: {', '.join(_TASKS)}") from None
    return getattr(importlib.import_module(module), cls)()
