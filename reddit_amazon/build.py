"""`reddit-amazon build`: Reddit dumps + Amazon Reviews 2023 -> the dataset folder, stage by stage.

Stages, each resumable (its outputs are written atomically, then a ``stage.json`` stamp holding a
key of its inputs and options and the size and sha256 of each output; a rerun with the same key reuses them,
once they are found unchanged):

1. ``reddit``    candidate conversations from the dumps (:mod:`reddit_amazon.pipeline`)
2. ``catalog``   child -> parent ASINs, metadata join, domains (:mod:`reddit_amazon.catalog`)
3. ``relevance`` the Table 9 LLM filter (:mod:`reddit_amazon.relevance`; answers cached in SQLite)
4. ``images``    main image of every kept item (:mod:`reddit_amazon.images`; a resumable store)
5. ``assemble``  splits, removal requests, candidates, Table-1 statistics, Parquet + card + manifest
                 (:mod:`reddit_amazon.assemble`, :func:`reddit_amazon.dataset_folder.write_dataset`)

Without ``--inputs`` the bundled sample inputs are used: the whole pipeline runs offline, with the
relevance answers and images pre-recorded in the caches that a real build fills.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard

import click
from rich.markup import escape

from reddit_amazon import DATASET_VERSION
from reddit_amazon.files import (STAGE_STAMP, DamagedFileError, file_sha256, folder_lock, printable_path, read_json,
                                 read_jsonl, remove_abandoned_temp_files, write_atomic, write_jsonl_atomic)
from reddit_amazon.cli_errors import shown_error_line, user_errors
from reddit_amazon.cli_paths import PATH_OR_NAME, OutputPath, UserPath

if TYPE_CHECKING:  # the schema imports `datasets`; keep `reddit-amazon --help` fast
    from reddit_amazon.relevance import FilterPlan
    from reddit_amazon.removals import Removal
    from reddit_amazon.run_log import RunLog
    from reddit_amazon.schema import Conversation, Item

SAMPLE_INPUTS = Path(__file__).resolve().parent / "sample" / "inputs"
SAMPLE_REDDIT = SAMPLE_INPUTS / "reddit"
SAMPLE_AMAZON = SAMPLE_INPUTS / "amazon"
SAMPLE_IMAGES = SAMPLE_INPUTS / "images"
SAMPLE_RELEVANCE_CACHE = SAMPLE_INPUTS / "relevance-cache.sqlite"
#: The sample's authors are invented, so its pseudonym salt may be public: it makes the sample reproducible.
SAMPLE_SALT = "reddit-amazon-sample"
#: Reddit-stage options of a sample build: offline (its links are all full product URLs), public salt.
SAMPLE_REDDIT_OPTIONS = {"salt": SAMPLE_SALT, "resolve_short_links": False}
RELEVANCE_CACHE = "relevance-cache.sqlite"
#: In the relevance stage's folder: the LLM calls and HTTP requests of each of its runs (see CallTally).
CALLS_FILE = "calls.log"
#: Raised when a stage's code changes what it makes from the same inputs, so an upgraded package does not reuse
#: a workdir's older outputs (the Reddit stage has pipeline.STAGE_VERSION). Catalog 2: compressed files told by
#: their bytes, a leading BOM dropped. Relevance 2: refusals, <think> blocks and negations parsed anew; 3: thoughts
#: a chat template opened (the answer holds only their ``</think>``) skipped.
CATALOG_STAGE_VERSION = 2
RELEVANCE_STAGE_VERSION = 3
VERSIONED_PACKAGES = ("reddit-amazon", "datasets", "pyarrow", "huggingface-hub", "openai", "pillow", "requests",
                      "datatrove", "zstandard", "sentence-transformers", "torch", "bm25s", "numpy")


class BuildError(RuntimeError):
    """A build cannot go on; the message says why and what to do (the command line prints it as its error line)."""


@dataclass
class BuildOptions:
    inputs: list[str]
    meta: list[str]
    reviews: list[str]
    out: Path
    workdir: Path
    seed: int = 0
    version: str = DATASET_VERSION
    domain_map: str | None = None
    llm_base_url: str | None = None
    llm_model: str = "gpt-3.5-turbo"
    llm_template: str | None = None
    llm_concurrency: int = 8
    llm_max_attempts: int = 6
    llm_cache: Path | None = None
    no_filter: bool = False
    dry_run: bool = False
    retrievers: list[str] = field(default_factory=lambda: ["sbert"])
    embedding_base_url: str | None = None  # openai-emb: any OpenAI-compatible embeddings endpoint
    embedding_model: str | None = None  # openai-emb: default text-embedding-3-large (column candidates_openai_large)
    images: bool = True
    image_store: Path | None = None
    image_concurrency: int = 8
    allow_private_image_hosts: bool = False  # image URLs (and redirects) may lead to loopback / private addresses
    push_to_hub: str | None = None
    private: bool = False
    removals: Path | None = None  # removal requests honoured after the split (reddit_amazon.removals)
    reddit: dict[str, Any] = field(default_factory=dict)  # RedditStageOptions fields
    sample: bool = False  # inputs are the bundled sample (seed the caches from it)

    def __post_init__(self) -> None:
        # a retriever named twice would run twice and be listed twice in candidate_sets and the card
        self.retrievers = list(dict.fromkeys(self.retrievers))

    def record(self) -> dict[str, Any]:
        """Every option, JSON-ready, for the manifest; the pseudonym salt is never written out."""
        record = {key: _printable(value) for key, value in asdict(self).items()}
        if self.removals is None:  # added later: the manifests of builds without it stay as they were
            del record["removals"]
        record["reddit"] = _redact_salt(_without_url_credentials(record["reddit"]))
        for key in ("llm_base_url", "embedding_base_url"):  # credentials in a URL never reach the manifest
            record[key] = _shown_url(record[key])
        for key in ("inputs", "meta", "reviews"):  # the bundled sample's own files: no install path
            record[key] = [path if path.startswith("hub:") else _recorded_path(Path(path)) for path in record[key]]
        return record


def _printable(value: Any) -> Any:
    """``value`` with each path and string in it made :func:`printable_path`: options hold file names as the OS gave
    them, which on Linux may not be UTF-8, and the manifest is UTF-8."""
    if isinstance(value, (str, Path)):
        return printable_path(value)
    if isinstance(value, dict):
        return {key: _printable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_printable(item) for item in value]
    return value


def _shown_url(url: str | None) -> str | None:
    from reddit_amazon.openai_endpoint import display_url

    return display_url(url) if url else url


def _without_url_credentials(reddit: dict[str, Any]) -> dict[str, Any]:
    """Reddit-stage options with each short-link endpoint that holds credentials (a proxy's ``user:password@``,
    a ``?token=``) as :func:`_shown_url` gives it: what the manifest records and the stage key holds, so a rotated
    password neither reaches the outputs nor redoes the stage. An endpoint without credentials stays as given, and
    with it the stage keys of existing work folders."""
    from reddit_amazon.openai_endpoint import has_credentials

    endpoints = reddit.get("short_link_endpoints")
    if not endpoints:
        return reddit
    return {**reddit, "short_link_endpoints": {host: _shown_url(url) if has_credentials(url) else url
                                               for host, url in endpoints.items()}}


def _redact_salt(reddit: dict[str, Any]) -> dict[str, Any]:
    return {k: ("<redacted>" if k == "salt" else v) for k, v in reddit.items()}


# --------------------------------------------------------------------------------------------
# Small helpers: stage stamps, reading stage outputs, input identities, package versions
# --------------------------------------------------------------------------------------------


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _finished_outputs(folder: Path, key: str, outputs: Sequence[Path]) -> dict[str, dict[str, Any]] | None:
    """What the stage in ``folder`` wrote (see :func:`_stamp`) if it finished with ``key``, else ``None`` (the stage
    is redone): a damaged stamp, or one without that record (written by an earlier version), says it did not finish.
    ``outputs`` are its output files as they are now; one that is not what the stage wrote is a
    :class:`DamagedFileError` naming it and the stamp to delete (a file emptied or cut short reads as fewer rows)."""
    stamp = folder / STAGE_STAMP
    try:
        record = read_json(stamp, remedy="") if stamp.is_file() else {}
    except DamagedFileError:
        return None
    written = record.get("outputs")
    if record.get("key") != key or not _is_output_record(written):
        return None
    _check_outputs(folder, written, outputs)
    return written


def _stamp(folder: Path, key: str, outputs: Sequence[Path]) -> dict[str, dict[str, Any]]:
    """Record that the stage in ``folder`` finished with ``key``, and the size and sha256 of each of its ``outputs``
    (checked when it is reused); returns that record of the outputs."""
    written = {path.relative_to(folder).as_posix(): {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
               for path in outputs}
    _write_json(folder / STAGE_STAMP, {"key": key, "outputs": written})
    return written


def _is_output_record(written: Any) -> TypeGuard[dict[str, dict[str, Any]]]:
    return isinstance(written, dict) and all(
        isinstance(entry, dict) and type(entry.get("bytes")) is int and isinstance(entry.get("sha256"), str)
        for entry in written.values())


def _check_outputs(folder: Path, written: dict[str, dict[str, Any]], outputs: Sequence[Path]) -> None:
    """Each of ``outputs`` (and each file the stamp records) holds the bytes the stage wrote: compared by size, then
    by sha256 (an edit that keeps the size)."""
    present = {path.relative_to(folder).as_posix() for path in outputs}
    for name in sorted(present | written.keys()):
        path = folder / name
        remedy = _redo_stage_remedy(path)
        if name not in written:
            raise DamagedFileError(f"{path}: damaged, not a file the finished stage wrote; {remedy}")
        if not path.is_file():
            raise DamagedFileError(f"{path}: damaged, missing (the finished stage wrote it); {remedy}")
        size, recorded = path.stat().st_size, written[name]
        if size != recorded["bytes"]:
            raise DamagedFileError(f"{path}: damaged, {size:,} bytes where the finished stage wrote "
                                   f"{recorded['bytes']:,}; {remedy}")
        if file_sha256(path) != recorded["sha256"]:
            raise DamagedFileError(f"{path}: damaged, not the bytes the finished stage wrote (another sha256); "
                                   f"{remedy}")


def _unstamp(folder: Path) -> None:
    """Before a stage replaces its outputs: a run killed half-way must not leave the old stamp over new files."""
    (folder / STAGE_STAMP).unlink(missing_ok=True)


def _write_json(path: Path, value: Any) -> None:
    write_atomic(path, json.dumps(value, indent=1, sort_keys=True, ensure_ascii=False).encode() + b"\n")


def _redo_stage_remedy(path: Path) -> str:
    """What to do about a damaged output of the stage whose folder holds ``path`` (maybe in a subfolder, as the
    Reddit stage's ``conversations/``): delete the stamp that vouched for it."""
    stamp = next((folder / STAGE_STAMP for folder in path.parents if (folder / STAGE_STAMP).is_file()),
                 path.parent / STAGE_STAMP)
    return f"delete {stamp} and rerun the build to redo that stage"


def _read_stage_json(path: Path) -> dict[str, Any]:
    """A JSON object a finished stage wrote (its report, the Reddit funnel); a damaged one is a
    :class:`DamagedFileError` saying how to redo the stage."""
    return read_json(path, remedy=_redo_stage_remedy(path))


def _read_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(file:line, row)`` for each line of a JSONL file a stage wrote; a damaged one says how to redo the stage."""
    for number, row in read_jsonl(path, remedy=_redo_stage_remedy(path)):
        yield f"{path}:{number}", row


def _read_conversations(path: Path, *, require_domain: bool) -> list[Conversation]:
    from reddit_amazon.schema import Conversation

    return [Conversation.from_row(row, where=where, require_domain=require_domain) for where, row in _read_rows(path)]


def _read_items(path: Path) -> list[Item]:
    from reddit_amazon.schema import Item

    return [Item.from_row(row, where=where) for where, row in _read_rows(path)]


def _identity(sources: Iterable[str]) -> list[Any]:
    """Cheap identity of input files (path, size, mtime) for stage keys; hub specs as written."""
    out: list[Any] = []
    for source in sources:
        path = Path(source)
        if path.is_file():
            stat = path.stat()
            out.append([str(path.resolve()), stat.st_size, stat.st_mtime_ns])
        else:
            out.append(source)
    return out


def _file_inputs(sources: Iterable[str], workdir: Path) -> list[dict[str, Any]]:
    """``[{path, bytes, sha256}]``; hashes are cached by (path, size, mtime) so resumes skip re-reading. A damaged
    cache is only slower: the inputs are hashed again and it is written anew."""
    cache_path = workdir / "input-hashes.json"
    try:
        cache = read_json(cache_path, remedy="") if cache_path.is_file() else {}
    except DamagedFileError:
        cache = {}
    records: list[dict[str, Any]] = []
    for source in sources:
        path = Path(source)
        if not path.is_file():
            records.append({"path": printable_path(source), "bytes": None, "sha256": None})
            continue
        stat = path.stat()
        key = f"{printable_path(path.resolve())}|{stat.st_size}|{stat.st_mtime_ns}"
        if key not in cache:
            cache[key] = file_sha256(path)
        records.append({"path": _recorded_path(path), "bytes": stat.st_size, "sha256": cache[key]})
    _write_json(cache_path, cache)
    return records


def _recorded_path(path: Path) -> str:
    """The path as given, but the bundled sample's inputs relative to the package (no install path)."""
    resolved = path.resolve()
    if resolved.is_relative_to(SAMPLE_INPUTS):
        return str(Path("reddit_amazon/sample/inputs") / resolved.relative_to(SAMPLE_INPUTS))
    return printable_path(path)


def package_versions(names: Iterable[str] = VERSIONED_PACKAGES) -> dict[str, str]:
    """The installed version of each of ``names`` that is installed."""
    versions = {}
    for name in names:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            continue
    return versions


def _tqdm(description: str):
    from tqdm.auto import tqdm

    from reddit_amazon.progress import bar_options

    def wrap(iterable: Iterable, total: int, *_: Any) -> Iterable:
        return tqdm(iterable, total=total, desc=description, unit="it", dynamic_ncols=True, **bar_options())

    return wrap


# --------------------------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------------------------


@dataclass
class StageResult:
    conversations: list[Conversation]
    funnel: list[dict[str, Any]]
    report: dict[str, Any] = field(default_factory=dict)
    items: list[Item] = field(default_factory=list)
    key: str = ""
    #: Reads ``conversations`` from the stage's outputs when first asked (:meth:`records`): a next stage that is
    #: reused never needs them, and a build never holds every stage's copy at once.
    loader: Callable[[], list[Conversation]] | None = None
    #: The stage's finished outputs of an earlier run were taken as they were (for the run log).
    reused: bool = False

    def records(self) -> list[Conversation]:
        if self.loader is not None:
            self.conversations, self.loader = self.loader(), None
        return self.conversations

    def release(self) -> None:
        """Drop the conversations once no later stage needs them (the stage's files keep them)."""
        self.conversations, self.loader = [], None


def _dump_files(inputs: Sequence[str], workdir: Path, console) -> list[Path]:
    from reddit_amazon.pipeline import dump_files_outside

    try:
        search = dump_files_outside(inputs, workdir)
    except FileNotFoundError as error:
        raise BuildError(f"--inputs {error}") from None
    for folder in search.left_out:
        console.print(f"[yellow]warning[/]: --inputs: {escape(folder.line())}")
    return search.files


#: Reddit-stage options that say how the stage runs, not what it writes (left out of the stage keys).
#: ``progress`` too: turning the bars off from Python (``reddit={"progress": False}``) must not redo the stages.
REDDIT_EXECUTION_OPTIONS = ("executor", "workers", "progress", "poll_interval_s",
                            "slurm_partition", "slurm_time", "slurm_mem_per_cpu_gb", "slurm_venv")


def reddit_stage(options: BuildOptions, files: Sequence[Path], console) -> StageResult:
    from reddit_amazon.pipeline import (
        STAGE_VERSION,
        RedditStageOptions,
        bad_line_warnings,
        missing_dump_warnings,
        run_reddit_stage_on_files,
    )
    from reddit_amazon.progress import bars_shown

    # how the stage runs (executor, partition, workers) does not change what it writes: a rerun with more
    # workers reuses it, and the later stages with it
    made_by = {k: v for k, v in _without_url_credentials(options.reddit).items()
               if k not in REDDIT_EXECUTION_OPTIONS}
    key = _key("reddit", STAGE_VERSION, _identity(map(str, files)), made_by)
    folder = options.workdir / "reddit"
    written = _finished_outputs(folder, key, _reddit_outputs(folder))
    unresolved = _unresolved_short_links(folder) if written is not None else 0
    reused = written is not None and not unresolved
    if not reused:
        if unresolved:
            # What failed then (a block, a timeout, a deadline) may answer now; the scan's finished tasks are
            # reused, so this costs the asking, and a second pass over the dumps only if new threads are needed.
            console.print(f"[bold]1/5 reddit[/]: asking the {unresolved} short link(s) it left unresolved again")
        else:
            console.print(f"[bold]1/5 reddit[/]: candidate conversations from {len(files)} dump file(s)")
        _unstamp(folder)
        # its workers may be other processes: told of a quiet run, not left to read this one's setting
        reddit = {**options.reddit, "progress": options.reddit.get("progress", True) and bars_shown()}
        run_reddit_stage_on_files(files, options.workdir, RedditStageOptions(**reddit))
        written = _stamp(folder, key, _reddit_outputs(folder))
    else:
        console.print("[bold]1/5 reddit[/]: reusing the finished stage")
    assert written is not None  # found finished, or stamped just above
    raw = _read_stage_json(folder / "funnel.json")
    if raw.get("incomplete_files"):
        for path, error in raw["incomplete_files"].items():
            console.print(f"  [yellow]incomplete dump[/] {escape(path)}: {escape(error)}")
    for warning in bad_line_warnings(raw):
        console.print(f"  [yellow]bad lines[/] {escape(warning)}")
    for warning in missing_dump_warnings(raw):
        console.print(f"  [yellow]warning[/]: --inputs: {escape(warning)}")
    # Later stages key on what this one wrote, not only on what it was asked: the same workdir's Reddit
    # stage may also be run on its own (`reddit-amazon reddit-stage`), replacing these outputs.
    outputs = _files_digest((path.name, written[path.relative_to(folder).as_posix()]["sha256"])
                            for path in _reddit_outputs(folder))
    return StageResult(conversations=[], loader=lambda: reddit_conversations(options.workdir),
                       funnel=reddit_funnel(raw), key=_key(key, outputs), report=raw, reused=reused)


def _unresolved_short_links(folder: Path) -> int:
    """How many short links the Reddit stage in ``folder`` listed as unresolved (0 when it listed none)."""
    listed = folder / "unresolved_short_links.txt"
    return len(listed.read_text(encoding="utf-8").split()) if listed.is_file() else 0


def _reddit_outputs(folder: Path) -> list[Path]:
    """The Reddit stage's outputs in ``folder``: the conversation shards and the funnel."""
    return [*sorted((folder / "conversations").glob("*.jsonl")), folder / "funnel.json"]


def _files_digest(files: Iterable[tuple[str, str]]) -> str:
    """One digest of ``(name, sha256)`` of files."""
    digest = hashlib.sha256()
    for name, sha256 in files:
        digest.update(f"{name}\0{sha256}\0".encode())
    return digest.hexdigest()


def reddit_conversations(workdir: Path) -> list[Conversation]:
    """The conversations the Reddit stage wrote under ``workdir`` (no domain yet), shard by shard."""
    return [conversation for path in sorted((workdir / "reddit" / "conversations").glob("*.jsonl"))
            for conversation in _read_conversations(path, require_domain=False)]


#: How the Reddit stage's flat funnel.json becomes record-level funnel stages: (stage, kept key, dropped keys).
REDDIT_FUNNEL_STAGES = (
    ("reddit: comments linking Amazon products", "comments_with_links",
     ("malformed_json", "invalid_utf8", "missing_fields", "not_an_object", "prefilter_hit_without_product_link",
      "submission_with_amazon_text", "duplicate_recommending_comment")),
    ("reddit: comments with ASINs", "comments_with_asins", ("only_unresolved_short_links",)),
    ("reddit: threads rebuilt", "threads_rebuilt", ("submission_missing", "ancestor_missing", "broken_parent_chain")),
)


def reddit_funnel(raw: dict[str, Any]) -> list[dict[str, Any]]:
    """``[{stage, kept, dropped}]`` from the Reddit stage's ``funnel.json`` (kept whole in the manifest too)."""
    dropped = raw.get("dropped", {})
    return [{"stage": stage, "kept": int(raw.get(kept, 0)),
             "dropped": {reason: int(dropped[reason]) for reason in reasons if dropped.get(reason)}}
            for stage, kept, reasons in REDDIT_FUNNEL_STAGES]


def catalog_stage(options: BuildOptions, upstream: StageResult, console) -> StageResult:
    from reddit_amazon import catalog

    meta_sources = catalog.expand_sources(options.meta, catalog.META_FILE_PATTERN)
    review_sources = catalog.expand_sources(options.reviews, catalog.REVIEW_FILE_PATTERN)
    domain_map = catalog.parse_domain_map(options.domain_map)
    key = _key("catalog", CATALOG_STAGE_VERSION, upstream.key, _identity(meta_sources), _identity(review_sources),
               domain_map)
    folder = options.workdir / "catalog"
    outputs = [folder / name for name in ("conversations.jsonl", "items.jsonl", "report.json")]
    reused = _finished_outputs(folder, key, outputs) is not None
    if reused:
        console.print("[bold]2/5 catalog[/]: reusing the finished stage")
    else:
        console.print(f"[bold]2/5 catalog[/]: {len(review_sources)} review and {len(meta_sources)} metadata source(s)")
        _unstamp(folder)
        if not review_sources:
            console.print("  [yellow]no --reviews[/]: only links that name a parent ASIN can be resolved")
        wanted = {a for c in upstream.records() for a in [*c.gt_items, *c.context_items]}
        loaded, read_report = catalog.load_catalog(meta_sources, review_sources, wanted, domain_map)
        joined = catalog.join_conversations(upstream.records(), loaded)
        upstream.release()
        report = {
            **read_report.as_dict(),
            "domain_map": domain_map,
            "gt_links": dict(joined.gt_links),
            "context_links": dict(joined.context_links),
            "child_asins_mapped_to_parent": joined.child_to_parent,
        }
        funnel = [{"stage": "catalog: join with Amazon Reviews 2023", "kept": len(joined.conversations),
                   "dropped": dict(sorted(joined.dropped.items()))}]
        write_jsonl_atomic(folder / "conversations.jsonl", (c.to_row() for c in joined.conversations))
        write_jsonl_atomic(folder / "items.jsonl", (i.to_row() for i in sorted(joined.items.values(),
                                                                               key=lambda i: i.item_id)))
        _write_json(folder / "report.json", {"report": report, "funnel": funnel})
        _stamp(folder, key, outputs)
        del loaded, joined  # the raw metadata rows (~3 KB each): freed before the items are read back
        for kind in ("meta", "reviews"):
            bad = report[kind]
            if bad["bad_lines"]:
                console.print(f"  [yellow]{bad['bad_lines']:,} bad {kind} line(s) skipped[/] (in the manifest)")
            for example in bad["bad_line_examples"]:
                console.print(f"  [yellow]skipped bad line[/] {escape(example)}")
    saved = _read_stage_json(folder / "report.json")
    return StageResult(conversations=[], loader=lambda: _read_conversations(folder / "conversations.jsonl",
                                                                           require_domain=True),
                       items=_read_items(folder / "items.jsonl"), funnel=saved["funnel"], report=saved["report"],
                       key=key, reused=reused)


def _filter_options(options: BuildOptions):
    from reddit_amazon.relevance import FilterOptions, load_template

    return FilterOptions(model=options.llm_model, base_url=options.llm_base_url,
                         template=load_template(options.llm_template), concurrency=options.llm_concurrency,
                         max_attempts=options.llm_max_attempts)


def _relevance_cache_path(options: BuildOptions) -> Path:
    return options.llm_cache or options.workdir / RELEVANCE_CACHE


def _sample_answers_hint(options: BuildOptions) -> str:
    """Why a sample build asked the endpoint at all: with the default model and prompt every answer is
    pre-recorded, unless those recordings no longer match the sample's conversations."""
    from reddit_amazon.relevance import DEFAULT_MODEL

    if options.sample and options.llm_model == DEFAULT_MODEL and options.llm_template is None:
        return (" -- the bundled sample's pre-recorded answers no longer match its conversations; regenerate "
                "them with `python -m reddit_amazon.sample.make_inputs`")
    return ""


def _warn_answers_without_endpoint(plan: FilterPlan, options: BuildOptions, console) -> None:
    """Said before the calls are paid for: a cache from a release that keyed answers by model and prompt alone
    holds --llm-base-url's answers under OpenAI's key, where they are not used."""
    from reddit_amazon.openai_endpoint import endpoint_key

    if plan.answered_without_endpoint:
        console.print(f"  [yellow]{plan.answered_without_endpoint} of the {plan.calls} prompt(s) to ask "
                      f"{escape(str(endpoint_key(options.llm_base_url)))} are answered in "
                      f"{escape(str(_relevance_cache_path(options)))} under OpenAI's endpoint[/]: OpenAI's answers, "
                      "or a cache of an earlier release, which did not record the endpoint; they are asked again. "
                      "If this endpoint gave them, docs/build.md (Upgrading) shows how to keep them")


def _image_store_path(options: BuildOptions) -> Path:
    return options.image_store or options.workdir / "images"


def relevance_stage(options: BuildOptions, upstream: StageResult, console) -> StageResult:
    from reddit_amazon.openai_endpoint import endpoint_key
    from reddit_amazon.relevance import KEPT_LABEL, AnswerCache, CallTally, RelevanceError, plan_filter, run_filter

    if options.no_filter:
        console.print("[bold]3/5 relevance[/]: skipped (--no-filter)")
        funnel = [{"stage": "relevance filter (skipped: --no-filter)", "kept": len(upstream.records()),
                   "dropped": {}}]
        return StageResult(conversations=upstream.records(), items=upstream.items, funnel=funnel,
                           report={"skipped": True}, key=_key("relevance", upstream.key, "skipped"))
    filter_options = _filter_options(options)
    template_sha = hashlib.sha256(filter_options.template.encode()).hexdigest()
    key = _key("relevance", RELEVANCE_STAGE_VERSION, upstream.key, filter_options.model, template_sha,
               endpoint_key(filter_options.base_url))
    folder = options.workdir / "relevance"
    outputs = [folder / name for name in ("conversations.jsonl", "report.json")]
    reused = _finished_outputs(folder, key, outputs) is not None
    if reused:
        console.print("[bold]3/5 relevance[/]: reusing the finished stage")
    else:
        console.print(f"[bold]3/5 relevance[/]: Table 9 filter with {filter_options.model} "
                      f"on {len(upstream.records())} conversation(s)")
        _unstamp(folder)
        folder.mkdir(parents=True, exist_ok=True)
        # The calls of every run of this stage (an interrupted build and its reruns), for the report and card.
        with AnswerCache(_relevance_cache_path(options)) as cache, CallTally(folder / CALLS_FILE, key) as tally:
            if tally.damaged:
                console.print(f"[yellow]warning[/]: {escape(tally.damaged)}")
            if endpoint_key(filter_options.base_url) is not None:  # only another endpoint's may hide under OpenAI's
                _warn_answers_without_endpoint(plan_filter(upstream.records(), cache, filter_options), options,
                                               console)
            try:
                result = run_filter(upstream.records(), cache, filter_options,
                                    api_key=os.environ.get("OPENAI_API_KEY"), progress=_tqdm("relevance"),
                                    tally=tally)
            except RelevanceError as error:
                raise BuildError(f"{error}{_sample_answers_hint(options)}") from error
        dropped = {label: n for label, n in sorted(result.counts.items()) if label != KEPT_LABEL}
        funnel = [{"stage": "relevance filter (Table 9)", "kept": len(result.kept), "dropped": dropped}]
        report = {"model": filter_options.model, "base_url": endpoint_key(filter_options.base_url),  # None: OpenAI
                  "template_sha256": template_sha,
                  "labels": dict(sorted(result.counts.items())), "calls_made": result.calls_made,
                  "http_requests_sent": result.http_requests_sent,
                  "parameter_changes": result.parameter_changes}
        write_jsonl_atomic(folder / "conversations.jsonl", (c.to_row() for c in result.kept))
        del result
        upstream.release()
        _write_json(folder / "report.json", {"report": report, "funnel": funnel})
        _stamp(folder, key, outputs)
    saved = _read_stage_json(folder / "report.json")
    kept = _read_conversations(folder / "conversations.jsonl", require_domain=True)
    referenced = {a for c in kept for a in [*c.gt_items, *c.context_items]}
    return StageResult(conversations=kept, items=[i for i in upstream.items if i.item_id in referenced],
                       funnel=saved["funnel"], report=saved["report"], key=key, reused=reused)


def images_stage(options: BuildOptions, upstream: StageResult, console) -> StageResult:
    from reddit_amazon.images import ImageOptions, ImageStore, failure_reasons, fetch_images

    items = upstream.items
    if not options.images:
        console.print("[bold]4/5 images[/]: skipped (--no-images)")
        for item in items:
            item.image, item.image_error = None, "not_fetched: built with --no-images"
        return StageResult(conversations=upstream.conversations, items=items, funnel=[],
                           report={"skipped": True}, key=upstream.key)
    store = ImageStore(_image_store_path(options))
    console.print(f"[bold]4/5 images[/]: main image of {len(items)} item(s) into {escape(str(store.folder))}")
    outcomes = fetch_images([(i.item_id, i.image_urls) for i in items], store,
                            ImageOptions(concurrency=options.image_concurrency,
                                         allow_private_hosts=options.allow_private_image_hosts),
                            progress=_tqdm("images"))
    for item in items:
        outcome = outcomes[item.item_id]
        item.image = outcome.path  # read when its shard is written
        item.image_error = outcome.error
    report = {"items": len(items), "with_image": sum(o.path is not None for o in outcomes.values()),
              "downloaded": sum(o.downloaded for o in outcomes.values()),
              "without_image": dict(sorted(failure_reasons(outcomes).items()))}
    return StageResult(conversations=upstream.conversations, items=items, funnel=[], report=report,
                       key=upstream.key)


def _make_retriever(options: BuildOptions, name: str) -> Any:
    from benchmark.retrieval import get_retriever

    settings: dict[str, Any] = {}
    if name in ("sbert", "openai-emb"):
        settings["cache_dir"] = options.workdir / "embeddings"
    if name == "openai-emb":
        settings.update({k: v for k, v in (("base_url", options.embedding_base_url),
                                            ("model", options.embedding_model)) if v})
    try:
        return get_retriever(name, **settings)
    except ValueError as error:
        raise BuildError(f"--retrievers: {error}") from error


def assemble_stage(options: BuildOptions, upstream: StageResult, dump_files: Sequence[Path],
                   funnel: list[dict[str, Any]], reports: dict[str, Any], started: datetime,
                   pseudonymize: Any | None, console) -> dict[str, Any]:
    """The dataset folder; ``pseudonymize`` (:func:`~reddit_amazon.pipeline.kept_pseudonymizer`, or None) is the salt
    the Reddit stage made ``turns[].author`` with, read with its conversations."""
    from reddit_amazon.assemble import add_candidates, items_by_domain, split_by_thread, table1_stats
    from reddit_amazon.dataset_folder import DatasetContents, write_dataset

    console.print(f"[bold]5/5 assemble[/]: splits, candidates ({', '.join(options.retrievers) or 'none'}), "
                  f"Parquet into {escape(str(options.out))}")
    splits = split_by_thread(upstream.conversations, options.seed)
    removals: dict[str, Any] | None = None
    if options.removals:  # after the split, so no other thread moves
        removal, removals = _drop_requested(options.removals, pseudonymize, splits)
        splits = removal.kept
        console.print(f"  removal requests: {removal.records_dropped} record(s) dropped; {removal.requests} "
                      f"request(s), {removal.unmatched} matching no record")
    items = items_by_domain(upstream.items)
    retrievers = [_make_retriever(options, name) for name in options.retrievers]
    candidates = add_candidates(splits, items, retrievers, seed=options.seed, progress=_tqdm("candidates"))
    inputs = _file_inputs([*map(str, dump_files), *_catalog_files(options)], options.workdir)
    metadata = {
        "build": {
            "command": command_line(options),
            "options": options.record(),
            "inputs": inputs,
            "package_versions": package_versions(),
            "started_utc": started.isoformat(timespec="seconds"),
            "finished_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "seed": options.seed,
            **({"salt_check": pseudonymize.salt_check()} if pseudonymize else {}),  # remove --salt checks it
        },
        "funnel": funnel,
        "stats": table1_stats(splits, items),
        "build_reports": {**reports, "candidates": candidates.as_dict()},
    }
    if removals:
        metadata["removals"] = [removals]
    contents = DatasetContents(conversations=splits, items=items, version=options.version,
                               candidate_sets=candidates.computed, metadata=metadata)
    return write_dataset(options.out, contents)


def _drop_requested(requests_file: Path, pseudonymize: Any | None, splits: dict[str, dict[str, list[Conversation]]]
                    ) -> tuple[Removal, dict[str, Any]]:
    """The records ``--removals`` asks for dropped from ``splits`` (``u/<name>`` by ``pseudonymize``, the Reddit
    stage's salt: the one this build's pseudonyms were made with, so no salt check is needed), and the manifest's
    record of it; dropped before the candidates, so no removed text is sent to an embeddings endpoint."""
    from reddit_amazon.removals import drop_requested, read_requests

    requests = read_requests(requests_file).with_pseudonyms(pseudonymize)
    removal = drop_requested(splits, requests)
    return removal, removal.record(requests, pseudonymize, applied="build")


def _catalog_files(options: BuildOptions) -> list[str]:
    from reddit_amazon import catalog

    return [*catalog.expand_sources(options.meta, catalog.META_FILE_PATTERN),
            *catalog.expand_sources(options.reviews, catalog.REVIEW_FILE_PATTERN)]


def command_line(options: BuildOptions) -> str:
    """The command that reproduces this build (defaults left out)."""
    defaults = BuildOptions(inputs=[], meta=[], reviews=[], out=Path("reddit-amazon"), workdir=Path())
    args = ["reddit-amazon", "build"]
    if not options.sample:
        for name in ("inputs", "meta", "reviews"):
            for value in getattr(options, name):
                args += [f"--{name}", value]
    args += ["--out", str(options.out), "--workdir", str(options.workdir)]
    # How a build runs is recorded too (as --workers is): rerun, the command asks the endpoints as this build did.
    simple = {"seed": "--seed", "version": "--version", "domain_map": "--domain-map", "llm_base_url": "--llm-base-url",
              "llm_model": "--llm-model", "llm_template": "--llm-template", "llm_concurrency": "--llm-concurrency",
              "llm_max_attempts": "--llm-max-attempts", "llm_cache": "--llm-cache", "image_store": "--image-store",
              "image_concurrency": "--image-concurrency", "push_to_hub": "--push-to-hub",
              "embedding_base_url": "--embedding-base-url", "embedding_model": "--embedding-model",
              "removals": "--removals"}
    for attribute, flag in simple.items():
        value = getattr(options, attribute)
        if value != getattr(defaults, attribute):
            args += [flag, str(_shown_url(value) if attribute.endswith("base_url") else value)]
    if options.retrievers != defaults.retrievers:
        args += ["--retrievers", ",".join(options.retrievers) or "none"]
    args += ["--no-filter"] if options.no_filter else []
    args += ["--no-images"] if not options.images else []
    args += ["--allow-private-image-hosts"] if options.allow_private_image_hosts else []
    args += ["--private"] if options.private else []  # left out, a rerun would publish the repo public
    reddit = {k: v for k, v in options.reddit.items() if not (options.sample and SAMPLE_REDDIT_OPTIONS.get(k) == v)}
    for name, value in sorted(_redact_salt(reddit).items()):
        reddit_flag = REDDIT_FLAGS.get(name)
        if reddit_flag is None:  # set from Python only (e.g. short_link_endpoints): no command-line form
            continue
        args += ([f"--{reddit_flag}" if value else f"--no-{reddit_flag}"] if isinstance(value, bool)
                 else [f"--{reddit_flag}", str(value)])
    return printable_path(shlex.join(args))


#: The ``build`` options that set Reddit-stage options (``RedditStageOptions`` field -> flag).
REDDIT_FLAGS = {"salt": "salt", "executor": "executor", "slurm_partition": "partition", "workers": "workers",
                "resolve_short_links": "resolve-short-links", "short_link_deadline_s": "short-link-deadline"}


# --------------------------------------------------------------------------------------------
# Orchestration
# --------------------------------------------------------------------------------------------


def default_workdir(out: Path) -> Path:
    """``<out>.work`` beside ``out`` (``.`` and ``..`` are resolved first: they have no name)."""
    if not out.name:
        out = out.expanduser().resolve()
        if not out.name:
            raise BuildError("--out must not be the filesystem root")
    return out.with_name(out.name + ".work")


def sample_options(out: str | os.PathLike, workdir: str | os.PathLike | None = None, **settings: Any) -> BuildOptions:
    """Options of a build of the bundled sample inputs (``reddit-amazon build`` without ``--inputs``).

    ``settings`` are other :class:`BuildOptions` fields; ``reddit`` options given there win over the
    sample's (offline, public salt)::

        run_build(sample_options(Path("reddit_amazon/sample/reddit-amazon"), Path("/tmp/sample.work")))
    """
    reddit = {**SAMPLE_REDDIT_OPTIONS, **settings.pop("reddit", {})}
    return BuildOptions(inputs=[str(SAMPLE_REDDIT)], meta=[str(SAMPLE_AMAZON)], reviews=[str(SAMPLE_AMAZON)],
                        out=Path(out), workdir=Path(workdir) if workdir else default_workdir(Path(out)),
                        reddit=reddit, sample=True, **settings)


def _seed_sample_caches(options: BuildOptions) -> None:
    """Add the bundled pre-recorded answers and images to the build's caches (never written in place).

    The answers count as the configured endpoint's (``OPENAI_BASE_URL`` or ``--llm-base-url``): a sample
    build stays offline wherever the environment points the client.
    """
    from reddit_amazon.images import FAILURES_FILE, SOURCES_FILE, ImageStore
    from reddit_amazon.openai_endpoint import endpoint_key
    from reddit_amazon.relevance import AnswerCache

    with AnswerCache(_relevance_cache_path(options)) as cache:
        cache.import_answers(SAMPLE_RELEVANCE_CACHE, endpoint_key(options.llm_base_url))
    store = ImageStore(_image_store_path(options))
    sample_sources = json.loads((SAMPLE_IMAGES / SOURCES_FILE).read_text(encoding="utf-8"))
    for path in SAMPLE_IMAGES.glob("*.jpg"):
        asin = path.stem
        if not store.path(asin).exists():  # atomic: a copy cut short must not pass for a stored image
            write_atomic(store.path(asin), path.read_bytes())
        if asin in sample_sources and asin not in store.sources:  # a store another build uses keeps its own
            store.sources[asin] = sample_sources[asin]
    for asin, failure in json.loads((SAMPLE_IMAGES / FAILURES_FILE).read_text(encoding="utf-8")).items():
        if asin not in store.sources:  # the sample's recorded failures: not fetched either
            store.failures.setdefault(asin, failure)
    store.save()


#: The workdir's folders whose files the build writes itself (atomically); the image store removes what killed runs
#: left in its own.
BUILD_WORK_FOLDERS = (".", "catalog", "relevance")


def _remove_abandoned_writes(workdir: Path) -> None:
    """Delete the temporary files that runs killed mid-write (kill -9, a preempted job) left in the build's folders
    and the Reddit stage's, reused or not: nothing else removes them, and one is as large as what it was writing (the
    catalog stage's conversations)."""
    from reddit_amazon.pipeline import remove_abandoned_writes as remove_reddit_stage_writes

    for name in BUILD_WORK_FOLDERS:
        if (workdir / name).is_dir():
            remove_abandoned_temp_files(workdir / name)
    remove_reddit_stage_writes(workdir)


def check_options(options: BuildOptions) -> None:
    """Refuse options that would only fail (or destroy something) after the long stages have run."""
    from reddit_amazon.schema import SEMVER

    if not SEMVER.fullmatch(options.version):
        raise BuildError(f"--version {options.version!r} is not semver (MAJOR.MINOR.PATCH, e.g. 1.0.0)")
    _check_endpoint_urls(options)
    _check_files_read(options)
    _check_catalog_sources(options)
    _check_retrievers(options)
    _check_credentials(options)
    _check_folders(options)
    _check_reddit_executor(options)


def _check_reddit_executor(options: BuildOptions) -> None:
    """The Reddit stage's executor can run here (Slurm's sbatch on PATH, ...): checked before the dumps are listed
    and the stage starts, not at its first step. A finished stage that would be reused is no exception: how the stage
    runs is not in its key, so a rerun with ``--executor local`` reuses it."""
    from reddit_amazon.pipeline import RedditStageOptions
    from reddit_amazon.stage_executor import check_executor

    check_executor(RedditStageOptions(**options.reddit))


def _check_endpoint_urls(options: BuildOptions) -> None:
    from reddit_amazon.openai_endpoint import url_problem

    for flag, url in (("--llm-base-url", options.llm_base_url), ("--embedding-base-url", options.embedding_base_url),
                      ("OPENAI_BASE_URL", os.environ.get("OPENAI_BASE_URL"))):
        problem = url and url_problem(url)
        if problem:
            raise BuildError(f"{flag} is not an endpoint URL: {problem}")


def _check_files_read(options: BuildOptions) -> None:
    """The domain map, the removal requests and (when the LLM filter runs) its prompt template parse: a line of no
    known form fails now, not after the long stages."""
    from reddit_amazon.catalog import CatalogError, parse_domain_map

    try:
        parse_domain_map(options.domain_map)
    except CatalogError as error:
        raise BuildError(str(error)) from None
    if options.removals:
        from reddit_amazon.removals import read_requests
        from reddit_amazon.schema import SchemaError

        try:
            read_requests(options.removals)
        except (SchemaError, OSError) as error:
            raise BuildError(f"--removals: {error}") from None
    if not options.no_filter:
        from reddit_amazon.relevance import RelevanceError, load_template

        try:
            load_template(options.llm_template)
        except (RelevanceError, OSError, UnicodeDecodeError) as error:
            raise BuildError(f"--llm-template: {error}") from None


def _check_catalog_sources(options: BuildOptions) -> None:
    """--meta and --reviews name files that exist, each of its flag's kind (a review file given as --meta, Amazon's
    2018 metadata): found before the Reddit stage instead of after it, or not at all (the rows skipped)."""
    from reddit_amazon.catalog import CatalogError, check_catalog_sources

    try:
        check_catalog_sources(options.meta, options.reviews)
    except CatalogError as error:
        raise BuildError(str(error)) from None


def _check_retrievers(options: BuildOptions) -> None:
    from benchmark.retrieval import check_retriever_installed, check_retriever_name

    for name in options.retrievers:
        try:
            check_retriever_name(name)
            if not options.dry_run:  # a dry run needs none of them; it says which are missing
                check_retriever_installed(name)
        except (ValueError, ImportError) as error:
            raise BuildError(f"--retrievers: {error}") from None


def _check_credentials(options: BuildOptions) -> None:
    """A Hub token for --push-to-hub and an OpenAI key for openai-emb on OpenAI's endpoint (not for a dry run)."""
    if options.push_to_hub and not options.dry_run:
        from huggingface_hub import get_token

        from reddit_amazon.hub_push import TOKEN_NEEDED

        if not (os.environ.get("HF_TOKEN") or get_token()):
            raise BuildError(f"--push-to-hub {TOKEN_NEEDED} (checked before the long stages run)")
    if "openai-emb" in options.retrievers and not options.dry_run and not os.environ.get("OPENAI_API_KEY"):
        from reddit_amazon.openai_endpoint import DEFAULT_BASE_URL, endpoint_url

        if endpoint_url(options.embedding_base_url) == DEFAULT_BASE_URL:  # a local server takes no key
            raise BuildError("--retrievers openai-emb needs OPENAI_API_KEY, or --embedding-base-url of a local "
                             "server (checked before the long stages run)")


def _check_folders(options: BuildOptions) -> None:
    """A dataset may be written to --out (replacing it loses no input, cache or workdir); --workdir is no dataset."""
    from reddit_amazon.dataset_folder import check_output_folder, in_dataset_folder

    local_inputs = [path for path in [*options.inputs, *options.meta, *options.reviews] if not path.startswith("hub:")]
    read_files = [path for path in (options.llm_template, options.domain_map, options.removals)
                  if path and Path(path).is_file()]
    kept: list[str | Path] = [options.workdir, *local_inputs, *read_files,
                              *(path for path in (options.llm_cache, options.image_store) if path)]
    try:
        check_output_folder(options.out, keep=kept)
    except OSError as error:
        raise BuildError(f"--out: {error}") from None
    if (where := in_dataset_folder(options.workdir)) is not None:  # its work files (Reddit excerpts, caches)
        raise BuildError(f"--workdir: {printable_path(options.workdir)} {where}; its work files would be mixed "
                         "into the dataset and published with it: choose another folder")


def run_build(options: BuildOptions, console=None, *, progress: bool = True,
              error_line: Callable[[BaseException], str] | None = None) -> dict[str, Any] | None:
    """Run every stage; returns the manifest (``None`` for ``--dry-run``). ``progress=False``: no progress bar
    (the stage lines still go to ``console``, by default stderr).

    Once the options pass their check, the run is logged in ``<workdir>/logs/`` (:mod:`reddit_amazon.run_log`):
    what ``console`` shows, each stage's duration, and the end; ``error_line`` makes the line the log ends a failed
    run with (the command line gives the ``Error:`` line it prints)."""
    from rich.console import Console

    from reddit_amazon.progress import quiet
    from reddit_amazon.run_log import LoggedConsole, open_run_log

    console = console or Console(stderr=True)
    started = datetime.now(timezone.utc)
    check_options(options)
    # opened before the lock: a build refused because another one runs says so in a log of its own
    with open_run_log(options.workdir, "build", command_line(options), options.reddit.get("salt"),
                      error_line=error_line) as log, \
            quiet(not progress), folder_lock(options.workdir, "build"):  # two builds in one workdir would collide
        return _run_stages(options, LoggedConsole(console, log), started, log)


def _run_stages(options: BuildOptions, console, started: datetime, log: RunLog) -> dict[str, Any] | None:
    from reddit_amazon.pipeline import kept_pseudonymizer, reddit_stage_lock

    _remove_abandoned_writes(options.workdir)
    if options.sample:
        _seed_sample_caches(options)
    # listed once: a folder of thousands takes seconds
    dump_files = _dump_files(options.inputs, options.workdir, console)
    # The Reddit stage's shards are checked against its stamp (or written and stamped), then read by the catalog
    # stage: `reddit-amazon reddit-stage` on this workdir, which takes the same lock, must not replace them in
    # between. Taken after the workdir's lock, as every build does: the stage on its own takes only this one.
    with reddit_stage_lock(options.workdir):
        reddit = _timed(log, "reddit", lambda: reddit_stage(options, dump_files, console))
        joined = _timed(log, "catalog", lambda: catalog_stage(options, reddit, console))
        # Its salt too, while the lock is held: a `reddit-amazon reddit-stage --salt` on this workdir may replace it
        # before the assemble stage, and u/<name> removals and the manifest's salt_check need the conversations' own.
        pseudonymize = kept_pseudonymizer(options.workdir)
    if options.dry_run:
        print_dry_run(options, joined, console)
        return None
    filtered = _timed(log, "relevance", lambda: relevance_stage(options, joined, console))
    with_images = _timed(log, "images", lambda: images_stage(options, filtered, console))
    funnel = reddit.funnel + joined.funnel + filtered.funnel
    reports = {"reddit": reddit.report, "catalog": joined.report, "relevance": filtered.report,
               "images": with_images.report}
    with log.stage("assemble"):
        manifest = assemble_stage(options, with_images, dump_files, funnel, reports, started, pseudonymize, console)
    print_summary(manifest, console)
    if options.push_to_hub:
        from reddit_amazon.dataset_folder import push_to_hub

        try:
            with log.stage("push"):
                commit = push_to_hub(options.out, options.push_to_hub, private=options.private,
                                     token=os.environ.get("HF_TOKEN"))
        except Exception as error:  # network, permissions, a version already published ...
            raise BuildError(f"{options.out} is written, but pushing it to {options.push_to_hub} failed "
                             f"({type(error).__name__}: {error}); rerun the same command to push again "
                             "(every stage is reused)") from error
        console.print(f"pushed to https://huggingface.co/datasets/{options.push_to_hub} ({commit})")
    return manifest


def _timed(log: RunLog, name: str, run_stage: Callable[[], StageResult]) -> StageResult:
    """``run_stage()``, its start, end, duration and reuse in ``log``."""
    with log.stage(name) as timing:
        result = run_stage()
        timing.reused = result.reused
    return result


def print_dry_run(options: BuildOptions, joined: StageResult, console) -> None:
    from benchmark.retrieval import check_retriever_installed
    from reddit_amazon.images import ImageStore
    from reddit_amazon.relevance import AnswerCache, plan_filter

    console.print("[bold]dry run[/]: nothing below is called or downloaded")
    domain_map = joined.report["domain_map"]
    categories = ", ".join(f"{escape(name or '(empty)')} -> {domain_map.get(name, 'dropped')}: {n:,}"
                           for name, n in joined.report["main_categories"].items())
    console.print(f"  main_category of the linked products: {categories or 'none'}")
    console.print(f"  catalog join: {len(joined.records()):,} conversations kept, dropped "
                  f"{joined.funnel[0]['dropped'] or 'none'}; linked gt ASINs {joined.report['gt_links']}")
    if options.no_filter:
        console.print("  relevance filter: skipped (--no-filter)")
    else:
        filter_options = _filter_options(options)
        with AnswerCache(_relevance_cache_path(options)) as cache:
            plan = plan_filter(joined.records(), cache, filter_options)
        console.print(f"  relevance filter ({filter_options.model}): {plan.records} conversations, "
                      f"{plan.cached} answered in the cache, [bold]{plan.calls} API calls[/], "
                      f"~{plan.approx_total_tokens:,} tokens (approximate: 4 characters per token)")
        _warn_answers_without_endpoint(plan, options, console)
    if options.images:
        store = ImageStore(_image_store_path(options))
        missing = sum(store.to_fetch(i.item_id, i.image_urls) for i in joined.items)
        console.print(f"  images: {len(joined.items)} items joined, {missing} to download (not in the store, "
                      "nor recorded as unavailable; before the filter, fewer after it)")
    if "openai-emb" in options.retrievers:
        _print_embedding_plan(options, joined, console)
    for name in options.retrievers:
        try:
            check_retriever_installed(name)
        except ImportError as error:
            console.print(f"  [yellow]--retrievers: {escape(str(error))}[/] (the build would stop here before stage 1)")


def _print_embedding_plan(options: BuildOptions, joined: StageResult, console) -> None:
    from reddit_amazon.assemble import candidate_searches, items_by_domain, split_by_thread

    searches, _ = candidate_searches(split_by_thread(joined.records(), options.seed), items_by_domain(joined.items))
    retriever = _make_retriever(options, "openai-emb")
    plan = retriever.plan_top_k((search.queries, search.items) for search in searches)
    console.print(f"  openai-emb candidates ({retriever.model_name}): {plan.texts:,} texts to embed (conversations "
                  f"and item titles not in the embedding cache; before the filter, fewer after it), "
                  f"~{plan.approx_tokens:,} tokens in [bold]{plan.requests:,} requests[/] of up to {plan.batch_size} "
                  "texts (approximate: 4 characters per token)")


def print_summary(manifest: dict[str, Any], console) -> None:
    from rich.table import Table

    funnel = Table(title="Build funnel")
    for column in ("stage", "kept", "dropped by reason"):
        funnel.add_column(column, justify="right" if column == "kept" else "left")
    for stage in manifest["funnel"]:
        reasons = ", ".join(f"{reason}: {n:,}" for reason, n in stage["dropped"].items()) or "-"
        funnel.add_row(stage["stage"], f"{stage['kept']:,}", reasons)
    console.print(funnel)
    stats = Table(title="Dataset (Table 1)")
    for column in ("domain", "conversations", "turns", "items", "images", "train", "validation", "test"):
        stats.add_column(column, justify="left" if column == "domain" else "right")
    for domain, values in manifest["stats"].items():
        counts = manifest["counts"][domain]
        stats.add_row(domain, *(f"{values[k]:,}" for k in ("conversations", "turns", "items", "images")),
                      *(f"{counts.get(s, 0):,}" for s in ("train", "validation", "test")))
    console.print(stats)
    images = manifest["build_reports"]["images"]
    if images.get("without_image"):
        console.print(f"items without an image: {images['without_image']}")
    console.print(f"dataset {manifest['version']} ({manifest['fingerprint'][:12]}) written")
    if not sum(values["conversations"] for values in manifest["stats"].values()):
        console.print("[yellow]warning[/]: no conversation was kept, so the dataset is empty: the funnel above "
                      "says which stage dropped them")
    _warn_empty_domains(manifest, console)


def _warn_empty_domains(manifest: dict[str, Any], console) -> None:
    """A domain without conversations, and why when the catalog tells (a --domain-map name that no linked product
    has, metadata files of other categories): a dataset with one empty config is otherwise written without a word."""
    from reddit_amazon.catalog import why_domain_is_empty

    catalog = manifest["build_reports"].get("catalog", {})
    if "domain_map" not in catalog or not catalog.get("wanted_asins"):  # no conversation reached the catalog
        return
    for domain, values in manifest["stats"].items():
        if not values["conversations"]:
            why = why_domain_is_empty(domain, catalog["domain_map"], catalog.get("main_categories", {}))
            console.print(f"[yellow]warning[/]: the {domain} domain is empty: {escape(why)}")


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def _split_list(values: Sequence[str]) -> list[str]:
    return [part.strip() for value in values for part in value.split(",") if part.strip() and part.strip() != "none"]


@click.command("build")
@click.option("--inputs", multiple=True, type=PATH_OR_NAME,
              help="Reddit dump files or folders (.zst, .jsonl/.ndjson, also .gz/.xz/.bz2). Default: the bundled "
                   "sample.")
@click.option("--meta", multiple=True, type=PATH_OR_NAME, help="Amazon Reviews 2023 meta_<Category>.jsonl files (also "
              ".gz/.zst/.xz/.bz2) or folders, or "
              "hub:<repo>:<file.jsonl | config> (e.g. hub:McAuley-Lab/Amazon-Reviews-2023:raw_meta_All_Beauty).")
@click.option("--reviews", multiple=True, type=PATH_OR_NAME,
              help="Amazon Reviews 2023 review files/folders (asin -> parent_asin), or "
                   "hub:<repo>:<file.jsonl | config> (e.g. ...:raw_review_All_Beauty).")
@click.option("--out", type=OutputPath(path_type=Path), default=Path("reddit-amazon"), show_default=True,
              help="Dataset folder to write.")
@click.option("--workdir", type=OutputPath(path_type=Path), help="Intermediate files and caches (resumable). "
              "Default: <out>.work")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the thread-level 8:1:1 splits and of each candidate list's order: any integer (it is "
                   "hashed as text with each thread and record id).")
