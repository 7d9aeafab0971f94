"""torchvision and timm MobileNetV2 state dicts -> ours: the rename rules as data.

A `Layout` says, per paper role (stem, t = 1 block, bottleneck block, head, classifier),
which foreign module holds the weights of which of ours, which keys identify the layout, and
the source's own eval preprocessing. `convert_layout` infers our `ModelConfig` (width,
last-layer rule, classes) from the foreign tensor shapes (`fit.fit_width`), maps every key
and fails loudly on anything missing or left over. Pure functions: a foreign state dict in,
a `Converted` out; `model_from_converted` checks that it fits.

torchvision (`torchvision/models/mobilenetv2.py`) keeps the network in `features` (0 = stem
ConvBNReLU, 1..17 = InvertedResidual blocks, 18 = the 1x1 head ConvBNReLU) and `classifier`
(Dropout, Linear). Its blocks are `conv` Sequentials: for t = 1 `[ConvBNReLU dw, Conv
pw-linear, BN]`, otherwise `[ConvBNReLU expand, ConvBNReLU dw, Conv pw-linear, BN]`. Same
arithmetic as ours (symmetric padding, BN eps 1e-5, `_make_divisible`, last layer 1280 *
max(1, width)). The official files (`mobilenet_v2-b0353104.pth` = IMAGENET1K_V1,
`mobilenet_v2-7ebf99e0.pth` = IMAGENET1K_V2) are plain state dicts with exactly this layout.

timm (`timm/models/efficientnet.py`, `_gen_mobilenet_v2`) builds MobileNetV2 as an
EfficientNet: `conv_stem`/`bn1`, `blocks[stage][repeat]` (stage 0 a `DepthwiseSeparableConv`:
conv_dw, bn1, conv_pw, bn2; the others `InvertedResidual`: conv_pw, bn1, conv_dw, bn2,
conv_pwl, bn3), `conv_head`/`bn2` and `classifier`. Its channel arithmetic equals ours for
`mobilenetv2_035/050/075/100/140`: `round_channels` is `make_divisible(c * width, 8,
round_limit=0.9)` (TF's "never more than 10% down"), the head is `max(1280, round(1280 *
width))` and the stem is rounded like every other layer (0.35 x 32 -> 16), BN eps 1e-5,
symmetric padding (the parity tests check this for every width). The hidden width of a block
is `make_divisible(in * t)`, equal to ours because every in-channel count is already a
multiple of 8. Not supported: the deeper `mobilenetv2_110d` / `_120d`. They scale the block
*count* (timm's `depth_multiplier`, 17 -> 22 / 26 blocks) and keep the stem at 32 and the
head at 1280 (`fix_stem_head`), which `ModelConfig` cannot express; such a file is refused
with the count of blocks it has.
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
from mobilenetv2.weights._common import strip_prefixes
from mobilenetv2.weights.convert.fit import fit_width
from mobilenetv2.weights.convert.read import read_foreign_state_dict
from mobilenetv2.weights.format import Converted, WeightsMeta, source_provenance
from mobilenetv2.weights.imagenet import imagenet_labels

__all__ = [
    "LAYOUTS",
    "TIMM",
    "TIMM_PREPROCESSING",
    "TORCHVISION",
    "Layout",
    "convert_layout",
    "convert_timm",
    "convert_torchvision",
    "infer_config",
    "key_map",
    "layout_of",
]

# BatchNorm buffers older files may lack (torch < 0.4.1 had no num_batches_tracked).
OPTIONAL_LEAVES = ("num_batches_tracked",)


@dataclass(frozen=True)
class Layout:
    """Where a foreign implementation keeps each of our modules.

    Each dict maps our module path (relative to the stem, a block, the head) to the foreign
    one. `block_prefix(spec, arch)` is the foreign path of block `spec` ("features.3." ...).
    `signature` are keys every state dict of this layout has; `check` (optional) refuses
    files of this layout that our config cannot express.
    """

    name: str
    stem: Mapping[str, str]
    block_t1: Mapping[str, str]
    block: Mapping[str, str]
    head: Mapping[str, str]
    classifier: str
    block_prefix: Callable[[BlockSpec, ArchSpec], str]
    signature: tuple[str, ...]
    preprocessing: Preprocessing
    check: Callable[[Mapping[str, torch.Tensor], str], None] | None = None


def _timm_block_prefix(spec: BlockSpec, arch: ArchSpec) -> str:
    first = next(b.index for b in arch.blocks if b.stage == spec.stage)
    return f"blocks.{spec.stage}.{spec.index - first}."


def _timm_check_depth(state: Mapping[str, Any], source: str) -> None:
    repeats: dict[int, set[int]] = {}
    for key in state:
        parts = key.split(".")
        if parts[0] == "blocks" and len(parts) > 2 and parts[1].isdigit() and parts[2].isdigit():
            repeats.setdefault(int(parts[1]), set()).add(int(parts[2]))
    found = tuple(len(repeats[s]) for s in sorted(repeats))
    paper = tuple(st.n for st in STAGES)
    if found and found != paper:
        raise UserError(
            f"{source}: blocks per stage {found} (total {sum(found)}) differ from the paper's "
            f"{paper} (17): a depth-scaled timm variant such as mobilenetv2_110d/120d, which "
            f"this library does not express"
        )


TORCHVISION = Layout(
    name="torchvision",
    stem={"conv": "features.0.0", "bn": "features.0.1"},
    block_t1={
        "depthwise.conv": "conv.0.0",
        "depthwise.bn": "conv.0.1",
        "project.conv": "conv.1",
        "project.bn": "conv.2",
    },
    block={
        "expand.conv": "conv.0.0",
        "expand.bn": "conv.0.1",
        "depthwise.conv": "conv.1.0",
        "depthwise.bn": "conv.1.1",
        "project.conv": "conv.2",
        "project.bn": "conv.3",
    },
    head={"conv": "features.{last}.0", "bn": "features.{last}.1"},
    classifier="classifier.1",
    block_prefix=lambda spec, arch: f"features.{spec.index + 1}.",
    signature=("features.0.0.weight", "classifier.1.weight"),
    # IMAGENET1K_V1's eval transform: resize 256, crop 224, bilinear, ImageNet mean/std
    # (IMAGENET1K_V2 resizes to 232: pass its preprocessing explicitly).
    preprocessing=Preprocessing(),
)

# timm's pretrained_cfg for mobilenetv2_* (efficientnet.py `_cfg`): bicubic, crop_pct 0.875,
# ImageNet mean/std.
TIMM_PREPROCESSING = Preprocessing(resize=256, crop=224, interpolation="bicubic")

TIMM = Layout(
    name="timm",
    stem={"conv": "conv_stem", "bn": "bn1"},
    block_t1={
        "depthwise.conv": "conv_dw",
        "depthwise.bn": "bn1",
        "project.conv": "conv_pw",
        "project.bn": "bn2",
    },
    block={
        "expand.conv": "conv_pw",
        "expand.bn": "bn1",
        "depthwise.conv": "conv_dw",
        "depthwise.bn": "bn2",
        "project.conv": "conv_pwl",
        "project.bn": "bn3",
    },
    head={"conv": "conv_head", "bn": "bn2"},
    classifier="classifier",
    block_prefix=_timm_block_prefix,
    signature=("conv_stem.weight", "conv_head.weight"),
    preprocessing=TIMM_PREPROCESSING,
    check=_timm_check_depth,
)

LAYOUTS: dict[str, Layout] = {layout.name: layout for layout in (TORCHVISION, TIMM)}


def layout_of(state: Mapping[str, Any]) -> Layout | None:
    """The layout whose signature keys `state` has, or None."""
    return next((lay for lay in LAYOUTS.values() if all(k in state for k in lay.signature)),
                None)


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
    """The `ModelConfig` (width, last-layer rule, classes) whose conv shapes match `state`
    exactly. Raises `UserError` naming what did not fit."""
    cls_key = f"{layout.classifier}.weight"
    if cls_key not in state:
        raise UserError(
            f"{source}: no {cls_key!r}: not a {layout.name} MobileNetV2 state dict "
            f"(first keys: {', '.join(list(state)[:4])})"
        )
    num_classes = int(state[cls_key].shape[0])
    base = base.replace(num_classes=num_classes)
    probe = resolve(base)
    last_out = _shape(state, key_map(probe, layout)[f"blocks.{len(probe.blocks) - 1}.project.conv"])

    def fits(arch: ArchSpec) -> bool:
        names = key_map(arch, layout)
        return all(_shape(state, names[k]) == v for k, v in expected_conv_shapes(arch).items())

    cfg = fit_width(base, fits, last_out[0] if last_out else None)
    if cfg is not None:
        return cfg
    n_blocks = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    raise UserError(
        f"{source}: the tensor shapes fit no MobileNetV2 width (stem "
        f"{_shape(state, layout.stem['conv'])}, last block {last_out}, {num_classes} classes"
        + (f", {n_blocks} stages" if layout is TIMM else "")
        + "); is it a MobileNetV2 of another depth or layout?"
    )


def convert_state_dict(
    state: Mapping[str, torch.Tensor], layout: Layout, base: ModelConfig, source: str
) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Map a foreign state dict onto ours: every key of ours found, none left over."""
    from mobilenetv2.model import MobileNetV2

    cfg = infer_config(state, layout, base, source)
    with torch.device("meta"):
        ours = MobileNetV2(cfg).state_dict()
    names = key_map(resolve(cfg), layout)
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    missing = []
    for key, like in ours.items():
        module, _, leaf = key.rpartition(".")
        theirs = f"{names[module]}.{leaf}"
        if theirs not in state:
            if leaf in OPTIONAL_LEAVES:
                out[key] = torch.zeros((), dtype=like.dtype)
            else:
                missing.append(theirs)
            continue
        used.add(theirs)
        out[key] = state[theirs].detach().to(like.dtype).clone()
    unexpected = sorted(set(state) - used)
    if missing or unexpected:
        parts = [f"{len(v)} {what}: {', '.join(v[:4])}" + (" ..." if len(v) > 4 else "")
                 for what, v in (("missing key(s)", missing), ("unexpected key(s)", unexpected))
                 if v]
        raise UserError(
            f"{source}: does not convert as a {layout.name} MobileNetV2 (width {cfg.width}, "
            f"{cfg.num_classes} classes): " + "; ".join(parts)
        )
    return cfg, out


