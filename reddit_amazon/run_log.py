"""The log a run leaves in its workdir: what it printed, with times, for when the terminal's scrollback is gone.

Each run of ``reddit-amazon build`` (and of ``reddit-amazon reddit-stage``) writes its own file,
``<workdir>/logs/<command>-<UTC start>-<pid>.log``: a header (start time, the command line as the manifest records
it, the package version, host and pid), each line the run printed on stderr but its progress bars, as plain text
after a UTC timestamp, each stage's start and end with its duration and whether it was reused, the warnings of the
package's loggers and those the run printed on stderr (Python's, other libraries' loggers'), the error line the user
saw (a bug's whole traceback, for a bug report), the traceback of an exception that ended one of its threads, as
printed, and how the run ended (finished, interrupted or failed).

Every line goes through :func:`~reddit_amazon.redaction.redact_secrets`. A log that cannot be written (a read-only
or full workdir) is given up without a word: the run goes on, and fails where it failed without one.
"""

from __future__ import annotations

import io
import logging
import os
import platform
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from reddit_amazon import __version__
from reddit_amazon.cli_errors import traceback_text
from reddit_amazon.entry_point import thread_traceback_text
from reddit_amazon.redaction import redact_secrets

#: The workdir's folder of run logs.
LOGS_FOLDER = "logs"
#: The loggers whose warnings a run log takes in (they still reach stderr as before).
PACKAGE_LOGGER = "reddit_amazon"


@dataclass(frozen=True)
class RunOutcome:
    """How a run ended: ``finished``, ``interrupted`` (Ctrl-C, SIGTERM) or ``failed``, and what was shown for the
    error: its line, or a bug's traceback."""

    ended: str
    error_line: str | None = None


class RunLog:
    """One run's log file; a no-op once it could not be written. Use as a context manager (:func:`open_run_log`)."""

    def __init__(self, path: Path | None, *secrets: str | None) -> None:
        """A log to ``path`` once :meth:`open`; with ``None``, a log of nothing."""
        self.path = path
        self._secrets = secrets
        self._started = time.monotonic()
        self._handler: logging.Handler | None = None

    def open(self, command: str) -> None:
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handler = self._new_file_handler()
        except OSError:  # a read-only or full workdir: the run itself says what is wrong with it
            return
        formatter = logging.Formatter("%(asctime)s %(message)s", datefmt="%Y-%m-%dT%H:%M:%SZ")
        formatter.converter = time.gmtime
        handler.setFormatter(formatter)
        self._handler = handler
        self.line(f"started: {command}")
        self.line(f"reddit-amazon {__version__}, python {platform.python_version()}, host {socket.gethostname()}, "
                  f"pid {os.getpid()}")

    def _new_file_handler(self) -> _GivingUpFileHandler:
        """A handler of a file made for this run: a run of this process in the same second (a notebook's rerun)
        got the same name, and its file is left to it; this one is ``<name>_2.log`` (``_3``, ...), listed after."""
        assert self.path is not None
        first, number = self.path, 1
        while True:
            try:
                return _GivingUpFileHandler(self.path, self)
            except FileExistsError:
                number += 1
                self.path = first.with_name(f"{first.stem}_{number}{first.suffix}")

    @property
    def active(self) -> bool:
        return self._handler is not None

    def line(self, text: str) -> None:
        """``text``, one log line per line of it, without secrets."""
        if self._handler is None:
            return
        for line in redact_secrets(text, *self._secrets).splitlines() or [""]:
            handler = self._handler  # read once: another thread's failed write (a full disk) may give it up
            if handler is None:
                return
            handler.handle(logging.makeLogRecord({"msg": line.rstrip(), "levelno": logging.INFO}))

    def printed(self, width: int, *objects: Any, **print_options: Any) -> None:
        """What ``Console.print(*objects, **print_options)`` shows at ``width`` columns, as plain text."""
        if self._handler is None:
            return
        from rich.console import Console

        plain = Console(file=io.StringIO(), width=width, color_system=None, force_terminal=False,
                        legacy_windows=False)
        with plain.capture() as captured:
            plain.print(*objects, **print_options)
        self.line(captured.get().rstrip("\n"))

    @contextmanager
    def stage(self, name: str) -> Iterator[StageTiming]:
        """Log the start of stage ``name``, and its end with its duration and whether the block said it was reused
        (``timing.reused = True``); a stage that raised is logged as stopped."""
        timing = StageTiming()
        started = time.monotonic()
        self.line(f"stage {name}: started")
        try:
            yield timing
        except BaseException:
            self.line(f"stage {name}: stopped after {time.monotonic() - started:.1f} s")
            raise
        self.line(f"stage {name}: {'reused' if timing.reused else 'done'} in {time.monotonic() - started:.1f} s")

    def close(self, outcome: RunOutcome) -> None:
        if outcome.error_line is not None:
            self.line(outcome.error_line)
        self.line(f"{outcome.ended} after {time.monotonic() - self._started:.1f} s")
        self._give_up()

    def _give_up(self) -> None:
        handler, self._handler = self._handler, None
        if handler is not None:
            try:
                handler.close()
            except OSError:  # what it still held could not be written either (a full disk): closed all the same
                pass


