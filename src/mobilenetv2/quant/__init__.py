"""Deployment-side graph preparation and int8 quantization (post-training and QAT)."""

from mobilenetv2.quant.fuse import fold_conv_bn, fuse, is_fused, reestimate_bn

__all__ = ["fold_conv_bn", "fuse", "is_fused", "reestimate_bn"]
