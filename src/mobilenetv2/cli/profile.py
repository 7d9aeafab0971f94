"""`mobilenetv2 profile`: per-layer table and totals of one configuration."""

from __future__ import annotations

import argparse
import json

from mobilenetv2.cli.options import add_config_options, config_overrides
from mobilenetv2.config import ModelConfig
from mobilenetv2.profile import profile
from mobilenetv2.registry import VARIANTS, resolve_variant

_FIELDS: list[str] = []


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "profile",
        help="per-layer params, MAdds, shapes and activation memory",
        description="Exact arithmetic of a configuration: per-layer parameters, "
        "multiply-adds, output shapes and activation memory, and the totals.",
    )
    p.add_argument("--variant", choices=list(VARIANTS), help="a named variant")
    _FIELDS[:] = add_config_options(p, ModelConfig, exclude=("dropout",))
    p.add_argument("--json", action="store_true", help="machine-readable JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    overrides = config_overrides(args, _FIELDS)
    width = overrides.pop("width", None)
    cfg = resolve_variant(args.variant, width, **overrides)
    prof = profile(cfg)
    if args.json:
        print(json.dumps(prof.to_dict(), indent=2))
        return 0
    print(
        f"MobileNetV2 width {cfg.width} at {prof.resolution}x{prof.resolution}, "
        f"{cfg.num_classes} classes, padding {cfg.padding}, output stride "
        f"{cfg.output_stride}{', small_input' if cfg.small_input else ''}"
    )
    header = f"{'layer':<20}{'op':<9}{'k':>2}{'s':>3}{'output':>16}{'params':>11}{'MAdds':>14}"
    print(header + f"{'act KiB':>10}")
    print("-" * (len(header) + 10))
    for layer in prof.layers:
        c, h, w = layer.out_shape
        print(
            f"{layer.name:<20}{layer.op:<9}{layer.kernel:>2}{layer.stride:>3}"
            f"{f'{c}x{h}x{w}':>16}{layer.params:>11,}{layer.madds:>14,}"
            f"{layer.activation_bytes / 1024:>10,.0f}"
        )
    print("-" * (len(header) + 10))
    print(f"params (all trainable):        {prof.params:>14,}")
    print(f"weights excluding BatchNorm:   {prof.weights_excluding_bn:>14,}")
    print(f"multiply-adds:                 {prof.madds:>14,}")
    print(f"peak activation (in+out, fp32):{prof.peak_activation_bytes / 2**20:>12.2f} MiB")
    return 0
