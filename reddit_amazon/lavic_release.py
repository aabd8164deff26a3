"""Import and export the LaViC authors' release format.

The release (github.com/jeon185/LaViC, folder ``data/``) has one folder per domain, named after the
Amazon Reviews 2023 category, each with any of ``train.jsonl``, ``valid.jsonl``, ``test.jsonl``;
item metadata sits beside them in ``item2meta_train.json[.zip]`` / ``item2meta_valid.jsonl``.

Import keeps every record and every ASIN: the context string is parsed back into turns (and must
re-render identically), candidate columns are renamed, and referenced items become rows of the
``items`` config, with metadata joined where the release has it. Text is kept exactly as released
unless ``repair_text`` is set: 279 of the release's 1,923 records (14.5%) carry mojibake (UTF-8 read as
Latin-1, ``donâ\\x80\\x99t``), which ftfy repairs; the dataset's manifest records that choice.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ftfy
import orjson

from reddit_amazon import DATASET_VERSION
from reddit_amazon.assemble import report_of_given_candidates
from reddit_amazon.dataset_folder import (
    MANIFEST,
    SOURCE_COPY_DIR,
    DatasetContents,
    check_output_folder,
    configs_of,
    in_dataset_folder,
    iter_conversations,
    load,
    read_manifest,
    source_copy_problems,
    write_dataset,
)
from reddit_amazon.files import file_lock, file_sha256, open_atomic, remove_abandoned_temp_files, write_atomic
from reddit_amazon.schema import (
    DOMAINS,
    ITEMS_CONFIG,
    SPLITS,
    Conversation,
    Item,
    SchemaError,
    Turn,
    candidate_column,
    parse_context,
    render_context,
)

#: Release folder -> our domain (the paper calls them beauty, fashion, home).
RELEASE_FOLDERS = {"all_beauty": "beauty", "amazon_fashion": "fashion", "amazon_home": "home"}
#: Release file -> our split.
RELEASE_SPLITS = {"train.jsonl": "train", "valid.jsonl": "validation", "test.jsonl": "test"}
#: Release candidate field -> our candidate set name.
RELEASE_CANDIDATES = {"candidates_st": "sbert", "candidates_gpt_large": "openai_large"}
RELEASE_FIELDS = ("context", "context_items", "gt", "gt_items", "candidates_gpt_large", "candidates_st")
METADATA_FILES = ("item2meta_train.json", "item2meta_train.json.zip", "item2meta_valid.jsonl")
#: Held by an export folder from the export's first write to its last: a folder holding it (an export killed
#: half-way) may mix the files of two exports, and is refused as a release until an export finishes there.
EXPORT_UNFINISHED = ".export-unfinished"
#: The metadata JSON inside ``item2meta_train.json.zip`` is read into memory: a member beyond this size, or
#: expanding more than MAX_ZIP_RATIO times (JSON text does ~10x; a zip bomb 1000x), is refused unread.
MAX_METADATA_BYTES = 1 << 30
MAX_ZIP_RATIO = 100
_NO_METADATA = "empty: the release has no such metadata"
#: What an imported copy's fields hold where a build's differ (``schema.FIELD_DOCS``), for its dataset card:
#: the release has no Reddit ids, authors, subreddits or times, and its items only titles, image URLs and
#: image descriptions.
IMPORTED_FIELD_DOCS = {
    "example_id": "`lavic-<domain>-<split>-<line>`: the record's line in the release file",
    "domain": "beauty, fashion or home: the release folder it comes from ("
              + ", ".join(f"`{folder}`" for folder in RELEASE_FOLDERS) + ")",
    "thread_id": "`lavic-` and 16 hex digits of the sha1 of the submission text (the release has no Reddit ids): "
                 "records with the same submission text share it",
    "subreddit": "empty: the release does not give it",
    "created_utc": "null: the release has no times",
    "turns": "the thread up to the recommendation, parsed from the release's `context`: list of {kind: "
             "submission|comment, id, author, text, created_utc}; `id` and `author` are empty and `created_utc` "
             "null (the release has none)",
    "gt_comment_id": "empty: the release has no Reddit ids",
    "candidates_<name>": "10 candidate ASINs of the release: "
                         + ", ".join(f"`{theirs}` as `{ours}`" for theirs, ours in RELEASE_CANDIDATES.items()),
    "parent_asin": "empty: the release gives the linked ASINs only",
    "title": "product title from the release's item metadata (empty where it has none)",
    **dict.fromkeys(["store", "main_category", "categories", "features", "description", "details"], _NO_METADATA),
    "image_urls": "image URLs from the release's item metadata, main image first",
    "image": "null: the release lists image URLs only",
    "image_description": "the release's `image_description_llava_cleaned`",
}


@dataclass
class ImportReport:
    records: dict[str, dict[str, int]] = field(default_factory=dict)  # domain -> split -> records
    gt_pairs: dict[str, dict[str, int]] = field(default_factory=dict)  # (record, gt item) pairs
    items: dict[str, int] = field(default_factory=dict)
    items_with_metadata: dict[str, int] = field(default_factory=dict)
    metadata_rows: int = 0
    metadata_items_unreferenced: int = 0
    mojibake_records: int = 0
    repaired_records: int = 0
    not_imported: list[str] = field(default_factory=list)  # data files under SRC outside the release layout

    def lines(self) -> list[str]:
        out = []
        for domain, splits in self.records.items():
            for split, n in splits.items():
                out.append(f"{domain}/{split}: {n} records, {self.gt_pairs[domain][split]} (record, gt item) pairs")
            out.append(f"{domain}: {self.items[domain]} items referenced, "
                       f"{self.items_with_metadata[domain]} with release metadata")
        out.append(f"metadata rows read: {self.metadata_rows} "
                   f"({self.metadata_items_unreferenced} items not referenced by any record, kept in {SOURCE_COPY_DIR}/)")
        out.append(f"records with mojibake: {self.mojibake_records}; repaired: {self.repaired_records}")
        if self.not_imported:
            out.append(f"WARNING: {len(self.not_imported)} file(s) outside the release layout were NOT imported: "
                       + ", ".join(self.not_imported))
        return out


def import_release(src: str | Path, out: str | Path, *, repair_text: bool = False,
                   version: str = DATASET_VERSION) -> ImportReport:
    """Convert a release folder into a dataset folder at ``out``."""
    src = Path(src)
    if (src / EXPORT_UNFINISHED).exists():
        raise SchemaError(f"{src}: an export-lavic into this folder did not finish ({EXPORT_UNFINISHED} is there), "
                          "so its files may be of two exports: run that export again")
    check_output_folder(out, keep=[src])  # before reading anything: --out must not hold the release
    report = ImportReport()
    conversations: dict[str, dict[str, list[Conversation]]] = {}
    for folder, domain in RELEASE_FOLDERS.items():
        for filename, split in RELEASE_SPLITS.items():
            path = src / folder / filename
            if not path.is_file():
                continue
            records = list(_read_release_file(path, domain, split, repair_text, report))
            conversations.setdefault(domain, {})[split] = records
            report.records.setdefault(domain, {})[split] = len(records)
            report.gt_pairs.setdefault(domain, {})[split] = sum(len(r.gt_items) for r in records)
    report.not_imported = _outside_layout(src)
    if not conversations:
        raise FileNotFoundError(
            f"{src}: no release files found (expected e.g. {next(iter(RELEASE_FOLDERS))}/valid.jsonl)"
        )
    if not any(records for splits in conversations.values() for records in splits.values()):
        raise SchemaError(f"{src}: the release files hold no records")

    metadata = _read_metadata(src, report)
    items: dict[str, list[Item]] = {}
    referenced: set[str] = set()
    for domain, splits in conversations.items():
        asins: dict[str, None] = {}
        for records in splits.values():
            for record in records:
                for asin in [*record.gt_items, *record.context_items, *(a for ids in record.candidates.values() for a in ids)]:
                    asins[asin] = None
        items[domain] = [_item(asin, domain, metadata.get(asin)) for asin in asins]
        referenced.update(asins)
        report.items[domain] = len(asins)
        report.items_with_metadata[domain] = sum(asin in metadata for asin in asins)
    report.metadata_items_unreferenced = len(set(metadata) - referenced)
    copies = [src / name for name in METADATA_FILES if (src / name).is_file()]

    contents = DatasetContents(
        conversations=conversations,
        items=items,
        version=version,
        candidate_sets=list(RELEASE_CANDIDATES.values()),
        metadata={
            "source": f"LaViC authors' release ({src.name}/), imported with `reddit-amazon import-lavic`",
            "text_repair": repair_text,
            "import_report": report.__dict__,
            # the release's candidates as a build records its own: the share of gt items among them bounds HR@1
            "build_reports": {"candidates": report_of_given_candidates(
                conversations, list(RELEASE_CANDIDATES.values())).as_dict()},
            **({"source_copies": {path.name: file_sha256(path) for path in copies}} if copies else {}),
        },
        source_files=copies,
    )
    write_dataset(out, contents, keep=[src])
    return report


def _read_release_file(path: Path, domain: str, split: str, repair_text: bool,
                       report: ImportReport) -> Iterator[Conversation]:
    with open(path, "rb") as handle:
        for line_number, line in enumerate(handle, start=1):
            where = f"{path}:{line_number}"
            if not line.strip():
                continue
            try:
                raw = orjson.loads(line)
            except orjson.JSONDecodeError as error:
                raise SchemaError(f"{where}: not valid JSON ({error})") from None
            if not isinstance(raw, dict):
                raise SchemaError(f"{where}: expected a JSON object")
            missing = [name for name in RELEASE_FIELDS if name not in raw]
            unexpected = [name for name in raw if name not in RELEASE_FIELDS]
            if missing or unexpected:
                raise SchemaError(f"{where}: missing field(s) {missing}, unexpected field(s) {unexpected}")
            if not isinstance(raw["context"], str) or not isinstance(raw["gt"], str):
                raise SchemaError(f"{where}: context and gt must be strings")
            not_lists = [name for name in ("gt_items", "context_items", *RELEASE_CANDIDATES)
                         if not isinstance(raw[name], list)]
            if not_lists:
                raise SchemaError(f"{where}: {', '.join(not_lists)} must be lists of ASINs")
            empty = [name for name in RELEASE_CANDIDATES if not raw[name]]
            if empty:  # the format always has both sets; an empty one could not be exported back
                raise SchemaError(f"{where}: {', '.join(empty)} is empty")
            try:
                turns = parse_context(raw["context"])
            except SchemaError as error:
                raise SchemaError(f"{where}: {error}") from None
            gt_text = raw["gt"]
            if _has_mojibake(raw["context"]) or _has_mojibake(gt_text):
                report.mojibake_records += 1
                if repair_text:
                    turns = [Turn(kind=t.kind, text=ftfy.fix_encoding(t.text)) for t in turns]
                    gt_text = ftfy.fix_encoding(gt_text)
                    report.repaired_records += 1
            record = Conversation(
                example_id=f"lavic-{domain}-{split}-{line_number:06d}",
                domain=domain,
                thread_id="lavic-" + hashlib.sha1(turns[0].text.encode()).hexdigest()[:16],
                subreddit="",
                created_utc=None,
                turns=turns,
                context_items=raw["context_items"],
                gt_text=gt_text,
                gt_items=raw["gt_items"],
                candidates={ours: raw[theirs] for theirs, ours in RELEASE_CANDIDATES.items()},
            )
            try:
                Conversation.from_row(record.to_row(), where=where)  # validates types, ASINs, candidates
            except SchemaError as error:  # named as the release file names them
                message = str(error)
                for theirs, ours in RELEASE_CANDIDATES.items():
                    message = message.replace(candidate_column(ours), theirs)
                raise SchemaError(message) from None
            yield record


def _outside_layout(src: Path) -> list[str]:
    """JSON data files under ``src`` the import does not read (``Amazon_Fashion/``, ``dev.jsonl``, ``valid.jsonl.gz``):
    their records would otherwise be left out without a word."""
    layout = {f"{folder}/{name}" for folder in RELEASE_FOLDERS for name in RELEASE_SPLITS} | set(METADATA_FILES)
    return sorted(rel for path in src.rglob("*.json*")
                  if path.is_file() and not (rel := path.relative_to(src).as_posix()).startswith(".")
                  and rel not in layout)


def _has_mojibake(text: str) -> bool:
    return ftfy.badness.is_bad(text)


def _read_metadata(src: Path, report: ImportReport) -> dict[str, list[dict[str, Any]]]:
    """ASIN -> metadata rows (one per image), from every metadata file present."""
    rows: list[tuple[str, dict[str, Any]]] = []
    valid = src / "item2meta_valid.jsonl"
    if valid.is_file():
        with open(valid, "rb") as handle:
            for line_number, line in enumerate(handle, start=1):
                if line.strip():
                    row = _json(line, f"{valid}:{line_number}")
                    if not isinstance(row, dict):
                        raise SchemaError(f"{valid}:{line_number}: expected a JSON object")
                    rows.append((f"{valid}:{line_number}", row))
    for name in ("item2meta_train.json", "item2meta_train.json.zip"):
        path = src / name
        if not path.is_file():
            continue
        if path.suffix == ".zip":
            data = _json(*_zip_member(path))
        else:
            data = _json(path.read_bytes(), str(path))
        entries = data.items() if isinstance(data, dict) else enumerate(data)
        for key, value in entries:
            if not isinstance(value, dict):
                continue
            if "image_name" in value or not isinstance(key, str):
                rows.append((f"{path}[{key}]", value))
            else:
                rows.extend((f"{path}[{key}]", row) for row in _per_image_rows(key, value))
    by_image: dict[str, dict[str, dict[str, Any]]] = {}  # ASIN -> image name -> row
    for where, row in rows:
        image_name = row.get("image_name")
        if not isinstance(image_name, str) or "_" not in image_name:
            raise SchemaError(f"{where}: metadata row without an image_name like ASIN_k.jpg")
        images = by_image.setdefault(image_name.split("_", 1)[0], {})
        images[image_name] = _merged_image_row(images[image_name], row) if image_name in images else row
    report.metadata_rows = len(rows)
    return {asin: list(images.values()) for asin, images in by_image.items()}


def _merged_image_row(first: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """One image listed by both metadata files (an item of ``item2meta_valid.jsonl`` that ``item2meta_train.json``
    also holds, as an export of a build writes them): one row, the first file's values, the other's where it has
    none. Two rows would give the item that image's URL twice."""
    merged = {key: value for key, value in other.items() if value}
    merged.update((key, value) for key, value in first.items() if value)
    return merged


