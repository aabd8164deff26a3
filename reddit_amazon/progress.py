"""Progress bar settings shared by the three CLIs.

A bar is drawn on stderr. Into a terminal it updates as tqdm likes; into a log file (a Slurm job, ``nohup``,
CI) every redraw is a ``\\r`` line kept forever, so there it is redrawn every :data:`LOG_INTERVAL_S` and
without the cursor moves that stack several workers' bars. The user's ``TQDM_*`` variables
(``TQDM_DISABLE=1``, ``TQDM_MININTERVAL=…``) win over both: tqdm reads them only for arguments not given.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

#: Seconds between redraws of a bar written to a file: a scan of a month of comments then adds ~100 lines an hour.
LOG_INTERVAL_S = 30.0


#: False inside ``bars(False)``: every bar of the toolkit is off (a library call such as ``run_build(progress=False)``).
_BARS_ON: ContextVar[bool] = ContextVar("reddit_amazon_progress_bars", default=True)


@contextmanager
def bars(enabled: bool) -> Iterator[None]:
    """Within the block, :func:`bar_options` turns every bar off when ``enabled`` is false."""
    token = _BARS_ON.set(_BARS_ON.get() and enabled)
    try:
        yield
    finally:
        _BARS_ON.reset(token)


def bars_enabled() -> bool:
    """False inside ``bars(False)``."""
    return _BARS_ON.get()


def bar_options(enabled: bool = True, *, position: int | None = None, mininterval: float | None = None) -> dict[str, Any]:
    """Keyword arguments for ``tqdm``: ``disable=True`` when ``enabled`` is false (or inside ``bars(False)``), else
    ``position`` (several bars at once; in a terminal only) and ``mininterval`` (at least :data:`LOG_INTERVAL_S`
    in a file)."""
    if not enabled or not _BARS_ON.get():
        return {"disable": True}
    terminal = _stderr_is_a_terminal()
    options: dict[str, Any] = {}
    if position is not None and terminal:
        options["position"] = position
    if "TQDM_MININTERVAL" not in os.environ:
        if not terminal:
            options["mininterval"] = max(mininterval or 0.0, LOG_INTERVAL_S)
        elif mininterval is not None:
            options["mininterval"] = mininterval
    return options


@contextmanager
def datasets_bars(enabled: bool) -> Iterator[None]:
    """Within the block, ``datasets``' own bars are off when ``enabled`` is false; the caller's setting is restored."""
    if enabled:
        yield
        return
    from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was_disabled = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            enable_progress_bars()


def _stderr_is_a_terminal() -> bool:
    """A terminal, or a notebook cell: Jupyter's stderr says it is no tty, yet redraws bars in place."""
    if type(sys.stderr).__module__.partition(".")[0] == "ipykernel":
        return True
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced by an object without isatty, or closed
        return False


def log_line(message: str) -> None:
    """A line for the log, printed beside the progress bars without breaking them, on stderr with them: stdout
    holds a command's results alone (``EMB=$(lavic-ref embed ...)``)."""
    from tqdm.auto import tqdm

    tqdm.write(message, file=sys.stderr)
