"""The one-line errors of the command-line tools."""

from __future__ import annotations

import errno

import click
import pytest

from reddit_amazon.cli_errors import user_errors


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
