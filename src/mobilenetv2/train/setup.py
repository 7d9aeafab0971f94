"""A training run's machine setup, before its first step: the thread and loader-worker
budget and torch's switches (`configure_torch`), the precision and memory layout
(`choose_step_setup`, measured by `train.tune`), and the seeds. Split from `train.run`,
which wires a run together from these.
"""

from __future__ import annotations

import logging
import os
import random

import numpy as np
import torch
from torch import nn

from mobilenetv2.config import TrainConfig
from mobilenetv2.tasks import Task
from mobilenetv2.train.amp import choose_amp, choose_memory_format
from mobilenetv2.train.budget import Budget, available_cores, plan_budget
from mobilenetv2.train.distributed import DistInfo
from mobilenetv2.train.malloc import retain_freed_memory
from mobilenetv2.train.tune import Candidate, TuneChoice, choose_setup

__all__ = ["choose_step_setup", "configure_torch", "seed_everything"]

log = logging.getLogger(__name__)


def configure_torch(tc: TrainConfig, workers: int, device: torch.device,
                     dist: DistInfo) -> Budget:
    """Thread and loader-worker budget (`train.budget`), the allocator (`train.malloc`:
    on CPUs a step's large tensors then reuse mapped pages) and the torch switches."""
    if device.type == "cpu":
        retain_freed_memory()
        # Under torchrun the processes on this machine share its cores.
        local = int(os.environ.get("LOCAL_WORLD_SIZE", dist.world_size if dist.enabled else 1))
        budget = plan_budget(max(1, available_cores() // max(1, local)), workers, tc.threads)
        if budget.oversubscribed:
            log.warning("%s: more busy threads than cores; training will be slower than "
                        "with fewer (see --threads and --num-workers)", budget.describe())
    else:  # a GPU computes: the CPU's cores feed it
        from mobilenetv2.data.loaders import auto_workers

        budget = Budget(threads=tc.threads or torch.get_num_threads(),
                        workers=auto_workers(workers), cores=available_cores())
    torch.set_num_threads(budget.threads)
    if tc.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return budget


def choose_step_setup(tc: TrainConfig, device: torch.device, model: nn.Module, size: int,
                  batch: int, dist: DistInfo, task: Task) -> TuneChoice:
    """Precision and memory layout (`train.tune`); under DDP rank 0 decides for all.
    Segmentation and detection keep `train.amp`'s rule: the tuner times a classifier's
    step (cross-entropy on logits)."""
    if task.name != "classify":
        rule = Candidate("train.amp's rule", choose_amp(tc, device, model.config, size),
                         choose_memory_format(tc))
        return TuneChoice(rule, "fixed")

    def broadcast(name: str | None) -> str:
        box = [name]
        torch.distributed.broadcast_object_list(box, src=0)
        return str(box[0])

    return choose_setup(tc, device, model, max(size, model.config.min_input_size), batch,
                        broadcast=broadcast if dist.enabled else None)


def seed_everything(seed: int, rank: int) -> None:
    random.seed(seed + rank)
    np.random.seed((seed + rank) % 2**32)
    torch.manual_seed(seed + rank)
