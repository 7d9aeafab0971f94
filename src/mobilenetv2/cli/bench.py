"""`mobilenetv2 bench`: the command-line face of the interleaved CPU inference benchmark
(`mobilenetv2.benchmark`; the scripts under the repository's bench/ are separate)."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

from mobilenetv2.cli.backend import threads_or_none
from mobilenetv2.cli.options import option, shared

__all__ = ["Args", "run"]


@dataclass(frozen=True, kw_only=True)
class Args:
    """CPU latency/throughput of every backend and precision vs torchvision eager

    Batch-1 latency (median, p90) and batch-32 throughput of torchvision eager, our paths
    (fp32/bf16/int8 per backend) and ONNX Runtime / OpenVINO run directly on the same model,
    in interleaved rounds; ratios per round; fraction of the estimated fp32 roofline.
    """

    weights: str | None = shared("weights", None,
                                 default_help="width 1.0, random weights, BN re-estimated")
    threads: int = shared("threads", 0, note="every runtime gets this many")
    rounds: int | None = option(None, minimum=1, metavar="N",
                                help="interleaved rounds (default: 10)")
    runs: int | None = option(None, minimum=1, metavar="N",
                              help="batch-1 runs per variant and round (default: 10)")
    batch: int | None = option(None, minimum=1, metavar="N",
                               help="throughput batch size (default: 32)")
    size: int | None = option(None, minimum=1, metavar="N", help="input side (default: 224)")
    cpu_ghz: float | None = option(None, minimum=1, metavar="GHZ",
                                   help="clock for the roofline estimate (default: detected)")
    quick: bool = option(False, help="seconds-long smoke run (no phone runtimes)")
    no_phone: bool = option(False, help="skip LiteRT and ExecuTorch (their exports take a "
                            "minute or two)")
    json: bool = shared("json", False)
    markdown: str | None = option(None, metavar="FILE",
                                  help="also write the markdown table here")


def run(args: Args) -> int:
    from mobilenetv2.benchmark import BenchmarkConfig, format_markdown, run_benchmark
    from mobilenetv2.errors import UserError

    if args.weights is not None:
        from mobilenetv2.segment import weights_task

        task = weights_task(args.weights)
        if task == "detect":
            raise UserError("bench times classifier variants and backends; for a detector, "
                            "`mobilenetv2 profile --task detect` gives its exact MAdds, and "
                            "its ONNX export (`mobilenetv2 export`) runs on ONNX Runtime")
        if task != "classify":
            raise UserError(f"{args.weights} is a {task} model: bench compares classifiers "
                            "against torchvision's; `mobilenetv2 profile --variant "
                            "deeplabv3_mobilenetv2_100` gives a segmenter's arithmetic and "
                            "`export` / `quantize` its ONNX models")

    given = {"weights": args.weights, "threads": threads_or_none(args.threads),
             "rounds": args.rounds, "runs": args.runs, "batch": args.batch, "size": args.size,
             "cpu_ghz": args.cpu_ghz, "phone": False if args.no_phone else None}
    given = {k: v for k, v in given.items() if v is not None}
    cfg = BenchmarkConfig.quick(**given) if args.quick else BenchmarkConfig(**given)
    report = run_benchmark(cfg, progress=sys.stderr.isatty())
    command = "mobilenetv2 bench " + " ".join(sys.argv[2:]) if len(sys.argv) > 1 else ""
    md = format_markdown(report, command.strip())
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(md)
    print(json.dumps(report, indent=2) if args.json else md)
    return 0
