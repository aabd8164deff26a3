"""The dataset folder's README.md: Hub YAML metadata plus a card generated from the manifest and shards.

Every number is computed: Table-1 statistics and split sizes from the Parquet shards
(:mod:`cards.statistics`), the build record and funnel from ``manifest.json``. A section whose data is
absent says so in one sentence.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from huggingface_hub import DatasetCard, DatasetCardData

from cards.datasheet import (SAMPLE_NOTE, build_options, is_sample, is_secret_option, is_withheld, measure_texts,
                             render_datasheet)
from cards.local_paths import holds_local_path, shown_command, shown_value
from cards.markdown import code_block, inline_code, prose, table
from cards.paper import PAPER_DOI, PAPER_TABLE_1, PAPER_TITLE
from cards.statistics import DatasetStatistics, DomainStatistics, compute_statistics, data_files_from_card_data
from cards.template import read_template
from reddit_amazon.catalog import LINK_OUTCOMES
from reddit_amazon.lavic_release import IMPORTED_FIELD_DOCS
from reddit_amazon.schema import (
    CANDIDATE_PREFIX,
    DOMAINS,
    FIELD_DOCS,
    ITEM_FIELD_DOCS,
    ITEM_FEATURES,
    SPLITS,
    candidate_sets_of,
    conversation_features,
)

TURNS_DEFINITION = ("sum over records of `len(turns)`: the context turns, the recommending comment not counted, as in "
                    "the paper (its turns per conversation match the context turns per record of its release)")


def render_dataset_card(data: DatasetCardData, manifest: Mapping[str, Any], folder: Path, *,
                        repo_id: str | None = None) -> str:
    """The README.md of a dataset folder whose shards (listed in ``data.configs``) are already written.

    ``repo_id`` is the name shown in the loading example: the folder's name (what `load_dataset` finds from its
    parent) or a Hub id (default: the manifest's ``name``).
    """
    folder = Path(folder)
    data_files = data_files_from_card_data(data)
    statistics = compute_statistics(folder, data_files)
    facts = measure_texts(folder, data_files)
    name = repo_id or manifest["name"]
    sections = [
        _summary(manifest, statistics),
        _load(name, statistics, [d for d in DOMAINS if d in data_files]),
        _statistics(statistics, manifest.get("stats")),
        _fields(folder, data_files, imported="text_repair" in manifest),  # a key only import-lavic writes
        _build(manifest),
        _provenance(manifest),
        render_datasheet(manifest, statistics, facts, _license_text(data)),
        _citation(),
    ]
    body = "\n\n".join(section.strip() for section in sections) + "\n"
    return str(DatasetCard(f"---\n{data.to_yaml()}\n---\n\n{body}"))


def _summary(manifest: Mapping[str, Any], statistics: DatasetStatistics) -> str:
    source = f" Source of this copy: {prose(manifest['source'])}." if manifest.get("source") else ""
    return (
        f"# Reddit-Amazon ({prose(manifest['name'])} {prose(manifest['version'])})\n\n"
        + (f"{SAMPLE_NOTE}\n\n" if is_sample(manifest) else "") +
        f"{statistics.total('conversations'):,} Reddit conversations that end in a comment recommending "
        f"Amazon products, {_domains_phrase(statistics)}: "
        f"{statistics.total('items'):,} products (counted per domain: one linked in two domains counts twice), "
        f"{statistics.total('titled'):,} of them with Amazon Reviews 2023 metadata (a title) and "
        f"{statistics.total('images'):,} with an embedded image. The task is to read the conversation and "
        "pick the recommended product among 10 retrieved candidates, as in the LaViC paper (KDD'25). Built with "
        "the `reddit-amazon` toolkit; every number in this card is computed from the files in this folder."
        + source
    )


def _domains_phrase(statistics: DatasetStatistics) -> str:
    """The paper's three domains, or those this copy has records in (a --domain-map may leave one out)."""
    held = [name for name, d in statistics.domains.items() if d.conversations]
    if len(held) == len(DOMAINS) or not held:
        return f"in three visually oriented domains ({', '.join(DOMAINS)})"
    absent = [name for name in DOMAINS if name not in held]
    return (f"in {len(held)} of the paper's three visually oriented domains ({', '.join(held)}; this copy has no "
            f"{' or '.join(absent)} records)")


def _load(name: str, statistics: DatasetStatistics, domains: list[str]) -> str:
    """The loading example names a domain this copy has (fashion where present, as the default config)."""
    domain = "fashion" if "fashion" in domains or not domains else domains[0]
    stats = statistics.domains.get(domain)
    present = [split for split in SPLITS if stats is not None and stats.split_records[split]]
    scored = "test" if any(d.split_records.get("test") for d in statistics.domains.values()) else next(
        (split for split in SPLITS if any(d.split_records.get(split) for d in statistics.domains.values())), "test")
    computed = sorted({n for d in statistics.domains.values() for n, c in d.candidates.items()
                       if c.records_with_candidates})
    candidates = "" if "sbert" in computed or not computed else f" --candidates {computed[0]}"
    dataset = shlex.quote(name)
    command = f"benchmark run --model sbert --dataset {dataset} --out runs/sbert" + (
        "" if scored == "test" else f" --split {scored}") + candidates
    score = (f"Score a recommender with {inline_code(command)}." if computed else
             f"No candidate set was computed for this copy, so `benchmark run` has none to score with; rank the full "
             "catalog with "
             f"{inline_code(f'benchmark retrieve --retriever sbert --dataset {dataset} --out runs/sbert-catalog')}.")
    example = "\n".join([
        "from datasets import load_dataset",
        "",
        f'{domain} = load_dataset({json.dumps(name)}, "{domain}")   # splits: {", ".join(present)}',
        f'items = load_dataset({json.dumps(name)}, "items", split="{domain}")',
    ])
    return (
        "## Load\n\n"
        f"{code_block(example, 'python')}\n\n"
        f"{inline_code(name)} is this folder (a local path) or its Hub repository id. Configs: "
        f"{', '.join(inline_code(d) for d in domains)} (conversations) and `items` (one split per domain). "
        + score
    )


def _statistics(statistics: DatasetStatistics, recorded: Mapping[str, Any] | None) -> str:
    domains = list(statistics.domains.values())
    table_1 = table(
        ["Dataset", "# Conv.", "# Turns", "# Items", "# Images", "# Image URLs"],
        [[d.domain.capitalize(), d.conversations, d.turns, d.items, d.images, d.image_urls] for d in domains]
        + [["Total", *(statistics.total(a) for a in ("conversations", "turns", "items", "images", "image_urls"))]],
        numeric=[False, True, True, True, True, True],
    )
    paper = table(
        ["Dataset", "# Conv.", "# Turns", "# Items", "# Images"],
        [[domain.capitalize(), *PAPER_TABLE_1[domain].values()] for domain in DOMAINS],
        numeric=[False, True, True, True, True],
    )
    splits = table(
        ["Domain", *SPLITS, "total"],
        [[d.domain, *(d.split_records[s] for s in SPLITS), d.conversations] for d in domains],
        numeric=[False, *(True for _ in SPLITS), True],
    )
    pairs = table(
        ["Domain", *SPLITS, "total"],
        [[d.domain, *(d.split_pairs[s] for s in SPLITS), sum(d.split_pairs.values())] for d in domains],
        numeric=[False, *(True for _ in SPLITS), True],
    )
    return "\n\n".join([
        "## Statistics",
        "In the layout of the paper's Table 1, computed from this folder's Parquet shards:",
        table_1,
        f"**# Conv.** = records; **# Turns** = {TURNS_DEFINITION}; **# Items** = distinct `item_id` in the "
        "domain's split of the `items` config; **# Images** = items with an embedded image; **# Image URLs** = "
        "all image URLs of the domain's items, with or without an embedded image (the paper's # Images counts "
        "every image of an item, so it compares "
        "with this column).",
        _recorded_stats_check(statistics, recorded),
        "The paper reports, for its own build (Table 1):",
        paper,
        "### Splits",
        "Records per split (a build splits each domain 8:1:1, the paper's ratio, by whole threads, so the counts "
        "can differ a little from those shares; an imported copy keeps the splits it was given):",
        splits,
        _thread_check(domains),
        "Evaluation examples per split: (record, gt item) pairs, since a record with several recommended items "
        "counts once per item:",
        pairs,
        _candidate_sets(statistics),
    ])


def _recorded_stats_check(statistics: DatasetStatistics, recorded: Mapping[str, Any] | None) -> str:
    if not recorded:
        return "The manifest records no statistics of its own to compare with."
    counted = statistics.as_manifest_stats()
    differences = [f"{domain} {key}: manifest {recorded.get(domain, {}).get(key, 'absent')}, shards {value:,}"
                   for domain, values in counted.items() for key, value in values.items()
                   if recorded.get(domain, {}).get(key) != value and (domain in recorded or value)]
    if not differences:
        return "These equal the statistics the build recorded in `manifest.json`."
    return ("**The statistics in `manifest.json` differ from the shards** (" + "; ".join(differences)
            + "); the table above is counted from the shards.")


def _thread_check(domains: list[DomainStatistics]) -> str:
    if all(d.threads_in_several_splits is None for d in domains):
        return "The records carry no thread ids, so thread separation between splits cannot be checked."
    shared = sum(d.threads_in_several_splits or 0 for d in domains)
    if shared == 0:
        return "Checked on this copy: no thread id appears in two splits of a domain."
    per_domain = ", ".join(f"{d.domain} {d.threads_in_several_splits:,}" for d in domains
                           if d.threads_in_several_splits)
    return f"Checked on this copy: {shared:,} thread ids appear in more than one split ({per_domain})."


def _candidate_sets(statistics: DatasetStatistics) -> str:
    names = sorted({name for d in statistics.domains.values() for name in d.candidates})
    if not names:
        return "### Candidate sets\n\nThis copy has no candidate columns."
    rows = []
    for name in names:
        for d in statistics.domains.values():
            coverage = d.candidates.get(name)
            if coverage is None:
                continue
            recall, max_hr1 = ("n/a" if value is None else f"{value:.4f}" for value in (coverage.recall,
                                                                                         coverage.max_hr1))
            rows.append([inline_code(CANDIDATE_PREFIX + name), d.domain, coverage.records_with_candidates,
                         d.conversations, recall, max_hr1])
    return "\n\n".join([
        "### Candidate sets",
        "Ten candidates per record and retriever. An empty list means that retriever was not run for the record. "
        "*gt in candidates* is the share of (record, gt item) pairs, over records that have candidates, whose gt "
        "item is among them (the set's recall). *max HR@1* is the highest HR@1 a recommender answering from that "
        "set can reach: a record is run once and gives one answer, which hits every gt item equal to it, so of "
        "several distinct gt items among its candidates it can hit only one, while a gt ASIN the record lists "
        "twice is two pairs, both hit, as `benchmark run` counts them. Both count every split; `benchmark run` "
        "scores one.",
        table(["column", "domain", "records with candidates", "records", "gt in candidates", "max HR@1"], rows,
              numeric=[False, False, True, True, True, True]),
    ])


def _fields(folder: Path, data_files: Mapping[str, Mapping[str, list[str]]], imported: bool) -> str:
    """The schema's fields, with what an import of the authors' release holds in them where it differs."""
    docs = {**FIELD_DOCS, **IMPORTED_FIELD_DOCS} if imported else FIELD_DOCS
    first = next((paths[0] for d in DOMAINS for paths in data_files.get(d, {}).values() if paths), None)
    columns = pq.read_schema(folder / first).names if first else []
    candidate_columns = [CANDIDATE_PREFIX + n for n in candidate_sets_of(columns)]
    conversation = conversation_features(candidate_sets_of(columns))
    rows = []
    for name, feature in conversation.items():
        if name.startswith(CANDIDATE_PREFIX):
            continue
        rows.append([inline_code(name), _type_name(feature), docs[name]])
    rows.append([inline_code("candidates_<name>"), "list<string>",
                 docs["candidates_<name>"] + "; in this copy: "
                 + (", ".join(inline_code(c) for c in candidate_columns) or "none")])
    item_docs = {**docs, **ITEM_FIELD_DOCS} if not imported else docs  # an import's items: the release's folder
    item_rows = [[inline_code(name), _type_name(feature), item_docs[name]] for name, feature in ITEM_FEATURES.items()]
    declared = "declared in `reddit_amazon/schema.py`" + (
        "; the meanings say what this copy, imported from the LaViC authors' release, holds "
        "(`reddit_amazon/lavic_release.py`)" if imported else "")
    return "\n\n".join([
        "## Fields",
        f"Conversation configs (`beauty`, `fashion`, `home`), {declared}:",
        table(["field", "type", "meaning"], rows),
        "`items` config:",
        table(["field", "type", "meaning"], item_rows),
    ])


def _type_name(feature: Any) -> str:
    import datasets

    if isinstance(feature, datasets.Value):
        return feature.dtype
    if isinstance(feature, datasets.Image):
        return "image"
    if isinstance(feature, datasets.List):
        inner = feature.feature
        return "list<struct>" if isinstance(inner, dict) else f"list<{_type_name(inner)}>"
    return type(feature).__name__


def _build(manifest: Mapping[str, Any]) -> str:
    parts = ["## Build"]
    build = manifest.get("build")
    if build:
        command = str(build.get("command", ""))
        parts += ["Command:", code_block(shown_command(command), "bash")]
        if "<redacted>" in command:
            parts.append("`<redacted>` stands for a secret the build did not record (such as the salt): give "
                         "your own value to run the command again; with another salt the pseudonyms differ.")
        details = [["seed", _outside(build.get("seed", "not recorded"))],
                   ["started (UTC)", _outside(build.get("started_utc", "not recorded"))],
                   ["finished (UTC)", _outside(build.get("finished_utc", "not recorded"))]]
        parts.append(table(["", "value"], details))
        options = build_options(manifest)
        if options:
            parts += ["Options (nested groups flattened):",
                      table(["option", "value"], [[inline_code(k), _option_value(k, v)] for k, v in sorted(options)])]
        inputs = build.get("inputs") or []
        parts += ["Inputs:", table(["path", "bytes", "sha256"],
                                   [[inline_code(shown_value(i["path"])), _recorded(i.get("bytes")),
                                     _recorded(i.get("sha256"))] for i in inputs], numeric=[False, True, False])
                  if inputs else "The build recorded no input files."]
        if (shown_command(command) != command or any(holds_local_path(v) for _, v in options)
                or any(holds_local_path(i.get("path")) for i in inputs)):
            parts.append("An absolute path of the build machine is shown by its last component (where the files "
                         "lay there is nobody's business): give your own paths to run the command again; the "
                         "inputs' sha256 say which files they were.")
        versions = build.get("package_versions") or {}
        if versions:
            parts += ["Package versions:", table(["package", "version"],
                                                 [[_outside(p), _outside(v)] for p, v in sorted(versions.items())])]
    elif manifest.get("source"):
        parts.append(f"This dataset comes from {prose(manifest['source'])}, not from `reddit-amazon build`: no build "
                     "command or input checksums exist.")
    else:
        parts.append("This dataset's manifest has no build record, so no build command or input checksums exist.")
    funnel = manifest.get("funnel")
    if funnel:
        rows = [[_outside(stage["stage"]), int(stage["kept"]), sum(int(n) for n in (stage.get("dropped") or {}).values()),
                 ", ".join(f"{prose(reason)}: {int(n):,}" for reason, n in (stage.get("dropped") or {}).items()) or "—"]
                for stage in funnel]
        parts += ["### Funnel", "Records each stage kept and dropped, in stage order:",
                  table(["stage", "kept", "dropped", "dropped by reason"], rows, numeric=[False, True, True, False])]
    else:
        parts.append("No build funnel exists for this dataset: "
                     + ("it was not built from dumps." if not build else "the build recorded none."))
    if build:
        parts.append(_linked_asins(manifest))
    return "\n\n".join(parts)


def _linked_asins(manifest: Mapping[str, Any]) -> str:
    """The catalog join's outcome per linked ASIN: the funnel counts records, and a record that keeps one of its
    gt items stays, so ASINs dropped from it (unknown, outside the domains) show only here."""
    report = (manifest.get("build_reports") or {}).get("catalog") or {}
    gt, context = report.get("gt_links") or {}, report.get("context_links") or {}
    if not gt and not context:
        return ("The build recorded no per-ASIN outcome of the catalog join (`build_reports.catalog` in "
                "`manifest.json`).")
    outcomes = [*(o for o in LINK_OUTCOMES if o in gt or o in context),
                *sorted((gt.keys() | context.keys()) - LINK_OUTCOMES.keys())]
    rows = [[inline_code(o), int(gt.get(o, 0)), int(context.get(o, 0)), LINK_OUTCOMES.get(o, "—")] for o in outcomes]
    return "\n\n".join([
        "### Linked ASINs",
        "What the catalog join did with the ASINs linked in the records that reached it, before the relevance "
        "filter (`build_reports.catalog` in `manifest.json`; once per record and ASIN). A record is dropped only "
        "when none of its gt ASINs is kept; context ASINs are counted for the records kept:",
        table(["outcome", "gt ASINs", "context ASINs", "meaning"], rows, numeric=[False, True, True, False]),
    ])


def _outside(value: Any) -> Any:
    """A manifest's value for a table cell: a number as a number, any other as text, never as HTML or a new line
    (a folder from the Hub, or a hand-edited manifest, may hold anything)."""
    return value if isinstance(value, (int, float)) else prose(value)


def _recorded(value: Any) -> Any:
    if value is None:
        return "not recorded"
    return value if isinstance(value, int) else inline_code(value)


def _option_value(name: str, value: Any) -> str:
    if is_secret_option(name):
        return "(not shown)" if not is_withheld(value) else "(not recorded)"
    if value is None:
        return "not set"
    value = shown_value(value)
    return inline_code(value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))


