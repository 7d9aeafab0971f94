"""CPU inference benchmark for docs/BENCHMARKS.md (one command; see mobilenetv2.benchmark).

    python bench/inference.py            # full run (about 5 minutes on 2 cores), updates
                                         # the "Inference" section of docs/BENCHMARKS.md
    python bench/inference.py --quick    # seconds-long check, prints only

Every variant is timed in each of the interleaved rounds and every ratio is a per-round
median, because the development machine changes speed for tens of seconds at a time.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from mobilenetv2.benchmark import BenchmarkConfig, format_markdown, run_benchmark

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--weights", help="weights spec (default: random weights, BN re-estimated)")
    p.add_argument("--padding", choices=("symmetric", "tf_same"),
                   help="switch the model's stride-2 padding (same weights, timing only)")
    p.add_argument("--doc-section", default="inference",
                   help="marker name of the docs/BENCHMARKS.md block to replace")
    p.add_argument("--threads", type=int)
    p.add_argument("--rounds", type=int)
    p.add_argument("--cpu-ghz", type=float, help="clock for the roofline (default: detected)")
    p.add_argument("--json", type=Path, help="also write the JSON report here")
    p.add_argument("--doc", type=Path, default=ROOT / "docs" / "BENCHMARKS.md")
    args = p.parse_args()
    kw = {k: v for k, v in (("weights", args.weights), ("threads", args.threads),
                            ("rounds", args.rounds), ("cpu_ghz", args.cpu_ghz),
                            ("padding", args.padding)) if v is not None}
    cfg = BenchmarkConfig.quick(**kw) if args.quick else BenchmarkConfig(**kw)
    report = run_benchmark(cfg, progress=True)
    command = "python bench/inference.py " + " ".join(sys.argv[1:])
    md = format_markdown(report, command.strip())
    print(md)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    if not args.quick:
        text = args.doc.read_text() if args.doc.exists() else "# Benchmarks\n"
        # one marked block per section, so the two padding modes keep a table each
        start, end = f"<!-- {args.doc_section}:start -->", f"<!-- {args.doc_section}:end -->"
        block = f"{start}\n{md}{end}"
        if start in text:
            text = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: block, text,
                          flags=re.S)
        else:
            text += (f"\n## Inference (CPU): our paths vs torchvision and the runtimes "
                     f"({args.doc_section})\n\n{block}\n")
        args.doc.parent.mkdir(parents=True, exist_ok=True)
        args.doc.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
