"""Load a dataset folder or Hub id into :class:`benchmark.protocol.Example` batches (gt kept aside)."""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmark.protocol import Candidate, Example
from reddit_amazon.dataset_folder import (MANIFEST, check_unchanged, full_datasets_cache_named, read_manifest,
                                          refuse_missing_local_path)
from reddit_amazon.sample import SAMPLE_DATASET, SAMPLE_DATASET_ID
from reddit_amazon.schema import DOMAINS, ITEMS_CONFIG, SchemaError, Turn, candidate_column, candidate_sets_of, is_asin

if TYPE_CHECKING:
    import pyarrow as pa


class DatasetError(ValueError):
    """The dataset cannot be evaluated as asked (missing split, candidate set, items, bad record)."""


@dataclass(frozen=True)
class DatasetInfo:
    id: str  # as results name it: the Hub id, a local folder's absolute path, the bundled sample's SAMPLE_DATASET_ID
    path: str  # what datasets.load_dataset is given: the Hub id or the absolute path
    local: bool
    version: str | None
    fingerprint: str | None
    candidate_sets: list[str] | None  # sets that were computed (manifest); None when unknown
    counts: dict[str, dict[str, int]] | None


def resolve_dataset(dataset: str | os.PathLike | None) -> DatasetInfo:
    """``None`` is the bundled sample. A local folder's manifest is read; a Hub id's when reachable."""
    if dataset is None:
        try:
            from reddit_amazon.sample import sample_dataset_path
        except ImportError as error:
            raise DatasetError("no --dataset given and the bundled sample is not available in this install") from error
        dataset = sample_dataset_path()
    path = Path(dataset)
    if path.is_dir():
        manifest = None
        if (path / MANIFEST).is_file():  # scores must come from the data the recorded fingerprint names
            try:
                manifest = read_manifest(path)
                check_unchanged(path)
            except SchemaError as error:
                raise DatasetError(str(error)) from None
        if manifest is None and not (path / "README.md").is_file():  # nothing tells `datasets` the configs
            parent = path.resolve().parent
            hint = f"; did you mean its parent folder {parent}?" if (parent / MANIFEST).is_file() else ""
            raise DatasetError(f"{dataset}: not a dataset folder (it has no {MANIFEST} or README.md){hint}")
        return _info(_local_id(path.resolve()), str(path.resolve()), True, manifest)
    if path.exists():
        raise DatasetError(f"{dataset}: not a dataset folder")
    try:
        refuse_missing_local_path(dataset)
    except FileNotFoundError as error:
        raise DatasetError(str(error)) from None
    return _info(str(dataset), str(dataset), False, _hub_manifest(str(dataset)))


def _local_id(folder: Path) -> str:
    """A local folder's id: its absolute path, but the bundled sample's place in the package, so that runs over
    it name it alike in every install (and show no home folder)."""
    return SAMPLE_DATASET_ID if folder == SAMPLE_DATASET else str(folder)


def _info(dataset_id: str, path: str, local: bool, manifest: dict[str, Any] | None) -> DatasetInfo:
    manifest = manifest or {}
    return DatasetInfo(id=dataset_id, path=path, local=local, version=manifest.get("version"),
                       fingerprint=manifest.get("fingerprint"), candidate_sets=manifest.get("candidate_sets"),
                       counts=manifest.get("counts"))


def _hub_manifest(repo_id: str) -> dict[str, Any] | None:
    try:
        from huggingface_hub import hf_hub_download

        return read_manifest(Path(hf_hub_download(repo_id, MANIFEST, repo_type="dataset")).parent)
    except Exception:  # offline, private or not ours: the run records "unknown"
        return None


