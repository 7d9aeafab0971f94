"""TensorFlow Lite MobileNetV2 classifiers -> our model: `reader` decodes the flatbuffer,
`match` finds the paper's layers in its operator graph, `convert` builds the state dict."""

from mobilenetv2.weights.convert.tflite.convert import BN_EPS, convert_tflite
from mobilenetv2.weights.convert.tflite.reader import read_tflite_graph

__all__ = ["BN_EPS", "convert_tflite", "read_tflite_graph"]
