"""Paths of the machine a card was made on, as a published card shows them: an absolute path by its name only.

Where the data, adapters or inputs lay on that machine (``/home/<user>/...``) is nobody's business, and such a path
means nothing to whoever reads the card elsewhere; a relative path or a Hub id is shown as recorded.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

#: A word of a command that starts like an absolute or ``~`` path (for a command shlex cannot split).
_PATH_WORD = re.compile(r"(?<!\S)[~/]\S*")


def is_local_path(value: Any) -> bool:
    """Whether ``value`` is an absolute (or ``~``) path of the machine the card was made on."""
    return isinstance(value, str) and Path(value).expanduser().is_absolute()


def path_name(path: str) -> str:
    """The name a card gives a local path: its last component, with the training output folder for an adapter in
    its ``best/`` or ``last/`` (``distill/best``)."""
    parts = Path(path).expanduser().parts
    if len(parts) > 2 and parts[-1] in ("best", "last"):
        return "/".join(parts[-2:])
    return Path(path).name or path


def shown_value(value: Any) -> Any:
    """``value`` with each local path in it (itself, or an item of a list) shown by :func:`path_name`."""
    if isinstance(value, (list, tuple)):
        return [shown_value(item) for item in value]
    return path_name(value) if is_local_path(value) else value


def shown_command(command: str) -> str:
    """A recorded shell command with each local path argument shown by :func:`path_name`."""
    try:
        words = shlex.split(command)
    except ValueError:  # not shell syntax (a manifest edited by hand): the path-like words
        return _PATH_WORD.sub(lambda match: path_name(match.group()), command)
    return shlex.join(shown_value(words))


def holds_local_path(value: Any) -> bool:
    """Whether ``value`` (a path, a list of them) holds a local path :func:`shown_value` shows by name."""
    return shown_value(value) != value
