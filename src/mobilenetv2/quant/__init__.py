"""Deployment-side graph preparation and int8 quantization (post-training and QAT)."""

from mobilenetv2.quant.fuse import fold_conv_bn, fuse, is_fused, reestimate_bn
from mobilenetv2.quant.ptq import QuantizeResult, quantize_onnx, quantize_ptq
from mobilenetv2.quant.qat import prepare_qat, quantize_qat

__all__ = [
    "QuantizeResult",
    "fold_conv_bn",
    "fuse",
    "is_fused",
    "prepare_qat",
    "quantize_onnx",
    "quantize_ptq",
    "quantize_qat",
    "reestimate_bn",
]
