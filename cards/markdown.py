"""Small Markdown builders shared by every card: tables, numbers, durations."""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any


def one_line(value: object) -> str:
    """Text for a heading or a sentence: line breaks become spaces, so it cannot start a block of its own."""
    return " ".join(str(value).splitlines())


#: What would make outside text Markdown rather than text: emphasis, a link or image (``[``), a strikethrough,
#: an autolink (``http://``, ``www.``, ``user@host``), a backtick no other closes, and the backslash that escapes
#: these. An ``_`` between letters or digits cannot emphasise, so ``candidates_sbert`` stays as written.
_MARKDOWN_INLINE = re.compile(r"[\\`*\[\]~@]|(?<![^\W_])_|_(?![^\W_])|:(?=//)|(?<=\bwww)\.", re.IGNORECASE)


def prose(value: object) -> str:
    """Outside text (a path, a name) for a sentence or a heading: on one line, its HTML and its Markdown (links,
    images, emphasis, autolinks) shown as text, never rendered. Its code spans stay code spans (the importer's
    source names `reddit-amazon import-lavic`): what a code span holds is shown as written."""
    text = html.escape(one_line(value), quote=False)
    parts, done = [], 0
    for start, end in _code_spans(text):
        parts += [_MARKDOWN_INLINE.sub(r"\\\g<0>", text[done:start]), text[start:end]]
        done = end
    return "".join(parts) + _MARKDOWN_INLINE.sub(r"\\\g<0>", text[done:])


def _code_spans(text: str) -> list[tuple[int, int]]:
    """Where ``text``'s code spans are: as CommonMark reads them, a run of backticks up to the next run of as many."""
    runs = [match.span() for match in re.finditer(r"`+", text)]
    spans, index = [], 0
    while index < len(runs):
        start, end = runs[index]
        closing = next((k for k in range(index + 1, len(runs)) if runs[k][1] - runs[k][0] == end - start), None)
        if closing is None:
            index += 1
        else:
            spans.append((start, runs[closing][1]))
            index = closing + 1
    return spans


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
