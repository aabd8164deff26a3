"""Progress bar settings shared by the three CLIs.

A bar is drawn on stderr. Into a terminal it updates as tqdm likes; into a log file (a Slurm job, ``nohup``,
CI) every redraw is a ``\\r`` line kept forever, so there it is redrawn every :data:`LOG_INTERVAL_S` and
without the cursor moves that stack several workers' bars. The user's ``TQDM_*`` variables
(``TQDM_DISABLE=1``, ``TQDM_MININTERVAL=…``) win over both: tqdm reads them only for arguments not given.
A command's ``--quiet`` turns every bar off for its run (:func:`quiet`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

#: Seconds between redraws of a bar written to a file: a scan of a month of comments then adds ~100 lines an hour.
LOG_INTERVAL_S = 30.0


def bar_options(enabled: bool = True, *, position: int | None = None, mininterval: float | None = None) -> dict[str, Any]:
    """Keyword arguments for ``tqdm``: ``disable=True`` when ``enabled`` is false, else ``position`` (several bars
    at once; in a terminal only) and ``mininterval`` (at least :data:`LOG_INTERVAL_S` in a file)."""
    if not enabled or not bars_shown():
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


#: Whether a ``--quiet`` command is running (see :func:`quiet`).
_quiet = False


def bars_shown() -> bool:
    """False while a ``--quiet`` command runs: a bar drawn by another library (sentence-transformers' encoding)
    is asked for only when this is true."""
    return not _quiet


@contextmanager
def quiet(enabled: bool = True) -> Iterator[None]:
    """``--quiet``: with ``enabled``, no progress bar in the block, neither this project's (:func:`bar_options`)
    nor the libraries' own (transformers' "Loading weights", datasets' "Generating train split", Hub downloads).
    Results and errors are printed as without it; each switch is set back as it was after the block."""
    global _quiet
    if not enabled or _quiet:
        yield
        return
    switches = _library_bar_switches()
    were_on = {name: is_on() for name, (is_on, _, _) in switches.items()}
    _quiet = True
    try:
        for switch in switches.values():
            _turn(switch, False)
        yield
    finally:
        _quiet = False
        # In order: transformers' switch turns the Hub's on too. transformers imported inside the block took the
        # Hub's switch (off) for its own at import: it gets the Hub's back.
        for name, switch in _library_bar_switches().items():
            _turn(switch, were_on.get(name, were_on["hub"]))


_Switch = tuple[Callable[[], bool], Callable[[], object], Callable[[], object]]


def _library_bar_switches() -> dict[str, _Switch]:
    """``(is on, turn off, turn on)`` of the bars of each library that draws its own. transformers only once
    imported (importing it costs most of a second): until then the Hub's switch stands for it, which it reads
    as its own when imported."""
    import datasets
    from huggingface_hub import utils as hub

    switches: dict[str, _Switch] = {}
    transformers_logging = sys.modules.get("transformers.utils.logging")
    if transformers_logging is not None:
        switches["transformers"] = (transformers_logging.is_progress_bar_enabled,
                                    transformers_logging.disable_progress_bar, transformers_logging.enable_progress_bar)
    switches["datasets"] = (datasets.is_progress_bar_enabled, datasets.disable_progress_bars,
                            datasets.enable_progress_bars)
    switches["hub"] = (lambda: not hub.are_progress_bars_disabled(), hub.disable_progress_bars,
                       hub.enable_progress_bars)
    return switches


def _turn(switch: _Switch, on: bool) -> None:
    is_on, turn_off, turn_on = switch
    if is_on() != on:
        (turn_on if on else turn_off)()


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
