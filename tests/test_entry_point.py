"""How the console scripts start: Ctrl-C while one is still importing its command line, a bug's traceback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]

#: Sends this process a SIGINT as ``{module}`` is about to be imported: a Ctrl-C landing at that moment, every time.
_CTRL_C_AT_IMPORT = """
import os, signal, sys

class CtrlCAtImport:
    def find_spec(self, name, path=None, target=None):
        if name == {module!r}:
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
        return None

sys.meta_path.insert(0, CtrlCAtImport())
"""

#: What pip's console script runs, and what ``python -m <package>`` runs.
_CONSOLE_SCRIPT = "from {module} import {function}\nsys.exit({function}())\n"
_PYTHON_DASH_M = "import runpy\nrunpy.run_module({package!r}, run_name='__main__', alter_sys=True)\n"


def _starts() -> list[tuple[str, str]]:
    starts = []
    for name, entry in sorted(SCRIPTS.items()):
        module, _, function = entry.partition(":")
        starts.append((name, _CONSOLE_SCRIPT.format(module=module, function=function)))
        package = module.partition(".")[0]
        starts.append((f"python -m {package}", _PYTHON_DASH_M.format(package=package)))
    return starts


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT sent with os.kill is POSIX")
@pytest.mark.parametrize("imported", ["click", "reddit_amazon.cli_errors"])
@pytest.mark.parametrize(("start", "code"), _starts(), ids=[start for start, _ in _starts()])
def test_ctrl_c_while_the_command_line_is_imported_ends_as_it_does_later(start, code, imported, tmp_path):
    """Ctrl-C in the first tenth of a second of `reddit-amazon build` (or `benchmark`, `lavic-ref`), while the CLI
    module imported click and the toolkit, before run_cli's handler was in place, printed a traceback of import
    machinery and ended killed by SIGINT (44 of 60 runs with Ctrl-C 0-0.15 s after the start), where one a moment
    later gives "Aborted!" and 130."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", _CTRL_C_AT_IMPORT.format(module=imported) + code, "--help"],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert (done.returncode, done.stderr, done.stdout) == (128 + signal.SIGINT, "Aborted!\n", ""), start


#: A key of the environment, and a bug quoting it in its message and in its cause's.
_SECRET = "sk-secret-abcdef123"
_BUG = """
import os

def bug(*args, **kwargs):
    key = os.environ["OPENAI_API_KEY"]
    try:
        raise LookupError(f"record {key} has no title")
    except LookupError as cause:
        raise KeyError(f"no 'title' in record with key {key}") from cause
"""
#: The bug raised while ``{module}`` is imported, or when the command prints its help (click's, in the command).
_BUG_AT_IMPORT = """
class BugAtImport:
    def find_spec(self, name, path=None, target=None):
        if name == {module!r}:
            bug()
        return None

sys.meta_path.insert(0, BugAtImport())
"""
_BUG_IN_THE_COMMAND = """
import click

click.Context.get_help = bug
"""


