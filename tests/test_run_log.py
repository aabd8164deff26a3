"""The log each `build` and `reddit-stage` run leaves in its workdir: what it printed, with times, and no secret."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from core_install import import_extra  # tests/

from reddit_amazon import __version__
from reddit_amazon.build import SAMPLE_INPUTS, run_build, sample_options
from reddit_amazon.cli import cli
from reddit_amazon.dataset_folder import verify

FAST = ["--retrievers", "none", "--quiet"]
KEY = "sk-log-secret-key-0123"
SALT = "salt-never-in-a-log-77"
#: The sample's pre-recorded answers count as this endpoint's: the build asks it nothing.
URL_WITH_PASSWORD = "http://loguser:hunter2-log-secret@127.0.0.1:9/v1"
SECRETS = (KEY, SALT, "hunter2-log-secret", "loguser")
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ")


def run(*args: str):
    return CliRunner().invoke(cli, list(args), env={"OPENAI_API_KEY": KEY}, catch_exceptions=False)


def logs(workdir: Path, command: str = "build") -> list[Path]:
    return sorted((workdir / "logs").glob(f"{command}-*.log"))


def log_lines(path: Path) -> list[str]:
    """The lines of a log without their timestamps, each checked to have one."""
    lines = path.read_text(encoding="utf-8").splitlines()
    assert all(STAMP.match(line) for line in lines), lines
    return [STAMP.sub("", line) for line in lines]


def assert_no_secret(workdir: Path) -> None:
    for path in (workdir / "logs").iterdir():
        text = path.read_text(encoding="utf-8")
        assert not any(secret in text for secret in SECRETS), text


def test_a_build_and_its_rerun_log_what_they_printed_each_stage_and_the_end(tmp_path):
    out, work = tmp_path / "ds", tmp_path / "work"
    args = ["build", "--out", str(out), "--workdir", str(work), *FAST, "--salt", SALT,
            "--llm-base-url", URL_WITH_PASSWORD]
    first = run(*args)
    assert first.exit_code == 0, first.output
    [log] = logs(work)
    lines = log_lines(log)
    assert lines[0] == (f"started: reddit-amazon build --out {out} --workdir {work} --llm-base-url "
                        "http://127.0.0.1:9/v1 --retrievers none --salt '<redacted>'")
    assert lines[1].startswith(f"reddit-amazon {__version__}, python ")
    for stage in ("reddit", "catalog", "relevance", "images", "assemble"):
        assert f"stage {stage}: started" in lines
        assert any(re.fullmatch(rf"stage {stage}: done in \d+\.\d s", line) for line in lines), (stage, lines)
    assert re.fullmatch(r"finished after \d+\.\d s", lines[-1])
    printed = [line.rstrip() for line in first.stderr.splitlines()]
    assert "Build funnel" in first.stderr and [line for line in lines if line in printed] == printed  # all, in order
    assert "\x1b" not in log.read_text(encoding="utf-8")  # plain text
    assert not list(out.rglob("*.log")) and verify(out) == []  # the dataset folder holds no log

    again = run(*args)
    assert again.exit_code == 0, again.output
    rerun_log = next(path for path in logs(work) if path != log)
    rerun = log_lines(rerun_log)
    for stage in ("reddit", "catalog", "relevance"):
        assert any(re.fullmatch(rf"stage {stage}: reused in \d+\.\d s", line) for line in rerun), (stage, rerun)
    assert log_lines(log) == lines  # each run has its own file
    assert_no_secret(work)


def test_a_failing_build_logs_the_error_line_it_printed(tmp_path):
    work = tmp_path / "work"
    result = run("build", "--out", str(tmp_path / "ds"), "--workdir", str(work), *FAST, "--no-images",
                 "--salt", SALT, "--llm-model", "a-model-never-recorded", "--llm-base-url", URL_WITH_PASSWORD,
                 "--llm-max-attempts", "1")
    assert result.exit_code == 1
    error_line = result.stderr.splitlines()[-1]
    assert error_line.startswith("Error: a relevance call failed")
    [log] = logs(work)
    lines = log_lines(log)
    assert re.fullmatch(r"stage relevance: stopped after \d+\.\d s", lines[-3])
    assert lines[-2] == error_line
    assert re.fullmatch(r"failed after \d+\.\d s", lines[-1])
    assert_no_secret(work)


def test_a_bug_logs_its_whole_traceback_redacted_and_the_terminal_shows_what_it_did(tmp_path, monkeypatch):
    """An error that is no clean ``Error:`` line (a bug: a KeyError deep in a stage) is printed by Python with its
    traceback; the log held only the traceback's last line, useless to a bug report."""
    import os

    import reddit_amazon.build as build_module

    def broken_stage(*_args, **_kwargs):
        record = {"api_key": os.environ["OPENAI_API_KEY"]}
        return record["title"]  # a bug: the stage expected a field its input lacks

    monkeypatch.setattr(build_module, "images_stage", broken_stage)
    work = tmp_path / "work"
    result = CliRunner().invoke(cli, ["build", "--out", str(tmp_path / "ds"), "--workdir", str(work), *FAST,
                                      "--salt", SALT], env={"OPENAI_API_KEY": KEY})
    # the terminal as before: the stages' lines, then Python's traceback of the very exception (not printed here)
    assert type(result.exception) is KeyError and result.exception.args == ("title",)
    assert "Traceback" not in result.stderr and "KeyError" not in result.stderr
    [log] = logs(work)
    lines = log_lines(log)
    traceback_start = lines.index("Traceback (most recent call last):")
    assert re.fullmatch(r"stage images: stopped after \d+\.\d s", lines[traceback_start - 1])
    traceback_lines = lines[traceback_start:-1]
    assert traceback_lines[-1] == "KeyError: 'title'"  # the line Python ends it with
    assert any(line.endswith(", in broken_stage") for line in traceback_lines), traceback_lines
    assert any(line.endswith(", in _run_stages") for line in traceback_lines), traceback_lines
    assert re.fullmatch(r"failed after \d+\.\d s", lines[-1])
    assert_no_secret(work)