def convert_layout(
    source: Mapping[str, torch.Tensor] | str | os.PathLike,
    layout: Layout,
    *,
    preprocessing: Preprocessing | None = None,
    labels: list[str] | None = None,
    name: str | None = None,
    checkpoint_key: str | None = None,
) -> Converted:
    """The whole conversion of a foreign PyTorch-ecosystem file or state dict: read it safely
    (never unpickled), strip wrapper prefixes, run the layout's `check`, map it, and attach
    labels, preprocessing and provenance.

    Args:
        source: A state dict, or a path read with `read_foreign_state_dict`.
        layout: `TORCHVISION` or `TIMM`.
        preprocessing: Defaults to the layout's.
        labels: Defaults to the ImageNet names for an ImageNet head, else none.
        name: What error messages and the provenance call the source (default: its path).
        checkpoint_key: For a state dict read elsewhere, the key it was nested under.
    """
    if isinstance(source, Mapping):
        state: Mapping[str, torch.Tensor] = source
        name = name or "state dict"
        provenance: dict[str, Any] = {"format": layout.name, "source": name}
    else:
        state, checkpoint_key = read_foreign_state_dict(source)
        name = name or str(source)
        provenance = {**source_provenance(source, layout.name), "source": name}
    state = {strip_prefixes(k): v for k, v in state.items()}
    if layout.check is not None:
        layout.check(state, name)
    cfg, tensors = convert_state_dict(state, layout, ModelConfig(), name)
    if checkpoint_key:
        provenance["checkpoint_key"] = checkpoint_key
    meta = WeightsMeta(config=cfg, preprocessing=preprocessing or layout.preprocessing,
                       labels=labels if labels is not None else imagenet_labels(cfg.num_classes),
                       provenance=provenance)
    return Converted(state_dict=tensors, meta=meta)


