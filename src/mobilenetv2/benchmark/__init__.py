"""The CPU inference benchmark behind the `mobilenetv2 bench` verb (and the repository's
`bench/inference.py`, which writes its table into docs/BENCHMARKS.md).

`variants` builds what is timed, `timing` times it in interleaved rounds, `report` turns the
times into ratios, targets and the markdown table, `run` wires them.
"""

from mobilenetv2.benchmark.report import format_markdown
from mobilenetv2.benchmark.run import BenchmarkConfig, run_benchmark
from mobilenetv2.benchmark.variants import random_model

__all__ = ["BenchmarkConfig", "format_markdown", "random_model", "run_benchmark"]
