"""SQLite cache files, whose errors say which file they are about.

SQLite's messages name no file ("unable to open database file", "database is locked", "attempt to write a
readonly database", "database or disk is full", "file is not a database"), and a build or a benchmark run
keeps several caches. :class:`CacheFile` turns them into one line naming the file and what it is, raised as
the error types of the cache's own module, which the command-line tools report as one ``Error:`` line.

Runs share cache files (two ``benchmark run``s, a build and a run). SQLite lets one connection write at a time and
has the others poll for the lock, with no queue: a process writing batch after batch can keep another from the file
for longer than its wait. A cache whose values the run already holds goes on without the file then
(:class:`GoesOnWithoutTheFile`) instead of ending the run.
"""

from __future__ import annotations

import logging
import sqlite3
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

#: How long a read or a write waits for another connection to release the file (SQLite's busy timeout).
BUSY_WAIT_S = 5.0


#: SQLite's primary result code for "database is locked" (``sqlite3.SQLITE_BUSY`` from Python 3.11 on).
_SQLITE_BUSY = 5


def is_locked(error: sqlite3.Error) -> bool:
    """Whether ``error`` is SQLITE_BUSY, "database is locked": another connection holds the file. By its result code
    where Python gives it (``sqlite_errorcode``, Python 3.11 on), by SQLite's message on 3.10."""
    code = getattr(error, "sqlite_errorcode", None)
    return code & 0xFF == _SQLITE_BUSY if code is not None else str(error) == "database is locked"


@dataclass(frozen=True)
class CacheFile:
    """An SQLite file holding only what can be computed again."""

    path: Path
    what: str  # what it is, as its user knows it: "the relevance answer cache, --llm-cache"
    unavailable: Callable[[str], Exception]  # SQLite cannot open or write it (read-only, locked, a full disk)
    damaged: Callable[[str], Exception]  # its bytes are not a database SQLite can read
    fix: str = ""  # what to do when it is unavailable: "point $REDDIT_AMAZON_CACHE at a writable folder"
    loss: str = ""  # what deleting it costs: "its answers are then asked again"

    def connect(self, *schemas: str, owner: object, check_same_thread: bool = True) -> sqlite3.Connection:
        """The file (and its folder) with ``schemas`` (CREATE TABLE IF NOT EXISTS statements) in place
        (:meth:`open`, then :meth:`make_tables`)."""
        db = self.open(owner=owner, check_same_thread=check_same_thread)
        try:
            with self.named_errors():
                self.make_tables(db, schemas)
        except BaseException:
            db.close()
            raise
        return db

    def open(self, *, owner: object, check_same_thread: bool = True) -> sqlite3.Connection:
        """The file (and its folder), opened: nothing is read from it yet. The connection is closed when ``owner``
        (the cache object holding it) is collected, if its user has not closed it: a retriever or recommender has
        no close() of its own, and Python 3.13 warns of connections left open."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.named_errors():
            db = sqlite3.connect(self.path, timeout=BUSY_WAIT_S, check_same_thread=check_same_thread)
        weakref.finalize(owner, _close, db)
        return db

    def make_tables(self, db: sqlite3.Connection, schemas: tuple[str, ...]) -> None:
        """``schemas`` in place in the file. A file holding other tables, or these with other columns, is refused
        as :attr:`damaged` before anything is written to it: another database given by mistake, or a cache
        damaged. SQLite's own errors are raised as they are."""
        self._refuse_another_database(db, schemas)
        for schema in schemas:
            db.execute(schema)

    def _refuse_another_database(self, db: sqlite3.Connection, schemas: tuple[str, ...]) -> None:
        if held := other_tables(db, schemas):
            loss = f"; {self.loss}" if self.loss else ""
            raise self.damaged(f"{self.path} holds another database ({held}), not {self.what}: nothing was "
                               f"written to it; move it, or delete it if it is only a cache{loss}")

    @contextmanager
    def named_errors(self) -> Iterator[None]:
        """SQLite's errors in the block as :attr:`unavailable` or :attr:`damaged`, naming the file."""
        try:
            yield
        except sqlite3.OperationalError as error:  # the file is not at fault
            fix = f": {self.fix}" if self.fix else ""
            raise self.unavailable(f"{self.path}: {error} ({self.what}{fix})") from error
        except sqlite3.DatabaseError as error:
            if type(error) is not sqlite3.DatabaseError:  # IntegrityError, ProgrammingError ...: a bug, not the file
                raise
            loss = f"; {self.loss}" if self.loss else ""
            raise self.damaged(f"{self.path} is damaged ({error}); it is only a cache: delete or move it "
                               f"({self.what}{loss})") from error


