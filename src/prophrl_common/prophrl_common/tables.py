"""Plain-text summary tables for the command-line tools (one format for every CLI and bench script)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def format_cell(value, float_format: str = ".4g") -> str:
    """Floats with `float_format` (large ones without decimals), NaN / inf / None as '-'."""
    if isinstance(value, float):
        if not math.isfinite(value):
            return "-"
        return f"{value:{float_format}}" if abs(value) < 1e4 else f"{value:.0f}"
    return "-" if value is None else str(value)


def format_table(title: str, header: Sequence[str], rows: Sequence[Sequence], float_format: str = ".4g") -> str:
    """A title line, a left-aligned header, a rule and one line per row, columns as wide as their widest cell."""
    cells = [[format_cell(v, float_format) for v in row] for row in rows]
    for row in cells:
        if len(row) != len(header):
            raise ValueError(f"table '{title.strip()}': a row has {len(row)} cells for {len(header)} columns")
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    lines = [title, "  ".join(str(h).ljust(w) for h, w in zip(header, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence], float_format: str = ".4g") -> None:
    print("\n" + format_table(title, header, rows, float_format), flush=True)
