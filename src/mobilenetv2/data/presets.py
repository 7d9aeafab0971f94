"""Training transform presets (torchvision transforms v2) and the evaluation preprocessing
each one implies.

- "imagenet": torchvision's reference classification preset (references/classification/
  presets.py): RandomResizedCrop, horizontal flip, TrivialAugmentWide or AutoAugment,
  RandomErasing; evaluation resizes the shorter side to crop / crop_ratio and center-crops.
- "inception": TF-slim's `inception_preprocessing.py`, used to train the paper's checkpoints:
  a distorted bounding-box crop covering 5-100% of the image, flip, colour distortion
  (brightness 32/255, saturation and contrast 0.5-1.5, hue 0.2), pixels scaled to [-1, 1];
  evaluation keeps the central 87.5% and resizes.
- "small": for small inputs (the bundled 8x8 digits, CIFAR-size images): the whole image is
  resized to the network input, jittered by a small random affine transform, no flip unless
  asked (flipping digits changes their meaning).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from PIL import Image
from torchvision.transforms import v2 as T

from mobilenetv2.config import DataConfig
from mobilenetv2.data.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from mobilenetv2.data.transforms import interpolation_mode

__all__ = ["PRESETS", "decode_side", "eval_preprocessing", "resolve_preset", "train_transform"]

PRESETS = ("imagenet", "inception", "small")
TF_MEAN_STD = (0.5, 0.5, 0.5)
# Below this input size the ImageNet crops destroy too much of the image.
SMALL_INPUT_MAX = 64


def resolve_preset(data: DataConfig, size: int) -> str:
    """The preset "auto" means: "small" for the digits and inputs up to 64 px, else
    "imagenet"."""
    if data.preset != "auto":
        return data.preset
    return "small" if data.data == "digits" or size <= SMALL_INPUT_MAX else "imagenet"


def eval_preprocessing(data: DataConfig, size: int) -> Preprocessing:
    """What evaluation (and every consumer of the saved weights) must do to an image."""
    preset = resolve_preset(data, size)
    if preset == "small":
        return Preprocessing(resize=size, crop=size, resize_mode="exact",
                             interpolation=data.interpolation, mean=TF_MEAN_STD, std=TF_MEAN_STD)
    mean, std = (TF_MEAN_STD, TF_MEAN_STD) if preset == "inception" else (
        IMAGENET_MEAN, IMAGENET_STD)
    return Preprocessing(
        resize=max(size, round(size / data.eval_crop_ratio)), crop=size, resize_mode="shorter",
        interpolation=data.interpolation, mean=mean, std=std,
    )


def decode_side(data: DataConfig, size: int) -> int:
    """The smallest image side the training transform needs at full detail: a random resized
    crop of a fraction `a` of the area, resized to `size`, reads a crop of side ~ side *
    sqrt(a), so with the smallest area (8% for "imagenet", 5% for "inception") the image
    needs `size / sqrt(a)` pixels before the crop is not upsampled (792 at 224 for
    "imagenet"). "small" resizes the whole image: `size`. Larger JPEGs may decode at a
    reduced scale down to this side (`data.images.open_rgb`)."""
    preset = resolve_preset(data, size)
    smallest = {"imagenet": 0.08, "inception": 0.05}.get(preset, 1.0)
    return math.ceil(size / math.sqrt(smallest))


def train_transform(data: DataConfig, size: int, batch_normalize: bool = False,
                    ) -> Callable[[Image.Image], torch.Tensor]:
    """PIL RGB image -> augmented, normalized float tensor (3, size, size).

    With `batch_normalize` the tensor stays uint8 (scaling and normalization are left to
    `data.transforms.BatchNormalize` on the batch, issue 14); random erasing then fills with
    the mean colour, which normalizes to ~0 as the float pipeline's fill of 0 does.
    """
    preset = resolve_preset(data, size)
    interp = interpolation_mode(data.interpolation)
    pre = eval_preprocessing(data, size)
    # The operations run on the uint8 tensor. (Running them on the PIL image first was 2.5x
    # faster per digit, but PIL's affine resampling differs from torch's, and the digits
    # network trained on it reached 93% instead of 95% after 4 epochs: not a free change.)
    ops: list = [T.ToImage()]
    if preset == "small":
        ops += [
            T.Resize((size, size), interpolation=interp, antialias=True),
            T.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1),
                           interpolation=interp),
        ]
        if data.hflip:
            ops.append(T.RandomHorizontalFlip())
    elif preset == "inception":
        ops += [
            T.RandomResizedCrop(size, scale=(0.05, 1.0), ratio=(3 / 4, 4 / 3),
                                interpolation=interp, antialias=True),
            T.RandomHorizontalFlip(),
            T.ColorJitter(brightness=32 / 255, contrast=0.5, saturation=0.5, hue=0.2),
        ]
    elif preset == "imagenet":
        ops.append(T.RandomResizedCrop(size, interpolation=interp, antialias=True))
        if data.hflip:
            ops.append(T.RandomHorizontalFlip())
    else:
        raise ValueError(f"unknown preset {preset!r}; choose from auto, {', '.join(PRESETS)}")
    if data.auto_augment == "trivial":
        ops.append(T.TrivialAugmentWide(interpolation=interp))
    elif data.auto_augment == "autoaugment":
        ops.append(T.AutoAugment(T.AutoAugmentPolicy.IMAGENET, interpolation=interp))
    if batch_normalize:
        if data.random_erasing > 0:
            fill = [round(255 * m) for m in pre.mean]
            ops.append(T.RandomErasing(p=data.random_erasing, value=fill))
        return T.Compose(ops)
    ops += [T.ToDtype(torch.float32, scale=True), T.Normalize(list(pre.mean), list(pre.std))]
    if data.random_erasing > 0:
        ops.append(T.RandomErasing(p=data.random_erasing, value=0))
    return T.Compose(ops)
