"""Every SQLite cache reports SQLite's errors, which name no file, as one line of its own error type naming the file."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from benchmark.recommenders.openai_chat import ChatCache
from benchmark.retrieval.cache import CacheError, CacheUnavailable, EmbeddingCache
from reddit_amazon.linking import ShortLinkCache, ShortLinkCacheError, ShortLinkResolution
from reddit_amazon.relevance import AnswerCache, RelevanceError


@dataclass(frozen=True)
class Kind:
    open: Callable[[Path], Any]  # a cache in this folder
    write: Callable[[Any], None]
    read: Callable[[Any], None]
    unavailable: type[Exception]
    damaged: type[Exception]
    what: str
    reads_wait_for_a_writer: bool = True  # False in WAL mode: a lookup reads the last commit instead
    goes_on_while_held: bool = True  # False where the run needs every value in the file: a held file ends it


KINDS = {
    "short links": Kind(lambda folder: ShortLinkCache(folder / "short_links.sqlite"),
                        lambda cache: cache.put(ShortLinkResolution("https://amzn.to/x", "", (), "not found")),
                        lambda cache: cache.get("https://amzn.to/x"),
                        ShortLinkCacheError, ShortLinkCacheError, "the short-link cache"),
    "relevance answers": Kind(lambda folder: AnswerCache(folder / "relevance-cache.sqlite"),
                              lambda cache: cache.put("key", "model", "yes"), lambda cache: cache.get("key"),
                              RelevanceError, RelevanceError, "the relevance answer cache, --llm-cache",
                              reads_wait_for_a_writer=False, goes_on_while_held=False),
    "embeddings": Kind(lambda folder: EmbeddingCache("model", folder),
                       lambda cache: cache.encode(["text"], lambda texts: [[0.0, 1.0]] * len(texts)),
                       lambda cache: cache.encode(["text"], lambda texts: pytest.fail("not cached")),
                       CacheUnavailable, CacheError, "the embedding cache"),
    "openai-chat responses": Kind(lambda folder: ChatCache(folder), lambda cache: cache.put("key", "B000000001"),
                                  lambda cache: cache.get("key"), CacheUnavailable, CacheError,
                                  "the openai-chat response cache"),
}


def _reconnect(cache: Any, uri_query: str = "", timeout: float = 5.0) -> None:
    """Stand-in for what root's tests cannot arrange with permissions: the cache's file opened another way."""
    cache._db.close()
    cache._db = sqlite3.connect(f"{cache.path.as_uri()}{uri_query}", uri=True, timeout=timeout,
                                check_same_thread=False)


def _one_line_naming(error: pytest.ExceptionInfo, path: Path, *words: str) -> None:
    message = str(error.value)
    assert "\n" not in message and str(path) in message, message
    for word in words:
        assert word in message, message


@pytest.mark.parametrize("kind", KINDS.values(), ids=KINDS)
def test_a_damaged_file_is_named_when_opened_and_when_used(kind, tmp_path):
    path = kind.open(tmp_path / "probe").path
    damaged = tmp_path / "damaged" / path.relative_to(tmp_path / "probe")
    damaged.parent.mkdir()
    damaged.write_bytes(b"not a database" * 100)
    with pytest.raises(kind.damaged) as error:
        kind.open(damaged.parent)
    _one_line_naming(error, damaged, "is damaged (file is not a database)", "delete or move it", kind.what)

    # damaged after it was opened: its pages overwritten
    cache = kind.open(tmp_path / "later")
    kind.write(cache)
    data = cache.path.read_bytes()
    cache._db.close()
    cache.path.write_bytes(data[:100] + b"\x07" * (len(data) - 100))
    _reconnect(cache)
    for use in (kind.read, kind.write):
        with pytest.raises(kind.damaged) as error:
            use(cache)
        _one_line_naming(error, cache.path, "is damaged (database disk image is malformed)", kind.what)


@pytest.mark.parametrize("kind", KINDS.values(), ids=KINDS)
def test_a_file_that_cannot_be_opened_written_or_read_is_named(kind, tmp_path):
    path = kind.open(tmp_path / "probe").path
    unopenable = tmp_path / "unopenable" / path.relative_to(tmp_path / "probe")
    unopenable.mkdir(parents=True)  # SQLite cannot open it, as in a folder it may not write in
    with pytest.raises(kind.unavailable) as error:
        kind.open(unopenable.parent)
    _one_line_naming(error, unopenable, "unable to open database file", kind.what)

    read_only = kind.open(tmp_path / "read-only")
    _reconnect(read_only, "?mode=ro")  # a file only readable
    with pytest.raises(kind.unavailable) as error:
        kind.write(read_only)
    _one_line_naming(error, read_only.path, "attempt to write a readonly database", kind.what)

    if kind.goes_on_while_held:
        return  # see test_a_cache_of_values_computed_again_goes_on_while_another_process_holds_it
    locked = kind.open(tmp_path / "locked")
    kind.write(locked)
    _reconnect(locked, timeout=0)
    other = sqlite3.connect(locked.path)
    other.execute("BEGIN EXCLUSIVE")  # another process still writing
    try:
        kind.read(locked)  # WAL mode: reads the last commit
        with pytest.raises(kind.unavailable) as error:
            kind.write(locked)
        _one_line_naming(error, locked.path, "database is locked", kind.what)
    finally:
        other.close()


@pytest.fixture
def short_busy_wait(monkeypatch):
    """The caches' wait for a held file, 0.3 s instead of 5."""
    from reddit_amazon import sqlite_cache

    monkeypatch.setattr(sqlite_cache, "BUSY_WAIT_S", 0.3)
    return 0.3


