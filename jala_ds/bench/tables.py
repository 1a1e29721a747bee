"""Markdown tables: what ``jala plan`` prints and what ``jala compare`` writes (they read well in a terminal too)."""
from __future__ import annotations

from typing import Any


def cell(value: Any) -> str:
    """Floats to 4 significant digits, missing values as an empty cell, everything else as ``str`` on one line with
    its ``|`` escaped (a param's value may hold either, and would break the row)."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return " ".join(str(value).splitlines()).replace("|", "\\|")


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """A GitHub markdown table whose columns are the union of the rows' keys, in first-seen order."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)