class GoesOnWithoutTheFile:
    """Reads and writes of a cache whose values can be computed again, run so that another process holding the file
    past :data:`BUSY_WAIT_S` does not end the run: a read is then a miss, and a write is skipped (its values are
    computed again by a later run). The first time is one warning naming the file. While the file is found held,
    the next operations try it once without waiting, so that a lock never released costs one wait, not one a
    lookup; the first to get it ends that. A file held when it is opened has its tables checked and made by the
    first operation that gets it. Other errors are :meth:`CacheFile.named_errors`'.

    Each write is one ``BEGIN IMMEDIATE`` transaction: it takes the write lock before reading anything, so SQLite
    waits for it rather than failing at once (a reader turning writer while another holds the lock would deadlock,
    which SQLite answers with an immediate "database is locked")."""

    def __init__(self, file: CacheFile, *schemas: str) -> None:
        self.file = file
        self.held = False  # the last operation found the file held past its wait
        self.skipped_reads = self.skipped_writes = 0
        self._schemas = schemas  # CREATE TABLE IF NOT EXISTS statements
        self._tables_made = False
        self._warned = False

    def connect(self, *, owner: object, check_same_thread: bool = True) -> sqlite3.Connection:
        """:meth:`CacheFile.connect`, but a file held past the wait is opened all the same."""
        db = self.file.open(owner=owner, check_same_thread=check_same_thread)
        try:
            self._attempt(db, True, lambda: None)
        except BaseException:
            db.close()
            raise
        return db

    def read(self, db: sqlite3.Connection, query: Callable[[], T], miss: T) -> T:
        """``query()``, or ``miss`` where the file is held."""
        got, found = self._attempt(db, not self.held, query)
        if not got:
            self.skipped_reads += 1
            return miss
        return found  # type: ignore[return-value]  # what query() returned

    def write(self, db: sqlite3.Connection, statements: Callable[[], object], *, wait: bool | None = None) -> bool:
        """Run ``statements`` in one transaction; False (nothing written) where the file is held. ``wait``: for
        the lock (by default, unless the last operation found the file held) or try once."""
        def transaction() -> None:
            db.execute("BEGIN IMMEDIATE")
            try:
                statements()
                db.commit()
            except BaseException:
                db.rollback()
                raise

        got, _ = self._attempt(db, not self.held if wait is None else wait, transaction)
        if not got:
            self.skipped_writes += 1
        return got

    def _attempt(self, db: sqlite3.Connection, wait: bool, action: Callable[[], T]) -> tuple[bool, T | None]:
        """``(True, action())``, the file's tables made first if they are not yet; ``(False, None)`` where the
        file is held."""
        with self.file.named_errors():
            try:
                with _waiting(db, wait):
                    if not self._tables_made:
                        self.file.make_tables(db, self._schemas)
                        self._tables_made = True
                    result = action()
            except sqlite3.OperationalError as error:
                if not is_locked(error):
                    raise
                if not self._warned:
                    log.warning("%s is held by another process (%s): this run goes on without it while it is: values "
                                "it cannot read are computed, and those it cannot write are computed again by a later "
                                "run", self.file.path, self.file.what)
                    self._warned = True
                self.held = True
                return False, None
        self.held = False
        return True, result


@contextmanager
def _waiting(db: sqlite3.Connection, wait: bool) -> Iterator[None]:
    """The block's statements wait :data:`BUSY_WAIT_S` for a held file, or not at all; later ones wait again."""
    if wait:
        yield
        return
    db.execute("PRAGMA busy_timeout = 0")
    try:
        yield
    finally:
        db.execute(f"PRAGMA busy_timeout = {round(BUSY_WAIT_S * 1000)}")


def other_tables(db: sqlite3.Connection, schemas: tuple[str, ...], *, all_needed: bool = False) -> str | None:
    """``None`` when the tables of ``db`` are those ``schemas`` (CREATE TABLE statements) make, with the same columns
    (some may be missing, unless ``all_needed``); else what ``db`` holds, as "tables name(column, ...), ..." ("no
    tables")."""
    expected = sqlite3.connect(":memory:")
    try:
        for schema in schemas:
            expected.execute(schema)
        wanted = _tables(expected)
    finally:
        expected.close()
    found = _tables(db)
    if all(name in wanted and columns == wanted[name] for name, columns in found.items()) and \
            not (all_needed and wanted.keys() - found.keys()):
        return None
    held = ", ".join(f"{name}({', '.join(column[0] for column in columns)})" for name, columns in found.items())
    return f"tables {held}" if held else "no tables"


def _tables(db: sqlite3.Connection) -> dict[str, list[tuple[str, str, int, int]]]:
    """Each table of ``db`` (SQLite's own left out) with its columns: name, declared type, NOT NULL, primary key."""
    names = [name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                            "AND name NOT LIKE 'sqlite^_%' ESCAPE '^' ORDER BY name")]
    return {name: db.execute('SELECT name, type, "notnull", pk FROM pragma_table_info(?)', (name,)).fetchall()
            for name in names}


def _close(db: sqlite3.Connection) -> None:
    """Close ``db`` for its collected owner. An owner in a reference cycle is collected by whichever thread runs
    the garbage collector: a connection bound to its thread (``check_same_thread``) cannot be closed there, and is
    left to its own deallocation, which closes it (close() raised, printed as "Exception ignored in")."""
    try:
        db.close()
    except sqlite3.ProgrammingError:
        pass
