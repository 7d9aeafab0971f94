"""Regenerate the README's params / MAdds table with the `profile` command.

    python bench/readme_table.py        (or: make readme-table)

Runs `mobilenetv2 profile --width W --resolution R --json` for every cell and prints the
markdown table (params in millions, all trainable / MAdds in millions).
"""

from __future__ import annotations

import contextlib
import io
import json

from mobilenetv2.cli import main

WIDTHS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
RESOLUTIONS = (96, 128, 160, 192, 224)


def profile_json(width: float, resolution: int) -> dict:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["profile", "--width", str(width), "--resolution", str(resolution), "--json"])
    if rc != 0:
        raise SystemExit(f"profile failed for width {width} resolution {resolution}")
    return json.loads(buf.getvalue())


def table() -> str:
    head = "| width | params (M) | weights excl. BN (M) | " + " | ".join(
        f"MAdds @{r} (M)" for r in RESOLUTIONS
    ) + " |"
    lines = [head, "|" + "---|" * (3 + len(RESOLUTIONS))]
    for w in WIDTHS:
        cells = [profile_json(w, r) for r in RESOLUTIONS]
        params, weights = cells[0]["params"] / 1e6, cells[0]["weights_excluding_bn"] / 1e6
        lines.append(
            f"| {w} | {params:.3f} | {weights:.3f} | "
            + " | ".join(f"{c['madds'] / 1e6:.1f}" for c in cells)
            + " |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
