"""The native fused engine (issue 13, `runtime.native`): PyTorch's logits at every width,
size, output stride, padding, batch, ISA and thread count it runs; its working memory
against the analytic block-wise schedule (`memory.py`); one-line refusals.

The AVX-512 kernels are the same source as the AVX2 ones at twice the width; each test runs
every ISA this CPU has (`cpu_isas()`), so AVX-512 is exercised where the CPU has it.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from mobilenetv2 import memory
from mobilenetv2.config import ModelConfig
from mobilenetv2.errors import UserError
from mobilenetv2.model.classifier import MobileNetV2
from mobilenetv2.model.fuse import fuse, reestimate_bn
from mobilenetv2.runtime import native

pytestmark = pytest.mark.skipif(not native.AVAILABLE, reason=native.UNAVAILABLE or "built")
ISAS = native.cpu_isas()


def _model(width: float, size: int, padding: str = "symmetric", output_stride: int = 32,
           classes: int = 10, seed: int = 0) -> MobileNetV2:
    torch.manual_seed(seed)
    m = MobileNetV2(ModelConfig(width=width, padding=padding, output_stride=output_stride,
                                num_classes=classes))
    # random weights with BN statistics that normalise (fuse.reestimate_bn): otherwise the
    # activations vanish and any output matches
    return reestimate_bn(m, steps=1, batch_size=2, size=size, seed=seed)


def _check(model: MobileNetV2, x: np.ndarray, **kw) -> np.ndarray:
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    got = native.NativeEngine(model, **kw)(x)
    assert got.shape == ref.shape and got.dtype == np.float32
    assert np.abs(ref).max() > 0.1  # the logits are not vanishing: the check means something
    tol = 1e-4 * max(1.0, float(np.abs(ref).max()))
    assert np.abs(got - ref).max() <= tol, (np.abs(got - ref).max(), tol)
    return got


def _x(batch: int, size: int | tuple[int, int], seed: int = 1) -> np.ndarray:
    h, w = (size, size) if isinstance(size, int) else size
    return np.random.default_rng(seed).standard_normal((batch, 3, h, w)).astype(np.float32)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize(("width", "size", "padding", "output_stride"), [
    (0.35, 96, "symmetric", 32),
    (0.5, 128, "tf_same", 32),
    (1.0, 160, "symmetric", 16),
    (1.4, 113, "tf_same", 8),
    (1.0, 224, "tf_same", 32),
    (0.35, 113, "symmetric", 8),
])
@pytest.mark.parametrize("threads", [1, 2])
def test_logits_match_pytorch(isa, width, size, padding, output_stride, threads) -> None:
    model = _model(width, min(size, 128), padding, output_stride)
    _check(model, _x(1, size), threads=threads, isa=isa)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_batches_split_over_threads_match(isa, threads) -> None:
    # batch 8 over 3 threads: 6 images one per thread, the last 2 with rows split
    model = _model(0.5, 96, "tf_same", 16)
    got = _check(model, _x(8, 96), threads=threads, isa=isa)
    one = native.NativeEngine(model, threads=threads, isa=isa)(_x(8, 96)[3:4])
    assert np.abs(one - got[3:4]).max() <= 1e-5  # an image's logits do not depend on its batch


@pytest.mark.parametrize("isa", ISAS)
def test_a_nan_pixel_gives_nan_logits_as_in_pytorch(isa) -> None:
    # ReLU6 keeps a NaN a NaN (PyTorch's hardtanh does; a max/min with the operands the other
    # way round would turn it into 0 or 6 and give finite, wrong logits)
    model = _model(0.35, 64)
    x = _x(2, 64)
    x[0, 1, 10, 10] = np.nan
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    got = native.NativeEngine(model, threads=2, isa=isa)(x)
    assert np.isnan(ref[0]).all() and np.isnan(got[0]).all()
    assert np.abs(got[1] - ref[1]).max() <= 1e-4 * max(1.0, float(np.abs(ref[1]).max()))


def test_fuzzed_shapes() -> None:
    """Seeded random widths, paddings, strides, sizes (non-square too), batches, threads."""
    rng = np.random.default_rng(13)
    for case in range(6):
        width = float(rng.choice([0.35, 0.5, 0.75, 1.0, 1.3]))
        padding = str(rng.choice(["symmetric", "tf_same"]))
        output_stride = int(rng.choice([8, 16, 32]))
        h, w = (int(v) for v in rng.integers(33, 150, size=2))
        batch, threads = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        model = _model(width, 64, padding, output_stride, classes=int(rng.integers(2, 30)),
                       seed=case)
        _check(model, _x(batch, (h, w), seed=case), threads=threads,
               isa=str(rng.choice(ISAS)))


def test_bn_folded_models_and_repeated_calls() -> None:
    model = _model(0.35, 96)
    x = _x(2, 96)
    engine = native.NativeEngine(fuse(model, channels_last=False), threads=2)
    first = engine(x)
    _check(model, x, threads=2)
    assert np.array_equal(engine(x), first)  # deterministic, buffers reused cleanly
    engine(_x(1, 128))  # another size replans
    assert np.array_equal(engine(x), first)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_trace_shows_every_thread_working(threads) -> None:
    model = _model(0.35, 96)
    x = _x(1, 96)
    engine = native.NativeEngine(model, threads=threads)
    times, rows, logits = engine.trace(x)
    assert np.array_equal(logits, engine(x))  # the traced forward is a real one
    blocks = len(native._spec(model)[0])
    assert times.shape == (threads, blocks + 1, 2) and (times >= 0).all()
    # the threads computed every row-slice once between them, as one thread does alone
    single = native.NativeEngine(model, threads=1).trace(x)[1]
    assert rows.shape == (threads, blocks) and single[0, 0] > 0
    assert np.array_equal(rows.sum(axis=0), single[0])
    assert (times[:, :, 0].sum(axis=1) > 0).all()  # each of the threads did work
    if threads == 1:
        assert not times[:, :, 1].any()  # no barrier to wait at


@pytest.mark.parametrize("threads", [2, 4])
def test_a_slow_thread_gives_its_rows_away_and_the_logits_stay_the_same(threads) -> None:
    """Pairs of threads claim a block's rows as they go (Share in _plans.h): the last
    thread, held back before every block as a slower core would be, computes fewer rows
    than its partner, and since a row's slices are summed in the same order whoever
    computes them, the logits are bit-identical to an unhindered run's."""
    model = _model(0.5, 128)
    x = _x(1, 128)
    engine = native.NativeEngine(model, threads=threads)
    _, even, expected = engine.trace(x)
    _, skewed, logits = engine.trace(x, handicap_us=3000)
    assert np.array_equal(logits, expected)
    assert np.array_equal(engine(x), expected)
    assert skewed[-1].sum() < skewed[-2].sum()  # the slow thread left rows to its partner
    assert skewed[-1].sum() < even[-1].sum()
    # every row-slice is computed once, by one thread of the pair or the other
    assert np.array_equal(skewed.sum(axis=0), even.sum(axis=0))
    assert np.array_equal(_check(model, x, threads=threads), expected)  # and they are right


