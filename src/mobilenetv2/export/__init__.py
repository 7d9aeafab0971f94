"""Export: ONNX (verified with ONNX Runtime) and TorchScript."""

from mobilenetv2.export.onnx import (
    ExportResult,
    export_onnx,
    export_torchscript,
    onnx_metadata,
    verify_onnx,
)

__all__ = ["ExportResult", "export_onnx", "export_torchscript", "onnx_metadata", "verify_onnx"]
