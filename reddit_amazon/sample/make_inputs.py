"""Write the bundled sample INPUTS (``reddit_amazon/sample/inputs/``) from the generated world.

``reddit-amazon build`` with no arguments reads them, offline, through the real code path:

* ``reddit/``  the threads as pushshift-style per-subreddit dumps (streamed, long-window zstd)
* ``amazon/``  Amazon Reviews 2023 files: ``meta_<Category>.jsonl`` and ``<Category>.jsonl.gz`` reviews
* ``images/``  a pre-filled image store (``<parent_asin>.jpg``) with a few pre-recorded failures, as
               a real store looks after a download; the build never goes online for them
* ``relevance-cache.sqlite``  the world's relevance answers, stored under the exact prompts the
               build will send (so the Table 9 filter needs no API key)

The prompts depend on how the Reddit stage renders threads, so this script runs that stage on the
dumps it just wrote. Run it after changing the world, the Reddit stage or the Table 9 template::

    python -m reddit_amazon.sample.make_inputs
"""

from __future__ import annotations

import gzip
import json
import shutil
import tempfile
from pathlib import Path

import click

from reddit_amazon.build import (
    SAMPLE_AMAZON,
    SAMPLE_IMAGES,
    SAMPLE_INPUTS,
    SAMPLE_REDDIT,
    SAMPLE_RELEVANCE_CACHE,
    SAMPLE_SALT,
    reddit_conversations,
)

#: Amazon Reviews 2023 file stem of each main_category the world uses.
CATEGORY_FILES = {
    "All Beauty": "All_Beauty",
    "AMAZON FASHION": "Amazon_Fashion",
    "Amazon Home": "Home_and_Kitchen",
    "Books": "Books",
    "All Electronics": "Electronics",
    "Toys & Games": "Toys_and_Games",
}
#: How the pre-recorded LLM answers are worded (real answers vary like this; the parser copes).
ANSWER_WORDING = {"yes": "Yes", "no": "No.", "uncertain": "uncertain"}
#: Items whose image download is recorded as failed, to show the gap the build keeps.
PRERECORDED_IMAGE_FAILURES = 2
#: Link-bearing comments the world does not label (earlier comments asking "something like X?")
#: are questions, not recommendations.
UNLABELLED_ANSWER = "no"


def _write_jsonl(path: Path, rows: list[dict], *, gz: bool = False) -> None:
    data = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode()
    if gz:
        with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as out:
            out.write(data)
    else:
        path.write_bytes(data)


def write_inputs(target: Path = SAMPLE_INPUTS, seed: int = 0) -> dict[str, int]:
    from reddit_amazon.dumps import write_zst_ndjson
    from reddit_amazon.images import STORE_LOCK, ImageStore
    from reddit_amazon.pipeline import RedditStageOptions, run_reddit_stage
    from reddit_amazon.relevance import DEFAULT_MODEL, AnswerCache, cache_key, default_template, render_prompt
    from reddit_amazon.sample.world import make_world

    world = make_world(seed)
    shutil.rmtree(target, ignore_errors=True)
    reddit, amazon, images = (target / SAMPLE_REDDIT.name, target / SAMPLE_AMAZON.name, target / SAMPLE_IMAGES.name)
    for folder in (reddit, amazon, images):
        folder.mkdir(parents=True)

    write_zst_ndjson(reddit / "sample_submissions.zst", world.submissions)
    write_zst_ndjson(reddit / "sample_comments.zst", world.comments)

    by_category: dict[str, list] = {}
    for item in world.items:
        by_category.setdefault(item.metadata["main_category"], []).append(item)
    parent_category = {item.parent_asin: item.metadata["main_category"] for item in world.items}
    for category, items in sorted(by_category.items()):
        stem = CATEGORY_FILES[category]
        _write_jsonl(amazon / f"meta_{stem}.jsonl", [item.metadata for item in items])
        reviews = [r for r in world.reviews if parent_category[r["parent_asin"]] == category]
        _write_jsonl(amazon / f"{stem}.jsonl.gz", reviews, gz=True)

    store = ImageStore(images)
    gt_parents = sorted({asin for record in world.expected_records() for asin in record.gt_items})
    failing = set(gt_parents[:PRERECORDED_IMAGE_FAILURES])
    for item in world.items:
        if not item.domain:
            continue  # out-of-domain items never reach the image stage
        url = item.metadata["images"][0]["hi_res"]
        if item.parent_asin in failing:
            store.record_failure(item.parent_asin, url, "http_error: HTTP 404 (pre-recorded in the sample)",
                                 permanent=True)
        else:
            store.put(item.parent_asin, item.image_jpeg, url)
    store.save()
    (images / STORE_LOCK).unlink(missing_ok=True)  # the save's lock file is no input: it would ship in the package

    with tempfile.TemporaryDirectory(prefix="reddit-amazon-sample-") as workdir:
        run_reddit_stage([reddit], Path(workdir),
                         RedditStageOptions(salt=SAMPLE_SALT, resolve_short_links=False, progress=False))
        conversations = reddit_conversations(Path(workdir))
    template = default_template()
    counts = {"conversations": len(conversations), "unlabelled": 0}
    with AnswerCache(target / SAMPLE_RELEVANCE_CACHE.name) as cache:
        for conversation in sorted(conversations, key=lambda c: c.example_id):
            label = world.relevance.get(conversation.gt_comment_id)
            if label is None:
                counts["unlabelled"] += 1
                label = UNLABELLED_ANSWER
            cache.put(cache_key(DEFAULT_MODEL, render_prompt(template, conversation)), DEFAULT_MODEL,
                      ANSWER_WORDING[label])
    counts["bytes"] = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    return counts


@click.command()
@click.option("--out", type=click.Path(path_type=Path), default=SAMPLE_INPUTS, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the generated world.")
def main(out: Path, seed: int) -> None:
    """Regenerate the bundled sample inputs from the sample world.

    \b
    Example:
      python -m reddit_amazon.sample.make_inputs && reddit-amazon build
    """
    counts = write_inputs(out, seed)
    click.echo(f"wrote {out}: {counts['conversations']} candidate conversations "
               f"({counts['unlabelled']} answered '{UNLABELLED_ANSWER}' by default), {counts['bytes']:,} bytes")


if __name__ == "__main__":
    main()