@click.option("--version", "version", default=DATASET_VERSION, show_default=True, help="Dataset version (semver).")
@click.option("--domain-map", type=PATH_OR_NAME,
              help="main_category -> domain: a JSON file or 'All Beauty=beauty;AMAZON FASHION=fashion'.")
@click.option("--llm-base-url", help="OpenAI-compatible endpoint for the relevance filter (key: OPENAI_API_KEY).")
@click.option("--llm-model", default="gpt-3.5-turbo", show_default=True, help="Model of the relevance filter.")
@click.option("--llm-template", type=UserPath(exists=True, dir_okay=False), help="Prompt template replacing "
              "the paper's Table 9 (must contain {conversation}).")
@click.option("--llm-concurrency", type=click.IntRange(1, 256), default=8, show_default=True,
              help="Relevance-filter calls in flight at once.")
@click.option("--llm-max-attempts", type=click.IntRange(1, 100), default=6, show_default=True,
              help="Attempts per call on 429 / 5xx / timeouts (exponential backoff between them).")
@click.option("--llm-cache", type=UserPath(path_type=Path), help="SQLite answer cache. Default: <workdir>/"
              f"{RELEVANCE_CACHE}")
@click.option("--no-filter", is_flag=True, help="Keep every candidate conversation (no LLM calls).")
@click.option("--dry-run", is_flag=True,
              help="Run the local stages, then report LLM and embedding calls, tokens and images needed.")
