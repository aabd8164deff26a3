"""On-disk embedding cache keyed by model + sha256 of the text, so each text is encoded once per model."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from reddit_amazon.sqlite_cache import CacheFile, GoesOnWithoutTheFile

CACHE_ENV = "REDDIT_AMAZON_CACHE"
_SQLITE_MAX_PARAMS = 900


class CacheError(OSError):
    """A cache file SQLite cannot read. It holds nothing that cannot be computed again."""


class CacheUnavailable(OSError):
    """A cache file SQLite cannot open or write (a read-only folder or file, still locked by another process
    after the wait, a full disk): the file is not at fault, and its path is in the message."""


def cache_file(path: Path, what: str, *, in_default_folder: bool) -> CacheFile:
    """``path``, a cache of ``what``, with its SQLite errors as :class:`CacheUnavailable` / :class:`CacheError`.
    Only a file in :func:`default_cache_dir` is moved by $REDDIT_AMAZON_CACHE: a build keeps its embeddings under
    --workdir, where the variable told of on a full disk changed nothing."""
    fix = "point $REDDIT_AMAZON_CACHE or cache_dir= at a writable folder with free space" if in_default_folder else ""
    return CacheFile(path, what, unavailable=CacheUnavailable, damaged=CacheError, fix=fix)


def default_cache_dir() -> Path:
    root = os.environ.get(CACHE_ENV) or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "reddit-amazon"
    return Path(root) / "embeddings"


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class EmbeddingCache:
    """One SQLite file per model. ``encode(texts, compute)`` calls ``compute`` only on texts not seen before.

    Runs may share the file: while another holds it, texts it cannot read are computed, and vectors it cannot
    write are kept for the next batch's write, then left out (:class:`GoesOnWithoutTheFile`). The file stays in
    SQLite's rollback-journal mode: $REDDIT_AMAZON_CACHE may be a home folder that hosts of a cluster share over a
    network file system, where WAL mode (shared memory) would let their writes corrupt the file."""

    def __init__(self, model_id: str, cache_dir: str | os.PathLike | None = None) -> None:
        folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", model_id).strip("_")[:80]
        digest = hashlib.sha256(model_id.encode()).hexdigest()[:12]
        self.path = folder / f"{safe}-{digest}.sqlite"
        self.model_id = model_id
        self._file = cache_file(self.path, "the embedding cache", in_default_folder=cache_dir is None)
        self._shared = GoesOnWithoutTheFile(
            self._file, "CREATE TABLE IF NOT EXISTS embedding (key TEXT PRIMARY KEY, vector BLOB NOT NULL)",
            "CREATE TABLE IF NOT EXISTS writer (versions TEXT PRIMARY KEY)")
        self._db = self._shared.connect(owner=self)
        self.computed = 0  # texts encoded by this instance
        self.from_disk = 0  # texts this instance read from the file instead

    def _select(self, columns: str, keys: Sequence[str]) -> list[tuple]:
        """The rows of ``keys`` that the file holds; those after a chunk it could not read (held) are left out."""
        rows: list[tuple] = []
        for start in range(0, len(keys), _SQLITE_MAX_PARAMS):
            chunk = keys[start:start + _SQLITE_MAX_PARAMS]
            marks = ",".join("?" * len(chunk))
            found = self._shared.read(self._db, lambda: self._db.execute(
                f"SELECT {columns} FROM embedding WHERE key IN ({marks})", chunk).fetchall(), None)
            if found is None:
                break
            rows += found
        return rows

    def _lookup(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        return {key: np.frombuffer(blob, dtype=np.float32) for key, blob in self._select("key, vector", keys)}

    def unseen(self, texts: Iterable[str]) -> list[str]:
        """The distinct ``texts`` the cache holds no vector for, in first-seen order: what :meth:`encode` would
        compute (read without the vectors, for an estimate)."""
        unique = {text_key(text): text for text in texts}
        known = {key for (key,) in self._select("key", list(unique))}
        return [text for key, text in unique.items() if key not in known]

    def encode(self, texts: Sequence[str], compute: Callable[[list[str]], np.ndarray],
               batch_size: int = 1024, written_with: Callable[[], dict[str, str]] = dict) -> np.ndarray:
        """Embeddings of ``texts`` (rows in order). Unique unseen texts go to ``compute`` in batches; the library
        versions ``written_with`` names once ``compute`` has run are recorded as a writer of the file."""
        keys = [text_key(t) for t in texts]
        unique = dict(zip(keys, texts))
        vectors = self._lookup(list(unique))
        self.from_disk += len(vectors)
        missing = [(k, t) for k, t in unique.items() if k not in vectors]
        stored_shape = self._stored_shape() if missing else None
        unwritten: list[tuple[str, bytes]] = []  # computed, not yet in the file: it was held
        for start in range(0, len(missing), batch_size):
            chunk = missing[start:start + batch_size]
            computed = np.asarray(compute([t for _, t in chunk]), dtype=np.float32)
            if stored_shape is not None and computed.shape[1:] != stored_shape:
                raise self._other_shape(computed.shape[1:], stored_shape)
            # Waits for the file unless the last write found it held; the call's last write waits in any case.
            wait = not unwritten or start + batch_size >= len(missing)
            unwritten += [(k, v.tobytes()) for (k, _), v in zip(chunk, computed)]
            if self._write(unwritten, written_with, wait=wait):
                unwritten = []
            stored_shape = computed.shape[1:]
            vectors.update({k: v for (k, _), v in zip(chunk, computed)})
            self.computed += len(chunk)
        if not keys:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([vectors[k] for k in keys])

    def _write(self, rows: list[tuple[str, bytes]], written_with: Callable[[], dict[str, str]], *,
               wait: bool) -> bool:
        def insert() -> None:
            # Checked again under the write lock: the file may have been held when its shape was read, or
            # written since by another process.
            stored = self._db.execute("SELECT vector FROM embedding LIMIT 1").fetchone()
            if stored is not None and len(stored[0]) != len(rows[0][1]):  # float32: 4 bytes a dimension
                raise self._other_shape((len(rows[0][1]) // 4,), (len(stored[0]) // 4,))
            self._db.executemany("INSERT OR REPLACE INTO embedding VALUES (?, ?)", rows)
            if versions := written_with():
                self._db.execute("INSERT OR IGNORE INTO writer VALUES (?)", (json.dumps(versions, sort_keys=True),))

        return self._shared.write(self._db, insert, wait=wait)

    def _other_shape(self, computed: tuple[int, ...], stored: tuple[int]) -> CacheError:
        return CacheError(f"{self.path}: the model answered vectors of shape {computed}, but the cache holds "
                          f"vectors of {stored[0]} dimensions for {self.model_id!r} (did the endpoint change its "
                          "model? delete the file to start over)")

    def _stored_shape(self) -> tuple[int] | None:
        """The shape of the vectors the cache holds (float32: 4 bytes a dimension); None when it holds none (or is
        held by another process)."""
        row = self._shared.read(self._db, lambda: self._db.execute("SELECT vector FROM embedding LIMIT 1").fetchone(),
                                None)
        return None if row is None else (len(row[0]) // 4,)

    def writers(self) -> list[dict[str, str]] | None:
        """The library versions of each process that wrote vectors into the file (none recorded by a release before
        they were: such a file's vectors are of unknown versions). ``None`` where another process holds the file
        (read like the vectors, :class:`GoesOnWithoutTheFile`): a run asks once it has ranked everything, and is not
        ended then for want of this record."""
        rows = self._shared.read(
            self._db, lambda: self._db.execute("SELECT versions FROM writer ORDER BY 1").fetchall(), None)
        return None if rows is None else [json.loads(versions) for (versions,) in rows]

    def close(self) -> None:
        self._db.close()