def test_a_bug_in_a_python_caller_s_build_logs_its_traceback(tmp_path, monkeypatch):
    import reddit_amazon.build as build_module

    def broken_stage(*_args, **_kwargs):
        raise AttributeError(f"'NoneType' object has no attribute 'width' (salt {SALT})")

    monkeypatch.setattr(build_module, "images_stage", broken_stage)
    with pytest.raises(AttributeError):
        run_build(sample_options(tmp_path / "ds", tmp_path / "work", retrievers=[], reddit={"salt": SALT}),
                  progress=False)
    lines = log_lines(logs(tmp_path / "work")[0])
    assert "Traceback (most recent call last):" in lines
    assert lines[-2] == "AttributeError: 'NoneType' object has no attribute 'width' (salt <key redacted>)"
    assert_no_secret(tmp_path / "work")


def test_a_missing_extra_logs_the_error_line_the_terminal_shows(tmp_path, monkeypatch, capsys):
    """run_cli prints a missing optional dependency as one ``Error:`` line naming the extra: the log says the same
    line, not the ModuleNotFoundError's traceback nor its bare last line."""
    import sys

    import reddit_amazon.build as build_module
    from reddit_amazon.cli_errors import run_cli

    def stage_importing_torch(*_args, **_kwargs):
        import torch  # noqa: F401

    monkeypatch.setitem(sys.modules, "torch", None)  # not installed: its import raises ModuleNotFoundError
    monkeypatch.setattr(build_module, "images_stage", stage_importing_torch)
    work = tmp_path / "work"
    monkeypatch.setattr(sys, "argv", ["reddit-amazon", "build", "--out", str(tmp_path / "ds"), "--workdir",
                                      str(work), *FAST])
    with pytest.raises(SystemExit) as exit:
        run_cli(cli, "reddit-amazon")
    assert exit.value.code == 1
    error_line = capsys.readouterr().err.splitlines()[-1]
    assert error_line.startswith("Error: import of torch halted") and "reddit-amazon[lavic]" in error_line
    lines = log_lines(logs(work)[0])
    assert lines[-2] == error_line and "Traceback (most recent call last):" not in lines


