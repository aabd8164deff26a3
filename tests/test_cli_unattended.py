"""The CLIs run unattended (Slurm, nohup, CI) with their output in a log file: the usual switches apply."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from core_install import import_extra  # tests/

from reddit_amazon.build import SAMPLE_INPUTS

ROOT = str(Path(__file__).resolve().parents[1])


def _run(args: list[str], tmp_path, **env: str | None) -> subprocess.CompletedProcess:
    """``args[0]``'s ``main()`` in a fresh process (no terminal, stdin closed), this checkout first on the path;
    ``env`` adds variables (``None``: removes one)."""
    path = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
    variables = {**os.environ, "PYTHONPATH": path, **env}
    return subprocess.run([sys.executable, "-c", f"from {args[0]} import main; main()", *args[1:]],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, cwd=tmp_path, timeout=300,
                          env={key: value for key, value in variables.items() if value is not None})


def test_tqdm_disable_turns_off_the_progress_bars(tmp_path):
    """TQDM_DISABLE=1 is tqdm's own switch; an explicit disable=False (progress on) used to override it."""
    done = _run(["benchmark.cli", "run", "--model", "random", "--out", "run", "--bootstrap-samples", "0"], tmp_path,
                TQDM_DISABLE="1")
    assert done.returncode == 0, done.stderr
    assert "predicting" not in done.stderr and "\r" not in done.stderr, done.stderr
    done = _run(["reddit_amazon.cli", "reddit-stage", str(SAMPLE_INPUTS / "reddit"), "--workdir", "work", "--salt",
                 "s"], tmp_path, TQDM_DISABLE="1")
    assert done.returncode == 0, done.stderr
    assert "sample_comments.zst" not in done.stderr and "\r" not in done.stderr, done.stderr


def test_bars_in_a_log_file_are_redrawn_rarely_and_move_no_cursor(tmp_path):
    """Two scan workers stacked their bars with cursor moves (ESC [A) and redrew them twice a second, into a
    Slurm log as into a terminal."""
    done = _run(["reddit_amazon.cli", "reddit-stage", str(SAMPLE_INPUTS / "reddit"), "--workdir", "work", "--salt",
                 "s", "--workers", "2"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "sample_comments.zst" in done.stderr  # the bars are there, drawn at start and end
    assert "\x1b[" not in done.stderr, done.stderr


def test_bar_options_follow_the_terminal_and_leave_tqdm_variables_to_the_user(monkeypatch):
    from reddit_amazon import progress
    from reddit_amazon.progress import LOG_INTERVAL_S, bar_options

    monkeypatch.delenv("TQDM_MININTERVAL", raising=False)
    assert bar_options(False, position=1) == {"disable": True}
    monkeypatch.setattr(progress, "_stderr_is_a_terminal", lambda: True)
    assert bar_options(position=1, mininterval=0.5) == {"position": 1, "mininterval": 0.5}
    assert bar_options() == {}
    monkeypatch.setattr(progress, "_stderr_is_a_terminal", lambda: False)
    assert bar_options(position=1, mininterval=0.5) == {"mininterval": LOG_INTERVAL_S}
    monkeypatch.setenv("TQDM_MININTERVAL", "5")  # the user's choice: tqdm reads it for arguments not given
    assert bar_options(position=1, mininterval=0.5) == {}


def test_a_notebook_cell_counts_as_a_terminal_for_the_bars(monkeypatch):
    """Jupyter's stderr (ipykernel's OutStream) answers isatty() False, which made notebook bars redraw every 30 s."""
    import io

    from reddit_amazon.progress import bar_options

    class OutStream(io.StringIO):  # stands in for ipykernel.iostream.OutStream, not installed here
        pass

    OutStream.__module__ = "ipykernel.iostream"
    monkeypatch.delenv("TQDM_MININTERVAL", raising=False)
    monkeypatch.setattr("sys.stderr", OutStream())
    assert bar_options(position=1) == {"position": 1}
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert bar_options(position=1) == {"mininterval": 30.0}


def test_the_results_table_in_a_file_is_as_wide_as_it_needs(tmp_path):
    """Rich draws 80 columns where stdout is no terminal: the 'all' column's intervals broke over two lines."""
    done = _run(["benchmark.cli", "run", "--model", "random", "--out", "run", "--bootstrap-samples", "50"], tmp_path,
                COLUMNS=None)
    assert done.returncode == 0, done.stderr
    intervals = [line for line in done.stdout.splitlines() if "[" in line]
    assert intervals and all(len(re.findall(r"\[\d\.\d{3}, \d\.\d{3}\]", line)) == 4 for line in intervals), done.stdout


QUIET_WITHOUT_IMPORTING_TRANSFORMERS = """
import sys

import pytest
from reddit_amazon.progress import quiet
with quiet():
    assert "transformers" not in sys.modules  # most of a second, for commands that may never load a model
    from transformers.utils import logging
    assert not logging.is_progress_bar_enabled()  # imported inside: off, as the Hub's switch was
assert logging.is_progress_bar_enabled()  # and on again after, as the Hub's switch was before
print("ok")
"""


def test_quiet_imports_no_transformers_yet_silences_it_when_imported_inside(tmp_path):
    """`quiet()` imported transformers (0.7 s) to switch its bars off, for `build --quiet` or `benchmark run
    --quiet` that never load it; imported later inside the block, its bars stay off, and are on again after."""
    import_extra("transformers")
    path = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-c", QUIET_WITHOUT_IMPORTING_TRANSFORMERS], capture_output=True,
                          text=True, cwd=tmp_path, timeout=120, env={**os.environ, "PYTHONPATH": path})
    assert done.returncode == 0 and done.stdout == "ok\n", done.stderr


def test_every_console_script_tells_its_version_and_help_alike(tmp_path):
    """`reddit-amazon --version` answered; `benchmark --version` and `lavic-ref --version` were "No such option"
    (exit 2), though the three ship in one package of one version."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")

    from reddit_amazon import __version__

    scripts = tomllib.loads((Path(ROOT) / "pyproject.toml").read_text())["project"]["scripts"]
    assert len(scripts) == 3
    for name, entry in scripts.items():
        module = entry.split(":")[0]
        version = _run([module, "--version"], tmp_path)
        assert (version.returncode, version.stdout) == (0, f"{name}, version {__version__}\n"), version.stderr
        short_help = _run([module, "-h"], tmp_path)
        assert short_help.returncode == 0 and "Examples" in short_help.stdout, short_help.stderr
