"""`mobilenetv2 train`: thin layer over `mobilenetv2.train.train`.

Options come from the fields of ModelConfig, DataConfig and TrainConfig; `--config FILE`
(YAML or JSON with model/data/train sections) and `--recipe` set defaults below them.
"""

from __future__ import annotations

import argparse
import json
import logging

from mobilenetv2.cli.options import add_config_options, config_overrides
from mobilenetv2.config import DataConfig, ModelConfig, TrainConfig
from mobilenetv2.train.recipes import RECIPES

_FIELDS: dict[str, list[str]] = {}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train or fine-tune (default: the bundled digits, about a minute on a CPU)",
        description="Train MobileNetV2. Without --data it trains on the bundled handwritten "
        "digits and evaluates on their test split. Precedence: recipe < --config < options.",
    )
    p.add_argument("--recipe", choices=list(RECIPES),
                   help="preset: paper, modern, finetune, digits (default: digits for the "
                   "bundled data, finetune with --weights, else modern)")
    p.add_argument("--config", metavar="FILE", help="YAML or JSON with model/data/train sections")
    p.add_argument("--out", metavar="DIR", help="run directory (default: runs/train)")
    p.add_argument("--resume", nargs="?", const="auto", metavar="CKPT",
                   help="resume from a checkpoint file or run directory (default: the newest "
                   "checkpoint in --out); the checkpoint's configuration is used, updated "
                   "by the options given")
    p.add_argument("--print-config", action="store_true",
                   help="print the effective configuration and exit")
    groups = {
        "model": (ModelConfig, {}),
        "data": (DataConfig, {}),
        "train": (TrainConfig, {"exclude": ("recipe",)}),
    }
    for name, (cls, kw) in groups.items():
        g = p.add_argument_group(f"{name} options ({cls.__name__})")
        _FIELDS[name] = add_config_options(g, cls, **kw)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mobilenetv2.config import DEFAULT_RUN_DIR, RunConfig
    from mobilenetv2.train import make_config, train
    from mobilenetv2.train.checkpoint import load_checkpoint, resolve_resume

    over = {k: config_overrides(args, names) for k, names in _FIELDS.items()}
    if args.resume is not None:
        path = resolve_resume(args.resume, args.out or DEFAULT_RUN_DIR)
        saved = RunConfig.from_dict(load_checkpoint(path)["config"])
        cfg = RunConfig(saved.model.replace(**over["model"]), saved.data.replace(**over["data"]),
                        saved.train.replace(**over["train"]), args.out or saved.out)
        resume = str(path)
    else:
        cfg = make_config(args.recipe, args.config, over["model"], over["data"], over["train"],
                          args.out)
        resume = None
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    logging.getLogger("mobilenetv2").setLevel(logging.INFO)
    result = train(cfg, resume=resume)
    from mobilenetv2.train.distributed import DistInfo

    if DistInfo().is_main and _is_rank0():
        print(f"top-1 {result.top1:.2%}, top-5 {result.top5:.2%} after {result.epochs} epochs "
              f"({result.steps} steps) in {result.seconds:.0f} s")
        if result.skipped:
            print(f"skipped {len(result.skipped)} unreadable file(s): see report.md")
        for what, path in result.files.items():
            print(f"{what + ':':<18}{path}")
    return 0


def _is_rank0() -> bool:
    import os

    return int(os.environ.get("RANK", "0")) == 0