def test_an_interrupted_build_logs_that_it_was(tmp_path, monkeypatch):
    import reddit_amazon.build as build_module

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(build_module, "images_stage", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_build(sample_options(tmp_path / "ds", tmp_path / "work", retrievers=[]), progress=False)
    lines = log_lines(logs(tmp_path / "work")[0])
    assert lines[-3].startswith("stage images: stopped after ") and lines[-2] == "Aborted!"
    assert lines[-1].startswith("interrupted after ")


def test_a_workdir_where_no_log_can_be_written_builds_as_before(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "logs").write_text("a file where the log folder would be\n")
    result = run("build", "--out", str(tmp_path / "ds"), "--workdir", str(work), *FAST)
    assert result.exit_code == 0, result.output
    assert (work / "logs").read_text() == "a file where the log folder would be\n"


def test_a_reddit_stage_run_logs_its_lines_without_the_salt(tmp_path):
    work = tmp_path / "work"
    result = CliRunner().invoke(cli, ["reddit-stage", str(SAMPLE_INPUTS / "reddit"), "--workdir", str(work),
                                      "--quiet"], env={"REDDIT_AMAZON_SALT": SALT}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    [log] = logs(work, "reddit-stage")
    lines = log_lines(log)
    assert lines[0] == (f"started: reddit-amazon reddit-stage {SAMPLE_INPUTS / 'reddit'} --workdir {work} "
                        "--salt '<redacted>' --quiet")
    assert re.fullmatch(r"stage reddit: done in \d+\.\d s", lines[3])
    assert lines[-2] == result.stderr.splitlines()[-1]  # the summary line, not the funnel printed on stdout
    assert lines[-1].startswith("finished after ")
    assert_no_secret(work)


def test_a_bug_in_a_reddit_stage_run_logs_its_traceback(tmp_path, monkeypatch):
    """A RuntimeError is no clean error of ``reddit-stage`` (only ValueError and OSError are): Python prints its
    traceback, and the log holds it whole."""
    import reddit_amazon.pipeline

    def broken_stage(*_args, **_kwargs):
        raise RuntimeError(f"worker state lost (salt {SALT})")

    monkeypatch.setattr(reddit_amazon.pipeline, "run_reddit_stage", broken_stage)
    work = tmp_path / "work"
    result = CliRunner().invoke(cli, ["reddit-stage", str(SAMPLE_INPUTS / "reddit"), "--workdir", str(work),
                                      "--quiet"], env={"REDDIT_AMAZON_SALT": SALT})
    assert type(result.exception) is RuntimeError and "Traceback" not in result.stderr
    lines = log_lines(logs(work, "reddit-stage")[0])
    traceback_lines = lines[lines.index("Traceback (most recent call last):"):-1]
    assert any(line.endswith(", in broken_stage") for line in traceback_lines), traceback_lines
    assert traceback_lines[-1] == "RuntimeError: worker state lost (salt <REDDIT_AMAZON_SALT redacted>)"
    assert_no_secret(work)


#: ``reddit-amazon`` as its console script starts, with a bug in a thread of the images stage (``leaky-worker``,
#: joined: the build goes on) whose message quotes OPENAI_API_KEY.
THREAD_BUG_SCRIPT = """
import os, sys, threading

import reddit_amazon.build as build_module

from reddit_amazon.__main__ import main

images_stage = build_module.images_stage


def leaky_worker():
    raise KeyError(f"no 'title' in record with key {os.environ['OPENAI_API_KEY']}")


def images_stage_with_a_thread(*args, **kwargs):
    worker = threading.Thread(target=leaky_worker, name="leaky-worker")
    worker.start()
    worker.join()
    return images_stage(*args, **kwargs)


build_module.images_stage = images_stage_with_a_thread
sys.exit(main())
"""


def test_a_bug_ending_a_thread_of_a_build_is_printed_and_logged_whole_and_redacted(tmp_path):
    """An exception ending one of a run's threads was printed by Python's threading.excepthook with the key of the
    environment in it, and the log, which holds a bug's whole traceback, had none of it."""
    import os
    import subprocess
    import sys

    script = tmp_path / "start.py"  # a file: the traceback shows its source lines
    script.write_text(THREAD_BUG_SCRIPT, encoding="utf-8")
    work = tmp_path / "work"
    env = {**os.environ, "OPENAI_API_KEY": KEY, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, str(script), "build", "--out", str(tmp_path / "ds"), "--workdir",
                           str(work), *FAST, "--no-images"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and KEY not in done.stderr, done.stderr
    printed = done.stderr.splitlines()
    start = printed.index("Exception in thread leaky-worker:")
    end = printed.index("KeyError: \"no 'title' in record with key <OPENAI_API_KEY redacted>\"") + 1
    thread_traceback = printed[start:end]
    assert thread_traceback[1] == "Traceback (most recent call last):", done.stderr
    assert "    raise KeyError(f\"no 'title' in record with key {os.environ['OPENAI_API_KEY']}\")" in thread_traceback
    lines = log_lines(logs(work)[0])
    logged = lines.index(thread_traceback[0])
    assert lines[logged:logged + len(thread_traceback)] == thread_traceback  # whole, as printed
    assert lines[logged - 1] == "stage images: started" and lines[-1].startswith("finished after ")
    assert_no_secret(work)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (a device that is always full)")
def test_a_log_on_a_full_disk_is_given_up_without_a_word(tmp_path, monkeypatch, capfd):
    import reddit_amazon.run_log

    # the log's file, made as every run's, is written on a device that is always full
    monkeypatch.setattr(reddit_amazon.run_log._GivingUpFileHandler, "_open",
                        lambda _handler: open("/dev/full", "a", encoding="utf-8"))
    manifest = run_build(sample_options(tmp_path / "ds", tmp_path / "work", retrievers=[]), progress=False)
    assert manifest is not None and verify(tmp_path / "ds") == []
    assert "Logging error" not in capfd.readouterr().err


def test_two_runs_given_one_log_name_each_keep_a_file_of_their_own(tmp_path, monkeypatch):
    """A notebook calling run_build twice in one second (a rerun whose stages are all reused) got one name for both
    runs (the UTC second and the pid): the second run's lines were appended to the first one's file."""
    import reddit_amazon.run_log
    from reddit_amazon.run_log import open_run_log

    same_name = tmp_path / "logs" / "build-20260101T120000Z-1.log"
    monkeypatch.setattr(reddit_amazon.run_log, "log_path", lambda *_: same_name)
    for run_number in (1, 2, 3):
        with open_run_log(tmp_path, "build", f"run {run_number}") as log:
            log.line(f"line of run {run_number}")
    files = sorted((tmp_path / "logs").iterdir())
    assert [path.name for path in files] == [same_name.name, "build-20260101T120000Z-1_2.log",
                                             "build-20260101T120000Z-1_3.log"]
    for run_number, path in enumerate(files, start=1):
        lines = log_lines(path)
        assert lines[0] == f"started: run {run_number}" and lines[2] == f"line of run {run_number}", lines
        assert len([line for line in lines if line.startswith("started: ")]) == 1, lines


def test_a_line_whose_log_another_thread_gave_up_meanwhile_is_dropped(tmp_path, monkeypatch):
    """An image thread's failed write (a full disk) closes the log between a line's read of the handler and its
    write: the closed handler reopened its file in mode x, and FileExistsError ended the build."""
    import logging

    from reddit_amazon.run_log import RunLog

    log = RunLog(tmp_path / "logs" / "build.log")
    log.open("a command")
    make_record = logging.makeLogRecord

    def given_up_meanwhile(attributes):
        log._give_up()  # as _GivingUpFileHandler.handleError does in the thread whose write failed
        return make_record(attributes)

    monkeypatch.setattr(logging, "makeLogRecord", given_up_meanwhile)
    log.line("a line written as the log is given up")
    assert not log.active
    monkeypatch.undo()
    assert "a line written" not in (tmp_path / "logs" / "build.log").read_text(encoding="utf-8")


#: Warnings as a run meets them: Python's (Pillow's bomb warning, one warned twice), the WARNING records of
#: libraries printing them with a console handler of their own (datasets, transformers, huggingface_hub: once with it,
#: once after a program removed it, when logging's last resort prints it) or through the last resort (a logger with
#: no handler), one no handler prints (urllib3's NullHandler), the package's own; run as they are, then in a run log.
WARNING_SCRIPT = """
import io, logging, os, sys, warnings
from pathlib import Path

import datasets
import huggingface_hub
import urllib3  # noqa: F401 (its NullHandler)
from PIL import Image
from transformers.utils import logging as transformers_logging

from reddit_amazon.run_log import open_run_log


def warn():
    Image.MAX_IMAGE_PIXELS = 60  # a 10 x 10 image is over it, not over twice it: a warning, not an error
    png = io.BytesIO()
    Image.new("RGB", (10, 10)).save(png, format="PNG")
    Image.open(png)
    for _ in range(2):
        warnings.warn("a warning shown once, its key " + os.environ["OPENAI_API_KEY"])
    datasets.utils.logging.get_logger("datasets.builder").warning("datasets: Repo card metadata block not found")
    huggingface_hub.utils.logging.get_logger("huggingface_hub.file_download").warning("hub: symlinks not supported")
    transformers_logging.get_logger("transformers.modeling_utils").warning("weights not used")  # "[transformers] "
    logging.getLogger("sentence_transformers.SentenceTransformer").warning("no handler: printed by the last resort")
    logging.getLogger("urllib3.connectionpool").warning("Connection pool is full: printed by no handler")
    logging.getLogger("reddit_amazon.images").warning("the package's warning")
    logging.getLogger("huggingface_hub").handlers.clear()
    huggingface_hub.utils.logging.get_logger("huggingface_hub.x").warning("hub, its console handler removed")


if sys.argv[1] == "plain":
    warn()
else:
    with open_run_log(Path(sys.argv[2]), "build", "reddit-amazon build"):
        warn()
"""


def test_the_warnings_a_run_prints_are_logged_once_as_printed_and_redacted(tmp_path, monkeypatch):
    import os
    import subprocess
    import sys

    from reddit_amazon.redaction import redact_secrets

    import_extra("transformers")  # the script's transformers warning (its own console handler)

    monkeypatch.setenv("OPENAI_API_KEY", KEY)  # here too: the expected lines are redacted as the log's
    monkeypatch.delenv("PYTHONWARNINGS", raising=False)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}

    def stderr_of(*args: str) -> str:
        done = subprocess.run([sys.executable, "-c", WARNING_SCRIPT, *args], env=env, capture_output=True,
                              text=True, timeout=120, check=True)
        return done.stderr

    plain = stderr_of("plain")
    logged = stderr_of("logged", str(tmp_path))
    assert logged == plain  # the terminal as without a log
    printed = plain.splitlines()
    assert "DecompressionBombWarning" in plain and plain.count("a warning shown once") == 1
    assert "Connection pool is full" not in plain and "hub, its console handler removed" in plain, plain
    assert "[transformers] weights not used" in printed
    lines = log_lines(logs(tmp_path)[0])
    assert lines[2:-1] == [line.rstrip() for line in redact_secrets(plain).splitlines()], (lines, printed)
    assert KEY not in "\n".join(lines) and KEY in plain