def _per_image_rows(asin: str, entry: dict[str, Any]) -> list[dict[str, Any]]:
    """An ``item2meta_train.json`` entry (the item's Amazon metadata, ``images`` included, and
    ``image_descriptions_llava_cleaned``: ``{"ASIN_k.jpg": description}``) as rows of ``item2meta_valid.jsonl``'s
    layout, one per image. Image k is ``images[k]["large"]``: the authors' crawler saves that URL as ``ASIN_k.jpg``."""
    images = entry.get("images")
    images = images if isinstance(images, list) else []
    urls = [(image.get("large") or "") if isinstance(image, dict) else "" for image in images]
    descriptions = entry.get("image_descriptions_llava_cleaned")
    descriptions = descriptions if isinstance(descriptions, dict) else {}
    names = dict.fromkeys([f"{asin}_{k}.jpg" for k in range(len(urls))] + [str(name) for name in descriptions])
    rows = []
    for name in names or [f"{asin}_0.jpg"]:
        index = _image_index({"image_name": name})
        rows.append({"title": entry.get("title"), "image_name": name,
                     "image": urls[index] if index < len(urls) else "",
                     "image_description_llava_cleaned": descriptions.get(name) or ""})
    return rows


def _zip_member(path: Path) -> tuple[bytes, str]:
    """The bytes of the ``.json`` member of a zip file and where they came from; a damaged archive, one
    without such a member, or one that would expand too far (a zip bomb) is a :class:`SchemaError`."""
    try:
        with zipfile.ZipFile(path) as archive:
            info = next((i for i in archive.infolist() if i.filename.endswith(".json")), None)
            if info is None:
                raise SchemaError(f"{path}: the archive holds no .json file")
            where = f"{path}!{info.filename}"
            if info.file_size > MAX_METADATA_BYTES or (
                    info.file_size > 16 << 20 and info.file_size > MAX_ZIP_RATIO * max(info.compress_size, 1)):
                raise SchemaError(f"{where}: expands to {info.file_size:,} bytes from {info.compress_size:,} "
                                  "(too large, or a zip bomb): not read")
            return archive.read(info), where
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError) as error:
        raise SchemaError(f"{path}: not a readable zip archive ({error})") from None


