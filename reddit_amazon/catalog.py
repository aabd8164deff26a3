"""Amazon Reviews 2023 item catalog: metadata, child ASIN -> parent ASIN, and the item's domain.

Reddit links usually carry a *child* ASIN (a size or colour variant), while the metadata of
Amazon Reviews 2023 is keyed by ``parent_asin``. Only review rows carry both, so the mapping is
read from the review files. Both kinds of file are streamed and only the ASINs the conversations
need are kept, so memory stays bounded by the number of linked products, not the catalog size.

Sources are local ``.jsonl`` files (also zstd-, gzip-, xz- or bz2-compressed, told by their first bytes,
read as :mod:`reddit_amazon.dumps` reads Reddit dumps), or Hub sources written ``hub:<repo>:<what>``:

* ``hub:<repo>:<path/in/repo.jsonl>`` -- one file of a Hub dataset repo (or of a local folder), compressed
  alike (``.jsonl.zst`` ...), fetched with ``huggingface_hub`` into its cache and streamed like a local file;
* ``hub:McAuley-Lab/Amazon-Reviews-2023:raw_meta_<Category>`` / ``raw_review_<Category>`` -- the
  upstream config names, mapped to their files (``raw/meta_categories/meta_<Category>.jsonl``,
  ``raw/review_categories/<Category>.jsonl``): the repo's loading script does not run on
  ``datasets`` >= 4 ("Dataset scripts are no longer supported");
* ``hub:<repo>:<config>[:<split>]`` -- any other dataset, read with ``datasets`` in streaming mode.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from tqdm.auto import tqdm

from reddit_amazon.dumps import CutLine, DumpReadError, ReadProgress, iter_chunks, iter_lines, too_long_reason
from reddit_amazon.progress import bar_options
from reddit_amazon.schema import DOMAINS, Item, is_asin

HUB_PREFIX = "hub:"
DEFAULT_HUB_REPO = "McAuley-Lab/Amazon-Reviews-2023"

#: ``main_category`` display names of Amazon Reviews 2023 -> the paper's domains. These are the
#: values of the three category files the paper used (All_Beauty, Amazon_Fashion, and the
#: "Amazon Home" main category of Home_and_Kitchen); override with ``--domain-map``.
DEFAULT_DOMAIN_MAP: dict[str, str] = {
    "All Beauty": "beauty",
    "AMAZON FASHION": "fashion",
    "Amazon Home": "home",
}

#: Image sizes of an Amazon image entry, largest first (some copies spell ``hiRes``).
IMAGE_SIZE_KEYS: tuple[str, ...] = ("hi_res", "hiRes", "large", "thumb")

_BAD_LINE_EXAMPLES = 5


class CatalogError(ValueError):
    """Unusable catalog input (unreadable file, bad domain map). The message names the source."""


# --------------------------------------------------------------------------------------------
# Domain mapping
# --------------------------------------------------------------------------------------------


def parse_domain_map(spec: str | None) -> dict[str, str]:
    """The default map, a JSON file ``{"main_category": "domain"}``, or ``"All Beauty=beauty;…"``."""
    if not spec:
        return dict(DEFAULT_DOMAIN_MAP)
    path = Path(spec)
    if path.suffix == ".json" or path.is_file():
        try:
            mapping = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise CatalogError(f"--domain-map {spec}: {error}") from error
        if not isinstance(mapping, dict):
            raise CatalogError(f"--domain-map {spec}: expected a JSON object main_category -> domain")
    else:
        mapping = {}
        for pair in spec.split(";"):
            if not pair.strip():
                continue
            category, sep, domain = pair.rpartition("=")
            if not sep or not category.strip():
                raise CatalogError(f"--domain-map: {pair!r} is not 'Main Category=domain'")
            if "=" in category:  # "A=beauty,B=fashion": pairs are separated by ";" (categories hold commas)
                raise CatalogError(f"--domain-map: {pair!r} holds two '='; separate pairs with ';', e.g. "
                                   "'All Beauty=beauty;AMAZON FASHION=fashion'")
            mapping[category.strip()] = domain.strip()
    for category, domain in mapping.items():
        if domain not in DOMAINS:
            raise CatalogError(f"--domain-map: {category!r} -> {domain!r}; domains are {', '.join(DOMAINS)}")
    return mapping


def why_domain_is_empty(domain: str, domain_map: Mapping[str, str], main_categories: Mapping[str, int]) -> str:
    """Why no conversation of ``domain`` reached the dataset, as far as the catalog tells: the domain map's
    ``main_category`` names for it that no linked product has, with the linked products' unmapped categories (and
    the likeliest one meant: "Amazon Fashion" is no "AMAZON FASHION"). ``main_categories`` counts the linked
    products' metadata rows by ``main_category`` (:class:`CatalogReport`)."""
    names = [name for name, mapped in domain_map.items() if mapped == domain]
    if not names:
        return "the domain map maps no main_category to it (--domain-map)"
    if any(main_categories.get(name) for name in names):
        return "the funnel above says which stage dropped its conversations"
    unmapped = {category: n for category, n in main_categories.items() if category not in domain_map}
    if not main_categories:
        return (f"no linked product has metadata in the --meta files, so none has main_category "
                f"{_quoted(names)}: do they hold the categories of the domains (e.g. meta_All_Beauty, "
                "meta_Amazon_Fashion, meta_Home_and_Kitchen)?")
    seen = ", ".join(f"{category or '(empty)'!r} ({n:,})" for category, n in list(unmapped.items())[:8])
    guess = _likeliest(names, unmapped)
    return (f"no linked product has main_category {_quoted(names)} (the domain map's name for it)"
            + (f"; the linked products' main categories outside the map are {seen}" if seen else "")
            + (f": did you mean {guess!r}? (--domain-map)" if guess else
               ": do the --meta files hold the metadata of this domain's products?"))


