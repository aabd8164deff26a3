"""Where each console script and ``python -m <package>`` start: Ctrl-C at any moment ends as one does mid-command.

A command's CLI module imports click and the toolkit's modules at its top, a tenth of a second or more before
run_cli puts its SIGINT handler in place; a Ctrl-C then raised KeyboardInterrupt inside an import and printed
a traceback of import machinery (exit status 1 or a kill by SIGINT) instead of "Aborted!" and 130. This module imports
only small modules of the standard library, so that the scripts reach the guard below at once; what
Python does with a Ctrl-C before it runs the script (while it starts and runs ``site``) is Python's.

A bug (an exception that no ``Error:`` line, Ctrl-C or click's usage error reports) ends the scripts as Python ends
one, with its traceback and status 1, but printed with the secrets redacted as the ``Error:`` lines and the run log
have them: its message may quote a key of the environment. An exception that ends a thread (ours, or a library's
``threading.Thread``) is printed as Python prints it, "Exception in thread ...:" and its traceback, redacted too,
and so is one Python cannot raise (in a ``__del__``, a generator being closed): "Exception ignored in ...".
"""

from __future__ import annotations

import importlib
import sys
import threading
from types import TracebackType
from typing import Any

#: 128 + SIGINT, as run_cli ends a Ctrl-C (the signal module is not imported here: making its enums takes a while)
CTRL_C_STATUS = 130


def run_cli_module(cli_module: str) -> None:
    """Import ``cli_module`` and run its ``main()`` (run_cli, which always ends in SystemExit), a Ctrl-C before
    run_cli's handler is in place ending as that handler ends one: "Aborted!" and status 130. A bug's traceback is
    printed redacted (:func:`install_redacting_excepthooks`), in the import too."""
    install_redacting_excepthooks()
    try:
        importlib.import_module(cli_module).main()
    except KeyboardInterrupt:
        clear_unhandled_keyboard_interrupt()
        print("Aborted!", file=sys.stderr)
        raise SystemExit(CTRL_C_STATUS) from None


def install_redacting_excepthooks() -> None:
    """Python's hooks that print an exception nothing caught, in the main thread (:data:`sys.excepthook`), in
    another (:data:`threading.excepthook`) and where it cannot be raised (:data:`sys.unraisablehook`), as ours that
    print it redacted: in place of any hook before them, as one put in place at the start (Ubuntu's apport, from
    sitecustomize) prints the traceback as it is."""
    sys.excepthook = print_redacted_traceback
    threading.excepthook = print_redacted_thread_traceback
    sys.unraisablehook = print_redacted_unraisable


def print_redacted_traceback(kind: type[BaseException], error: BaseException, trace: TracebackType | None) -> None:
    """A :data:`sys.excepthook`: what Python prints for an exception that ends the process (its traceback, causes
    and contexts first), with secrets redacted by ``redact_secrets`` as in the ``Error:`` lines and the run log.
    It imports what it needs only when called, leaving the start of the scripts as quick as it was."""
    import traceback

    _write_redacted(sys.stderr, "".join(traceback.format_exception(kind, error, trace)))


def print_redacted_thread_traceback(args: threading.ExceptHookArgs) -> None:
    """A :data:`threading.excepthook`: what Python prints for an exception that ends a thread (its
    :func:`thread_traceback_text`; nothing for a SystemExit), with secrets redacted as
    :func:`print_redacted_traceback` has them. Where ``sys.stderr`` is gone (late in the interpreter's exit, a
    daemon thread), on the stderr the thread started with, as Python does."""
    text = thread_traceback_text(args)
    if text is not None:
        _write_redacted(sys.stderr if sys.stderr is not None else getattr(args.thread, "_stderr", None), text)


def print_redacted_unraisable(unraisable: Any) -> None:
    """A :data:`sys.unraisablehook`: what Python prints for an exception it cannot raise (one in a ``__del__``, in
    a generator being closed), "Exception ignored in: <object>" and its traceback, with secrets redacted as
    :func:`print_redacted_traceback` has them."""
    import traceback

    heading = ""  # as Python heads it: "<err_msg, or Exception ignored in>: <object>", "<err_msg>:" or nothing
    if unraisable.object is not None:
        try:
            shown = repr(unraisable.object)
        except Exception:  # noqa: BLE001 - as Python says it
            shown = "<object repr() failed>"
        heading = f"{unraisable.err_msg or 'Exception ignored in'}: {shown}\n"
    elif unraisable.err_msg:
        heading = f"{unraisable.err_msg}:\n"
    trace = traceback.format_exception(unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback)
    _write_redacted(sys.stderr, heading + "".join(trace))


def _write_redacted(stream: Any, text: str) -> None:
    """``text`` on ``stream`` with its secrets redacted (:func:`~reddit_amazon.redaction.redact_secrets`); on None
    (no console: pythonw), nowhere, as Python prints nothing either. The redaction is imported only when a hook
    prints, leaving the start of the scripts as quick as it was."""
    if stream is None:
        return
    from reddit_amazon.redaction import redact_secrets

    stream.write(redact_secrets(text))
    stream.flush()


def thread_traceback_text(args: threading.ExceptHookArgs) -> str | None:
    """What Python's own :data:`threading.excepthook` prints for ``args``: "Exception in thread <name>:" and the
    exception's traceback (its causes and contexts first), or None for a SystemExit, which ends a thread silently."""
    if args.exc_type is SystemExit:
        return None
    import traceback

    name = args.thread.name if args.thread is not None else threading.get_ident()
    return f"Exception in thread {name}:\n" + "".join(
        traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback))


def clear_unhandled_keyboard_interrupt() -> None:
    """CPython marks a KeyboardInterrupt that left code run from source text (``exec``: a dataclass's ``__init__``
    being made while a module is imported) as unhandled, even once caught, and under ``python -m`` or a console
    script it then ends the process by SIGINT after the interpreter's exit: a SIGTERM's 143, or a finished command's
    0, read as Ctrl-C's 130. Source text run without an exception clears the mark."""
    exec("pass")
