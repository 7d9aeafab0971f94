"""Task heads on the MobileNetV2 backbone: Mobile DeepLabv3 (paper section 6.3)."""

from mobilenetv2.model.heads.deeplabv3 import DeepLabV3, DeepLabV3Head, with_output_stride

__all__ = ["DeepLabV3", "DeepLabV3Head", "with_output_stride"]