def _quoted(names: Iterable[str]) -> str:
    return " or ".join(repr(name) for name in names)


def _likeliest(names: Iterable[str], categories: Mapping[str, int]) -> str | None:
    import difflib

    by_folded = {category.casefold(): category for category in categories if category}
    for name in names:
        close = difflib.get_close_matches(name.casefold(), list(by_folded), n=1, cutoff=0.75)
        if close:
            return by_folded[close[0]]
    return None


# --------------------------------------------------------------------------------------------
# Reading sources
# --------------------------------------------------------------------------------------------


@dataclass
class ReadReport:
    """Lines read and skipped while streaming a catalog source; ``examples`` name file:line."""

    lines: int = 0
    bad_lines: int = 0
    examples: list[str] = field(default_factory=list)

    def bad(self, where: str, reason: str) -> None:
        self.bad_lines += 1
        if len(self.examples) < _BAD_LINE_EXAMPLES:
            self.examples.append(f"{where}: {reason}")

    def as_dict(self) -> dict[str, Any]:
        return {"lines": self.lines, "bad_lines": self.bad_lines, "bad_line_examples": list(self.examples)}


def expand_sources(specs: Iterable[str | Path], pattern: str) -> list[str]:
    """Files named directly, files matching ``pattern`` inside named folders, and ``hub:`` specs."""
    sources: list[str] = []
    for spec in specs:
        spec = str(spec)
        if spec.startswith(HUB_PREFIX):
            sources.append(spec)
            continue
        path = Path(spec)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and re.fullmatch(pattern, p.name))
            if not found:
                raise CatalogError(f"{path}: no file matching {pattern}")
            sources.extend(str(p) for p in found)
        elif path.is_file():
            sources.append(str(path))
        else:
            raise CatalogError(f"{path}: no such file or folder")
    return sources


#: A JSON Lines file as read here, plain or compressed (the reader goes by its first bytes, not by this suffix).
JSONL_FILE_SUFFIX = r"\.jsonl(\.gz|\.zst|\.xz|\.bz2)?"
META_FILE_PATTERN = r"meta_.+" + JSONL_FILE_SUFFIX
REVIEW_FILE_PATTERN = r"(?!meta_).+" + JSONL_FILE_SUFFIX


def _open_lines(path: str) -> Iterator[bytes]:
    """The file's lines, decompressed as its first bytes say and without a leading byte-order mark, with a
    progress bar over the bytes read (Home_and_Kitchen's reviews take minutes)."""
    read = ReadProgress()
    try:
        with tqdm(total=os.path.getsize(path), unit="B", unit_scale=True, leave=False, desc=Path(path).name,
                  **bar_options()) as progress:
            for number, line in enumerate(iter_lines(iter_chunks(Path(path), read), keep_empty=True)):
                yield line
                if number % 8192 == 0:
                    progress.update(read.compressed_bytes - progress.n)
            progress.update(read.compressed_bytes - progress.n)
    except (DumpReadError, OSError) as error:
        raise _unreadable(path, error) from error