def _json(data: bytes, where: str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as error:
        raise SchemaError(f"{where}: not valid JSON ({error})") from None


def _image_index(row: dict[str, Any]) -> int:
    stem = row["image_name"].rsplit(".", 1)[0]
    suffix = stem.rsplit("_", 1)[-1]
    return int(suffix) if suffix.isdigit() else 0


def _item(asin: str, domain: str, rows: list[dict[str, Any]] | None) -> Item:
    if not rows:
        return Item(item_id=asin, domain=domain, image_error="the release has no metadata for this item")
    rows = sorted(rows, key=_image_index)
    return Item(
        item_id=asin,
        domain=domain,
        title=rows[0].get("title") or "",
        image_urls=[row["image"] for row in rows if row.get("image")],
        image_description=rows[0].get("image_description_llava_cleaned") or "",
        image_error="the release lists image URLs only; images were not downloaded",
    )


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------


def release_record(record: Conversation) -> dict[str, Any]:
    """One of our records in the authors' field layout and order."""
    for name in RELEASE_CANDIDATES.values():
        if not record.candidates.get(name):
            raise SchemaError(f"{record.example_id}: no {candidate_column(name)}; the release format requires it")
    return {
        "context": render_context(record.turns),
        "context_items": record.context_items,
        "gt": record.gt_text,
        "gt_items": record.gt_items,
        "candidates_gpt_large": record.candidates["openai_large"],
        "candidates_st": record.candidates["sbert"],
    }


def export_release(dataset: str | Path, out: str | Path) -> dict[str, dict[str, int]]:
    """Write a dataset folder (or Hub id) back in the authors' format. Returns records per file.

    An import gets the release's own metadata files back as they are (none if it had none). A build's ``items`` config
    becomes ``item2meta_train.json`` (every item: what the authors' crawler, distillation and prompt tuning read)
    and ``item2meta_valid.jsonl`` (the validation split's gt items: their distillation's validation set).
    """
    out = Path(out)
    check_release_folder(out)  # before reading anything
    # A second export into ``out`` meanwhile would interleave its files with this one's, delete the ones it did not
    # write, and remove the unfinished mark while this one still writes: refused, naming the lock.
    with file_lock(out, "export-lavic", noun="folder", tidy_on_error=True):
        return _export_release(dataset, out)


def _export_release(dataset: str | Path, out: Path) -> dict[str, dict[str, int]]:
    folder_for = {domain: folder for folder, domain in RELEASE_FOLDERS.items()}
    file_for = {split: filename for filename, split in RELEASE_SPLITS.items()}
    written: dict[str, dict[str, int]] = {}
    present = configs_of(dataset)
    loaded = {domain: load(domain, dataset) for domain in DOMAINS if domain in present}
    _check_release_candidates(loaded, dataset)  # before anything is written
    _check_release_contexts(loaded, dataset)
    source_copy = Path(dataset) / SOURCE_COPY_DIR
    manifest = read_manifest(dataset) if (Path(dataset) / MANIFEST).is_file() else None  # a local folder
    if manifest is not None:  # the copies written back must be the import's
        problems = source_copy_problems(Path(dataset), manifest)
        if problems:
            raise SchemaError(f"{dataset}: its release files changed since the import:\n  " + "\n  ".join(problems)
                              + "\nre-import the release, or restore them")
    _remove_abandoned_writes(out)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / EXPORT_UNFINISHED, b"an export-lavic into this folder has not finished: run it again\n")
    files: list[Path] = []  # what this export writes; an earlier export's other release files are deleted
    for domain, splits in loaded.items():
        for split in SPLITS:
            if split not in splits or len(splits[split]) == 0:
                continue
            target = out / folder_for[domain] / file_for[split]
            target.parent.mkdir(parents=True, exist_ok=True)
            with open_atomic(target) as handle:  # a record failing half-way leaves no partial file
                for record in iter_conversations(splits[split], f"{dataset}:{domain}/{split}"):
                    handle.write((json.dumps(release_record(record)) + "\n").encode("utf-8"))
            files.append(target)
            written.setdefault(domain, {})[split] = len(splits[split])
    if source_copy.is_dir():
        for path in source_copy.iterdir():
            if path.is_file() and not path.name.startswith("."):  # hidden: a file manager's, not the release's
                # atomically: a full disk or a kill half-way must leave neither a truncated copy under the release's
                # name nor an earlier export's copy cut short
                with open(path, "rb") as source, open_atomic(out / path.name) as copy:
                    shutil.copyfileobj(source, copy)
                files.append(out / path.name)
    elif ITEMS_CONFIG in present and not (manifest is not None and "import_report" in manifest):
        # an import without copies had a release without metadata files: its export has none either
        items = _item_metadata(dataset, [d for d in DOMAINS if d in loaded])
        _write_item2meta_train(items, out / "item2meta_train.json")
        _write_item2meta_valid(items, _validation_gt_items(loaded), out / "item2meta_valid.jsonl")
        files += [out / "item2meta_train.json", out / "item2meta_valid.jsonl"]
    _remove_other_release_files(out, files)
    (out / EXPORT_UNFINISHED).unlink()
    return written