@click.option("--retrievers", multiple=True, default=["sbert"], show_default=True,
              help="Candidate retrievers, comma-separated: sbert, bm25, openai-emb (or none).")
@click.option("--embedding-base-url",
              help="OpenAI-compatible embeddings endpoint for openai-emb (key: OPENAI_API_KEY).")
@click.option("--embedding-model", help="Embedding model for openai-emb [default: text-embedding-3-large].")
@click.option("--images/--no-images", default=True, show_default=True, help="Download and embed item images.")
@click.option("--image-store", type=UserPath(path_type=Path), help="Image store folder. Default: <workdir>/images")
@click.option("--image-concurrency", type=click.IntRange(1, 256), default=8, show_default=True,
              help="Image downloads in flight at once.")
@click.option("--allow-private-image-hosts", is_flag=True,
              help="Let image URLs and their redirects reach loopback, private, link-local (cloud metadata) and "
                   "other non-public addresses; refused by default, counted as private_host.")
@click.option("--push-to-hub", metavar="REPO", help="Publish the folder as a Hub dataset (token: HF_TOKEN).")
@click.option("--private", is_flag=True, help="With --push-to-hub: create the repo private.")
@click.option("--removals", type=UserPath(exists=True, dir_okay=False, path_type=Path),
              help="Removal requests to honour (as `reddit-amazon remove --requests` reads them), applied after the "
                   "split so other threads keep theirs; u/<name> lines use the Reddit stage's salt.")
