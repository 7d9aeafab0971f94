"""`mobilenetv2 variants`: the named variants with their parameters and multiply-adds."""

from __future__ import annotations

import json
from dataclasses import dataclass

from mobilenetv2.cli.options import shared

__all__ = ["Args", "run"]


@dataclass(frozen=True, kw_only=True)
class Args:
    """list the named variants with params and MAdds

    List the named variants (width multipliers of the paper) with their parameters and
    multiply-adds at their nominal resolution.
    """

    json: bool = shared("json", False)


def run(args: Args) -> int:
    from mobilenetv2.profile import profile
    from mobilenetv2.registry import VARIANTS

    rows = []
    for name, cfg in VARIANTS.items():
        prof = profile(cfg)
        rows.append(
            {
                "name": name,
                "width": cfg.width,
                "resolution": cfg.resolution,
                "params": prof.params,
                "weights_excluding_bn": prof.weights_excluding_bn,
                "madds": prof.madds,
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'variant':<27}{'width':>6}{'res':>6}{'params':>13}{'weights(noBN)':>15}{'MAdds':>14}")
    for r in rows:
        print(
            f"{r['name']:<27}{r['width']:>6}{r['resolution']:>6}{r['params']:>13,}"
            f"{r['weights_excluding_bn']:>15,}{r['madds']:>14,}"
        )
    return 0
