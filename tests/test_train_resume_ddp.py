"""The two hard guarantees, each in real subprocesses: a run killed with SIGKILL mid-epoch and
resumed ends bit-identical to an uninterrupted run, and DDP over 2 gloo processes (torchrun)
keeps identical weights on both ranks and matches one process over the same global batch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mobilenetv2 import MobileNetV2
from mobilenetv2.cli import main
from mobilenetv2.config import RunConfig
from test_train_e2e import make_folder

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + str(ROOT),
       "OMP_NUM_THREADS": "1"}
# Dropout, EMA, mixup and cutmix on: every RNG and every piece of state must be restored.
COMMON = ["--width", "0.35", "--resolution", "16", "--small-input", "true", "--dropout", "0.2",
          "--batch-size", "8", "--num-workers", "0", "--epochs", "2", "--threads", "1",
          "--deterministic", "true", "--checkpoint-every", "3", "--ema-decay", "0.9",
          "--mixup-alpha", "0.2", "--cutmix-alpha", "1.0", "--tensorboard", "false",
          "--keep-last", "10"]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "mobilenetv2", "train", *args]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_is_bit_identical(tmp_path) -> None:
    data = make_folder(tmp_path / "d", per_class=24)  # 66 train images: 8 steps per epoch
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    subprocess.run(cli("--data", str(data), "--out", str(ref), *COMMON), env=ENV, check=True,
                   capture_output=True, timeout=300)
    proc = subprocess.Popen(cli("--data", str(data), "--out", str(killed), *COMMON), env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not (killed / "checkpoint-00000003.pt").exists():
            assert proc.poll() is None, "the run ended before its first step checkpoint"
            assert time.monotonic() < deadline
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "model.safetensors").exists()
    latest = sorted(killed.glob("checkpoint-*.pt"))[-1]
    state = torch.load(latest, weights_only=True)["state"]
    assert state["epoch_step"] != 0, "expected a mid-epoch checkpoint"
    subprocess.run(cli("--resume", "--out", str(killed)), env=ENV, check=True,
                   capture_output=True, timeout=300)
    a = load_file(ref / "model.safetensors")
    b = load_file(killed / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"
    # The raw weights, optimizer state, scheduler and counters of the last checkpoint too.
    ca = torch.load(ref / "checkpoint-00000016.pt", weights_only=True)
    cb = torch.load(killed / "checkpoint-00000016.pt", weights_only=True)
    for k in ca["model"]:
        assert torch.equal(ca["model"][k], cb["model"][k]), k
    for s, t in zip(ca["optimizer"]["state"].values(), cb["optimizer"]["state"].values()):
        assert torch.equal(s["momentum_buffer"], t["momentum_buffer"])
    assert ca["scheduler"] == cb["scheduler"] and ca["state"] == cb["state"]


DDP_WORKER = """
import os, sys, torch
from mobilenetv2.train.recipes import make_config
from mobilenetv2.train.run import train
data, out, batch, workers = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
cfg = make_config("digits",
    model={"width": 0.35, "resolution": 16, "small_input": True, "dropout": 0.0},
    data={"data": data, "batch_size": batch, "num_workers": workers, "mixup_alpha": 0.0},
    train={"epochs": 2, "threads": 1, "freeze_bn": True, "ema_decay": 0.0,
           "tensorboard": False, "lr": 0.2}, out=out)
result = train(cfg, progress=False)
rank = int(os.environ.get("RANK", "0"))
torch.save({k: v.clone() for k, v in result.model.state_dict().items()},
           os.path.join(out, f"rank{rank}.pt"))
open(os.path.join(out, f"epochs{rank}.txt"), "w").write(f"{result.epochs} {result.steps}")
"""


@pytest.mark.slow
def test_ddp_two_gloo_ranks_match_single_process(tmp_path) -> None:
    """The DDP ranks load as a multi-GPU ImageNet run does (README "ImageNet on 8 GPUs"):
    a DistributedSampler shard per rank, reshuffled each epoch (a second epoch is begun),
    with a persistent loader worker per rank; one process without workers over the same global
    batch must end at the same weights. (Pinned memory needs CUDA: not run here.)"""
    data = make_folder(tmp_path / "d")
    worker = tmp_path / "worker.py"
    worker.write_text(DDP_WORKER)
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    r = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
         "--rdzv_backend=c10d", "--rdzv_endpoint=127.0.0.1:0",
         str(worker), str(data), str(ddp), "4", "1"],
        env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    subprocess.run([sys.executable, str(worker), str(data), str(single), "8", "0"], env=ENV,
                   check=True, capture_output=True, timeout=300)
    for run in (ddp, single):  # 33 training images, global batch 8: 2 epochs of 4 steps
        assert (run / "epochs0.txt").read_text() == "2 8"
    r0 = torch.load(ddp / "rank0.pt", weights_only=True)
    r1 = torch.load(ddp / "rank1.pt", weights_only=True)
    one = torch.load(single / "rank0.pt", weights_only=True)
    for k in r0:
        assert torch.equal(r0[k], r1[k]), f"ranks differ at {k}"
        torch.testing.assert_close(r0[k], one[k], rtol=1e-4, atol=1e-6, msg=k)
    # Training moved the weights: this is not a comparison of two initialisations.
    cfg = RunConfig.from_dict(json.loads((ddp / "config.json").read_text()))
    torch.manual_seed(cfg.train.seed)  # what train() does before building the model
    init = MobileNetV2(cfg.model.replace(num_classes=3)).state_dict()
    moved = [k for k in r0 if r0[k].is_floating_point() and not torch.equal(r0[k], init[k])]
    assert "classifier.weight" in moved and "stem.conv.weight" in moved
    assert (ddp / "model.safetensors").exists()


@pytest.mark.parametrize("bad", ["--epochs=0", "--lr=-1", "--freeze=stages:x"])
def test_bad_options_one_line_error(bad: str, tmp_path, capsys) -> None:
    """In process (the entry point's own subprocess path is covered by the resume test)."""
    assert main(["train", bad, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert bad.split("=")[0].lstrip("-") in err  # names the bad option
    assert not (tmp_path / "o").exists()  # nothing was started
