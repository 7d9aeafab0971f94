"""`mobilenetv2 bench --quick`: the report's structure (no timing assertions)."""

from __future__ import annotations

import json

import pytest

from mobilenetv2.bench import cpu_peak
from mobilenetv2.cli import main

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")


def test_bench_quick_json(capsys, tmp_path) -> None:
    md = tmp_path / "bench.md"
    assert main(["bench", "--quick", "--json", "--markdown", str(md)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["threads"] == 1 and report["config"]["rounds"] == 2
    names = [r["name"] for r in report["rows"]]
    assert names[0] == "torchvision eager" and "ours torch fp32" in names
    assert "onnxruntime direct fp32" in names and "ours onnxruntime int8" in names
    for row in report["rows"]:
        assert row["batch1_runs"] == 6
        assert row["batch1_median_ms"] > 0 and row["batch1_p90_ms"] >= row["batch1_median_ms"]
        assert row["batch4_images_per_s"] > 0 and 0 < row["roofline_fraction_batch1"] < 1
    assert report["rows"][0]["speedup_vs_eager_batch1"] == pytest.approx(1.0)
    precisions = {t["precision"] for t in report["targets"]}
    assert "fp32" in precisions and "int8" in precisions
    assert report["default_fp32"]["path"] == report["auto"]["fp32"]
    assert report["flops_per_image"] > 0 and report["cpu"]["peak_gflops"] > 0
    assert "| torchvision eager |" in md.read_text()


def test_cpu_peak_is_stated() -> None:
    peak = cpu_peak(2)
    assert peak.cores == 2 and peak.flops_per_cycle in (8, 32, 64)
    assert "GFLOP/s" in peak.describe()
