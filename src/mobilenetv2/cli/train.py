"""`mobilenetv2 train`: thin layer over `mobilenetv2.train.run.train`.

Options come from the fields of ModelConfig, DataConfig and TrainConfig; `--config FILE`
(YAML or JSON with model/data/train sections) and `--recipe` set defaults below them.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any

from mobilenetv2.cli.options import config_options, option, shared
from mobilenetv2.config import DataConfig, ModelConfig, TrainConfig
from mobilenetv2.train.recipes import RECIPES

__all__ = ["Args", "run"]


@dataclass(frozen=True, kw_only=True)
class Args:
    """train or fine-tune (default: the bundled digits, about a minute on a CPU)

    Train MobileNetV2. Without --data it trains on the bundled handwritten digits and
    evaluates on their test split. Precedence: recipe < --config < options.
    """

    recipe: str | None = option(
        None, choices=tuple(RECIPES), help="preset of model, data and training options",
        default_help="digits for the bundled data, finetune with --weights, else modern")
    config: str | None = option(None, metavar="FILE",
                                help="YAML or JSON with model/data/train sections")
    out: str | None = shared("out", None, note="the run directory", metavar="DIR",
                             default_help="runs/train")
    resume: str | None = option(
        None, nargs="?", const="auto", metavar="CKPT",
        help="resume from a checkpoint file or run directory (default: the newest checkpoint "
        "in --out); the checkpoint's configuration is used, updated by the options given")
    print_config: bool = option(False, help="print the effective configuration and exit")
    model: dict[str, Any] = config_options(ModelConfig)
    data: dict[str, Any] = config_options(DataConfig)
    train: dict[str, Any] = config_options(TrainConfig, exclude=("recipe",))


def run(args: Args) -> int:
    from mobilenetv2.config import DEFAULT_RUN_DIR, RunConfig
    from mobilenetv2.train.checkpoint import load_checkpoint, resolve_resume
    from mobilenetv2.train.recipes import make_config
    from mobilenetv2.train.run import train

    if args.resume is not None:
        path = resolve_resume(args.resume, args.out or DEFAULT_RUN_DIR)
        saved = RunConfig.from_dict(load_checkpoint(path)["config"])
        cfg = RunConfig(saved.model.replace(**args.model), saved.data.replace(**args.data),
                        saved.train.replace(**args.train), args.out or saved.out)
        resume = str(path)
    else:
        cfg = make_config(args.recipe, args.config, args.model, args.data, args.train, args.out)
        resume = None
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    logging.getLogger("mobilenetv2").setLevel(logging.INFO)
    result = train(cfg, resume=resume)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun only rank 0 reports
        print(f"{result.metrics.summary()} after {result.epochs} epochs "
              f"({result.steps} steps) in {result.seconds:.0f} s")
        if result.skipped:
            print(f"skipped {len(result.skipped)} unreadable file(s): see report.md")
        for what, path in result.files.items():
            print(f"{what + ':':<18}{path}")
    return 0
