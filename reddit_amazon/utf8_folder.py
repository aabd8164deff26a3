"""datatrove's logging folder with its text files in UTF-8 (its own module: ``datatrove.io`` is a heavy import, and
the class must be importable by name, where Slurm and Ray executors and spawned workers unpickle it)."""

from __future__ import annotations

from datatrove.io import DataFolder


class Utf8DataFolder(DataFolder):
    """A :class:`DataFolder` whose files opened in text mode are UTF-8. datatrove opens its task logs and stats in the
    locale's encoding, which on Windows (cp1252), or under a non-UTF-8 locale, cannot hold the emoji of its log lines
    and of the steps' names: loguru printed a "Logging error" traceback for each such line, and the task log lost
    it."""

    def open(self, path, mode="rb", *args, **kwargs):
        if "b" not in mode:
            kwargs.setdefault("encoding", "utf-8")
        return super().open(path, mode, *args, **kwargs)
