"""Where each console script and ``python -m <package>`` start: Ctrl-C at any moment ends as one does mid-command.

A command's CLI module imports click and the toolkit's modules at its top, a tenth of a second or more before
run_cli puts its SIGINT handler in place; a Ctrl-C then raised KeyboardInterrupt inside an import and printed
a traceback of import machinery (exit status 1 or a kill by SIGINT) instead of "Aborted!" and 130. This module imports
only small modules of the standard library, so that the scripts reach the guard below at once; what
Python does with a Ctrl-C before it runs the script (while it starts and runs ``site``) is Python's.

A bug (an exception that no ``Error:`` line, Ctrl-C or click's usage error reports) ends the scripts as Python ends
one, with its traceback and status 1, but printed with the secrets redacted as the ``Error:`` lines and the run log
have them: its message may quote a key of the environment.
"""

from __future__ import annotations

import importlib
import sys
from types import TracebackType

#: 128 + SIGINT, as run_cli ends a Ctrl-C (the signal module is not imported here: making its enums takes a while)
CTRL_C_STATUS = 130


def run_cli_module(cli_module: str) -> None:
    """Import ``cli_module`` and run its ``main()`` (run_cli, which always ends in SystemExit), a Ctrl-C before
    run_cli's handler is in place ending as that handler ends one: "Aborted!" and status 130. A bug's traceback is
    printed redacted (:func:`print_redacted_traceback`), in the import too."""
    # In place of any hook before it: one put in place at the start (Ubuntu's apport, from sitecustomize) prints the
    # traceback as it is.
    sys.excepthook = print_redacted_traceback
    try:
        importlib.import_module(cli_module).main()
    except KeyboardInterrupt:
        clear_unhandled_keyboard_interrupt()
        print("Aborted!", file=sys.stderr)
        raise SystemExit(CTRL_C_STATUS) from None


def print_redacted_traceback(kind: type[BaseException], error: BaseException, trace: TracebackType | None) -> None:
    """A :data:`sys.excepthook`: what Python prints for an exception that ends the process (its traceback, causes
    and contexts first), with secrets redacted by ``redact_secrets`` as in the ``Error:`` lines and the run log.
    It imports what it needs only when called, leaving the start of the scripts as quick as it was."""
    import traceback

    from reddit_amazon.redaction import redact_secrets

    if sys.stderr is not None:  # None: no console (pythonw), where Python prints nothing either
        sys.stderr.write(redact_secrets("".join(traceback.format_exception(kind, error, trace))))
        sys.stderr.flush()


def clear_unhandled_keyboard_interrupt() -> None:
    """CPython marks a KeyboardInterrupt that left code run from source text (``exec``: a dataclass's ``__init__``
    being made while a module is imported) as unhandled, even once caught, and under ``python -m`` or a console
    script it then ends the process by SIGINT after the interpreter's exit: a SIGTERM's 143, or a finished command's
    0, read as Ctrl-C's 130. Source text run without an exception clears the mark."""
    exec("pass")
