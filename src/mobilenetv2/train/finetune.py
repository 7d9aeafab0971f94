"""Which parts of the network a run trains (fine-tuning); the network itself is built by the
run's task (`tasks.classify.build_classifier` for the classifier).

Freezing is an explicit value, not a flag on the model: `apply_freeze` stops the gradients of
the frozen parts and returns the parts whose BatchNorm layers must stay in eval mode, which the
run hands to the training loop (`StepContext.frozen_bn`, read by `engine.keep_frozen_bn`).
"""

from __future__ import annotations

from torch import nn

from mobilenetv2.model import MobileNetV2

__all__ = ["apply_freeze"]


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
