"""A built dataset on disk: Parquet shards + README.md (YAML configs) + manifest.json.

Layout::

    reddit-amazon/
      README.md                       dataset card; YAML declares configs beauty/fashion/home/items
      manifest.json                   version, fingerprint, sha256 per shard, candidate sets, counts, build record
      data/<domain>/<split>-00000-of-00001.parquet
      data/items/<domain>-00000-of-00001.parquet

``datasets.load_dataset("reddit-amazon", "fashion")`` (from the parent folder), an absolute path,
or a Hub repo id after :func:`push_to_hub` all read it. Images are embedded in the Parquet
(``datasets.Image``) because string paths would be resolved against the working directory.

Writing is atomic: everything goes to a sibling temporary folder that replaces the target only
once complete, so an interrupted write never leaves a half-written dataset behind. A lock beside the target
(``.<name>.lock``) refuses a second writer of the same folder while one writes it: the two would swap the
folder under each other.
"""

from __future__ import annotations

import errno
import functools
import glob
import hashlib
import json
import logging
import os
import posixpath
import re
import shlex
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal, TypeAlias, overload

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from datasets.info import DatasetInfo, DatasetInfosDict
from huggingface_hub import DatasetCard, DatasetCardData

from reddit_amazon import __version__
from reddit_amazon.files import (current_umask, file_lock, file_sha256, naming, os_error_under, printable_path,
                                 remove_abandoned_siblings, remove_abandoned_temp_files, replace_dir,
                                 sibling_prefix, write_atomic)
from reddit_amazon.schema import (
    DOMAINS,
    ITEM_FEATURES,
    ITEMS_CONFIG,
    SEMVER,
    SPLITS,
    Conversation,
    Item,
    SchemaError,
    candidate_column,
    candidate_sets_of,
    conversation_features,
    validate_conversation_row,
    validate_item_row,
)

log = logging.getLogger(__name__)

DEFAULT_NAME = "reddit-amazon"
MANIFEST = "manifest.json"
DATA_DIR = "data"
CONVERSATION_SHARD_ROWS = 20_000
ITEM_SHARD_ROWS = 2_000  # items carry images: keep shards to tens of MB
#: Rows per Parquet row group of an items shard: a reader (datasets' streaming, the Hub viewer, the card's sizes)
#: holds a row group at once, and 2,000 images were hundreds of MB; datasets writes image data by 100 rows too.
ITEM_ROW_GROUP_ROWS = 100


@dataclass
class DatasetContents:
    """What goes into a dataset folder. ``conversations[domain][split]``, ``items[domain]``."""

    conversations: dict[str, dict[str, list[Conversation]]]
    items: dict[str, list[Item]]
    version: str
    candidate_sets: list[str] = field(default_factory=list)  # sets actually computed
    metadata: dict[str, Any] = field(default_factory=dict)  # free-form: source, build record, …
    source_files: list[Path] = field(default_factory=list)  # copied as they are into lavic_source/ (an import's)


#: What holds a dataset folder's lock (``.<name>.lock`` beside it), as the refusal of a second one names it: a build
#: or import-lavic writing it, or a push, which must publish the files it verified, not a folder swapped in meanwhile.
FOLDER_LOCK_HOLDER = "dataset writer or push"


def write_dataset(out_dir: str | os.PathLike, contents: DatasetContents,
                  keep: Sequence[str | os.PathLike] = ()) -> dict[str, Any]:
    """Write ``contents`` as a dataset folder at ``out_dir`` (atomically). Returns the manifest.

    ``keep``: paths that must survive (the inputs): a folder holding one of them is never replaced.
    """
    if not SEMVER.fullmatch(contents.version):
        raise SchemaError(f"dataset version {contents.version!r} is not semver (MAJOR.MINOR.PATCH)")
    out_dir = check_output_folder(out_dir, keep)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # two writers would swap the folder (and its .git) under each other
    with file_lock(out_dir, FOLDER_LOCK_HOLDER, noun="folder"):
        return _write_beside(out_dir, contents)


def _write_beside(out_dir: Path, contents: DatasetContents) -> dict[str, Any]:
    """Write the folder beside ``out_dir`` under a hidden name, then swap it into place (the caller holds the lock)."""
    remove_abandoned_siblings(out_dir, finished_marker="README.md")  # _write_into writes the card last
    tmp = Path(tempfile.mkdtemp(prefix=sibling_prefix(out_dir, "tmp"), dir=out_dir.parent))
    tmp.chmod(0o777 & ~current_umask())  # mkdtemp makes it private: give it the mode mkdir would (the umask decides)
    carried: list[str] = []
    try:
        with naming(out_dir):
            manifest = _write_into(tmp, contents, out_dir.resolve().name)
        carried = _carry_hidden_entries(out_dir, tmp)
        replace_dir(tmp, out_dir)
    except BaseException:
        for name in carried:  # back where they were before the folder with them is deleted
            if (tmp / name).exists() and out_dir.is_dir():
                (tmp / name).rename(out_dir / name)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def rewrite_dataset(folder: str | os.PathLike,
                    rewrite: Callable[[Path, Path], DatasetContents | None]) -> dict[str, Any] | None:
    """Replace the dataset folder ``folder`` (atomically, as :func:`write_dataset`) with the contents
    ``rewrite(folder, scratch)`` makes of it; returns the new manifest, or None (nothing written) where ``rewrite``
    returns None. The folder's writer lock is held from the read to the swap, so no build, import or push comes in
    between; ``scratch`` is an empty folder beside it (same disk) for what the new contents keep as files, deleted
    after. What a rewrite killed earlier (kill -9) left beside the folder is removed first, whether or not this one
    writes."""
    folder = Path(folder).resolve()
    if not is_dataset_folder(folder):
        raise FileNotFoundError(f"{folder} is not a reddit-amazon dataset folder (no {MANIFEST}, or other files)")
    with file_lock(folder, FOLDER_LOCK_HOLDER, noun="folder"):
        remove_abandoned_siblings(folder, finished_marker="README.md")  # _write_beside's, which a no-op never reaches
        scratch = Path(tempfile.mkdtemp(prefix=sibling_prefix(folder, "tmp"), dir=folder.parent))
        try:
            contents = rewrite(folder, scratch)
            if contents is None:
                return None
            if not SEMVER.fullmatch(contents.version):
                raise SchemaError(f"dataset version {contents.version!r} is not semver (MAJOR.MINOR.PATCH)")
            return _write_beside(folder, contents)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


