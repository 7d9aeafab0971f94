"""TensorFlow Lite MobileNetV2 models -> our model: `reader` decodes the flatbuffer, `match`
finds the paper's layers in its operator graph, `convert` builds a classifier's state dict,
`deeplab` a Mobile DeepLabv3 segmenter's (paper section 6.3)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from mobilenetv2.errors import UserError
from mobilenetv2.weights.convert.tflite.convert import BN_EPS, convert_tflite_classifier
from mobilenetv2.weights.convert.tflite.deeplab import convert_deeplab, is_deeplab
from mobilenetv2.weights.convert.tflite.reader import read_tflite_graph
from mobilenetv2.weights.format import Converted

__all__ = ["BN_EPS", "convert_tflite", "read_tflite_graph"]


def convert_tflite(path: str | os.PathLike, labels: Sequence[str] | None = None) -> Converted:
    """Convert a MobileNetV2 `.tflite` file, classifier or Mobile DeepLabv3 segmenter (told
    apart by their operators), float or quantized, to our format; see `convert` and
    `deeplab` for what is inferred and checked."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: no such file")
    graph = read_tflite_graph(p)
    if is_deeplab(graph):
        return convert_deeplab(graph, p, labels)
    return convert_tflite_classifier(p, labels, graph)
