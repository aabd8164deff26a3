"""The one-line errors of the command-line tools."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import click
import pytest

from reddit_amazon.cli_errors import missing_extra, run_cli, user_errors, with_extra_hint


@pytest.mark.parametrize("where", ["{home}/.cache", "{home}/.cache/huggingface/datasets/x.lock"])
def test_a_read_only_hugging_face_cache_says_which_variable_moves_it(tmp_path, monkeypatch, where):
    """With a read-only home, every dataset load ended in "Read-only file system: <home>/.cache" and no way out."""
    for name in ("HF_HOME", "HF_DATASETS_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    path = where.format(home=tmp_path)
    with pytest.raises(click.ClickException) as caught, user_errors(OSError):
        raise OSError(errno.EROFS, "Read-only file system", path)
    assert caught.value.message == (f"OSError: [Errno 30] Read-only file system: '{path}' (the Hugging Face cache: "
                                    "set HF_HOME or HF_DATASETS_CACHE to a writable folder)")
    with pytest.raises(click.ClickException) as caught, user_errors(OSError):  # another folder: no hint
        raise OSError(errno.EACCES, "Permission denied", str(tmp_path / "runs" / "out"))
    assert "HF_HOME" not in caught.value.message


def test_an_error_whose_message_spans_lines_is_one_error_line():
    """The Hub's errors (a 401, 403 or 500 of push_to_hub / lavic-ref push) put the server's answer on lines of their
    own: the `Error:` line ran over 3-5 lines."""
    with pytest.raises(click.ClickException) as caught, user_errors(OSError):
        raise OSError("Client error '401 UNAUTHORIZED' for url 'http://hub/api/repos/create'\n\n"
                      "Invalid username or password.\n")
    assert caught.value.message == ("OSError: Client error '401 UNAUTHORIZED' for url 'http://hub/api/repos/create' "
                                    "Invalid username or password.")


def test_a_missing_extra_ends_in_one_line_naming_it(tmp_path):
    """A core install (no extras) ran `lavic-ref describe` and `reddit-amazon build` into a ModuleNotFoundError
    traceback; the error names the extra to install instead, on one line."""
    code = ("import sys; sys.modules['torch'] = None; from lavic_ref.cli import main; "
            f"sys.argv = ['lavic-ref', 'describe', '--out', {str(tmp_path / 'd.jsonl')!r}]; main()")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == ["Error: import of torch halted; None in sys.modules "
                                                "(pip install 'reddit-amazon[lavic]')"]


def test_another_import_error_keeps_its_traceback(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["broken"])

    @click.command()
    def broken():
        raise ModuleNotFoundError("No module named 'no_such_module'", name="no_such_module")

    with pytest.raises(ModuleNotFoundError):
        run_cli(broken, "broken")


@pytest.mark.parametrize(("raised", "status"), [(KeyboardInterrupt, 130), (EOFError, 1), (click.Abort, 1)])
def test_a_keyboard_interrupt_raised_by_code_exits_as_ctrl_c_does(monkeypatch, capsys, raised, status):
    """A plugin or library raising KeyboardInterrupt stops the command as Ctrl-C does: status 130, where click's
    "Aborted!" gave 1 (130 came only from the signal). EOF at a prompt and click.Abort stay 1."""
    monkeypatch.setattr(sys, "argv", ["stopping"])

    @click.command()
    def stopping():
        raise raised

    with pytest.raises(SystemExit) as exit:
        run_cli(stopping, "stopping")
    assert exit.value.code == status
    assert capsys.readouterr().err.rstrip().endswith("Aborted!")


def test_run_cli_puts_back_the_signal_handlers_it_found(monkeypatch):
    """run_cli left its SIGTERM and SIGINT handlers installed: in a process that goes on after it (a test, a script
    running two commands) SIGTERM raised KeyboardInterrupt in whatever ran next, and a second run_cli, not finding
    Python's SIGINT handler, kept the first one's, which noted a Ctrl-C for a run that was over."""
    monkeypatch.setattr(sys, "argv", ["cmd"])
    found = (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT))
    assert found[1] is signal.default_int_handler
    during: list[tuple[object, object]] = []

    @click.command()
    def cmd():
        during.append((signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)))

    for _ in range(2):
        with pytest.raises(SystemExit):
            run_cli(cmd, "cmd")
        assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == found
    (first_sigterm, first_sigint), (second_sigterm, second_sigint) = during
    assert found[0] is not first_sigterm is not second_sigterm and found[1] is not first_sigint is not second_sigint


def test_an_error_raised_from_a_missing_extra_is_named_once():
    try:
        try:
            raise ModuleNotFoundError("No module named 'sentence_transformers'", name="sentence_transformers")
        except ImportError as error:
            raise ImportError("the sbert retriever needs sentence-transformers: "
                              "pip install 'reddit-amazon[retrieval]'") from error
    except ImportError as error:
        assert missing_extra(error) == "retrieval"
        assert with_extra_hint(str(error), error) == str(error)
    assert missing_extra(ValueError("x")) is None


_FORKED_WORKER_WITH_A_THREAD = """
import os, signal, sys, threading, time
import click
from reddit_amazon.cli_errors import run_cli

