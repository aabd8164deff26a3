"""Table-1 statistics of a dataset folder, computed from its Parquet shards (never typed by hand).

Definitions (the same ones the build writes into ``manifest["stats"]``):

* conversations -- records of the domain, all splits;
* turns -- sum over records of ``len(turns)``: the context turns, the recommending comment not counted (the
  paper's Table 1 counts so: its turns per conversation, 2.99 / 2.72 / 1.80, are the context turns per record
  of the authors' validation release, 2.99 / 2.73 / 1.76, not one more);
* items -- distinct ``item_id`` in the domain's split of the ``items`` config;
* images -- items of the domain with an embedded image.

Only the needed leaf columns are read (``ParquetFile.read(columns=[...])``), so image bytes and texts
stay on disk.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq

from reddit_amazon.schema import CANDIDATE_PREFIX, DOMAINS, ITEMS_CONFIG, SPLITS

DataFiles = Mapping[str, Mapping[str, Sequence[str]]]


@dataclass(frozen=True)
class CandidateCoverage:
    """How one candidate set covers a domain's records (all splits)."""

    records_with_candidates: int
    pairs: int  # (record, gt item) pairs of those records
    pairs_gt_in_candidates: int  # the set's recall, over (record, gt item) pairs
    best_hits: int  # HR@1 hits if every record answered its best candidate (one answer per record)

    @property
    def recall(self) -> float | None:
        return self.pairs_gt_in_candidates / self.pairs if self.pairs else None

    @property
    def max_hr1(self) -> float | None:
        """The highest HR@1 reachable by answering from the set: a record with several gt items among its
        candidates is run once and gives one answer, so it can hit only one of them (or a repeated one twice)."""
        return self.best_hits / self.pairs if self.pairs else None


@dataclass(frozen=True)
class DomainStatistics:
    domain: str
    conversations: int
    turns: int
    items: int
    images: int
    image_urls: int  # all image URLs of the domain's items (the paper's "# Images" counts every image)
    split_records: dict[str, int]
    split_pairs: dict[str, int]  # (record, gt item) pairs: the evaluation examples
    threads_in_several_splits: int | None  # None when records carry no thread id
    candidates: dict[str, CandidateCoverage] = field(default_factory=dict)
    titled: int = 0  # items with Amazon metadata (a non-empty title); an imported release may have none
    without_image_url: int = 0  # items whose metadata lists no image URL


@dataclass(frozen=True)
class DatasetStatistics:
    domains: dict[str, DomainStatistics]

    def total(self, attribute: str) -> int:
        return sum(getattr(d, attribute) for d in self.domains.values())

    def as_manifest_stats(self) -> dict[str, dict[str, int]]:
        """The shape of ``manifest["stats"]``: {domain: {conversations, turns, items, images}}."""
        return {
            name: {"conversations": d.conversations, "turns": d.turns, "items": d.items, "images": d.images}
            for name, d in self.domains.items()
        }


def data_files_from_card_data(data: Any) -> dict[str, dict[str, list[str]]]:
    """``{config: {split: [relative paths]}}`` from the ``configs`` of a ``DatasetCardData``."""
    files: dict[str, dict[str, list[str]]] = {}
    for config in data.get("configs") or []:
        entries = config.get("data_files") or []
        if isinstance(entries, (str, dict)):
            entries = [entries]
        splits: dict[str, list[str]] = {}
        for entry in entries:
            if isinstance(entry, str):
                splits.setdefault("train", []).append(entry)
                continue
            paths = entry["path"]
            splits.setdefault(entry["split"], []).extend([paths] if isinstance(paths, str) else paths)
        files[config["config_name"]] = splits
    return files


