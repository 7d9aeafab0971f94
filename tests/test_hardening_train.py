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


@pytest.mark.slow
def test_readme_torchrun_command_learns_the_digits(tmp_path) -> None:
    """The README's data-parallel command on the bundled digits (2 gloo processes): it ended
    at chance (10%) when the recipe's lr was scaled to a global batch of 128. Measured after
    the fix, 4 epochs (88 optimizer steps), seeded: 95.8% top-1 on an Intel Xeon (AVX-512),
    90.8% on an AMD EPYC Zen 3 (AVX2), 88.6% on a CI machine -- the CPU's arithmetic moves so
    short a run by several points, so the bar sits well above chance, not at the best figure
    (one process: 96-97%)."""
    import os
    import subprocess
    import sys

    from support.procs import all_cores

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root / "src"), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "ddp"
    r = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
         "--rdzv_backend=c10d", "--rdzv_endpoint=127.0.0.1:0", "-m", "mobilenetv2", "train",
         "--epochs", "4", "--out", str(out), "--threads", "1", "--tensorboard", "false"],
        env=env, capture_output=True, text=True, timeout=280, preexec_fn=all_cores)
    assert r.returncode == 0, r.stderr[-2000:]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["data"]["batch_size"] == 32  # the recipe's global 64 over 2 processes
    top1 = json.loads((out / "eval.json").read_text())["top1"]
    assert top1 >= 0.8, top1