@click.command()
def cmd():
    pid = os.fork()
    if pid == 0:  # a pool worker: an extra thread (fsspecIO, tqdm_monitor), the main thread blocked on a lock
        def poke():
            time.sleep(0.3)  # the kernel may hand a process-directed SIGTERM to this thread, not the main one
            signal.pthread_kill(threading.get_ident(), signal.SIGTERM)
            time.sleep(60)
        threading.Thread(target=poke, daemon=True).start()
        lock = threading.Lock()
        lock.acquire()
        lock.acquire()  # as a worker waits on the task queue's lock that Pool.terminate() holds
        os._exit(0)
    deadline = time.time() + 15
    while time.time() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            print("signal", os.WTERMSIG(status) if os.WIFSIGNALED(status) else None)
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    print("hung")

run_cli(cmd, "cmd")
"""


def test_sigterm_ends_a_forked_worker_whose_other_thread_receives_it():
    """`reddit-amazon build --workers 3` hung for good at a pool's teardown: Pool.terminate() sends SIGTERM to
    workers blocked on the task queue's lock; when the kernel delivered it to a worker's other thread (fsspec's
    IO loop, tqdm's monitor), run_cli's Python handler never ran in the blocked main thread and the parent
    waited on that worker forever. A forked child takes SIGTERM's default action, which ends every thread."""
    done = subprocess.run([sys.executable, "-c", _FORKED_WORKER_WITH_A_THREAD], capture_output=True, text=True,
                          timeout=60)
    assert done.stdout.split() == ["signal", str(int(signal.SIGTERM))], done.stdout + done.stderr


_CTRL_C_AT_EXIT = """
import atexit, os, signal, sys, time
import click
from reddit_amazon.cli_errors import run_cli

def ctrl_c_while_finalizing():  # registered first, so run last of the exit handlers, as the interpreter tears down
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.2)

atexit.register(ctrl_c_while_finalizing)

@click.command()
@click.option("--fail", is_flag=True)
def cmd(fail):
    click.echo("written")
    if fail:
        raise click.ClickException("failed")

run_cli(cmd, "cmd")
"""


@pytest.mark.parametrize(("args", "status"), [([], 0), (["--fail"], 1)])
def test_ctrl_c_while_a_finished_command_exits_keeps_its_status(args, status):
    """A Ctrl-C pressed after a build had written its dataset and said so, while the interpreter tore down (most of a
    second with pyarrow loaded), raised KeyboardInterrupt, or killed the process by SIGINT (status -2 to subprocess,
    19 of 20 chaos runs with Ctrl-C 0-0.4 s after the build's last line): the finished build read as interrupted."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _CTRL_C_AT_EXIT, *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == status and done.stdout == "written\n", (done.returncode, done.stdout, done.stderr)
    assert "KeyboardInterrupt" not in done.stderr and "Traceback" not in done.stderr, done.stderr


@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM is POSIX")
def test_sigterm_in_code_run_from_a_string_still_ends_in_143_under_python_m(tmp_path):
    """`python -m benchmark run ...` stopped by SIGTERM while code made from a string runs (a dataclass's __init__
    being made during an import) ended killed by SIGINT (a shell's 130, a scheduler's "interrupted"), not 143: CPython
    marks a KeyboardInterrupt leaving such code as unhandled, even once caught, and `-m` then ends on SIGINT."""
    (tmp_path / "stopped_in_exec.py").write_text(
        "import os, signal\nimport click\nfrom reddit_amazon.cli_errors import run_cli\n\n"
        "@click.command()\ndef stopped():\n"
        "    exec('os.kill(os.getpid(), signal.SIGTERM)\\nimport time\\ntime.sleep(30)')\n\n"
        "run_cli(stopped, 'stopped')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(Path(__file__).parent.parent)])}
    done = subprocess.run([sys.executable, "-m", "stopped_in_exec"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 128 + signal.SIGTERM, done.stderr
    assert done.stderr.strip() == "Aborted!"