def _held(path: Path, how: str) -> sqlite3.Connection:
    """Another connection holding ``path``: ``IMMEDIATE`` (writing: others may read) or ``EXCLUSIVE`` (committing:
    others may not read either) until it is closed."""
    other = sqlite3.connect(path, isolation_level=None)
    other.execute(f"BEGIN {how}")
    return other


def _warnings(caplog: pytest.LogCaptureFixture, path: Path) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and str(path) in r.getMessage()]


GOES_ON = {name: kind for name, kind in KINDS.items() if kind.goes_on_while_held}


@pytest.mark.parametrize("how", ["IMMEDIATE", "EXCLUSIVE"])
@pytest.mark.parametrize("kind", GOES_ON.values(), ids=GOES_ON)
def test_a_cache_of_values_computed_again_goes_on_while_another_process_holds_it(kind, how, tmp_path, caplog,
                                                                                  short_busy_wait):
    """Two runs sharing a cache: one writing batch after batch kept the other from the file past SQLite's wait,
    and the other ended with "database is locked" after computing the values it failed to store. A held file is now
    a miss to read and a write skipped, with one warning naming it."""
    cache = kind.open(tmp_path)
    other = _held(cache.path, how)
    try:
        with caplog.at_level("WARNING"):
            kind.write(cache)
            kind.write(cache)
    finally:
        other.close()
    assert len(_warnings(caplog, cache.path)) == 1, caplog.text
    assert kind.what in _warnings(caplog, cache.path)[0]
    kind.write(cache)  # let go: the file is written and read again
    kind.read(cache)


@pytest.mark.parametrize("kind", GOES_ON.values(), ids=GOES_ON)
def test_a_cache_opened_while_another_process_holds_its_file_is_used_once_it_lets_go(kind, tmp_path, caplog,
                                                                                     short_busy_wait):
    """Opening reads the file's tables (to refuse another database) and makes them: a run starting while others
    wrote batch after batch ended there with "database is locked". The first operation to get the file does it."""
    path = kind.open(tmp_path / "probe").path
    for made in (True, False):  # a cache file, and a file with no tables yet
        folder = tmp_path / f"tables made {made}"
        held = folder / path.relative_to(tmp_path / "probe")
        if made:
            kind.write(kind.open(folder))
        else:
            held.parent.mkdir(parents=True)
        other = _held(held, "EXCLUSIVE")
        try:
            with caplog.at_level("WARNING"):
                cache = kind.open(folder)
                kind.write(cache)
        finally:
            other.close()
        assert len(_warnings(caplog, held)) == 1, caplog.text
        kind.write(cache)
        kind.read(cache)
        assert kind.read(kind.open(folder)) is not None  # stored in the file


