"""Training end to end on tiny real data (the bundled digits as PNG folders): bad data is
caught before training, corrupt files are skipped and counted, the shipped weights evaluate
to the reported accuracy through the public eval route, fine-tuning freezes what it should,
and a non-finite loss stops the run with the last checkpoint intact."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mobilenetv2.cli import main
from mobilenetv2.data.digits import DigitsDataset, digits_arrays
from mobilenetv2.data.transforms import eval_transform
from mobilenetv2.errors import UserError
from mobilenetv2.evaluate import run_eval
from mobilenetv2.train.checkpoint import find_latest, load_checkpoint
from mobilenetv2.train.recipes import make_config
from mobilenetv2.train.run import train
from mobilenetv2.weights import load_weights

TINY = {"width": 0.35, "resolution": 16, "small_input": True, "dropout": 0.0}


def make_folder(root: Path, classes=(0, 1, 2), per_class: int = 12) -> Path:
    """A class-per-folder dataset of real digit scans (PNG)."""
    images, labels = digits_arrays("train")
    for c in classes:
        d = root / f"digit{c}"
        d.mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(images[labels == c][:per_class]):
            Image.fromarray(img).save(d / f"{i:03d}.png")
    return root


def tiny_cfg(data: str, out: Path, **train):
    return make_config(
        "digits", model=dict(TINY), data={"data": data, "batch_size": 8, "num_workers": 0},
        train={"epochs": 1, "threads": 1, "tensorboard": False, "log_every": 1, **train},
        out=str(out))


def test_empty_class_and_single_class_fail_before_training(tmp_path, capsys) -> None:
    root = make_folder(tmp_path / "d")
    (root / "digit9").mkdir()
    out = tmp_path / "run"
    assert main(["train", "--data", str(root), "--out", str(out), "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "empty class folder" in err and "digit9" in err and "Traceback" not in err
    assert not out.exists()  # nothing was started
    one = make_folder(tmp_path / "one", classes=(4,))
    assert main(["train", "--data", str(one), "--out", str(out)]) == 2
    assert "only one class" in capsys.readouterr().err


def test_train_skips_corrupt_files_and_eval_matches(tmp_path, capsys) -> None:
    root = make_folder(tmp_path / "d")
    (root / "digit1" / "truncated.png").write_bytes(
        (root / "digit1" / "000.png").read_bytes()[:40])
    (root / "digit2" / "notes.jpg").write_text("not an image")
    out = tmp_path / "run"
    result = train(tiny_cfg(str(root), out, epochs=2), progress=False)
    report = (out / "report.md").read_text()
    assert "Skipped files" in report and "Effective configuration" in report
    for name in ("model.safetensors", "curves.png", "confusion.png", "eval.json",
                 "metrics.jsonl", "config.json"):
        assert (out / name).is_file(), name
    kinds = [json.loads(x)["kind"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert kinds.count("epoch") == 2 and "step" in kinds
    saved = json.loads((out / "config.json").read_text())
    assert saved["model"]["width"] == 0.35 and saved["data"]["data"] == str(root)
    assert load_checkpoint(find_latest(out))["config"] == saved  # config in every checkpoint
    # The corrupt files are skipped wherever they landed and reported, never fatal.
    skipped = json.loads((out / "eval.json").read_text())["skipped_files"] + result.skipped
    assert sorted(Path(s).name for s in skipped) == ["notes.jpg", "truncated.png"]
    assert f"Skipped files ({len(result.skipped)})" in report
    # eval CLI on the same folder (it holds the training images too): runs, writes reports.
    assert main(["eval", "--weights", str(out / "model.safetensors"), "--data", str(root),
                 "--out", str(tmp_path / "ev"), "--num-workers", "0"]) == 0
    text = capsys.readouterr().out
    assert "top-1" in text and "skipped 2 unreadable" in text
    ev = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert ev["count"] == 36 and set(ev["per_class"]) == {"digit0", "digit1", "digit2"}
    assert np.asarray(ev["confusion"]).sum() == 36
    # strict_images makes the same data fatal, with the file named.
    with pytest.raises(UserError, match="truncated.png|notes.jpg"):
        cfg = tiny_cfg(str(root), tmp_path / "strict")
        train(dataclasses.replace(cfg, data=cfg.data.replace(strict_images=True)),
              progress=False)


@pytest.mark.slow
def test_digits_weights_reproduce_reported_accuracy_via_public_route(tmp_path) -> None:
    """What `quantize --calib digits` and `eval` do with our digits weights."""
    out = tmp_path / "run"
    cfg = make_config(model={"width": 0.35}, data={"num_workers": 0},
                      train={"epochs": 1, "max_steps": 6, "threads": 0, "tensorboard": False},
                      out=str(out))
    result = train(cfg, progress=False)
    model = load_weights(str(out / "model.safetensors"))
    meta = model.meta
    assert meta.labels == [str(i) for i in range(10)] and meta.config.small_input
    assert meta.preprocessing.resize == 32 and meta.preprocessing.resize_mode == "exact"
    ds = DigitsDataset("test", transform=eval_transform(meta.preprocessing))
    model.eval()
    with torch.no_grad():
        x = torch.stack([ds[i][0] for i in range(len(ds))])
        pred = model(x).argmax(1)
    acc = (pred == torch.tensor(ds.targets)).double().mean().item()
    assert acc == pytest.approx(meta.accuracy["top1"], abs=1e-9)
    assert acc == pytest.approx(result.top1, abs=1e-9)
    assert run_eval(model, "digits", progress=False).result.top1 == pytest.approx(acc)


def test_finetune_freezes_backbone_and_replaces_head(tmp_path) -> None:
    src = tmp_path / "src"
    train(tiny_cfg(str(make_folder(tmp_path / "a", classes=(0, 1, 2, 3))), src, max_steps=2),
          progress=False)
    before = load_weights(str(src / "model.safetensors"))
    root = make_folder(tmp_path / "b", classes=(5, 6))
    out = tmp_path / "ft"
    assert main(["train", "--data", str(root), "--weights", str(src / "model.safetensors"),
                 "--freeze", "backbone", "--out", str(out), "--epochs", "1", "--batch-size",
                 "8", "--num-workers", "0", "--tensorboard", "false", "--threads", "1"]) == 0
    after = load_weights(str(out / "model.safetensors"))
    assert after.num_classes == 2 and after.meta.labels == ["digit5", "digit6"]
    assert json.loads((out / "config.json").read_text())["train"]["recipe"] == "finetune"
    a, b = before.state_dict(), after.state_dict()
    for k in a:
        if not k.startswith("classifier"):
            assert torch.equal(a[k], b[k]), k  # weights and BN statistics untouched


def test_non_finite_loss_stops_with_last_checkpoint_intact(tmp_path, monkeypatch) -> None:
    import mobilenetv2.tasks.classify as classify
    import mobilenetv2.train.engine as engine

    real = classify.F
    calls = {"n": 0}

    class Poisoned:
        def __getattr__(self, name):
            return getattr(real, name)

        def cross_entropy(self, *a, **k):  # the training loss (evaluation is evaluate.F)
            loss = real.cross_entropy(*a, **k)
            calls["n"] += 1
            return loss * float("nan") if calls["n"] > 5 else loss

    monkeypatch.setattr(classify, "F", Poisoned())
    root = make_folder(tmp_path / "d")
    out = tmp_path / "run"
    with pytest.raises(engine.NonFiniteLoss, match="step 6"):
        train(tiny_cfg(str(root), out, epochs=3, checkpoint_every=2), progress=False)
    last = load_checkpoint(find_latest(out))
    assert last["state"]["step"] == 4
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())
    assert not (out / "model.safetensors").exists()


def test_grad_accumulation_matches_the_large_batch(tmp_path) -> None:
    """4 x 2 accumulated micro-batches = one batch of 8 (BN statistics frozen, no dropout);
    gradient clipping with a huge threshold changes nothing."""
    root = make_folder(tmp_path / "d")
    common = {"max_steps": 2, "freeze_bn": True, "ema_decay": 0.0, "lr": 0.2}
    big = tiny_cfg(str(root), tmp_path / "big", **common)
    acc = tiny_cfg(str(root), tmp_path / "acc", grad_accum=2, clip_grad_norm=1e9, **common)
    acc = dataclasses.replace(acc, data=acc.data.replace(batch_size=4, mixup_alpha=0.0))
    big = dataclasses.replace(big, data=big.data.replace(mixup_alpha=0.0))
    a = train(big, progress=False).model.state_dict()
    b = train(acc, progress=False).model.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6, msg=k)
    assert not torch.equal(a["classifier.bias"], torch.zeros_like(a["classifier.bias"]))
