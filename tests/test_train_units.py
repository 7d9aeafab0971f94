"""Units of the training stack: TF RMSProp against TF's update rule (and timm's RMSpropTF),
the schedule, parameter groups, configuration precedence, mixup/cutmix, the mixed-precision
rule, freezing and the resume lookup."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from mobilenetv2 import MobileNetV2, ModelConfig
from mobilenetv2.config import DataConfig, TrainConfig
from mobilenetv2.data.loaders import ResumableSampler, mix_batch
from mobilenetv2.errors import UserError
from mobilenetv2.profile import profile
from mobilenetv2.train.amp import CPU_BF16_MIN_MADDS, choose_amp, cpu_has_bf16
from mobilenetv2.train.checkpoint import resolve_resume
from mobilenetv2.train.engine import keep_frozen_bn
from mobilenetv2.train.finetune import apply_freeze
from mobilenetv2.train.optim import RMSpropTF, lr_at, param_groups
from mobilenetv2.train.recipes import make_config


def tf_rmsprop_reference(w0, grads, lrs, rho=0.9, momentum=0.9, eps=1.0, wd=0.0):
    """TF1 `ApplyRMSProp` (tensorflow/core/kernels/training_ops.cc), written out by hand:
    ms = rho*ms + (1-rho)*g^2 with ms initialised to ones (RMSPropOptimizer's slot init);
    mom = momentum*mom + lr*g/sqrt(ms + epsilon); var -= mom. L2 weight decay from the loss
    term wd * ||w||^2 / 2 adds wd * w to the gradient."""
    w = np.array(w0, dtype=np.float64)
    ms = np.ones_like(w)
    mom = np.zeros_like(w)
    for g, lr in zip(grads, lrs):
        g = np.asarray(g, dtype=np.float64) + wd * w
        ms = rho * ms + (1 - rho) * g * g
        mom = momentum * mom + lr * g / np.sqrt(ms + eps)
        w = w - mom
    return w


@pytest.mark.parametrize("eps,wd", [(1.0, 0.0), (1.0, 4e-5), (1e-3, 0.1)])
def test_rmsprop_tf_matches_tf_update_rule(eps: float, wd: float) -> None:
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(5,))
    grads = [rng.normal(size=(5,)) * s for s in (1.0, 3.0, 0.1, 2.0)]
    lrs = [0.045, 0.045, 0.045 * 0.98, 0.045 * 0.98]  # lr changes mid-way: lr lives in mom
    p = nn.Parameter(torch.tensor(w0, dtype=torch.float64))
    opt = RMSpropTF([p], lr=lrs[0], eps=eps, weight_decay=wd)
    for g, lr in zip(grads, lrs):
        opt.param_groups[0]["lr"] = lr
        p.grad = torch.tensor(g)
        opt.step()
    expected = tf_rmsprop_reference(w0, grads, lrs, eps=eps, wd=wd)
    np.testing.assert_allclose(p.detach().numpy(), expected, rtol=1e-12, atol=1e-14)
    # And it is not torch's RMSprop (eps outside the sqrt, ms from zero): the difference
    # is what the paper's epsilon 1.0 changes.
    q = nn.Parameter(torch.tensor(w0, dtype=torch.float64))
    ref = torch.optim.RMSprop([q], lr=lrs[0], alpha=0.9, eps=eps, momentum=0.9)
    for g in grads:
        q.grad = torch.tensor(g)
        ref.step()
    assert not np.allclose(q.detach().numpy(), expected, atol=1e-6)


def test_rmsprop_tf_matches_timm() -> None:
    timm_optim = pytest.importorskip("timm.optim", reason="timm not installed")
    torch.manual_seed(0)
    a, b = nn.Linear(4, 3), nn.Linear(4, 3)
    b.load_state_dict(a.state_dict())
    ours = RMSpropTF(a.parameters(), lr=0.01, rho=0.9, momentum=0.9, eps=1.0)
    theirs = timm_optim.RMSpropTF(b.parameters(), lr=0.01, alpha=0.9, momentum=0.9, eps=1.0,
                                  lr_in_momentum=True)
    for _ in range(5):
        x = torch.randn(8, 4)
        for m, o in ((a, ours), (b, theirs)):
            o.zero_grad()
            m(x).square().sum().backward()
            o.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-6, atol=1e-7)


def test_paper_schedule_is_staircase_per_epoch() -> None:
    cfg = make_config("paper").train
    assert cfg.optimizer == "rmsprop_tf" and cfg.rmsprop_eps == 1.0 and cfg.ema_decay == 0.9999
    lr = [lr_at(s, cfg, 100, 0.045) for s in (0, 99, 100, 250, 1000)]
    assert lr == pytest.approx([0.045, 0.045, 0.045 * 0.98, 0.045 * 0.98**2, 0.045 * 0.98**10])


def test_cosine_with_warmup() -> None:
    cfg = TrainConfig(epochs=10, schedule="cosine", warmup_epochs=1, warmup_start=0.1)
    assert lr_at(0, cfg, 10, 1.0) == pytest.approx(0.1)
    assert lr_at(5, cfg, 10, 1.0) == pytest.approx(0.55)
    assert lr_at(10, cfg, 10, 1.0) == pytest.approx(1.0)
    assert lr_at(55, cfg, 10, 1.0) == pytest.approx(0.5)
    assert lr_at(100, cfg, 10, 1.0) == pytest.approx(0.0, abs=1e-12)


def test_no_weight_decay_on_bn_bias_depthwise() -> None:
    model = MobileNetV2(ModelConfig(width=0.35, num_classes=10))
    decay, no_decay = param_groups(model, 4e-5)
    names = {id(p): n for n, p in model.named_parameters()}
    no = {names[id(p)] for p in no_decay["params"]}
    yes = {names[id(p)] for p in decay["params"]}
    assert "blocks.3.depthwise.conv.weight" in no and "blocks.3.depthwise.bn.weight" in no
    assert "classifier.bias" in no and "blocks.3.expand.conv.weight" in yes
    assert "classifier.weight" in yes and "stem.conv.weight" in yes
    assert no_decay["weight_decay"] == 0 and decay["weight_decay"] == 4e-5
    assert all(not n.endswith("depthwise.conv.weight") for n in yes)


def test_config_precedence_recipe_file_cli(tmp_path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  epochs: 3\n  lr: 0.2\ndata:\n  batch_size: 32\nmodel:\n  width: 0.35\n")
    cfg = make_config(None, f, train={"lr": 0.3})
    assert cfg.train.recipe == "digits"            # default recipe for the bundled data
    assert cfg.train.epochs == 3 and cfg.data.batch_size == 32 and cfg.model.width == 0.35
    assert cfg.train.lr == 0.3                     # the command line wins over the file
    assert cfg.model.small_input is True           # the recipe fills what the file leaves
    j = tmp_path / "c.json"
    j.write_text(json.dumps({"train": {"bogus": 1}}))
    with pytest.raises(ValueError, match="bogus"):
        make_config(None, j)
    assert make_config(data={"data": str(tmp_path)}).train.recipe == "modern"
    assert make_config(data={"data": str(tmp_path)}, train={"weights": "w"}).train.recipe == \
        "finetune"


def test_bad_config_values_name_the_option() -> None:
    with pytest.raises(ValueError, match="freeze"):
        TrainConfig(freeze="stages:9")
    with pytest.raises(ValueError, match="batch_size"):
        DataConfig(batch_size=0)


@pytest.mark.parametrize("mixup,cutmix", [(0.2, 0.0), (0.0, 1.0), (0.2, 1.0)])
def test_mixup_cutmix_soft_targets(mixup: float, cutmix: float) -> None:
    x = torch.randn(6, 3, 16, 16)
    y = torch.tensor([0, 1, 2, 3, 4, 5])
    xm, t = mix_batch(x, y, 10, mixup, cutmix, seed=3)
    assert xm.shape == x.shape and t.shape == (6, 10)
    torch.testing.assert_close(t.sum(1), torch.ones(6))
    lam = t[0, 0].item()
    assert t[0, 5].item() == pytest.approx(1 - lam)  # mixed with the rolled partner
    xm2, t2 = mix_batch(x, y, 10, mixup, cutmix, seed=3)
    assert torch.equal(xm, xm2) and torch.equal(t, t2)  # a pure function of the seed


def test_sampler_resumes_mid_epoch_and_shards() -> None:
    data = list(range(20))
    full = [i for i, _ in ResumableSampler(data, 1, 0, True, seed=1, batch_size=4)]
    s = ResumableSampler(data, 1, 0, True, seed=1, batch_size=4)
    s.set_start(2)
    assert [i for i, _ in s] == full[8:]
    ranks = [[i for i, _ in ResumableSampler(data, 2, r, True, seed=1, batch_size=2)]
             for r in range(2)]
    assert sorted(ranks[0] + ranks[1]) == sorted(full)
    ev = [[i for i, _ in ResumableSampler(list(range(7)), 2, r, False, 0, 4)] for r in range(2)]
    assert sorted(ev[0] + ev[1]) == list(range(7))  # evaluation: each image exactly once


def test_amp_rule_per_shape() -> None:
    cfg = TrainConfig()
    cpu = torch.device("cpu")
    bf16 = torch.bfloat16 if cpu_has_bf16() else None
    net = ModelConfig()
    digits = ModelConfig(width=0.5, small_input=True, resolution=32)
    assert choose_amp(cfg, cpu, net, 32) is None  # 6M multiply-adds: casts dominate
    assert choose_amp(cfg, cpu, net, 224) == bf16
    assert choose_amp(cfg, cpu, digits, 32) == bf16  # 28M: small input, large maps
    assert choose_amp(cfg.replace(amp="off"), cpu, net, 224) is None
    small = profile(ModelConfig(width=0.5), 64).madds  # 8M: measured 0.66x with bf16
    assert small < CPU_BF16_MIN_MADDS < profile(digits, 32).madds
    with pytest.raises(ValueError, match="fp16"):
        choose_amp(cfg.replace(amp="fp16"), cpu, net, 224)


def _bn_training(module: nn.Module) -> set[bool]:
    return {m.training for m in module.modules() if isinstance(m, nn.BatchNorm2d)}


def test_freeze_stages_returns_the_parts_whose_bn_stays_frozen() -> None:
    model = MobileNetV2(ModelConfig(width=0.35, num_classes=10))
    parts = apply_freeze(model, "stages:2", freeze_bn=False)
    # Table 2: stage 0 is the t=1 block, stage 1 the two 24-channel blocks.
    assert parts == (model.stem, model.blocks[0], model.blocks[1], model.blocks[2])
    grads = {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any(n.startswith(("stem.", "blocks.0.", "blocks.1.", "blocks.2.")) for n in grads)
    assert "blocks.3.expand.conv.weight" in grads and "classifier.weight" in grads
    model.train()
    keep_frozen_bn(parts)
    assert _bn_training(model.blocks[2]) == {False} and _bn_training(model.blocks[3]) == {True}
    # freeze_bn: every BatchNorm of the network, whatever is frozen.
    assert apply_freeze(model, "none", freeze_bn=True) == (model,)
    keep_frozen_bn((model,))
    assert _bn_training(model) == {False}
    fresh = MobileNetV2(ModelConfig(width=0.35, num_classes=10))
    assert apply_freeze(fresh, "none", freeze_bn=False) == ()
    assert all(p.requires_grad for p in fresh.parameters())


def test_resume_lookup(tmp_path) -> None:
    assert resolve_resume(None, tmp_path) is None
    with pytest.raises(UserError, match=f"no checkpoint-\\*.pt in {tmp_path}"):
        resolve_resume("auto", tmp_path)
    for step in (3, 12):
        torch.save({"step": step}, tmp_path / f"checkpoint-{step:08d}.pt")
    torch.save({"step": 99}, tmp_path / "best.pt")
    newest = tmp_path / "checkpoint-00000012.pt"
    assert resolve_resume("auto", tmp_path) == newest
    assert resolve_resume(tmp_path, tmp_path / "elsewhere") == newest
    named = tmp_path / "checkpoint-00000003.pt"
    assert resolve_resume(named, tmp_path / "elsewhere") == named


def test_resume_passes_over_a_truncated_newest_checkpoint(tmp_path, caplog) -> None:
    for step in (3, 12):
        torch.save({"step": step, "w": torch.zeros(1000)}, tmp_path / f"checkpoint-{step:08d}.pt")
    newest = tmp_path / "checkpoint-00000012.pt"
    newest.write_bytes(newest.read_bytes()[:300])  # the disk filled up mid-write
    assert resolve_resume("auto", tmp_path) == tmp_path / "checkpoint-00000003.pt"
    assert "checkpoint-00000012.pt is unreadable" in caplog.text
    (tmp_path / "checkpoint-00000003.pt").write_bytes(b"")
    with pytest.raises(UserError, match="none of the 2 checkpoints"):
        resolve_resume("auto", tmp_path)