def _blockwise_without_input(config: ModelConfig, resolution: int) -> int:
    """memory.py's block-wise peak without the input image: the engine reads the caller's
    array and does not count it, so this is the like-for-like figure."""
    sched = memory.blockwise_schedule(config, resolution)
    return max(s.bytes(4) - sum(4 * int(np.prod(shape)) for name, shape in s.live
                                if name == "input") for s in sched.steps)


@pytest.mark.parametrize("threads", [1, 2])
def test_working_memory_is_the_blockwise_schedule(threads) -> None:
    """Width 1.0, 224x224, batch 1 (issue 13): within 10% of the analytic block-wise peak and
    at least 4x below the layer-by-layer one."""
    config = ModelConfig()
    model = MobileNetV2(config).eval()
    engine = native.NativeEngine(model, threads=threads)
    engine(_x(1, 224))
    measured = engine.memory_bytes
    analytic = _blockwise_without_input(config, 224)
    assert abs(measured - analytic) <= 0.10 * analytic, (measured, analytic)
    assert measured * 4 <= memory.layerwise_peak_bytes(config, 224)


@pytest.mark.parametrize(("x", "match"), [
    (np.zeros((1, 4, 64, 64), np.float32), r"shape \(N, 3, H, W\)"),
    (np.zeros((3, 64, 64), np.float32), r"shape \(N, 3, H, W\)"),
    (np.zeros((1, 3, 64, 64), np.float64), "float32 input, got float64"),
    (np.zeros((0, 3, 64, 64), np.float32), "the batch is empty"),
    (np.zeros((1, 3, 8, 8), np.float32), "smaller than this network allows"),
    ([[1.0]], "numpy float32 array, got list"),
])
def test_bad_input_is_one_clear_error(x, match) -> None:
    engine = native.NativeEngine(_model(0.35, 64), threads=1)
    with pytest.raises(UserError, match=match):
        engine(x)


def test_refusals_are_one_line() -> None:
    from mobilenetv2.model.backbone import MobileNetV2Features

    with pytest.raises(UserError, match="runs the MobileNetV2 classifier, not "
                                        "MobileNetV2Features"):
        native.NativeEngine(MobileNetV2Features(ModelConfig(width=0.35)))
    model = _model(0.35, 64)
    with pytest.raises(UserError, match="cannot run the native engine's nope kernels"):
        native.NativeEngine(model, isa="nope")
    with pytest.raises(UserError, match="threads must be an integer >= 1"):
        native.NativeEngine(model, threads=0)


def test_the_backend_runs_through_a_session() -> None:
    from mobilenetv2.runtime.session import InferenceSession

    model = _model(0.35, 96)
    x = _x(2, 96)
    sess = InferenceSession(model, backend="native", threads=2)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert sess.backend == "native" and np.abs(sess(x) - ref).max() <= 1e-4


def test_the_pool_survives_fork() -> None:
    """An engine used before a fork (DataLoader workers, multiprocessing) runs in the child:
    the child starts its own threads instead of waiting for the parent's."""
    if not hasattr(os, "fork"):
        pytest.skip("no fork on this platform")
    model = _model(0.35, 64)
    engine = native.NativeEngine(model, threads=2)
    x = _x(1, 64)
    want = engine(x)
    pid = os.fork()
    if pid == 0:  # child: exit code 0 only if the logits are the parent's
        try:
            ok = np.array_equal(engine(x), want)
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert np.array_equal(engine(x), want)


def test_interpreter_exits_with_an_engine_alive() -> None:
    """A live engine's worker threads do not hold up (or crash) interpreter exit."""
    code = ("from mobilenetv2.config import ModelConfig\n"
            "from mobilenetv2.model.classifier import MobileNetV2\n"
            "from mobilenetv2.runtime.native import NativeEngine\n"
            "import numpy as np\n"
            "e = NativeEngine(MobileNetV2(ModelConfig(width=0.35)).eval(), threads=2)\n"
            "e(np.zeros((1, 3, 64, 64), np.float32))\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