def _unreadable(path: str, error: DumpReadError | OSError) -> CatalogError:
    if isinstance(error, DumpReadError):  # truncated or corrupt archive, or no archive under a zstd name
        return CatalogError(f"{path}: cannot read it to the end: {error.detail}")
    return CatalogError(f"{path}: cannot read ({error})")


def iter_json_records(source: str, report: ReadReport, expected: str | None = None
                      ) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """``(where, record)`` for each JSON object of a file or Hub dataset; bad lines go to ``report``. With
    ``expected`` (``meta`` or ``reviews``), a source whose first line shows another kind of file is refused
    (:func:`check_file_kind`)."""
    if source.startswith(HUB_PREFIX):
        yield from _iter_hub_records(source, report, expected)
        return
    if expected:
        check_file_kind(source, expected)
    for number, line in enumerate(_open_lines(source), start=1):
        if not line.strip():
            continue
        report.lines += 1
        where = f"{source}:{number}"
        if isinstance(line, CutLine):
            report.bad(where, too_long_reason(line.length))
            continue
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError as error:
            report.bad(where, f"not JSON ({error})")
            continue
        if not isinstance(record, dict):
            report.bad(where, f"expected a JSON object, got {type(record).__name__}")
            continue
        yield where, record


@dataclass(frozen=True)
class HubSource:
    repo: str
    file: str | None = None  # a file inside the repo
    config: str | None = None  # or a datasets config + split
    split: str = "full"


_UPSTREAM_CONFIG = re.compile(r"raw_(meta|review)_(\w+)")


def parse_hub_spec(spec: str) -> HubSource:
    parts = spec[len(HUB_PREFIX):].split(":")
    if len(parts) not in (2, 3) or not all(parts):
        raise CatalogError(f"{spec!r} is not hub:<repo>:<file.jsonl | config>[:<split>]")
    repo, what = parts[0], parts[1]
    if re.search(JSONL_FILE_SUFFIX + "$", what):
        return HubSource(repo=repo, file=what)
    upstream = _UPSTREAM_CONFIG.fullmatch(what)
    if repo == DEFAULT_HUB_REPO and upstream:
        kind, category = upstream.groups()
        file = (f"raw/meta_categories/meta_{category}.jsonl" if kind == "meta"
                else f"raw/review_categories/{category}.jsonl")
        return HubSource(repo=repo, file=file)
    return HubSource(repo=repo, config=what, split=parts[2] if len(parts) == 3 else "full")


def hub_file(source: HubSource) -> str:
    """Local path of a Hub file (downloaded once into the Hugging Face cache; token from HF_TOKEN)."""
    local = Path(source.repo) / str(source.file)
    if Path(source.repo).is_dir():
        if not local.is_file():
            raise CatalogError(f"{local}: no such file")
        return str(local)
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(source.repo, str(source.file), repo_type="dataset")
    except Exception as error:  # offline, missing repo or file, auth: all worth one clear message
        raise CatalogError(f"hub:{source.repo}:{source.file}: cannot download ({type(error).__name__}: {error})") \
            from error


def _iter_hub_records(spec: str, report: ReadReport, expected: str | None
                      ) -> Iterator[tuple[str, Mapping[str, Any]]]:
    source = parse_hub_spec(spec)
    if source.file is not None:
        yield from iter_json_records(hub_file(source), report, expected)
        return
    import datasets

    try:
        dataset = datasets.load_dataset(source.repo, source.config, split=source.split, streaming=True)
    except Exception as error:  # datasets raises many types for a missing repo/config
        raise CatalogError(f"{spec}: cannot open ({type(error).__name__}: {error})") from error
    for index, record in enumerate(dataset):
        if index == 0 and expected:
            kind = kind_of_record(record)
            if kind is not None and kind.kind != expected:
                raise CatalogError(_wrong_kind_message(spec, expected, kind))
        report.lines += 1
        yield f"{spec}[{index}]", record


