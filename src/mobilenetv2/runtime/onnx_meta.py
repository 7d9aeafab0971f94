"""What our ONNX files say about themselves: the weights' metadata in `metadata_props`.

An exported model carries one JSON document per key, as our safetensors files do (config,
preprocessing, labels, provenance; `weights.format.WeightsMeta`), plus `precision` ("fp32"
or "int8") and, after quantization, the measured `accuracy`. `export` and `quant` write
these keys, `InferenceSession` reads them, so a deployed `.onnx` file is self-describing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from mobilenetv2._optional import require

__all__ = ["onnx_metadata", "onnx_precision", "onnx_weights_meta", "set_onnx_metadata"]


def onnx_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The `metadata_props` of an ONNX file as a dict (empty for foreign files)."""
    onnx = require("onnx", "reading ONNX metadata")
    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


def set_onnx_metadata(proto: Any, props: Mapping[str, str]) -> None:
    """Replace the `metadata_props` of a loaded `onnx.ModelProto` with `props`."""
    del proto.metadata_props[:]
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def onnx_precision(path: str | os.PathLike, props: Mapping[str, str] | None = None) -> str:
    """"int8" or "fp32": the file's `precision` key, else whether it holds QDQ nodes (a
    foreign quantized model)."""
    props = onnx_metadata(path) if props is None else props
    if props.get("precision"):
        return props["precision"]
    onnx = require("onnx", "reading an ONNX model")
    proto = onnx.load(str(path), load_external_data=False)
    return "int8" if any(n.op_type == "QuantizeLinear" for n in proto.graph.node) else "fp32"


def onnx_weights_meta(props: Mapping[str, str]) -> Any:
    """The `WeightsMeta` in an ONNX file's `metadata_props`; None for foreign files."""
    from mobilenetv2.errors import UserError
    from mobilenetv2.weights.format import WeightsMeta

    if "config" not in props:
        return None
    try:
        return WeightsMeta.from_metadata(props)
    except UserError:
        return None
