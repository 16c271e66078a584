"""Tables for people: aligned plain text for terminals and Markdown for reports.

Every table the tool prints or writes (the run summary, `compress zoo`, `compress bench`, report.md and the
benchmark scripts) is rendered here, so they all look alike.
"""

from __future__ import annotations

import statistics
from typing import Sequence


def text_table(header: Sequence[str], rows: Sequence[Sequence[object]], title: str | None = None,
               left_columns: int | None = None) -> str:
    """Columns padded to their widest cell; the first `left_columns` (default: all) left-aligned, the rest
    (numbers) right-aligned."""
    cells = [[str(cell) for cell in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    left = len(header) if left_columns is None else left_columns

    def line(row: list[str]) -> str:
        return "  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()

    lines = [title] if title else []
    lines += [line(cells[0]), "  ".join("-" * w for w in widths), *(line(row) for row in cells[1:])]
    return "\n".join(lines)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(str(c) for c in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def mean_sd(values: Sequence[float | None], scale: float = 100.0, digits: int = 1) -> str:
    """A table cell "mean ± standard deviation" of the values given (None skipped), scaled (100: percent);
    "-" when there are none, a deviation of 0 for a single value."""
    present = [value for value in values if value is not None]
    if not present:
        return "-"
    sd = statistics.stdev(present) if len(present) > 1 else 0.0
    return f"{statistics.fmean(present) * scale:.{digits}f} ± {sd * scale:.{digits}f}"


def verdict(a: Sequence[float], b: Sequence[float], names: tuple[str, str]) -> str:
    """"a > b", "a < b" or "a ≈ b (tie)" for two sets of measurements (seeds), a difference of the means counting
    only when it exceeds the larger standard deviation; "-" when either set is empty."""
    if not a or not b:
        return "-"
    spread = max(statistics.stdev(a) if len(a) > 1 else 0.0, statistics.stdev(b) if len(b) > 1 else 0.0)
    difference = statistics.fmean(a) - statistics.fmean(b)
    if abs(difference) <= spread:
        return f"{names[0]} ≈ {names[1]} (tie)"
    return f"{names[0]} {'>' if difference > 0 else '<'} {names[1]}"
