"""Training: recipes, loops, optimizers, EMA, checkpoints, DDP (paper section 6.1).

`train.recipes.make_config` applies a recipe, `train.run.train` runs it; the loop is
`train.engine.train_one_epoch`, the evaluation it reports is `mobilenetv2.evaluate`.

Deliberately empty: the CLI reads the recipe names (`train.recipes`) to build `--help`, and
importing this package must not import torch for that.
"""
