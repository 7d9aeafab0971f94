"""Issue 14: the thread/worker budget, the measured per-machine setup (with fake timings),
the per-phase step timer, the uint8 pipeline and the reduced-size JPEG decoding."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from itertools import count
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mobilenetv2 import MobileNetV2, ModelConfig
from mobilenetv2.config import DataConfig, TrainConfig
from mobilenetv2.data.images import open_rgb
from mobilenetv2.data.presets import decode_side, eval_preprocessing, train_transform
from mobilenetv2.data.transforms import BatchNormalize
from mobilenetv2.train import tune
from mobilenetv2.train.budget import plan_budget
from mobilenetv2.train.steptimer import PHASES, StepTimer

# --- budget -----------------------------------------------------------------------------------


@pytest.mark.parametrize("cores,workers,threads,expect", [
    (1, -1, 0, (1, 0)),
    (2, -1, 0, (2, 0)),      # small machine: load in-line, every core computes
    (4, -1, 0, (3, 1)),
    (16, -1, 0, (12, 4)),
    (64, -1, 0, (56, 8)),    # at most 8 workers
    (2, 1, 0, (1, 1)),       # explicit workers: the threads take what is left
    (8, -1, 6, (6, 2)),      # explicit threads: the workers take what is left
    (8, -1, 8, (8, 1)),      # ... at least one on a machine with more than 2 cores
    (2, 2, 2, (2, 2)),       # both explicit: kept, even oversubscribed
])
def test_budget_fills_in_only_what_was_not_asked(cores, workers, threads, expect) -> None:
    b = plan_budget(cores, workers, threads)
    assert (b.threads, b.workers) == expect
    assert b.oversubscribed == (b.threads + b.workers > cores)
    if workers == -1 and threads == 0:
        assert not b.oversubscribed


def test_budget_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="cores"):
        plan_budget(0)
    with pytest.raises(ValueError, match="workers"):
        plan_budget(4, workers=-2)


# --- the measured setup ---------------------------------------------------------------------


def test_candidates_follow_the_cpu_and_the_overrides() -> None:
    names = lambda cs: [c.name for c in cs]  # noqa: E731
    assert names(tune.candidates("auto", "auto", False)) == ["fp32 channels_last", "fp32 NCHW"]
    assert len(tune.candidates("auto", "auto", True)) == 4
    assert all(c.amp_dtype is None for c in tune.candidates("off", "auto", True))
    assert all(c.amp_dtype == torch.bfloat16 for c in tune.candidates("bf16", "auto", False))
    assert names(tune.candidates("off", "contiguous", True)) == ["fp32 NCHW"]
    assert all(c.memory_format == torch.channels_last
               for c in tune.candidates("auto", "channels_last", True))
    with pytest.raises(ValueError, match="CUDA"):
        tune.candidates("fp16", "auto", True)


def test_pick_fastest_prefers_the_default_inside_the_noise() -> None:
    order = ["a", "b", "c"]
    assert tune.pick_fastest({"a": 1.0, "b": 0.5, "c": 0.7}, order) == "b"
    assert tune.pick_fastest({"a": 1.01, "b": 1.0, "c": 2.0}, order) == "a"


def test_time_steps_takes_the_median_of_timed_calls_after_warmup() -> None:
    calls = []
    durations = iter([5.0, 2.0, 3.0, 100.0])   # first is the warm-up, then 3 timed steps
    now = [0.0]

    def step() -> None:
        calls.append(1)
        now[0] += next(durations)

    assert tune.time_steps(step, steps=3, warmup=1, clock=lambda: now[0]) == 3.0
    assert len(calls) == 4


def _tiny() -> MobileNetV2:
    return MobileNetV2(ModelConfig(width=0.25, num_classes=3, resolution=32))


@pytest.mark.parametrize("fake,expect", [
    ({"fp32 channels_last": 2.0, "fp32 NCHW": 1.0}, "fp32 NCHW"),
    ({"fp32 channels_last": 1.0, "fp32 NCHW": 2.0}, "fp32 channels_last"),
])
def test_choose_setup_picks_the_fastest_and_caches_it(tmp_path, monkeypatch, fake,
                                                      expect) -> None:
    monkeypatch.setattr(tune, "cpu_has_bf16", lambda: False)
    cache = tmp_path / "train_tune.json"
    measured = []

    def measure(c: tune.Candidate) -> float:
        measured.append(c.name)
        return fake[c.name]

    model = _tiny()
    first = tune.choose_setup(TrainConfig(), torch.device("cpu"), model, 32, 4, measure, cache)
    assert (first.candidate.name, first.how) == (expect, "measured")
    assert sorted(measured) == sorted(list(fake) * tune.MEASURE_ROUNDS)
    again = tune.choose_setup(TrainConfig(), torch.device("cpu"), model, 32, 4,
                              lambda c: pytest.fail("cached: must not measure"), cache)
    assert (again.candidate.name, again.how) == (expect, "cached")
    # Another shape is another key: measured again.
    other = tune.choose_setup(TrainConfig(), torch.device("cpu"), model, 64, 4, measure, cache)
    assert other.how == "measured"
    assert len(json.loads(cache.read_text())) == 2


def test_one_slow_measurement_does_not_decide(monkeypatch) -> None:
    """A burst of other work during one candidate's steps (its first measurement 10x slow)
    does not decide: every candidate is measured in alternating rounds and keeps its best."""
    monkeypatch.setattr(tune, "cpu_has_bf16", lambda: False)
    calls: dict[str, int] = {}
    fake = {"fp32 channels_last": 1.0, "fp32 NCHW": 1.3}

    def measure(c: tune.Candidate) -> float:
        calls[c.name] = calls.get(c.name, 0) + 1
        return fake[c.name] * (10.0 if c.name == "fp32 channels_last" and calls[c.name] == 1
                               else 1.0)

    got = tune.choose_setup(TrainConfig(), torch.device("cpu"), _tiny(), 32, 4, measure)
    assert got.candidate.name == "fp32 channels_last"
    assert got.timings == fake


def test_choose_setup_with_bf16_picks_among_four(monkeypatch) -> None:
    monkeypatch.setattr(tune, "cpu_has_bf16", lambda: True)
    fake = {"fp32 channels_last": 4.0, "fp32 NCHW": 5.0, "bf16 channels_last": 3.0,
            "bf16 channels_last, stride-2 depthwise fp32": 2.5}
    got = tune.choose_setup(TrainConfig(), torch.device("cpu"), _tiny(), 32, 4,
                            lambda c: fake[c.name])
    assert got.candidate.fp32_stride2_dw and got.candidate.amp_dtype == torch.bfloat16


def test_options_fixing_both_measure_nothing(monkeypatch) -> None:
    tc = TrainConfig(amp="off", memory_format="contiguous")
    got = tune.choose_setup(tc, torch.device("cpu"), _tiny(), 32, 4,
                            lambda c: pytest.fail("fixed by options: must not measure"))
    assert (got.candidate.amp_dtype, got.candidate.memory_format, got.how) == (
        None, torch.contiguous_format, "fixed")


def test_a_damaged_cache_is_measured_again(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(tune, "cpu_has_bf16", lambda: False)
    cache = tmp_path / "train_tune.json"
    cache.write_text("{not json")
    got = tune.choose_setup(TrainConfig(), torch.device("cpu"), _tiny(), 32, 4,
                            lambda c: 1.0, cache)
    assert got.how == "measured" and json.loads(cache.read_text())


def test_measure_step_leaves_the_model_and_rng_alone() -> None:
    model = _tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    ticks = count()
    t = tune.measure_step(model, tune.FP32_NCHW, 32, 2, clock=lambda: float(next(ticks)))
    assert t == 1.0   # the fake clock advances 1 per reading
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_keep_fp32_runs_stride2_depthwise_outside_autocast() -> None:
    model = _tiny().eval()
    strided = [m.depthwise for m in model.blocks if m.spec.stride == 2]
    seen = {}
    for i, m in enumerate(strided):
        m.register_forward_hook(lambda mod, a, out, i=i: seen.__setitem__(i, out.dtype))
    x = torch.randn(2, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(x)
    assert set(seen.values()) == {torch.bfloat16}
    handles = tune.keep_fp32(model)
    assert len(handles) == 2 * len(strided) > 0
    keys = set(model.state_dict())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(x)
    assert set(seen.values()) == {torch.float32}
    assert set(model.state_dict()) == keys
    for h in handles:
        h.remove()


# --- step timer -----------------------------------------------------------------------------


def test_step_timer_charges_each_phase_after_warmup() -> None:
    now = [0.0]
    timer = StepTimer(steps=2, skip=1, clock=lambda: now[0])
    for _ in range(4):
        timer.start_step()
        for i, name in enumerate(PHASES):
            with timer.phase(name):
                now[0] += i + 1
        now[0] += 0.5      # outside every phase: "other"
        timer.end_step()
    assert timer.done
    per_step = sum(range(1, len(PHASES) + 1)) + 0.5
    assert timer.step_total == pytest.approx(2 * per_step)
    assert timer.totals["data"] == pytest.approx(2.0)
    assert timer.totals["checkpoint"] == pytest.approx(2.0 * len(PHASES))
    text = timer.table(batch=4)
    assert "data wait" in text and "other" in text and "img/s" in text


def test_profile_steps_is_validated() -> None:
    with pytest.raises(ValueError, match="profile_steps"):
        TrainConfig(profile_steps=-1)


# --- uint8 pipeline and decoding ------------------------------------------------------------


@pytest.mark.parametrize("preset,erasing", [("imagenet", 0.0), ("small", 0.0),
                                            ("imagenet", 1.0)])
def test_uint8_pipeline_matches_the_float_one(preset, erasing) -> None:
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8))
    dc = DataConfig(preset=preset, random_erasing=erasing)
    pre = eval_preprocessing(dc, 32)
    torch.manual_seed(3)
    ref = train_transform(dc, 32)(img)
    torch.manual_seed(3)
    u8 = train_transform(dc, 32, batch_normalize=True)(img)
    assert u8.dtype == torch.uint8 and ref.dtype == torch.float32
    got = BatchNormalize(pre.mean, pre.std)(u8[None])[0]
    assert got.shape == ref.shape
    # Same random draws; PIL vs tensor resampling and uint8 rounding differ by a few levels.
    scale = 1 / (255 * min(pre.std))
    assert (got - ref).abs().mean() < 4 * scale
    if erasing:  # the erased area normalizes to ~0 in both pipelines
        erased = ref == 0
        assert erased.any() and got[erased].abs().max() < 2 * scale


def test_batch_normalize_keeps_channels_last_and_passes_floats() -> None:
    norm = BatchNormalize((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    x = torch.full((2, 3, 4, 4), 255, dtype=torch.uint8).to(memory_format=torch.channels_last)
    y = norm(x)
    assert y.dtype == torch.float32 and y.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(y, torch.full_like(y, 2.0))
    f = torch.randn(1, 3, 2, 2)
    assert norm(f) is f


def _photo(tmp_path, size=(1280, 960)):
    from sklearn.datasets import load_sample_images

    path = tmp_path / "photo.jpg"
    Image.fromarray(load_sample_images().images[1]).resize(size, Image.BICUBIC).save(
        path, quality=92)
    return path


@pytest.mark.parametrize("side", [224, 256, 300])
def test_reduced_decoding_matches_the_full_decode_after_resize(tmp_path, side) -> None:
    path = _photo(tmp_path)
    full, fast = open_rgb(path), open_rgb(path, min_side=side)
    assert fast.size[0] < full.size[0] and min(fast.size) >= side
    target = (round(full.size[0] * side / full.size[1]), side)
    a = np.asarray(full.resize(target, Image.BILINEAR, reducing_gap=None), dtype=np.float32)
    b = np.asarray(fast.resize(target, Image.BILINEAR, reducing_gap=None), dtype=np.float32)
    assert np.abs(a - b).mean() < 3.0       # of 255: resize tolerance
    assert np.percentile(np.abs(a - b), 99) < 20.0


def test_reduced_decoding_leaves_small_and_non_jpeg_images_alone(tmp_path) -> None:
    path = _photo(tmp_path, (400, 300))
    assert open_rgb(path, min_side=224).size == (400, 300)
    png = tmp_path / "photo.png"
    Image.open(_photo(tmp_path)).save(png)
    assert open_rgb(png, min_side=100).size == (1280, 960)


def test_decode_side_keeps_the_smallest_crop_at_full_detail() -> None:
    assert decode_side(DataConfig(preset="imagenet"), 224) == 792
    assert decode_side(DataConfig(preset="small"), 32) == 32
    assert decode_side(DataConfig(preset="inception"), 224) > 792


def test_engine_normalizes_uint8_batches_and_logs_the_profile(caplog) -> None:
    import logging

    from mobilenetv2.train.distributed import DistInfo
    from mobilenetv2.train.engine import StepContext, TrainState, train_one_epoch

    torch.manual_seed(0)
    model = _tiny()
    seen = []
    model.register_forward_pre_hook(lambda m, a: seen.append(a[0].dtype))
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=g),
                torch.randint(0, 3, (4,), generator=g), []) for _ in range(4)]
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    ctx = StepContext(device=torch.device("cpu"), num_classes=3, amp_dtype=None,
                      memory_format=torch.channels_last, label_smoothing=0.0, mixup_alpha=0.0,
                      cutmix_alpha=0.0, grad_accum=1, clip_grad_norm=0.0, seed=0,
                      steps_per_epoch=4, max_steps=0, dist=DistInfo(), progress=False,
                      normalize=BatchNormalize((0.5,) * 3, (0.5,) * 3),
                      timer=StepTimer(steps=2, skip=1))
    with caplog.at_level(logging.INFO, logger="mobilenetv2.train.engine"):
        stats = train_one_epoch(model, batches, opt,
                                torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0),
                                torch.amp.GradScaler("cpu", enabled=False), ctx, TrainState())
    assert seen == [torch.float32] * 4
    assert np.isfinite(stats["train_loss"])
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "per-step time over 2 steps" in text and "backward" in text


# ------------------------------------------------------------------ allocator (train.malloc)
REFAULT = """
import ctypes, json, resource, sys
from mobilenetv2.train.malloc import allocator_note, retain_freed_memory
libc = ctypes.CDLL("libc.so.6")  # glibc's malloc itself, which torch's CPU tensors use
note = retain_freed_memory() if sys.argv[1] == "retain" else allocator_note()
if sys.argv[1] == "wrapped":  # the setting as once written: 1 << 34 wrapped to 0 in a C int
    libc.mallopt(-3, 1 << 30), libc.mallopt(-1, 0)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
