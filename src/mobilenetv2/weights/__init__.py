"""Weights: our safetensors checkpoint format, converters from every ecosystem, pretrained."""

from mobilenetv2.weights.format import (
    Converted,
    WeightsMeta,
    load,
    load_meta,
    load_state_dict_checked,
    save,
)

__all__ = [
    "Converted",
    "WeightsMeta",
    "load",
    "load_meta",
    "load_state_dict_checked",
    "load_weights",
    "save",
]


def load_weights(spec: str):
    """Model from `--weights SPEC`, the one resolver every verb uses.

    SPEC is a pretrained registry name (`mobilenetv2.weights.pretrained.PRETRAINED`,
    downloaded and converted once into the cache), one of our `.safetensors` checkpoints, or
    a foreign file (torchvision / timm `.pth` or `.safetensors`, Keras `.h5`, `.tflite`,
    TFLite `.tgz`) converted on the fly. The returned model is in eval mode and its `.meta`
    is a `WeightsMeta` (config, preprocessing, labels, provenance, accuracy).
    """
    import os

    from mobilenetv2.weights.convert import (
        convert_file,
        is_our_checkpoint,
        model_from_converted,
    )
    from mobilenetv2.weights.pretrained import PRETRAINED, load_pretrained

    spec = os.fspath(spec)
    if spec in PRETRAINED:
        return load_pretrained(spec)
    if not os.path.exists(spec):
        if os.sep not in spec:  # a bare word: a mistyped name more likely than a file
            from mobilenetv2.errors import UserError

            raise UserError(
                f"--weights {spec!r} is neither a file nor a known pretrained name (e.g. "
                f"{', '.join(list(PRETRAINED)[:4])}; `mobilenetv2 pretrained` lists all "
                f"{len(PRETRAINED)})"
            )
        raise FileNotFoundError(2, "No such file", spec)
    if spec.endswith(".safetensors") and is_our_checkpoint(spec):
        return load(spec).eval()
    return model_from_converted(convert_file(spec))
