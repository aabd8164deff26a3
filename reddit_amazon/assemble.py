"""Turn the kept conversations and their items into the dataset folder.

* Splits 8:1:1 per domain **by thread**: all records of a Reddit thread land in one split, in every
  domain, so no conversation prefix is shared between train and test. The thread order is a hash of
  ``seed:thread_id``: deterministic, and independent of input order.
* Candidates: ``NUM_CANDIDATES`` items per record from each retriever, searched over the domain's
  items, with the record's ``context`` as the query. The gt item is not inserted when missed
  (as in the paper's release, HR@1 is then bounded by retrieval recall). Each list is stored in a
  seeded random order, not best-first: in the authors' release the gt sits at every position about
  equally often, and a best-first list would hand the retriever's top-1 to any recommender that
  favours the first candidate.
* Table-1 statistics, then :func:`reddit_amazon.dataset_folder.write_dataset`.
"""

from __future__ import annotations

import hashlib
import random
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from reddit_amazon.schema import DOMAINS, NUM_CANDIDATES, SPLITS, Conversation, Item

SPLIT_RATIOS: tuple[float, float, float] = (0.8, 0.1, 0.1)


def split_by_thread(conversations: Iterable[Conversation], seed: int) -> dict[str, dict[str, list[Conversation]]]:
    """``{domain: {split: records}}``; records sorted by ``example_id`` inside each split.

    Each domain's records are split 8:1:1 as closely as whole threads allow: the targets are the
    record counts nearest to 8:1:1 (largest remainder, so 9 records give 7/1/1), and threads, taken in
    the order of a hash of ``seed:thread_id``, each go to the split furthest below its target. A thread
    with records in several domains (a thread recommending a lipstick and a lamp) is in the same split
    in all of them: the first domain to place it decides.
    """
    threads: dict[str, dict[str, list[Conversation]]] = defaultdict(lambda: defaultdict(list))
    for conversation in conversations:
        threads[conversation.domain][conversation.thread_id].append(conversation)
    placed: dict[str, str] = {}  # thread_id -> split, across domains
    result: dict[str, dict[str, list[Conversation]]] = {}
    for domain in DOMAINS:
        by_thread = threads.get(domain, {})
        targets = _split_targets(sum(len(records) for records in by_thread.values()))
        order = sorted(by_thread, key=lambda t: hashlib.sha256(f"{seed}:{t}".encode()).hexdigest())
        splits: dict[str, list[Conversation]] = {split: [] for split in SPLITS}
        for thread_id in sorted(order, key=lambda t: t not in placed):  # placed threads first, hash order kept
            split = placed.get(thread_id) or max(SPLITS, key=lambda s: targets[s] - len(splits[s]))
            splits[split].extend(by_thread[thread_id])
            placed[thread_id] = split
        result[domain] = {split: sorted(records, key=lambda r: r.example_id) for split, records in splits.items()}
    return result


def _split_targets(total: int) -> dict[str, int]:
    """Record counts per split nearest to ``SPLIT_RATIOS`` (largest remainder; ties go to the earlier split)."""
    exact = [total * ratio for ratio in SPLIT_RATIOS]
    counts = [int(share) for share in exact]
    by_remainder = sorted(range(len(SPLITS)), key=lambda i: -(exact[i] - counts[i]))
    for i in by_remainder[:total - sum(counts)]:
        counts[i] += 1
    return dict(zip(SPLITS, counts, strict=True))


def _domain_records(splits: Mapping[str, Mapping[str, list[Conversation]]], domain: str) -> list[Conversation]:
    return [record for split in SPLITS for record in splits.get(domain, {}).get(split, [])]


@dataclass
class CandidateReport:
    """Which candidate sets were computed, and gt recall@10 per set and domain."""

    computed: list[str]
    recall: dict[str, dict[str, float]]  # set -> domain -> share of (record, gt) pairs found
    skipped_domains: dict[str, str]  # domain -> why no candidates (e.g. fewer items than NUM_CANDIDATES)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class CandidateSearch:
    """A domain's candidate retrieval: its records' contexts are searched over its items' texts."""

    domain: str
    records: list[Conversation]
    items: list[tuple[str, str]]  # (item_id, text), in item_id order

    @property
    def queries(self) -> list[str]:
        return [record.context for record in self.records]


