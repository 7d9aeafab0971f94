"""Exponential moving average of the weights (the paper's recipe: decay 0.9999, as TF-slim's
`--moving_average_decay`; torchvision's V2 recipe `--model-ema`). The EMA weights are the
ones evaluated and shipped when it is on."""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["ModelEma"]


class ModelEma:
    """`ema = d * ema + (1 - d) * weights` over parameters and floating-point buffers
    (BatchNorm statistics), integer buffers copied.

    With `warmup`, d = min(decay, (1 + n) / (10 + n)) after n updates (TF's
    `ExponentialMovingAverage(num_updates=...)`), so short runs are not dominated by the
    random initialisation. Updating every `every` steps uses decay**every.
    """

    def __init__(self, model: nn.Module, decay: float, every: int = 1, warmup: bool = True,
                 ) -> None:
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.every = every
        self.warmup = warmup
        self.updates = 0

    def current_decay(self) -> float:
        d = self.decay ** self.every
        if self.warmup:
            d = min(d, (1 + self.updates) / (10 + self.updates))
        return d

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        ema_state = self.module.state_dict()
        for name, value in model.state_dict().items():
            ema = ema_state[name]
            if ema.is_floating_point():
                ema.lerp_(value.detach().to(ema.dtype), 1.0 - d)
            else:
                ema.copy_(value)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
