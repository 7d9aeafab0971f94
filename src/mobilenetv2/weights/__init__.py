"""Weights: our safetensors checkpoint format, converters from every ecosystem, pretrained."""

from mobilenetv2.weights.io import (
    Converted,
    Preprocessing,
    WeightsMeta,
    load,
    load_meta,
    load_state_dict_checked,
    save,
)

__all__ = [
    "Converted",
    "Preprocessing",
    "WeightsMeta",
    "load",
    "load_meta",
    "load_state_dict_checked",
    "load_weights",
    "save",
]


def load_weights(spec: str):
    """Model from `--weights SPEC`: today a path to one of our `.safetensors` files.

    The pretrained registry and foreign formats (torchvision, timm, Keras, TFLite) extend
    this in `mobilenetv2.weights.pretrained`.
    """
    return load(spec)
