"""`--weights SPEC` -> model: `load_weights`, the one resolver every verb uses."""

from __future__ import annotations

import os

from torch import nn

from mobilenetv2.errors import UserError
from mobilenetv2.weights.convert import convert_file, model_from_converted
from mobilenetv2.weights.format import is_our_checkpoint, load
from mobilenetv2.weights.hub import load_pretrained
from mobilenetv2.weights.pretrained import PRETRAINED

__all__ = ["load_weights"]


def load_weights(spec: str | os.PathLike) -> nn.Module:
    """Model from `--weights SPEC`.

    SPEC is a pretrained registry name (`mobilenetv2.weights.pretrained.PRETRAINED`,
    downloaded and converted once into the cache), one of our `.safetensors` checkpoints, or
    a foreign file (torchvision / timm `.pth` or `.safetensors`, Keras `.h5`, `.tflite`,
    TFLite `.tgz`) converted on the fly. The returned model is in eval mode and its `.meta`
    is a `WeightsMeta` (config, preprocessing, labels, provenance, accuracy).
    """
    spec = os.fspath(spec)
    if spec in PRETRAINED:
        return load_pretrained(spec)
    if not os.path.exists(spec):
        if os.sep not in spec:  # a bare word: a mistyped name more likely than a file
            raise UserError(
                f"--weights {spec!r} is neither a file nor a known pretrained name (e.g. "
                f"{', '.join(list(PRETRAINED)[:4])}; `mobilenetv2 pretrained` lists all "
                f"{len(PRETRAINED)})"
            )
        raise FileNotFoundError(2, "No such file", spec)
    if spec.lower().endswith(".onnx"):
        # Our .onnx files (export, quantize) run in predict and eval (`InferenceSession`);
        # nothing rebuilds a trainable PyTorch model from them.
        raise UserError(f"{spec}: an ONNX model runs in `predict` and `eval` (--weights "
                        f"{spec}); this command needs PyTorch weights (.safetensors, .pth, "
                        f".h5, .tflite or a pretrained name)")
    if spec.endswith(".safetensors") and is_our_checkpoint(spec):
        return load(spec).eval()
    return model_from_converted(convert_file(spec))