# --------------------------------------------------------------------------------------------
# What kind of file a source is: files of the wrong kind are refused before they are read
# --------------------------------------------------------------------------------------------

#: The flag that takes each kind of Amazon Reviews 2023 file.
CATALOG_FLAGS = {"meta": "--meta", "reviews": "--reviews"}
_AMAZON_2023 = ("Amazon Reviews 2023 (McAuley-Lab/Amazon-Reviews-2023: meta_<Category>.jsonl and "
                "<Category>.jsonl, keyed by parent_asin)")


@dataclass(frozen=True)
class FileKind:
    """What the first line of a file looks like: ``kind`` is ``meta`` or ``reviews`` for the files this stage
    reads, or another input's; ``fields`` are the fields that told it."""

    kind: str
    looks_like: str
    fields: tuple[str, ...]
    remedy: str


def _present(record: Mapping[str, Any], names: Iterable[str]) -> tuple[str, ...]:
    return tuple(name for name in names if name in record)


def kind_of_record(record: Mapping[str, Any]) -> FileKind | None:
    """The kind of file whose first row is ``record``; ``None`` when its fields do not tell."""
    if "parent_asin" in record:
        review_fields = _present(record, ("rating", "text", "user_id", "verified_purchase", "helpful_vote"))
        if "asin" in record and review_fields:
            return FileKind("reviews", "an Amazon Reviews 2023 REVIEW file", ("asin", "parent_asin", *review_fields),
                            "give it with --reviews")
        meta_fields = _present(record, ("main_category", "average_rating", "rating_number", "features", "details"))
        if "asin" not in record and meta_fields:
            return FileKind("meta", "an Amazon Reviews 2023 METADATA file", ("parent_asin", *meta_fields),
                            "give it with --meta")
        return None
    old_reviews = _present(record, ("reviewerID", "overall", "reviewText", "unixReviewTime"))
    if old_reviews:
        return FileKind("amazon-2018-reviews", "an Amazon review file of 2018 or 2014 (McAuley UCSD), "
                        "without parent_asin", old_reviews, f"this build reads {_AMAZON_2023}")
    old_meta = _present(record, ("main_cat", "imageURLHighRes", "imageURL", "imUrl", "salesRank", "also_buy",
                                 "also_view", "related"))
    if "asin" in record and old_meta:
        return FileKind("amazon-2018-meta", "Amazon metadata of 2018 or 2014 (McAuley UCSD), without parent_asin",
                        ("asin", *old_meta), f"this build reads {_AMAZON_2023}")
    reddit_fields = _present(record, ("subreddit", "link_id", "parent_id", "body", "selftext"))
    if "subreddit" in record and len(reddit_fields) > 1:
        return FileKind("reddit", "a Reddit dump", reddit_fields, "give it with --inputs")
    return None


def kind_of_line(line: bytes) -> FileKind | None:
    """The kind of file whose first line is ``line``: a JSON object, or the Python-literal rows
    (``{'asin': ...}``) of Amazon's 2014 files; ``None`` when it does not tell."""
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        record = _python_literal(line)
        if record is None:
            return None
        kind = kind_of_record(record)
        looks_like = kind.looks_like if kind else "a file"
        return FileKind("python-literal", f"{looks_like}, in Python-literal lines ({{'asin': ...}}: the 2014 "
                        "format, not JSON)", kind.fields if kind else tuple(record)[:5],
                        f"this build reads JSON Lines of {_AMAZON_2023}")
    return kind_of_record(record) if isinstance(record, dict) else None


def _python_literal(line: bytes) -> dict[str, Any] | None:
    import ast

    text = line.decode("utf-8", errors="replace").strip()
    if not text.startswith("{'"):
        return None
    try:
        value = ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):  # TypeError: an unhashable key
        return None
    return value if isinstance(value, dict) else None


def _first_line(path: str) -> bytes | None:
    """The first non-empty line of a local file (decompressed), ``None`` when it has none; a file that cannot be read
    up to it is refused as its reading in the stage would refuse it (a zstd name over plain text, a cut archive)."""
    try:
        for line in iter_lines(iter_chunks(Path(path))):
            return None if isinstance(line, CutLine) else line
    except (DumpReadError, OSError) as error:
        raise _unreadable(path, error) from error
    return None