def read_folder_records(folder: Path, scratch: Path) -> tuple[dict[str, dict[str, list[Conversation]]],
                                                               dict[str, list[Item]]]:
    """Every conversation (by domain and split) and item (by domain) of the dataset folder ``folder``, read from its
    shards; each item image is written to a file in ``scratch`` and held as that path (a catalog's images need not
    fit in memory)."""
    conversations: dict[str, dict[str, list[Conversation]]] = {}
    items: dict[str, list[Item]] = {}
    for domain in DOMAINS:
        for split in SPLITS:
            conversations.setdefault(domain, {})[split] = [
                Conversation.from_row(row, where=f"{shard}[{index}]")
                for shard in sorted((folder / DATA_DIR / domain).glob(f"{split}-*.parquet"))
                for index, row in enumerate(pq.read_table(shard).to_pylist())]
        items[domain] = []
        for shard in sorted((folder / DATA_DIR / ITEMS_CONFIG).glob(f"{domain}-*.parquet")):
            parquet = pq.ParquetFile(shard)
            for group in range(parquet.num_row_groups):  # one row group of images in memory at a time
                for row in parquet.read_row_group(group).to_pylist():
                    item = Item.from_row(row, where=f"{shard} ({row.get('item_id')})")
                    if isinstance(item.image, bytes):
                        (image := scratch / f"{domain}-{len(items[domain])}").write_bytes(item.image)
                        item.image = image
                    items[domain].append(item)
    return conversations, items


def _carry_hidden_entries(old: Path, new: Path) -> list[str]:
    """Move the hidden entries of the folder being replaced into its replacement; returns their names.

    A dataset folder may also be a git clone of its Hub repo (``.git``, ``.gitattributes``): those are the
    user's, not the dataset's, and a rewrite must not delete them with the old shards.
    """
    if not old.is_dir():
        return []
    moved = []
    for entry in sorted(old.iterdir()):
        if entry.name.startswith(".") and not (new / entry.name).exists():
            entry.rename(new / entry.name)
            moved.append(entry.name)
    return moved


