"""``benchmark run``: feed a recommender batches of examples, parse, score, write results.

Output folder::

    DIR/run.json            what was asked (model as typed and its identity, args, plugin code, dataset, split,
                            candidates, domain, limit, batch size)
    DIR/predictions.jsonl   one line per record: example_id, domain, output, parsed, valid, hit, ...
    DIR/results.json        metrics (per domain and "all", with 95% bootstrap CIs), counts, provenance

Predictions are appended as each batch finishes, so an interrupted run resumes where it stopped.
A finished run (results.json present, same run.json) is returned as is unless ``overwrite``.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar

import orjson

from benchmark import registry
from benchmark.data import (
    DatasetError,
    DatasetInfo,
    ItemLookup,
    Record,
    candidate_ids_of,
    check_candidate_set,
    domains_for,
    iter_records,
    load_conversations,
    load_items,
    resolve_dataset,
)
from benchmark.metrics import (
    DEFAULT_BOOTSTRAP_SAMPLES,
    DEFAULT_SEED,
    OVERALL,
    Outcome,
    parse_prediction,
    score,
    summarize_by_domain,
)
from benchmark.protocol import DEFAULT_BATCH_SIZE, Candidate, RankingRecommender, Recommender
from reddit_amazon.cli_seed import SEED_MAX, SEED_MIN, SEED_RANGE_HELP
from reddit_amazon.files import (folder_lock, open_named, read_json, remove_abandoned_temp_files, write_atomic,
                                 write_jsonl_atomic)
from reddit_amazon.progress import bar_options, quiet

RUN_FILE = "run.json"
PREDICTIONS_FILE = "predictions.jsonl"
RESULTS_FILE = "results.json"
#: What holds an --out folder's lock, as a second writer's refusal names it: runs and retrievals share the lock, a
#: retrieval into a run's folder would replace its results.json.
OUT_LOCK_HOLDER = "benchmark run or retrieve"
RESULTS_FORMAT = 1

log = logging.getLogger(__name__)


class RunError(RuntimeError):
    """The run cannot proceed (conflicting output folder, misbehaving plugin)."""


@dataclass(kw_only=True)
class BenchmarkConfig:
    """What a model run (:class:`RunConfig`) and a retrieval (``benchmark.retrieve.RetrieveConfig``) share: the
    records scored and how their metrics' confidence intervals are drawn. Keyword-only, as are the configs' own
    fields but the first two (the model or retriever, and its options): a field before these once took each
    position after them."""

    dataset: str | os.PathLike | None = None  # a folder or Hub id; None: the bundled sample
    domain: str = "all"
    split: str = "test"
    limit: int | None = None
    bootstrap_samples: int = DEFAULT_BOOTSTRAP_SAMPLES
    seed: int = DEFAULT_SEED

    #: ``(field, least value, whether None is allowed)`` of the integer fields but ``seed``: what the command line's
    #: option types check, checked for callers from Python too (``seed`` as ``--seed``: :data:`SEED`).
    _integer_fields: ClassVar[tuple[tuple[str, int, bool], ...]] = (
        ("limit", 1, True), ("bootstrap_samples", 0, False))

    def __post_init__(self) -> None:
        for name, least, optional in self._integer_fields:
            value = getattr(self, name)
            if value is None and optional:
                continue
            if not _is_integer(value) or value < least:
                raise RunError(f"{type(self).__name__}.{name} must be an integer >= {least}"
                               f"{' or None' if optional else ''}, not {value!r}")
        # One beyond 64 bits passed on to the end of the run, where results.json could not record it.
        if not _is_integer(self.seed) or not SEED_MIN <= self.seed <= SEED_MAX:
            raise RunError(f"{type(self).__name__}.seed must be an integer from {SEED_RANGE_HELP}, not {self.seed!r}")


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class RunConfig(BenchmarkConfig):
    model: str
    model_args: dict[str, Any] = field(default_factory=dict)
    # Keyword-only by field(kw_only=True), not a KW_ONLY marker: typing.get_type_hints fails on one under
    # Python 3.10 with postponed annotations.
    candidates: str = field(default="sbert", kw_only=True)
    batch_size: int | None = field(default=None, kw_only=True)  # None: the plugin's, else DEFAULT_BATCH_SIZE

    _integer_fields = (*BenchmarkConfig._integer_fields, ("batch_size", 1, True))


recorded_args = registry.redacted_args  # model args as run.json / results.json record them


def _signature(config: RunConfig, info: DatasetInfo, resolved: registry.ResolvedModel | None) -> dict[str, Any]:
    """What must match for cached predictions to be reused (all but ``model``, as typed, which
    ``model_identity`` stands for whatever its spelling)."""
    return {
        "model": config.model,
        "model_identity": config.model if resolved is None else resolved.identity,
        "model_args": recorded_args(config.model_args),
        "model_code": code_entry(resolved),  # an edited plugin file is another run
        "dataset": {"id": info.id, "fingerprint": info.fingerprint},
        "domain": config.domain,
        "split": config.split,
        "candidates": config.candidates,
        "limit": config.limit,
        # Batches change a batched model's padding, and so possibly its outputs (as batch_size in model_args does).
        "batch_size": config.batch_size,
    }


def run(config: RunConfig, out_dir: str | os.PathLike, *, overwrite: bool = False, progress: bool = True,
        recommender: Recommender | RankingRecommender | None = None) -> dict[str, Any]:
    """Evaluate and return the results dict (also written to ``out_dir/results.json``).

    ``recommender`` may be passed ready-made (tests, notebooks); otherwise ``config.model`` is resolved.
    A second run into the same ``out_dir`` while this one goes on is refused
    (:class:`~reddit_amazon.files.FolderBusyError`).
    """
    out = Path(out_dir)
    refuse_dataset_folder(out)  # before the lock, which makes the folder
    # Two runs into one folder would mix; a run that fails before it writes anything leaves no folder behind (nor
    # the parents made for it). progress=False: no bar of the libraries either ("Generating test split").
    with folder_lock(out, OUT_LOCK_HOLDER, tidy_on_error=True), quiet(not progress), registry.plugin_imports():
        remove_abandoned_temp_files(out)  # a run killed (kill -9) while writing run.json or results.json left it
        return _run(config, out, overwrite, progress, recommender)


def refuse_dataset_folder(out: Path) -> None:
    """A run's or retrieval's files in a dataset folder (``--out`` = ``--dataset``) would leave it no longer matching
    its manifest and no longer rebuildable in place."""
    from reddit_amazon.dataset_folder import in_dataset_folder

    if (where := in_dataset_folder(out)) is not None:
        raise RunError(f"--out {out} {where}: the run's files would be mixed into it; choose another --out")


def _run(config: RunConfig, out: Path, overwrite: bool, progress: bool,
         recommender: Recommender | RankingRecommender | None) -> dict[str, Any]:
    started = time.perf_counter()
    resolved = registry.resolve(config.model) if recommender is None else None  # fail fast on a bad name
    model_args = config.model_args if resolved is None else registry.typed_args(resolved, config.model_args)
    info = resolve_dataset(config.dataset)
    signature = _signature(config, info, resolved)
    finished = _check_folder(out, signature, overwrite)
    if finished is not None:
        return _finished_run(finished, out, config)

    load_started = time.perf_counter()
    domains = domains_for(info, config.domain, config.split)
    splits = _load_splits(info, domains, config)
    load_seconds = time.perf_counter() - load_started

    if resolved is not None:
        recommender = registry.instantiate(resolved, model_args)
    batch_size = _batch_size(config, recommender)
    ranks = callable(registry.plugin_attribute(recommender, "rank", None))
    # After the plugin: one that reads no image gets none, or every candidate's image would sit in memory.
    with_images = registry.plugin_attribute(recommender, "uses_images", True) is not False
    load_started = time.perf_counter()
    for split in splits:
        split.items.finish_loading(with_images)
    load_seconds += time.perf_counter() - load_started
    records: list[Record] = []
    for split in splits:
        records.extend(iter_records(split.conversations, split.column, split.items, split.where, config.limit,
                                    domain=split.domain))
    _check_unique(records)
    untitled = _untitled_candidates(records, with_images)
    _start_folder(out, signature, overwrite)  # only now: a run that fails before this leaves nothing behind
    cached = _read_predictions(out / PREDICTIONS_FILE)
    todo = [r for r in records if (r.example.domain, r.example.example_id) not in cached]
    try:
        inference_seconds = _predict(recommender, config.model, ranks, todo, batch_size, out / PREDICTIONS_FILE, cached,
                                     progress)
    except BaseException:
        _unstart_folder(out)
        raise

    score_started = time.perf_counter()
    outcomes, metrics = _score(records, cached, out / PREDICTIONS_FILE, config)
    score_seconds = time.perf_counter() - score_started

    missing_items = sorted(set().union(*(split.items.missing for split in splits)))
    results = {
        "format": RESULTS_FORMAT,
        "metrics": metrics,
        "counts": _counts(records, outcomes, domains),
        "model": _model_entry(config, resolved, model_args, recommender, ranks),
        "dataset": dataset_entry(info),
        "domain": config.domain,
        "domains": domains,
        "split": config.split,
        "candidates": config.candidates,
        "limit": config.limit,
        "batch_size": batch_size,
        "bootstrap": bootstrap_entry(config.bootstrap_samples, config.seed),
        "items_missing_from_catalog": missing_items,
        "items_without_title": untitled,
        "timings": {
            "load_s": round(load_seconds, 3),
            "inference_s": round(inference_seconds, 3),
            "inference_records": len(todo),
            "resumed_records": len(records) - len(todo),
            "score_s": round(score_seconds, 3),
            "total_s": round(time.perf_counter() - started, 3),
        },
        **provenance(),
    }
    write_atomic(out / RESULTS_FILE, orjson.dumps(results, option=orjson.OPT_INDENT_2) + b"\n")
    return results


def _model_entry(config: RunConfig, resolved: registry.ResolvedModel | None, model_args: dict[str, Any],
                 recommender: Any, ranks: bool) -> dict[str, Any]:
    """results.json's account of the model: where it came from, its settings (defaults included), its device."""
    if resolved is not None:
        origin = {"target": resolved.target, "source": resolved.source}
    else:  # passed in ready-made
        kind = type(recommender)
        origin = {"target": f"{kind.__module__}:{kind.__qualname__}", "source": "object"}
    return {"spec": config.model, **origin, "name": registry.plugin_attribute(recommender, "name", config.model),
            "args": recorded_args(config.model_args),
            "settings": registry.recorded_settings(recommender, resolved, model_args),
            "code": code_entry(resolved),
            "returns": "ranking" if ranks else "text", **device_entry(recommender),
            **embeddings_entry(recommender)}


