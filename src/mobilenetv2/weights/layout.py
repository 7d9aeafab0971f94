"""Rename rules as data, shared by the PyTorch-ecosystem converters (torchvision, timm).

A `Layout` says, per paper role (stem, t = 1 block, bottleneck block, head, classifier),
which foreign module holds the weights of which of ours. `convert_state_dict` infers our
`ModelConfig` (width, last-layer rule, classes) from the foreign tensor shapes, maps every key,
checks every shape exactly and fails loudly on anything missing, unexpected or mis-shaped.
Pure functions: a foreign state dict in, a `Converted` out.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from mobilenetv2.config import ModelConfig
from mobilenetv2.data.preprocessing import Preprocessing
from mobilenetv2.errors import UserError
from mobilenetv2.model.arch import STAGES, ArchSpec, BlockSpec, resolve
from mobilenetv2.weights.format import Converted, WeightsMeta, read_state_dict
from mobilenetv2.weights.imagenet import imagenet_labels

__all__ = ["STANDARD_WIDTHS", "Layout", "convert_layout", "convert_state_dict", "infer_config",
           "key_map"]

# Tried first, in this order, so a file gets the width it was published with when several
# multipliers resolve to identical channel counts.
STANDARD_WIDTHS = (1.0, 0.35, 0.5, 0.75, 1.3, 1.4)
# BatchNorm buffers older files may lack (torch < 0.4.1 had no num_batches_tracked).
OPTIONAL_LEAVES = ("num_batches_tracked",)


@dataclass(frozen=True)
class Layout:
    """Where a foreign implementation keeps each of our modules.

    Each dict maps our module path (relative to the stem, a block, the head) to the foreign
    one. `block_prefix(spec)` is the foreign path of block `spec` ("features.3." ...).
    """

    name: str
    stem: Mapping[str, str]
    block_t1: Mapping[str, str]
    block: Mapping[str, str]
    head: Mapping[str, str]
    classifier: str
    block_prefix: Callable[[BlockSpec, ArchSpec], str]


def key_map(arch: ArchSpec, layout: Layout) -> dict[str, str]:
    """Our module path -> the foreign module path, for every module that holds weights."""
    out = {f"stem.{ours}": theirs for ours, theirs in layout.stem.items()}
    for spec in arch.blocks:
        rules = layout.block if spec.has_expand else layout.block_t1
        prefix = layout.block_prefix(spec, arch)
        for ours, theirs in rules.items():
            out[f"blocks.{spec.index}.{ours}"] = prefix + theirs
    for ours, theirs in layout.head.items():
        out[f"head.{ours}"] = theirs.format(last=len(arch.blocks) + 1)
    out["classifier"] = layout.classifier
    return out


def expected_conv_shapes(arch: ArchSpec) -> dict[str, tuple[int, ...]]:
    """Shapes of our conv / linear weights for a resolved architecture (no modules built)."""
    shapes: dict[str, tuple[int, ...]] = {"stem.conv": (arch.stem_channels, 3, 3, 3)}
    for b in arch.blocks:
        p = f"blocks.{b.index}"
        if b.has_expand:
            shapes[f"{p}.expand.conv"] = (b.hidden_channels, b.in_channels, 1, 1)
        shapes[f"{p}.depthwise.conv"] = (b.hidden_channels, 1, 3, 3)
        shapes[f"{p}.project.conv"] = (b.out_channels, b.hidden_channels, 1, 1)
    shapes["head.conv"] = (arch.head_channels, arch.blocks[-1].out_channels, 1, 1)
    shapes["classifier"] = (arch.num_classes, arch.head_channels)
    return shapes


def infer_config(
    state: Mapping[str, torch.Tensor], layout: Layout, base: ModelConfig, source: str
) -> ModelConfig:
    """The `ModelConfig` (width, last-layer rule, classes) whose shapes match `state` exactly.

    Standard widths are tried first, then every multiple of 0.005 by distance from the width
    the last stage's channels suggest. Raises `UserError` naming what did not fit.
    """
    cls_key = f"{layout.classifier}.weight"
    if cls_key not in state:
        raise UserError(
            f"{source}: no {cls_key!r}: not a {layout.name} MobileNetV2 state dict "
            f"(first keys: {', '.join(list(state)[:4])})"
        )
    num_classes = int(state[cls_key].shape[0])
    probe = resolve(base.replace(num_classes=num_classes))
    last_out = _shape(state, key_map(probe, layout)[f"blocks.{len(probe.blocks) - 1}.project.conv"])
    guess = last_out[0] / STAGES[-1].c if last_out else 1.0
    grid = sorted((round(0.005 * i, 3) for i in range(2, 801)), key=lambda w: abs(w - guess))
    for width in (*STANDARD_WIDTHS, *grid):
        for finegrain in (True, False):
            cfg = base.replace(width=width, num_classes=num_classes,
                               finegrain_classification_mode=finegrain)
            arch = resolve(cfg)
            names = key_map(arch, layout)
            if all(_shape(state, names[k]) == v for k, v in expected_conv_shapes(arch).items()):
                return cfg
    n_blocks = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    raise UserError(
        f"{source}: the tensor shapes fit no MobileNetV2 width (stem "
        f"{_shape(state, layout.stem['conv'])}, last block {last_out}, {num_classes} classes"
        + (f", {n_blocks} stages" if layout.name == "timm" else "")
        + "); is it a MobileNetV2 of another depth or layout?"
    )


def convert_state_dict(
    state: Mapping[str, torch.Tensor], layout: Layout, base: ModelConfig, source: str
) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Map a foreign state dict onto ours: exact shapes, no key left over, none missing."""
    from mobilenetv2.model import MobileNetV2

    cfg = infer_config(state, layout, base, source)
    with torch.device("meta"):
        ours = MobileNetV2(cfg).state_dict()
    names = key_map(resolve(cfg), layout)
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    missing, shapes = [], []
    for key, like in ours.items():
        module, _, leaf = key.rpartition(".")
        theirs = f"{names[module]}.{leaf}"
        if theirs not in state:
            if leaf in OPTIONAL_LEAVES:
                out[key] = torch.zeros((), dtype=like.dtype)
                continue
            missing.append(theirs)
            continue
        tensor = state[theirs]
        used.add(theirs)
        if tuple(tensor.shape) != tuple(like.shape):
            shapes.append(f"{theirs} {tuple(tensor.shape)} -> {key} {tuple(like.shape)}")
            continue
        out[key] = tensor.detach().to(like.dtype).clone()
    unexpected = sorted(set(state) - used)
    if missing or unexpected or shapes:
        parts = [f"{len(v)} {what}: {', '.join(v[:4])}" + (" ..." if len(v) > 4 else "")
                 for what, v in (("missing key(s)", missing), ("unexpected key(s)", unexpected),
                                 ("shape mismatch(es)", shapes)) if v]
        raise UserError(
            f"{source}: does not convert as a {layout.name} MobileNetV2 (width {cfg.width}, "
            f"{cfg.num_classes} classes): " + "; ".join(parts)
        )
    return cfg, out


