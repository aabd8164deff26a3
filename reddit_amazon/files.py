"""Atomic writes: a reader sees the old file (or folder) or the new one, never half of one."""

from __future__ import annotations

import errno
import glob
import hashlib
import io
import itertools
import json
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO


#: A finished stage's record in its folder (``{"key": ..., "outputs": {name: {"bytes", "sha256"}}}``): the build
#: reuses the stage's outputs only while it holds the key of the run that wrote them, and they are as it wrote them.
STAGE_STAMP = "stage.json"


def current_umask() -> int:
    """The process's umask, read when asked (a library user may change it after import).

    Linux shows it in ``/proc/self/status``. Elsewhere it is read by setting it and setting it back,
    which, for that instant, lets a file another thread creates get mode 0666.
    """
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def printable_path(path: str | os.PathLike[str]) -> str:
    """``path`` as text that UTF-8 can encode. A Linux file name is bytes, not always UTF-8 (a Latin-1 name, or any
    non-ASCII name under a non-UTF-8 locale): Python hands the bytes it cannot decode over as lone surrogates, which
    orjson and UTF-8 output refuse. Those bytes become ``\\xNN``; every other name is returned unchanged."""
    return os.fspath(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def new_file_mode() -> int:
    """Mode of new files: what ``open(path, "w")`` would give now (``mkstemp`` alone gives 0600)."""
    return 0o666 & ~current_umask()


def write_atomic(path: Path, data: bytes, mode: int | None = None) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it over ``path`` (``mode`` defaults
    to :func:`new_file_mode`)."""
    with open_atomic(path, mode) as out:
        out.write(data)


def write_jsonl_atomic(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """``rows`` as JSON Lines (each compact ``orjson`` text and ``\\n``) at ``path``, through :func:`open_atomic`:
    streamed (the file is never held in memory whole), and a row that cannot be written leaves ``path`` as it was."""
    import orjson

    with open_atomic(path) as out:
        for row in rows:
            out.write(orjson.dumps(row) + b"\n")


@contextmanager
def open_atomic(path: Path, mode: int | None = None) -> Iterator[BinaryIO]:
    """A binary file to write, renamed over ``path`` when the block ends without an error (else removed). Its
    writes that fail (a full disk) name ``path``: see :class:`_WritesNaming`."""
    path = Path(os.path.realpath(path))  # a symlink (report.html -> site/report.html) keeps pointing at the new file
    if path.exists() and not path.is_file() and not path.is_dir():  # /dev/stdout, a named pipe: write into it
        with _WritesNaming(io.FileIO(path, "wb"), path) as out:
            yield out
        return
    with atomic_path(path, mode) as tmp, _WritesNaming(io.FileIO(tmp, "wb"), path) as out:
        yield out


def open_named(path: Path, mode: str = "wb") -> BinaryIO:
    """``open(path, mode)`` for writing (binary), with its failing open, writes, flushes and close naming ``path``
    (:class:`_WritesNaming`): a file that is appended to in place, as a run's predictions are."""
    with naming(path):
        raw = io.FileIO(path, mode)
    return _WritesNaming(raw, path)


class _WritesNaming(io.BufferedWriter):
    """A buffered file whose failing writes, flushes and close name ``named`` (see :func:`naming`): "[Errno 28] No
    space left on device" alone does not say where. Only the file's own operations: an OSError raised by other
    code in an :func:`open_atomic` block (a dataset being read, a network call) is not this file's."""

    def __init__(self, raw: io.FileIO, named: Path):
        super().__init__(raw)
        self.named = named

    def write(self, data) -> int:
        with naming(self.named):
            return super().write(data)

    def flush(self) -> None:
        with naming(self.named):
            super().flush()

    def close(self) -> None:
        with naming(self.named):
            super().close()


@contextmanager
def atomic_path(path: Path, mode: int | None = None) -> Iterator[Path]:
    """A hidden temporary file beside ``path`` for a writer that takes a file name, renamed over ``path`` when the
    block ends without an error (else removed). Its name holds the host and pid (:func:`sibling_prefix`), so what a
    killed writer left can be told from a live writer's file (:func:`remove_abandoned_temp_files`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=sibling_prefix(path, "tmp"), dir=path.parent)
    os.close(handle)
    try:
        yield Path(tmp)
        os.chmod(tmp, new_file_mode() if mode is None else mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def naming(path: Path) -> Iterator[None]:
    """An ``OSError`` raised in the block without a file name (a full disk: "[Errno 28] No space left on
    device", pyarrow's "Error writing bytes to file") names ``path``, so the message says where."""
    try:
        yield
    except OSError as error:
        if error.filename is not None:
            raise
        raise OSError(error.errno, error.strerror or str(error), str(path)) from error


class DamagedFileError(ValueError):
    """A file the toolkit wrote itself does not read back (a full disk, a crash mid-write, an edit by hand); the
    message names it and says what to do."""


#: What a JSON value of each type is called in a :class:`DamagedFileError`.
_JSON_TYPE_NAMES: dict[type, str] = {dict: "object", list: "array", str: "string", int: "integer"}


def json_type_name(kind: type) -> str:
    """What a JSON value of type ``kind`` is called in a :class:`DamagedFileError` ("object", "array", ...)."""
    return _JSON_TYPE_NAMES.get(kind, kind.__name__)


def is_json_type(value: Any, kind: type) -> bool:
    """Whether the parsed JSON ``value`` is of type ``kind``; ``true``/``false`` are no integers."""
    return isinstance(value, kind) and not (kind is int and isinstance(value, bool))


def read_json(path: Path, kind: type = dict, *, remedy: str) -> Any:
    """The JSON value of type ``kind`` in ``path``, a file the toolkit wrote. One that is not UTF-8 JSON of that
    type is a :class:`DamagedFileError` naming it and ending in ``remedy`` (what to delete or rerun)."""
    with naming(path):
        data = path.read_bytes()
    try:
        value = json.loads(data.decode("utf-8"))
    except ValueError as error:  # JSONDecodeError and UnicodeDecodeError
        raise DamagedFileError(f"{path}: damaged, not valid JSON ({error}); {remedy}") from None
    if not is_json_type(value, kind):
        raise DamagedFileError(f"{path}: damaged, not a JSON {json_type_name(kind)}; {remedy}")
    return value


def read_jsonl(path: Path, *, remedy: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, row)`` for each non-empty line of a JSON Lines file the toolkit wrote
    (:func:`write_jsonl_atomic`); a line that is not a JSON object is a :class:`DamagedFileError` naming it and
    ending in ``remedy``."""
    import orjson

    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                try:
                    row = orjson.loads(line)
                except orjson.JSONDecodeError as error:
                    raise DamagedFileError(f"{path}:{number}: damaged, not valid JSON ({error}); {remedy}") from None
                if not isinstance(row, dict):
                    raise DamagedFileError(f"{path}:{number}: damaged, not a JSON object; {remedy}")
                yield number, row


@contextmanager
def naming_write_failure(path: Path) -> Iterator[None]:
    """:func:`naming` for a library writing ``path`` (a file or a folder) in its own way, whose errors hide the OS's:
    torch.save into a file object raises a RuntimeError ("unexpected pos 35328 vs 35216") over the file's OSError,
    safetensors a SafetensorError ending "(os error 28)". Such an error becomes that OSError, naming ``path``; any
    other error is raised as it is."""
    try:
        with naming(path):
            yield
    except OSError:
        raise
    except Exception as error:
        cause = os_error_under(error)
        if cause is None:
            raise
        assert cause.errno is not None  # os_error_under finds only OSErrors with a number
        raise OSError(cause.errno, cause.strerror or os.strerror(cause.errno),
                      cause.filename if cause.filename is not None else str(path)) from error


def os_error_under(error: BaseException) -> OSError | None:
    """The OSError (with an errno) that ``error`` was raised over, or whose number its message ends with."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno is not None:
            return seen
        seen = seen.__cause__ or seen.__context__
    number = re.search(r"\(os error (\d+)\)", str(error))
    return OSError(int(number.group(1)), os.strerror(int(number.group(1)))) if number else None


#: The file :func:`folder_lock` locks inside the folder.
LOCK_FILE = ".lock"


#: Folder locks this process holds now (see :func:`_die_with_parent`), and the pid that is forking.
_locks_held = 0
_forking_pid = 0


def _note_forking_pid() -> None:
    global _forking_pid
    _forking_pid = os.getpid()


def _die_with_parent() -> None:
    """In a process forked while a folder lock is held: it shares the lock, so if it outlived its parent
    (``kill -9`` of a build: datatrove's Manager process never exits on its own) every rerun would find the
    folder busy for good. On Linux it is killed when its parent dies instead."""
    if not _locks_held or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != _forking_pid:  # the parent died before prctl took effect
        os._exit(1)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_note_forking_pid, after_in_child=_die_with_parent)


class FolderBusyError(OSError):
    """Another process holds the lock of a folder (or file): two runs writing the same work files would corrupt
    them."""

    def __str__(self) -> str:  # what to do and where, without OSError's "[Errno 16]"
        return f"{self.strerror}: {self.filename}"


#: How long :func:`folder_lock` (and :func:`file_lock`) waits for another process to free a lock before refusing.
BUSY_WAIT_S = 3.0


@contextmanager
def folder_lock(folder: Path, what: str, wait_s: float | None = None, *,
                tidy_on_error: bool = False) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (its ``.lock`` file) for the block. Another process still holding
    it after ``wait_s`` (default :data:`BUSY_WAIT_S`; the forked workers of a run just killed take a moment
    to die, and hold it until then) is a :class:`FolderBusyError` naming the folder; a file system (or a
    platform) without locks is not an error. ``tidy_on_error``: a block that raises leaves nothing taking the
    lock made (see :func:`_exclusive_lock`)."""
    folder = Path(folder)
    with _exclusive_lock(folder / LOCK_FILE, what, wait_s, where=folder, tidy_on_error=tidy_on_error,
                         busy=f"another {what} is running in this folder (it holds {folder / LOCK_FILE}); wait for "
                              "it to end or choose another folder"):
        yield


@contextmanager
def file_lock(path: Path, what: str, wait_s: float | None = None, *, noun: str = "file",
              tidy_on_error: bool = False) -> Iterator[None]:
    """:func:`folder_lock` for the one file (or folder) ``path`` (a hidden ``.<name>.lock`` beside it, removed when
    the block ends), so runs writing other files of the folder are not refused. ``noun``: what ``path`` is, as the
    busy error names it (a folder being written for the first time is not there yet to tell)."""
    path = Path(path)
    lock = path.with_name(f".{_short_name(path.name)}.lock")
    with _exclusive_lock(lock, what, wait_s, where=path, tidy_on_error=tidy_on_error,
                         busy=f"another {what} is writing this {noun} (it holds {lock}); wait for it to end or "
                              f"choose another {noun}"):
        try:
            yield
        finally:
            lock.unlink(missing_ok=True)  # while still held: a run waiting on it then locks a new file (see below)


@contextmanager
def _exclusive_lock(lock: Path, what: str, wait_s: float | None, *, where: Path, busy: str,
                    tidy_on_error: bool = False) -> Iterator[None]:
    """Hold ``lock`` (a file, made if missing, in a folder made if missing) exclusively; :class:`FolderBusyError`
    (``busy``, ``where``) when another process still holds it after ``wait_s``.

    ``tidy_on_error``: when the block raises (a model that fails to load), the lock file and the folders made for
    it are removed again, each only if this lock made it and, for a folder, if nothing else is in it: a run that
    failed to start leaves nothing new behind, and nothing that was there before is touched."""
    made = _LockMade(lock, what)
    made.make_folder()
    try:
        import fcntl
    except ImportError:  # Windows has no flock: runs there are not guarded
        with made.removed_on_error(tidy_on_error):
            yield
        return
    deadline = time.monotonic() + (BUSY_WAIT_S if wait_s is None else wait_s)
    while True:
        try:
            handle = made.open_lock_file()
        except FileNotFoundError:  # a run that failed to start removed the folder it made: make it again
            made.make_folder()
            continue
        try:
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise
                    time.sleep(0.1)
            if _same_file(handle, lock):
                break
            # The run that held it removed it (and maybe the folder) as it ended: locking that file would
            # guard nothing, a third run would take the new one. Lock the file now at that path.
            handle.close()
            made.make_folder()
            continue
        except BlockingIOError:
            handle.close()
            raise FolderBusyError(errno.EBUSY, busy, str(where)) from None
        except OSError as error:
            if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                handle.close()
                raise
            break
    global _locks_held
    _locks_held += 1
    try:
        with handle, made.removed_on_error(tidy_on_error):  # removed while still held (see _LockMade.remove)
            yield
    finally:
        _locks_held -= 1


class _LockMade:
    """What taking the lock file ``lock`` made: its folder and the missing folders above it, and the file."""

    def __init__(self, lock: Path, what: str):
        self.lock, self.what = lock, what
        self.folders: list[Path] = []
        self.lock_file = False

    def make_folder(self) -> None:
        folder = self.lock.parent
        missing = itertools.takewhile(lambda path: not path.exists(), (folder, *folder.parents))
        self.folders += [path for path in missing if path not in self.folders]
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:  # the OS names the path, not what it was for
            raise OSError(error.errno, f"cannot make the folder of this {self.what} ({error.strerror})",
                          str(folder)) from None

    def open_lock_file(self) -> BinaryIO:
        self.lock_file = self.lock_file or not self.lock.exists()
        return open(self.lock, "ab")

    @contextmanager
    def removed_on_error(self, tidy: bool) -> Iterator[None]:
        try:
            yield
        except BaseException:
            if tidy:
                self.remove()
            raise

    def remove(self) -> None:
        """Remove the lock file if this lock made it (while the lock is held: a run waiting on it then locks a new
        file, as after :func:`file_lock`), then the folders it made, deepest first, while they are empty."""
        if self.lock_file:
            self.lock.unlink(missing_ok=True)
        for folder in sorted(self.folders, key=lambda path: len(path.parts), reverse=True):
            try:
                folder.rmdir()
            except OSError:  # something else is in it: it stays, and so do the folders above it
                return


def _same_file(handle: BinaryIO, path: Path) -> bool:
    """Whether the open ``handle`` is still the file at ``path`` (not unlinked or replaced since it was opened)."""
    try:
        here = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(handle.fileno())
    return (here.st_dev, here.st_ino) == (mine.st_dev, mine.st_ino)


def replace_dir(new: Path, target: Path) -> None:
    """Put the finished folder ``new`` at ``target``.

    An existing ``target`` is renamed aside first and deleted after, so ``target`` is only ever
    missing between two renames, never while a large folder is being deleted.
    """
    if not target.exists():
        new.rename(target)
        return
    old = target.with_name(sibling_prefix(target, "old") + "0")
    shutil.rmtree(old, ignore_errors=True)
    try:
        target.rename(old)
        new.rename(target)
    except BaseException:  # Ctrl-C or SIGTERM (run_cli's KeyboardInterrupt) between the renames: put target back
        if not target.exists() and old.exists():
            old.rename(target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _short_name(name: str) -> str:
    """``name``, or where it is long a shorter name made from it: a hidden temporary ``.{name}.tmp-host-pid-xxxx``
    beside a target whose own name is near the filesystem's 255-byte limit must not exceed that limit."""
    encoded = os.fsencode(name)  # the bytes on disk: the limit counts them, and a Linux name need not be UTF-8
    if len(encoded) <= 80:
        return name
    return f"{encoded[:48].decode(errors='ignore')}~{hashlib.sha256(encoded).hexdigest()[:16]}"


def sibling_prefix(target: Path, kind: str) -> str:
    """Name prefix of this process's hidden ``kind`` folders beside ``target`` (a folder being written,
    or an old one being deleted). Host and pid in the name let a later run tell abandoned ones."""
    return f".{_short_name(target.name)}.{kind}-{socket.gethostname()}-{os.getpid()}-"


def _sibling_name_pattern(name: str, kinds: str) -> str:
    """The regex of the names :func:`sibling_prefix` gives ``kinds`` siblings (``tmp|old``) of a target whose name
    matches the regex ``name``, on this host; groups: the kind and the writer's pid."""
    return rf"\.{name}\.({kinds})-{re.escape(socket.gethostname())}-(\d+)-"


def remove_abandoned_siblings(target: Path, finished_marker: str) -> list[Path]:
    """Delete the hidden folders that processes of this host left beside ``target`` when they were
    killed (kill -9, power loss) while writing or replacing it; returns what was removed.

    A run killed while swapping the folders may have left ``target`` renamed aside, or moved the user's
    hidden entries (a Hub clone's ``.git``) into its new folder: those go back to ``target`` first. Only a new
    folder holding ``finished_marker`` (written last) got the user's entries: one killed while being written
    holds only its own half-written temporary files."""
    name = _short_name(target.name)
    pattern = re.compile(_sibling_name_pattern(re.escape(name), "tmp|old"))
    abandoned = []
    for sibling in target.parent.glob(f".{glob.escape(name)}.*"):
        match = pattern.match(sibling.name)
        if match and sibling.is_dir() and not _process_alive(int(match.group(2))):
            abandoned.append((match.group(1), sibling))
    for kind, sibling in abandoned:
        if kind == "old" and not target.exists():  # killed between replace_dir's two renames
            sibling.rename(target)
    removed = []
    for kind, sibling in abandoned:
        if not sibling.exists():
            continue
        if target.is_dir() and (kind == "old" or (sibling / finished_marker).exists()):
            for entry in sorted(sibling.iterdir()):
                if entry.name.startswith(".") and not (target / entry.name).exists():
                    entry.rename(target / entry.name)
        shutil.rmtree(sibling, ignore_errors=True)
        removed.append(sibling)
    return removed


def remove_abandoned_temp_files(folder: Path) -> list[Path]:
    """Delete the hidden temporary files (:func:`atomic_path`) that processes of this host left in ``folder`` when
    they were killed mid-write; returns what was removed. A file of a process still running (a concurrent build
    writing into a shared folder) is kept, and so is one of another host, whose processes cannot be checked from
    here."""
    pattern = re.compile(_sibling_name_pattern(".+", "tmp") + r"[^.]+")  # and mkstemp's random letters
    removed = []
    with os.scandir(folder) as entries:
        for entry in entries:
            match = pattern.fullmatch(entry.name)
            if match and entry.is_file(follow_symlinks=False) and not _process_alive(int(match.group(2))):
                Path(entry.path).unlink(missing_ok=True)
                removed.append(Path(entry.path))
    return removed


def _process_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host may still be running. Windows has no signal 0 to probe with: there
    ``os.kill(pid, 0)`` sends Ctrl-C (``CTRL_C_EVENT`` is 0) to the console process group ``pid``, or fails with an
    OSError, so every process counts as running and what it left stays for the user to delete."""
    if sys.platform == "win32":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def file_sha256(path: Path) -> str:
    """sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
