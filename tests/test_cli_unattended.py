"""The CLIs run unattended (Slurm, nohup, CI) with their output in a log file: the usual switches apply."""

from __future__ import annotations

import os
import subprocess
import sys

from pathlib import Path

from reddit_amazon.build import SAMPLE_INPUTS

ROOT = str(Path(__file__).resolve().parents[1])


def _run(args: list[str], tmp_path, **env: str) -> subprocess.CompletedProcess:
    """``args[0]``'s ``main()`` in a fresh process (no terminal, stdin closed), this checkout first on the path."""
    path = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-c", f"from {args[0]} import main; main()", *args[1:]],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, cwd=tmp_path, timeout=300,
                          env={**os.environ, "PYTHONPATH": path, **env})


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
