"""Inference benchmark: our paths against torchvision eager and the peer runtimes run directly.

Measures batch-1 latency (median and p90 over every timed run) and batch-32 throughput for
torchvision's eager MobileNetV2 (the baseline), our `InferenceSession` paths (fp32, bf16,
int8 on each backend) and ONNX Runtime / OpenVINO run directly, with their plain APIs, on
the very ONNX files our sessions run. The machine this project is developed on switches for
tens of seconds between a quiet state and one 1.4-1.7x slower, so every variant is timed in
each round (in a new random order every round) and every ratio is computed per
round and reported as the median over rounds.

The roofline is the exact FLOP count (2 x the multiply-adds of `mobilenetv2.profile`)
divided by the CPU's estimated fp32 peak, cores x GHz x FLOPs per cycle from the detected
vector ISA; the estimate and its inputs are stated in the report.
"""

from __future__ import annotations

import logging
import os
import platform
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mobilenetv2.errors import UserError
from mobilenetv2.runtime.session import InferenceSession, backend_installed, cpu_has_bf16

__all__ = ["BenchConfig", "CpuPeak", "cpu_peak", "format_markdown", "run_bench"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BenchConfig:
    """What to run.

    Attributes:
        weights: `--weights` spec; None benchmarks width 1.0 with random weights whose
            BatchNorm statistics are re-estimated (raw initialisation makes activations
            collapse to ~1e-9, which would make int8 calibration meaningless).
        size: Input side.
        threads: Intra-op threads for every runtime (default: the usable cores).
        rounds: Interleaved rounds.
        runs: Timed batch-1 runs per variant and round.
        batch: Throughput batch size.
        batch_runs: Timed throughput batches per variant and round.
        width: Width of the random-weight model.
        cpu_ghz: Clock for the roofline (default: detected; /proc/cpuinfo may report the
            base clock rather than the sustained all-core one).
    """

    weights: str | None = None
    size: int = 224
    threads: int | None = None
    rounds: int = 10
    runs: int = 10
    batch: int = 32
    batch_runs: int = 2
    width: float = 1.0
    cpu_ghz: float | None = None

    @classmethod
    def quick(cls, **kw: Any) -> BenchConfig:
        """A seconds-long smoke run (tests, checks): small model, few rounds."""
        # One thread: on a loaded 2-core machine a 2-thread OpenMP region waits for a
        # descheduled thread at every layer (measured: 2.4 s instead of 7 ms per image).
        base = {"size": 64, "rounds": 2, "runs": 3, "batch": 4, "batch_runs": 1,
                "width": 0.35, "threads": 1}
        base.update(kw)
        return cls(**base)


@dataclass
class CpuPeak:
    """Estimated fp32 peak: cores x GHz x FLOPs/cycle."""

    model: str
    cores: int
    ghz: float
    flops_per_cycle: int
    isa: str

    @property
    def gflops(self) -> float:
        return self.cores * self.ghz * self.flops_per_cycle

    def describe(self) -> str:
        return (f"{self.cores} cores x {self.ghz:.2f} GHz x {self.flops_per_cycle} FP32 "
                f"FLOPs/cycle ({self.isa}) = {self.gflops:.0f} GFLOP/s (estimate)")


def cpu_peak(cores: int, ghz: float | None = None) -> CpuPeak:
    """Estimate the fp32 FMA peak from /proc/cpuinfo.

    FLOPs/cycle = FMA pipes x fp32 lanes x 2: AVX-512 on Intel server cores and AMD Zen 5
    (cpu family 26) runs two 512-bit FMAs per cycle (64); Zen 4 executes AVX-512 on two
    256-bit pipes (32), as do AVX2 cores (32); SSE-only cores 8. The clock is the one the
    kernel reports (often the nominal clock inside a VM) unless `ghz` is given.
    """
    model, flags, mhz, vendor, family = platform.processor() or "unknown", "", 0.0, "", 0
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "model name" and model in ("unknown", "", "x86_64"):
            model = value
        elif key == "flags" and not flags:
            flags = value
        elif key == "cpu MHz" and not mhz:
            mhz = float(value)
        elif key == "vendor_id" and not vendor:
            vendor = value
        elif key == "cpu family" and not family and value.isdigit():
            family = int(value)
    max_mhz = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    if max_mhz.exists():
        mhz = max(mhz, int(max_mhz.read_text()) / 1000)
    fl = set(flags.split())
    if "avx512f" in fl and vendor == "AuthenticAMD" and family >= 26:
        per, isa = 64, "AVX-512, 2 full-width FMA pipes (AMD Zen 5, family 26)"
    elif "avx512f" in fl and vendor == "AuthenticAMD":
        per, isa = 32, "AVX-512 on 2x256-bit FMA pipes (AMD Zen 4)"
    elif "avx512f" in fl:
        per, isa = 64, "AVX-512, 2 FMA units"
    elif "avx2" in fl and "fma" in fl:
        per, isa = 32, "AVX2 + FMA, 2 units"
    else:
        per, isa = 8, "SSE"
    return CpuPeak(model=model, cores=cores, ghz=ghz or mhz / 1000, flops_per_cycle=per,
                   isa=isa)


@dataclass
class _Variant:
    name: str
    kind: str  # "baseline", "ours", "auto" or "peer"
    backend: str
    precision: str
    run: Callable[[np.ndarray], Any]
    b1: list[list[float]] = field(default_factory=list)  # seconds, per round
    b32: list[float] = field(default_factory=list)  # images/s, per round


def _versions() -> dict[str, str]:
    import torchvision

    out = {"python": platform.python_version(), "torch": torch.__version__,
           "torchvision": torchvision.__version__}
    for name in ("onnxruntime", "openvino"):
        if backend_installed(name):
            mod = __import__(name)
            out[name] = getattr(mod, "__version__", None) or mod.get_version()
    return out


def _model(cfg: BenchConfig):
    from mobilenetv2.config import ModelConfig
    from mobilenetv2.data.preprocessing import Preprocessing
    from mobilenetv2.model import MobileNetV2
    from mobilenetv2.model.fuse import reestimate_bn
    from mobilenetv2.weights.format import WeightsMeta

    if cfg.weights is not None:
        from mobilenetv2.weights import load_weights

        return load_weights(cfg.weights).eval(), f"weights {cfg.weights}"
    mc = ModelConfig(width=cfg.width, resolution=max(cfg.size, 32))
    model = MobileNetV2(mc)
    reestimate_bn(model, steps=2, batch_size=8, size=cfg.size)
    model.meta = WeightsMeta(config=mc, preprocessing=Preprocessing(
        resize=cfg.size, crop=cfg.size))
    return model, f"width {cfg.width}, random weights with re-estimated BatchNorm statistics"


def _torchvision(cfg: BenchConfig, threads: int):
    import torchvision

    from mobilenetv2.model.fuse import reestimate_bn

    tv = torchvision.models.mobilenet_v2(width_mult=cfg.width)
    reestimate_bn(tv, steps=2, batch_size=8, size=cfg.size)

    def run(x: np.ndarray) -> Any:
        with torch.inference_mode():
            return tv(torch.from_numpy(x))

    return run


def _peer_ort(path: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x})


