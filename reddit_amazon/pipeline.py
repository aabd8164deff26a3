"""The Reddit stage of the build: dump files -> recommending comments -> rebuilt threads, on datatrove.

Three datatrove stages, each a :class:`~datatrove.pipeline.base.PipelineStep` run by a
``LocalPipelineExecutor`` (default), ``SlurmPipelineExecutor`` or ``RayPipelineExecutor``:

1. **scan** (one task per group of files): prefilter + parse every dump line, keep the comments
   whose body links Amazon products (``ASINs``) or Amazon short links.
2. **collect** (same files, second targeted pass): keep only the comments and submissions of the
   threads the recommendations belong to, spread over ``buckets`` files by thread id.
3. **rebuild** (one task per bucket): index one bucket's threads and rebuild the submission + ancestor
   chain of each recommending comment; write ``conversations/part-XXXXX.jsonl``.

Between the stages the calling process resolves short links (only when asked) and decides which
threads are needed. Every output is written under a temporary name and renamed; each input file
has its own completion marker (its stats file, written last) besides datatrove's per-task markers,
so a rerun after an interruption redoes only unfinished files. Stage folders are named after a
digest of what they depend on, so changed inputs never reuse stale results.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
import time
import zlib
from abc import abstractmethod
from collections import Counter
from collections.abc import Iterator, Sequence
from collections.abc import Set as AbstractSet
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from functools import cached_property
from operator import attrgetter
from pathlib import Path
from typing import Any

import orjson

from reddit_amazon.dumps import (
    DumpReadError,
    DumpSearch,
    FolderFilter,
    LeftOutFolder,
    LinePlace,
    LineProblems,
    ReadProgress,
    iter_chunks,
    iter_selected_lines,
    parse_line,
    place_text,
    search_dump_files,
)
from reddit_amazon.files import (LOCK_FILE, STAGE_STAMP, DamagedFileError, folder_lock, is_json_type, json_type_name,
                                 open_named, printable_path, read_json, read_jsonl, remove_abandoned_temp_files,
                                 write_atomic)
from reddit_amazon.linking import (
    DEFAULT_DEADLINE_S,
    LinkPrefilter,
    extract_asins,
    extract_short_links,
    linked_asins,
)
from reddit_amazon.progress import bar_options
from reddit_amazon.stage_executor import Executor, check_executor, run_on_executor
from reddit_amazon.thread_lines import ThreadLineFinder
from reddit_amazon.threads import (
    Pseudonymizer,
    RebuildCounts,
    RedditComment,
    RedditSubmission,
    ThreadIndex,
    comment_from_dump,
    comment_problems,
    linkable_texts,
    record_from_json,
    submission_from_dump,
    submission_problems,
)

try:  # datatrove is a core dependency; the import is heavy, so only the base class comes in here.
    from datatrove.pipeline.base import PipelineStep
except ImportError as error:  # pragma: no cover - a broken install
    raise ImportError("the Reddit stage needs datatrove: pip install 'datatrove>=0.4'") from error



@dataclass
class RedditStageOptions:
    """How to run the Reddit stage. Only ``salt`` changes the output besides the inputs."""

    salt: str | None = None  # None: a random salt kept in <workdir>/reddit/salt (mode 600)
    resolve_short_links: bool = False  # contact amzn.to / a.co / ... (network)
    short_link_cache: Path | None = None  # default <workdir>/reddit/short_links.sqlite
    short_link_endpoints: dict[str, str] = field(default_factory=dict)  # host -> base URL (proxy / tests)
    short_link_concurrency: int = 2  # requests in flight per short-link host
    short_link_timeout_s: float = 10.0  # each read
    short_link_attempts: int = 4
    short_link_deadline_s: float = DEFAULT_DEADLINE_S  # each link as a whole: its retries and redirect hops
    executor: Executor = "local"
    tasks: int | None = None  # scan/collect tasks; default: one per input file
    workers: int = 1  # tasks run at once (local / ray); slurm: the job array's limit when > 1, else none
    buckets: int | None = None  # rebuild tasks = output shards; default: see default_buckets
    progress: bool = True
    slurm_partition: str | None = None
    slurm_time: str = "24:00:00"
    slurm_mem_per_cpu_gb: int = 4
    slurm_venv: str | None = None
    poll_interval_s: float = 30.0  # how often to look for finished tasks on slurm / ray


@dataclass
class RedditStageResult:
    shards: list[Path]  # <workdir>/reddit/conversations/part-XXXXX.jsonl
    funnel: dict[str, Any]
    incomplete_reasons: dict[str, str] = field(default_factory=dict)  # path -> error with byte offset
    unresolved_short_links: list[str] = field(default_factory=list)
    left_out: list[LeftOutFolder] = field(default_factory=list)  # folders under the inputs not searched, and why

    @property
    def incomplete_files(self) -> list[Path]:
        """Truncated / corrupt dumps: read up to the damage."""
        return [Path(p) for p in self.incomplete_reasons]


# --------------------------------------------------------------------------------------------
# Small helpers: digests, atomic writes, work files and their completion markers, buckets, progress bars
# --------------------------------------------------------------------------------------------


def _digest(*parts: Any) -> str:
    return hashlib.blake2b(orjson.dumps(parts, default=str), digest_size=6).hexdigest()


#: Bumped whenever the stage's output for the same dumps changes (linking, pseudonymisation, field
#: handling): work files and stage stamps of an older version are then not reused.
STAGE_VERSION = 5  # 3: user names hashed in lower case; 4: more mention forms, full target digests;
# 5: ancestors of other threads break a chain, mentions after "." / "-" and in any case are hashed


def _file_key(path: Path) -> str:
    stat = path.stat()
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", path.name)[:80]
    return f"{stem}-{_digest(printable_path(path.resolve()), stat.st_size, stat.st_mtime_ns, STAGE_VERSION)}"


def _temporary(path: Path) -> Path:
    """The hidden sibling a file or folder is written under before it is renamed into place.

    A fixed name, not :func:`reddit_amazon.files.atomic_path`'s host-and-pid one, on purpose. Each name has one
    writer at a time (the stage holds the workdir's lock; a dump file, a bucket, is one datatrove task's), and a task
    killed mid-write (kill -9, a preempted slurm job) is run again under the same name, on whichever host, which
    overwrites what it left. ``files.remove_abandoned_temp_files`` keeps what another host's process left (it cannot
    tell whether that process still runs), so host-and-pid names left by killed tasks on cluster nodes would stay."""
    return path.with_name(f".{path.name}.tmp")


def _write_json_atomic(path: Path, data: Any) -> None:
    write_atomic(path, orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))


def _read_jsonl(path: Path, *, remedy: str) -> Iterator[dict[str, Any]]:
    """The rows of a JSONL work file the stage wrote (:func:`~reddit_amazon.files.read_jsonl`)."""
    return (row for _, row in read_jsonl(path, remedy=remedy))


def _read_records(path: Path, *, remedy: str, extra: str | None = None
                  ) -> Iterator[tuple[int, RedditComment | RedditSubmission, Any]]:
    """``(line number, record, value of its extra key)`` for each row of a JSONL work file of Reddit records
    (``to_json`` rows); ``extra`` is a key the stage added to the record's fields (else the value is None). A row that
    does not make a record is damage, named with its line as :func:`~reddit_amazon.files.read_jsonl` names one."""
    for line, row in read_jsonl(path, remedy=remedy):
        try:
            extra_value = row.pop(extra) if extra else None
            record = record_from_json(row)
        except (KeyError, TypeError) as error:
            raise DamagedFileError(f"{path}:{line}: damaged, not a Reddit record ({error!r}); {remedy}") from None
        yield line, record, extra_value


def _misread_field(record: RedditComment | RedditSubmission) -> str | None:
    """Which field of a record read from a work file is not of the JSON type the stage writes there, or ``None``."""
    created = record.created_utc
    if created is not None and type(created) is not int:  # true/false are no integers either
        return "'created_utc' is not a JSON integer or null"
    for name, value in zip(_TEXT_FIELDS[type(record)], _TEXT_VALUES[type(record)](record)):
        if type(value) is not str:
            return f"{name!r} is not a JSON string"
    return None


#: The fields of each kind of record that hold a string: all but ``created_utc``, and how to read them at once.
_TEXT_FIELDS = {kind: tuple(field.name for field in fields(kind) if field.name != "created_utc")
                for kind in (RedditComment, RedditSubmission)}
_TEXT_VALUES = {kind: attrgetter(*names) for kind, names in _TEXT_FIELDS.items()}


def _redo_remedy(marker: Path, what: str) -> str:
    """What to do about a damaged work file of the file (or bucket) whose completion marker is ``marker``."""
    return f"delete {marker} and rerun the stage: {what} again"


def _read_marker(marker: Path, what: str, keys: Sequence[str]) -> dict[str, Any]:
    """The stats a finished file (or bucket) left as its completion marker; a damaged one, one lacking any of
    ``keys`` (the stats read as they are; counts are read as 0 when absent), or one holding a value of another JSON
    type than the stage writes there (:func:`_misread_value`), names what deleting it redoes."""
    remedy = _redo_remedy(marker, what)
    stats = read_json(marker, remedy=remedy)
    _require_keys(marker, stats, keys, remedy=remedy)
    if wrong := _misread_value(stats):
        raise DamagedFileError(f"{marker}: damaged, {wrong}; {remedy}")
    return stats


#: The JSON type of each value of a completion marker that is not a count (a count is an integer), and of each
#: value in its ``problems`` that is not a count.
_MARKER_VALUE_TYPES: dict[str, type] = {"path": str, "error": str, "problems": dict, "short_links": list}
_PROBLEMS_VALUE_TYPES: dict[str, type] = {"examples": list, "first_bad_lines": list}
#: The keys and JSON types of each of ``problems["first_bad_lines"]`` (LineProblems.add).
_BAD_LINE_TYPES: dict[str, type] = {"line": int, "byte": int, "problem": str, "why": str}


def _misread_value(stats: dict[str, Any]) -> str | None:
    """What in a marker's ``stats`` is not of the JSON type the stage wrote there (said as "'problems' is not a JSON
    object"), or ``None``: the stats are summed and read as they are, so a string count or an array of problems
    ended a rerun in a TypeError or AttributeError."""
    for key, value in stats.items():
        if wrong := _wrong_type(repr(key), value, _MARKER_VALUE_TYPES.get(key, int)):
            return wrong
    for link in stats.get("short_links", []):
        if wrong := _wrong_type("a 'short_links' item", link, str):
            return wrong
    problems = stats.get("problems", {})
    for key, value in problems.items():
        if wrong := _wrong_type(f"'problems' {key!r}", value, _PROBLEMS_VALUE_TYPES.get(key, int)):
            return wrong
    for example in problems.get("examples", []):
        if wrong := _wrong_type("a 'problems' 'examples' item", example, str):
            return wrong
    for bad_line in problems.get("first_bad_lines", []):
        if wrong := _wrong_type("a 'problems' 'first_bad_lines' item", bad_line, dict):
            return wrong
        for key, kind in _BAD_LINE_TYPES.items():
            if wrong := _wrong_type(f"a 'problems' 'first_bad_lines' item's {key!r}", bad_line.get(key), kind):
                return wrong
    return None


def _wrong_type(where: str, value: Any, kind: type) -> str | None:
    return None if is_json_type(value, kind) else f"{where} is not a JSON {json_type_name(kind)}"


def _require_keys(where: str | Path, row: dict[str, Any], keys: Sequence[str], *, remedy: str) -> None:
    """A work file's object lacking any of ``keys`` is a :class:`~reddit_amazon.files.DamagedFileError`."""
    if missing := [key for key in keys if key not in row]:
        raise DamagedFileError(f"{where}: damaged, lacks {', '.join(map(repr, missing))}; {remedy}")