def _provenance(manifest: Mapping[str, Any]) -> str:
    computed = manifest.get("candidate_sets") or []
    rows: list[list[object]] = [
        ["version", inline_code(manifest["version"])],
        ["fingerprint (sha256 over the Parquet shards)", inline_code(manifest["fingerprint"])],
        ["candidate sets computed", ", ".join(inline_code(c) for c in computed) or "none"],
    ]
    if manifest.get("schema_package_version"):
        rows.append(["written by reddit-amazon", inline_code(manifest["schema_package_version"])])
    if manifest.get("source"):
        rows.append(["source", prose(manifest["source"])])
    if "text_repair" in manifest:
        rows.append(["text repair on import", bool(manifest["text_repair"])])
    return "## Version and fingerprint\n\n" + table(["", "value"], rows)


def _license_text(data: DatasetCardData) -> str:
    license_id = data.get("license") or "not declared"
    name = data.get("license_name")
    declared = f"`license: {license_id}`" + (f" (`{name}`)" if name else "")
    return (f"the card's metadata declares {declared}. The compilation (record structure, splits, candidate "
            "lists) is offered for research; texts, metadata and images stay under their sources' terms above. "
            "The `reddit-amazon` toolkit that builds it is Apache-2.0.")


def _citation() -> str:
    return "\n\n".join([
        "## Citation",
        f"The dataset and task come from *{PAPER_TITLE}* (doi:{PAPER_DOI}); item metadata and images from "
        "Amazon Reviews 2023 (Hou et al., 2024); Reddit texts from the Pushshift Reddit dumps (Baumgartner et al., "
        "2020). Please cite all three:",
        code_block(read_template("citation.bib"), "bibtex"),
    ])
