"""The datasheet section of the dataset card (Gebru et al. headings).

Facts about this copy (authors, dates, deleted turns, pattern counts of personal data, images) are
measured from the Parquet shards; the reviewed prose lives in ``templates/datasheet.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cards.local_paths import shown_value
from cards.markdown import flatten, inline_code, prose
from cards.statistics import DataFiles, DatasetStatistics, shard_paths
from cards.template import fill_template
from reddit_amazon.redaction import is_secret_name
from reddit_amazon.schema import DELETED_TEXT, DOMAINS, ITEMS_CONFIG, REMOVED_TEXT, SPLITS

# RE2 syntax (pyarrow.compute): no look-arounds, so boundaries are matched as characters.
USERNAME_MENTION = r"(?:^|[^\w/])/?u/[A-Za-z0-9_-]{3,20}\b"
EMAIL_ADDRESS = r"\b[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"
PHONE_NUMBER = r"(?:^|[^\w-])(?:\+\d{1,3}[ .-]?)?\(?\d{3}\)?[ .-]\d{3}[ .-]\d{4}(?:$|[^\w-])"



@dataclass(frozen=True)
class TextFacts:
    """What the conversation texts of a copy contain, measured."""

    context_turns: int
    authored_turns: int
    distinct_authors: int
    deleted_turns: int
    removed_turns: int
    texts: int  # context turns + recommending comments
    username_mentions: int  # texts matching USERNAME_MENTION
    email_addresses: int
    phone_numbers: int
    first_utc: int | None
    last_utc: int | None
    items: int
    image_descriptions: int


def measure_texts(folder: str | Path, data_files: DataFiles) -> TextFacts:
    """Counts over every context turn and recommending comment, vectorised with ``pyarrow.compute``."""
    folder = Path(folder)
    authors: set[str] = set()
    counts = dict.fromkeys(["context_turns", "authored", "deleted", "removed", "texts", "mentions", "emails",
                            "phones"], 0)
    first: int | None = None
    last: int | None = None
    for domain in DOMAINS:
        for split in SPLITS:
            for path in shard_paths(folder, data_files, domain, split):
                table = pq.ParquetFile(path).read(
                    columns=["turns.list.element.author", "turns.list.element.text", "gt_text", "created_utc"]
                )
                turns = pc.list_flatten(table.column("turns"))
                turn_authors = pc.struct_field(turns, "author")
                turn_texts = pc.struct_field(turns, "text")
                texts = pa.chunked_array([*_chunks(turn_texts), *table.column("gt_text").chunks], pa.string())
                authored = pc.filter(turn_authors, pc.not_equal(turn_authors, ""))
                authors.update(pc.unique(authored).to_pylist())
                counts["context_turns"] += len(turns)
                counts["authored"] += len(authored)
                counts["deleted"] += _true(pc.equal(turn_texts, DELETED_TEXT))
                counts["removed"] += _true(pc.equal(turn_texts, REMOVED_TEXT))
                counts["texts"] += len(texts)
                counts["mentions"] += _true(pc.match_substring_regex(texts, USERNAME_MENTION))
                counts["emails"] += _true(pc.match_substring_regex(texts, EMAIL_ADDRESS))
                counts["phones"] += _true(pc.match_substring_regex(texts, PHONE_NUMBER))
                span = pc.min_max(table.column("created_utc")).as_py()
                if span["min"] is not None:
                    first = span["min"] if first is None else min(first, span["min"])
                    last = span["max"] if last is None else max(last, span["max"])
    items = described = 0
    for domain in DOMAINS:
        for path in shard_paths(folder, data_files, ITEMS_CONFIG, domain):
            column = pq.ParquetFile(path).read(columns=["image_description"]).column(0)
            items += len(column)
            described += _true(pc.not_equal(column, ""))
    return TextFacts(
        context_turns=counts["context_turns"], authored_turns=counts["authored"], distinct_authors=len(authors),
        deleted_turns=counts["deleted"], removed_turns=counts["removed"], texts=counts["texts"],
        username_mentions=counts["mentions"], email_addresses=counts["emails"], phone_numbers=counts["phones"],
        first_utc=first, last_utc=last, items=items, image_descriptions=described,
    )


def _chunks(array: pa.Array | pa.ChunkedArray) -> list[pa.Array]:
    return array.chunks if isinstance(array, pa.ChunkedArray) else [array]


def _true(mask: pa.Array | pa.ChunkedArray) -> int:
    return int(pc.sum(mask).as_py() or 0)


def render_datasheet(manifest: Mapping[str, Any], statistics: DatasetStatistics, facts: TextFacts,
                     license_text: str) -> str:
    per_domain = ", ".join(f"{d.domain} {d.conversations:,}" for d in statistics.domains.values())
    return fill_template(
        "datasheet.md",
        conversations=f"{statistics.total('conversations'):,}",
        per_domain=per_domain,
        items=(f"{statistics.total('items'):,} items ({statistics.total('titled'):,} with Amazon metadata, "
               f"{statistics.total('images'):,} with an embedded image)"),
        splits=_splits(manifest, statistics),
        authors=_authors(manifest, facts),
        dates=_dates(facts),
        deleted=_deleted(facts),
        mentions=(
            f"In this copy, {facts.username_mentions:,} of {facts.texts:,} texts mention a Reddit username "
            f"(`u/…`), {facts.email_addresses:,} contain an e-mail-address-like string and "
            f"{facts.phone_numbers:,} a phone-number-like string."
        ),
        collection=_collection(manifest),
        preprocessing=_preprocessing(manifest),
        images=_images(statistics),
        image_descriptions=_image_descriptions(facts),
        license=license_text,
        version=inline_code(manifest["version"]),
        fingerprint=inline_code(manifest["fingerprint"]),
        removals=_removals_honoured(manifest),
    ).rstrip() + "\n"


def _removals_honoured(manifest: Mapping[str, Any]) -> str:
    """What the manifest's ``removals`` record of this copy, in counts (nothing where none were applied): a reader
    of the card learns that this version honours requests, and none of the ids asked for."""
    entries = [entry for entry in manifest.get("removals") or [] if isinstance(entry, Mapping)]
    if not entries:
        return ""
    dropped = sum(n for entry in entries for splits in (entry.get("records_dropped") or {}).values()
                  for n in splits.values())
    runs = [entry for entry in entries if entry.get("applied") == "remove"]
    how = [*(["its build (`--removals`)"] if len(runs) < len(entries) else []),
           *([f"{len(runs):,} `remove` run(s) since version {inline_code(runs[0].get('from_version', '?'))}"]
             if runs else [])]
    return (f"\n  This copy honours removal requests: {dropped:,} record(s) dropped by {' and '.join(how)}; the "
            "manifest's `removals` gives each run's counts.")


def build_options(manifest: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """The build's options as ``(dotted.name, value)``, nested option groups flattened."""
    return flatten((manifest.get("build") or {}).get("options") or {})


