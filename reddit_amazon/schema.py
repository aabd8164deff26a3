"""The one place the dataset's fields are declared.

Every other module (build, importer, benchmark, reference model, cards) reads records through the
dataclasses and ``datasets.Features`` below. A field is added here or nowhere.

Two record kinds:

* :class:`Conversation` -- one Reddit thread up to a comment that recommends Amazon products.
  Configs ``beauty``, ``fashion``, ``home``; splits ``train``, ``validation``, ``test``.
* :class:`Item` -- one Amazon product (keyed by ASIN). Config ``items``; one split per domain.

A conversation with several recommended items stays one record (``gt_items`` is a list); the
evaluation counts it once per gt item, as the paper does.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeGuard

if TYPE_CHECKING:
    from datasets import Features

# `datasets` is imported where Features are built or records validated, not here: the CLIs import
# this module for its constants and must start fast.

DOMAINS: tuple[str, ...] = ("beauty", "fashion", "home")
#: A dataset version: MAJOR.MINOR.PATCH with optional pre-release and build parts.
SEMVER = re.compile(r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?")
SPLITS: tuple[str, ...] = ("train", "validation", "test")
ITEMS_CONFIG = "items"
TURN_KINDS: tuple[str, ...] = ("submission", "comment")

#: Candidate sets every dataset declares a column for. A column may be empty for a record when
#: that retriever was not run for the dataset (the manifest lists the sets that were computed).
#: Further retrievers add ``candidates_<name>`` columns.
REQUIRED_CANDIDATE_SETS: tuple[str, ...] = ("sbert", "openai_large")
CANDIDATE_PREFIX = "candidates_"
NUM_CANDIDATES = 10

ASIN_PATTERN = re.compile(r"[A-Z0-9]{10}")

SUBMISSION_OPEN, SUBMISSION_CLOSE = "<submission>", "</submission>"
COMMENT_OPEN, COMMENT_CLOSE = "<comment>", "</comment>"

#: What a deleted or removed Reddit text is rendered as. The raw markers ("[deleted]",
#: "[removed]") are never shown as if someone had written them.
DELETED_TEXT = "[deleted]"
REMOVED_TEXT = "[removed]"


class SchemaError(ValueError):
    """A record does not follow the schema. The message names where the record came from."""


def candidate_column(name: str) -> str:
    """``"sbert"`` -> ``"candidates_sbert"``."""
    if not re.fullmatch(r"[a-z0-9_]+", name):
        raise SchemaError(f"candidate set name {name!r} must be lower-case letters, digits or '_'")
    return CANDIDATE_PREFIX + name


def candidate_sets_of(column_names: Iterable[str]) -> list[str]:
    """Names of the candidate sets present as columns, in column order."""
    return [c[len(CANDIDATE_PREFIX):] for c in column_names if c.startswith(CANDIDATE_PREFIX)]


def is_asin(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and ASIN_PATTERN.fullmatch(value) is not None


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Turn:
    """One utterance of a thread, oldest first. ``author`` is pseudonymised (salted hash) or ""."""

    kind: Literal["submission", "comment"]
    text: str
    author: str = ""
    created_utc: int | None = None
    id: str = ""  # Reddit id without the t1_/t3_ prefix; "" when unknown (imported records)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Turn:
        """From one element of a record's ``turns`` (validated with the record)."""
        return cls(kind=row["kind"], text=row["text"], author=row["author"], created_utc=row["created_utc"],
                   id=row["id"])


@dataclass
class Conversation:
    example_id: str
    domain: str
    thread_id: str
    subreddit: str
    created_utc: int | None
    turns: list[Turn]
    context_items: list[str]
    gt_text: str
    gt_items: list[str]
    gt_comment_id: str = ""
    candidates: dict[str, list[str]] = field(default_factory=dict)

    @property
    def context(self) -> str:
        return render_context(self.turns)

    def to_row(self) -> dict[str, Any]:
        row: dict[str, Any] = {
            "example_id": self.example_id,
            "domain": self.domain,
            "thread_id": self.thread_id,
            "subreddit": self.subreddit,
            "created_utc": self.created_utc,
            "turns": [
                {"kind": t.kind, "id": t.id, "author": t.author, "text": t.text, "created_utc": t.created_utc}
                for t in self.turns
            ],
            "context": self.context,
            "context_items": list(self.context_items),
            "gt_comment_id": self.gt_comment_id,
            "gt_text": self.gt_text,
            "gt_items": list(self.gt_items),
        }
        for name in REQUIRED_CANDIDATE_SETS:
            row[candidate_column(name)] = list(self.candidates.get(name, []))
        for name, ids in self.candidates.items():
            row[candidate_column(name)] = list(ids)
        return row

    @classmethod
    def from_row(cls, row: Mapping[str, Any], *, where: str = "record", require_domain: bool = True) -> Conversation:
        validate_conversation_row(row, where=where, require_domain=require_domain)
        turns = [Turn.from_row(t) for t in row["turns"]]
        return cls(
            example_id=row["example_id"],
            domain=row["domain"],
            thread_id=row["thread_id"],
            subreddit=row["subreddit"],
            created_utc=row["created_utc"],
            turns=turns,
            context_items=list(row["context_items"]),
            gt_text=row["gt_text"],
            gt_items=list(row["gt_items"]),
            gt_comment_id=row["gt_comment_id"],
            candidates={name: list(row[candidate_column(name)]) for name in candidate_sets_of(row)
                        if row[candidate_column(name)]},  # an empty column: that set was not computed
        )