def _remove_other_release_files(out: Path, kept: list[Path]) -> None:
    """The release files of an earlier export into ``out`` that this one did not write (a domain or split this
    dataset lacks): left, they would be read back as part of this export."""
    layout = [out / folder / name for folder in RELEASE_FOLDERS for name in RELEASE_SPLITS]
    for path in [*layout, *(out / name for name in METADATA_FILES)]:
        if path not in kept and path.is_file():
            path.unlink()
    for folder in RELEASE_FOLDERS:
        if (out / folder).is_dir() and not any((out / folder).iterdir()):
            (out / folder).rmdir()


def _remove_abandoned_writes(out: Path) -> None:
    """The hidden temporary files an export killed half-way (kill -9) left in ``out`` and its domain folders: a rerun
    replaces the files they were to become, and nothing else would ever delete them."""
    for folder in (out, *(out / name for name in RELEASE_FOLDERS)):
        if folder.is_dir():
            remove_abandoned_temp_files(folder)


def check_release_folder(out: Path) -> None:
    """An export writes its files into ``out`` beside what is there, so ``out`` must be new, empty or a release
    layout (an earlier export): a dataset folder or a folder inside one would no longer match its manifest, and a
    folder of other files would get the release's mixed in. Raises ``FileExistsError`` naming the folder."""
    target = out.resolve()
    if (where := in_dataset_folder(target)) is not None:
        raise FileExistsError(f"{target} {where}: the release files would be mixed into it; choose a new or empty "
                              "folder")
    if not target.exists():
        return
    if not target.is_dir():
        raise FileExistsError(f"{target} is a file; the release output must be a folder")
    layout = {*RELEASE_FOLDERS, *METADATA_FILES}
    other = sorted(entry.name for entry in target.iterdir()
                   if entry.name not in layout and not entry.name.startswith("."))
    if other:
        raise FileExistsError(f"{target} is a folder with other content ({', '.join(other[:3])}"
                              f"{', ...' if len(other) > 3 else ''}), not a LaViC release: the release files would be "
                              "mixed into it; choose a new or empty folder")


