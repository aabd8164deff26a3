"""Atomic writes: a reader sees the old file (or folder) or the new one, never half of one."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: Mode of new files: what ``open(path, "w")`` would give (``mkstemp`` alone gives 0600).
FILE_MODE = 0o666 & ~_umask()


def write_atomic(path: Path, data: bytes, mode: int = FILE_MODE) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it over ``path``."""
    with open_atomic(path, mode) as out:
        out.write(data)


@contextmanager
def open_atomic(path: Path, mode: int = FILE_MODE) -> Iterator[BinaryIO]:
    """A binary file to write, renamed over ``path`` when the block ends without an error (else removed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            yield out
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def replace_dir(new: Path, target: Path) -> None:
    """Put the finished folder ``new`` at ``target``.

    An existing ``target`` is renamed aside first and deleted after, so ``target`` is only ever
    missing between two renames, never while a large folder is being deleted.
    """
    if not target.exists():
        new.rename(target)
        return
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    shutil.rmtree(old, ignore_errors=True)
    target.rename(old)
    new.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def file_sha256(path: Path) -> str:
    """sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
