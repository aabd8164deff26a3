"""``benchmark retrieve``: top-k items from a domain's full catalog for every record, and the HR@1 of
that ranking (the paper's "retrieval baselines", which rank the whole catalog rather than 10 candidates).

Writes ``DIR/candidates.jsonl`` (example_id, domain, candidates best-first: a ``candidates_<name>``
column stores them unranked, see :func:`reddit_amazon.assemble.shuffled_candidates`) and
``DIR/results.json`` in the format of ``benchmark run``
(``hr@1``, ``recall@k``, ``ndcg@k``; no VR, as in the paper's Table 3).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from benchmark.data import (
    DatasetError,
    domains_for,
    load_conversations,
    load_items,
    resolve_dataset,
)
from benchmark.metrics import (
    RANKING_CUTOFFS,
    score,
    summarize_by_domain,
)
from benchmark.registry import RegistryError, redacted_args, settings_of
from benchmark.retrieval import Retriever, get_retriever, item_text
from benchmark.runner import (
    OUT_LOCK_HOLDER,
    PREDICTIONS_FILE,
    RESULTS_FILE,
    RESULTS_FORMAT,
    RUN_FILE,
    BenchmarkConfig,
    RunError,
    bootstrap_entry,
    dataset_entry,
    embeddings_entry,
    provenance,
    recorded_args,
    refuse_dataset_folder,
)
from reddit_amazon.files import folder_lock, read_json, remove_abandoned_temp_files, write_atomic, write_jsonl_atomic
from reddit_amazon.progress import bar_options, quiet

CANDIDATES_FILE = "candidates.jsonl"
RETRIEVER_NAMES = {"bm25": "BM25", "sbert": "SBERT", "openai-emb": "OpenAI-emb"}

log = logging.getLogger(__name__)


@dataclass
class RetrieveConfig(BenchmarkConfig):
    retriever: str
    retriever_options: dict[str, Any] = field(default_factory=dict)
    k: int = field(default=10, kw_only=True)  # field(kw_only=True): see RunConfig
    with_description: bool = field(default=False, kw_only=True)

    _integer_fields = (*BenchmarkConfig._integer_fields, ("k", 1, False))


def retrieve(config: RetrieveConfig, out_dir: str | os.PathLike, progress: bool = True,
             overwrite: bool = False) -> dict[str, Any]:
    """Rank each example's whole catalog; ``progress=False``: no bar, ``datasets``' own included.

    Holds the lock of ``out_dir`` that ``benchmark run`` holds: a second retrieval or a run into it meanwhile is
    refused (:class:`~reddit_amazon.files.FolderBusyError`), where it would swap candidates.jsonl and results.json
    of the two, or replace the run's results with the retrieval's."""
    out = Path(out_dir)
    refuse_dataset_folder(out)  # before the lock, which makes the folder
    # a retrieval that fails (no key, a typo) leaves no folder it made for `report runs/*`
    with folder_lock(out, OUT_LOCK_HOLDER, tidy_on_error=True), quiet(not progress):
        return _retrieve(config, out, progress, overwrite)


def _retrieve(config: RetrieveConfig, out: Path, progress: bool, overwrite: bool) -> dict[str, Any]:
    from tqdm.auto import tqdm

    started = time.perf_counter()
    _check_folder(out, overwrite)
    info = resolve_dataset(config.dataset)
    retriever = _retriever(config)
    domains = domains_for(info, config.domain, config.split)
    rows, outcomes, groups = [], [], []
    textless = catalog_size = 0
    for domain in tqdm(domains, desc="retrieving", unit="domain", **bar_options(progress)):
        conversations = load_conversations(info, domain, config.split)
        if config.limit is not None:
            conversations = conversations.select(range(min(config.limit, len(conversations))))
        catalog = load_items(info, domain).items  # retrieval reads text only
        if not catalog:
            raise DatasetError(f"{info.id}: the items of {domain!r} are empty")
        items = [(c.item_id, item_text(c.title, c.description, config.with_description)) for c in catalog.values()]
        textless += sum(1 for _, text in items if not text.strip())
        catalog_size += len(items)
        table = conversations.select_columns(["example_id", "context", "gt_items"]).to_dict()
        rankings = retriever.top_k(table["context"], items, k=config.k)
        for example_id, gt_items, ranking in zip(table["example_id"], table["gt_items"], rankings, strict=True):
            outcome = score(ranking[0] if ranking else None, gt_items, ranking, ranking)
            rows.append({"example_id": example_id, "domain": domain, "candidates": ranking,
                         "hits": outcome.hits, "gt_pairs": outcome.pairs})
            outcomes.append(outcome)
            groups.append(domain)
    if textless:
        log.warning("%d of %d catalog items have no %s: the retriever cannot tell them apart (they tie, in catalog "
                    "order), so its scores measure little", textless, catalog_size, _item_text_name(config))
    metrics = summarize_by_domain(groups, outcomes, config.bootstrap_samples, config.seed)
    metrics.pop("vr", None)  # the ranking is the candidate list itself: VR is not defined
    for cutoff in RANKING_CUTOFFS:
        if cutoff > config.k:  # a list of k items says nothing about the top 10
            metrics.pop(f"recall@{cutoff}", None)
            metrics.pop(f"ndcg@{cutoff}", None)
    remove_abandoned_temp_files(out)  # a retrieval killed (kill -9) while writing its files left their temporaries
    if overwrite:
        for name in (RUN_FILE, PREDICTIONS_FILE):
            (out / name).unlink(missing_ok=True)
    write_jsonl_atomic(out / CANDIDATES_FILE, rows)
    results = {
        "format": RESULTS_FORMAT,
        "kind": "retrieval",
        "metrics": metrics,
        "model": {"spec": f"retrieve:{config.retriever}",
                  "name": RETRIEVER_NAMES.get(config.retriever, config.retriever),
                  "args": recorded_args(config.retriever_options),
                  "settings": settings_of(type(retriever), config.retriever_options),
                  "returns": "ranking", "item_text": _item_text_name(config), **embeddings_entry(retriever)},
        "candidate_set_name": retriever.candidate_set_name,
        "dataset": dataset_entry(info),
        "domain": config.domain,
        "domains": domains,
        "split": config.split,
        "candidates": "full catalog",
        "k": config.k,
        "limit": config.limit,
        "items_without_text": {"items": textless, "of": catalog_size},
        "bootstrap": bootstrap_entry(config.bootstrap_samples, config.seed),
        "timings": {"total_s": round(time.perf_counter() - started, 3)},
        **provenance(),
    }
    write_atomic(out / RESULTS_FILE, orjson.dumps(results, option=orjson.OPT_INDENT_2) + b"\n")
    return results


def _item_text_name(config: RetrieveConfig) -> str:
    """What the retriever reads of an item."""
    return "title + description" if config.with_description else "title"


def _retriever(config: RetrieveConfig) -> Retriever:
    try:
        return get_retriever(config.retriever, **config.retriever_options)
    except TypeError as error:  # an unknown option: reported as `benchmark run` reports --model-args
        raise RegistryError(f"retriever {config.retriever!r} does not accept --retriever-args "
                            f"{redacted_args(config.retriever_options)}: {error}") from error


#: What to do about a damaged results.json in a retrieval's --out: the retrieval replaces it.
_REPLACE_REMEDY = "pass --overwrite to replace it or choose another --out"


def _check_folder(out: Path, overwrite: bool) -> None:
    """A retrieval may replace an earlier retrieval in ``out``, never a model run's files."""
    if overwrite:
        return
    results = out / RESULTS_FILE
    if (out / RUN_FILE).exists() or (out / PREDICTIONS_FILE).exists() or (
            results.is_file() and read_json(results, remedy=_REPLACE_REMEDY).get("kind") != "retrieval"):
        raise RunError(f"{out} holds a `benchmark run` result; choose another --out or pass --overwrite")