def _check_release_candidates(loaded: dict[str, Any], dataset: str | Path) -> None:
    """Every record must have both candidate sets the release format holds (a default build fills only sbert)."""
    for domain, splits in loaded.items():
        for split in splits:
            for name in RELEASE_CANDIDATES.values():
                column = candidate_column(name)
                rows = splits[split]
                empty = next((i for i, ids in enumerate(rows[column]) if not ids), None) \
                    if column in rows.column_names else 0
                if empty is not None:
                    raise SchemaError(f"{dataset} {domain}/{split}: record {rows[empty]['example_id']} has no "
                                      f"{column}; the release format needs candidates_sbert and "
                                      "candidates_openai_large (build with --retrievers sbert,openai-emb)")


def _check_release_contexts(loaded: dict[str, Any], dataset: str | Path) -> None:
    """Every record's turns must come back from its context string: the release has no turns, and a text holding
    its turn's closing tag and a newline (``</comment>\\n``) would be split there, or refused, by import-lavic."""
    for domain, splits in loaded.items():
        for split in splits:
            for row in splits[split].select_columns(["example_id", "turns"]):
                turns = [Turn(kind=t["kind"], text=t["text"]) for t in row["turns"]]
                try:
                    same = parse_context(render_context(turns)) == turns
                except SchemaError:
                    same = False
                if not same:
                    raise SchemaError(f"{dataset} {domain}/{split}: record {row['example_id']} has a turn whose text "
                                      "holds '</submission>\\n' or '</comment>\\n'; the release format's context "
                                      "string cannot keep its turns apart (import-lavic would split it)")