def _peer_ov(path: Path, threads: int, hint: str):
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(str(path), "CPU", {
        "INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": threads})
    req = compiled.create_infer_request()
    return lambda x: req.infer({0: x})


def _build(cfg: BenchConfig, threads: int, work: Path) -> tuple[list[_Variant], str, Any]:
    from mobilenetv2.export.onnx import export_onnx
    from mobilenetv2.quant.ptq import quantize_onnx

    model, what = _model(cfg)
    gen = torch.Generator().manual_seed(0)
    fp32 = work / "model.fp32.onnx"
    export_onnx(model, fp32, input_size=cfg.size)
    have_ort, have_ov = backend_installed("onnxruntime"), backend_installed("openvino")
    int8 = None
    if have_ort:
        calib = torch.randn(32, 3, cfg.size, cfg.size, generator=gen).numpy()
        int8 = quantize_onnx(fp32, work / "model.int8.onnx", calib)
    variants = [_Variant("torchvision eager", "baseline", "torch", "fp32",
                         _torchvision(cfg, threads))]
    bf16 = cpu_has_bf16()
    plan = [("torch", "fp32"), ("torch", "bf16") if bf16 else None,
            ("onnxruntime", "fp32"), ("openvino", "fp32"), ("openvino", "bf16") if bf16 else None,
            ("onnxruntime", "int8"), ("openvino", "int8")]
    for item in plan:
        if item is None or not backend_installed(item[0]):
            continue
        backend, precision = item
        if precision == "int8" and int8 is None:
            continue
        source = model if backend == "torch" else (int8 if precision == "int8" else fp32)
        sess = InferenceSession(source, backend=backend, precision=precision, threads=threads)
        variants.append(_Variant(f"ours {backend} {precision}", "ours", backend, precision,
                                 sess))
    for precision in ("fp32", "bf16", "int8"):
        if precision == "bf16" and not bf16:
            continue
        if precision == "int8" and int8 is None:
            continue
        source = int8 if precision == "int8" else model
        try:
            sess = InferenceSession(source, precision=precision, threads=threads)
        except UserError as e:
            log.warning("no auto path for %s: %s", precision, e)
            continue
        variants.append(_Variant(f"ours auto {precision}", "auto", "auto", precision, sess))
    if have_ort:
        variants.append(_Variant("onnxruntime direct fp32", "peer", "onnxruntime", "fp32",
                                 _peer_ort(fp32, threads)))
        variants.append(_Variant("onnxruntime direct int8", "peer", "onnxruntime", "int8",
                                 _peer_ort(int8, threads)))
    if have_ov:
        variants.append(_Variant("openvino direct fp32", "peer", "openvino", "fp32",
                                 _peer_ov(fp32, threads, "f32")))
        if bf16:
            variants.append(_Variant("openvino direct bf16", "peer", "openvino", "bf16",
                                     _peer_ov(fp32, threads, "bf16")))
        if int8 is not None:
            variants.append(_Variant("openvino direct int8", "peer", "openvino", "int8",
                                     _peer_ov(int8, threads, "f32")))
    return variants, what, model


