"""The dataset folder's README.md: Hub YAML metadata plus a card generated from the manifest."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import DatasetCard, DatasetCardData

from reddit_amazon.schema import DOMAINS, FIELD_DOCS, ITEMS_CONFIG, SPLITS


def render_dataset_card(data: DatasetCardData, manifest: Mapping[str, Any], folder: Path) -> str:
    counts = manifest["counts"]
    lines = [
        f"# Reddit-Amazon ({manifest['name']} {manifest['version']})",
        "",
        "Real Reddit conversations that end in a comment recommending Amazon products, aligned with the",
        "products' Amazon Reviews 2023 metadata and images, in three visually oriented domains (beauty,",
        "fashion, home). Built with the `reddit-amazon` toolkit after the LaViC paper (KDD'25).",
        "",
        "## Load",
        "",
        "```python",
        "from datasets import load_dataset",
        f'fashion = load_dataset("{folder.name}", "fashion")      # from the folder\'s parent, or a Hub repo id',
        f'items = load_dataset("{folder.name}", "items", split="fashion")',
        "```",
        "",
        "## Size",
        "",
        "| config | " + " | ".join(SPLITS) + " |",
        "| --- | " + " | ".join("---:" for _ in SPLITS) + " |",
    ]
    for domain in DOMAINS:
        lines.append(f"| {domain} | " + " | ".join(str(counts[domain].get(s, 0)) for s in SPLITS) + " |")
    lines += [
        "",
        "| items | " + " | ".join(DOMAINS) + " |",
        "| --- | " + " | ".join("---:" for _ in DOMAINS) + " |",
        "| items | " + " | ".join(str(counts[ITEMS_CONFIG].get(d, 0)) for d in DOMAINS) + " |",
        "",
        "## Fields",
        "",
        "| field | meaning |",
        "| --- | --- |",
    ]
    lines += [f"| `{name}` | {doc} |" for name, doc in FIELD_DOCS.items()]
    lines += [
        "",
        "## Provenance",
        "",
        f"- version: `{manifest['version']}`",
        f"- fingerprint (sha256 of the Parquet shards): `{manifest['fingerprint']}`",
        f"- candidate sets computed: {', '.join(manifest.get('candidate_sets') or []) or 'none'}",
    ]
    if manifest.get("source"):
        lines.append(f"- source: {manifest['source']}")
    return str(DatasetCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n"))