def check_file_kind(path: str, expected: str) -> None:
    """Raise :class:`CatalogError` when the first line of ``path`` shows a file of another
    kind than ``expected`` (``meta`` or ``reviews``): its rows would all be skipped, or taken for the wrong ones."""
    line = _first_line(path)
    kind = kind_of_line(line) if line is not None else None
    if kind is None or kind.kind == expected:
        return
    raise CatalogError(_wrong_kind_message(path, expected, kind))


def _wrong_kind_message(source: str, expected: str, kind: FileKind) -> str:
    return (f"{source} (given with {CATALOG_FLAGS[expected]}) looks like {kind.looks_like} "
            f"(fields {', '.join(kind.fields)}): {kind.remedy}")


def check_catalog_sources(meta: Iterable[str], reviews: Iterable[str]) -> None:
    """The local files of ``--meta`` and ``--reviews`` exist and are of their flag's kind (Hub sources are checked
    when they are read): checked before the Reddit stage, which takes hours on real dumps."""
    for expected, specs, pattern in (("meta", meta, META_FILE_PATTERN), ("reviews", reviews, REVIEW_FILE_PATTERN)):
        for source in expand_sources(specs, pattern):
            if not source.startswith(HUB_PREFIX):
                check_file_kind(source, expected)


# --------------------------------------------------------------------------------------------
# child ASIN -> parent ASIN from review rows
# --------------------------------------------------------------------------------------------

@dataclass
class ParentMap:
    """``asin -> parent_asin`` for the wanted ASINs only, with conflicts counted."""

    parents: dict[str, str] = field(default_factory=dict)
    conflicts: Counter = field(default_factory=Counter)  # asin -> rows naming another parent
    report: ReadReport = field(default_factory=ReadReport)


def read_parent_map(sources: Iterable[str], wanted: set[str]) -> ParentMap:
    """Stream review rows and keep ``asin -> parent_asin`` for ``wanted`` ASINs (first parent wins).

    Memory holds only the wanted mappings (``benchmarks/catalog_parent_map.py`` measures it). Every
    line is parsed with orjson so that every bad line is counted, wanted or not; parsing is most of
    the scan's time (a byte-regex prefilter skipping unwanted rows would be faster, but would stop
    counting the bad lines among them).
    """
    result = ParentMap()
    for source in sources:
        for where, row in iter_json_records(source, result.report, "reviews"):
            _note_parent(result, where, row, wanted)
    return result


def _note_parent(result: ParentMap, where: str, row: Mapping[str, Any], wanted: set[str]) -> None:
    asin, parent = row.get("asin"), row.get("parent_asin")
    if not is_asin(asin) or not is_asin(parent):
        result.report.bad(where, "review row without a valid asin and parent_asin")
        return
    if asin not in wanted:
        return
    known = result.parents.setdefault(asin, parent)
    if known != parent:
        result.conflicts[asin] += 1


# --------------------------------------------------------------------------------------------
# Metadata -> Item
# --------------------------------------------------------------------------------------------


def image_urls(images: Any) -> list[str]:
    """Largest URL of each image, the ``MAIN`` variant first.

    Accepts the raw files' list of ``{hi_res, large, thumb, variant}`` and the Hub's columnar
    ``{hi_res: [...], large: [...], ...}``.
    """
    if isinstance(images, Mapping):
        length = max((len(v) for v in images.values() if isinstance(v, list)), default=0)
        images = [{key: values[i] for key, values in images.items() if isinstance(values, list) and i < len(values)}
                  for i in range(length)]
    if not isinstance(images, list):
        return []
    main: list[str] = []
    others: list[str] = []
    for image in images:
        if not isinstance(image, Mapping):
            continue
        url = next((image[k] for k in IMAGE_SIZE_KEYS if isinstance(image.get(k), str) and image[k]), None)
        if url is None:
            continue
        (main if str(image.get("variant", "")).upper() == "MAIN" else others).append(url)
    return list(dict.fromkeys(main + others))


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value] if value.strip() else []
    if isinstance(value, list):
        return [str(v) for v in value if isinstance(v, (str, int, float)) and str(v).strip()]
    return []


