"""Export: one module per format (ONNX, TorchScript), each verified against PyTorch."""

from mobilenetv2.export.common import ExportResult
from mobilenetv2.export.onnx import export_onnx, verify_onnx
from mobilenetv2.export.torchscript import export_torchscript

__all__ = ["ExportResult", "export_onnx", "export_torchscript", "verify_onnx"]