def _finished_run(finished: dict[str, Any], out: Path, config: RunConfig) -> dict[str, Any]:
    """The results of the finished run ``out`` holds, with its intervals redrawn when the bootstrap settings differ."""
    # Said aloud: code that model_code does not cover (the toolkit's, a plugin's helper modules, an object
    # passed in) may have been edited since, and would otherwise seem to score as before.
    log.warning("%s already holds this finished run: its results are returned without running the model "
                "(--overwrite runs it again)", out)
    if finished.get("bootstrap") != bootstrap_entry(config.bootstrap_samples, config.seed):
        finished = _with_new_intervals(finished, out, config)
        write_atomic(out / RESULTS_FILE, orjson.dumps(finished, option=orjson.OPT_INDENT_2) + b"\n")
    return finished


@dataclass(frozen=True)
class _Split:
    """One domain's split to score: its conversations, candidate column and the items its candidates name."""

    domain: str
    conversations: Any  # a datasets.Dataset
    column: str  # the candidate set's column
    where: str  # "<dataset> <domain>/<split>", for messages
    items: ItemLookup  # text only until finish_loading, once the plugin says whether it reads images


def _load_splits(info: DatasetInfo, domains: Sequence[str], config: RunConfig) -> list[_Split]:
    """Every domain's conversations, then the text of the items their candidates name."""
    loaded = []
    for domain in domains:
        conversations = load_conversations(info, domain, config.split)
        where = f"{info.id} {domain}/{config.split}"
        column = check_candidate_set(info, conversations.column_names, config.candidates, where)
        loaded.append((domain, conversations, column, where))
    # Text only, before the plugin: a domain without items fails before a heavy model loads.
    return [_Split(domain, conversations, column, where,
                   load_items(info, domain, candidate_ids_of(conversations, column, config.limit)))
            for domain, conversations, column, where in loaded]


