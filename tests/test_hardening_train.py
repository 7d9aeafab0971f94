"""Issue 12: `train --weights` takes every weights file `--weights` takes elsewhere (a
torchvision state dict here), and preprocessing metadata that would take unbounded memory is
refused on load."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from mobilenetv2 import create_model
from mobilenetv2.cli import main
from mobilenetv2.errors import UserError
from mobilenetv2.weights import load, save


def folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(4):
            arr = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / c / f"{i}.png")
    return root


def test_train_from_a_torchvision_state_dict(tmp_path, capsys) -> None:
    torch.manual_seed(0)
    tv = torchvision.models.mobilenet_v2(width_mult=0.35, num_classes=1000).eval()
    pth = tmp_path / "tv.pth"
    torch.save(tv.state_dict(), pth)
    out = tmp_path / "run"
    rc = main(["train", "--data", str(folder(tmp_path / "d")), "--weights", str(pth),
               "--out", str(out), "--epochs", "1", "--batch-size", "4", "--num-workers", "0",
               "--resolution", "32", "--threads", "1", "--tensorboard", "false"])
    assert rc == 0, capsys.readouterr().err
    model = load(out / "model.safetensors")
    assert model.config.width == 0.35 and model.num_classes == 2
    # The backbone started from the file: the first conv is torchvision's, not a fresh init
    # (only the head is new, and a short run barely moves the stem).
    stem = model.stem.conv.weight.detach()
    ref = tv.features[0][0].weight.detach()
    assert torch.corrcoef(torch.stack([stem.flatten(), ref.flatten()]))[0, 1] > 0.9


def test_preprocessing_asking_for_a_huge_resize_is_refused(tmp_path) -> None:
    w = save(create_model("mobilenetv2_035", num_classes=3), tmp_path / "w.safetensors")
    with safe_open(str(w), "pt") as f:
        meta = dict(f.metadata())
    pre = json.loads(meta["preprocessing"])
    pre["resize"] = 60000
    meta["preprocessing"] = json.dumps(pre)
    bad = tmp_path / "huge.safetensors"
    save_file(load_file(w), bad, metadata=meta)
    with pytest.raises(UserError, match="resize must be an integer from 1 to"):
        load(bad)