@pytest.mark.parametrize("kind", ["short links", "openai-chat responses"])
def test_a_lookup_in_a_file_held_by_another_process_is_a_miss(kind, tmp_path, caplog, short_busy_wait):
    kind = KINDS[kind]
    cache = kind.open(tmp_path)
    kind.write(cache)
    assert kind.read(cache) is not None
    other = _held(cache.path, "EXCLUSIVE")
    try:
        with caplog.at_level("WARNING"):
            assert kind.read(cache) is None
    finally:
        other.close()
    assert len(_warnings(caplog, cache.path)) == 1
    assert kind.read(cache) is not None


def test_embeddings_are_computed_while_another_process_holds_the_file_and_stored_once_it_lets_go(
        tmp_path, caplog, short_busy_wait):
    """A held file costs one wait, not one a batch: the batches after it try once and keep what they could not
    write for the next write, which stores them all once the other process lets go."""
    import time

    texts = [f"text {n}" for n in range(200)]

    def compute(batch: list[str]) -> list[list[float]]:
        return [[float(text.split()[1]), 1.0] for text in batch]

    EmbeddingCache("model", tmp_path).encode(["text -1"], compute)
    cache = EmbeddingCache("model", tmp_path)
    other = _held(cache.path, "EXCLUSIVE")
    started = time.monotonic()
    try:
        vectors = cache.encode(texts[:100], compute, batch_size=5)  # 20 batches, the file held throughout
    finally:
        other.close()
    # a wait for the lookup, then one for the first write and one for the last: not 20
    assert time.monotonic() - started < 10 * short_busy_wait
    assert [v[0] for v in vectors] == list(range(100)) and cache.computed == 100
    assert len(_warnings(caplog, cache.path)) == 1
    assert EmbeddingCache("model", tmp_path).unseen(texts[:100]) == texts[:100]  # none stored while held

    holding: list[sqlite3.Connection] = []

    def let_go_at_the_third_batch(batch: list[str]) -> list[list[float]]:
        if batch[0] == texts[110]:
            holding.pop().close()
        elif batch[0] == texts[100]:
            holding.append(_held(cache.path, "IMMEDIATE"))
        return compute(batch)

    cache.encode(texts[100:130], let_go_at_the_third_batch, batch_size=5)
    assert EmbeddingCache("model", tmp_path).unseen(texts[100:130]) == []  # the first two batches came with the third
    assert cache.encode(["text -1"], lambda batch: pytest.fail("read from the file")).shape == (1, 2)


@pytest.mark.parametrize("kind", KINDS.values(), ids=KINDS.keys())
def test_a_cache_nobody_closed_closes_its_connection_when_collected(kind, tmp_path):
    """Retrievers and recommenders hold their caches without a close() of their own: the connection stayed open
    until the interpreter's end (Python 3.13 warns of each one: "unclosed database")."""
    import gc

    cache = kind.open(tmp_path)
    kind.write(cache)
    connection = cache._db
    del cache
    gc.collect()
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        connection.execute("SELECT 1")


@pytest.mark.parametrize("kind", KINDS.values(), ids=KINDS.keys())
def test_a_cache_collected_in_another_thread_closes_without_an_error(kind, tmp_path, monkeypatch):
    """A cache in a reference cycle is collected by whatever thread runs the collector (a download or LLM call
    thread): closing the embedding cache's thread-bound connection there printed a ProgrammingError."""
    import gc
    import sys
    import threading

    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    gc.disable()
    try:
        cache = kind.open(tmp_path)
        cache.cycle = cache
        del cache
        collector = threading.Thread(target=gc.collect)
        collector.start()
        collector.join()
    finally:
        gc.enable()
    assert not unraisable, [u.exc_value for u in unraisable]