def convert_layout(
    source: Mapping[str, torch.Tensor] | str | os.PathLike,
    layout: Layout,
    *,
    default_preprocessing: Preprocessing,
    preprocessing: Preprocessing | None = None,
    labels: list[str] | None = None,
    name: str | None = None,
    check: Callable[[Mapping[str, torch.Tensor], str], None] | None = None,
) -> Converted:
    """The whole conversion of a foreign PyTorch-ecosystem file or state dict: read it safely
    (never unpickled), strip `module.`, run the source's own `check`, map it with `layout`,
    and attach ImageNet labels (for 1000 classes), preprocessing and provenance."""
    if name is None:
        name = str(source) if isinstance(source, (str, os.PathLike)) else "state dict"
    nested = None
    if isinstance(source, Mapping):
        state = source
    else:
        state, nested = read_state_dict(source)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if check is not None:
        check(state, name)
    cfg, tensors = convert_state_dict(state, layout, ModelConfig(), name)
    if labels is None and cfg.num_classes == 1000:
        labels = imagenet_labels(1000)
    provenance: dict[str, Any] = {"format": layout.name, "source": name}
    if nested:
        provenance["checkpoint_key"] = nested
    meta = WeightsMeta(config=cfg, preprocessing=preprocessing or default_preprocessing,
                       labels=labels, provenance=provenance)
    return Converted(state_dict=tensors, meta=meta)


def _shape(state: Mapping[str, torch.Tensor], module: str) -> tuple[int, ...] | None:
    t = state.get(f"{module}.weight")
    return tuple(t.shape) if t is not None else None
