"""ImageNet-1k class names for converted weights, available offline.

The names are torchvision's (`MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"]`), shipped
inside torchvision, so no download is needed. They are in the standard ILSVRC-2012 synset
order that TF-slim, Keras and TensorFlow Lite also use; TF releases with 1001 outputs put a
"background" class at index 0 in front of them.

Compared with the `imagenet_labels.txt` that ships with the TFLite hosted models, every
torchvision name is the first synonym of the TF label (TF: "tench, Tinca tinca", here:
"tench"), except two that torchvision disambiguates: index 134 "crane bird" (TF: "crane",
which also names the machine at 517) and 639 "maillot tank suit" (TF: "maillot, tank suit",
while 638 is also "maillot").
"""

from __future__ import annotations

__all__ = ["BACKGROUND", "imagenet_categories", "imagenet_labels"]

BACKGROUND = "background"


def imagenet_categories() -> list[str]:
    """The 1000 ImageNet-1k class names in synset order (torchvision's short names)."""
    from torchvision.models import MobileNet_V2_Weights

    return list(MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"])


def imagenet_labels(num_classes: int) -> list[str] | None:
    """Labels for an ImageNet classifier with `num_classes` outputs: the 1000 names, or
    "background" plus the 1000 names for TF's 1001-class heads; None for other counts."""
    if num_classes == 1000:
        return imagenet_categories()
    if num_classes == 1001:
        return [BACKGROUND, *imagenet_categories()]
    return None