def _batch_size(config: RunConfig, recommender: Any) -> int:
    """--batch-size, else the plugin's ``batch_size`` attribute, else the default."""
    batch_size = next((size for size in (config.batch_size, registry.plugin_attribute(recommender, "batch_size", None))
                       if size is not None), DEFAULT_BATCH_SIZE)  # 0 is a wrong size, not "unset"
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise RunError(f"{config.model}: batch_size must be a positive integer, not {batch_size!r}")
    return batch_size


def _score(records: Sequence[Record], predictions: dict[tuple[str, str], dict[str, Any]], path: Path,
           config: RunConfig) -> tuple[list[Outcome], dict[str, Any]]:
    """Each record's outcome and the metrics; ``path`` is rewritten with the scored predictions in dataset order."""
    rows, outcomes = [], []
    for record in records:
        row = predictions[(record.example.domain, record.example.example_id)]
        outcome = _score_row(row, record)
        rows.append(row)
        outcomes.append(outcome)
    write_jsonl_atomic(path, rows)
    metrics = summarize_by_domain([r.example.domain for r in records], outcomes, config.bootstrap_samples,
                                  config.seed)
    return outcomes, metrics


def _with_new_intervals(finished: dict[str, Any], out: Path, config: RunConfig) -> dict[str, Any]:
    """A finished run's results with confidence intervals for other bootstrap settings, from its
    scored predictions (the scores themselves cannot change)."""
    from benchmark.compare import scored_predictions

    try:
        rows = scored_predictions(out / PREDICTIONS_FILE)
    except ValueError as error:  # its message says to rerun with --overwrite
        raise RunError(str(error)) from None
    outcomes = [Outcome(pairs=row["gt_pairs"], hits=row["hits"], valid=row["valid"],
                        recall=tuple(row.get("recall", ())), ndcg=tuple(row.get("ndcg", ()))) for row in rows]
    metrics = summarize_by_domain([row["domain"] for row in rows], outcomes, config.bootstrap_samples, config.seed)
    return {**finished, "metrics": metrics, "bootstrap": bootstrap_entry(config.bootstrap_samples, config.seed)}