a = libc.malloc(97 << 20)  # one step's large activation
ctypes.memset(a, 1, 97 << 20)
libc.free(a)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
b = libc.malloc(96 << 20)  # the next step's
ctypes.memset(b, 1, 96 << 20)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"note": note, "faults": faults, "pages": (96 << 20) // resource.getpagesize()}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux")
                    or platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
@pytest.mark.parametrize("mode", ["default", "retain", "retain-opt-out", "wrapped"])
def test_retain_freed_memory_reuses_mapped_pages(mode, tmp_path) -> None:
    """What the setting is for: a large tensor allocated after another was freed lands on
    pages already mapped (no page faults), instead of faulting in fresh ones from the kernel,
    as with glibc's defaults (its own mapping, unmapped on free) or with a trim threshold that
    returns the heap's top on every free (`wrapped`: the bug this test was written for)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    env.pop("MOBILENETV2_MALLOC", None)
    if mode == "retain-opt-out":
        env["MOBILENETV2_MALLOC"] = "system"
    out = subprocess.run([sys.executable, "-c", REFAULT, mode.split("-")[0]], env=env,
                         capture_output=True, text=True, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    if mode == "retain":
        assert got["faults"] < got["pages"] // 10, got
        assert "keeps freed memory" in got["note"]
    else:
        assert got["faults"] > got["pages"] // 2, got
        if mode != "wrapped":
            assert "defaults" in got["note"]
