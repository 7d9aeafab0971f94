"""`mobilenetv2 pretrained`: the registry of downloadable weights."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from mobilenetv2.cli.options import shared

__all__ = ["Args", "run"]


@dataclass(frozen=True, kw_only=True)
class Args:
    """list the pretrained weights --weights NAME accepts

    Named weight sets: source, published ImageNet accuracy, preprocessing and URL.
    `--weights NAME` downloads one once into $MOBILENETV2_CACHE.
    """

    json: bool = shared("json", False)


def run(args: Args) -> int:
    from mobilenetv2.weights.hub import cache_dir
    from mobilenetv2.weights.pretrained import list_pretrained

    entries = list_pretrained()
    if args.json:
        print(json.dumps([
            {**asdict(e), "config": e.config.to_dict(), "preprocessing": asdict(e.preprocessing)}
            for e in entries
        ], indent=2))
        return 0
    print(f"{'name':<34}{'format':<13}{'width':>6}{'res':>5}{'top1|mIoU':>11}{'top5':>8}  "
          f"{'resize/crop':<12}hash")
    for e in entries:
        pre = e.preprocessing
        # Segmenters show their mIoU in the top1 column (and none in top5).
        top1 = e.accuracy.get("top1", e.accuracy.get("miou", float("nan")))
        print(f"{e.name:<34}{e.format:<13}{e.config.width:>6}{e.config.resolution:>5}"
              f"{top1:>11.3f}{e.accuracy.get('top5', float('nan')):>8.3f}  "
              f"{f'{pre.resize}/{pre.crop}':<12}{e.sha256 or '-'}")
    print(f"cache: {cache_dir()}")
    return 0