#: A build option's name part that names a secret in a card besides the secrets every redaction knows: the
#: pseudonym salt (``reddit.salt``), which is no credential anywhere else.
_SECRET_OPTION_PARTS = frozenset({"salt"})


def is_secret_option(name: str) -> bool:
    """Whether a build option's value must never be printed in a card: a secret name
    (:func:`~reddit_amazon.redaction.is_secret_name`: ``openai_api_key``, ``hf_auth``, ``passphrase``) or a salt
    (``reddit.salt``); not ``llm_max_tokens`` or ``key_column``."""
    return is_secret_name(name, also=_SECRET_OPTION_PARTS)


def is_withheld(value: Any) -> bool:
    """True for an empty value or a marker the build wrote instead of a secret (e.g. ``"<redacted>"``)."""
    return value in (None, "") or (isinstance(value, str) and "redact" in value.lower())


def recorded_salt_options(manifest: Mapping[str, Any]) -> list[str]:
    """Names of build options that hold a pseudonymisation salt in clear."""
    return [name for name, value in build_options(manifest) if "salt" in name.lower() and not is_withheld(value)]


def is_sample(manifest: Mapping[str, Any]) -> bool:
    """True for a build of the toolkit's bundled sample inputs (generated, not Reddit or Amazon data)."""
    return bool(dict(build_options(manifest)).get("sample"))


SAMPLE_NOTE = (
    "**This copy is the toolkit's bundled synthetic sample, not Reddit or Amazon data**: its conversations, "
    "authors, products and images were generated by `reddit_amazon/sample/world.py`, and its relevance-filter "
    "answers and images were pre-recorded with the sample inputs. It exercises the pipeline; its numbers say "
    "nothing about the real dataset."
)


