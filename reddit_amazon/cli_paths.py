"""Files and folders named on the command line, with a leading ``~`` expanded where they enter.

The shell leaves ``~`` as it is when quoted (``--out '~/x'``) or after ``=`` (``--out=~/x``). click and
pathlib keep it literal while pyarrow, fsspec and `datasets` expand it, so one command would read and
write two different folders. Expanding it once, at the command line, gives every library the same path.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click


class UserPath(click.Path):
    """``click.Path`` with a leading ``~`` (or ``~user``) expanded before its checks: ``exists=True``
    looks at the folder the rest of the command will use."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        return super().convert(os.path.expanduser(value), param, ctx)


class OutputPath(UserPath):
    """A folder a command writes: never one inside the installed ``reddit_amazon`` package, whose bundled sample
    dataset ``--out "$(reddit-amazon sample-path)"`` would otherwise replace (`benchmark run` and the docs read it);
    ``python -m reddit_amazon.sample.make_sample`` regenerates it."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        path = super().convert(value, param, ctx)
        package = Path(__file__).resolve().parent
        if Path(path).resolve().is_relative_to(package):
            self.fail(f"{path} is inside the installed reddit_amazon package ({package}), which holds the bundled "
                      "sample dataset and its inputs; choose a folder of your own", param, ctx)
        return path


class UserPathOrName(click.types.StringParamType):
    """Text that is a file or folder or else a name (a Hub id, ``hub:`` spec, ``module:Class``, an inline
    mapping): a leading ``~`` is expanded, which no such name starts with."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        return os.path.expanduser(super().convert(value, param, ctx))


PATH_OR_NAME = UserPathOrName()