def _details_text(details: Any) -> str:
    if isinstance(details, str):  # the Hub copy stores details as a JSON string
        try:
            details = json.loads(details) if details.strip() else {}
        except (json.JSONDecodeError, RecursionError):  # kept as text, as the record gave it
            return details
    if not isinstance(details, Mapping) or not details:
        return ""
    return json.dumps(details, ensure_ascii=False, sort_keys=True)


def item_from_metadata(record: Mapping[str, Any], domain: str) -> Item:
    parent = record["parent_asin"]
    return Item(
        item_id=parent,
        domain=domain,
        parent_asin=parent,
        title=str(record.get("title") or ""),
        store=str(record.get("store") or ""),
        main_category=str(record.get("main_category") or ""),
        categories=_strings(record.get("categories")),
        features=_strings(record.get("features")),
        description="\n".join(_strings(record.get("description"))),
        details=_details_text(record.get("details")),
        image_urls=image_urls(record.get("images")),
    )


@dataclass
class Metadata:
    """Metadata rows of the wanted parent ASINs (first row wins), by parent ASIN."""

    records: dict[str, Mapping[str, Any]] = field(default_factory=dict)
    duplicates: int = 0
    report: ReadReport = field(default_factory=ReadReport)


def read_metadata(sources: Iterable[str], wanted: set[str]) -> Metadata:
    result = Metadata()
    for source in sources:
        for where, record in iter_json_records(source, result.report, "meta"):
            parent = record.get("parent_asin")
            if not is_asin(parent):
                result.report.bad(where, f"parent_asin {parent!r:.40} is not an ASIN")
                continue
            if parent not in wanted:
                continue
            if parent in result.records:
                result.duplicates += 1
                continue
            result.records[parent] = record
    return result


# --------------------------------------------------------------------------------------------
# Resolving linked ASINs
# --------------------------------------------------------------------------------------------

#: Why a linked ASIN did not become an item of the dataset.
UNKNOWN_ASIN = "asin_not_in_reviews_or_metadata"
PARENT_WITHOUT_METADATA = "parent_asin_without_metadata"
OUTSIDE_DOMAINS = "main_category_outside_domains"
#: The other outcomes the join counts (``build_reports.catalog.gt_links`` / ``context_links``).
RESOLVED = "resolved"
OTHER_DOMAIN = "other_domain"
#: What each outcome means, for the dataset card.
LINK_OUTCOMES = {
    RESOLVED: "kept: an item of the record's domain (gt) or of the dataset (context)",
    UNKNOWN_ASIN: "dropped: the ASIN is in neither the reviews (child → parent ASIN) nor the metadata",
    PARENT_WITHOUT_METADATA: "dropped: its parent ASIN has no metadata row",
    OUTSIDE_DOMAINS: "dropped: its `main_category` is not in the domain map (beauty, fashion, home)",
    OTHER_DOMAIN: "removed from `gt_items`: an item of another domain than most of the record's gt items",
}


@dataclass
class Catalog:
    """The joined catalog: resolves a linked ASIN to an :class:`Item` or a reason it cannot."""

    parents: dict[str, str]
    metadata: dict[str, Mapping[str, Any]]
    domain_map: dict[str, str]

    def parent_of(self, asin: str) -> str | None:
        if asin in self.metadata:
            return asin
        return self.parents.get(asin)

    def resolve(self, asin: str) -> tuple[Item | None, str]:
        """``(item, "")`` or ``(None, reason)`` for a linked (possibly child) ASIN."""
        parent = self.parent_of(asin)
        if parent is None:
            return None, UNKNOWN_ASIN
        record = self.metadata.get(parent)
        if record is None:
            return None, PARENT_WITHOUT_METADATA
        domain = self.domain_map.get(str(record.get("main_category") or ""))
        if domain is None:
            return None, OUTSIDE_DOMAINS
        return item_from_metadata(record, domain), ""


