"""MobileNetV2 modules and the architecture data they are built from."""

from mobilenetv2.model.arch import ArchSpec, BlockSpec, Stage, make_divisible, resolve
from mobilenetv2.model.backbone import FeatureInfo, MobileNetV2Backbone, MobileNetV2Features
from mobilenetv2.model.blocks import InvertedResidual
from mobilenetv2.model.build import build_model
from mobilenetv2.model.classifier import MobileNetV2
from mobilenetv2.model.layers import ConvBNAct, ResidualAdd, SamePad2d

__all__ = [
    "ArchSpec",
    "BlockSpec",
    "ConvBNAct",
    "FeatureInfo",
    "InvertedResidual",
    "MobileNetV2",
    "MobileNetV2Backbone",
    "MobileNetV2Features",
    "ResidualAdd",
    "SamePad2d",
    "build_model",
    "Stage",
    "make_divisible",
    "resolve",
]
