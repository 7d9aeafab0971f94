"""ImageNet class names, available offline.

The 1000 ILSVRC-2012 names come from torchvision (`MobileNet_V2_Weights.IMAGENET1K_V1.meta
["categories"]`, shipped inside the torchvision wheel). TensorFlow releases (TF-slim, Keras
`.h5` converted from them keep 1000, TFLite keeps 1001) put a "background" class at index 0,
so their 1001 labels are "background" followed by the same 1000. Compared with the labels
file of the official TFLite models (`imagenet_labels.txt`, full WordNet synonym lists) the
first synonym matches everywhere except two names torchvision disambiguates: 134 "crane"
(the bird; torchvision "crane bird", 517 is the machine) and 639 "maillot" (torchvision
"maillot tank suit", 638 is the other "maillot").
"""

from __future__ import annotations

from functools import lru_cache

__all__ = ["BACKGROUND", "imagenet_labels"]

BACKGROUND = "background"


@lru_cache(maxsize=1)
def _imagenet_1k() -> tuple[str, ...]:
    from torchvision.models import MobileNet_V2_Weights

    names = tuple(MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"])
    if len(names) != 1000:  # a torchvision change we must notice, not absorb
        raise RuntimeError(f"torchvision ships {len(names)} ImageNet categories, not 1000")
    return names


def imagenet_labels(num_classes: int = 1000) -> list[str]:
    """The 1000 ImageNet names, or 1001 with "background" first (TF releases)."""
    if num_classes == 1000:
        return list(_imagenet_1k())
    if num_classes == 1001:
        return [BACKGROUND, *_imagenet_1k()]
    raise ValueError(f"ImageNet has 1000 classes (1001 with background), not {num_classes}")