def check_output_folder(out_dir: str | os.PathLike, keep: Sequence[str | os.PathLike] = ()) -> Path:
    """``out_dir`` resolved, after checking that a dataset may be written there.

    Writing replaces the whole folder, so it must not exist, be empty, or be a dataset folder (it has
    a manifest); it must not hold the current directory or any path in ``keep`` (inputs, work
    folder), the first existing folder on its way must be writable, and its path must be UTF-8 (a Linux path need
    not be). Raises ``FileExistsError`` / ``PermissionError`` / ``ValueError`` naming the folder, before any work
    starts.
    """
    out_dir = Path(out_dir).resolve()
    if printable_path(out_dir) != str(out_dir):
        raise ValueError(f"{printable_path(out_dir)}: the path is not UTF-8, and pyarrow and datasets (which write and "
                         "load the shards) take only UTF-8 paths; choose a folder whose path is UTF-8")
    for kept in [Path.cwd(), *map(Path, keep)]:
        kept = kept.resolve()
        what = "the current folder" if kept == Path.cwd().resolve() else kept
        if kept == out_dir:
            raise FileExistsError(f"{out_dir} is {what}, which writing the dataset there would delete; "
                                  "choose a new or empty folder")
        if out_dir in kept.parents:
            raise FileExistsError(f"{out_dir} holds {what}, which writing the dataset there would delete")
    if out_dir.exists():
        if not out_dir.is_dir():
            raise FileExistsError(f"{out_dir} is a file; the dataset output must be a folder")
        if any(out_dir.iterdir()) and not is_dataset_folder(out_dir):
            raise FileExistsError(f"{out_dir} is a folder with other content (not a reddit-amazon dataset): writing "
                                  "the dataset there would replace it; choose a new or empty folder")
    existing = next(folder for folder in [out_dir, *out_dir.parents] if folder.exists())
    if not os.access(existing if existing != out_dir else out_dir.parent, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write the dataset at {out_dir}: {existing} is not writable")
    return out_dir


#: What a dataset folder holds (an imported copy also keeps the release's files): nothing else may be replaced.
DATASET_ENTRIES = {MANIFEST, "README.md", DATA_DIR, "lavic_source"}
SOURCE_COPY_DIR = "lavic_source"  # an import's verbatim copies of the release's files, sha256 in the manifest
#: What every manifest this package wrote holds (a build's and an import's, layout 1.0.0 on) and what verify checks
#: the folder against (``name``: the card's title). Not ``shards``: a manifest written before it recorded each
#: shard's sha256 is checked by its fingerprint alone; nor ``stats``, which an import has not.
REQUIRED_MANIFEST_FIELDS = ("name", "version", "fingerprint", "counts")


def is_dataset_folder(folder: Path) -> bool:
    """A folder this package wrote: its manifest is ours (a web app has a manifest.json too) and it holds
    nothing but a dataset's files (hidden ones aside: ``datasets``' and the Hub's caches)."""
    return has_dataset_manifest(folder) and all(entry.name in DATASET_ENTRIES or entry.name.startswith(".")
                                                for entry in folder.iterdir())


def dataset_folder_holding(path: str | os.PathLike) -> Path | None:
    """The dataset folder that is ``path`` or holds it (resolved), if any: files written there would leave it no
    longer matching its manifest."""
    target = Path(path).resolve()
    return next((folder for folder in [target, *target.parents] if has_dataset_manifest(folder)), None)


def in_dataset_folder(path: str | os.PathLike) -> str | None:
    """Where ``path`` is a dataset folder or lies in one (:func:`dataset_folder_holding`), how a refusal to write
    there says so: "is a reddit-amazon dataset folder", "is inside D, which is a reddit-amazon dataset folder"."""
    dataset = dataset_folder_holding(path)
    if dataset is None:
        return None
    where = "is" if dataset == Path(path).resolve() else f"is inside {dataset}, which is"
    return f"{where} a reddit-amazon dataset folder"


def has_dataset_manifest(folder: Path) -> bool:
    """``folder`` holds a manifest this package wrote, whatever else it holds."""
    try:
        manifest = json.loads((folder / MANIFEST).read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and set(REQUIRED_MANIFEST_FIELDS) <= manifest.keys()


def _write_into(folder: Path, contents: DatasetContents, name: str | None = None) -> dict[str, Any]:
    """``name``: the folder's final name, which the card's loading example uses (``folder`` is a temporary one)."""
    extra_sets = sorted({set_name for domain in contents.conversations.values() for split in domain.values()
                         for record in split for set_name in record.candidates})
    features = conversation_features(extra_sets)
    data_files: dict[str, dict[str, list[str]]] = {}
    counts: dict[str, dict[str, int]] = {}

    def add(config: str, split: str, records: list, to_row: Callable[[int, Any], dict],
            config_features: datasets.Features, shard_rows: int, row_group_rows: int | None = None) -> None:
        counts.setdefault(config, {})[split] = len(records)
        if records:  # `datasets` cannot read an empty Parquet shard: an empty split is left out of the configs
            stem = f"{DATA_DIR}/{config}/{split}"
            data_files.setdefault(config, {})[split] = _write_shards(
                folder, stem, records, to_row, config_features, shard_rows, row_group_rows or shard_rows)

    for domain in DOMAINS:
        splits = contents.conversations.get(domain, {})
        for split in SPLITS:
            add(domain, split, splits.get(split, []), functools.partial(_conversation_row, features, domain, split),
                features, CONVERSATION_SHARD_ROWS)
    for domain in DOMAINS:
        add(ITEMS_CONFIG, domain, _items_by_id(domain, contents.items.get(domain, [])),
            functools.partial(_item_row, domain), ITEM_FEATURES, ITEM_SHARD_ROWS, ITEM_ROW_GROUP_ROWS)

    if contents.source_files:
        (folder / SOURCE_COPY_DIR).mkdir()
        for path in contents.source_files:
            shutil.copyfile(path, folder / SOURCE_COPY_DIR / path.name)
    manifest = {
        "name": DEFAULT_NAME,
        "version": contents.version,
        "fingerprint": fingerprint_of(shards := shard_hashes(folder)),
        "shards": shards,
        "schema_package_version": __version__,
        "candidate_sets": list(contents.candidate_sets),
        "candidate_columns": [candidate_column(n) for n in candidate_sets_of(features)],
        "counts": counts,
        **contents.metadata,
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    write_readme(folder, manifest, data_files, features, name)
    return manifest


def _conversation_row(features: datasets.Features, domain: str, split: str, index: int,
                      record: Conversation) -> dict:
    """``record`` as a validated row of ``domain``/``split``, with every candidate column of ``features``."""
    row = record.to_row()
    for column in features:
        row.setdefault(column, [])
    where = f"{domain}/{split}[{index}] ({row['example_id']})"
    validate_conversation_row(row, where=where)
    if row["domain"] != domain:  # the benchmark scores each record under its config's domain
        raise SchemaError(f"{where}: its domain is {row['domain']!r}, not {domain!r}")
    return row


def _item_row(domain: str, index: int, item: Item) -> dict:
    row = item.to_row()  # reads an image kept as a file path now, one shard at a time
    validate_item_row(row, where=f"{ITEMS_CONFIG}/{domain} ({row['item_id']})")
    return row


def _items_by_id(domain: str, items: Iterable[Item]) -> list[Item]:
    """``items`` sorted by id, refused if one id is given twice: the items config is keyed by item_id (loaders
    and the card count one row each)."""
    ordered = sorted(items, key=lambda item: item.item_id)
    repeated = next((a.item_id for a, b in zip(ordered, ordered[1:]) if a.item_id == b.item_id), None)
    if repeated is not None:
        raise SchemaError(f"{ITEMS_CONFIG}/{domain}: item {repeated} is given more than once")
    return ordered


def _write_shards(folder: Path, stem: str, records: list, to_row: Callable[[int, Any], dict],
                  features: datasets.Features, shard_rows: int, row_group_rows: int) -> list[str]:
    """Records to Parquet shards of ``shard_rows`` rows in row groups of ``row_group_rows``, turned into rows one
    row group at a time (item images stay on disk until then)."""
    num_shards = -(-len(records) // shard_rows)
    schema = features.arrow_schema  # keeps the features metadata
    paths = []
    for index in range(num_shards):
        relative = f"{stem}-{index:05d}-of-{num_shards:05d}.parquet"
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        end = min((index + 1) * shard_rows, len(records))
        with pq.ParquetWriter(path, schema) as writer:
            for first in range(index * shard_rows, end, row_group_rows):
                # Straight to Arrow, columns in the order of ``features`` (the card's and schema's, which raw
                # Parquet readers show as is): `Dataset.from_list` went through a second, inferred table and a cast.
                group = [to_row(first + offset, record)
                         for offset, record in enumerate(records[first:min(first + row_group_rows, end)])]
                writer.write_table(pa.Table.from_pylist(group, schema=schema), row_group_size=row_group_rows)
                del group
        paths.append(relative)
    return paths


def fingerprint(folder: str | os.PathLike) -> str:
    """sha256 over the data files (relative path + content), independent of card and manifest."""
    return fingerprint_of(shard_hashes(folder))


def shard_hashes(folder: str | os.PathLike) -> dict[str, str]:
    """The sha256 of each data file, by its path in ``folder`` (the manifest's ``shards``), in path order."""
    folder = Path(folder)
    return {path.relative_to(folder).as_posix(): file_sha256(path)
            for path in sorted((folder / DATA_DIR).rglob("*.parquet"))}


def fingerprint_of(shards: Mapping[str, str]) -> str:
    """The fingerprint of the data files whose sha256 by path are ``shards``."""
    digest = hashlib.sha256()
    for path in sorted(shards, key=PurePosixPath):  # path order, as the fingerprints of folders written before
        digest.update(f"{path}\0{shards[path]}\n".encode())
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# README.md: YAML configs + dataset_info, body from the card generator
# --------------------------------------------------------------------------------------------


def card_data(manifest: Mapping[str, Any], data_files: Mapping[str, Mapping[str, list[str]]],
              features: datasets.Features, folder: Path | None = None) -> DatasetCardData:
    """The README's YAML. With ``folder`` (holding ``data_files``), the split and dataset sizes in bytes are
    measured from the shards, as ``datasets`` reports them; without it they stay 0 (unknown)."""
    counts = manifest["counts"]
    domains_present = [config for config in data_files if config != ITEMS_CONFIG]
    default_config = "fashion" if "fashion" in domains_present else next(iter(domains_present), None)
    total = sum(sum(c.values()) for name, c in counts.items() if name != ITEMS_CONFIG)
    data = DatasetCardData(
        license="other",
        license_name="reddit-amazon-research",
        language=["en"],
        task_categories=["text-generation", "image-text-to-text"],
        task_ids=[],
        tags=["conversational-recommendation", "recommendation", "reddit", "amazon", "multimodal"],
        size_categories=[_size_category(total)],
        pretty_name="Reddit-Amazon",
        configs=[
            {
                "config_name": config,
                "data_files": [{"split": split, "path": paths} for split, paths in splits.items()],
                **({"default": True} if config == default_config else {}),
            }
            for config, splits in data_files.items()
        ],
    )
    infos = {}
    for config, splits in counts.items():
        if config not in data_files:
            continue
        config_features = ITEM_FEATURES if config == ITEMS_CONFIG else features
        split_dict = datasets.SplitDict()
        download_size = 0
        for split, n in splits.items():
            if n == 0:
                continue
            shards = [folder / path for path in data_files[config].get(split, [])] if folder else []
            split_dict.add(datasets.SplitInfo(name=split, num_examples=n, num_bytes=_arrow_bytes(shards)))
            download_size += sum(shard.stat().st_size for shard in shards)
        infos[config] = DatasetInfo(features=config_features, splits=split_dict, download_size=download_size or None,
                                    dataset_size=sum(s.num_bytes for s in split_dict.values()) or None)
    DatasetInfosDict(infos).to_dataset_card_data(data)
    # `datasets` keys its cache of a folder on the folder's name and this YAML, not on the files: a
    # folder rewritten in place (or another folder of the same name) would load the old rows. The
    # content fingerprint in each config's info makes the key change with the data.
    info = getattr(data, "dataset_info", None)  # none at all for a folder without a record
    for entry in info if isinstance(info, list) else [info] if info else []:
        entry["description"] = f"reddit-amazon {manifest['version']}, content fingerprint {manifest['fingerprint']}"
    return data


def _arrow_bytes(shards: Sequence[Path]) -> int:
    """The in-memory (Arrow) size of the rows in ``shards``, which ``datasets`` calls a split's ``num_bytes``;
    read one row group at a time, so a split of images never has to fit in memory."""
    total = 0
    for shard in shards:
        parquet = pq.ParquetFile(shard)
        total += sum(parquet.read_row_group(i).nbytes for i in range(parquet.num_row_groups))
    return total


#: The Hub's ``size_categories`` vocabulary (huggingface_hub's ``DatasetCardData``), by exclusive upper bound.
SIZE_CATEGORIES = [(10**3, "n<1K"), (10**4, "1K<n<10K"), (10**5, "10K<n<100K"), (10**6, "100K<n<1M"),
                   (10**7, "1M<n<10M"), (10**8, "10M<n<100M"), (10**9, "100M<n<1B"), (10**10, "1B<n<10B"),
                   (10**11, "10B<n<100B"), (10**12, "100B<n<1T")]


def _size_category(n: int) -> str:
    return next((label for limit, label in SIZE_CATEGORIES if n < limit), "n>1T")


def write_readme(folder: Path, manifest: Mapping[str, Any], data_files: Mapping[str, Mapping[str, list[str]]],
                 features: datasets.Features, name: str | None = None) -> None:
    """``name``: what the card's `load_dataset` and `benchmark run` examples load (default: ``folder``'s name)."""
    card = render_readme(folder, manifest, data_files, features, name or folder.resolve().name)
    write_atomic(folder / "README.md", card.encode("utf-8"))


def render_readme(folder: Path, manifest: Mapping[str, Any], data_files: Mapping[str, Mapping[str, list[str]]],
                  features: datasets.Features, name: str) -> str:
    """The README.md text, whose examples load ``name`` (the folder's name, or a Hub id for the Hub's copy)."""
    from cards.dataset_card import render_dataset_card

    return render_dataset_card(card_data(manifest, data_files, features, folder), manifest, folder, repo_id=name)


def refresh_card(folder: str | os.PathLike) -> None:
    """Re-render README.md from the folder's manifest and shards (``reddit-amazon card``).

    A folder whose shards disagree with its manifest (fingerprint, rows per split) is refused: the card's YAML
    takes the split sizes and fingerprint from the manifest, and ``datasets`` refuses a folder whose YAML
    declares other splits or sizes than its files have.
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    if missing := [name for name in REQUIRED_MANIFEST_FIELDS if name not in manifest]:  # not a data files' problem
        raise SchemaError(f"{folder / MANIFEST}: " + "; ".join(map(missing_field, missing)))
    problems = verify(folder, card=False)  # the card holds nothing of an import's lavic_source/ or its own YAML
    if problems:
        raise SchemaError(f"{folder} does not match its manifest, so its card would contradict its data:\n  "
                          + "\n  ".join(problems) + "\nrestore the data files, or rebuild or re-import the folder")
    remove_abandoned_temp_files(folder)  # a card write killed half-way (kill -9) left its hidden temporary README
    write_atomic(folder / "README.md", readme_from_shards(folder, folder.resolve().name).encode("utf-8"))


def readme_from_shards(folder: Path, name: str) -> str:
    """The README.md of a written folder, from its manifest and the shards on disk, loading ``name``."""
    manifest = read_manifest(folder)
    data_files: dict[str, dict[str, list[str]]] = {}
    for config in [*DOMAINS, ITEMS_CONFIG]:
        for split in DOMAINS if config == ITEMS_CONFIG else SPLITS:
            shards = sorted(p.relative_to(folder).as_posix()
                            for p in (folder / DATA_DIR / config).glob(f"{split}-*.parquet"))
            if shards:
                data_files.setdefault(config, {})[split] = shards
    first_shard = next((shards[0] for config, splits in data_files.items() if config != ITEMS_CONFIG
                        for shards in splits.values()), None)
    # A build that kept no conversation writes no shard: its card says so, as the build's own did.
    columns = _parquet_columns(folder / first_shard) if first_shard else []
    return render_readme(folder, manifest, data_files, conversation_features(candidate_sets_of(columns)), name)


def verify(folder: str | os.PathLike, card: bool = True) -> list[str]:
    """What in ``folder`` disagrees with its manifest: the content fingerprint, and the rows of each
    config and split (an edited, added or lost shard). Empty when the folder is as written."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    problems = [f"{MANIFEST}: {missing_field(name)}" for name in REQUIRED_MANIFEST_FIELDS if name not in manifest]
    shards = shard_hashes(folder)
    actual = fingerprint_of(shards)
    if "fingerprint" in manifest and actual != manifest["fingerprint"]:
        problems.append(f"the data files' fingerprint is {actual[:12]}, the manifest says "
                        f"{str(manifest['fingerprint'])[:12]}: a shard was changed, added or removed")
    if "fingerprint" not in manifest or actual != manifest["fingerprint"]:
        problems += shard_problems(shards, manifest.get("shards"))
    counts = manifest.get("counts", {})
    if not isinstance(counts, dict) or not all(isinstance(splits, dict) for splits in counts.values()):
        problems.append(f"the manifest's counts are not {{config: {{split: rows}}}}: {str(counts)[:60]}")
        counts = {}
    for config, splits in counts.items():
        for split, expected in splits.items():
            rows = 0
            for path in sorted((folder / DATA_DIR / config).glob(f"{split}-*.parquet")):
                try:
                    rows += pq.ParquetFile(path).metadata.num_rows
                except (pa.ArrowException, OSError) as error:
                    problems.append(f"{path.relative_to(folder)}: not a readable Parquet file ({error})")
            if rows != expected:
                problems.append(f"{config}/{split}: {rows} rows in the shards, {expected} in the manifest")
    return problems + (source_copy_problems(folder, manifest) + card_problems(folder)
                       + card_info_problems(folder, manifest) if card else [])


def shard_problems(shards: Mapping[str, str], recorded: Any) -> list[str]:
    """Which shards differ from the sha256 the manifest records for each; none named by a manifest written before
    it recorded them (its fingerprint still tells that something changed)."""
    if not isinstance(recorded, dict):
        return []
    problems = []
    for path in sorted(shards.keys() | recorded.keys()):
        if path not in shards:
            problems.append(f"{path}: missing, the manifest records it")
        elif path not in recorded:
            problems.append(f"{path}: not a shard the manifest records (added)")
        elif shards[path] != recorded[path]:
            problems.append(f"{path}: sha256 {shards[path][:12]}, the manifest says {str(recorded[path])[:12]}: "
                            "it was changed")
    return problems


def _card_command(folder: Path) -> str:
    """The command that rewrites ``folder``'s card, ready to paste into a shell."""
    return f"`reddit-amazon card {shlex.quote(str(folder))}`"


def card_problems(folder: Path) -> list[str]:
    """Where README.md's ``configs`` (what ``datasets`` loads for each config and split) differ from the shards."""
    try:
        configs = DatasetCard.load(folder / "README.md").data.to_dict().get("configs") or []
        declared = {(c["config_name"], f["split"]): _declared_files(folder, f["path"])
                    for c in configs for f in c["data_files"]}
    except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError) as error:  # YAML: a hand-edited card
        return [f"README.md: no readable configs ({type(error).__name__}: {error}); {_card_command(folder)} rewrites it"]
    on_disk: dict[tuple[str, str], list[str]] = {}
    for path in sorted((folder / DATA_DIR).glob("*/*.parquet")):
        on_disk.setdefault((path.parent.name, path.name.split("-")[0]), []).append(path.relative_to(folder).as_posix())
    return [f"README.md: {config}/{split} loads {declared.get((config, split), [])}, the folder's shards are "
            f"{on_disk.get((config, split), [])}; {_card_command(folder)} rewrites it"
            for config, split in sorted(declared.keys() | on_disk.keys())
            if declared.get((config, split)) != on_disk.get((config, split))]


def card_info_problems(folder: Path, manifest: Mapping[str, Any]) -> list[str]:
    """Where README.md's ``dataset_info`` disagrees with the manifest. ``datasets`` keys its cache of the folder on
    that YAML, fingerprint included, and checks each split's rows against it: a card left from other data (shards
    and manifest copied in beside it) loads the rows cached for that data, or fails."""
    problems = []
    infos = _card_infos(folder)
    stale = stale_card_configs(infos, manifest) if "fingerprint" in manifest else {}  # verify names a missing one
    if stale:
        problems.append(f"README.md: the dataset_info of {', '.join(stale)} is for content fingerprint "
                        f"{', '.join(sorted({stated[:12] for stated in stale.values()}))}, the manifest says "
                        f"{str(manifest.get('fingerprint'))[:12]}: `datasets` would load the rows it cached for that "
                        f"card; {_card_command(folder)} rewrites it")
    counts = manifest.get("counts")
    for config, info in infos.items():
        splits = counts.get(config) if isinstance(counts, dict) else None
        if not isinstance(splits, dict):  # verify names malformed counts
            continue
        declared = {split.get("name"): split.get("num_examples") for split in info.get("splits") or []}
        expected = {split: rows for split, rows in splits.items() if rows}
        if declared != expected:
            problems.append(f"README.md: the {config} config's dataset_info declares the splits {declared}, the "
                            f"manifest counts {expected}: `datasets` refuses to load it; {_card_command(folder)} "
                            "rewrites it")
    return problems


_CARD_FINGERPRINT = re.compile(r"content fingerprint ([0-9a-f]{64})")


def stale_card_configs(infos: Mapping[str, Mapping[str, Any]], manifest: Mapping[str, Any]) -> dict[str, str]:
    """The configs whose ``dataset_info`` in README.md (``infos``, from :func:`_card_infos`) names another
    fingerprint than the manifest's, with the one it names ("none" when it names none)."""
    stale = {}
    for config, info in infos.items():
        stated = _CARD_FINGERPRINT.search(str(info.get("description") or ""))
        if stated is None or stated.group(1) != manifest.get("fingerprint"):
            stale[config] = stated.group(1) if stated else "none"
    return stale


def _card_infos(folder: Path) -> dict[str, dict[str, Any]]:
    """README.md's ``dataset_info`` by config (none from a card that cannot be read: card_problems names it)."""
    try:
        info = DatasetCard.load(folder / "README.md").data.to_dict().get("dataset_info")
    except (OSError, ValueError, yaml.YAMLError):
        return {}
    entries = info if isinstance(info, list) else [info] if isinstance(info, dict) else []
    return {str(entry.get("config_name", "default")): entry for entry in entries if isinstance(entry, dict)}


def _declared_files(folder: Path, paths: str | list[str]) -> list[str]:
    """The files a card's ``path`` (a path or a list; ``datasets`` takes glob patterns and ``./``) loads."""
    found = set()
    for path in [paths] if isinstance(paths, str) else paths:
        if glob.has_magic(path):
            found |= {p.relative_to(folder).as_posix() for p in folder.glob(path)
                      if p.is_file() and not p.name.startswith((".", "__"))}  # datasets skips hidden files
        else:
            found.add(posixpath.normpath(path))
    return sorted(found)


def source_copy_problems(folder: Path, manifest: Mapping[str, Any]) -> list[str]:
    """How ``lavic_source/`` differs from the files the import recorded (export-lavic writes them back as they are)."""
    recorded = manifest.get("source_copies") or {}
    copies = folder / SOURCE_COPY_DIR
    problems = []
    for name, sha in recorded.items():
        path = copies / name
        if not path.is_file():
            problems.append(f"{SOURCE_COPY_DIR}/{name}: missing, the manifest records it")
        elif (actual := file_sha256(path)) != sha:
            problems.append(f"{SOURCE_COPY_DIR}/{name}: sha256 {actual[:12]}, the manifest says {sha[:12]}: "
                            "it was changed")
    if recorded and copies.is_dir():  # hidden files are a file manager's; export-lavic skips them
        problems += [f"{SOURCE_COPY_DIR}/{p.name}: not a file the import kept" for p in sorted(copies.iterdir())
                     if p.name not in recorded and not p.name.startswith(".")]
    return problems


def _parquet_columns(path: Path) -> list[str]:
    return pq.read_schema(path).names


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def read_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    """The folder's manifest; a field it lacks, at any depth, is read as a :class:`SchemaError` naming the file."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a reddit-amazon dataset folder (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"), object_hook=lambda fields: ManifestObject(path, fields))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise SchemaError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(manifest, dict):
        raise SchemaError(f"{path}: not a JSON object")
    return manifest


class ManifestObject(dict):
    """A JSON object of a manifest file. A field it lacks (a damaged or hand-edited manifest) is a
    :class:`SchemaError` naming the file, where a plain dict's KeyError would name neither the file nor the
    problem, and would look like a bug's."""

    def __init__(self, path: Path, fields: dict[str, Any]):
        super().__init__(fields)
        self.path = path

    def __missing__(self, key: str) -> Any:
        raise SchemaError(f"{self.path}: {missing_field(key)}")


def missing_field(name: str) -> str:
    """What a manifest lacking the field ``name`` is told."""
    return f"the field {name!r} is missing (restore the manifest, or rebuild or re-import the folder)"


#: Folders found unchanged in this process, with the size and mtime of their files then: a loader that opens
#: each config and split in turn hashes the shards once, not once per call.
_FOUND_UNCHANGED: dict[Path, list[tuple[str, int, int]]] = {}


def check_unchanged(folder: str | os.PathLike) -> None:
    """Refuse a dataset folder whose shards, or whose README's fingerprint, differ from its manifest: ``datasets``
    would serve the rows it cached before the change (its cache key is the README's YAML, which holds the fingerprint
    as written)."""
    folder = Path(folder).resolve()
    files = [folder / MANIFEST, folder / "README.md", *sorted((folder / DATA_DIR).rglob("*.parquet"))]
    stats = [(path.relative_to(folder).as_posix(), (stat := path.stat()).st_size, stat.st_mtime_ns)
             for path in files if path.is_file()]
    if _FOUND_UNCHANGED.get(folder) == stats:
        return
    manifest = read_manifest(folder)
    if fingerprint(folder) != manifest["fingerprint"]:  # a manifest without one: the error names the field
        raise SchemaError(f"{folder}: its data files changed since it was written (`reddit-amazon verify "
                          f"{folder}` says how); rebuild, re-import or restore it")
    if stale := stale_card_configs(_card_infos(folder), manifest):
        raise SchemaError(f"{folder}: its README.md was written for other data (the dataset_info of "
                          f"{', '.join(stale)} is not for the manifest's fingerprint), and `datasets` would load the "
                          f"rows it cached for that card; {_card_command(folder)} rewrites it")
    _FOUND_UNCHANGED[folder] = stats


#: What :func:`load` returns: as ``datasets.load_dataset``, by ``split`` and ``streaming``.
LoadedDataset: TypeAlias = (datasets.DatasetDict | datasets.Dataset | datasets.IterableDatasetDict
                            | datasets.IterableDataset)


def configs_of(path: str | os.PathLike) -> list[str]:
    """Configs a dataset folder or Hub id declares (a domain imported alone has only its own)."""
    return datasets.get_dataset_config_names(str(_expanded(path)))


def _expanded(path: str | os.PathLike) -> str | os.PathLike:
    """``path`` with a leading ``~`` expanded: `datasets` would take "~/x" for a Hub id."""
    return Path(path).expanduser() if str(path).startswith("~") else path


@overload
def load(config: str, path: str | os.PathLike | None = None, split: None = None, *, streaming: Literal[False] = False,
         **kwargs: Any) -> datasets.DatasetDict: ...
@overload
def load(config: str, path: str | os.PathLike | None, split: str, *, streaming: Literal[False] = False,
         **kwargs: Any) -> datasets.Dataset: ...
@overload
def load(config: str, path: str | os.PathLike | None = None, *, split: str, streaming: Literal[False] = False,
         **kwargs: Any) -> datasets.Dataset: ...
@overload
def load(config: str, path: str | os.PathLike | None = None, split: str | None = None, *, streaming: bool,
         **kwargs: Any) -> LoadedDataset: ...
def load(config: str, path: str | os.PathLike | None = None, split: str | None = None,
         **kwargs: Any) -> LoadedDataset:
    """``datasets.load_dataset`` on a dataset folder or Hub id; the bundled sample when ``path`` is None.

    As ``load_dataset`` returns: every split of the config (a ``DatasetDict``) without ``split``, one ``Dataset``
    with it; their iterable kinds with ``streaming=True``."""
    if config not in (*DOMAINS, ITEMS_CONFIG):
        raise SchemaError(f"unknown config {config!r}; expected one of {', '.join((*DOMAINS, ITEMS_CONFIG))}")
    if path is None:
        from reddit_amazon.sample import sample_dataset_path

        path = sample_dataset_path()
    refuse_missing_local_path(path)
    path = _expanded(path)
    if (Path(path) / MANIFEST).is_file():
        check_unchanged(path)
    with full_datasets_cache_named():
        return datasets.load_dataset(str(path), config, split=split, **kwargs)


#: The errors of a write that found no room: a full disk, a full quota, a file-size limit.
NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


@contextmanager
def full_datasets_cache_named() -> Iterator[None]:
    """A ``datasets.load_dataset`` in the block that finds no room in the `datasets` cache fails with an OSError naming
    the cache and the variable that moves it. `datasets` reported the full disk as "DatasetGenerationError: An error
    occurred while generating the dataset" (as if the dataset were broken), and its own check as "Not enough disk
    space. Needed: ..." without saying where."""
    cache = str(datasets.config.HF_DATASETS_CACHE)
    hint = "the datasets cache: make room there or set HF_DATASETS_CACHE to a folder with room"
    try:
        yield
    except datasets.exceptions.DatasetGenerationError as error:
        cause = os_error_under(error.__cause__ or error.__context__ or error)
        if cause is None or cause.errno not in NO_ROOM:
            raise
        raise OSError(cause.errno, f"{cause.strerror} ({hint})", cache) from error
    except OSError as error:
        if error.errno is None and str(error).startswith("Not enough disk space"):
            raise OSError(errno.ENOSPC, f"{error} ({hint})", cache) from error
        raise


def refuse_missing_local_path(path: str | os.PathLike) -> None:
    """A path that is not there must fail, not resolve to a Hub id or a stale cached copy.

    Offline, ``datasets`` answers a missing ``reddit-amazon`` folder with the cached copy of an
    earlier folder of that name. Only ``org/name`` is taken for a Hub id when no such folder exists.
    """
    text = str(path)
    looks_local = isinstance(path, os.PathLike) or text.startswith((".", "/", "~")) or text.count("/") != 1
    if looks_local and not Path(text).expanduser().exists():
        raise FileNotFoundError(f"dataset folder {text} does not exist (a Hub dataset is given as org/name)")


def iter_conversations(dataset: Iterable[Mapping[str, Any]], source: str) -> Iterator[Conversation]:
    for index, row in enumerate(dataset):
        yield Conversation.from_row(row, where=f"{source}[{index}]")


def iter_items(dataset: Iterable[Mapping[str, Any]], source: str) -> Iterator[Item]:
    """Items of an ``items`` split, each with its image's embedded bytes as they are in the shard.

    ``load_dataset`` decodes images to PIL, and an item made from a decoded image holds it re-encoded (a JPEG
    saved again loses pixels): a split that decodes its images is read without decoding them.
    """
    if isinstance(dataset, datasets.Dataset | datasets.IterableDataset) and dataset.features:
        image = dataset.features.get("image")
        if isinstance(image, datasets.Image) and image.decode:
            dataset = dataset.cast_column("image", datasets.Image(decode=False))
    for index, row in enumerate(dataset):
        yield Item.from_row(row, where=f"{source}[{index}]")


def push_to_hub(folder: str | os.PathLike, repo_id: str, *, private: bool = False, token: str | None = None,
                revision: str | None = None, endpoint: str | None = None) -> str:
    """Upload a dataset folder as a Hub dataset repo (token from ``HF_TOKEN`` unless given), in one commit.

    The folder already has the Hub layout (README YAML configs + Parquet), so its files are uploaded as they are,
    but for the README: the Hub's copy is rendered for ``repo_id``, so its examples load the repo, not a local
    folder name (the local README stays as it is). The version becomes a tag so
    ``load_dataset(repo_id, revision="vX.Y.Z")`` pins it. A ``revision`` branch not there yet is made from the
    default branch; the tag is then of that branch's commit.

    Refused (:class:`PushRefused`, nothing sent) without a token, or where the folder is not as its manifest says
    (what ``reddit-amazon verify`` checks): the published fingerprint must be the data's, not only the manifest's
    claim. A connection lost is a ``ConnectionError`` saying to push again.
    """
    from reddit_amazon.hub_push import require_token

    folder = Path(folder)
    read_manifest(folder)  # no dataset folder: refused before the token is asked for
    require_token(token)  # before the check, which reads every shard (minutes for a full build)
    # Held to the end: a build or import-lavic swapping the folder after the check would have its files published
    # under the checked manifest's version. A user who cannot make the lock beside it cannot rewrite it either.
    with file_lock(folder, FOLDER_LOCK_HOLDER, noun="folder") if os.access(folder.parent, os.W_OK) else nullcontext():
        return _verified_push(folder, repo_id, private=private, token=token, revision=revision, endpoint=endpoint)


def _verified_push(folder: Path, repo_id: str, *, private: bool, token: str | None, revision: str | None,
                   endpoint: str | None) -> str:
    from huggingface_hub import HfApi

    from reddit_amazon.hub_push import PushRefused, connection_errors_named, make_branch

    manifest = read_manifest(folder)
    if problems := verify(folder):
        raise PushRefused(f"{folder} does not match its manifest, nothing was pushed: {'; '.join(problems)} "
                          f"(`reddit-amazon verify {folder}` lists the same)")
    api = HfApi(endpoint=endpoint, token=token)  # endpoint None: the Hub (or $HF_ENDPOINT)
    with connection_errors_named(api.endpoint):
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        tag = f"v{manifest['version']}"
        refs = api.list_repo_refs(repo_id, repo_type="dataset")
        if any(ref.name == tag for ref in refs.tags):
            published = json.loads(Path(api.hf_hub_download(repo_id, MANIFEST, repo_type="dataset", revision=tag))
                                   .read_text(encoding="utf-8"))
            if published.get("fingerprint") != manifest["fingerprint"]:
                raise ValueError(f"{repo_id}: version {manifest['version']} is already published with other content "
                                 f"(fingerprint {str(published.get('fingerprint'))[:12]}, this folder "
                                 f"{manifest['fingerprint'][:12]}); give changed data a new version "
                                 "(build --version)")
        make_branch(api, repo_id, "dataset", revision)
        remote_files = api.list_repo_files(repo_id, repo_type="dataset", revision=revision)
        commit = api.create_commit(
            repo_id=repo_id,
            repo_type="dataset",
            operations=_hub_operations(folder, readme_from_shards(folder, repo_id), remote_files),
            revision=revision,
            commit_message=f"reddit-amazon {manifest['version']} ({manifest['fingerprint'][:12]})",
        )
        api.create_tag(repo_id, repo_type="dataset", tag=tag, revision=revision, exist_ok=True)  # same content: kept
    if manifest.get("removals"):  # the repo's earlier versions still serve the records removed
        from reddit_amazon.removals import EarlierRevisions

        earlier = EarlierRevisions.of(repo_id, refs, branch=revision or "main", tag=tag,
                                      history=any(path.startswith(f"{DATA_DIR}/") for path in remote_files))
        if notice := earlier.notice():
            log.warning(notice)
    return str(commit)


def _hub_operations(folder: Path, readme: str, remote_files: Iterable[str]) -> list:
    """One commit's operations: every file of ``folder`` but hidden ones (an imported copy's lavic_source/ too),
    the README as ``readme``, and the deletion of the repo's shards this version does not have (other counts).
    The repo's other files (a LICENSE, .gitattributes) are kept."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete
    from huggingface_hub.utils import filter_repo_objects

    local = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    uploaded = [path for path in filter_repo_objects(local, ignore_patterns=[".*", "**/.*"]) if path != "README.md"]
    additions = [CommitOperationAdd(path_in_repo=path, path_or_fileobj=folder / path) for path in uploaded]
    additions.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=readme.encode("utf-8")))
    stale = sorted(path for path in remote_files if path.startswith(f"{DATA_DIR}/") and path not in uploaded)
    return [*(CommitOperationDelete(path_in_repo=path) for path in stale), *additions]