@dataclass
class Item:
    item_id: str  # the ASIN the conversations use
    domain: str
    parent_asin: str = ""
    title: str = ""
    store: str = ""
    main_category: str = ""
    categories: list[str] = field(default_factory=list)
    features: list[str] = field(default_factory=list)
    description: str = ""
    details: str = ""  # JSON object as text (Amazon's "details" dict varies by category)
    image_urls: list[str] = field(default_factory=list)  # main image first
    #: Encoded main image (JPEG/PNG), embedded in Parquet; or the file holding it, read only when the
    #: row is written, so a build never holds every image of a catalog in memory.
    image: bytes | Path | None = None
    image_description: str = ""
    image_error: str = ""  # why no usable image, when image is None

    def to_row(self) -> dict[str, Any]:
        row = {f.name: getattr(self, f.name) for f in fields(self)}  # in field order, as ITEM_FEATURES lists them
        row["categories"] = list(self.categories)
        row["features"] = list(self.features)
        row["image_urls"] = list(self.image_urls)
        image = self.encoded_image()
        row["image"] = None if image is None else {"bytes": image, "path": f"{self.item_id}.jpg"}
        return row

    def encoded_image(self) -> bytes | None:
        """The encoded main image, read from its file where the item holds that instead."""
        return self.image.read_bytes() if isinstance(self.image, Path) else self.image

    @classmethod
    def from_row(cls, row: Mapping[str, Any], *, where: str = "record") -> Item:
        """From a Parquet/JSON row, or a row of ``load_dataset`` (whose image is decoded to PIL, and then encoded
        again: a JPEG's pixels change; ``dataset_folder.iter_items`` keeps the embedded bytes)."""
        image = row.get("image")
        if image is not None and not isinstance(image, Mapping):
            row = {**row, "image": {"bytes": _encode_pil(image), "path": f"{row.get('item_id')}.jpg"}}
        validate_item_row(row, where=where)
        values = {f.name: row[f.name] for f in fields(cls) if f.name != "image"}
        return cls(**values, image=None if row["image"] is None else row["image"]["bytes"])


def _encode_pil(image: Any) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format=image.format or "PNG")
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------
# The context string of the paper: derived from turns by exactly one function
# --------------------------------------------------------------------------------------------


def render_context(turns: Iterable[Turn]) -> str:
    """``<submission>…</submission>\\n<comment>…</comment>\\n…`` in thread order (the paper's format)."""
    parts = []
    for turn in turns:
        if turn.kind == "submission":
            parts.append(f"{SUBMISSION_OPEN}{turn.text}{SUBMISSION_CLOSE}\n")
        else:
            parts.append(f"{COMMENT_OPEN}{turn.text}{COMMENT_CLOSE}\n")
    return "".join(parts)


def parse_context(context: str) -> list[Turn]:
    """Inverse of :func:`render_context`. Raises :class:`SchemaError` unless the round trip is exact.

    One scan from tag to tag, in time linear in the context (a regular expression with nested lazy
    repeats took exponential time on a malformed context of a few dozen comments).
    """
    turns: list[Turn] = []
    position = 0
    kind: Literal["submission", "comment"] = "submission"
    opening, closing = SUBMISSION_OPEN, SUBMISSION_CLOSE + "\n"
    while True:
        end = context.find(closing, position + len(opening)) if context.startswith(opening, position) else -1
        if end < 0:
            raise SchemaError("context is not '<submission>…</submission>\\n' followed by "
                              "'<comment>…</comment>\\n' turns")
        turns.append(Turn(kind=kind, text=context[position + len(opening):end]))
        position = end + len(closing)
        if position == len(context):
            break
        kind, opening, closing = "comment", COMMENT_OPEN, COMMENT_CLOSE + "\n"
    if render_context(turns) != context:
        raise SchemaError("context does not re-render identically (a turn contains a tag-like string)")
    return turns


# --------------------------------------------------------------------------------------------
# datasets.Features: what Parquet shards and the dataset card declare
# --------------------------------------------------------------------------------------------

