"""`mobilenetv2 bench`: interleaved CPU inference benchmark (see `mobilenetv2.benchmark`)."""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="CPU latency/throughput of every backend and precision vs torchvision eager",
        description="Batch-1 latency (median, p90) and batch-32 throughput of torchvision "
        "eager, our paths (fp32/bf16/int8 per backend) and ONNX Runtime / OpenVINO run "
        "directly on the same model, in interleaved rounds; ratios per round; fraction of "
        "the estimated fp32 roofline.",
    )
    p.add_argument("--weights", metavar="NAME|PATH",
                   help="weights (default: width 1.0, random weights, BN re-estimated)")
    p.add_argument("--threads", type=int, help="threads for every runtime (default: all "
                   "usable cores)")
    p.add_argument("--rounds", type=int, help="interleaved rounds (default: 10)")
    p.add_argument("--runs", type=int, help="batch-1 runs per variant and round (default: 10)")
    p.add_argument("--batch", type=int, help="throughput batch size (default: 32)")
    p.add_argument("--size", type=int, help="input side (default: 224)")
    p.add_argument("--cpu-ghz", type=float, help="clock for the roofline estimate "
                   "(default: detected)")
    p.add_argument("--quick", action="store_true", help="seconds-long smoke run")
    p.add_argument("--json", action="store_true", help="print the JSON report")
    p.add_argument("--markdown", metavar="FILE", help="also write the markdown table here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mobilenetv2.benchmark import BenchmarkConfig, format_markdown, run_benchmark

    given = {k: getattr(args, k) for k in ("weights", "threads", "rounds", "runs", "batch",
                                            "size", "cpu_ghz") if getattr(args, k) is not None}
    for k, v in given.items():
        if k != "weights" and v < 1:
            raise ValueError(f"--{k} must be >= 1, got {v}")
    cfg = BenchmarkConfig.quick(**given) if args.quick else BenchmarkConfig(**given)
    report = run_benchmark(cfg, progress=sys.stderr.isatty())
    command = "mobilenetv2 bench " + " ".join(sys.argv[2:]) if len(sys.argv) > 1 else ""
    md = format_markdown(report, command.strip())
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(md)
    print(json.dumps(report, indent=2) if args.json else md)
    return 0