def domains_for(info: DatasetInfo, domain: str, split: str) -> list[str]:
    """``beauty|fashion|home`` -> itself; ``all`` -> every domain that has records in ``split``."""
    if domain != "all":
        if domain not in DOMAINS:
            raise DatasetError(f"unknown domain {domain!r}; expected one of {', '.join(DOMAINS)} or all")
        return [domain]
    if info.counts is None:
        return list(DOMAINS)
    present = [d for d in DOMAINS if info.counts.get(d, {}).get(split, 0) > 0]
    if not present:  # name the splits there are: "valid" (the authors' release's name) is an easy slip
        have = list(dict.fromkeys(s for d in DOMAINS for s, n in info.counts.get(d, {}).items() if n))
        close = difflib.get_close_matches(split, have, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise DatasetError(f"{info.id}: no domain has a {split!r} split (splits with records: "
                           f"{', '.join(have) or 'none'}){hint}")
    return present


def load_conversations(info: DatasetInfo, domain: str, split: str):
    import datasets

    if info.counts is not None and not info.counts.get(domain, {}).get(split, 0):
        have = [s for s, n in info.counts.get(domain, {}).items() if n]
        raise DatasetError(f"{info.id}: domain {domain!r} has no {split!r} split (splits with records: "
                           f"{', '.join(have) or 'none'})")
    try:
        with full_datasets_cache_named():
            return datasets.load_dataset(info.path, domain, split=split)
    except ValueError as error:
        raise DatasetError(f"{info.path}: cannot load {domain}/{split}: {error}") from error


def check_candidate_set(info: DatasetInfo, table_columns: Sequence[str], candidates: str, where: str) -> str:
    """The column name for ``candidates``; fails listing the computed sets when it is absent."""
    column = candidate_column(candidates)
    computed = info.candidate_sets if info.candidate_sets is not None else candidate_sets_of(table_columns)
    if column not in table_columns or candidates not in computed:
        raise DatasetError(f"{where}: candidate set {candidates!r} was not computed for this dataset; "
                           f"available: {', '.join(computed) or 'none'}")
    return column


@dataclass(frozen=True)
class Record:
    """An example plus what only the harness sees."""

    example: Example
    gt_items: tuple[str, ...]


@dataclass
class ItemLookup:
    """The items a split's candidates need (loaded once, only those), text and metadata; their images are
    read, or not, by :meth:`finish_loading`."""

    items: dict[str, Candidate]
    missing: set[str] = field(default_factory=set)
    #: The memory-mapped items table and the rows of ``items``, until :meth:`finish_loading`: a mapping held
    #: keeps the pages it has read in the process's RSS.
    table: pa.Table | None = field(default=None, repr=False)
    positions: pa.Array | None = field(default=None, repr=False)

    def candidate(self, item_id: str) -> Candidate:
        found = self.items.get(item_id)
        if found is None:
            self.missing.add(item_id)
            return Candidate(item_id=item_id, title="")
        return found

    def finish_loading(self, with_images: bool) -> None:
        """Give every item its image as encoded bytes when ``with_images`` (only the image column of its rows
        is read), then let the items table go."""
        import pyarrow.compute as pc

        if with_images and self.table is not None:  # not read yet
            ids = self.table.column("item_id").take(self.positions).to_pylist()
            images = pc.struct_field(self.table.column("image").take(self.positions), "bytes").to_pylist()
            for item_id, image_bytes in zip(ids, images, strict=True):
                self.items[item_id] = replace(self.items[item_id], image_bytes=image_bytes)
        self.table, self.positions = None, None


def load_items(info: DatasetInfo, domain: str, wanted: set[str] | None = None) -> ItemLookup:
    """Items of ``domain`` (all of them when ``wanted`` is None), without their images until
    :meth:`ItemLookup.finish_loading`."""
    import datasets
    import pyarrow as pa

    try:
        with full_datasets_cache_named():
            items = datasets.load_dataset(info.path, ITEMS_CONFIG, split=domain)
    except ValueError as error:
        raise DatasetError(f"{info.path}: cannot load the items of {domain!r}: {error}") from error
    table = items.data.table
    ids = table.column("item_id").to_pylist()
    # Typed: an empty list of positions (no wanted item in the table) would be a null array Arrow cannot take.
    positions = pa.array([i for i, item_id in enumerate(ids) if wanted is None or item_id in wanted], pa.int64())
    present = [column for column in _CANDIDATE_FIELDS if column in table.column_names]
    chosen = table.select(["item_id", *present]).take(positions)
    names = [_CANDIDATE_FIELDS[column] for column in present]
    values = [_field_values(chosen.column(column), shared=column in _REPEATED_TEXTS) for column in present]
    lookup = {item_id: Candidate(item_id, **dict(zip(names, row)))
              for item_id, *row in zip(chosen.column("item_id").to_pylist(), *values)}
    return ItemLookup(lookup, table=table, positions=positions)


#: The items config's columns a candidate carries (all but ``image``, read by :meth:`ItemLookup.finish_loading`)
#: and the :class:`Candidate` field of each. A dataset without one of them (a Hub copy of another layout) leaves
#: the field empty, as a null does.
_CANDIDATE_FIELDS = {"title": "title", "description": "description", "store": "store",
                     "main_category": "main_category", "categories": "categories", "features": "features",
                     "details": "details_json", "parent_asin": "parent_asin", "image_urls": "image_urls",
                     "image_description": "image_description"}
#: Columns whose texts recur from item to item: held once each, not once per item.
_REPEATED_TEXTS = {"store", "main_category", "categories"}


def _field_values(column: pa.ChunkedArray, shared: bool) -> list[Any]:
    """A column's cells as their candidate field holds them: a list as a tuple (a candidate is frozen, and shared
    by the records that list it), a null as empty text, or as an empty tuple in a column of lists."""
    import pyarrow as pa

    cells = column.to_pylist()
    texts: dict[str, str] = {}
    if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        if shared:
            return [() if cell is None else tuple(map(texts.setdefault, cell, cell)) for cell in cells]
        return [() if cell is None else tuple(cell) for cell in cells]
    if shared:
        return ["" if cell is None else texts.setdefault(cell, cell) for cell in cells]
    return ["" if cell is None else cell for cell in cells]


def iter_records(conversations, column: str, items: ItemLookup, where: str, limit: int | None = None,
                 batch_size: int = 1024, *, domain: str | None = None) -> Iterator[Record]:
    """Records in dataset order. Checks what scoring relies on (each record of the config ``domain``, when
    given, belongs to it) and names the record when it fails."""
    expected_domain = domain
    total = len(conversations) if limit is None else min(limit, len(conversations))
    subset = conversations.select_columns(
        ["example_id", "domain", "context", "turns", "context_items", "gt_items", column])
    index = 0
    for batch in subset.iter(batch_size=batch_size):
        for example_id, domain, context, turns, context_items, gt_items, candidate_ids in zip(
                batch["example_id"], batch["domain"], batch["context"], batch["turns"], batch["context_items"],
                batch["gt_items"], batch[column]):
            if index >= total:
                return
            if not candidate_ids:
                raise DatasetError(f"{where}[{index}] ({example_id}): {column} is empty")
            if expected_domain is not None and domain != expected_domain:
                raise DatasetError(f"{where}[{index}] ({example_id}): its domain is {domain!r}, in the "
                                   f"{expected_domain} config (it would be scored as another domain's)")
            if not gt_items or not all(is_asin(g) for g in gt_items):
                raise DatasetError(f"{where}[{index}] ({example_id}): gt_items must be one or more ASINs, "
                                   f"got {gt_items!r}")
            yield Record(
                Example(
                    example_id=example_id,
                    domain=domain,
                    context=context,
                    turns=tuple(Turn.from_row(t) for t in turns),
                    context_items=tuple(context_items),
                    candidates=tuple(items.candidate(c) for c in candidate_ids),
                ),
                tuple(gt_items),
            )
            index += 1


def candidate_ids_of(conversations, column: str, limit: int | None = None) -> set[str]:
    values = conversations.data.table.column(column).to_pylist()
    if limit is not None:
        values = values[:limit]
    return {item_id for ids in values for item_id in (ids or [])}