def conversation_features(candidate_sets: Iterable[str] = ()) -> Features:
    from datasets import Features, List, Value

    names = list(dict.fromkeys([*REQUIRED_CANDIDATE_SETS, *candidate_sets]))
    turn = {
        "kind": Value("string"),
        "id": Value("string"),
        "author": Value("string"),
        "text": Value("string"),
        "created_utc": Value("int64"),
    }
    spec: dict[str, Any] = {
        "example_id": Value("string"),
        "domain": Value("string"),
        "thread_id": Value("string"),
        "subreddit": Value("string"),
        "created_utc": Value("int64"),
        "turns": List(turn),
        "context": Value("string"),
        "context_items": List(Value("string")),
        "gt_comment_id": Value("string"),
        "gt_text": Value("string"),
        "gt_items": List(Value("string")),
    }
    for name in names:
        spec[candidate_column(name)] = List(Value("string"))
    return Features(spec)


@functools.cache
def item_features() -> Features:
    """Features of the ``items`` config, in :class:`Item` field order (also ``schema.ITEM_FEATURES``)."""
    from datasets import Features, Image, List, Value

    return Features(
        {
            "item_id": Value("string"),
            "domain": Value("string"),
            "parent_asin": Value("string"),
            "title": Value("string"),
            "store": Value("string"),
            "main_category": Value("string"),
            "categories": List(Value("string")),
            "features": List(Value("string")),
            "description": Value("string"),
            "details": Value("string"),
            "image_urls": List(Value("string")),
            "image": Image(),
            "image_description": Value("string"),
            "image_error": Value("string"),
        }
    )


def __getattr__(name: str) -> Any:  # ITEM_FEATURES is built on first use (it needs `datasets`)
    if name == "ITEM_FEATURES":
        return item_features()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: Human-readable meaning of each field: used by the README schema table and the dataset card.
FIELD_DOCS: dict[str, str] = {
    "example_id": "unique id of the record",
    "domain": "beauty, fashion or home (a conversation takes the domain of the item it recommends)",
    "thread_id": "Reddit submission id of the thread (splits never share a thread)",
    "subreddit": "subreddit of the thread",
    "created_utc": "Unix time of the recommending comment (null where the dump line has no usable time)",
    "turns": "the thread up to the recommendation: list of {kind: submission|comment, id, author "
    "(salted hash), text, created_utc (null where unknown)}",
    "context": "the paper's rendering of `turns`: `<submission>…</submission>\\n<comment>…</comment>\\n…`",
    "context_items": "ASINs linked in earlier turns (in a build, one may be an item of another domain, found in "
    "that domain's `items` split)",
    "gt_comment_id": "Reddit id of the recommending comment",
    "gt_text": "text of the recommending comment",
    "gt_items": "recommended ASINs (each is one evaluation example)",
    "candidates_<name>": "10 candidate ASINs retrieved by retriever <name> (sbert, openai_large, bm25, …)",
    "item_id": "ASIN used in the conversations",
    "parent_asin": "Amazon Reviews 2023 parent ASIN the metadata is keyed by",
    "title": "product title",
    "store": "brand / store name",
    "main_category": "Amazon Reviews 2023 main_category",
    "categories": "category path",
    "features": "bullet-point features",
    "description": "product description (paragraphs joined by newlines)",
    "details": "Amazon's details dict as JSON text",
    "image_urls": "image URLs, main image first",
    "image": "main image, embedded (datasets.Image)",
    "image_description": "visually grounded description of the image (the paper's Table 10 prompt)",
    "image_error": "why the item has no usable image ('' when it has one)",
}
#: Meanings of the ``items`` config's fields where a field of the same name means another thing in a conversation.
ITEM_FIELD_DOCS: dict[str, str] = {
    "domain": "beauty, fashion or home: where the item's `main_category` maps (`--domain-map`)",
}


# --------------------------------------------------------------------------------------------
# Validation: every reader calls these; errors name the source
# --------------------------------------------------------------------------------------------

_TYPES = {"string": str, "int64": int}
ANY = object()  # a field that must be present, checked by its own rule


def _check_value(value: Any, feature: Any, where: str) -> None:
    """Check ``value`` against a feature spec; integers may be null (unknown, e.g. imported times).

    Every record read or written goes through here (a build validates each conversation about three times):
    the error label and each element's path are only spelt out on the way to an error."""
    from datasets import List, Value

    _check(value, feature, where, "", List, Value)


