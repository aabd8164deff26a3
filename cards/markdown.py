"""Small Markdown builders shared by every card: tables, numbers, durations."""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any


def one_line(value: object) -> str:
    """Text for a heading or a sentence: line breaks become spaces, so it cannot start a block of its own."""
    return " ".join(str(value).splitlines())


def prose(value: object) -> str:
    """Outside text (a path, a name) for a sentence: on one line, its HTML shown as text, never rendered."""
    return html.escape(one_line(value), quote=False)


def cell(value: object) -> str:
    """A table cell: pipes escaped, newlines flattened, numbers with thousands separators."""
    if isinstance(value, bool):
        text = "yes" if value else "no"
    elif isinstance(value, int):
        text = f"{value:,}"
    elif isinstance(value, float):
        text = f"{value:.4f}"
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], *, numeric: Sequence[bool] | None = None) -> str:
    """A GitHub-flavoured Markdown table; ``numeric[i]`` right-aligns column ``i``."""
    numeric = numeric if numeric is not None else [False] * len(headers)
    lines = [
        "| " + " | ".join(cell(h) for h in headers) + " |",
        "| " + " | ".join("---:" if right else "---" for right in numeric) + " |",
    ]
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"table row has {len(row)} cells, expected {len(headers)}: {row!r}")
        lines.append("| " + " | ".join(cell(v) for v in row) + " |")
    return "\n".join(lines)


def code_block(text: str, language: str = "") -> str:
    """A fenced block whose fence is longer than any run of backticks in ``text``, so ``text`` cannot close it."""
    fence = "`" * max(3, _longest_backtick_run(text) + 1)
    return f"{fence}{language}\n{text.rstrip()}\n{fence}"


def _longest_backtick_run(text: str) -> int:
    return max((len(run) for run in re.findall(r"`+", text)), default=0)


def duration(seconds: float) -> str:
    """``3725.0`` -> ``"1 h 2 min 5 s (3,725 s)"``."""
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{hours} h"] if hours else []
    if hours or minutes:
        parts.append(f"{minutes} min")
    parts.append(f"{secs} s")
    human = " ".join(parts)
    return human if total < 60 else f"{human} ({total:,} s)"


def inline_code(value: object) -> str:
    """A code span on one line, delimited by more backticks than any run in the text."""
    text = one_line(value)
    if "`" not in text:
        return f"`{text}`"
    fence = "`" * (_longest_backtick_run(text) + 1)
    return f"{fence} {text} {fence}"


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested mappings as ``(dotted.key, value)`` rows for key/value tables."""
    rows: list[tuple[str, Any]] = []
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            rows += flatten(value, f"{name}.")
        else:
            rows.append((name, value))
    return rows
