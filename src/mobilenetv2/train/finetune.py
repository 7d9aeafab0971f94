"""The network a run trains: a fresh one, or one loaded from `--weights` with a new head for the
data's classes (fine-tuning), and which of its parts are frozen.

Freezing is an explicit value, not a flag on the model: `apply_freeze` stops the gradients of
the frozen parts and returns the parts whose BatchNorm layers must stay in eval mode, which the
run hands to the training loop (`StepContext.frozen_bn`, read by `engine.keep_frozen_bn`).
"""

from __future__ import annotations

import logging

from torch import nn

from mobilenetv2.config import RunConfig
from mobilenetv2.model import MobileNetV2

__all__ = ["apply_freeze", "build_model"]

log = logging.getLogger(__name__)


def build_model(cfg: RunConfig, num_classes: int) -> MobileNetV2:
    """`cfg.train.weights` with a `num_classes` head and the configured dropout, or a new
    network of `cfg.model` (the caller seeds torch first)."""
    if cfg.train.weights:
        from mobilenetv2.weights import load_weights

        model = load_weights(cfg.train.weights)
        if model.num_classes != num_classes:
            log.info("new %d-class head on %s (was %d classes)", num_classes,
                     cfg.train.weights, model.num_classes)
            model.reset_classifier(num_classes)
        if model.config.dropout != cfg.model.dropout:
            model.config = model.config.replace(dropout=cfg.model.dropout)
            model.dropout.p = cfg.model.dropout
        return model
    return MobileNetV2(cfg.model.replace(num_classes=num_classes))


def apply_freeze(model: MobileNetV2, freeze: str, freeze_bn: bool) -> tuple[nn.Module, ...]:
    """Stop the gradients of the frozen parts; return the parts whose BatchNorm statistics
    stay frozen (BN layers kept in eval mode while training).

    Args:
        freeze: "none"; "backbone": only the classifier trains; "stages:K": the stem and
            Table 2's first K stages are frozen.
        freeze_bn: Keep every BatchNorm of the network in eval mode.
    """
    frozen: list[nn.Module] = []
    if freeze == "backbone":
        frozen = [model.stem, model.blocks, model.head]
    elif freeze.startswith("stages:"):
        k = int(freeze.split(":")[1])
        frozen = [model.stem] + [b for b, spec in zip(model.blocks, model.arch.blocks)
                                 if spec.stage < k]
    for m in frozen:
        for p in m.parameters():
            p.requires_grad_(False)
    return (model,) if freeze_bn else tuple(frozen)