def _check(value: Any, feature: Any, where: str, path: Any, List: Any, Value: Any) -> None:
    if feature is ANY:
        return
    if isinstance(feature, Value):
        expected = _TYPES[feature.dtype]
        if value is None and expected is int:
            return
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise SchemaError(f"{_label(where, path)} must be {feature.dtype}, got {type(value).__name__} "
                              f"{value!r:.60}")
    elif isinstance(feature, List):
        if not isinstance(value, list):
            raise SchemaError(f"{_label(where, path)} must be a list, got {type(value).__name__}")
        element_feature = feature.feature
        if (isinstance(element_feature, Value) and element_feature.dtype == "string"  # most lists: no recursion
                and all(type(element) is str for element in value)):
            return
        for i, element in enumerate(value):
            _check(element, element_feature, where, (path, i), List, Value)
    else:  # a dict of features: a record or a nested object
        if not isinstance(value, Mapping):
            raise SchemaError(f"{_label(where, path)}: expected a JSON object, got {type(value).__name__}")
        missing = [name for name in feature if name not in value]
        if missing:
            raise SchemaError(f"{_label(where, path)}: missing field(s) {', '.join(missing)}")
        for name, sub in feature.items():
            _check(value[name], sub, where, (path, name), List, Value)


def _path_text(path: Any) -> str:
    """``(("", "turns"), 2), "text")`` -> ``turns[2].text``: the path as the error names it."""
    if not isinstance(path, tuple):
        return path
    parent, step = path
    parent = _path_text(parent)
    if isinstance(step, int):
        return f"{parent}[{step}]"
    return f"{parent}.{step}" if parent else step


def _label(where: str, path: Any) -> str:
    path = _path_text(path)
    return f"{where}: {path}" if path else where


@functools.lru_cache(maxsize=64)
def _conversation_spec(candidate_sets: tuple[str, ...]) -> Features:
    """:func:`conversation_features` for validating rows: built once per candidate-set list, not once per row
    (building ``datasets.Features`` took more time than checking the row against it)."""
    return conversation_features(candidate_sets)


def _check_asins(values: Iterable[str], where: str) -> None:
    for value in values:
        if not is_asin(value):
            raise SchemaError(f"{where}: {value!r} is not an ASIN (10 characters A-Z 0-9)")


def validate_conversation_row(row: Mapping[str, Any], *, where: str = "record", require_domain: bool = True) -> None:
    """Raise :class:`SchemaError` naming ``where`` (e.g. ``file.jsonl:12``) unless ``row`` is valid.

    ``require_domain=False`` accepts the build's intermediate records, whose domain ("") is only
    known once the recommended item is joined with the catalog.
    """
    sets = candidate_sets_of(row) if isinstance(row, Mapping) else []
    _check_value(row, _conversation_spec(tuple(sets)), where)
    if row["domain"] not in DOMAINS and (require_domain or row["domain"] != ""):
        raise SchemaError(f"{where}: domain {row['domain']!r} is not one of {', '.join(DOMAINS)}")
    if not row["gt_items"]:
        raise SchemaError(f"{where}: gt_items is empty")
    _check_asins(row["gt_items"], f"{where}: gt_items")
    _check_asins(row["context_items"], f"{where}: context_items")
    for name in sets:
        column = candidate_column(name)
        ids = row[column]
        _check_asins(ids, f"{where}: {column}")
        if ids and (len(ids) != NUM_CANDIDATES or len(set(ids)) != len(ids)):
            repeated = sorted({i for i in ids if ids.count(i) > 1})
            got = f"{len(ids)}, repeating {', '.join(repeated)}" if repeated else str(len(ids))
            raise SchemaError(f"{where}: {column} must hold {NUM_CANDIDATES} distinct ASINs (or none), got {got}")
    turns = row["turns"]
    if not turns or turns[0]["kind"] != "submission":
        raise SchemaError(f"{where}: turns must start with the submission")
    for i, turn in enumerate(turns):
        if turn["kind"] not in TURN_KINDS or (i > 0 and turn["kind"] != "comment"):
            raise SchemaError(f"{where}: turns[{i}].kind {turn['kind']!r} (one submission, then comments)")
    if row["context"] != render_context(Turn(kind=t["kind"], text=t["text"]) for t in turns):
        raise SchemaError(f"{where}: context does not match render_context(turns)")


def validate_item_row(row: Mapping[str, Any], *, where: str = "record") -> None:
    _check_value(row, {**item_features(), "image": ANY}, where)
    image = row["image"]
    if image is not None and not (isinstance(image, Mapping) and isinstance(image.get("bytes"), bytes)):
        raise SchemaError(f"{where}: image must be null or {{'bytes': <encoded image>, 'path': str}}")
    if row["domain"] not in DOMAINS:
        raise SchemaError(f"{where}: domain {row['domain']!r} is not one of {', '.join(DOMAINS)}")
    _check_asins([row["item_id"]], f"{where}: item_id")
    if row["parent_asin"]:
        _check_asins([row["parent_asin"]], f"{where}: parent_asin")
