"""Named training recipes (DESIGN example 12): presets of model, data and training options,
and `make_config`, which applies one.

Precedence, lowest first: dataclass defaults, the recipe, a config file, command-line options.

- `paper`: Sandler et al. 2018, section 6.1 ("RMSPropOptimizer with both decay and momentum
  set to 0.9 ... weight decay 0.00004 ... initial learning rate 0.045, and learning rate decay
  rate of 0.98 per epoch ... 16 GPU asynchronous workers, and a batch size of 96"), with the
  TF-slim settings the released checkpoints were trained with (`train_image_classifier.py`:
  `--opt_epsilon=1.0`, `--label_smoothing=0.1`, `--moving_average_decay=0.9999`, dropout 0.2
  as the model's `dropout_keep_prob=0.8`, Inception preprocessing). Epoch count: the paper
  gives none; 300 as the popular reproductions (d-li14/mobilenetv2.pytorch) use.
- `modern`: torchvision's IMAGENET1K_V2 weights (72.154% top-1; pytorch/vision PR #5560):
  `--batch-size 128 (x8 GPUs) --lr 0.5 --lr-scheduler cosineannealinglr --lr-warmup-epochs 5
  --auto-augment ta_wide --epochs 600 --random-erase 0.1 --label-smoothing 0.1
  --mixup-alpha 0.2 --cutmix-alpha 1.0 --weight-decay 0.00002 --norm-weight-decay 0.0
  --train-crop-size 176 --model-ema --val-resize-size 232`. Deviations: no repeated-augment
  sampler (`--ra-sampler`), and depthwise kernels are not decayed either.
- `finetune`: from `--weights`, a new head for the data's classes, SGD with a low learning
  rate and a short cosine schedule; `--freeze` and `--freeze-bn` on request.
- `deeplab-voc`, `segment-demo`: Mobile DeepLabv3 (paper section 6.3) on PASCAL VOC and on
  the bundled digits-on-photographs canvases; see the comments at their entries.
- `ssdlite-coco`: SSDLite on COCO (paper section 6.2), torchvision's SSDLite320 recipe
  (references/detection/README.md: `--epochs 660 --lr-scheduler cosineannealinglr --lr 0.15
  --batch-size 24 --weight-decay 0.00004 --data-augmentation ssdlite`, 8 GPUs = global batch
  192, SGD momentum 0.9), with TF's SSD augmentation (`ssd_random_crop`, flip, plus zoom-out
  and photometric) and 320x320 inputs; lr scales linearly from 0.15 at 192 images.
  Start the backbone from ImageNet weights with `--weights mobilenetv2_100`.
- `detect-demo`: SSDLite width 0.5 at 128x128 on the digit canvases (`data.det_canvases`),
  AdamW
  + cosine, light augmentation (`preset small`: photometric only; the canvases already put
  digits at every scale and position) (`make demo-detect`).
- `digits`: the bundled main job: width 0.5, small-input network at 32x32, SGD + cosine,
  label smoothing, a short EMA; about a minute on two CPU cores for >= 97% test accuracy.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mobilenetv2.config import (
    DEFAULT_RUN_DIR,
    DataConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    load_config_file,
)

__all__ = ["RECIPES", "Recipe", "default_recipe", "make_config"]


@dataclass(frozen=True)
class Recipe:
    """Overrides of ModelConfig, DataConfig and TrainConfig fields.

    `global_batch`: when set, the recipe's batch is the global one, split over torchrun's
    processes (`WORLD_SIZE`) unless a batch size is given; otherwise `data.batch_size` is per
    process and the learning rate scales linearly with processes (`TrainConfig.lr_batch`).
    """

    model: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    global_batch: int | None = None


RECIPES: dict[str, Recipe] = {
    "paper": Recipe(
        model={"resolution": 224, "dropout": 0.2},
        data={"preset": "inception", "batch_size": 96},
        train={"optimizer": "rmsprop_tf", "lr": 0.045, "lr_batch": 96,
               "schedule": "exponential", "lr_decay": 0.98, "momentum": 0.9,
               "rmsprop_decay": 0.9, "rmsprop_eps": 1.0, "weight_decay": 4e-5,
               "label_smoothing": 0.1, "ema_decay": 0.9999, "epochs": 300},
    ),
    "modern": Recipe(
        model={"resolution": 176, "dropout": 0.2},
        data={"preset": "imagenet", "auto_augment": "trivial", "random_erasing": 0.1,
              "mixup_alpha": 0.2, "cutmix_alpha": 1.0, "batch_size": 128, "eval_size": 224,
              "eval_crop_ratio": 224 / 232},
        # torchvision: EMA decay 0.99998 every 32 steps, adjusted by 8 * 128 * 32 / 600
        # -> 0.99891 per update, 0.999966 per step.
        train={"optimizer": "sgd", "lr": 0.5, "lr_batch": 1024, "schedule": "cosine",
               "warmup_epochs": 5, "warmup_start": 0.01, "momentum": 0.9,
               "weight_decay": 2e-5, "label_smoothing": 0.1, "ema_decay": 0.999966,
               "ema_every": 32, "epochs": 600},
    ),
    "finetune": Recipe(
        model={"dropout": 0.2},
        data={"batch_size": 64},
        train={"optimizer": "sgd", "lr": 0.01, "lr_batch": 64, "schedule": "cosine",
               "warmup_epochs": 0, "weight_decay": 1e-5, "label_smoothing": 0.1,
               "ema_decay": 0.0, "epochs": 10},
    ),
    "ssdlite-coco": Recipe(
        model={"task": "detect", "resolution": 320, "num_classes": 81, "bn_eps": 1e-3,
               "bn_momentum": 0.03},
        data={"batch_size": 24, "hflip": True},
        train={"optimizer": "sgd", "lr": 0.15, "lr_batch": 192, "schedule": "cosine",
               "warmup_epochs": 1, "warmup_start": 0.001, "momentum": 0.9,
               "weight_decay": 4e-5, "label_smoothing": 0.0, "epochs": 660},
    ),
    "detect-demo": Recipe(
        # BN momentum 0.1, not SSDLite's 0.03: in a 124-step run at lr 3e-3 the 0.03 running
        # statistics lagged the weights so far that the eval-mode network gave every image
        # the same output (feature std across images 0.01 vs 0.41 after re-estimating BN).
        model={"task": "detect", "width": 0.5, "resolution": 128, "num_classes": 11,
               "bn_eps": 1e-3, "bn_momentum": 0.1},
        data={"data": "canvases", "batch_size": 16, "hflip": False, "num_workers": 1,
              "preset": "small"},
        # amp off: under CPU bf16 autocast, depthwise taps that only ever see padding (the
        # 1x1 maps of the last extra layers at 128x128) received NaN gradients (measured:
        # 2 NaN taps in extras.3.1 after 124 steps; the forward stays finite, loading fails).
        train={"optimizer": "adamw", "lr": 3e-3, "lr_batch": 16, "schedule": "cosine",
               "amp": "off",
               "warmup_epochs": 0.25, "weight_decay": 1e-4, "label_smoothing": 0.0,
               "epochs": 16},
        global_batch=16,
    ),
    # The digits recipe keeps its global batch of 64 under torchrun: its 1,438 images give
    # only 11 steps per epoch at a global 128, and the linearly scaled lr 0.2 with one
    # warm-up epoch diverged to chance (issue 12); split over the processes, every step is
    # the single-process step, so the README's torchrun command learns as one process does.
    "digits": Recipe(
        model={"width": 0.5, "small_input": True, "resolution": 32, "dropout": 0.1},
        data={"preset": "small", "hflip": False, "batch_size": 64},
        train={"optimizer": "sgd", "lr": 0.1, "lr_batch": 64, "schedule": "cosine",
               "warmup_epochs": 1, "weight_decay": 5e-5, "label_smoothing": 0.1,
               "ema_decay": 0.99, "epochs": 15},
        global_batch=64,
    ),
    # Mobile DeepLabv3 on PASCAL VOC 2012 (paper section 6.3; DeepLabv3, Chen et al. 2017,
    # section 4: "poly" learning rate with power 0.9, initial rate 0.007, crop 513x513, batch
    # 16, output stride 16 in training, SGD momentum 0.9; TF DeepLab's weight decay 4e-5 for
    # MobileNet backbones). 30,000 steps of batch 16 over trainaug's 10,582 images are about
    # 45 epochs. The batch is global (16 = 8 GPUs x 2, with --sync-bn for BatchNorm over it).
    "deeplab-voc": Recipe(
        model={"task": "segment", "output_stride": 16, "resolution": 513, "dropout": 0.1},
        data={"batch_size": 16},
        train={"optimizer": "sgd", "lr": 0.007, "lr_batch": 16, "schedule": "poly",
               "warmup_epochs": 0, "momentum": 0.9, "weight_decay": 4e-5,
               "label_smoothing": 0.0, "ema_decay": 0.0, "epochs": 45},
        global_batch=16,
    ),
    # The segmentation demo (`make demo-segment`): handwriting composited on photographs (the
    # bundled `canvases`: strokes vs photograph), width 0.35 at 64x64 and output stride 8
    # (digits are 24-44 pixels, 3-5.5 cells of the stride-8 map), DeepLab's poly schedule
    # with a higher rate (batch 16 of small crops from scratch: 0.007 learns too slowly for
    # a few minutes). `--data canvases-digits` labels each digit's class instead. fp32:
    # bf16 autocast made its steps several times slower on the AVX-512-bf16 development CPU
    # (dilated depthwise convolutions in bf16, channels_last).
    "segment-demo": Recipe(
        model={"task": "segment", "width": 0.35, "round_nearest": 1, "output_stride": 8,
               "resolution": 64, "dropout": 0.1},
        data={"data": "canvases", "batch_size": 16, "hflip": False},
        train={"optimizer": "sgd", "lr": 0.1, "lr_batch": 16, "schedule": "poly",
               "warmup_epochs": 0.5, "momentum": 0.9, "weight_decay": 4e-5,
               "label_smoothing": 0.0, "ema_decay": 0.0, "epochs": 6, "amp": "off"},
        global_batch=16,
    ),
}


def default_recipe(data: str, weights: str | None) -> str:
    """digits for the bundled data, segment-demo for the canvases, finetune when starting
    from weights, deeplab-voc for segmentation folders, else modern."""
    if weights:
        return "finetune"
    if data in ("canvases", "canvases-digits"):
        return "segment-demo"
    if _is_segmentation_folder(Path(data)):
        return "deeplab-voc"
    return "digits" if data == "digits" else "modern"


def _is_segmentation_folder(root: Path) -> bool:
    """PASCAL VOC or an images/ + masks/ folder (data.segmentation's layouts)."""
    voc = any((r / "JPEGImages").is_dir() and (r / "SegmentationClass").is_dir()
              for r in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"))
    return voc or any((r / "images").is_dir() and (r / "masks").is_dir()
                      for r in (root, root / "train"))


def make_config(
    recipe: str | None = None,
    file: str | os.PathLike | None = None,
    model: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
    train: dict[str, Any] | None = None,
    out: str | None = None,
) -> RunConfig:
    """Dataclass defaults, then the recipe, then the config file, then explicit overrides.

    Args:
        recipe: A name of `RECIPES`; None takes the file's `recipe`, else `default_recipe`.
        file: A YAML/JSON config file (see `config.load_config_file`).
        model, data, train: Overrides of `ModelConfig`, `DataConfig`, `TrainConfig` fields.
        out: The run directory (default: the file's `out`, else `runs/train`).
    """
    doc = load_config_file(file) if file else {}
    model, data, train = dict(model or {}), dict(data or {}), dict(train or {})
    data_src = data.get("data", doc.get("data", {}).get("data", "digits"))
    weights = train.get("weights", doc.get("train", {}).get("weights"))
    name = recipe or doc.get("recipe") or default_recipe(data_src, weights)
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose from {', '.join(RECIPES)}")
    preset = RECIPES[name]
    base = dict(preset.model)
    if weights and (Path(weights).is_file() or weights in _pretrained_names()):
        # Fine-tuning starts from the architecture (and resolution) the weights were made for;
        # a missing file is reported once, where the model is built (`train.finetune`).
        wcfg = _weights_config(weights).to_dict()
        if preset.model.get("task", wcfg["task"]) != wcfg["task"]:
            # Another task's weights as this network's backbone (classification weights
            # starting a segmenter or a detector): the task's options come from the recipe,
            # the backbone's architecture from the weights (tasks/segment.py, tasks/detect.py).
            base = {**base, **{k: wcfg[k] for k in ("width", "round_nearest", "padding",
                                                     "bn_eps")}}
        else:
            base = {**wcfg, "dropout": base.get("dropout", 0.2)}
            del base["num_classes"]  # the new head gets the data's classes
    m = {**base, **doc.get("model", {}), **model}
    d = {**preset.data, **doc.get("data", {}), **data}
    if preset.global_batch and "batch_size" not in {**doc.get("data", {}), **data}:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if preset.global_batch % world:
            raise ValueError(f"the {name} recipe's global batch {preset.global_batch} does not "
                             f"split over {world} processes; give --batch-size per process")
        d["batch_size"] = preset.global_batch // world
    t = {"recipe": name, **preset.train, **doc.get("train", {}), **train}
    return RunConfig(model=ModelConfig().replace(**m), data=DataConfig().replace(**d),
                     train=TrainConfig().replace(**t), out=out or doc.get("out", DEFAULT_RUN_DIR))


def _weights_config(spec: str) -> ModelConfig:
    """The architecture of any `--weights` spec: read from our file's metadata alone, else
    from the converted foreign file or pretrained name (`weights.load_weights`)."""
    from mobilenetv2.weights import load_weights
    from mobilenetv2.weights.format import is_our_checkpoint, read_meta

    if str(spec).endswith(".safetensors") and Path(spec).is_file() and is_our_checkpoint(spec):
        return read_meta(spec).config
    return load_weights(spec).config


def _pretrained_names() -> tuple[str, ...]:
    from mobilenetv2.weights.pretrained import PRETRAINED

    return tuple(PRETRAINED)
