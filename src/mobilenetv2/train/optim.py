"""Optimizers, parameter groups and the learning-rate schedule (DESIGN example 12).

`RMSpropTF` is RMSProp as TensorFlow implements it (`tf.compat.v1.train.RMSPropOptimizer`,
`training_ops.ApplyRMSProp`), which the paper's recipe (section 6.1: RMSProp, decay and
momentum 0.9, lr 0.045, weight decay 4e-5) and TF-slim's `train_image_classifier.py`
(`--opt_epsilon=1.0`) use. It differs from `torch.optim.RMSprop` in three ways that matter
with epsilon 1.0:

    ms  <- rho * ms + (1 - rho) * g**2          ms starts at 1, not 0
    mom <- momentum * mom + lr * g / sqrt(ms + eps)   eps inside the square root
    w   <- w - mom                               the learning rate lives in the momentum
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from mobilenetv2.config import TrainConfig

__all__ = ["RMSpropTF", "build_optimizer", "lr_at", "param_groups"]


class RMSpropTF(torch.optim.Optimizer):
    """RMSProp with TensorFlow semantics (see the module docstring).

    Weight decay is coupled (added to the gradient), like TF-slim's L2 regularizer
    `weight_decay * sum(w**2) / 2` added to the loss.
    """

    def __init__(self, params: Iterable, lr: float = 0.045, rho: float = 0.9,
                 momentum: float = 0.9, eps: float = 1.0, weight_decay: float = 0.0) -> None:
        if lr <= 0 or eps <= 0 or not 0 <= rho < 1 or not 0 <= momentum < 1:
            raise ValueError(f"invalid RMSpropTF settings lr={lr} rho={rho} momentum={momentum} "
                             f"eps={eps}")
        super().__init__(params, dict(lr=lr, rho=rho, momentum=momentum, eps=eps,
                                      weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 - torch's signature
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if group["weight_decay"]:
                    g = g.add(p, alpha=group["weight_decay"])
                state = self.state[p]
                if not state:
                    state["square_avg"] = torch.ones_like(p)
                    state["momentum_buffer"] = torch.zeros_like(p)
                ms, mom = state["square_avg"], state["momentum_buffer"]
                ms.mul_(group["rho"]).addcmul_(g, g, value=1 - group["rho"])
                denom = ms.add(group["eps"]).sqrt_()
                mom.mul_(group["momentum"]).addcdiv_(g, denom, value=group["lr"])
                p.sub_(mom)
        return loss


def param_groups(model: nn.Module, weight_decay: float, decay_all: bool = False) -> list[dict]:
    """Two groups: decayed conv/linear kernels, and undecayed BatchNorm, biases and
    depthwise kernels (their few weights regularise badly: the torchvision V2 recipe's
    `--norm-weight-decay 0`, TF-slim's MobileNet `regularize_depthwise=False`)."""
    no_decay: set[int] = set()
    if not decay_all:
        for m in model.modules():
            if isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels:
                no_decay.add(id(m.weight))
        for p in model.parameters():
            if p.ndim <= 1:
                no_decay.add(id(p))
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if id(p) not in no_decay], "weight_decay": weight_decay},
        {"params": [p for p in params if id(p) in no_decay], "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
    """The optimizer `cfg.optimizer` over `param_groups(model)` at learning rate `lr`."""
    groups = param_groups(model, cfg.weight_decay, cfg.decay_all)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum)
    if cfg.optimizer == "rmsprop_tf":
        return RMSpropTF(groups, lr=lr, rho=cfg.rmsprop_decay, momentum=cfg.momentum,
                         eps=cfg.rmsprop_eps)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}")


# DeepLab's `learning_power` (research/deeplab/common.py, train.py).
POLY_POWER = 0.9


def lr_at(step: int, cfg: TrainConfig, steps_per_epoch: int, base_lr: float) -> float:
    """Learning rate at optimizer step `step` (pure; DESIGN example 11).

    Linear warmup over `warmup_epochs`, then cosine to `min_lr` over the remaining steps,
    or the paper's staircase decay by `lr_decay` after every epoch (TF-slim's
    `exponential_decay(staircase=True)`), or constant.
    """
    total = cfg.epochs * steps_per_epoch
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return base_lr * (cfg.warmup_start + (1 - cfg.warmup_start) * step / warmup)
    if cfg.schedule == "cosine":
        t = min(1.0, (step - warmup) / max(1, total - warmup))
        return cfg.min_lr + (base_lr - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * t))
    if cfg.schedule == "exponential":
        return base_lr * cfg.lr_decay ** (step // steps_per_epoch)
    if cfg.schedule == "poly":
        # DeepLab's `learning_policy=poly` (utils/train_utils.py): power 0.9, to 0 at the end.
        t = min(1.0, (step - warmup) / max(1, total - warmup))
        return base_lr * (1 - t) ** POLY_POWER
    return base_lr
