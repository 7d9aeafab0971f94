"""mobilenetv2: MobileNetV2 (Sandler et al., CVPR 2018, arXiv 1801.04381) done right."""

from mobilenetv2.config import ModelConfig
from mobilenetv2.model import (
    MobileNetV2,
    MobileNetV2Backbone,
    MobileNetV2Features,
    make_divisible,
    resolve,
)
from mobilenetv2.profile import profile
from mobilenetv2.registry import VARIANTS, create_model
from mobilenetv2.weights import load, load_weights, save

__version__ = "0.1.0"

__all__ = [
    "VARIANTS",
    "MobileNetV2",
    "MobileNetV2Backbone",
    "MobileNetV2Features",
    "ModelConfig",
    "create_model",
    "load",
    "load_weights",
    "make_divisible",
    "profile",
    "resolve",
    "save",
]
