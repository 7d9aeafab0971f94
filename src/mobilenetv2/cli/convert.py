"""`mobilenetv2 convert`: foreign weights (torchvision, timm, Keras, TFLite) -> our format."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mobilenetv2.cli.options import option, shared

__all__ = ["Args", "SourceFormat", "run"]

# The names of the library's converter formats (`weights.convert.FORMATS`), spelled out here
# because that module imports torch and `--help` must not; tests/test_cli.py checks that the
# two agree.
SourceFormat = Literal["torchvision", "timm", "keras", "tflite"]


@dataclass(frozen=True, kw_only=True)
class Args:
    """convert torchvision/timm/Keras/TFLite weights to a self-describing .safetensors

    Convert a foreign MobileNetV2 weights file to our .safetensors format, with config,
    preprocessing, labels and provenance (source path and sha256) inside. .pth/.pt files are
    read without unpickling code (torch.load weights_only=True).
    """

    src: str = option(positional=True, metavar="SRC",
                      help=".pth/.pt/.safetensors, .h5, .tflite or .tgz")
    out: str = shared("out", note="our .safetensors file", flags=("-o", "--out", "--output"),
                      metavar="OUT.safetensors")
    fmt: SourceFormat | None = option(
        None, flags=("--from",),
        help="source format (default: detected from the suffix and key layout)")
    ema: bool = option(False, help="take the EMA weights of a training checkpoint "
                       "(model_ema / state_dict_ema)")
    labels: str | None = option(None, metavar="FILE",
                                help="class names, one per line (TF/Coral label files), for a "
                                "model not trained on ImageNet; the count must match")


def run(args: Args) -> int:
    from mobilenetv2.weights.convert import convert
    from mobilenetv2.weights.format import read_meta

    out = convert(args.src, args.out, args.fmt, use_ema=args.ema, labels=args.labels)
    meta = read_meta(out)
    cfg, prov = meta.config, meta.provenance
    print(
        f"wrote {out}: {prov.get('format')} MobileNetV2 width {cfg.width}, "
        f"{cfg.num_classes} classes, padding {cfg.padding}, bn_eps {cfg.bn_eps:g}; "
        f"preprocessing resize {meta.preprocessing.resize} crop {meta.preprocessing.crop}; "
        f"source sha256 {prov.get('source_sha256', '?')[:16]}"
    )
    return 0