@dataclass
class StageTiming:
    reused: bool = False


class _GivingUpFileHandler(logging.FileHandler):
    """A file handler that, on a write error (a disk filling up mid-run), stops the log instead of printing
    logging's traceback on stderr at every line."""

    def __init__(self, path: Path, log: RunLog) -> None:
        super().__init__(path, mode="x", encoding="utf-8")  # never another run's file
        self._log = log

    def emit(self, record: logging.LogRecord) -> None:
        # Closed by another thread's failed write after this line read the handler: logging's FileHandler would
        # open the file again, which mode x refuses (FileExistsError in the thread writing the line).
        if self.stream is None:
            return
        super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        self._log._give_up()


def log_path(workdir: Path, command: str) -> Path:
    """``<workdir>/logs/<command>-<UTC now>-<pid>.log``: one file per run, so that runs on one workdir at once (a
    build and a ``reddit-stage``, a build refused by another's lock) never interleave, and a command's newest run is
    the last of its name in ``ls``."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return Path(workdir) / LOGS_FOLDER / f"{command}-{stamp}-{os.getpid()}.log"


@contextmanager
def open_run_log(workdir: Path, command_name: str, command: str, *secrets: str | None,
                 error_line: Any = None) -> Iterator[RunLog]:
    """A :class:`RunLog` of a run of ``command_name`` in ``workdir`` for the block, which ends it: ``finished``,
    ``interrupted`` (KeyboardInterrupt: Ctrl-C, SIGTERM) or ``failed`` after what ``error_line(error)`` gives (what
    the command line prints for it: an ``Error:`` line, or a bug's traceback), or without ``error_line`` (a caller
    in Python, shown the exception) the error's traceback. ``secrets`` (the pseudonym salt) are redacted from every
    line, as the environment's secrets are. While the block runs, its warnings reach the log too
    (:func:`_warnings_to`), and so do the tracebacks of exceptions that end its threads
    (:func:`_thread_exceptions_to`)."""
    log = RunLog(log_path(workdir, command_name), *secrets)
    log.open(command)
    with _warnings_to(log), _thread_exceptions_to(log):
        try:
            yield log
        except KeyboardInterrupt:
            log.close(RunOutcome("interrupted", "Aborted!"))
            raise
        except BaseException as error:
            log.close(RunOutcome("failed", error_line(error) if error_line else traceback_text(error)))
            raise
    log.close(RunOutcome("finished"))


@contextmanager
def _warnings_to(log: RunLog) -> Iterator[None]:
    """The warnings of the block in ``log`` too, each as the terminal shows it, once: the package loggers' (an image
    store's bad line, an endpoint refusing a parameter), Python's ``warnings.warn`` (Pillow's
    DecompressionBombWarning, a library's deprecation), and the WARNING+ records other libraries print on stderr,
    by logging's last resort (a logger with no handler: Pillow's, openai's, sentence-transformers') or by a console
    handler of their own (:data:`LIBRARIES_PRINTING_THEIR_LOGS`). A record no handler prints (urllib3's, given a
    NullHandler) is left out, as the terminal leaves it out."""
    if not log.active:
        yield
        return
    with _package_warnings_to(log), _printed_by_library_handlers_to(log), _last_resort_to(log), \
            _python_warnings_to(log):
        yield


@contextmanager
def _package_warnings_to(log: RunLog) -> Iterator[None]:
    """The package loggers' warnings in ``log``, printed on stderr or not. Without a handler of its own anywhere up
    the logger tree, a warning is printed on stderr by logging's last resort; a handler added here would silence
    that, so the last resort is added beside it for the block."""
    package = logging.getLogger(PACKAGE_LOGGER)
    handlers: list[logging.Handler] = [_ToRunLog(log)]
    if not package.hasHandlers() and logging.lastResort is not None:
        handlers.append(logging.lastResort)
    with _handlers_added(package, handlers):
        yield


#: Libraries whose logger prints on stderr through a console handler of its own, added when they are imported (the
#: run may import them after its log is opened): ``[transformers] ...`` or the bare message.
LIBRARIES_PRINTING_THEIR_LOGS = ("datasets", "huggingface_hub", "transformers")


@contextmanager
def _printed_by_library_handlers_to(log: RunLog) -> Iterator[None]:
    with ExitStack() as stack:
        for name in LIBRARIES_PRINTING_THEIR_LOGS:
            library = logging.getLogger(name)
            stack.enter_context(_handlers_added(library, [_PrintedByLibraryToRunLog(log, library)]))
        yield


@contextmanager
def _last_resort_to(log: RunLog) -> Iterator[None]:
    """What logging's last resort prints in ``log`` too: the records of loggers with no handler anywhere."""
    printing = logging.lastResort
    if printing is None:  # set to None by the program: such records are not printed
        yield
        return
    with _replaced(logging, "lastResort", _LastResortToo(printing, log)):
        yield


