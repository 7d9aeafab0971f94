"""How the per-image verbs (`predict`, `segment`, `detect`) report: one stderr line per image
that failed (the others still run: a bad file never loses the batch's results), the results
as JSON or as lines for a person, and exit status 1 when any image failed."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

__all__ = ["report_results"]


def report_results(verb: str, results: Sequence[Any], json_text: Callable[[], str] | None,
                   lines: Callable[[Any], Iterable[str]]) -> int:
    """Print `results` (each with `.ok` and `.error`); the verb's exit status.

    Args:
        verb: The verb's name, for the error lines.
        json_text: The JSON document to print instead of `lines` (`--json`), or None.
        lines: The lines that show one successful result.
    """
    for r in results:
        if r.error:
            print(f"mobilenetv2 {verb}: error: {r.error}", file=sys.stderr)
    if json_text is not None:
        print(json_text())
    else:
        for r in results:
            if r.ok:
                print("\n".join(lines(r)))
    return 1 if any(not r.ok for r in results) else 0