@dataclass(frozen=True)
class ItemMetadata:
    """What the release's metadata files hold of an item."""
    title: str
    image_urls: list[str]  # main image first: image k is the authors' ``ASIN_k.jpg``
    description: str  # of the main image


def _item_metadata(dataset: str | Path, domains: list[str]) -> dict[str, ItemMetadata]:
    """ASIN -> metadata of the items of ``domains`` (an ASIN in two domains' splits: its first)."""
    items: dict[str, ItemMetadata] = {}
    for domain in domains:
        rows = load(ITEMS_CONFIG, dataset, split=domain).select_columns(
            ["item_id", "title", "image_urls", "image_description"])  # not the images, which would be decoded
        for row in rows:
            items.setdefault(row["item_id"], ItemMetadata(title=row["title"] or "", image_urls=row["image_urls"] or [],
                                                          description=row["image_description"] or ""))
    return items


def _validation_gt_items(loaded: dict[str, Any]) -> list[str]:
    """The gt items of the validation split's records, in record order, each once."""
    asins: dict[str, None] = {}
    for splits in loaded.values():
        if "validation" in splits:
            for gt_items in splits["validation"]["gt_items"]:
                asins.update(dict.fromkeys(gt_items))
    return list(asins)


def _write_item2meta_train(items: dict[str, ItemMetadata], target: Path) -> None:
    """``{ASIN: {title, images: [{large: URL}], image_descriptions_llava_cleaned: {"ASIN_0.jpg": text}}}``: the
    authors' crawler saves ``images[k]["large"]`` as ``ASIN_k.jpg``, their distillation trains on the described
    images, and their prompt tuning shows each candidate's title and ``ASIN_0.jpg``."""
    with open_atomic(target) as handle:
        handle.write(json.dumps({asin: {
            "title": item.title,
            "images": [{"large": url} for url in item.image_urls],
            "image_descriptions_llava_cleaned": {f"{asin}_0.jpg": item.description} if item.description else {},
        } for asin, item in items.items()}).encode("utf-8"))


def _write_item2meta_valid(items: dict[str, ItemMetadata], asins: list[str], target: Path) -> None:
    """One row per item of ``asins`` in the release's ``item2meta_valid.jsonl`` layout, its main image as
    ``ASIN_0.jpg``: the images the authors' distillation validates on."""
    with open_atomic(target) as handle:
        for asin in asins:
            if (item := items.get(asin)) is None:
                continue
            handle.write((json.dumps({
                "title": item.title, "image_name": f"{asin}_0.jpg",
                "image": item.image_urls[0] if item.image_urls else "",
                "image_description_llava_cleaned": item.description,
            }) + "\n").encode("utf-8"))