@contextmanager
def _python_warnings_to(log: RunLog) -> Iterator[None]:
    """What ``warnings.showwarning`` prints on stderr (after the filters: a warning shown once is logged once) in
    ``log`` too. Where ``logging.captureWarnings`` sends warnings to the ``py.warnings`` logger instead, they reach
    the log as its records do."""
    printing = warnings.showwarning

    def show_and_log(message, category, filename, lineno, file=None, line=None):
        printing(message, category, filename, lineno, file, line)
        if file is None and printing is not getattr(logging, "_showwarning", None):  # on stderr, not as a record
            try:
                log.line(warnings.formatwarning(message, category, filename, lineno, line).rstrip("\n"))
            except Exception:  # noqa: BLE001 (a log line is never worth a failed run)
                pass

    with _replaced(warnings, "showwarning", show_and_log):
        yield


@contextmanager
def _thread_exceptions_to(log: RunLog) -> Iterator[None]:
    """What :data:`threading.excepthook` prints for an exception that ends a thread (one of the run's, or a
    library's) in ``log`` too, whole as a bug's traceback is: "Exception in thread <name>:" and its traceback. The
    hook in place (the console scripts' redacting one, or Python's) still prints it."""
    if not log.active:
        yield
        return
    printing = threading.excepthook

    def print_and_log(args: threading.ExceptHookArgs) -> None:
        printing(args)
        try:
            text = thread_traceback_text(args)
            if text is not None:
                log.line(text.rstrip("\n"))
        except Exception:  # noqa: BLE001 (a log line is never worth a failed run)
            pass

    with _replaced(threading, "excepthook", print_and_log):
        yield