def test_a_full_disk_names_the_cache_and_tells_of_reddit_amazon_cache_only_where_it_moves_it(
        tmp_path, monkeypatch, file_size_limit):
    """A build keeps its embeddings under --workdir (cache_dir=), and a full disk there said "point
    $REDDIT_AMAZON_CACHE or cache_dir= at a writable folder": the variable does not move that file."""
    monkeypatch.setenv("REDDIT_AMAZON_CACHE", str(tmp_path / "default"))

    def fill(cache: EmbeddingCache) -> pytest.ExceptionInfo:
        with file_size_limit(cache.path.stat().st_size), pytest.raises(CacheUnavailable) as error:
            cache.encode([f"text {n}" for n in range(1000)], lambda texts: [[0.0, 1.0]] * len(texts))
        return error

    given = fill(EmbeddingCache("model", tmp_path / "work" / "embeddings"))
    _one_line_naming(given, tmp_path / "work" / "embeddings", "(the embedding cache)")
    assert "REDDIT_AMAZON_CACHE" not in str(given.value)
    default = fill(EmbeddingCache("model"))
    _one_line_naming(default, tmp_path / "default", "the embedding cache: point $REDDIT_AMAZON_CACHE")


def test_a_locked_database_is_told_by_its_code_and_on_python_3_10_by_its_message(tmp_path):
    """``sqlite_errorcode`` is Python 3.11's: an error without it (3.10) is told by SQLite's message."""
    import sqlite3

    from reddit_amazon.sqlite_cache import is_locked

    path = tmp_path / "x.sqlite"
    holder = sqlite3.connect(path, timeout=0)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")
    with pytest.raises(sqlite3.OperationalError) as caught:
        sqlite3.connect(path, timeout=0).execute("SELECT * FROM t")
    holder.rollback()
    assert is_locked(caught.value)
    assert is_locked(sqlite3.OperationalError("database is locked"))  # as on 3.10: no sqlite_errorcode
    assert not is_locked(sqlite3.OperationalError("disk I/O error"))
    assert not is_locked(sqlite3.OperationalError("database table is locked"))  # SQLITE_LOCKED, not BUSY


@pytest.mark.parametrize("kind", KINDS.values(), ids=KINDS)
@pytest.mark.parametrize("tables", [["CREATE TABLE notes (title TEXT, body TEXT)"], None],
                         ids=["another database", "its own tables with other columns"])