@click.option("--salt", envvar="REDDIT_AMAZON_SALT", show_envvar=True,
              help="Salt of the author pseudonyms (Reddit stage) [default: random, kept in the workdir]; safer in "
                   "the environment than on a command line, which other users of the machine can list.")
@click.option("--executor", type=click.Choice(["local", "slurm", "ray"]), help="Reddit stage executor.")
@click.option("--partition", help="Slurm partition (with --executor slurm).")
@click.option("--workers", type=click.IntRange(1, 4096), help="Reddit stage parallel tasks.")
@click.option("--resolve-short-links/--no-resolve-short-links", default=None,
              help="Resolve amzn.to / a.co links over the network (Reddit stage).")
@click.option("--short-link-deadline", type=click.FloatRange(0, min_open=True), metavar="SECONDS",
              help="Time one short link may take, retries and redirect hops included; then it is unresolved "
                   "(Reddit stage) [default: 60].")
@click.option("--quiet", is_flag=True, help="No progress bars (the stages, funnel and errors are still printed).")
def build_command(inputs, meta, reviews, out, workdir, seed, version, domain_map, llm_base_url, llm_model,
                  llm_template, llm_concurrency, llm_max_attempts, llm_cache, no_filter, dry_run, retrievers,
                  embedding_base_url, embedding_model, images, image_store, image_concurrency,
                  allow_private_image_hosts, push_to_hub, private, removals, salt, executor, partition, workers,
                  resolve_short_links, short_link_deadline, quiet) -> None:
    """Build the dataset folder from Reddit dumps and Amazon Reviews 2023, printing the funnel.

    With no arguments, builds the bundled sample end to end, offline.

    \b
    Examples:
      reddit-amazon build                                   # bundled sample -> ./reddit-amazon
      reddit-amazon build --dry-run --inputs dumps/ --meta amazon/ --reviews amazon/
      reddit-amazon build --inputs dumps/ --meta amazon/ --reviews amazon/ \\
          --retrievers sbert,bm25,openai-emb --out reddit-amazon --push-to-hub me/reddit-amazon
      reddit-amazon build --inputs dumps/ --meta amazon/ --reviews amazon/ --removals removals.txt
      reddit-amazon build --inputs dumps/ --meta amazon/ --reviews amazon/ \\
          --llm-base-url http://localhost:8000/v1 --llm-model Qwen/Qwen2.5-7B-Instruct
    """
    sample = not inputs
    if sample and (meta or reviews):
        raise click.UsageError("--meta/--reviews need --inputs (without --inputs the bundled sample is built)")
    if not sample and not meta:
        raise click.UsageError("--inputs needs --meta (Amazon Reviews 2023 metadata files or hub: specs)")
    if partition and executor != "slurm":
        raise click.UsageError("--partition is for --executor slurm")
    reddit = {"salt": salt, "executor": executor, "slurm_partition": partition, "workers": workers,
              "resolve_short_links": resolve_short_links, "short_link_deadline_s": short_link_deadline}
    settings = dict(
        seed=seed, version=version, domain_map=domain_map, llm_base_url=llm_base_url, llm_model=llm_model,
        llm_template=llm_template, llm_concurrency=llm_concurrency, llm_max_attempts=llm_max_attempts,
        llm_cache=llm_cache, no_filter=no_filter, dry_run=dry_run, retrievers=_split_list(retrievers),
        embedding_base_url=embedding_base_url, embedding_model=embedding_model, images=images,
        image_store=image_store, image_concurrency=image_concurrency,
        allow_private_image_hosts=allow_private_image_hosts, push_to_hub=push_to_hub, private=private,
        removals=removals, reddit={k: v for k, v in reddit.items() if v is not None},
    )
    import openai

    # A BuildError's message is the whole line; CatalogError, SchemaError, unreadable files, an embedding endpoint
    # refusing, a broken cache file: the message names the source.
    error_kinds = (ValueError, OSError, RuntimeError, openai.OpenAIError, sqlite3.Error)

    def error_line(error: BaseException) -> str:  # the line the run log ends with: the one printed
        return shown_error_line(click.ClickException(str(error)) if isinstance(error, BuildError) else error,
                                *error_kinds)

    with user_errors(*error_kinds), _build_errors_as_lines():
        if sample:
            options = sample_options(out, workdir, **settings)
        else:
            options = BuildOptions(inputs=list(inputs), meta=list(meta), reviews=list(reviews), out=out,
                                   workdir=workdir or default_workdir(out), **settings)
        run_build(options, progress=not quiet, error_line=error_line)


@contextmanager
def _build_errors_as_lines() -> Iterator[None]:
    """A :class:`BuildError` as the command's ``Error:`` line, its message alone (``user_errors`` redacts it)."""
    try:
        yield
    except BuildError as error:
        raise click.ClickException(str(error)) from error