@pytest.mark.parametrize("where", ["at import", "in the command"])
@pytest.mark.parametrize(("start", "code"), _starts(), ids=[start for start, _ in _starts()])
def test_a_bugs_traceback_is_printed_with_the_secrets_of_the_environment_redacted(start, code, where, tmp_path):
    """A bug (an exception no `Error:` line reports) was printed by Python as it was: a message quoting
    OPENAI_API_KEY showed the key on the terminal, where the run log and the `Error:` lines have it redacted."""
    at_import = _BUG_AT_IMPORT.format(module="reddit_amazon.cli_errors")
    fault = _BUG + (at_import if where == "at import" else _BUG_IN_THE_COMMAND)
    env = {**os.environ, "OPENAI_API_KEY": _SECRET,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    script = tmp_path / "start.py"  # a file: the traceback shows its source lines
    script.write_text("import sys\n" + fault + code, encoding="utf-8")
    done = subprocess.run([sys.executable, str(script), "--help"],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert _SECRET not in done.stderr, start
    lines = done.stderr.splitlines()
    last = """KeyError: "no 'title' in record with key <OPENAI_API_KEY redacted>\""""
    first = "Traceback (most recent call last):"
    assert (done.returncode, done.stdout, lines[0], lines[-1]) == (1, "", first, last), start
    assert "LookupError: record <OPENAI_API_KEY redacted> has no title" in lines, start  # its cause, kept
    assert "The above exception was the direct cause of the following exception:" in lines, start
    assert """    raise KeyError(f"no 'title' in record with key {key}") from cause""" in lines, start  # source lines


@pytest.mark.parametrize("package", sorted({entry.partition(".")[0] for entry in SCRIPTS.values()}))
def test_a_bug_in_a_command_started_from_its_cli_module_is_printed_redacted(package, tmp_path):
    """`python -m <package>.cli` runs the CLI module as __main__, past the entry point's hook: a bug in the command
    was printed by Python as it was, the key of the environment in it."""
    env = {**os.environ, "OPENAI_API_KEY": _SECRET,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    script = tmp_path / "start.py"
    script.write_text("import sys\n" + _BUG + _BUG_IN_THE_COMMAND
                      + _PYTHON_DASH_M.format(package=f"{package}.cli"), encoding="utf-8")
    done = subprocess.run([sys.executable, str(script), "--help"],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    lines = done.stderr.splitlines()
    assert _SECRET not in done.stderr and done.returncode == 1, done.stderr
    assert lines[-1] == """KeyError: "no 'title' in record with key <OPENAI_API_KEY redacted>\""""


#: The bug raised in a thread of its own (``leaky-worker``), started while ``{module}`` is imported, or when the
#: command prints its help (joined there); the command goes on.
_THREAD_BUG = """
import threading

def bug_in_a_thread(*args, **kwargs):
    worker = threading.Thread(target=bug, name="leaky-worker")
    worker.start()
    return worker

def help_after_a_bug_in_a_thread(*args, **kwargs):
    bug_in_a_thread().join()
    return "help"
"""
#: Not joined: a finder runs under the import lock, which the thread's printing takes to import what it uses.
_THREAD_BUG_AT_IMPORT = """
class BugAtImport:
    def find_spec(self, name, path=None, target=None):
        if name == {module!r}:
            sys.meta_path.remove(self)
            bug_in_a_thread()
        return None

sys.meta_path.insert(0, BugAtImport())
"""
_THREAD_BUG_IN_THE_COMMAND = """
import click

click.Context.get_help = help_after_a_bug_in_a_thread
"""


def _assert_thread_traceback_redacted(done: subprocess.CompletedProcess, start: str) -> None:
    lines = done.stderr.splitlines()
    assert _SECRET not in done.stderr, (start, done.stderr)
    assert done.returncode == 0 and "Exception in thread leaky-worker:" in lines, (start, done.stderr)
    traceback = lines[lines.index("Exception in thread leaky-worker:") + 1:]
    assert traceback[0] == "Traceback (most recent call last):", (start, done.stderr)
    assert "LookupError: record <OPENAI_API_KEY redacted> has no title" in traceback, start  # its cause, kept
    assert """KeyError: "no 'title' in record with key <OPENAI_API_KEY redacted>\"""" in traceback, start
    assert """    raise KeyError(f"no 'title' in record with key {key}") from cause""" in traceback, start


@pytest.mark.parametrize("where", ["at import", "in the command"])
@pytest.mark.parametrize(("start", "code"), _starts(), ids=[start for start, _ in _starts()])
def test_a_bug_ending_a_thread_is_printed_with_the_secrets_of_the_environment_redacted(start, code, where, tmp_path):
    """An exception ending a thread (a plain threading.Thread: ours, or a library's worker) was printed by Python's
    threading.excepthook as it was, the key of the environment in its message, where a bug of the main thread has
    it redacted. The thread's traceback is still printed, and the command goes on as before."""
    at_import = _THREAD_BUG_AT_IMPORT.format(module="reddit_amazon.cli_errors")
    fault = _BUG + _THREAD_BUG + (at_import if where == "at import" else _THREAD_BUG_IN_THE_COMMAND)
    env = {**os.environ, "OPENAI_API_KEY": _SECRET,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    script = tmp_path / "start.py"
    script.write_text("import sys\n" + fault + code, encoding="utf-8")
    done = subprocess.run([sys.executable, str(script), "--help"],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    _assert_thread_traceback_redacted(done, start)


@pytest.mark.parametrize("package", sorted({entry.partition(".")[0] for entry in SCRIPTS.values()}))
def test_a_bug_ending_a_thread_of_a_command_started_from_its_cli_module_is_printed_redacted(package, tmp_path):
    """`python -m <package>.cli` runs past the entry point: run_cli puts the redacting thread hook in place too."""
    env = {**os.environ, "OPENAI_API_KEY": _SECRET,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    script = tmp_path / "start.py"
    script.write_text("import sys\n" + _BUG + _THREAD_BUG + _THREAD_BUG_IN_THE_COMMAND
                      + _PYTHON_DASH_M.format(package=f"{package}.cli"), encoding="utf-8")
    done = subprocess.run([sys.executable, str(script), "--help"],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    _assert_thread_traceback_redacted(done, f"python -m {package}.cli")


_UNRAISABLE_BUG = """
import click

class Leaky:
    def __del__(self):
        bug()

def help_after_an_exception_in_del(*args, **kwargs):
    Leaky()  # collected at once: its __del__ raises where nothing can catch it
    return "help"

click.Context.get_help = help_after_an_exception_in_del
"""


_EVERY_START = _starts() + [(f"python -m {package}.cli", _PYTHON_DASH_M.format(package=f"{package}.cli"))
                            for package in sorted({entry.partition(".")[0] for entry in SCRIPTS.values()})]


@pytest.mark.parametrize(("start", "code"), _EVERY_START, ids=[start for start, _ in _EVERY_START])
def test_an_exception_python_cannot_raise_is_printed_with_the_secrets_of_the_environment_redacted(start, code,
                                                                                                   tmp_path):
    """An exception in a __del__ (or a generator being closed) reaches sys.unraisablehook, whose default printed
    "Exception ignored in: ..." and the traceback as they were, the key of the environment in its message."""
    env = {**os.environ, "OPENAI_API_KEY": _SECRET,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    script = tmp_path / "start.py"
    script.write_text("import sys\n" + _BUG + _UNRAISABLE_BUG + code, encoding="utf-8")
    done = subprocess.run([sys.executable, str(script), "--help"],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    lines = done.stderr.splitlines()
    assert _SECRET not in done.stderr, (start, done.stderr)
    assert done.returncode == 0 and done.stdout == "help\n", (start, done.stderr)
    heading = next(index for index, line in enumerate(lines) if line.startswith("Exception ignored in: <function"))
    assert lines[heading + 1] == "Traceback (most recent call last):", (start, done.stderr)
    assert "LookupError: record <OPENAI_API_KEY redacted> has no title" in lines, start  # its cause, kept
    assert """KeyError: "no 'title' in record with key <OPENAI_API_KEY redacted>\"""" in lines, start


def test_an_exception_python_cannot_raise_is_headed_as_python_heads_it(capsys):
    """The heading CPython's default hook writes: "<err_msg or Exception ignored in>: <object repr>", "<err_msg>:"
    without an object, none without either; "<object repr() failed>" where the repr raises."""
    from types import SimpleNamespace

    from reddit_amazon.entry_point import print_redacted_unraisable

    class BadRepr:
        def __repr__(self):
            raise RuntimeError("no repr")

    try:
        raise ValueError("closing")
    except ValueError as error:
        caught = error
    headings = []
    for err_msg, obj in [(None, "the object"), ("Exception ignored while closing", "the object"),
                         ("Exception ignored while closing", None), (None, None), (None, BadRepr())]:
        print_redacted_unraisable(SimpleNamespace(exc_type=ValueError, exc_value=caught,
                                                  exc_traceback=caught.__traceback__, err_msg=err_msg, object=obj))
        printed = capsys.readouterr().err.splitlines()
        assert printed[-1] == "ValueError: closing"
        headings.append(printed[0])
    assert headings == ["Exception ignored in: 'the object'", "Exception ignored while closing: 'the object'",
                        "Exception ignored while closing:", "Traceback (most recent call last):",
                        "Exception ignored in: <object repr() failed>"]