def _authors(manifest: Mapping[str, Any], facts: TextFacts) -> str:
    if facts.authored_turns == 0:
        return ("No turn carries an author: `author` is empty everywhere (the source has no usernames), "
                "so nothing links turns written by the same person.")
    sentence = (
        f"Reddit usernames never appear: `author` holds a salted hash of the username "
        f"({facts.authored_turns:,} of {facts.context_turns:,} context turns, {facts.distinct_authors:,} "
        "distinct pseudonyms); deleted accounts and turns with no known author have an empty `author`. "
        "The same salt gives the same pseudonym across a build, so turns by one person can be linked "
        "inside the dataset."
    )
    if is_sample(manifest):
        return sentence + (" The authors are invented and the sample's salt is public, so its pseudonyms are "
                           "reproducible.")
    salts = recorded_salt_options(manifest)
    if salts:
        return sentence + (
            f" **This copy's `manifest.json` records the salt** (option {', '.join(map(inline_code, salts))}): "
            "whoever holds it can test whether a given username wrote a turn. Remove it before publishing."
        )
    return sentence + " The salt is not recorded in this copy, so a pseudonym cannot be recomputed from a username."


def _dates(facts: TextFacts) -> str:
    if facts.first_utc is None or facts.last_utc is None:
        return "The records carry no timestamps (`created_utc` is empty), so their time span is not known."
    first, last = (datetime.fromtimestamp(t, tz=timezone.utc).date().isoformat() for t in
                   (facts.first_utc, facts.last_utc))
    return f"The recommending comments date from {first} to {last} (UTC)."


def _deleted(facts: TextFacts) -> str:
    if facts.deleted_turns == facts.removed_turns == 0:
        return "No context turn is marked deleted or removed."
    return (f"{facts.deleted_turns:,} context turns are marked `{DELETED_TEXT}` and {facts.removed_turns:,} "
            f"`{REMOVED_TEXT}`: their text was gone from the source, and the marker stands in for it.")


def _collection(manifest: Mapping[str, Any]) -> str:
    build = manifest.get("build")
    if build:
        options = dict(build_options(manifest))
        inputs = build.get("inputs") or []
        size = sum(int(i.get("bytes") or 0) for i in inputs)
        if is_sample(manifest):
            reports = manifest.get("build_reports") or {}
            relevance, images = reports.get("relevance") or {}, reports.get("images") or {}
            calls = ("no LLM calls (the relevance filter was skipped: `no_filter`)" if options.get("no_filter")
                     else f"{prose(relevance.get('calls_made', 'an unrecorded number of'))} LLM calls")
            requests = relevance.get("http_requests_sent")  # not recorded before this count existed
            if requests is not None and requests != relevance.get("calls_made"):  # retries were sent too
                calls += f" ({prose(requests)} HTTP requests, retries included)"
            downloads = ("no image downloads (`images` off)" if options.get("images") is False
                         else f"{prose(images.get('downloaded', 'an unrecorded number of'))} image downloads")
            return (f"{SAMPLE_NOTE} Built with `reddit-amazon build` from the {len(inputs):,} bundled input files "
                    f"({size:,} bytes) listed with their sha256 in the Build section; the pipeline ran as on real "
                    f"dumps, with {calls} and {downloads}.")
        return (
            f"Built with `reddit-amazon build` (started {prose(build.get('started_utc', 'at an unrecorded time'))}, "
            f"finished {prose(build.get('finished_utc', 'at an unrecorded time'))}) from {len(inputs):,} input files "
            f"({size:,} bytes), listed with their sha256 in the Build section. Reddit submissions and comments "
            "were read from pushshift-format dumps; every comment linking Amazon products became a candidate "
            "recommendation, and its thread was rebuilt from the submission down through `parent_id`. Linked "
            "ASINs were mapped to their Amazon Reviews 2023 parent ASIN through the review files, joined with "
            f"the item metadata, and assigned a domain by `main_category`. {_relevance(options)} "
            f"{_image_download(options)} The Build section gives the exact command, options and the records each "
            "stage kept and dropped."
        )
    if manifest.get("source"):
        return (
            "This copy was not built from dumps by `reddit-amazon build`: its manifest names its source as "
            f"“{prose(manifest['source'])}”. How those records were collected is described by their source; the "
            "paper (Section 3) describes the original collection: Reddit conversations from pushshift.io "
            "dumps, filtered with GPT-3.5-turbo and the Table 9 prompt, linked to Amazon Reviews 2023."
        )
    return ("This copy's manifest records neither a build nor a source, so how its records were collected is "
            "not known from the copy itself.")