def compute_statistics(folder: str | Path, data_files: DataFiles) -> DatasetStatistics:
    folder = Path(folder)
    domains = {}
    for domain in DOMAINS:
        split_records: dict[str, int] = {}
        split_pairs: dict[str, int] = {}
        turns = 0
        coverage: dict[str, list[int]] = {}
        threads: dict[str, set[str]] = {}
        for split in SPLITS:
            records = pairs = 0
            for path in shard_paths(folder, data_files, domain, split):
                parquet = pq.ParquetFile(path)
                columns = parquet.schema_arrow.names
                sets = [c for c in columns if c.startswith(CANDIDATE_PREFIX)]
                table = parquet.read(columns=["thread_id", "turns.list.element.kind", "gt_items", *sets])
                threads.setdefault(split, set()).update(t for t in table.column("thread_id").to_pylist() if t)
                gt_items = table.column("gt_items")
                records += table.num_rows
                pairs += _sum(pc.list_value_length(gt_items))
                turns += _sum(pc.list_value_length(table.column("turns")))
                for column in sets:
                    counts = coverage.setdefault(column[len(CANDIDATE_PREFIX):], [0, 0, 0, 0])
                    _add_coverage(counts, gt_items.to_pylist(), table.column(column).to_pylist())
            split_records[split] = records
            split_pairs[split] = pairs
        item_ids: set[str] = set()
        images = image_urls = titled = without_image_url = 0
        for path in shard_paths(folder, data_files, ITEMS_CONFIG, domain):
            parquet = pq.ParquetFile(path)
            table = parquet.read(columns=["item_id", "image_urls", "title"])
            item_ids.update(table.column("item_id").to_pylist())
            titled += _sum(pc.not_equal(table.column("title"), ""))
            images += _non_null_values(parquet, "image.bytes")
            url_counts = pc.fill_null(pc.list_value_length(table.column("image_urls")), 0)
            image_urls += _sum(url_counts)
            without_image_url += _sum(pc.equal(url_counts, 0))
        domains[domain] = DomainStatistics(
            domain=domain,
            conversations=sum(split_records.values()),
            turns=turns,
            items=len(item_ids),
            images=images,
            image_urls=image_urls,
            split_records=split_records,
            split_pairs=split_pairs,
            threads_in_several_splits=_shared(threads),
            candidates={name: CandidateCoverage(*counts) for name, counts in coverage.items()},
            titled=titled,
            without_image_url=without_image_url,
        )
    return DatasetStatistics(domains)


def shard_paths(folder: Path, data_files: DataFiles, config: str, split: str) -> list[Path]:
    """The Parquet shards of one ``config``/``split`` (none when the card lists none)."""
    return [folder / relative for relative in data_files.get(config, {}).get(split, [])]


def _shared(threads: dict[str, set[str]]) -> int | None:
    if not any(threads.values()):
        return None
    seen: set[str] = set()
    shared: set[str] = set()
    for ids in threads.values():
        shared |= seen & ids
        seen |= ids
    return len(shared)


def _sum(array: Any) -> int:
    value = pc.sum(array).as_py()
    return int(value or 0)


def _non_null_values(parquet: pq.ParquetFile, leaf: str) -> int:
    """Rows whose ``leaf`` is set, from the row-group statistics (so image bytes are not read)."""
    index = [column.path for column in parquet.schema].index(leaf)
    total = 0
    for group in range(parquet.metadata.num_row_groups):
        meta = parquet.metadata.row_group(group)
        statistics = meta.column(index).statistics
        if statistics is not None and statistics.has_null_count:
            total += meta.num_rows - statistics.null_count
        else:
            column = parquet.read_row_group(group, columns=[leaf]).column(0)
            total += len(column) - _sum(pc.is_null(pc.struct_field(column, leaf.split(".")[-1])))
    return total


def _add_coverage(counts: list[int], gt_items: list[list[str]], candidates: list[list[str] | None]) -> None:
    for gts, cands in zip(gt_items, candidates):
        if not cands:
            continue
        chosen = set(cands)
        counts[0] += 1
        counts[1] += len(gts)
        counts[2] += sum(gt in chosen for gt in gts)
        counts[3] += max((gts.count(candidate) for candidate in chosen), default=0)
