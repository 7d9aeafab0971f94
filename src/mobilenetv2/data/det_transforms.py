"""Joint image + box transforms for detection (SSD's augmentation, paper section 6.2 trains
with TF's `ssd_random_crop` and `random_horizontal_flip`).

Training: photometric distortion, zoom out (expand onto a mean-filled canvas up to 4x), the
SSD random crop (a crop whose IoU with some box reaches one of 0.1 ... 0.9, boxes whose centre
leaves the crop dropped), horizontal flip, then the fixed square resize of TF's
`fixed_shape_resizer`. These are torchvision's `transforms.v2` implementations of Liu et al.'s
SSD recipe (the ones torchvision's SSD/SSDLite reference training uses), applied to the image
and its `BoundingBoxes` together so boxes always follow the pixels. Evaluation: the resize.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torchvision.transforms.v2 as T
from PIL import Image
from torchvision import tv_tensors

from mobilenetv2.data.preprocessing import Preprocessing

__all__ = ["detection_eval_transform", "detection_preprocessing", "detection_train_transform"]

# The eval resize also records how to map boxes back: (sx, sy) = input size / original size.
Transform = Callable[[Image.Image, np.ndarray, np.ndarray],
                     tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def detection_preprocessing(size: int, mean: tuple[float, float, float] = (0.5,) * 3,
                            std: tuple[float, float, float] = (0.5,) * 3) -> Preprocessing:
    """TF's SSD preprocessing: the whole image resized to size x size (no crop), [-1, 1]."""
    return Preprocessing(resize=size, crop=size, resize_mode="exact", mean=mean, std=std)


class _Joint:
    def __init__(self, ops: list[Any], pre: Preprocessing) -> None:
        self.ops = T.Compose([*ops, T.Resize((pre.crop, pre.crop), antialias=True),
                              T.SanitizeBoundingBoxes(min_size=1.0),
                              T.ToDtype(torch.float32, scale=True),
                              T.Normalize(list(pre.mean), list(pre.std))])

    def __call__(self, img: Image.Image, boxes: np.ndarray, labels: np.ndarray
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        image = tv_tensors.Image(torch.from_numpy(np.asarray(img, dtype=np.uint8).copy())
                                 .permute(2, 0, 1))
        bb = tv_tensors.BoundingBoxes(torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                                      format="XYXY", canvas_size=(img.height, img.width))
        out = self.ops({"image": image, "boxes": bb,
                        "labels": torch.as_tensor(labels, dtype=torch.long).reshape(-1)})
        return (out["image"].as_subclass(torch.Tensor), out["boxes"].as_subclass(torch.Tensor),
                out["labels"])


def detection_train_transform(pre: Preprocessing, hflip: bool = True, light: bool = False
                              ) -> Transform:
    """SSD augmentation (photometric, zoom out, IoU crop, flip) then the resize; `light`
    keeps only the photometric distortion and flip (data whose objects already come at
    every scale, like the demo canvases, learns several times faster without the rest)."""
    fill = tuple(int(round(m * 255)) for m in pre.mean)
    ops: list[Any] = [T.RandomPhotometricDistort(p=0.5)]
    if not light:
        ops += [T.RandomZoomOut(fill={tv_tensors.Image: fill, "others": 0},
                                side_range=(1.0, 4.0), p=0.5),
                T.RandomIoUCrop()]
    if hflip:
        ops.append(T.RandomHorizontalFlip(0.5))
    return _Joint(ops, pre)


def detection_eval_transform(pre: Preprocessing) -> Transform:
    return _Joint([], pre)
