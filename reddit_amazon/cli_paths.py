"""Files and folders named on the command line, with a leading ``~`` expanded where they enter.

The shell leaves ``~`` as it is when quoted (``--out '~/x'``) or after ``=`` (``--out=~/x``). click and
pathlib keep it literal while pyarrow, fsspec and `datasets` expand it, so one command would read and
write two different folders. Expanding it once, at the command line, gives every library the same path.
"""

from __future__ import annotations

import os
from typing import Any

import click


class UserPath(click.Path):
    """``click.Path`` with a leading ``~`` (or ``~user``) expanded before its checks: ``exists=True``
    looks at the folder the rest of the command will use."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        return super().convert(os.path.expanduser(value), param, ctx)


class UserPathOrName(click.types.StringParamType):
    """Text that is a file or folder or else a name (a Hub id, ``hub:`` spec, ``module:Class``, an inline
    mapping): a leading ``~`` is expanded, which no such name starts with."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        return os.path.expanduser(super().convert(value, param, ctx))


PATH_OR_NAME = UserPathOrName()
