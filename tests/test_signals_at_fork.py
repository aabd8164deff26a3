"""Ctrl-C arriving in an at-fork hook ends the command (130) and leaves the hook's lock free."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# A library's hooks (as logging's and loguru's) take a lock before a fork and release it after; the Ctrl-C comes
# while the parent's hook runs, before its release.
LIBRARY = textwrap.dedent("""
    import os, signal, threading

    lock = threading.Lock()

    def take():
        lock.acquire()

    def give_back_in_parent():
        os.kill(os.getpid(), signal.SIGINT)
        lock.release()

    def give_back_in_child():
        lock.release()

    os.register_at_fork(before=take, after_in_parent=give_back_in_parent, after_in_child=give_back_in_child)
""")

COMMAND = textwrap.dedent("""
    import os, signal, time
    import click
    from reddit_amazon import signals_at_fork
    from reddit_amazon.cli_errors import run_cli

    imported_late = os.environ["IMPORTED"] == "late"
    if not imported_late:
        import library_with_lock

    @click.command()
    def forking():
        import library_with_lock  # late: as datatrove's loguru, imported by the Reddit stage

        if imported_late:
            signals_at_fork.guard_outermost()
        try:
            pid = os.fork()
            if pid == 0:
                os._exit(0)
            os.waitpid(pid, 0)
            print("went on after the fork", flush=True)
            time.sleep(3)  # a signal sent to the main thread ends the sleep at once
        finally:
            print("lock free:", library_with_lock.lock.acquire(timeout=2), flush=True)

    signal.signal(signal.SIGINT, signal.default_int_handler)
    run_cli(forking, "forking")
""")


@pytest.mark.parametrize("imported", ["early", "late"])
def test_ctrl_c_in_an_at_fork_hook_interrupts_the_command_and_frees_the_lock(tmp_path, imported):
    """Raised inside the hook, run_cli's KeyboardInterrupt was printed as "Exception ignored" and dropped: the command
    went on as if no Ctrl-C came, and the lock the hook was about to release stayed taken (the relevance stage's
    threads then waited on logging's lock forever)."""
    (tmp_path / "library_with_lock.py").write_text(LIBRARY)
    done = subprocess.run([sys.executable, "-c", COMMAND], cwd=tmp_path,
                          env={"PYTHONPATH": f"{REPO}:{tmp_path}", "IMPORTED": imported}, capture_output=True, text=True, timeout=30)
    assert "Exception ignored" not in done.stderr
    assert "lock free: True" in done.stdout
    assert done.returncode == 130, done.stderr