def test_a_database_of_another_schema_is_refused_and_left_as_it_was(kind, tables, tmp_path):
    """A valid SQLite file of another schema given as a cache (a user's own database, or a cache damaged) had the
    cache's tables added into it, or failed at its first use with "no such column: key" / "table answers has 2
    columns but 4 values were supplied", reported as a file that cannot be written, not as one to move away."""
    path = kind.open(tmp_path / "probe").path
    own = [name for (name,) in sqlite3.connect(path).execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    other = tmp_path / "other" / path.relative_to(tmp_path / "probe")
    other.parent.mkdir()
    db = sqlite3.connect(other)
    for statement in tables or [f"CREATE TABLE {name} (a INTEGER, b INTEGER)" for name in own]:
        db.execute(statement)
    db.commit()
    db.close()
    before = other.read_bytes()
    with pytest.raises(kind.damaged) as error:
        kind.write(kind.open(other.parent))
    _one_line_naming(error, other, "holds another database", "move it, or delete it if it is only a cache", kind.what)
    assert other.read_bytes() == before


@pytest.mark.parametrize("kind", KINDS.values(), ids=KINDS)
def test_an_empty_file_or_a_cache_of_an_earlier_release_is_used(kind, tmp_path):
    """A zero-byte file is an empty database to SQLite: the cache is made in it. A file holding some of the cache's
    tables (an embedding cache from before the writer table) is the cache."""
    path = kind.open(tmp_path / "probe").path
    empty = tmp_path / "empty" / path.relative_to(tmp_path / "probe")
    empty.parent.mkdir()
    empty.write_bytes(b"")
    cache = kind.open(empty.parent)
    kind.write(cache)
    kind.read(cache)
    schema = sqlite3.connect(path).execute("SELECT sql FROM sqlite_master WHERE type = 'table' ORDER BY name").fetchone()
    earlier = tmp_path / "earlier" / path.relative_to(tmp_path / "probe")
    earlier.parent.mkdir()
    db = sqlite3.connect(earlier)
    db.execute(schema[0])
    db.commit()
    db.close()
    cache = kind.open(earlier.parent)
    kind.write(cache)
    kind.read(cache)


def test_vectors_of_another_dimension_written_meanwhile_by_another_process_are_not_joined(tmp_path):
    """The dimension of the file's vectors was read once, before the first batch was computed (or not at all, the
    file held): vectors another process wrote meanwhile, of another dimension, were joined by these in the file, and
    every later run failed in np.stack. It is checked again under the write lock."""
    texts = [f"text {n}" for n in range(10)]
    cache = EmbeddingCache("model", tmp_path)

    def another_process_writes_three_dimensions_first(batch: list[str]) -> list[list[float]]:
        EmbeddingCache("model", tmp_path).encode(["elsewhere"], lambda other: [[1.0, 2.0, 3.0]] * len(other))
        return [[1.0, 2.0]] * len(batch)

    with pytest.raises(CacheError, match="vectors of 3 dimensions"):
        cache.encode(texts, another_process_writes_three_dimensions_first)
    assert EmbeddingCache("model", tmp_path).unseen(texts) == texts


def test_an_answer_the_relevance_cache_could_not_store_leaves_no_transaction_open(tmp_path, short_busy_wait):
    """A put that failed on a held file left its transaction open: close() then could not return the file to a
    rollback journal ("cannot change out of wal mode from within a transaction") and said the latest answers were
    kept in the -wal file, which they were not."""
    cache = AnswerCache(tmp_path / "relevance-cache.sqlite")
    cache.put("key", "model", "yes")
    other = _held(cache.path, "IMMEDIATE")
    try:
        with pytest.raises(RelevanceError, match="database is locked"):
            cache.put("other key", "model", "no")
    finally:
        other.close()
    cache.close()
    db = sqlite3.connect(cache.path)
    assert db.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    assert db.execute("SELECT key FROM answers").fetchall() == [("key",)]
    db.close()


def test_the_writers_of_a_file_another_process_holds_at_the_end_of_a_run_are_unknown_not_an_error(
        tmp_path, caplog, short_busy_wait):
    """results.json's cache_written_with is read when the run has ranked everything: a file another process held
    then past the wait raised CacheUnavailable "database is locked", and the finished run died at its last step.
    The writers are read like the vectors: a file held is one warning, and they are unknown (None, null in
    results.json) rather than a guess; once it is let go they are read again."""
    from benchmark.retrieval.dense import DenseRetriever

    versions = {"sentence-transformers": "1", "torch": "2", "transformers": "3"}

    class Retriever(DenseRetriever):
        model_id = "model"

        def __init__(self) -> None:
            self.cache = EmbeddingCache(self.model_id, tmp_path)

        def _embed(self, texts: list[str]) -> list[list[float]]:
            return [[1.0, 0.0]] * len(texts)

        def _library_versions(self) -> dict[str, str]:
            return versions

    retriever = Retriever()
    retriever.encode(["text"])
    assert retriever.embedding_provenance["cache_written_with"] == [versions]
    other = _held(retriever.cache.path, "EXCLUSIVE")  # another run committing its vectors, for longer than the wait
    try:
        with caplog.at_level("WARNING"):
            assert retriever.embedding_provenance == {"computed": 1, "from_cache": 0, "cache_written_with": None}
            assert retriever.cache.writers() is None
    finally:
        other.close()
    assert len(_warnings(caplog, retriever.cache.path)) == 1, caplog.text
    assert retriever.cache.writers() == [versions]
