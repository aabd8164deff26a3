"""Regenerate the bundled sample dataset (``reddit_amazon/sample/reddit-amazon/``).

    python -m reddit_amazon.sample.make_sample            # needs the `retrieval` extra (real SBERT)

The dataset is assembled from the sample world's ground truth (:mod:`reddit_amazon.sample.world`):
the threads a correct build keeps, split 8:1:1 by thread, with SBERT and BM25 candidates from the
harness's retrievers over each domain's catalog. ``tests/test_sample.py`` checks that the shipped
folder is what this script produces and that ``reddit-amazon build`` on the sample inputs agrees
with the same ground truth.
"""

from __future__ import annotations

import argparse
import hashlib
import random
from pathlib import Path

from reddit_amazon import DATASET_VERSION
from reddit_amazon.dataset_folder import DatasetContents, write_dataset
from reddit_amazon.sample import SAMPLE_DATASET
from reddit_amazon.sample.world import World, make_world
from reddit_amazon.schema import DELETED_TEXT, DOMAINS, REMOVED_TEXT, SPLITS, Conversation, Item, Turn

SAMPLE_SALT = "reddit-amazon-sample"
SAMPLE_RETRIEVERS = ("sbert", "bm25")


def pseudonym(author: str, salt: str = SAMPLE_SALT) -> str:
    if author in ("", "[deleted]", "[removed]"):
        return ""
    return "u_" + hashlib.blake2b(author.encode(), key=salt.encode()[:64], digest_size=8).hexdigest()


def _text(raw: str) -> str:
    return {"[deleted]": DELETED_TEXT, "[removed]": REMOVED_TEXT}.get(raw, raw)


def conversations_from_world(world: World) -> dict[str, list[Conversation]]:
    submissions = {s["id"]: s for s in world.submissions}
    comments = {c["id"]: c for c in world.comments}
    by_domain: dict[str, list[Conversation]] = {d: [] for d in DOMAINS}
    for expected in world.expected_records():
        rec = comments[expected.comment_id]
        chain = []
        parent = rec["parent_id"]
        while parent.startswith("t1_"):
            chain.append(comments[parent[3:]])
            parent = chain[-1]["parent_id"]
        chain.reverse()
        submission = submissions[expected.thread_id]
        body = _text(submission["selftext"])
        turns = [Turn("submission", f"{submission['title']} {body}", pseudonym(submission["author"]),
                      int(submission["created_utc"]), submission["id"])]
        turns += [Turn("comment", _text(c["body"]), pseudonym(c["author"]), int(c["created_utc"]), c["id"])
                  for c in chain]
        by_domain[expected.domain].append(Conversation(
            example_id=rec["id"], domain=expected.domain, thread_id=expected.thread_id,
            subreddit=rec["subreddit"], created_utc=int(rec["created_utc"]), turns=turns,
            context_items=expected.context_items, gt_text=rec["body"], gt_items=expected.gt_items,
            gt_comment_id=rec["id"],
        ))
    return by_domain


def split_by_thread(records: list[Conversation], seed: int) -> dict[str, list[Conversation]]:
    threads = sorted({r.thread_id for r in records})
    random.Random(seed).shuffle(threads)
    n = len(threads)
    cut_train, cut_valid = round(n * 0.8), round(n * 0.9)
    split_of = {t: ("train" if i < cut_train else "validation" if i < cut_valid else "test")
                for i, t in enumerate(threads)}
    out: dict[str, list[Conversation]] = {s: [] for s in SPLITS}
    for record in sorted(records, key=lambda r: r.example_id):
        out[split_of[record.thread_id]].append(record)
    return out


def build_sample(out: Path = SAMPLE_DATASET, seed: int = 0) -> dict:
    from benchmark.retrieval import get_retriever

    world = make_world(seed)
    retrievers = [get_retriever(name) for name in SAMPLE_RETRIEVERS]
    conversations = {}
    items = {}
    for domain, records in conversations_from_world(world).items():
        catalog = world.items_of(domain)
        items[domain] = [
            Item(item_id=i.parent_asin, domain=domain, parent_asin=i.parent_asin, title=i.metadata["title"],
                 store=i.metadata["store"], main_category=i.metadata["main_category"],
                 categories=i.metadata["categories"], features=i.metadata["features"],
                 description="\n".join(i.metadata["description"]),
                 details=_json_text(i.metadata["details"]),
                 image_urls=[i.metadata["images"][0]["hi_res"]], image=i.image_jpeg,
                 image_description=i.image_description)
            for i in catalog
        ]
        texts = [(item.item_id, item.title) for item in items[domain]]
        for retriever in retrievers:
            top = retriever.top_k([r.context for r in records], texts, k=10)
            for record, ids in zip(records, top):
                record.candidates[retriever.candidate_set_name] = ids
        conversations[domain] = split_by_thread(records, seed)
    contents = DatasetContents(
        conversations=conversations, items=items, version=DATASET_VERSION,
        candidate_sets=[r.candidate_set_name for r in retrievers],
        metadata={"source": "bundled sample: generated by reddit_amazon.sample.world (synthetic, no real users)",
                  "seed": seed},
    )
    return write_dataset(out, contents)


def _json_text(value: dict) -> str:
    import json

    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=SAMPLE_DATASET)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    manifest = build_sample(args.out, args.seed)
    print(f"wrote {args.out} (fingerprint {manifest['fingerprint'][:12]}): {manifest['counts']}")


if __name__ == "__main__":
    main()
