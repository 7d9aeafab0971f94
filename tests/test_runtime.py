"""runtime/: the backend table, the CPU facts, `InferenceSession` (backend choice, the auto
race, precision honesty, missing backends) and `deploy.open_session`, which makes the ONNX
files a session's backends need."""

from __future__ import annotations

import dataclasses
import sys

import numpy as np
import pytest
import torch

from deploy_helpers import one_thread, random_model
from mobilenetv2.deploy import open_session
from mobilenetv2.errors import UserError
from mobilenetv2.export import export_onnx
from mobilenetv2.runtime import backends
from mobilenetv2.runtime.backends import AUTO_ORDER, BACKENDS, PRECISIONS, backend_installed
from mobilenetv2.runtime.cpu import CpuInfo, cpu_has_bf16, cpu_peak
from mobilenetv2.runtime.race import IDLE_WAIT_MAX_S, wait_for_idle_threads
from mobilenetv2.runtime.race_cache import RaceCache
from mobilenetv2.runtime.session import InferenceSession, race
from spin_fakes import spinning_runners

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    yield from one_thread()


@pytest.fixture(scope="module")
def model():
    return random_model()


@pytest.fixture(scope="module")
def batch():
    return torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(1)).numpy()


@pytest.fixture(scope="module")
def fp32_file(model, tmp_path_factory):
    return export_onnx(model, tmp_path_factory.mktemp("onnx") / "m.onnx").path


