"""`mobilenetv2 profile --memory`: the activation-memory report (library: memory.py)."""

from __future__ import annotations

import json
from typing import Any

from mobilenetv2.config import ModelConfig

__all__ = ["print_memory"]

PRECISIONS = ("fp32", "fp16", "int8")


def print_memory(cfg: ModelConfig, args: Any) -> int:
    from mobilenetv2.memory import memory_grid, memory_report

    if args.all_sizes:
        rows = memory_grid(cfg)
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        _print_grid(rows)
        return 0
    report = memory_report(cfg, batch=args.batch, slices=args.slices)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    _print_report(cfg, report, args.steps)
    return 0


def _print_report(cfg: ModelConfig, r: dict[str, Any], steps: bool) -> None:
    res, batch = r["resolution"], r["batch"]
    slices = "one channel" if r["slices"] is None else f"{r['slices']} slices"
    net = "MobileNetV2" if cfg.task == "classify" else "Mobile DeepLabv3, MobileNetV2"
    print(f"Peak activation memory, {net} width {cfg.width} at {res}x{res}, batch "
          f"{batch}, padding {cfg.padding} (bytes)")
    print(f"{'schedule':<34}" + "".join(f"{p:>13}" for p in PRECISIONS) + "   peak at")
    big = r["largest_tensor"]
    rows = (
        ("layer by layer", r["layerwise"]["peak_bytes"], r["layerwise"]["peak_op"]),
        (f"block-wise, expansion by {slices}", r["blockwise"]["peak_bytes"],
         r["blockwise"]["peak_op"]),
        ("largest tensor (Table 3 'max')", big["bytes"],
         f"{big['name']} ({'x'.join(map(str, big['shape']))})"),
    )
    for label, values, where in rows:
        print(f"{label:<34}" + "".join(f"{values[p]:>13,}" for p in PRECISIONS) + f"   {where}")
    ratio = r["layerwise"]["peak_bytes"]["fp32"] / r["blockwise"]["peak_bytes"]["fp32"]
    print(f"block-wise needs {ratio:.1f}x less than layer by layer")
    print(f"int8 microcontroller RAM: {r['microcontroller_ram_bytes']:,} bytes (block-wise "
          "peak, int8 activations, int32 partial sums of the block being run; weights in "
          "flash, not counted)")
    print("\nTable 3 view (largest tensor at each side, 16-bit; paper: kilobytes of 1000):")
    for row in r["per_resolution"]:
        print(f"  {row['side']:>4}x{row['side']:<4} {row['channels']:>5} channels "
              f"{row['fp16_bytes'] / 1000:>9,.1f} KB")
    if not steps:
        return
    for kind in ("layerwise", "blockwise"):
        print(f"\n{kind} schedule: live tensors at each step (fp32 bytes)")
        for step in r[kind]["steps"]:
            live = ", ".join(f"{n} {'x'.join(map(str, s))}" for n, s in step["live"].items())
            scratch = "".join(f" + slice {'x'.join(map(str, s))}" for s in step["scratch"])
            print(f"  {step['op']:<24}{step['bytes']['fp32']:>12,}  {live}{scratch}")


def _print_grid(rows: list[dict[str, Any]]) -> None:
    print("Peak activation memory in bytes, batch 1: block-wise (one-channel slices) and "
          "layer by layer;\nTable 3 = largest tensor in fp16; MCU = int8 RAM (block-wise, "
          "int32 partial sums, weights in flash)")
    head = (f"{'width':>5}{'res':>5}{'Table 3':>10}"
            + "".join(f"{'block ' + p:>12}" for p in PRECISIONS)
            + "".join(f"{'layer ' + p:>12}" for p in PRECISIONS) + f"{'MCU int8':>11}")
    print(head)
    print("-" * len(head))
    for row in rows:
        print(f"{row['width']:>5}{row['resolution']:>5}{row['largest_tensor_fp16_bytes']:>10,}"
              + "".join(f"{row['blockwise_bytes'][p]:>12,}" for p in PRECISIONS)
              + "".join(f"{row['layerwise_bytes'][p]:>12,}" for p in PRECISIONS)
              + f"{row['microcontroller_ram_bytes']:>11,}")
