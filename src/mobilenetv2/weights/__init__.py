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
    "save",
]
