"""Data loaders whose order and augmentation are pure functions of (seed, epoch, position).

That is what makes a resumed run bit-identical to an uninterrupted one: the sampler is
torch's `DistributedSampler` (one replica when not distributed) and can start mid-epoch,
and every sample's augmentation is drawn from a generator seeded by (seed, epoch, index),
whatever worker process happens to load it. Mixup and cutmix draw from a per-step seed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from mobilenetv2.data.datasets import SKIPPED

__all__ = ["ResumableSampler", "SeededDataset", "collate_skipping", "make_loader", "mix_batch"]

log = logging.getLogger(__name__)


class ResumableSampler(DistributedSampler):
    """`DistributedSampler` (shuffle with `set_epoch`, shard per rank) that can skip the
    first `start_batch` batches of an epoch and yields (index, sample seed) pairs."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, shuffle: bool,
                 seed: int, batch_size: int, drop_last: bool = False) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle,
                         seed=seed, drop_last=drop_last)
        self.batch_size = batch_size
        self.start_batch = 0

    def set_start(self, batch: int) -> None:
        """Begin the next iteration at this batch of the epoch (resume mid-epoch)."""
        self.start_batch = batch

    def _indices(self) -> list[int]:
        if not self.shuffle:
            # Evaluation: every image exactly once over all ranks (no padding duplicates).
            return list(range(self.rank, len(self.dataset), self.num_replicas))  # type: ignore
        return list(super().__iter__())

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        for i in self._indices()[self.start_batch * self.batch_size:]:
            yield i, sample_seed(self.seed, self.epoch, i)

    def __len__(self) -> int:
        n = (len(range(self.rank, len(self.dataset), self.num_replicas))  # type: ignore
             if not self.shuffle else self.num_samples)
        return max(0, n - self.start_batch * self.batch_size)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 63-bit seed for one sample of one epoch."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, np.uint64)[0]
               >> np.uint64(1))


class SeededDataset(Dataset):
    """Wraps a dataset so `ds[(index, seed)]` draws its random augmentation from `seed`.

    The global torch RNG is saved and restored around the transform, so dropout and other
    consumers in the main process never see the augmentation's draws.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        state = torch.get_rng_state()
        torch.manual_seed(seed)
        try:
            return self.dataset[index]
        finally:
            torch.set_rng_state(state)


def collate_skipping(batch: list[tuple[Any, Any]]) -> tuple[torch.Tensor, torch.Tensor, list]:
    """Stack a batch, dropping samples a dataset marked unreadable; returns their paths."""
    good = [(x, y) for x, y in batch if not (isinstance(x, str) and x == SKIPPED)]
    skipped = [y for x, y in batch if isinstance(x, str) and x == SKIPPED]
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), skipped
    xs = torch.stack([x for x, _ in good])
    ys = torch.tensor([int(y) for _, y in good], dtype=torch.long)
    return xs, ys, skipped


def auto_workers(requested: int) -> int:
    """-1 means: as many workers as the CPUs (up to 8) leave besides the training process;
    none on a 2-core machine, where a worker only competes with the math for the cores."""
    if requested >= 0:
        return requested
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return 0 if (cpus or 1) <= 2 else min(8, (cpus or 1) - 1)


def make_loader(dataset: Dataset, batch_size: int, *, train: bool, seed: int,
                num_workers: int, world_size: int = 1, rank: int = 0,
                pin_memory: bool = False,
                collate_fn: Callable[[list], Any] = collate_skipping) -> DataLoader:
    """A loader over `SeededDataset(dataset)`; for training the sampler shuffles and drops
    the last incomplete batch (BatchNorm on a batch of 1 fails), for evaluation it keeps
    every image and shards across ranks."""
    sampler = ResumableSampler(dataset, world_size, rank, shuffle=train, seed=seed,
                               batch_size=batch_size, drop_last=False)
    workers = auto_workers(num_workers)
    return DataLoader(
        SeededDataset(dataset), batch_size=batch_size, sampler=sampler, num_workers=workers,
        collate_fn=collate_fn, drop_last=train, pin_memory=pin_memory,
        persistent_workers=workers > 0,
        # Its own generator: creating an iterator must not draw from the global RNG (dropout's),
        # or a resumed run would see a different dropout sequence.
        generator=torch.Generator().manual_seed(seed),
    )


def mix_batch(x: torch.Tensor, y: torch.Tensor, num_classes: int, mixup_alpha: float,
              cutmix_alpha: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup (Zhang et al. 2018) or cutmix (Yun et al. 2019), one of them per batch with
    equal probability when both are on, as torchvision's reference recipe does. Returns the
    mixed images and soft targets."""
    target = torch.nn.functional.one_hot(y, num_classes).to(x.dtype)
    if (mixup_alpha <= 0 and cutmix_alpha <= 0) or len(x) < 2:
        return x, target
    rng = np.random.default_rng(seed)
    use_cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or rng.random() < 0.5)
    lam = float(rng.beta(cutmix_alpha, cutmix_alpha) if use_cutmix
                else rng.beta(mixup_alpha, mixup_alpha))
    x2, t2 = x.roll(1, 0), target.roll(1, 0)
    if use_cutmix:
        h, w = x.shape[-2:]
        cy, cx = int(rng.integers(h)), int(rng.integers(w))
        rh, rw = int(h * np.sqrt(1 - lam)) // 2, int(w * np.sqrt(1 - lam)) // 2
        y0, y1, x0, x1 = max(cy - rh, 0), min(cy + rh, h), max(cx - rw, 0), min(cx + rw, w)
        x = x.clone()
        x[..., y0:y1, x0:x1] = x2[..., y0:y1, x0:x1]
        lam = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)
    else:
        x = x * lam + x2 * (1 - lam)
    return x, target * lam + t2 * (1 - lam)