def convert_torchvision(
    source: Mapping[str, torch.Tensor] | str | os.PathLike,
    *,
    preprocessing: Preprocessing | None = None,
    labels: list[str] | None = None,
    name: str | None = None,
) -> Converted:
    """A torchvision `mobilenet_v2` state dict (any width) or `.pth` file -> our weights.

    Preprocessing defaults to IMAGENET1K_V1's eval transform (resize 256); pass IMAGENET1K_V2's
    (resize 232) for it. See `convert_layout` for the arguments.
    """
    return convert_layout(source, TORCHVISION, preprocessing=preprocessing, labels=labels,
                          name=name)


def convert_timm(
    source: Mapping[str, torch.Tensor] | str | os.PathLike,
    *,
    preprocessing: Preprocessing | None = None,
    labels: list[str] | None = None,
    name: str | None = None,
) -> Converted:
    """A timm `mobilenetv2_*` state dict or file (`.pth`, `.bin`, `.safetensors`) -> ours.

    Preprocessing defaults to timm's pretrained config for these models. See `convert_layout`
    for the arguments.
    """
    return convert_layout(source, TIMM, preprocessing=preprocessing, labels=labels, name=name)


def _shape(state: Mapping[str, torch.Tensor], module: str) -> tuple[int, ...] | None:
    t = state.get(f"{module}.weight")
    return tuple(t.shape) if t is not None else None
