"""`mobilenetv2 convert`: foreign weights (torchvision, timm, Keras, TFLite) -> our format."""

from __future__ import annotations

import argparse

from mobilenetv2.weights.convert import FORMATS, convert
from mobilenetv2.weights.format import read_meta


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert torchvision/timm/Keras/TFLite weights to a self-describing .safetensors",
        description="Convert a foreign MobileNetV2 weights file to our .safetensors format, "
        "with config, preprocessing, labels and provenance (source path and sha256) inside. "
        ".pth/.pt files are read without unpickling code (torch.load weights_only=True).",
    )
    p.add_argument("src", metavar="SRC", help=".pth/.pt/.safetensors, .h5, .tflite or .tgz")
    p.add_argument("-o", "--output", required=True, metavar="OUT.safetensors")
    p.add_argument("--from", dest="fmt", choices=FORMATS,
                   help="source format (default: detected from the suffix and key layout)")
    p.add_argument("--ema", action="store_true",
                   help="take the EMA weights of a training checkpoint (model_ema / "
                   "state_dict_ema)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = convert(args.src, args.output, args.fmt, use_ema=args.ema)
    meta = read_meta(out)
    cfg, prov = meta.config, meta.provenance
    print(
        f"wrote {out}: {prov.get('format')} MobileNetV2 width {cfg.width}, "
        f"{cfg.num_classes} classes, padding {cfg.padding}, bn_eps {cfg.bn_eps:g}; "
        f"preprocessing resize {meta.preprocessing.resize} crop {meta.preprocessing.crop}; "
        f"source sha256 {prov.get('source_sha256', '?')[:16]}"
    )
    return 0