def _relevance(options: Mapping[str, Any]) -> str:
    if options.get("no_filter"):
        return "The LLM relevance filter was skipped (`no_filter`), so every linked conversation was kept."
    model = f" ({inline_code(shown_value(options['llm_model']))})" if options.get("llm_model") else ""
    return (f"An LLM{model} asked with the paper's Table 9 prompt kept the conversations whose last comment "
            "recommends items.")


def _image_download(options: Mapping[str, Any]) -> str:
    if options.get("images") is False:
        return "Images were not downloaded (`images` off)."
    return "Main images were downloaded from the metadata's URLs and validated."


def _preprocessing(manifest: Mapping[str, Any]) -> str:
    lines = []
    funnel = manifest.get("funnel")
    if manifest.get("build"):
        lines += [
            "- Usernames were replaced by salted hashes in everything this dataset contains (the build's "
            "intermediate work files keep the dumps' excerpts as they are, and are not part of it); deleted "
            f"and removed texts became the markers `{DELETED_TEXT}` / `{REMOVED_TEXT}`.",
            "- ASINs without metadata, and items outside beauty, fashion and home, were dropped and counted, "
            "never guessed.",
            "- Images were not downloaded (`images` off); items keep their image URLs, and `image_error` says so."
            if dict(build_options(manifest)).get("images") is False else
            "- Images were decoded with Pillow under size limits; items without a usable image were kept, with "
            "the reason in `image_error`.",
        ]
    if funnel:
        stages = "; ".join(f"{prose(stage['stage'])} kept {int(stage['kept']):,}" for stage in funnel)
        lines.append(f"- Stage by stage ({len(funnel)} stages, drops by reason in the Build section): {stages}.")
    elif manifest.get("build"):
        lines.append("- The build recorded no funnel, so per-stage counts are not available.")
    if "text_repair" in manifest:
        imported = manifest.get("import_report") or {}
        mojibake = imported.get("mojibake_records")
        found = (f" It found mojibake (UTF-8 read as Latin-1, e.g. `donâ\\x80\\x99t`) in {mojibake:,} records"
                 + (f" and repaired {imported.get('repaired_records', 0):,}." if manifest["text_repair"]
                    else ", kept as in the source so that an export gives the source back.")) \
            if isinstance(mojibake, int) and mojibake else ""
        lines.append(f"- The importer's text repair was {'on' if manifest['text_repair'] else 'off'} "
                     f"(`text_repair` in the manifest).{found}")
    if not lines:
        return "No preprocessing record exists for this copy (it has no build record or import options)."
    return "\n".join(lines)


def _splits(manifest: Mapping[str, Any], statistics: DatasetStatistics) -> str:
    present = [split for split in SPLITS if any(d.split_records.get(split) for d in statistics.domains.values())]
    if manifest.get("build"):
        return ("Splits are made per domain by whole threads, in the paper's 8:1:1 ratio (record counts as near "
                "those shares as whole threads allow; the Splits section gives them); a thread is in one split for "
                "every domain, and the Splits section checks that no thread is in two splits.")
    if present:
        return (f"This copy has the {', '.join(present)} split{'s' if len(present) > 1 else ''} of its source, as "
                "given there; the Splits section checks whether any thread is in two splits.")
    return "This copy has no records, so no splits."


def _images(statistics: DatasetStatistics) -> str:
    items = statistics.total("items")
    embedded = statistics.total("images")
    urls = statistics.total("image_urls")
    if embedded == 0 and urls == 0:
        return f"this copy has no images: none of its {items:,} items embeds one or has an image URL."
    if embedded == 0:
        return (f"this copy embeds no images: they are distributed as URLs only (`image_urls`, {urls:,} URLs "
                f"for {items:,} items), which point to Amazon's servers and may stop working.")
    missing = (f" The {items - embedded:,} items without an embedded image give the reason in `image_error`."
               if embedded < items else "")
    without_url = statistics.total("without_image_url")
    kept = (f"every item keeps its URLs (`image_urls`, {urls:,} URLs)" if not without_url else
            f"items keep the URLs their metadata lists (`image_urls`, {urls:,} URLs; {without_url:,} items list none)")
    return (f"this copy embeds the main image of {embedded:,} of {items:,} items as bytes in the Parquet shards "
            f"(`image`); {kept}.{missing}")


def _image_descriptions(facts: TextFacts) -> str:
    if facts.image_descriptions == 0:
        return "no item has an `image_description` in this copy."
    return (f"{facts.image_descriptions:,} of {facts.items:,} items have an `image_description`, a text about the "
            "image that the paper's pipeline has a vision-language model write (Table 10 prompt); treat it as "
            "model output that can be wrong.")