def _untitled_candidates(records: Sequence[Record], with_images: bool) -> dict[str, int]:
    """How many distinct candidate items have no title (an imported release has no metadata for its items):
    a recommender that reads titles then has nothing to choose by, and its scores say so only here."""
    items = {c.item_id: c for r in records for c in r.example.candidates}
    untitled = sum(1 for c in items.values() if not c.title.strip())
    if untitled:
        no_image = f" (and {sum(1 for c in items.values() if c.image_bytes is None)} no image)" if with_images else ""
        log.warning("%d of %d candidate items have no title%s: recommenders that read them choose blind",
                    untitled, len(items), no_image)
    return {"items": untitled, "of": len(items)}


def _check_unique(records: Sequence[Record]) -> None:
    seen: set[tuple[str, str]] = set()
    for record in records:
        key = (record.example.domain, record.example.example_id)
        if key in seen:
            raise DatasetError(f"{key[0]}: example_id {key[1]!r} occurs more than once; predictions are keyed by it")
        seen.add(key)


#: What to do about a damaged run.json or results.json in a run's folder.
_START_OVER = "pass --overwrite to start over"


def _check_folder(out: Path, signature: dict[str, Any], overwrite: bool) -> dict[str, Any] | None:
    """Refuse an ``out`` that holds another run (or files of unknown origin), without changing it; the
    results of this run when it already finished."""
    run_path = out / RUN_FILE
    if overwrite:
        return None
    if run_path.is_file():
        recorded = read_json(run_path, remedy=_START_OVER)
        # A field an earlier release did not record (batch_size) reads as unset, as it was then.
        previous = {**dict.fromkeys(signature), **recorded}
        current = orjson.loads(orjson.dumps(signature))  # as it reads back from run.json
        predictions = out / PREDICTIONS_FILE
        started = (out / RESULTS_FILE).exists() or (predictions.is_file() and predictions.stat().st_size > 0)
        if previous["model_identity"] is None:  # an earlier release's run.json: its model as typed then
            previous["model_identity"] = current["model_identity"] if previous["model"] == current["model"] \
                else registry.identity(str(previous["model"]))
        changed = [k for k in current if k != "model" and not _same(k, previous.get(k), current[k])]
        if changed and not started:
            return None  # a run that failed before its first prediction (a typo in a model name): free again
        if changed == ["model_code"] and "model_code" not in recorded:
            raise RunError(f"{out} holds a run of {previous['model']} by an earlier release, which did not record "
                           "the plugin's code, so whether it changed since is unknown; pass --overwrite to run it "
                           "again or choose another --out")
        if changed:
            differences = ", ".join(_difference(k, previous.get(k), current[k]) for k in changed)
            raise RunError(f"{out} holds a different run (differs in: {differences}); "
                           "pass --overwrite to replace it or choose another --out")
        results_path = out / RESULTS_FILE
        if not results_path.is_file():
            return None
        finished = read_json(results_path, remedy=_START_OVER)
        if finished.get("model", {}).get("spec") != previous["model"]:  # the spec of the run that wrote run.json
            raise RunError(f"{results_path} was not written by this run (another command wrote into {out}); "
                           "pass --overwrite or choose another --out")
        return finished
    if (out / PREDICTIONS_FILE).exists() or (out / RESULTS_FILE).exists():
        raise RunError(f"{out} has predictions or results but no {RUN_FILE}; pass --overwrite or choose another --out")
    return None


