"""datatrove's logging folder, as the Reddit stage keeps it (its own module: ``datatrove.io`` is a heavy import, and
the class must be importable by name, where Slurm and Ray executors and spawned workers unpickle it)."""

from __future__ import annotations

import re

from datatrove.io import DataFolder

#: datatrove's log of one task, opened with "w" each time the task runs
_TASK_LOG = re.compile(r"(?:.*/)?logs/task_\d+\.log")


class TaskLogFolder(DataFolder):
    """A :class:`DataFolder` whose files opened in text mode are UTF-8, and whose task logs keep the previous run's.

    datatrove opens its task logs and stats in the locale's encoding, which on Windows (cp1252), or under a
    non-UTF-8 locale, cannot hold the emoji of its log lines and of the steps' names: loguru printed a "Logging error"
    traceback for each such line, and the task log lost it.

    A task that failed runs again on the rerun (a finished one is skipped before its log is opened), and datatrove
    rewrote its log: the failure's traceback, which the console no longer shows, was gone. The previous log is now
    ``task_XXXXX.log.1`` (one only: a task failing on every rerun does not pile up logs)."""

    def open(self, path, mode="rb", *args, **kwargs):
        if "w" in mode and _TASK_LOG.fullmatch(path) and self.isfile(path):
            previous = f"{path}.1"
            if self.isfile(previous):
                self.rm(previous)  # a rename onto an existing file fails on Windows
            self.mv(path, previous)
        if "b" not in mode:
            kwargs.setdefault("encoding", "utf-8")
        return super().open(path, mode, *args, **kwargs)
