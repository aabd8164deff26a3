"""Ctrl-C while a console script is still importing its command line."""

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