def _difference(field: str, previous: Any, current: Any) -> str:
    """A field that differs, as the refusal names it: a dataset by its fingerprints, as the same ``--dataset`` (the
    bundled sample of another release, a folder rebuilt in place) may hold other data."""
    before, now = (value.get("fingerprint") if isinstance(value, dict) else None for value in (previous, current))
    if field == "dataset" and isinstance(before, str) and isinstance(now, str) and "unknown" not in (before, now):
        return f"dataset (content fingerprint {before[:12]} in the folder, {now[:12]} now)"
    if field == "model_code" and previous is not None:
        return "model_code (the plugin's code is not the code that run used)"
    return field


def _same(field: str, previous: Any, current: Any) -> bool:
    """Whether a run.json field allows reusing the run: a dataset is the same when its known content
    fingerprint is (the bundled sample and a rebuild of it elsewhere, a folder that moved)."""
    if field == "dataset" and isinstance(previous, dict) and previous.get("fingerprint") not in (None, "unknown"):
        return previous.get("fingerprint") == current.get("fingerprint")
    return previous == current


def _start_folder(out: Path, signature: dict[str, Any], overwrite: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if overwrite:
        for name in (PREDICTIONS_FILE, RESULTS_FILE):
            (out / name).unlink(missing_ok=True)
    write_atomic(out / RUN_FILE, orjson.dumps(signature, option=orjson.OPT_INDENT_2) + b"\n")


def _unstart_folder(out: Path) -> None:
    """Undo :func:`_start_folder` for a run whose first batch failed (a model loaded on first use, like
    ``sbert``'s, that cannot load; an endpoint refusing the first request): with no prediction in the folder,
    nothing is left that ``report`` would list as an unfinished run. Predictions, this run's or an earlier
    one's, are kept with their run.json for a rerun to resume."""
    predictions = out / PREDICTIONS_FILE
    if predictions.is_file() and predictions.stat().st_size > 0:
        return
    predictions.unlink(missing_ok=True)
    (out / RUN_FILE).unlink(missing_ok=True)


def _read_predictions(path: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """Rows already predicted. A last line without its newline (an interrupted write, even one cut
    right after a complete row) is dropped and cut from the file, so appends start on a fresh line. Lines end at
    ``\n`` only: a ``\r`` in a damaged line must not pass for the torn tail, cutting the rows after it."""
    cached: dict[tuple[str, str], dict[str, Any]] = {}
    if not path.is_file():
        return cached
    data = path.read_bytes()
    *complete, torn_tail = data.split(b"\n")  # that record is predicted again
    for number, line in enumerate(complete, 1):
        try:
            row = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise RunError(f"{path}:{number}: damaged, not valid JSON; remove the line or pass --overwrite") from None
        if not (isinstance(row, dict) and isinstance(row.get("domain"), str)
                and isinstance(row.get("example_id"), str)):
            raise RunError(f"{path}:{number}: damaged, not a prediction of a benchmark run (a JSON object with "
                           "domain and example_id); remove the line or pass --overwrite")
        cached[(row["domain"], row["example_id"])] = row
    good_end = len(data) - len(torn_tail)
    if good_end != len(data):
        with open(path, "r+b") as handle:
            handle.truncate(good_end)
    return cached


def _predict(recommender: Any, model: str, ranks: bool, todo: Sequence[Record], batch_size: int, path: Path,
             cached: dict[tuple[str, str], dict[str, Any]], progress: bool) -> float:
    """Append the outputs for ``todo`` to ``path``, batch by batch; errors name the recommender as ``model`` (its
    ``--model``: a sweep's log shows which of its runs failed)."""
    if not todo:
        return 0.0
    from tqdm.auto import tqdm

    method = "rank" if ranks else "recommend"
    call: Callable = getattr(recommender, method)
    called = f"recommender {model!r}: {method}()"
    shipped = registry.ships_with_toolkit(recommender)
    seconds = 0.0
    # Only the file's own operations name it: the recommender's errors (a refused connection, a timeout:
    # OSErrors without a file name too) must not be reported as the predictions file's.
    handle = open_named(path, "ab")
    with handle, tqdm(total=len(todo), unit="rec", desc="predicting", **bar_options(progress)) as bar:
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            examples = [r.example for r in batch]
            began = time.perf_counter()
            try:
                outputs = call(list(examples))  # its own list: one it sorts in place leaves ours in order
            except BaseException as error:  # sys.exit() and Ctrl-C in a plugin too: the CLI names the call they stopped
                if not shipped:
                    ids = ", ".join(e.example_id for e in examples[:3]) + (", ..." if len(examples) > 3 else "")
                    happened = "" if isinstance(error, KeyboardInterrupt) else " failed"
                    registry.mark_plugin_failure(error, f"{called}{happened} on {len(examples)} example(s) ({ids})")
                raise
            seconds += time.perf_counter() - began
            _check_outputs(outputs, examples, ranks, called)
            lines = []
            for example, output in zip(examples, outputs):
                row: dict[str, Any] = {"example_id": example.example_id, "domain": example.domain}
                if ranks:
                    row["output"] = output[0] if output else ""
                    row["ranking"] = list(output)
                else:
                    row["output"] = output
                cached[(example.domain, example.example_id)] = row
                lines.append(orjson.dumps(row))
            handle.write(b"\n".join(lines) + b"\n")
            handle.flush()
            bar.update(len(batch))
    return seconds


def _check_outputs(outputs: Any, examples: Sequence[Any], ranks: bool, called: str) -> None:
    """Refuse outputs the harness cannot score, saying what to return instead."""
    each = "list of item ids (str)" if ranks else "str"
    if not isinstance(outputs, list) or len(outputs) != len(examples):
        got = f"{len(outputs)} outputs" if isinstance(outputs, list) else f"a {type(outputs).__name__}"
        raise RunError(f"{called} returned {got} for {len(examples)} examples; it must return a list with one "
                       f"{each} per example, in order")
    for example, output in zip(examples, outputs):
        unscorable = _unscorable(output, ranks)
        if unscorable is not None:
            nothing = "[]" if ranks else '""'
            raise RunError(f"{called} returned {unscorable} for {example.example_id}; expected a {each} "
                           f"(return {nothing} where the model has no answer: the record then scores as not valid)")
        texts = list(output) if ranks else [output]
        if not all(_encodable(text) for text in texts):
            raise RunError(f"{called} returned text that is not valid Unicode (a lone surrogate) for "
                           f"{example.example_id}")


def _unscorable(output: Any, ranks: bool) -> str | None:
    """What one example's output is, said where the harness cannot score it (a ranking: what its first entry that is
    not an id is); None where it can."""
    if ranks and isinstance(output, (list, tuple)):
        odd = [entry for entry in output if not isinstance(entry, str)]
        return f"a {type(output).__name__} holding {_kind(odd[0])}" if odd else None
    return None if isinstance(output, str) and not ranks else _kind(output)


def _kind(value: Any) -> str:
    """The type of ``value``; for a candidate, where its id is (it is not a text nor an id)."""
    return "Candidate (its id is its item_id)" if isinstance(value, Candidate) else type(value).__name__


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _score_row(row: dict[str, Any], record: Record) -> Outcome:
    """Parse and score (again) from the raw output, so cached rows are always scored by this code."""
    parsed = parse_prediction(row["output"])
    candidates = [c.item_id for c in record.example.candidates]
    outcome = score(parsed, record.gt_items, candidates, row.get("ranking"))
    row["parsed"] = parsed
    row["valid"] = outcome.valid
    row["hit"] = outcome.hits > 0
    row["hits"] = outcome.hits
    row["gt_pairs"] = outcome.pairs
    if outcome.recall:
        row["recall"] = list(outcome.recall)
        row["ndcg"] = list(outcome.ndcg)
    return outcome


def _counts(records: Sequence[Record], outcomes: Sequence[Outcome], domains: Sequence[str]) -> dict[str, dict]:
    """Records, (record, gt item) pairs, hits and valid answers per domain and overall, and the pairs whose gt item
    is among the record's candidates: what a model answering only candidates can hit at most (19-65% of the pairs
    on the authors' validation sets)."""
    counts = {d: {"records": 0, "gt_pairs": 0, "gt_in_candidates": 0, "hits": 0, "valid": 0}
              for d in [*domains, OVERALL]}
    for record, outcome in zip(records, outcomes):
        candidates = {candidate.item_id for candidate in record.example.candidates}
        reachable = sum(gt in candidates for gt in record.gt_items)
        for group in (record.example.domain, OVERALL):
            entry = counts[group]
            entry["records"] += 1
            entry["gt_pairs"] += outcome.pairs
            entry["gt_in_candidates"] += reachable
            entry["hits"] += outcome.hits
            entry["valid"] += int(outcome.valid)
    return counts


def code_entry(resolved: registry.ResolvedModel | None) -> dict[str, Any] | None:
    """A plugin's code as run.json and results.json record it (None: the toolkit's own, or an object passed in)."""
    return None if resolved is None or resolved.code is None else asdict(resolved.code)


def dataset_entry(info: DatasetInfo) -> dict[str, Any]:
    """The dataset as results.json records it."""
    return {"id": info.id, "version": info.version or "unknown", "fingerprint": info.fingerprint or "unknown"}


def device_entry(recommender: Any) -> dict[str, str | None]:
    """Where the recommender ran its model, as its ``device`` attribute says (``cpu``, ``cuda:0``), and that CUDA
    device's name; both ``None`` for one that says nothing (``random``, ``bm25``, ``openai-chat`` run no model
    here)."""
    device = registry.plugin_attribute(recommender, "device", None)
    if device is None:
        return {"device": None, "device_name": None}
    return {"device": str(device), "device_name": cuda_device_name(str(device))}


def embeddings_entry(model: Any) -> dict[str, Any]:
    """``{"embeddings": ...}``, where the vectors of a model that ranks by embeddings (``sbert``) came from: computed
    in this run or read from the embedding cache, and which library versions wrote the cache's vectors. Nothing for
    any other model."""
    provenance = registry.plugin_attribute(model, "embedding_provenance", None)
    return {} if provenance is None else {"embeddings": provenance}


def cuda_device_name(device: str) -> str | None:
    """The name of the CUDA device ``device`` (``cuda``, ``cuda:1``) names; ``None`` for any other device."""
    torch = sys.modules.get("torch")  # a recommender on a CUDA device has imported it
    if not device.startswith("cuda") or torch is None or not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name(torch.device(device))


def bootstrap_entry(samples: int, seed: int) -> dict[str, Any]:
    return {"samples": samples, "seed": seed, "level": 0.95, "unit": "record"}


def provenance() -> dict[str, Any]:
    """What produced a results.json, and when."""
    return {"package_version": package_version(), "git_revision": git_revision(), "environment": environment(),
            "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds")}


#: Libraries whose versions can change a run's outputs or scores (tokenizers, embeddings, parsing, resampling).
ENVIRONMENT_PACKAGES = ("numpy", "datasets", "pyarrow", "bm25s", "sentence-transformers", "transformers", "torch",
                        "openai", "peft")


def environment() -> dict[str, Any]:
    """Python, platform, library versions and the machine's first GPU: what a reader needs to rerun a run as it
    was. The GPU is the machine's, whether or not the model ran on it (``model.device`` says where it did)."""
    import platform

    from reddit_amazon.build import package_versions

    torch = sys.modules.get("torch")  # only when the run loaded it: importing torch here would cost seconds
    machine_gpu = torch.cuda.get_device_name(0) if torch is not None and torch.cuda.is_available() else None
    return {"python": platform.python_version(), "platform": platform.platform(), "machine": platform.machine(),
            "packages": package_versions(ENVIRONMENT_PACKAGES), "machine_gpu": machine_gpu}


def package_version() -> str:
    from reddit_amazon import __version__

    return __version__


def git_revision() -> str | None:
    """The checkout's commit (with ``-dirty`` when it has local changes); None outside a git checkout."""
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return None
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "")
