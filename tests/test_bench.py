"""The inference benchmark (`mobilenetv2.benchmark`, the `bench` verb): its timing loop and
its report's arithmetic on fake runners and made-up times, and the `--quick` run's structure.
No assertion here reads a wall clock."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mobilenetv2.benchmark.report import format_markdown, make_report
from mobilenetv2.benchmark.timing import UNTIMED_RUNS, WARMUP_RUNS, Timings, time_interleaved
from mobilenetv2.benchmark.variants import Variant
from mobilenetv2.cli import main
from mobilenetv2.runtime.cpu import CpuPeak
from mobilenetv2.runtime.race import wait_for_idle_threads
from spin_fakes import spinning_runners


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_every_variant_is_timed_in_every_round_on_its_own_clock() -> None:
    clock = FakeClock()
    calls: dict[str, list[int]] = {"a": [], "b": []}
    cost = {"a": 0.001, "b": 0.004}  # seconds per image

    def runner(name):
        def run(x: np.ndarray) -> None:
            calls[name].append(len(x))
            clock.now += cost[name] * len(x)
        return run

    x1, xb = np.zeros((1, 3, 4, 4), np.float32), np.zeros((8, 3, 4, 4), np.float32)
    out = time_interleaved({n: runner(n) for n in cost}, x1, xb, rounds=3, runs=4,
                           batch_runs=2, clock=clock)
    for name, t in out.items():
        assert len(t.batch1) == 3 and all(len(r) == 4 for r in t.batch1)
        assert np.allclose(t.batch1, cost[name])  # each run is charged to its own runner
        assert t.images_per_s == pytest.approx([1 / cost[name]] * 3)
        ones, batches = calls[name].count(1), calls[name].count(8)
        assert ones == WARMUP_RUNS + 3 * (UNTIMED_RUNS + 4) and batches == 1 + 3 * 2


def test_no_variant_is_timed_while_the_previous_ones_threads_spin() -> None:
    # "a" leaves threads spinning for 60 ms (ONNX Runtime's ~70 ms); "b" is 2 ms a run alone
    # and 5 ms beside them. The timer waits for idle threads before each turn, so b's
    # batch-1 and batch figures are its own in every round, whichever order a round takes.
    clock = FakeClock()
    runners, cpu, sleep = spinning_runners(clock, 0.060)
    settle = lambda: wait_for_idle_threads(cpu_seconds=cpu, sleep=sleep)  # noqa: E731
    x1, xb = np.zeros((1, 3, 4, 4), np.float32), np.zeros((8, 3, 4, 4), np.float32)
    out = time_interleaved(runners, x1, xb, rounds=4, runs=3, clock=clock, settle=settle)
    assert np.allclose(out["b"].batch1, 0.002) and np.allclose(out["a"].batch1, 0.003)
    assert out["b"].images_per_s == pytest.approx([500.0] * 4)
    # without the wait, b is timed beside a's threads in the rounds where a ran just before
    clock = FakeClock()
    runners, _, _ = spinning_runners(clock, 0.060)
    out = time_interleaved(runners, x1, xb, rounds=4, runs=3, clock=clock, settle=lambda: None)
    assert np.max(out["b"].batch1) == pytest.approx(0.005)


def _timings(b1_ms: list[float], ips: list[float]) -> Timings:
    # two runs per round: the round's median is the given value
    return Timings(batch1=[[t / 1e3, t / 1e3] for t in b1_ms], images_per_s=ips)


def variant(name: str, kind: str, backend: str, precision: str) -> Variant:
    return Variant(name, kind, backend, precision, lambda x: None)


def test_report_ratios_are_per_round_medians() -> None:
    variants = [variant("torchvision eager", "baseline", "torch", "fp32"),
                variant("ours auto fp32", "auto", "auto", "fp32"),
                variant("onnxruntime direct fp32", "peer", "onnxruntime", "fp32"),
                variant("openvino direct fp32", "peer", "openvino", "fp32")]
    timings = {
        "torchvision eager": _timings([10.0, 20.0, 10.0], [100.0, 50.0, 100.0]),
        "ours auto fp32": _timings([2.0, 5.0, 4.0], [500.0, 200.0, 400.0]),
        "onnxruntime direct fp32": _timings([2.5, 4.0, 5.0], [400.0, 250.0, 300.0]),
        "openvino direct fp32": _timings([3.0, 5.0, 3.0], [300.0, 300.0, 500.0]),
    }
    peak = CpuPeak(model="test", cores=2, ghz=2.0, flops_per_cycle=25, isa="test")  # 100 GF
    config = {"batch": 4, "rounds": 3, "runs": 2, "batch_runs": 1, "size": 64}
    report = make_report(config, variants, timings, "test model", 2, 10**8, peak,
                         {"torch": "x"})
    rows = {r["name"]: r for r in report["rows"]}
    ours = rows["ours auto fp32"]
    # per round eager/ours: 5, 4, 2.5 -> median 4 (pooled medians would give 10/4 = 2.5)
    assert ours["speedup_vs_eager_batch1"] == pytest.approx(4.0)
    assert ours["speedup_vs_eager_batch4"] == pytest.approx(4.0)  # 5, 4, 4
    assert ours["batch1_median_ms"] == pytest.approx(4.0) and ours["batch1_runs"] == 6
    assert ours["batch4_images_per_s"] == pytest.approx(400.0)
    assert ours["roofline_fraction_batch1"] == pytest.approx(1e8 / 4e-3 / 1e11)
    assert ours["roofline_fraction_batch4"] == pytest.approx(1e8 * 400 / 1e11)
    (target,) = report["targets"]
    # fastest peer per round: 2.5, 4, 3 ms -> ours/peer 0.8, 1.25, 1.33 -> median 1.25
    assert target["latency_ratio_vs_fastest_peer"] == pytest.approx(1.25)
    # best peer throughput per round: 400, 300, 500 -> 1.25, 0.667, 0.8 -> median 0.8
    assert target["throughput_ratio_vs_fastest_peer"] == pytest.approx(0.8)
    assert report["default_fp32"]["path"] == "ours auto fp32"
    assert report["auto"] == {"fp32": "ours auto fp32", "bf16": None, "int8": None}
    md = format_markdown(report)
    assert "| fp32 batch-1 latency, ours auto fp32 / fastest peer | 1.250 | <= 1.05 | NO |" in md
    assert "| fp32 batch-4 throughput, ours auto fp32 / fastest peer | 0.800 | >= 0.95 | NO |" \
        in md
    assert "vs torchvision eager, batch 1 | 4.00x | >= 2.5x | yes |" in md


@pytest.mark.slow  # exports, quantizes and times a dozen variants: seconds
def test_bench_quick_json(capsys, tmp_path) -> None:
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    md = tmp_path / "bench.md"
    assert main(["bench", "--quick", "--json", "--markdown", str(md)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["threads"] == 1 and report["config"]["rounds"] == 2
    names = [r["name"] for r in report["rows"]]
    assert names[0] == "torchvision eager" and "ours torch fp32" in names
    assert "onnxruntime direct fp32" in names and "ours onnxruntime int8" in names
    assert all(row["batch1_runs"] == 6 for row in report["rows"])
    precisions = {t["precision"] for t in report["targets"]}
    assert "fp32" in precisions and "int8" in precisions
    assert report["default_fp32"]["path"] == report["auto"]["fp32"]
    # 2 x the multiply-adds of width 0.35 at 64x64 (`profile`, cross-checked in test_profile)
    assert report["flops_per_image"] == 2 * 6_015_168
    assert "| torchvision eager |" in md.read_text()


def test_phone_runtimes_are_peers_in_the_targets() -> None:
    """ExecuTorch on XNNPACK counts as a peer: when it is the fastest, it is the bar."""
    variants = [variant("torchvision eager", "baseline", "torch", "fp32"),
                variant("ours auto fp32", "auto", "auto", "fp32"),
                variant("onnxruntime direct fp32", "peer", "onnxruntime", "fp32"),
                variant("executorch xnnpack fp32", "phone", "executorch", "fp32")]
    timings = {
        "torchvision eager": _timings([10.0, 10.0], [100.0, 100.0]),
        "ours auto fp32": _timings([3.0, 3.0], [300.0, 300.0]),
        "onnxruntime direct fp32": _timings([4.0, 4.0], [200.0, 200.0]),
        "executorch xnnpack fp32": _timings([2.0, 2.0], [400.0, 400.0]),
    }
    peak = CpuPeak(model="test", cores=2, ghz=2.0, flops_per_cycle=25, isa="test")
    config = {"batch": 4, "rounds": 2, "runs": 2, "batch_runs": 1, "size": 64}
    report = make_report(config, variants, timings, "test model", 2, 10**8, peak,
                         {"torch": "x"})
    (target,) = report["targets"]
    assert target["latency_ratio_vs_fastest_peer"] == pytest.approx(1.5)  # 3 / 2 ms
    assert target["throughput_ratio_vs_fastest_peer"] == pytest.approx(0.75)  # 300 / 400
    assert target["peers"] == ["onnxruntime direct fp32", "executorch xnnpack fp32"]
    assert "fp32: onnxruntime direct fp32, executorch xnnpack fp32" in format_markdown(report)


def test_native_targets_use_the_issues_peers() -> None:
    """The native rows have their own bars (issue 13): fp32 latency <= 0.8x and throughput
    >= 1.2x the fastest peer; int8 latency <= 0.8x the fastest of OpenVINO and XNNPACK, so
    ONNX Runtime's int8 is not its bar."""
    variants = [variant("torchvision eager", "baseline", "torch", "fp32"),
                variant("ours native fp32", "ours", "native", "fp32"),
                variant("ours native int8", "ours", "native", "int8"),
                variant("onnxruntime direct fp32", "peer", "onnxruntime", "fp32"),
                variant("onnxruntime direct int8", "peer", "onnxruntime", "int8"),
                variant("openvino direct int8", "peer", "openvino", "int8"),
                variant("litert xnnpack int8", "phone", "litert", "int8")]
    timings = {
        "torchvision eager": _timings([10.0, 10.0], [100.0, 100.0]),
        "ours native fp32": _timings([3.0, 3.0], [300.0, 300.0]),
        "ours native int8": _timings([3.0, 3.0], [300.0, 300.0]),
        "onnxruntime direct fp32": _timings([4.0, 4.0], [200.0, 200.0]),
        "onnxruntime direct int8": _timings([2.0, 2.0], [400.0, 400.0]),
        "openvino direct int8": _timings([5.0, 6.0], [200.0, 200.0]),
        "litert xnnpack int8": _timings([6.0, 4.0], [100.0, 100.0]),
    }
    peak = CpuPeak(model="test", cores=2, ghz=2.0, flops_per_cycle=25, isa="test")
    config = {"batch": 4, "rounds": 2, "runs": 2, "batch_runs": 1, "size": 64}
    report = make_report(config, variants, timings, "test model", 2, 10**8, peak,
                         {"torch": "x"})
    fp32, int8 = report["targets"]
    assert fp32["ours"] == "ours native fp32" and fp32["latency_target"] == 0.8
    assert fp32["latency_ratio_vs_fastest_peer"] == pytest.approx(0.75)  # 3 / 4 ms
    assert fp32["throughput_ratio_vs_fastest_peer"] == pytest.approx(1.5)  # 300 / 200
    assert int8["peers"] == ["openvino direct int8", "litert xnnpack int8"]
    # fastest of OpenVINO and LiteRT per round: 5, 4 ms -> 0.6, 0.75 -> median 0.675
    assert int8["latency_ratio_vs_fastest_peer"] == pytest.approx(0.675)
    md = format_markdown(report)
    assert "| fp32 batch-1 latency, ours native fp32 / fastest peer | 0.750 | <= 0.8 | yes |" \
        in md
    assert "| fp32 batch-4 throughput, ours native fp32 / fastest peer | 1.500 | >= 1.2 | yes |" \
        in md
    assert "| int8 batch-1 latency, ours native int8 / fastest peer | 0.675 | <= 0.8 | yes |" \
        in md
    assert "int8 batch-4 throughput, ours native int8" not in md


def test_benchmark_model_switches_padding_keeping_the_weights() -> None:
    """Both padding modes are timed with the same real weights (issue 13)."""
    from mobilenetv2.benchmark.variants import _with_padding, benchmark_model

    base, what = benchmark_model(None, 0.35, 33)
    assert base.config.padding == "symmetric" and "switched" not in what
    model, what = benchmark_model(None, 0.35, 33, "tf_same")
    assert model.config.padding == model.meta.config.padding == "tf_same"
    assert "switched to tf_same" in what
    switched = _with_padding(base, "tf_same")
    for (k, a), b in zip(base.state_dict().items(), switched.state_dict().values()):
        assert torch.equal(a, b), k
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        # even size, stride 2: TF SAME pads (0, 1) where symmetric pads (1, 1)
        assert not torch.allclose(base(x), switched(x), atol=1e-4)