def candidate_searches(splits: Mapping[str, Mapping[str, list[Conversation]]],
                       items: Mapping[str, Sequence[Item]]) -> tuple[list[CandidateSearch], dict[str, str]]:
    """The searches of the domains with records, and the domains skipped, with why (fewer items than
    ``NUM_CANDIDATES``)."""
    from benchmark.retrieval import item_text

    searches, skipped = [], {}
    for domain in DOMAINS:
        records = _domain_records(splits, domain)
        catalog = sorted(items.get(domain, []), key=lambda item: item.item_id)
        if not records:
            continue
        if len(catalog) < NUM_CANDIDATES:
            skipped[domain] = f"{len(catalog)} items < {NUM_CANDIDATES}"
            continue
        searches.append(CandidateSearch(domain, records, [(item.item_id, item_text(item.title)) for item in catalog]))
    return searches, skipped


def add_candidates(splits: Mapping[str, Mapping[str, list[Conversation]]], items: Mapping[str, Sequence[Item]],
                   retrievers: Sequence[Any], *, seed: int = 0,
                   progress: Callable[[Iterable, int, str], Iterable] | None = None) -> CandidateReport:
    """Fill ``conversation.candidates[retriever.candidate_set_name]`` for every record in place, each list in
    the order :func:`shuffled_candidates` gives it. Each domain's catalog is searched in item_id order, whatever
    order ``items`` holds it in (:func:`candidate_searches`): retrievers break ties of score by catalog order."""
    searches, skipped = candidate_searches(splits, items)
    report = CandidateReport(computed=[r.candidate_set_name for r in retrievers], recall={},
                             skipped_domains=skipped if retrievers else {})  # none asked, none skipped
    work = [(retriever, search) for retriever in retrievers for search in searches]
    steps = progress(work, len(work), "candidates") if progress else work
    for retriever, search in steps:
        ranked = retriever.top_k(search.queries, search.items, k=NUM_CANDIDATES)
        for record, candidates in zip(search.records, ranked, strict=True):
            record.candidates[retriever.candidate_set_name] = shuffled_candidates(
                candidates, seed, retriever.candidate_set_name, record.example_id)
        report.recall.setdefault(retriever.candidate_set_name, {})[search.domain] = gt_recall(
            search.records, retriever.candidate_set_name)
    return report


def report_of_given_candidates(splits: Mapping[str, Mapping[str, list[Conversation]]],
                               candidate_sets: Sequence[str]) -> CandidateReport:
    """The :class:`CandidateReport` of candidate lists that came with the records (an imported release's):
    the recall over each domain's records that have a list of that set, all splits, as a build records it."""
    recall: dict[str, dict[str, float]] = {}
    for candidate_set in candidate_sets:
        for domain in DOMAINS:
            records = [r for r in _domain_records(splits, domain) if r.candidates.get(candidate_set)]
            if records:
                recall.setdefault(candidate_set, {})[domain] = gt_recall(records, candidate_set)
    return CandidateReport(computed=list(candidate_sets), recall=recall, skipped_domains={})


def gt_recall(records: Sequence[Conversation], candidate_set: str) -> float:
    """The share of the records' (record, gt item) pairs whose gt item is among the record's candidates of
    ``candidate_set``, to 4 places: the manifest's ``build_reports.candidates.recall``, the ceiling of HR@1."""
    pairs = [(gt, record.candidates.get(candidate_set) or []) for record in records for gt in record.gt_items]
    return round(sum(gt in candidates for gt, candidates in pairs) / len(pairs), 4)


def shuffled_candidates(candidates: Sequence[str], seed: int, candidate_set: str, example_id: str) -> list[str]:
    """``candidates`` in a random order drawn from ``seed:candidate_set:example_id``: the same for a record
    whatever else is built with it, and independent of the retriever's ranking."""
    order = list(candidates)
    random.Random(f"{seed}:{candidate_set}:{example_id}").shuffle(order)
    return order


def table1_stats(splits: Mapping[str, Mapping[str, list[Conversation]]],
                 items: Mapping[str, Sequence[Item]]) -> dict[str, dict[str, int]]:
    """The paper's Table 1 per domain: conversations, turns (context turns, as the paper counts them),
    items (distinct ids of the domain's items split) and images (items with an embedded image)."""
    stats = {}
    for domain in DOMAINS:
        records = _domain_records(splits, domain)
        domain_items = {item.item_id: item for item in items.get(domain, [])}
        stats[domain] = {
            "conversations": len(records),
            "turns": sum(len(r.turns) for r in records),
            "items": len(domain_items),
            "images": sum(item.image is not None for item in domain_items.values()),
        }
    return stats


def items_by_domain(items: Iterable[Item]) -> dict[str, list[Item]]:
    grouped: dict[str, list[Item]] = {domain: [] for domain in DOMAINS}
    for item in items:
        grouped[item.domain].append(item)
    return {domain: sorted(group, key=lambda item: item.item_id) for domain, group in grouped.items()}
