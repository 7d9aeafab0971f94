"""int8 quantization: post-training (ONNX QDQ) and quantization-aware training."""

from mobilenetv2.quant.ptq import QuantizeResult, quantize_onnx, quantize_ptq
from mobilenetv2.quant.qat import prepare_qat, quantize_qat

__all__ = ["QuantizeResult", "prepare_qat", "quantize_onnx", "quantize_ptq", "quantize_qat"]
