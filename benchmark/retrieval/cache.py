"""On-disk embedding cache keyed by model + sha256 of the text, so each text is encoded once per model."""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

CACHE_ENV = "REDDIT_AMAZON_CACHE"
_SQLITE_MAX_PARAMS = 900


class CacheError(OSError):
    """A cache file SQLite cannot read. It holds nothing that cannot be computed again."""


class CacheUnavailable(OSError):
    """A cache file SQLite cannot open or write (a read-only folder or file, still locked by another process
    after the wait, a full disk): the file is not at fault, and its path is in the message."""

    @classmethod
    def of(cls, path: Path, error: sqlite3.OperationalError) -> CacheUnavailable:
        return cls(f"{path}: {error} (an embedding / response cache: point $REDDIT_AMAZON_CACHE or cache_dir= "
                   "at a writable folder)")


def open_cache(path: Path, schema: str, check_same_thread: bool = True) -> sqlite3.Connection:
    """The SQLite file ``path`` with ``schema`` (a CREATE TABLE IF NOT EXISTS) in place."""
    try:
        db = sqlite3.connect(path, check_same_thread=check_same_thread)
    except sqlite3.OperationalError as error:  # "unable to open database file": a folder we may not write in
        raise CacheUnavailable.of(path, error) from error
    try:
        db.execute(schema)
    except sqlite3.OperationalError as error:  # locked, read-only, ...: the file is not at fault
        db.close()
        raise CacheUnavailable.of(path, error) from error
    except sqlite3.DatabaseError as error:  # "file is not a database", "database disk image is malformed"
        db.close()
        raise CacheError(f"{path} is damaged ({error}); it is only a cache: delete or move it") from error
    return db


def default_cache_dir() -> Path:
    root = os.environ.get(CACHE_ENV) or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "reddit-amazon"
    return Path(root) / "embeddings"


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class EmbeddingCache:
    """One SQLite file per model. ``encode(texts, compute)`` calls ``compute`` only on texts not seen before."""

    def __init__(self, model_id: str, cache_dir: str | os.PathLike | None = None) -> None:
        folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        folder.mkdir(parents=True, exist_ok=True)
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", model_id).strip("_")[:80]
        digest = hashlib.sha256(model_id.encode()).hexdigest()[:12]
        self.path = folder / f"{safe}-{digest}.sqlite"
        self.model_id = model_id
        self._db = open_cache(self.path,
                              "CREATE TABLE IF NOT EXISTS embedding (key TEXT PRIMARY KEY, vector BLOB NOT NULL)")
        self.computed = 0  # texts encoded by this instance (the rest came from disk)

    def _lookup(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        for start in range(0, len(keys), _SQLITE_MAX_PARAMS):
            chunk = keys[start:start + _SQLITE_MAX_PARAMS]
            marks = ",".join("?" * len(chunk))
            for key, blob in self._db.execute(f"SELECT key, vector FROM embedding WHERE key IN ({marks})", chunk):
                found[key] = np.frombuffer(blob, dtype=np.float32)
        return found

    def encode(self, texts: Sequence[str], compute: Callable[[list[str]], np.ndarray],
               batch_size: int = 1024) -> np.ndarray:
        """Embeddings of ``texts`` (rows in order). Unique unseen texts go to ``compute`` in batches."""
        keys = [text_key(t) for t in texts]
        unique = dict(zip(keys, texts))
        vectors = self._lookup(list(unique))
        missing = [(k, t) for k, t in unique.items() if k not in vectors]
        for start in range(0, len(missing), batch_size):
            chunk = missing[start:start + batch_size]
            computed = np.asarray(compute([t for _, t in chunk]), dtype=np.float32)
            try:
                with self._db:
                    self._db.executemany("INSERT OR REPLACE INTO embedding VALUES (?, ?)",
                                         [(k, v.tobytes()) for (k, _), v in zip(chunk, computed)])
            except sqlite3.OperationalError as error:  # "database or disk is full" names no file
                raise CacheUnavailable.of(self.path, error) from error
            vectors.update({k: v for (k, _), v in zip(chunk, computed)})
            self.computed += len(chunk)
        if not keys:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([vectors[k] for k in keys])

    def close(self) -> None:
        self._db.close()
