"""Data: robust image loading, transform presets, datasets and loaders."""

from mobilenetv2.data.images import ImageError, open_rgb
from mobilenetv2.data.transforms import eval_transform

__all__ = ["ImageError", "eval_transform", "open_rgb"]