#: What the stage reads from each kind of completion marker besides its counts.
_SCAN_MARKER_KEYS = ("path", "error", "problems")
_COLLECT_MARKER_KEYS = ("problems", "short_links")
_REBUILD_MARKER_KEYS = ("conversations",)
#: The keys of a hits row: a comment's fields (it is rebuilt from them) and its links.
_HIT_KEYS = ("kind", *(comment_field.name for comment_field in fields(RedditComment)), "asins", "short_links")


#: Input bytes per rebuild bucket by default: a rebuild task holds one bucket's collected threads in memory,
#: so one large monthly dump (one task) must still be spread over many buckets.
BUCKET_INPUT_BYTES = 64 * 2**20
MAX_BUCKETS = 256


def default_buckets(files: Sequence[Path], tasks: int) -> int:
    """Buckets when none are asked for: one per task, and at least one per ``BUCKET_INPUT_BYTES`` of
    input (at most ``MAX_BUCKETS``), so the rebuild's memory does not grow with the size of a single dump."""
    by_size = -(-sum(path.stat().st_size for path in files) // BUCKET_INPUT_BYTES)
    return max(1, min(max(tasks, by_size), MAX_BUCKETS))


def _bucket_of(thread_id: str, buckets: int) -> int:
    return zlib.crc32(thread_id.encode()) % buckets


def _progress_bar(path: Path, enabled: bool, rank: int):
    from tqdm import tqdm

    return tqdm(
        total=path.stat().st_size,
        desc=path.name[:40],
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        leave=rank == 0,
        **bar_options(enabled, position=rank, mininterval=0.5),
    )


def _metered(chunks: Iterator[bytes], progress: ReadProgress, bar) -> Iterator[bytes]:
    """Chunks, advancing ``bar`` (compressed MB/s) and showing lines/s and uncompressed MB/s."""
    started = time.perf_counter()
    shown = 0
    last_postfix = 0.0
    for chunk in chunks:
        yield chunk
        bar.update(progress.compressed_bytes - shown)
        shown = progress.compressed_bytes
        now = time.perf_counter()
        if not bar.disable and now - last_postfix > 0.5:
            elapsed = max(now - started, 1e-9)
            bar.set_postfix_str(
                f"{progress.lines / elapsed:,.0f} lines/s, "
                f"{progress.uncompressed_bytes / elapsed / 2**20:,.0f} MB/s raw",
                refresh=False,
            )
            last_postfix = now


# --------------------------------------------------------------------------------------------
# Stage 1: scan for recommending comments
# --------------------------------------------------------------------------------------------


def scan_file(path: Path, hits_path: Path, *, short_links: bool = True, progress_bar=None) -> dict[str, Any]:
    """Scan one dump for comments that link Amazon products; write them to ``hits_path``; return stats.

    ``short_links=False`` skips the prefilter pass for "a.co/" links (which only resolution can use).
    """
    progress = ReadProgress()
    problems = LineProblems()
    place = LinePlace()
    counts: Counter[str] = Counter()
    error = ""
    temporary = _temporary(hits_path)
    chunks = iter_chunks(path, progress)
    if progress_bar is not None:
        chunks = _metered(chunks, progress, progress_bar)
    with open_named(temporary) as out:  # a full disk names the file
        try:
            for line in iter_selected_lines(chunks, LinkPrefilter(short_links=short_links), progress, place):
                counts["prefilter_hits"] += 1
                record = parse_line(line, problems, place)
                if record is None:
                    continue
                counts["parsed"] += 1
                if "body" not in record:
                    if "title" in record:
                        counts["submissions_with_amazon_text"] += 1
                    else:
                        problems.add("missing_fields", line, place, comment_problems(record))
                    continue
                comment = comment_from_dump(record)
                if comment is None:
                    problems.add("missing_fields", line, place, comment_problems(record))
                    continue
                asins = extract_asins(comment.body)
                links = extract_short_links(comment.body)
                if not asins and not links:
                    counts["prefilter_without_product_link"] += 1
                    continue
                counts["comments_with_links"] += 1
                counts["asins_linked"] += len(asins)
                counts["short_links_found"] += len(links)
                out.write(orjson.dumps({**comment.to_json(), "asins": asins, "short_links": links}) + b"\n")
        except DumpReadError as read_error:
            error = read_error.detail
    os.replace(temporary, hits_path)
    return {
        "path": printable_path(path),
        "error": error,
        "lines_read": progress.lines,
        "compressed_bytes": progress.compressed_bytes,
        "uncompressed_bytes": progress.uncompressed_bytes,
        "problems": problems.as_dict(),
        **counts,
    }


class _FilesStep(PipelineStep):
    """A step over input files: task ``rank`` takes files ``rank, rank + world_size, ...``.

    Each file's stats JSON is its completion marker: written last, so a file whose marker exists
    is never read again, even when the task that read it was interrupted later.
    """

    def __init__(self, files: Sequence[str], out_dir: str, progress: bool, keys: Sequence[str] | None = None):
        super().__init__()
        self.files = list(files)
        # The keys the stage computed once: a file that grows or is touched while the run goes on (a download
        # still being written) keeps the key the stage will look for.
        self.keys = list(keys) if keys is not None else [_file_key(Path(name)) for name in self.files]
        self.out_dir = out_dir
        self.progress = progress

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        out_dir = Path(self.out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, key in list(zip(self.files, self.keys, strict=True))[rank::world_size]:
            path = Path(name)
            marker = out_dir / f"{key}.json"
            if marker.exists():
                self.stat_update("files_already_done")
                continue
            with _progress_bar(path, self.progress, rank) as bar, self.track_time(unit="file"):
                stats = self.process_file(path, out_dir, key, bar)
            _write_json_atomic(marker, stats)
            self.stat_update("files_done")
            self.stat_update("lines_read", value=stats["lines_read"], unit="file")
        if data:
            yield from data

    @abstractmethod
    def process_file(self, path: Path, out_dir: Path, key: str, bar) -> dict[str, Any]:
        """Read ``path``, write its outputs under ``out_dir`` (names starting with ``key``), return its stats."""


class ScanDumpsStep(_FilesStep):
    name = "🔎 scan dumps for Amazon links"
    type = "📖 - READER"

    def __init__(self, files: Sequence[str], out_dir: str, progress: bool, short_links: bool,
                 keys: Sequence[str] | None = None):
        super().__init__(files, out_dir, progress, keys)
        self.short_links = short_links

    def process_file(self, path: Path, out_dir: Path, key: str, bar) -> dict[str, Any]:
        return scan_file(path, out_dir / f"{key}.hits.jsonl", short_links=self.short_links, progress_bar=bar)


# --------------------------------------------------------------------------------------------
# Stage 2: collect the needed threads
# --------------------------------------------------------------------------------------------


def collect_file(
    path: Path, out_dir: Path, needed: ThreadLineFinder | AbstractSet[bytes], buckets: int, *, progress_bar=None
) -> dict[str, Any]:
    """Write the comments / submissions of the ``needed`` threads in ``path`` to ``out_dir/bucket-XXXXX.jsonl``."""
    progress = ReadProgress()
    problems = LineProblems()
    place = LinePlace()
    counts: Counter[str] = Counter()
    short_links: dict[str, None] = {}
    error = ""
    finder = needed if isinstance(needed, ThreadLineFinder) else ThreadLineFinder(needed)

    temporary_dir = _temporary(out_dir)
    shutil.rmtree(temporary_dir, ignore_errors=True)
    temporary_dir.mkdir(parents=True)
    handles: dict[int, Any] = {}
    chunks = iter_chunks(path, progress)
    if progress_bar is not None:
        chunks = _metered(chunks, progress, progress_bar)
    try:
        for line in iter_selected_lines(chunks, finder, progress, place):
            record = parse_line(line, problems, place)
            if record is None:
                continue
            kept: RedditComment | RedditSubmission | None
            if "body" in record:
                kept = comment_from_dump(record)
                thread_id = kept.link_id if kept else ""
            else:
                kept = submission_from_dump(record)
                thread_id = kept.id if kept else ""
            if kept is None:
                why = comment_problems(record) if "body" in record else submission_problems(record)
                problems.add("missing_fields", line, place, why)
                continue
            if thread_id.encode() not in finder.wanted:
                continue  # an unrelated id matched (a nested object's id, or a comment id equal to a thread id)
            counts["comments_collected" if isinstance(kept, RedditComment) else "submissions_collected"] += 1
            for text in linkable_texts(kept):
                short_links.update(dict.fromkeys(extract_short_links(text)))
            bucket = _bucket_of(thread_id, buckets)
            handle = handles.get(bucket)
            if handle is None:
                handle = handles[bucket] = open_named(temporary_dir / f"bucket-{bucket:05d}.jsonl")
            handle.write(orjson.dumps(kept.to_json()) + b"\n")
    except DumpReadError as read_error:
        error = read_error.detail
    finally:
        for handle in handles.values():
            handle.close()
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(temporary_dir, out_dir)
    return {
        "path": printable_path(path),
        "error": error,
        "lines_read": progress.lines,
        "problems": problems.as_dict(),
        "short_links": list(short_links),
        **counts,
    }


class CollectThreadsStep(_FilesStep):
    name = "🧵 collect needed threads"
    type = "📖 - READER"

    def __init__(self, files: Sequence[str], out_dir: str, progress: bool, needed_path: str, buckets: int,
                 keys: Sequence[str] | None = None):
        super().__init__(files, out_dir, progress, keys)
        self.needed_path = needed_path
        self.buckets = buckets

    @cached_property
    def needed(self) -> ThreadLineFinder:
        """Read once per task, not once per file: the list can hold millions of thread ids."""
        return ThreadLineFinder(Path(self.needed_path).read_bytes().split())

    def process_file(self, path: Path, out_dir: Path, key: str, bar) -> dict[str, Any]:
        return collect_file(path, out_dir / key, self.needed, self.buckets, progress_bar=bar)


# --------------------------------------------------------------------------------------------
# Stage 3: rebuild conversations, one bucket per task
# --------------------------------------------------------------------------------------------


class RebuildThreadsStep(PipelineStep):
    name = "🧩 rebuild threads"
    type = "✍️ - WRITER"

    def __init__(
        self, buckets: int, targets_dir: str, collect_dir: str, short_links_path: str, salt_path: str, out_dir: str,
        file_keys: Sequence[str],
    ):
        super().__init__()
        self.buckets = buckets
        # The collected files in input order (sorted paths): a record found in two dumps (two editions of one
        # subreddit dump, both named X_comments.zst) is taken from the same file whatever the folders' absolute
        # paths and the files' mtimes, which the collect folders' names hash.
        self.file_keys = list(file_keys)
        self.targets_dir = targets_dir
        self.collect_dir = collect_dir
        self.short_links_path = short_links_path
        self.salt_path = salt_path  # the salt itself stays out of datatrove's executor.json
        self.out_dir = out_dir

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        out_dir = Path(self.out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        short_links_path = Path(self.short_links_path)
        short_links = read_json(short_links_path, remedy=f"delete {short_links_path} and rerun the stage: it is "
                                                         "written again")
        pseudonymize = Pseudonymizer(Path(self.salt_path).read_text(encoding="utf-8").strip())

        def asins_of(text: str) -> list[str]:
            return linked_asins(text, short_links)

        for bucket in range(rank, self.buckets, world_size):
            marker = out_dir / f"part-{bucket:05d}.json"
            if marker.exists():
                continue
            with self.track_time(unit="bucket"):
                try:
                    counts = self._rebuild_bucket(bucket, out_dir, pseudonymize, asins_of)
                except (TypeError, AttributeError):
                    self._name_misread_row(bucket)
                    raise
            _write_json_atomic(marker, asdict(counts))
            self.stat_update("conversations", value=counts.conversations, unit="bucket")
        if data:
            yield from data

    def _rebuild_bucket(self, bucket: int, out_dir: Path, pseudonymize: Pseudonymizer, asins_of) -> RebuildCounts:
        collected, (targets_path, remedy) = self._inputs(bucket)
        index = ThreadIndex()
        for path, collected_remedy in collected:
            index.add_all(record for _, record, _ in _read_records(path, remedy=collected_remedy))
        counts = RebuildCounts(duplicate_records=index.duplicates)
        targets: list[tuple[RedditComment, list[str]]] = []
        for line, record, gt_items in (_read_records(targets_path, remedy=remedy, extra="gt_items")
                                       if targets_path.exists() else ()):
            if not isinstance(record, RedditComment) or not isinstance(gt_items, list) \
                    or not all(type(item) is str for item in gt_items):
                raise DamagedFileError(f"{targets_path}:{line}: damaged, not a comment with a list of gt_items "
                                       f"(record {record.id}); {remedy}")
            targets.append((record, gt_items))
        targets.sort(key=lambda target: (target[0].created_utc or 0, target[0].id))
        output = out_dir / f"part-{bucket:05d}.jsonl"
        temporary = _temporary(output)
        with open_named(temporary) as out:
            for comment, gt_items in targets:
                conversation = index.conversation(comment, gt_items, pseudonymize, asins_of, counts)
                if conversation is not None:
                    out.write(orjson.dumps(conversation.to_row()) + b"\n")
        os.replace(temporary, output)
        return counts

    def _inputs(self, bucket: int) -> tuple[list[tuple[Path, str]], tuple[Path, str]]:
        """``(path, what to do when it is damaged)`` of each of the bucket's collected-threads files there are, in
        input order, and of its targets file (which may be missing: no target in that bucket)."""
        name = f"bucket-{bucket:05d}.jsonl"
        collected = [(folder / name, _redo_remedy(folder.with_name(f"{folder.name}.json"),
                                                  "that dump's threads are collected"))
                     for folder in (Path(self.collect_dir) / key for key in self.file_keys) if (folder / name).exists()]
        targets = Path(self.targets_dir) / name
        return collected, (targets, f"delete {targets.parent} and rerun the stage: it is written again")

    def _name_misread_row(self, bucket: int) -> None:
        """After the bucket's rebuild failed on a value of the wrong type: the first row of its inputs holding a field
        of another JSON type than the stage writes there (``created_utc`` "soon", a ``null`` body), as a
        :class:`DamagedFileError` naming its file and line. Only then, not as every row is read: checking every row
        took ~0.5 us of CPU a row, 2-11% of a bucket's rebuild. Returns when no row is, the error being another."""
        collected, (targets_path, targets_remedy) = self._inputs(bucket)
        inputs: list[tuple[Path, str, str | None]] = [(path, remedy, None) for path, remedy in collected]
        if targets_path.exists():
            inputs.append((targets_path, targets_remedy, "gt_items"))
        for path, remedy, extra in inputs:
            for line, record, _ in _read_records(path, remedy=remedy, extra=extra):
                if wrong := _misread_field(record):
                    raise DamagedFileError(f"{path}:{line}: damaged, {wrong}; {remedy}") from None


# --------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------


def _salt_file(stage_dir: Path, salt: str | None) -> Path:
    path = stage_dir / "salt"
    if salt is not None and not salt.strip():
        raise ValueError("the pseudonymisation salt must not be empty")
    if salt is None and path.exists():
        kept = _kept_salt(path)
        if kept is None:
            raise DamagedFileError(f"{path}: damaged, not UTF-8 text; {_SALT_REMEDY}")
        if not kept:
            raise ValueError(f"{path} is empty: {_SALT_REMEDY}")
        return path
    wanted = salt.strip() if salt is not None else secrets.token_hex(16)
    if not path.exists() or _kept_salt(path) != wanted:  # a damaged one is replaced by the salt given
        write_atomic(path, wanted.encode("utf-8"), mode=0o600)  # private from its first byte (mkstemp)
    return path


#: What to do about a salt file that is empty or damaged: its pseudonyms cannot be made again without the salt.
_SALT_REMEDY = ("pass the salt of its earlier runs with --salt (or REDDIT_AMAZON_SALT), or delete it to draw a new "
                "one (authors then get other pseudonyms than in the earlier runs' conversations)")


def _kept_salt(path: Path) -> str | None:
    """The salt kept in ``path`` (stripped), or None where its bytes are not UTF-8 (a damaged file)."""
    try:
        return path.read_bytes().decode("utf-8").strip()
    except UnicodeDecodeError:
        return None


def kept_pseudonymizer(workdir: str | os.PathLike) -> Pseudonymizer | None:
    """The pseudonyms the Reddit stage of ``workdir`` gave authors, made with the salt it keeps there (None where it
    keeps none that can be read)."""
    path = Path(workdir) / "reddit" / "salt"
    salt = _kept_salt(path) if path.is_file() else None
    return Pseudonymizer(salt) if salt else None


def _resolve(urls: list[str], workdir_stage: Path,
             options: RedditStageOptions) -> tuple[dict[str, list[str]], set[str]]:
    """``({short link: ASINs} of the resolved links, the links that got no answer)``; a definitive answer
    without a product (404, a search page) is neither."""
    if not urls or not options.resolve_short_links:
        return {}, set()
    from reddit_amazon.linking import ShortLinkResolver

    resolver = ShortLinkResolver(
        options.short_link_cache or workdir_stage / "short_links.sqlite",
        per_host_concurrency=options.short_link_concurrency,
        timeout_s=options.short_link_timeout_s,
        attempts=options.short_link_attempts,
        deadline_s=options.short_link_deadline_s,
        endpoints=options.short_link_endpoints,
    )
    try:
        resolutions = resolver.resolve_all(urls, progress=options.progress)
    finally:
        resolver.close()
    return ({url: list(r.asins) for url, r in resolutions.items() if r.resolved},
            {url for url, r in resolutions.items() if r.unreachable})


def _publish(parts: list[Path], destination: Path) -> list[Path]:
    """Make ``destination`` hold exactly ``parts`` (hard links, or copies across file systems)."""
    destination.mkdir(parents=True, exist_ok=True)
    published = []
    for part in parts:
        target = destination / part.name
        published.append(target)
        # Already there (an earlier run linked it): a second link renamed onto it would stay, as POSIX renames
        # nothing between two links of one file.
        if target.exists() and os.path.samefile(part, target):
            continue
        temporary = _temporary(target)
        temporary.unlink(missing_ok=True)
        try:
            os.link(part, temporary)
        except OSError:
            shutil.copyfile(part, temporary)
        os.replace(temporary, target)
    keep = {p.name for p in published}
    for stale in destination.glob("*.jsonl"):
        if stale.name not in keep:
            stale.unlink()
    for leftover in destination.glob(".*.jsonl.tmp"):  # of a killed run, or left by versions before the check above
        leftover.unlink()
    return published


def _targets_by_bucket(
    hits: dict[str, dict[str, Any]], resolved: dict[str, list[str]], buckets: int, counts: Counter[str]
) -> dict[int, list[dict[str, Any]]]:
    """Recommending comments with their final ``gt_items``, grouped by the bucket of their thread."""
    targets: dict[int, list[dict[str, Any]]] = {}
    for hit in hits.values():
        gt_items = linked_asins(hit["body"], resolved) if hit["short_links"] else hit["asins"]
        if not gt_items:
            counts["dropped_only_unresolved_short_links"] += 1
            continue
        target = {k: v for k, v in hit.items() if k not in ("asins", "short_links")}
        target["gt_items"] = gt_items
        targets.setdefault(_bucket_of(hit["link_id"], buckets), []).append(target)
    return targets


def _write_targets(work_dir: Path, targets: dict[int, list[dict[str, Any]]], needed: list[str]) -> tuple[Path, str]:
    """``targets-<digest>/bucket-XXXXX.jsonl`` + ``needed_threads.txt``, written once (temp dir, rename).

    The digest covers every field of every target (not only its id and ASINs): an edited or re-downloaded
    dump that changes a comment's text or thread must not find the old targets under the same name.
    """
    digest = _digest(sorted((b, sorted(orjson.dumps(t, option=orjson.OPT_SORT_KEYS).decode() for t in rows))
                            for b, rows in targets.items()))
    targets_dir = work_dir / f"targets-{digest}"
    if not targets_dir.exists():
        temporary_dir = _temporary(targets_dir)
        shutil.rmtree(temporary_dir, ignore_errors=True)
        temporary_dir.mkdir(parents=True)
        for bucket, rows in targets.items():
            with open_named(temporary_dir / f"bucket-{bucket:05d}.jsonl") as out:
                out.write(b"".join(orjson.dumps(r) + b"\n" for r in rows))
        with open_named(temporary_dir / "needed_threads.txt") as out:
            out.write(("\n".join(needed) + "\n").encode())
        os.replace(temporary_dir, targets_dir)
    return targets_dir, digest


def dump_files_outside(inputs: Sequence[str | os.PathLike], workdir: str | os.PathLike) -> DumpSearch:
    """The dump files of ``inputs`` without the work files under ``workdir``, nor the files of other folders this
    package wrote (:func:`reddit_amazon_outputs`).

    The work files and shards are .jsonl: with the workdir inside an input folder ("dumps/ --workdir
    dumps/work") a rerun would read them as dumps. Dumps kept inside the workdir ("work/dumps --workdir
    work", "dumps/ --workdir .") are named by an input inside it, and stay.
    """
    work = Path(workdir).resolve()
    inside = [r for r in (Path(i).resolve() for i in inputs) if r != work and r.is_relative_to(work)]
    search = search_dump_files(inputs, reddit_amazon_outputs(work))
    files = [p for p in search.files if not p.is_relative_to(work / "reddit")
             and (not p.is_relative_to(work) or any(p.is_relative_to(r) for r in inside))]
    return DumpSearch(files, search.left_out)


#: What a Reddit stage leaves in ``<workdir>/reddit`` once started (the lock first, then the salt; a build adds its
#: stamp), interrupted or not: any of them tells a work folder, whose .jsonl work files and shards are no dumps.
WORK_FOLDER_MARKERS = (LOCK_FILE, "salt", STAGE_STAMP)


def reddit_amazon_outputs(workdir: Path) -> FolderFilter:
    """Leaves out of the search for dumps the work folders of other runs (``reddit/`` holding a
    :data:`WORK_FOLDER_MARKERS`) and dataset folders (an import's ``lavic_source/`` holds the release's .jsonl),
    deciding from each folder's listing. ``workdir`` itself is left to :func:`dump_files_outside`, which keeps the
    dumps of an input inside it."""
    from reddit_amazon.dataset_folder import MANIFEST, has_dataset_manifest

    def why(folder: Path, names: frozenset[str]) -> str | None:
        if "reddit" in names and folder != workdir:  # the search hands resolved folders
            marker = next((m for m in WORK_FOLDER_MARKERS if (folder / "reddit" / m).exists()), None)
            if marker is not None:
                return f"a reddit-amazon work folder (it holds reddit/{marker}), not dumps"
        if MANIFEST in names and has_dataset_manifest(folder):
            return f"a reddit-amazon dataset folder (its {MANIFEST}), not dumps"
        return None

    return why


def run_reddit_stage(inputs: Sequence[str | os.PathLike], workdir: str | os.PathLike,
                     options: RedditStageOptions) -> RedditStageResult:
    """Dump files -> ``<workdir>/reddit/conversations/*.jsonl`` (``Conversation.to_row()`` lines, domain "").

    ``inputs`` are dump files or folders of them (``RC_*.zst``, ``RS_*.zst``, ``<sub>_comments.zst``,
    ``<sub>_submissions.zst``, ``.jsonl`` / ``.ndjson``); comments and submissions may come in any
    files. Also writes ``<workdir>/reddit/funnel.json``. Rerunning with the same inputs reuses all
    finished work. A run while another, or a build, holds :func:`reddit_stage_lock` on ``workdir`` is refused
    (:class:`~reddit_amazon.files.FolderBusyError`). A ``workdir`` that is, or lies in, a dataset folder is refused
    before anything is written: its work files would be mixed into the dataset (``build`` refuses it too).
    """
    from reddit_amazon.dataset_folder import dataset_folder_holding

    check_executor(options)  # before the dumps are listed: a big tree takes a while
    if (dataset := dataset_folder_holding(workdir)) is not None:
        where = "is" if dataset == Path(workdir).resolve() else "lies in"
        raise ValueError(f"workdir {printable_path(workdir)} {where} the dataset folder {printable_path(dataset)}: "
                         "its work files would be mixed into the dataset; choose another folder")
    with reddit_stage_lock(workdir):
        search = dump_files_outside(inputs, workdir)
        result = run_reddit_stage_on_files(search.files, workdir, options)
    result.left_out = search.left_out
    return result


@contextmanager
def reddit_stage_lock(workdir: str | os.PathLike) -> Iterator[None]:
    """Hold the lock of ``<workdir>/reddit`` for the block. A run of the stage holds it while it writes there; a
    build holds it from checking the stage's outputs against their stamp until it has read them (they are read
    later, by the catalog stage), so that no run of the stage on its own replaces them in between."""
    with folder_lock(Path(workdir) / "reddit", "Reddit stage or build"):
        yield


def remove_abandoned_writes(workdir: str | os.PathLike) -> None:
    """Delete the temporary files that processes of this host killed mid-write left in ``<workdir>/reddit`` and its
    work folders (markers, the salt, the funnel: :func:`~reddit_amazon.files.write_atomic`'s host-and-pid names);
    a file of a process still running is kept. The fixed names of :func:`_temporary` are overwritten by the rerun
    instead."""
    stage_dir = Path(workdir) / "reddit"
    if stage_dir.is_dir():
        remove_abandoned_temp_files(stage_dir)
    for folder, _, _ in os.walk(stage_dir / "work"):
        remove_abandoned_temp_files(Path(folder))


def run_reddit_stage_on_files(files: Sequence[Path], workdir: str | os.PathLike,
                              options: RedditStageOptions) -> RedditStageResult:
    """:func:`run_reddit_stage` on the dump files :func:`dump_files_outside` listed (a build lists them once), by a
    caller holding :func:`reddit_stage_lock` on ``workdir``."""
    _refuse_unusable_dumps(files, workdir)
    stage_dir = Path(workdir) / "reddit"
    stage_dir.mkdir(parents=True, exist_ok=True)
    remove_abandoned_writes(workdir)
    # A build's record that this folder holds its Reddit stage stops being true now (this run may have other
    # options, such as another salt): the build runs the stage again instead of reusing these outputs.
    (stage_dir / STAGE_STAMP).unlink(missing_ok=True)
    run = _StageRun(stage_dir, [str(p) for p in files], [_file_key(p) for p in files],
                    tasks=max(1, min(options.tasks or len(files), len(files))),
                    buckets=max(1, options.buckets or default_buckets(files, options.tasks or len(files))),
                    options=options)
    salt_path = _salt_file(stage_dir, options.salt)  # before the scan: a bad salt fails at once

    scan_stats, hits = _scan(run)
    funnel_extra: Counter[str] = Counter()
    found = sum(s.get("comments_with_links", 0) for s in scan_stats)
    funnel_extra["duplicate_recommending_comments"] = found - len(hits)
    asked = {u for h in hits.values() for u in h["short_links"]}
    resolved, unreachable = _resolve(sorted(asked), stage_dir, options)
    targets = _targets_by_bucket(hits, resolved, run.buckets, funnel_extra)
    needed = sorted({t["link_id"] for bucket in targets.values() for t in bucket})
    targets_dir, targets_digest = _write_targets(stage_dir / "work", targets, needed)

    collected = _collect(run, needed, targets_dir)
    # Links asked about in this run already (hits) are not asked again: a failed one failed a moment ago.
    context_links = [u for s in collected.stats for u in s["short_links"] if u not in resolved and u not in asked]
    resolved_in_context, unreachable_in_context = _resolve(context_links, stage_dir, options)
    resolved.update(resolved_in_context)
    short_links_path = _write_short_links(stage_dir / "work", resolved)

    rebuilt = _rebuild(run, collected, targets_dir, targets_digest, short_links_path, salt_path)
    shards = _publish([rebuilt.folder / f"part-{b:05d}.jsonl" for b in range(run.buckets)], stage_dir / "conversations")

    funnel = _funnel(
        scan_stats, collected.stats, rebuilt.stats, funnel_extra, hits, targets, needed, resolved,
        sorted(asked | set(context_links)), options,
    )
    _write_json_atomic(stage_dir / "funnel.json", funnel)
    unresolved = sorted(unreachable | unreachable_in_context)  # definitive answers are not worth another run
    _write_unresolved(stage_dir / "unresolved_short_links.txt", unresolved)
    return RedditStageResult(
        shards=shards,
        funnel=funnel,
        incomplete_reasons=dict(funnel["incomplete_files"]),
        unresolved_short_links=unresolved,
    )


def _refuse_unusable_dumps(files: Sequence[Path], workdir: str | os.PathLike) -> None:
    if not files:
        raise FileNotFoundError(f"no dump files outside the work folder {workdir}")
    for path in files:
        if not path.is_file():  # a named pipe: the stage reads every file twice (scan, then collect)
            raise ValueError(f"{path}: not a regular file; the Reddit stage reads each dump twice, so give it a file")


@dataclass(frozen=True)
class _StageRun:
    """What every pass of one Reddit stage run shares."""

    stage_dir: Path
    names: list[str]  # the dump files
    file_keys: list[str]  # each dump's key (name, size, mtime): its work files are named by it
    tasks: int
    buckets: int  # the threads are split by ``link_id`` into this many buckets, collected and rebuilt apart
    options: RedditStageOptions

    def run_step(self, step: PipelineStep, tasks: int, log_name: str, markers: Sequence[Path]) -> None:
        """Run ``step`` as ``tasks`` tasks; ``markers[i]``, the completion marker of a file (or bucket), is written
        by task ``i % tasks``. A task that completed in an earlier run is run again where one of its markers is
        missing (deleted because it was damaged, as the error said): datatrove would skip it."""
        logging_dir = self.stage_dir / "logs" / log_name
        for index, marker in enumerate(markers):
            if not marker.exists():
                (logging_dir / "completions" / f"{index % tasks:05d}").unlink(missing_ok=True)
        run_on_executor(step, tasks, logging_dir, self.options)


@dataclass(frozen=True)
class _Pass:
    """A pass's work folder, the digest that names it and the stats each of its tasks wrote."""

    folder: Path
    digest: str
    stats: list[dict[str, Any]]


def _scan(run: _StageRun) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """Pass 1 over every dump: its stats, and the recommending comments by id (the first of each duplicate)."""
    scan_dir = run.stage_dir / "work" / ("scan" if run.options.resolve_short_links else "scan-without-a.co")
    run.run_step(
        ScanDumpsStep(run.names, str(scan_dir), run.options.progress, run.options.resolve_short_links, run.file_keys),
        run.tasks, f"{scan_dir.name}-{_digest(run.file_keys, run.tasks)}",
        [scan_dir / f"{key}.json" for key in run.file_keys],
    )
    scanned = "that dump is scanned"
    scan_stats = [_read_marker(scan_dir / f"{key}.json", scanned, _SCAN_MARKER_KEYS) for key in run.file_keys]
    hits: dict[str, dict[str, Any]] = {}
    for key, stats in zip(run.file_keys, scan_stats, strict=True):
        path, remedy = scan_dir / f"{key}.hits.jsonl", _redo_remedy(scan_dir / f"{key}.json", scanned)
        rows = list(_read_jsonl(path, remedy=remedy))
        for number, hit in enumerate(rows, start=1):
            _require_keys(f"{path}:{number}", hit, _HIT_KEYS, remedy=remedy)
        if len(rows) != stats.get("comments_with_links", 0):  # cut short at a line's end, or emptied
            raise DamagedFileError(f"{path}: damaged, {len(rows)} comments where the scan found "
                                   f"{stats.get('comments_with_links', 0)}; {remedy}")
        for hit in rows:
            hits.setdefault(hit["id"], hit)
    return scan_stats, hits


def _collect(run: _StageRun, needed: list[str], targets_dir: Path) -> _Pass:
    """Pass 2, targeted: the threads of the ``needed`` link ids, into their buckets."""
    digest = _digest(run.file_keys, _digest(needed), run.buckets)
    folder = run.stage_dir / "work" / f"collect-{digest}"
    run.run_step(
        CollectThreadsStep(run.names, str(folder), run.options.progress, str(targets_dir / "needed_threads.txt"),
                           run.buckets, run.file_keys),
        run.tasks, f"collect-{_digest(digest, run.tasks)}", [folder / f"{key}.json" for key in run.file_keys],
    )
    return _Pass(folder, digest, [_read_marker(folder / f"{key}.json", "that dump's threads are collected",
                                               _COLLECT_MARKER_KEYS) for key in run.file_keys])


def _write_short_links(work_dir: Path, resolved: dict[str, list[str]]) -> Path:
    """``short_links-<digest>.json``: the resolved short links, written once."""
    path = work_dir / f"short_links-{_digest(sorted(resolved.items()))}.json"
    if not path.exists():
        _write_json_atomic(path, resolved)
    return path


def _rebuild(run: _StageRun, collected: _Pass, targets_dir: Path, targets_digest: str, short_links_path: Path,
             salt_path: Path) -> _Pass:
    """Pass 3, over the work files: each bucket's conversations rebuilt from its targets and threads, one part
    per bucket."""
    digest = _digest(collected.digest, targets_digest, short_links_path.name,
                     _digest(salt_path.read_text(encoding="utf-8")))
    folder = run.stage_dir / "work" / f"rebuild-{digest}"
    tasks = min(run.buckets, run.tasks) if run.options.executor == "local" else run.buckets
    run.run_step(
        RebuildThreadsStep(
            run.buckets, str(targets_dir), str(collected.folder), str(short_links_path), str(salt_path), str(folder),
            run.file_keys,
        ),
        tasks, f"rebuild-{_digest(digest, tasks)}", [folder / f"part-{b:05d}.json" for b in range(run.buckets)],
    )
    stats = [_read_marker(folder / f"part-{b:05d}.json", "that bucket is rebuilt", _REBUILD_MARKER_KEYS)
             for b in range(run.buckets)]
    for bucket, counts in enumerate(stats):
        _check_part(folder / f"part-{bucket:05d}.jsonl", counts.get("conversations", 0))
    return _Pass(folder, digest, stats)


def _check_part(part: Path, conversations: int) -> None:
    """A rebuilt part must hold the ``conversations`` its marker counts, each a JSON object: it is published as it
    is (a hard link: damage to the published shard is damage to it), and redoing the stage would publish it again."""
    remedy = _redo_remedy(part.with_suffix(".json"), "that bucket is rebuilt")
    rows = sum(1 for _ in _read_jsonl(part, remedy=remedy))
    if rows != conversations:
        raise DamagedFileError(f"{part}: damaged, {rows} conversations where its rebuild wrote {conversations}; "
                               f"{remedy}")


def _write_unresolved(path: Path, unresolved: list[str]) -> None:
    if unresolved:
        write_atomic(path, ("\n".join(unresolved) + "\n").encode())
    else:  # a list left by an earlier run would name links that are resolved now
        path.unlink(missing_ok=True)


def _funnel(
    scan_stats: list[dict[str, Any]],
    collect_stats: list[dict[str, Any]],
    rebuild_stats: list[dict[str, Any]],
    extra: Counter[str],
    hits: dict[str, dict[str, Any]],
    targets: dict[int, list[dict[str, Any]]],
    needed: list[str],
    resolved: dict[str, list[str]],
    short_links: list[str],
    options: RedditStageOptions,
) -> dict[str, Any]:
    def total(stats: list[dict[str, Any]], key: str) -> int:
        return sum(s.get(key, 0) for s in stats)

    def problems(key: str, stats: list[dict[str, Any]] = scan_stats) -> int:
        return sum(s["problems"].get(key, 0) for s in stats)

    target_rows = [t for bucket in targets.values() for t in bucket]
    return {
        "files": len(scan_stats),
        "files_incomplete": sum(1 for s in scan_stats if s["error"]),
        "lines_read": total(scan_stats, "lines_read"),
        "uncompressed_bytes": total(scan_stats, "uncompressed_bytes"),
        "prefilter_hits": total(scan_stats, "prefilter_hits"),
        "parsed": total(scan_stats, "parsed"),
        "lone_surrogates_replaced": problems("lone_surrogates_replaced"),  # kept, U+FFFD for half an emoji
        "comments_with_links": len(hits),
        "comments_with_asins": len(target_rows),
        "asins": sum(len(t["gt_items"]) for t in target_rows),
        "unique_asins": len({a for t in target_rows for a in t["gt_items"]}),
        "short_links_found": len(short_links),
        "short_links_resolved": sum(1 for u in short_links if u in resolved) if options.resolve_short_links else 0,
        "short_link_resolution": "on" if options.resolve_short_links else "off",
        "threads_needed": len(needed),
        "thread_comments_collected": total(collect_stats, "comments_collected"),
        "thread_submissions_collected": total(collect_stats, "submissions_collected"),
        # The same comment or submission of a needed thread in two dumps (a monthly and a per-subreddit
        # file): counted once above in the conversations, the copy whose text survived.
        "thread_records_in_several_dumps": total(rebuild_stats, "duplicate_records"),
        "threads_rebuilt": total(rebuild_stats, "conversations"),
        "ancestors_deleted_or_removed": total(rebuild_stats, "ancestors_deleted_or_removed"),
        "submissions_deleted_or_removed": total(rebuild_stats, "submissions_deleted_or_removed"),
        "dropped": {
            "malformed_json": problems("malformed_json"),
            "invalid_utf8": problems("invalid_utf8"),
            "missing_fields": problems("missing_fields"),
            "not_an_object": problems("not_an_object"),
            "prefilter_hit_without_product_link": total(scan_stats, "prefilter_without_product_link"),
            "submission_with_amazon_text": total(scan_stats, "submissions_with_amazon_text"),
            "duplicate_recommending_comment": extra["duplicate_recommending_comments"],
            "only_unresolved_short_links": extra["dropped_only_unresolved_short_links"],
            "submission_missing": total(rebuild_stats, "submission_missing"),
            "ancestor_missing": total(rebuild_stats, "ancestor_missing"),
            "broken_parent_chain": total(rebuild_stats, "broken_parent_chain"),
        },
        # Lines of the needed threads that the second pass could not read: their conversations show up
        # above as submission_missing / ancestor_missing.
        "thread_lines_unreadable": {key: problems(key, collect_stats) for key in _DROPPED_LINE_PROBLEMS},
        # Texts of the needed threads (submissions, ancestor comments) kept with U+FFFD for half an emoji: the
        # scan's count above covers only the lines it parses (recommending comments).
        "thread_lines_lone_surrogates_replaced": problems("lone_surrogates_replaced", collect_stats),
        "incomplete_files": {s["path"]: s["error"] for s in scan_stats if s["error"]},
        # Which file the dropped lines above came from (files without problems are left out), and where the
        # first few are: line numbers and byte offsets, never their text (dump text, names included).
        "line_problems_by_file": {s["path"]: report for s in scan_stats if (report := _line_problems_report(s))},
    }


def _line_problems_report(stats: dict[str, Any]) -> dict[str, Any]:
    """A file's line problem counts (the non-zero ones) and, when lines were dropped, where the first ones are."""
    problems = stats["problems"]
    report: dict[str, Any] = {k: v for k, v in problems.items() if k not in _NOT_COUNTS and v}
    if problems.get("first_bad_lines"):  # absent from the stats of a file scanned by an older version
        report["first_bad_lines"] = problems["first_bad_lines"]
    return report


_NOT_COUNTS = ("examples", "first_bad_lines")


def bad_line_warnings(funnel: dict[str, Any]) -> list[str]:
    """One line per file whose lines the scan dropped: how many, why, and where the first one is."""
    warnings = []
    for path, report in funnel.get("line_problems_by_file", {}).items():
        counts = ", ".join(f"{report[reason]:,} {reason}" for reason in _DROPPED_LINE_PROBLEMS if report.get(reason))
        if counts:
            first = report.get("first_bad_lines")
            warnings.append(f"{path}: {counts} dropped" + (f"; the first at {_describe(first[0])}" if first else ""))
    return warnings


def missing_dump_warnings(funnel: dict[str, Any]) -> list[str]:
    """What the funnel shows to be missing from the inputs as a whole: comment dumps (dumps read, no comment linking a
    product: submissions alone, or another site's dump) or the submission dumps of the threads' months (every thread
    dropped as ``submission_missing``). Only the stage's counts are used: no dump is read again."""
    warnings = []
    if funnel.get("lines_read") and not funnel.get("comments_with_links"):
        warnings.append(f"no comment of the {funnel['files']:,} dump file(s) links an Amazon product "
                        f"({funnel['lines_read']:,} lines read): if they hold only submissions, add the comment dumps "
                        "(RC_*.zst, <sub>_comments.zst) of the same months")
    threads = funnel.get("threads_needed", 0)
    if threads and not funnel.get("thread_submissions_collected"):
        warnings.append(f"none of the {threads:,} threads' submissions is in the dumps, so no thread could be rebuilt "
                        "(submission_missing): add the submission dumps (RS_*.zst, <sub>_submissions.zst) of the "
                        "months the threads were started in")
    return warnings


def _describe(bad_line: dict[str, Any]) -> str:
    why = f" ({bad_line['why']})" if bad_line["why"] else ""
    return f"{place_text(bad_line['line'], bad_line['byte'])}: {bad_line['problem']}{why}"


_DROPPED_LINE_PROBLEMS = ("malformed_json", "invalid_utf8", "missing_fields", "not_an_object")
