"""Weights: our safetensors format, the `--weights SPEC` resolver, converters from every
ecosystem, the pretrained table and its download cache.

Names say what they return: `load` (one of our files -> model), `load_weights` (any
`--weights` spec: our file, a foreign file, a pretrained name -> model), `read_meta` (our
file's metadata only), `load_state_dict_checked` (tensors into a model, with a report of what
does not fit), `save` (model -> our file).
"""

from mobilenetv2.weights.format import (
    Converted,
    WeightsMeta,
    load,
    load_state_dict_checked,
    read_meta,
    save,
)
from mobilenetv2.weights.resolve import load_weights

__all__ = [
    "Converted",
    "WeightsMeta",
    "load",
    "load_state_dict_checked",
    "load_weights",
    "read_meta",
    "save",
]