@dataclass
class CatalogReport:
    """What reading the catalog saw, for the manifest."""

    meta: dict[str, Any]
    reviews: dict[str, Any]
    wanted_asins: int
    mapped_by_reviews: int
    parent_conflicts: int
    duplicate_metadata_rows: int
    #: main_category of the linked products' metadata rows, mapped or not: what --domain-map should cover
    main_categories: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def load_catalog(meta_sources: Iterable[str], review_sources: Iterable[str], wanted: set[str],
                 domain_map: Mapping[str, str]) -> tuple[Catalog, CatalogReport]:
    """Two bounded passes: reviews (child -> parent for ``wanted``), then metadata of the parents."""
    parent_map = read_parent_map(review_sources, wanted)
    wanted_parents = set(wanted) | set(parent_map.parents.values())
    metadata = read_metadata(meta_sources, wanted_parents)
    catalog = Catalog(parents=parent_map.parents, metadata=metadata.records, domain_map=dict(domain_map))
    report = CatalogReport(
        meta=metadata.report.as_dict(),
        reviews=parent_map.report.as_dict(),
        wanted_asins=len(wanted),
        mapped_by_reviews=sum(1 for a, p in parent_map.parents.items() if a != p),
        parent_conflicts=len(parent_map.conflicts),
        duplicate_metadata_rows=metadata.duplicates,
        main_categories=dict(Counter(str(r.get("main_category") or "") for r in metadata.records.values())
                             .most_common()),
    )
    return catalog, report


# --------------------------------------------------------------------------------------------
# Joining candidate conversations with the catalog
# --------------------------------------------------------------------------------------------

#: Record-level reasons for dropping a conversation at the catalog stage.
NO_GT_ITEM_IN_CATALOG = "no_gt_item_in_catalog"
NO_GT_ITEM_IN_DOMAINS = "gt_items_outside_domains"


@dataclass
class JoinResult:
    """Conversations with parent ASINs and a domain, the items they reference, and the counts."""

    conversations: list[Any]  # schema.Conversation with domain set
    items: dict[str, Item]  # by parent ASIN
    dropped: Counter = field(default_factory=Counter)  # record-level reasons
    gt_links: Counter = field(default_factory=Counter)  # item-level: resolved / reasons
    context_links: Counter = field(default_factory=Counter)
    child_to_parent: int = 0  # linked ASINs that were child ASINs mapped to a different parent


def join_conversations(conversations: Iterable[Any], catalog: Catalog) -> JoinResult:
    """Map linked ASINs to parent ASINs and give each conversation the domain of its gt items.

    A conversation whose gt items span several domains goes to the domain most of them share
    (ties: the domain of the first gt item); gt items of other domains are removed from it and
    counted as ``other_domain``. Unknown ASINs are never guessed: they are removed and counted,
    and a conversation left without gt items is dropped with the reason.
    """
    result = JoinResult(conversations=[], items={})
    resolved_cache: dict[str, tuple[Item | None, str]] = {}

    def resolve(asin: str) -> tuple[Item | None, str]:
        if asin not in resolved_cache:
            resolved_cache[asin] = catalog.resolve(asin)
            item = resolved_cache[asin][0]
            if item is not None and item.item_id != asin:
                result.child_to_parent += 1
        return resolved_cache[asin]

    for conversation in conversations:
        gt: list[Item] = []
        reasons: list[str] = []
        for asin in dict.fromkeys(conversation.gt_items):
            item, reason = resolve(asin)
            if item is None:
                reasons.append(reason)
                result.gt_links[reason] += 1
            elif all(item.item_id != g.item_id for g in gt):
                gt.append(item)
        if not gt:
            only_outside = bool(reasons) and all(r == OUTSIDE_DOMAINS for r in reasons)
            result.dropped[NO_GT_ITEM_IN_DOMAINS if only_outside else NO_GT_ITEM_IN_CATALOG] += 1
            continue
        votes = Counter(item.domain for item in gt)
        domain = max(votes, key=lambda d: (votes[d], -[i.domain for i in gt].index(d)))
        kept = [item for item in gt if item.domain == domain]
        result.gt_links[RESOLVED] += len(kept)
        result.gt_links[OTHER_DOMAIN] += len(gt) - len(kept)
        context: list[Item] = []
        for asin in dict.fromkeys(conversation.context_items):
            item, reason = resolve(asin)
            result.context_links[reason or RESOLVED] += 1
            if item is not None and all(item.item_id != c.item_id for c in context):
                context.append(item)
        for item in [*kept, *context]:
            result.items.setdefault(item.item_id, item)
        conversation.domain = domain
        conversation.gt_items = [item.item_id for item in kept]
        conversation.context_items = [item.item_id for item in context]
        result.conversations.append(conversation)
    return result
