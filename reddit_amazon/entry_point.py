"""Where each console script and ``python -m <package>`` start: Ctrl-C at any moment ends as one does mid-command.

A command's CLI module imports click and the toolkit's modules at its top, a tenth of a second or more before
run_cli puts its SIGINT handler in place; a Ctrl-C then raised KeyboardInterrupt inside an import and printed
a traceback of import machinery (exit status 1 or a kill by SIGINT) instead of "Aborted!" and 130. This module imports
only small modules of the standard library, so that the scripts reach the guard below at once; what
Python does with a Ctrl-C before it runs the script (while it starts and runs ``site``) is Python's.
"""

from __future__ import annotations

import importlib
import sys

#: 128 + SIGINT, as run_cli ends a Ctrl-C (the signal module is not imported here: making its enums takes a while)
CTRL_C_STATUS = 130


def run_cli_module(cli_module: str) -> None:
    """Import ``cli_module`` and run its ``main()`` (run_cli, which always ends in SystemExit), a Ctrl-C before
    run_cli's handler is in place ending as that handler ends one: "Aborted!" and status 130."""
    try:
        importlib.import_module(cli_module).main()
    except KeyboardInterrupt:
        clear_unhandled_keyboard_interrupt()
        print("Aborted!", file=sys.stderr)
        raise SystemExit(CTRL_C_STATUS) from None


def clear_unhandled_keyboard_interrupt() -> None:
    """CPython marks a KeyboardInterrupt that left code run from source text (``exec``: a dataclass's ``__init__``
    being made while a module is imported) as unhandled, even once caught, and under ``python -m`` or a console
    script it then ends the process by SIGINT after the interpreter's exit: a SIGTERM's 143, or a finished command's
    0, read as Ctrl-C's 130. Source text run without an exception clears the mark."""
    exec("pass")
