"""Task heads on the MobileNetV2 backbone: SSDLite (paper section 6.2) and Mobile DeepLabv3
(section 6.3)."""

from mobilenetv2.model.heads.deeplabv3 import DeepLabV3, DeepLabV3Head, with_output_stride

__all__ = ["DeepLabV3", "DeepLabV3Head", "with_output_stride"]