@contextmanager
def _replaced(module: Any, hook: str, ours: Any) -> Iterator[None]:
    """``module.hook`` is ``ours`` while the block runs, and what it was after, unless something replaced ours
    meanwhile (then that stays)."""
    before = getattr(module, hook)
    setattr(module, hook, ours)
    try:
        yield
    finally:
        if getattr(module, hook) is ours:
            setattr(module, hook, before)


@contextmanager
def _handlers_added(logger: logging.Logger, handlers: list[logging.Handler]) -> Iterator[None]:
    for handler in handlers:
        logger.addHandler(handler)
    try:
        yield
    finally:
        for handler in handlers:
            logger.removeHandler(handler)


#: The attribute marking a record as logged: one record reaches several handlers (the package's and the last
#: resort beside it), and goes in the log once.
_LOGGED = "_in_run_log"


def _log_record(log: RunLog, record: logging.LogRecord, shown_as: logging.Handler) -> None:
    """``record`` in ``log`` once, as ``shown_as`` formats it (with its exception's traceback, if any)."""
    if getattr(record, _LOGGED, False):
        return
    setattr(record, _LOGGED, True)
    log.line(shown_as.format(record))


class _ToRunLog(logging.Handler):
    """A handler writing WARNING+ records to a run log, each as its message (and exception) reads."""

    def __init__(self, log: RunLog) -> None:
        super().__init__(logging.WARNING)
        self._log = log

    def emit(self, record: logging.LogRecord) -> None:
        self.emit_as(record, self)

    def emit_as(self, record: logging.LogRecord, shown_as: logging.Handler) -> None:
        try:
            _log_record(self._log, record, shown_as)
        except Exception:  # noqa: BLE001 (a log line is never worth a failed run)
            self.handleError(record)


class _PrintedByLibraryToRunLog(_ToRunLog):
    """On a library's logger: the WARNING+ records that the library's own console handler there prints, as printed."""

    def __init__(self, log: RunLog, library: logging.Logger) -> None:
        super().__init__(log)
        self._library = library

    def emit(self, record: logging.LogRecord) -> None:
        printing = next((handler for handler in self._library.handlers if _prints_on_console(handler)
                         and record.levelno >= handler.level), None)
        if printing is not None:
            self.emit_as(record, printing)
        elif not self._other_handler_takes(record) and logging.lastResort is not None \
                and record.levelno >= logging.lastResort.level:
            # the library's console handler removed: logging's last resort printed the record, which this handler,
            # counted as one, would keep it from doing
            logging.lastResort.handle(record)

    def _other_handler_takes(self, record: logging.LogRecord) -> bool:
        logger: logging.Logger | None = logging.getLogger(record.name)
        while logger is not None:
            if any(handler is not self for handler in logger.handlers):
                return True
            logger = logger.parent if logger.propagate else None
        return False


def _prints_on_console(handler: logging.Handler) -> bool:
    """A library's console handler (``logging.StreamHandler()``, on stderr), not a file's (a FileHandler is one)."""
    return type(handler) is logging.StreamHandler


class _LastResortToo(logging.Handler):
    """Logging's last resort, printing as ever, with what it printed in a run log too."""

    def __init__(self, printing: logging.Handler, log: RunLog) -> None:
        super().__init__(printing.level)
        self._printing = printing
        self._log = log

    def handle(self, record: logging.LogRecord) -> Any:
        shown = self._printing.handle(record)
        if shown:
            try:
                _log_record(self._log, record, self._printing)
            except Exception:  # noqa: BLE001 (a log line is never worth a failed run)
                pass
        return shown

    def emit(self, record: logging.LogRecord) -> None:  # handle() does it all
        self._printing.emit(record)


class LoggedConsole:
    """A rich console whose every ``print`` also goes to ``log``, as the plain text it shows at its width."""

    def __init__(self, console: Any, log: RunLog) -> None:
        self._console = console
        self._log = log

    def print(self, *objects: Any, **print_options: Any) -> None:
        self._console.print(*objects, **print_options)
        self._log.printed(self._console.width, *objects, **print_options)
