"""`mobilenetv2 profile`: per-layer table and totals of one configuration; with `--memory`,
the peak activation memory of the layer-by-layer and block-wise schedules (paper 5.1)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from mobilenetv2.cli.options import config_options, option, shared
from mobilenetv2.config import ModelConfig

__all__ = ["Args", "VariantName", "run"]

# The names of `mobilenetv2.registry.VARIANTS`, spelled out here because the registry imports
# torch and `--help` must not; tests/test_cli.py checks that the two agree.
VariantName = Literal[
    "mobilenetv2_035", "mobilenetv2_050", "mobilenetv2_075", "mobilenetv2_100",
    "mobilenetv2_130", "mobilenetv2_140", "deeplabv3_mobilenetv2_100",
    "deeplabv3_mobilenetv2_050",
]


@dataclass(frozen=True, kw_only=True)
class Args:
    """per-layer params, MAdds, shapes and activation memory

    Exact arithmetic of a configuration: per-layer parameters, multiply-adds, output shapes
    and activation memory, and the totals.
    """

    variant: VariantName | None = option(None, help="a named variant")
    model: dict[str, Any] = config_options(ModelConfig, exclude=("dropout",),
                                           title="model options (ModelConfig)")
    json: bool = shared("json", False)
    memory: bool = option(False, help="peak activation memory: layer by layer and the "
                          "paper's block-wise schedule (section 5.1, Table 3)")
    all_sizes: bool = option(False, help="with --memory: every width (0.35-1.4) and "
                             "resolution (96-224)")
    slices: int | None = option(None, minimum=1, metavar="N",
                                help="with --memory: channel slices per expansion",
                                default_help="one channel at a time")
    batch: int = option(1, minimum=1, metavar="N", help="with --memory: images per pass")
    steps: bool = option(False, help="with --memory: the live tensors at every step of "
                         "both schedules")


def run(args: Args) -> int:
    from mobilenetv2.profile import profile
    from mobilenetv2.registry import resolve_variant

    overrides = dict(args.model)
    width = overrides.pop("width", None)
    cfg = resolve_variant(args.variant, width, **overrides)
    if args.memory or args.all_sizes:
        from mobilenetv2.cli.profile_memory import print_memory

        return print_memory(cfg, args)
    prof = profile(cfg)
    if args.json:
        print(json.dumps(prof.to_dict(), indent=2))
        return 0
    print(
        f"MobileNetV2 width {cfg.width} at {prof.resolution}x{prof.resolution}, "
        f"{cfg.num_classes} classes, padding {cfg.padding}, output stride "
        f"{cfg.output_stride}{', small_input' if cfg.small_input else ''}"
    )
    header = f"{'layer':<28}{'op':<9}{'k':>2}{'s':>3}{'output':>16}{'params':>11}{'MAdds':>14}"
    print(header + f"{'act KiB':>10}")
    print("-" * (len(header) + 10))
    for layer in prof.layers:
        c, h, w = layer.out_shape
        print(
            f"{layer.name:<28}{layer.op:<9}{layer.kernel:>2}{layer.stride:>3}"
            f"{f'{c}x{h}x{w}':>16}{layer.params:>11,}{layer.madds:>14,}"
            f"{layer.activation_bytes / 1024:>10,.0f}"
        )
    print("-" * (len(header) + 10))
    print(f"params (all trainable):        {prof.params:>14,}")
    print(f"weights excluding BatchNorm:   {prof.weights_excluding_bn:>14,}")
    print(f"multiply-adds:                 {prof.madds:>14,}")
    print(f"peak activation (in+out, fp32):{prof.peak_activation_bytes / 2**20:>12.2f} MiB")
    if prof.anchors:  # SSDLite: TF's ssd_anchor_generator per prediction layer
        print(f"\n{'anchors on':<20}{'grid':>8}{'per cell':>10}{'anchors':>10}")
        for name, h, w, k in prof.anchors:
            print(f"{name:<20}{f'{h}x{w}':>8}{k:>10}{h * w * k:>10,}")
        print(f"{'total':<20}{'':>18}{prof.num_anchors:>10,}")
    return 0
