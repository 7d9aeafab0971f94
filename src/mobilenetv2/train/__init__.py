"""Training: recipes, loops, optimizers, EMA, checkpoints, DDP (paper section 6.1).

`make_config` applies a recipe (`train.recipes`), `train` runs it (`train.run`); the loop is
`train.engine.train_one_epoch`, the evaluation it reports is `mobilenetv2.evaluate`.
"""

from mobilenetv2.train.recipes import make_config
from mobilenetv2.train.run import TrainResult, train

__all__ = ["TrainResult", "make_config", "train"]
