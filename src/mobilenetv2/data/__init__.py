"""Data: robust image loading, transform presets, datasets and loaders."""

from mobilenetv2.data.images import IMAGE_SUFFIXES, ImageError, image_files, open_rgb
from mobilenetv2.data.transforms import eval_transform

__all__ = ["IMAGE_SUFFIXES", "ImageError", "eval_transform", "image_files", "open_rgb"]
