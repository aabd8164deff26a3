"""The one-line errors of the command-line tools."""

from __future__ import annotations

import errno
import subprocess
import sys

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