def reference(model, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


# ----------------------------------------------------------------------- the backend table
def test_auto_order_lists_exactly_the_backends_of_each_precision() -> None:
    for precision in PRECISIONS:
        # the phone runtimes run only their own files (a .tflite / .pte), never weights
        runs = {b for b, spec in BACKENDS.items() if precision in spec.precisions
                and spec.runs in ("module", "onnx")}
        assert sorted(AUTO_ORDER[precision]) == sorted(runs), precision
    assert BACKENDS["openvino"].precisions == ("fp32", "bf16", "int8")
    assert "bf16" not in BACKENDS["onnxruntime"].precisions  # no bf16 CPU kernels
    assert "int8" not in BACKENDS["torch"].precisions


@pytest.mark.parametrize(("precision", "hint"), [("fp32", "f32"), ("bf16", "bf16"),
                                                 ("int8", "f32")])
def test_openvino_precision_hint_is_always_set(precision, hint) -> None:
    assert backends.openvino_config(precision)["INFERENCE_PRECISION_HINT"] == hint
    plain = backends.openvino_config(precision, 3, latency=False)
    assert plain == {"INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": 3}


# ----------------------------------------------------------------------- the CPU
def _info(flags: str, vendor: str = "GenuineIntel", family: int = 6) -> CpuInfo:
    return CpuInfo(model="test cpu", vendor=vendor, family=family,
                   flags=frozenset(flags.split()), mhz=3000.0)


@pytest.mark.parametrize(("flags", "vendor", "family", "per"), [
    ("fma avx2 avx512f", "AuthenticAMD", 26, 64),  # Zen 5: full-width AVX-512
    ("fma avx2 avx512f", "AuthenticAMD", 25, 32),  # Zen 4: AVX-512 on 256-bit pipes
    ("fma avx2 avx512f", "GenuineIntel", 6, 64),
    ("fma avx2", "GenuineIntel", 6, 32),
    ("sse4_2", "GenuineIntel", 6, 8),
])
def test_cpu_peak_from_the_isa(flags, vendor, family, per) -> None:
    peak = cpu_peak(2, info=_info(flags, vendor, family))
    assert peak.flops_per_cycle == per and peak.ghz == 3.0
    assert peak.gflops == pytest.approx(2 * 3.0 * per)
    assert "GFLOP/s" in peak.describe()
    assert cpu_peak(2, ghz=3.66, info=_info(flags, vendor, family)).ghz == 3.66


@pytest.mark.parametrize(("flags", "native"), [
    ("avx512f avx512bw avx512vl avx512dq", False),  # oneDNN emulates bf16 here: not native
    ("avx512f avx512_bf16", True),
    ("avx512f amx_tile amx_bf16", True),
    ("fp asimd bf16", True),  # ARM "Features"
])
def test_bf16_means_native_bf16(monkeypatch, flags, native) -> None:
    from mobilenetv2.runtime import cpu

    monkeypatch.setattr(cpu, "cpu_info", lambda: _info(flags))
    cpu.cpu_has_bf16.cache_clear()
    try:
        assert cpu.cpu_has_bf16() is native
    finally:
        cpu.cpu_has_bf16.cache_clear()


def test_training_asks_the_same_cpu_question() -> None:
    from mobilenetv2.train import amp

    assert amp.cpu_has_bf16 is cpu_has_bf16


# ----------------------------------------------------------------------- sessions
@pytest.mark.parametrize("backend", ["torch", "onnxruntime", "openvino"])
def test_fp32_backends_agree_with_pytorch(model, batch, backend) -> None:
    if not backend_installed(backend):
        pytest.skip(f"{backend} is not installed")
    with open_session(model, backend=backend, threads=1) as sess:
        assert sess.backend == backend and sess.precision == "fp32"
        got = sess(batch)
    assert got.dtype == np.float32 and got.shape == (2, 10)
    assert np.abs(got - reference(model, batch)).max() <= 1e-4


def test_a_session_runs_what_it_is_given(model, fp32_file) -> None:
    # a module alone runs on a module backend (native where built, else torch): the session
    # exports nothing
    assert InferenceSession(model).backend == ("native" if backend_installed("native")
                                               else "torch")
    first = next(b for b in AUTO_ORDER["fp32"] if backend_installed(b))
    assert InferenceSession(model, onnx_file=fp32_file).backend == first
    with pytest.raises(UserError, match="runs ONNX files"):
        InferenceSession(model, backend="onnxruntime")
    with pytest.raises(UserError, match="torch backend runs our .safetensors"):
        InferenceSession(fp32_file, backend="torch")


def test_auto_starts_on_the_first_installed(model, monkeypatch) -> None:
    sess = open_session(model)
    assert sess.backend == next(b for b in AUTO_ORDER["fp32"] if backend_installed(b))
    # onnxruntime absent: auto falls through to the next backend, no error
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert not backend_installed("onnxruntime")
    sess = open_session(model)
    assert sess.backend in ("native", "openvino", "torch") and sess.precision == "fp32"


@pytest.fixture
def without_native(monkeypatch):
    """The fake-runner races below are about the peer runtimes: the real native engine (an
    extra fp32 entrant where built) sits them out, as if not built."""
    monkeypatch.setitem(BACKENDS, "native", dataclasses.replace(
        BACKENDS["native"], unavailable=lambda: "disabled in this test"))


class FakeClock:
    """A clock that only the fake runners move: no wall-clock time is measured."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def runner(self, seconds: float, value: float):
        def run(x: np.ndarray) -> np.ndarray:
            self.now += seconds
            return np.full((len(x), 10), value, dtype=np.float32)

        return run


@pytest.mark.parametrize("fast", ["first", "second"])
def test_race_keeps_the_fastest_whatever_the_order(fast) -> None:
    clock = FakeClock()
    times = {"a": 0.003, "b": 0.002} if fast == "second" else {"a": 0.002, "b": 0.003}
    runners = {name: clock.runner(t, 0.0) for name, t in times.items()}
    winner, best = race(runners, np.zeros((1, 3, 8, 8), np.float32), clock=clock)
    assert winner == min(times, key=times.get)
    assert best == pytest.approx(times)


def test_race_is_not_fooled_by_the_previous_runtimes_threads() -> None:
    # "b" is the faster runtime (2 ms against 3 ms), but its first run after "a" costs
    # 10 ms, as when a's worker threads still spin on the cores: a race that times a
    # runner right after the other would pick "a".
    clock = FakeClock()
    last = {"name": None}

    def runner(name: str, seconds: float, after_other: float):
        def run(x: np.ndarray) -> np.ndarray:
            clock.now += after_other if last["name"] not in (None, name) else seconds
            last["name"] = name
            return np.zeros((len(x), 10), np.float32)
        return run

    runners = {"a": runner("a", 0.003, 0.003), "b": runner("b", 0.002, 0.010)}
    winner, typical = race(runners, np.zeros((1, 3, 8, 8), np.float32), clock=clock)
    assert winner == "b" and typical == pytest.approx({"a": 0.003, "b": 0.002})


def test_race_waits_for_the_previous_runtimes_threads_to_stop_spinning() -> None:
    x = np.zeros((1, 3, 8, 8), np.float32)
    clock = FakeClock()
    runners, cpu, sleep = spinning_runners(clock, 0.060)
    settle = lambda: wait_for_idle_threads(cpu_seconds=cpu, sleep=sleep)  # noqa: E731
    winner, typical = race(runners, x, clock=clock, settle=settle)
    assert winner == "b" and typical == pytest.approx({"a": 0.003, "b": 0.002})
    # without the wait, one untimed run (5 ms) leaves b timed inside a's 60 ms of spinning
    clock = FakeClock()
    runners, _, _ = spinning_runners(clock, 0.060)
    winner, typical = race(runners, x, clock=clock, settle=lambda: None)
    assert winner == "a" and typical["b"] == pytest.approx(0.005)


def test_waiting_for_idle_threads_stops_at_its_limit() -> None:
    # threads that never stop (10 s of spinning): the wait gives up after its 0.2 s
    clock = FakeClock()
    runners, cpu, sleep = spinning_runners(clock, 10.0)
    runners["a"](np.zeros((1, 3, 8, 8), np.float32))
    assert wait_for_idle_threads(0.2, cpu_seconds=cpu, sleep=sleep) == pytest.approx(0.2)
    assert clock.now == pytest.approx(0.203)


def test_race_stops_waiting_for_threads_that_stay_busy() -> None:
    # a thread of the caller's that never idles (10 s of spinning): the first wait gives up
    # at its limit and the race goes on without waiting, instead of 0.5 s on every turn
    clock = FakeClock()
    runners, cpu, sleep = spinning_runners(clock, 10.0)
    runners["a"](np.zeros((1, 3, 8, 8), np.float32))
    waits = []

    def settle() -> float:
        waits.append(wait_for_idle_threads(cpu_seconds=cpu, sleep=sleep))
        return waits[-1]

    winner, _ = race(runners, np.zeros((1, 3, 8, 8), np.float32), clock=clock, settle=settle)
    assert waits == [pytest.approx(IDLE_WAIT_MAX_S)] and winner == "a"


def test_race_is_not_fooled_by_one_outlier() -> None:
    # "a" takes 3 ms a run, "b" 4 ms, but one of b's runs is a 0.1 ms fluke: a best-of race
    # takes the fluke for b's speed; the median over rounds keeps "a".
    clock = FakeClock()
    count = {"b": 0}

    def run_a(x: np.ndarray) -> np.ndarray:
        clock.now += 0.003
        return np.zeros((len(x), 10), np.float32)

    def run_b(x: np.ndarray) -> np.ndarray:
        count["b"] += 1
        clock.now += 0.0001 if count["b"] == 3 else 0.004
        return np.zeros((len(x), 10), np.float32)

    winner, typical = race({"a": run_a, "b": run_b}, np.zeros((1, 3, 8, 8), np.float32),
                           clock=clock)
    assert winner == "a" and typical == pytest.approx({"a": 0.003, "b": 0.004})


def test_auto_session_races_each_shape_once(model, tmp_path, monkeypatch, without_native) -> None:
    """fp32 auto starts on ONNX Runtime and races OpenVINO; fake runners whose speed the test
    sets decide, so the winner is the faster one, not the first installed."""
    clock = FakeClock()
    speed = {"onnxruntime": 0.005, "openvino": 0.002}
    calls = {name: 0 for name in speed}

    def fake(name):
        def build(source, precision, threads):
            calls[name] += 1
            value = {"onnxruntime": 1.0, "openvino": 2.0}[name]

            def run(x: np.ndarray) -> np.ndarray:
                clock.now += speed[name]  # read at run time: the test changes it below
                return np.full((len(x), 10), value, dtype=np.float32)

            return run

        # `numpy` imports everywhere: both fakes count as installed
        return dataclasses.replace(BACKENDS[name], package="numpy", build=build)

    for name in speed:
        monkeypatch.setitem(BACKENDS, name, fake(name))
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"not opened by the fake runners")
    sess = InferenceSession(model, onnx_file=onnx)
    sess.clock = clock
    assert sess.backend == "onnxruntime"
    x = np.zeros((4, 3, 96, 96), np.float32)
    assert (sess(x) == 2.0).all()  # OpenVINO's output: it won
    assert sess.chosen == {x.shape: "openvino"} and "batch 4: openvino" in sess.describe()
    assert (sess(x) == 2.0).all() and calls == {"onnxruntime": 1, "openvino": 1}
    speed["openvino"] = 0.009  # a new shape is raced again, with the runners built once
    one = x[:1]
    assert (sess(one) == 1.0).all() and sess.chosen[one.shape] == "onnxruntime"


def test_missing_backend_is_one_clear_error(model, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(UserError, match=r"backend openvino is not installed \(pip install "
                                        r"openvino\)"):
        open_session(model, backend="openvino")


def test_cli_reports_missing_backend_in_one_line(tmp_path, monkeypatch, capsys) -> None:
    from mobilenetv2.cli import main
    from mobilenetv2.weights.format import save

    weights = save(random_model(), tmp_path / "w.safetensors")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    monkeypatch.setitem(sys.modules, "openvino", None)
    code = main(["export", "--weights", str(weights), "-o", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err
    assert code == 2 and "onnxruntime" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_precision_is_what_it_says(model, batch, fp32_file, tmp_path) -> None:
    with pytest.raises(UserError, match="cannot run bf16"):
        open_session(model, backend="onnxruntime", precision="bf16")
    with pytest.raises(UserError, match="cannot run int8"):
        open_session(model, backend="torch", precision="int8")
    with pytest.raises(UserError, match="int8 needs a quantized model"):
        open_session(model, backend="onnxruntime", precision="int8")
    with pytest.raises(UserError, match="int8 needs a quantized model"):
        InferenceSession(fp32_file, precision="int8")
    with pytest.raises(ValueError, match="precision must be one of"):
        open_session(model, precision="fp16")
    # an int8 file is int8, whatever the default says
    from mobilenetv2.quant.ptq import quantize_onnx

    int8 = quantize_onnx(fp32_file, tmp_path / "m.int8.onnx", batch)
    sess = InferenceSession(int8, backend="onnxruntime")
    assert sess.precision == "int8" and "int8" in sess.describe()
    assert sess.labels[1] == "class 1"
    with pytest.raises(UserError, match="int8 model"):
        InferenceSession(int8, precision="bf16")


def test_openvino_fp32_is_really_fp32(model, batch, fp32_file) -> None:
    if not backend_installed("openvino"):
        pytest.skip("openvino is not installed")
    ref = reference(model, batch)
    fp32 = InferenceSession(fp32_file, backend="openvino", precision="fp32", threads=1)(batch)
    # bf16 keeps 8 mantissa bits: an "fp32" run silently in bf16 would miss this bound
    assert np.abs(fp32 - ref).max() <= 1e-4
    if cpu_has_bf16():
        bf16 = InferenceSession(fp32_file, backend="openvino", precision="bf16",
                                threads=1)(batch)
        assert np.abs(bf16 - ref).max() > 1e-4
        assert (bf16.argmax(1) == ref.argmax(1)).mean() >= 0.5


def test_torch_bf16(model, batch) -> None:
    sess = InferenceSession(model, backend="torch", precision="bf16", threads=1)
    assert sess.precision == "bf16"
    out = sess(torch.from_numpy(batch))
    ref = reference(model, batch)
    assert out.dtype == np.float32 and np.abs(out - ref).max() < 0.5 * np.abs(ref).max()


def test_cli_backend_options_give_a_runner(model, batch) -> None:
    import argparse

    from mobilenetv2.cli.backend import add_backend_options, session_from_args, session_runner

    p = argparse.ArgumentParser()
    add_backend_options(p)
    args = p.parse_args(["--backend", "torch", "--threads", "1"])
    run = session_runner(session_from_args(model, args))
    x = torch.from_numpy(batch)
    with torch.no_grad():
        torch.testing.assert_close(run(model, x), model(x), atol=1e-4, rtol=0)


def test_session_as_module_carries_meta(model, batch) -> None:
    module = InferenceSession(model, threads=1).as_module()
    assert module.meta is model.meta and module.num_classes == 10
    out = module(torch.from_numpy(batch))
    assert isinstance(out, torch.Tensor)
    torch.testing.assert_close(out, torch.from_numpy(reference(model, batch)), atol=1e-4,
                               rtol=0)


def test_auto_times_batched_shapes_once(model) -> None:
    sess = open_session(model, threads=1)
    if not sess._alternates:
        pytest.skip("only one backend installed for fp32")
    x = torch.randn(8, 3, 96, 96, generator=torch.Generator().manual_seed(2)).numpy()
    ref = reference(model, x)
    assert np.abs(sess(x) - ref).max() <= 1e-4
    assert sess.chosen[x.shape] in (sess.backend, *sess._alternates)
    assert sess.precision == "fp32"
    one = x[:1]
    assert np.abs(sess(one) - ref[:1]).max() <= 1e-4
    assert one.shape in sess.chosen  # batch 1 is raced too


@pytest.mark.slow  # trains the digits classifier unless another test did
def test_int8_from_float_weights_with_calibration(digits_weights) -> None:
    from mobilenetv2.quant.ptq import labelled_arrays
    from mobilenetv2.weights.format import load

    real = load(digits_weights)
    x, y = labelled_arrays("digits", real.meta.preprocessing, limit=64)
    with open_session(real, precision="int8", calib="digits", threads=1) as sess:
        assert sess.precision == "int8" and sess.backend in ("native", "openvino", "onnxruntime")
        folder = sess.onnx_path.parent
        assert folder.is_dir()
        ref = reference(real, x).argmax(1)
        got = sess(x).argmax(1)  # batch 64: also races the alternate backend
    assert (got == ref).mean() >= 0.9
    assert not folder.exists()  # close() removed the files open_session made


# ------------------------------------------------------------------- caches (issue 12)
def test_open_session_exports_once_per_model_and_remembers_the_race(tmp_path,
                                                                     monkeypatch) -> None:
    """A one-image `predict` on the default backend exported to ONNX and raced two runtimes
    on every call: the export is cached by the model's content, the race winner per model,
    shape, precision, threads and machine."""
    import mobilenetv2.export.onnx as onnx_export
    from mobilenetv2 import create_model, deploy
    from mobilenetv2.runtime import session as session_mod

    monkeypatch.setenv("MOBILENETV2_CACHE", str(tmp_path / "cache"))
    exports, races = [], []
    real_export, real_race = onnx_export.export_onnx, session_mod.race
    monkeypatch.setattr(onnx_export, "export_onnx",
                        lambda *a, **k: exports.append(1) or real_export(*a, **k))
    monkeypatch.setattr(session_mod, "race",
                        lambda *a, **k: races.append(1) or real_race(*a, **k))
    model = create_model("mobilenetv2_035", num_classes=4).eval()
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    first = deploy.open_session(model, input_size=64)
    if not first._alternates:
        pytest.skip("only one fp32 ONNX backend installed: nothing to race")
    out1 = first(x)
    second = deploy.open_session(model, input_size=64)
    out2 = second(x)
    assert len(exports) == 1 and len(races) == 1
    assert second.chosen == first.chosen
    np.testing.assert_allclose(out1, out2, rtol=1e-5, atol=1e-5)
    other = create_model("mobilenetv2_035", num_classes=4).eval()  # other weights
    deploy.open_session(other, input_size=64)
    assert len(exports) == 2
    assert deploy.model_key(model, 64) != deploy.model_key(other, 64)


def test_helper_sessions_take_the_verbs_threads(tmp_path, monkeypatch) -> None:
    """`export`/`quantize --threads N` bound the ONNX Runtime sessions that verify and measure
    too (they took every core): those sessions use PyTorch's intra-op count, which the CLI's
    `--threads` sets."""
    import mobilenetv2.runtime.backends as backends
    from mobilenetv2 import create_model
    from mobilenetv2.export.onnx import export_onnx
    from mobilenetv2.quant.ptq import onnx_logits

    seen = []
    real = backends.onnxruntime_session
    monkeypatch.setattr(backends, "onnxruntime_session",
                        lambda path, threads=None, **k: seen.append(threads)
                        or real(path, threads, **k))
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        path = export_onnx(create_model("mobilenetv2_035", num_classes=3), tmp_path / "m.onnx",
                           input_size=32).path
        onnx_logits(path, np.zeros((1, 3, 32, 32), np.float32))
    finally:
        torch.set_num_threads(old)
    assert seen and all(t == 1 for t in seen), seen


def _fake_backends(monkeypatch, clock: FakeClock, speed: dict[str, float]) -> None:
    """Backends whose runners only move the fake clock and return their own value; a
    runner fails on inputs other than 96x96 when its speed key says "fixed-size"."""
    for i, name in enumerate(speed):
        def build(source, precision, threads, name=name, value=float(i + 1)):
            def run(x: np.ndarray) -> np.ndarray:
                if name == "executorch" and x.shape[-1] != 96:
                    raise RuntimeError("program lowered for 96x96")
                clock.now += speed[name]
                return np.full((len(x), 10), value, dtype=np.float32)
            return run
        monkeypatch.setitem(BACKENDS, name, dataclasses.replace(
            BACKENDS[name], package="numpy", build=build))


def test_phone_runtimes_join_the_auto_race(model, tmp_path, monkeypatch, without_native) -> None:
    """Weights with a .pte beside them: ExecuTorch races ONNX Runtime and OpenVINO, wins
    when fastest, sits out a shape its program cannot run, and the winner is cached per
    shape and machine; without the file, or without the package, it is not raced."""
    clock = FakeClock()
    speed = {"onnxruntime": 0.005, "openvino": 0.004, "executorch": 0.002}
    _fake_backends(monkeypatch, clock, speed)
    onnx, pte = tmp_path / "m.onnx", tmp_path / "m.pte"
    onnx.write_bytes(b"fake")
    pte.write_bytes(b"fake")
    sess = InferenceSession(model, onnx_file=onnx, phone_file=pte)
    sess.clock = clock
    sess.race_cache = RaceCache(tmp_path / "races.json", "model-key")
    assert sess.backend == "onnxruntime" and sess._alternates == ["openvino", "executorch"]
    x = np.zeros((2, 3, 96, 96), np.float32)
    assert (sess(x) == 3.0).all() and sess.chosen[x.shape] == "executorch"
    other = np.zeros((1, 3, 64, 64), np.float32)
    assert (sess(other) == 2.0).all() and sess.chosen[other.shape] == "openvino"
    # a new session on the same machine reuses the cached winners: nothing is timed
    again = InferenceSession(model, onnx_file=onnx, phone_file=pte)
    again.race_cache = sess.race_cache
    again.clock = lambda: pytest.fail("raced again despite the cache")
    assert (again(x) == 3.0).all() and again.chosen[x.shape] == "executorch"
    # no phone file: not raced; a bf16 session: ExecuTorch has no bf16
    assert InferenceSession(model, onnx_file=onnx)._alternates == ["openvino"]
    assert "executorch" not in InferenceSession(model, precision="bf16",
                                                phone_file=pte)._alternates
    monkeypatch.setitem(BACKENDS, "executorch", dataclasses.replace(
        BACKENDS["executorch"], package="not_installed_package_xyz"))
    assert InferenceSession(model, onnx_file=onnx, phone_file=pte)._alternates == ["openvino"]


def test_an_upgraded_runtime_races_again(model, tmp_path, monkeypatch, without_native) -> None:
    """The cached winner is keyed by each candidate's installed build: after an upgrade of
    one of them the shape is raced again instead of answered from the cache."""
    from mobilenetv2.runtime import race_cache

    clock = FakeClock()
    _fake_backends(monkeypatch, clock, {"onnxruntime": 0.005, "openvino": 0.004})
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"fake")
    cache = RaceCache(tmp_path / "races.json", "model-key")
    x = np.zeros((1, 3, 64, 64), np.float32)

    def session(timer) -> InferenceSession:
        sess = InferenceSession(model, onnx_file=onnx)
        sess.race_cache, sess.clock = cache, timer
        return sess

    first = session(clock)
    first(x)
    assert first.chosen[x.shape] == "openvino" and clock.now > 0
    session(lambda: pytest.fail("raced again despite the cache"))(x)
    real = race_cache.backend_build
    monkeypatch.setattr(race_cache, "backend_build",
                        lambda name: "2099.1" if name == "openvino" else real(name))
    timed = []  # the race reads the clock; running the cached winner does not
    upgraded = session(lambda: timed.append(clock.now) or clock.now)
    upgraded(x)
    assert timed and upgraded.chosen[x.shape] == "openvino"


def test_backend_build_is_the_installed_version() -> None:
    from mobilenetv2.runtime.race_cache import backend_build

    assert backend_build("numpy") == np.__version__  # a package outside BACKENDS: by name
    assert backend_build("onnxruntime") == pytest.importorskip("onnxruntime").__version__


def test_race_fails_only_when_every_runner_fails() -> None:
    clock = FakeClock()

    def broken(x: np.ndarray) -> np.ndarray:
        raise RuntimeError("cannot run this shape")

    x = np.zeros((1, 3, 8, 8), np.float32)
    winner, typical = race({"a": broken, "b": clock.runner(0.002, 1.0)}, x, clock=clock)
    assert winner == "b" and list(typical) == ["b"]
    with pytest.raises(RuntimeError, match="cannot run this shape"):
        race({"a": broken, "b": broken}, x, clock=clock)


def test_native_races_the_two_best_runtimes(model, tmp_path, monkeypatch) -> None:
    """Where built, the native engine starts fp32 `auto` and races ONNX Runtime and OpenVINO
    (an extra entrant: the two runtimes still race each other); the fastest wins."""
    clock = FakeClock()
    speed = {"native": 0.004, "onnxruntime": 0.005, "openvino": 0.003}
    _fake_backends(monkeypatch, clock, speed)
    monkeypatch.setitem(BACKENDS, "native", dataclasses.replace(
        BACKENDS["native"], unavailable=lambda: ""))
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"fake")
    sess = InferenceSession(model, onnx_file=onnx)
    sess.clock = clock
    assert sess.backend == "native" and sess._alternates == ["onnxruntime", "openvino"]
    x = np.zeros((1, 3, 96, 96), np.float32)
    assert (sess(x) == 3.0).all() and sess.chosen[x.shape] == "openvino"
    speed["native"] = 0.001
    two = np.zeros((2, 3, 96, 96), np.float32)
    assert (sess(two) == 1.0).all() and sess.chosen[two.shape] == "native"
    # not built (or no kernels for this CPU): not raced, and asked for, one clear line
    monkeypatch.setitem(BACKENDS, "native", dataclasses.replace(
        BACKENDS["native"], unavailable=lambda: "the native backend is unavailable (test)"))
    assert InferenceSession(model, onnx_file=onnx).backend == "onnxruntime"
    with pytest.raises(UserError, match=r"^the native backend is unavailable \(test\)$"):
        InferenceSession(model, backend="native")