def _auto_pick(variants: list[_Variant], precision: str) -> _Variant | None:
    """The `InferenceSession(backend="auto")` variant for `precision`."""
    return next((v for v in variants if v.kind == "auto" and v.precision == precision), None)


def run_bench(cfg: BenchConfig, progress: bool = True) -> dict[str, Any]:
    """Run the interleaved benchmark; returns the JSON-ready report."""
    from tqdm import tqdm

    from mobilenetv2.profile import profile

    threads = cfg.threads or len(os.sched_getaffinity(0))
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    x1 = rng.standard_normal((1, 3, cfg.size, cfg.size), dtype=np.float32)
    xb = rng.standard_normal((cfg.batch, 3, cfg.size, cfg.size), dtype=np.float32)
    try:
        with tempfile.TemporaryDirectory(prefix="mobilenetv2-bench-") as tmp:
            variants, what, model = _build(cfg, threads, Path(tmp))
            for v in variants:  # warm-up: first-call allocations, OpenVINO compiles
                for _ in range(3):
                    v.run(x1)
                v.run(xb)
            shuffle = random.Random(0)
            bar = tqdm(range(cfg.rounds), desc="bench rounds", disable=not progress)
            for _round in bar:
                # A new random order every round. A cyclic rotation would keep every variant
                # behind the same predecessor, and a predecessor matters: ONNX Runtime's
                # worker threads keep spinning after a run and slow whatever runs next on a
                # 2-core CPU by up to 1.8x (measured: OpenVINO bf16 1.2 ms -> 2.1 ms).
                order = list(variants)
                shuffle.shuffle(order)
                for v in order:
                    # Untimed runs first: the previous runtime's worker threads may still be
                    # spinning and its data is in the caches; that cost belongs to no one.
                    for _ in range(2):
                        v.run(x1)
                    times = []
                    for _ in range(cfg.runs):
                        t0 = time.perf_counter()
                        v.run(x1)
                        times.append(time.perf_counter() - t0)
                    v.b1.append(times)
                for v in order:
                    t0 = time.perf_counter()
                    for _ in range(cfg.batch_runs):
                        v.run(xb)
                    v.b32.append(cfg.batch * cfg.batch_runs / (time.perf_counter() - t0))
    finally:
        torch.set_num_threads(prev_threads)
    flops = 2 * profile(model.config, cfg.size).madds
    peak = cpu_peak(threads, cfg.cpu_ghz)
    return _report(cfg, variants, what, threads, flops, peak)


def _med_ratio(a: list[float], b: list[float]) -> float:
    return statistics.median(x / y for x, y in zip(a, b))


def _report(cfg: BenchConfig, variants: list[_Variant], what: str, threads: int,
            flops: int, peak: CpuPeak) -> dict[str, Any]:
    base = variants[0]
    base_b1 = [statistics.median(t) for t in base.b1]
    rows = []
    for v in variants:
        per_round = [statistics.median(t) for t in v.b1]
        pooled = sorted(t for ts in v.b1 for t in ts)
        lat = statistics.median(pooled)
        rows.append({
            "name": v.name, "kind": v.kind, "backend": v.backend, "precision": v.precision,
            "detail": v.run.describe() if hasattr(v.run, "describe") else "",
            "batch1_median_ms": lat * 1e3,
            "batch1_p90_ms": float(np.percentile(pooled, 90)) * 1e3,
            "batch1_runs": len(pooled),
            f"batch{cfg.batch}_images_per_s": statistics.median(v.b32),
            "speedup_vs_eager_batch1": _med_ratio(base_b1, per_round),
            f"speedup_vs_eager_batch{cfg.batch}": _med_ratio(v.b32, base.b32),
            "roofline_fraction_batch1": flops / lat / (peak.gflops * 1e9),
            f"roofline_fraction_batch{cfg.batch}":
                flops * statistics.median(v.b32) / (peak.gflops * 1e9),
        })
    targets = []
    for precision in ("fp32", "bf16", "int8"):
        ours = _auto_pick(variants, precision)
        peers = [v for v in variants if v.kind == "peer" and v.precision == precision]
        if ours is None or not peers:
            continue
        ours_b1 = [statistics.median(t) for t in ours.b1]
        best_b1 = [min(statistics.median(p.b1[r]) for p in peers) for r in range(cfg.rounds)]
        best_b32 = [max(p.b32[r] for p in peers) for r in range(cfg.rounds)]
        targets.append({
            "precision": precision, "ours": ours.name,
            "latency_ratio_vs_fastest_peer": _med_ratio(ours_b1, best_b1),
            "latency_target": 1.05,
            "throughput_ratio_vs_fastest_peer": _med_ratio(ours.b32, best_b32),
            "throughput_target": 0.95,
        })
    fp32 = _auto_pick(variants, "fp32")
    default = None
    if fp32 is not None:
        row = next(r for r in rows if r["name"] == fp32.name)
        default = {"path": fp32.name,
                   "speedup_batch1": row["speedup_vs_eager_batch1"], "target_batch1": 2.5,
                   f"speedup_batch{cfg.batch}": row[f"speedup_vs_eager_batch{cfg.batch}"],
                   f"target_batch{cfg.batch}": 5.0}
    return {
        "config": asdict(cfg), "model": what, "threads": threads,
        "flops_per_image": flops, "cpu": asdict(peak) | {"peak_gflops": peak.gflops,
                                                          "peak_estimate": peak.describe()},
        "versions": _versions(), "rows": rows, "targets": targets, "default_fp32": default,
        "auto": {p: (v.name if (v := _auto_pick(variants, p)) else None)
                 for p in ("fp32", "bf16", "int8")},
    }


def format_markdown(report: dict[str, Any], command: str = "") -> str:
    """The report as the markdown table of docs/BENCHMARKS.md."""
    cfg = report["config"]
    b = cfg["batch"]
    v = report["versions"]
    lines = [
        f"CPU: {report['cpu']['model']}; peak {report['cpu']['peak_estimate']}. "
        f"Threads: {report['threads']} (pinned for every runtime). Model: "
        f"{report['model']}, {cfg['size']}x{cfg['size']}, "
        f"{report['flops_per_image'] / 1e6:.1f} MFLOP/image. "
        + ", ".join(f"{k} {val}" for k, val in v.items()) + ".",
        f"{cfg['rounds']} interleaved rounds x {cfg['runs']} batch-1 runs "
        f"(+ {cfg['batch_runs']} batch-{b} runs) per variant; ratios are per-round medians."
        + (f" Command: `{command}`." if command else ""),
        "",
        f"| path | batch-1 median ms | p90 ms | batch-{b} img/s | vs eager b1 | "
        f"vs eager b{b} | of fp32 peak b1 | of fp32 peak b{b} |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        name = r["name"] + (f" ({r['detail'].split(' (')[0]})" if r["kind"] == "auto" else "")
        lines.append(
            f"| {name} | {r['batch1_median_ms']:.2f} | {r['batch1_p90_ms']:.2f} | "
            f"{r[f'batch{b}_images_per_s']:.1f} | {r['speedup_vs_eager_batch1']:.2f}x | "
            f"{r[f'speedup_vs_eager_batch{b}']:.2f}x | "
            f"{100 * r['roofline_fraction_batch1']:.0f}% | "
            f"{100 * r[f'roofline_fraction_batch{b}']:.0f}% |")
    lines += ["", "| target | measured | goal | met |", "|---|---:|---:|---|"]
    for t in report["targets"]:
        lat, thr = t["latency_ratio_vs_fastest_peer"], t["throughput_ratio_vs_fastest_peer"]
        lines.append(f"| {t['precision']} batch-1 latency, {t['ours']} / fastest peer | "
                     f"{lat:.3f} | <= 1.05 | {'yes' if lat <= 1.05 else 'NO'} |")
        lines.append(f"| {t['precision']} batch-{b} throughput, {t['ours']} / fastest peer | "
                     f"{thr:.3f} | >= 0.95 | {'yes' if thr >= 0.95 else 'NO'} |")
    d = report["default_fp32"]
    if d:
        lines.append(f"| default fp32 ({d['path']}) vs torchvision eager, batch 1 | "
                     f"{d['speedup_batch1']:.2f}x | >= 2.5x | "
                     f"{'yes' if d['speedup_batch1'] >= 2.5 else 'NO'} |")
        s = d[f"speedup_batch{b}"]
        lines.append(f"| default fp32 ({d['path']}) vs torchvision eager, batch {b} | "
                     f"{s:.2f}x | >= 5x | {'yes' if s >= 5 else 'NO'} |")
    return "\n".join(lines) + "\n"
