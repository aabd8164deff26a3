"""A rerun that changes nothing: what checking the stage stamps (size + sha256 of each output) costs.

A build stage writes a ``stage.json`` stamp recording the size and sha256 of each of its outputs; a rerun with
the same key reuses the stage only once every output is found unchanged, so it reads and hashes all of them. The
stamped outputs are the Reddit stage's conversation shards and ``funnel.json``, the catalog stage's
``conversations.jsonl``, ``items.jsonl`` and ``report.json``, and the relevance stage's ``conversations.jsonl``
and ``report.json`` (the image store is not stamped: its files are not hashed on reuse).

This script writes such a workdir with synthetic rows shaped like the real ones (``Conversation.to_row()`` /
``Item.to_row()`` lines, Reddit-like text: ~2.7 turns per conversation as in the paper's Table 1, item metadata
of Amazon Reviews 2023 sizes), stamps it with the build's own code, then times in interleaved rounds (median):

* ``read``:  every stamped output read once in 1 MiB blocks, as ``cat FILES > /dev/null`` (the floor);
* ``check``: the build's reuse check of the three stages (``_finished_outputs``: stat, size, sha256);
* ``rows``:  for scale, what a reuse reads anyway: the catalog's items and the relevance stage's conversations,
  parsed into records (the later stages need them, whatever the check costs).

It prints seconds per GiB of each, and the ratios check / read and check / rows. The page cache is warm (the
files were just written or read): a cold cache makes both ``read`` and ``check`` wait on the disk alike. Last, it
changes one byte in the middle of the largest output, keeping its size and mtime, and fails unless the check
finds it (the byte is put back after).

Usage:
  python benchmarks/stage_reuse.py                      # 20,000 candidate conversations (~0.1 GiB); seconds
  python benchmarks/stage_reuse.py --conversations 200000 --items 60000 --shards 64   # ~1 GiB, a full build
  python benchmarks/stage_reuse.py --dir /tmp/reuse --rounds 5     # keeps the workdir; reruns reuse it
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

import orjson

from reddit_amazon.build import _finished_outputs, _read_conversations, _read_items, _reddit_outputs, _stamp
from reddit_amazon.files import DamagedFileError
from reddit_amazon.schema import Conversation, Item, Turn

#: Of the Reddit stage's candidates, the share the catalog join keeps and the share the relevance filter keeps.
CATALOG_KEPT, RELEVANCE_KEPT = 0.9, 0.25
GIB = 2**30


def _vocabulary(rng: random.Random, size: int = 5_000) -> list[str]:
    return ["".join(rng.choices("etaoinshrdlcumwfgypbvk", k=rng.randint(1, 9))) for _ in range(size)]


def _text(rng: random.Random, words: list[str], mean_words: int) -> str:
    return " ".join(rng.choices(words, k=max(3, int(rng.expovariate(1 / mean_words)))))


def _asin(rng: random.Random) -> str:
    return "B0" + "".join(rng.choices("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", k=8))


def _conversation(rng: random.Random, words: list[str], asins: list[str], number: int, domain: str) -> Conversation:
    thread = f"t{number:07x}"
    turns = [Turn(kind="submission", id=thread, author=f"u_{rng.getrandbits(64):016x}",
                  text=_text(rng, words, 80), created_utc=1_600_000_000 + number)]
    turns += [Turn(kind="comment", id=f"c{number:07x}{i}", author=f"u_{rng.getrandbits(64):016x}",
                   text=_text(rng, words, 50), created_utc=1_600_000_100 + number)
              for i in range(min(8, int(rng.expovariate(1 / 1.7))))]
    gt = rng.sample(asins, rng.choice((1, 1, 1, 2)))
    return Conversation(example_id=f"g{number:07x}", domain=domain, thread_id=thread, subreddit="femalefashionadvice",
                        created_utc=turns[0].created_utc, turns=turns, context_items=[],
                        gt_text=f"[this one](https://www.amazon.com/dp/{gt[0]}) {_text(rng, words, 40)}",
                        gt_items=gt, gt_comment_id=f"g{number:07x}")


def _item(rng: random.Random, words: list[str], asin: str) -> Item:
    return Item(item_id=asin, domain=rng.choice(("beauty", "fashion", "home")), parent_asin=asin,
                title=_text(rng, words, 18), store=_text(rng, words, 2), main_category="AMAZON FASHION",
                categories=["Clothing, Shoes & Jewelry", "Women", "Clothing", "Dresses"],
                features=[_text(rng, words, 20) for _ in range(rng.randint(2, 7))],
                description=_text(rng, words, 120),
                details=json.dumps({"Brand": _text(rng, words, 2), "Material": _text(rng, words, 3),
                                    "Date First Available": "March 3, 2021", "Item model number": asin}),
                image_urls=[f"https://m.media-amazon.com/images/I/{asin}._SL1500_.jpg"])


def _write_jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as out:
        for row in rows:
            out.write(orjson.dumps(row) + b"\n")


def make_workdir(workdir: Path, conversations: int, items: int, shards: int, seed: int = 0) -> None:
    """The three stamped stages' folders, as a build leaves them (a finished ``stage.json`` in each)."""
    rng = random.Random(seed)
    words, asins = _vocabulary(rng), [_asin(rng) for _ in range(items)]
    candidates = [_conversation(rng, words, asins, number, "") for number in range(conversations)]
    reddit = workdir / "reddit"
    for shard in range(shards):
        _write_jsonl(reddit / "conversations" / f"part-{shard:05d}.jsonl",
                     (c.to_row() for c in candidates[shard::shards]))
    (reddit / "funnel.json").write_text(json.dumps({"threads_rebuilt": conversations}))
    _stamp(reddit, "reddit", _reddit_outputs(reddit))
    for conversation in candidates:
        conversation.domain = rng.choice(("beauty", "fashion", "home"))
    joined = candidates[:int(conversations * CATALOG_KEPT)]
    _write_jsonl(workdir / "catalog" / "conversations.jsonl", (c.to_row() for c in joined))
    _write_jsonl(workdir / "catalog" / "items.jsonl", (_item(rng, words, asin).to_row() for asin in asins))
    (workdir / "catalog" / "report.json").write_text(json.dumps({"report": {}, "funnel": []}))
    _stamp(workdir / "catalog", "catalog", _outputs(workdir)["catalog"])
    _write_jsonl(workdir / "relevance" / "conversations.jsonl",
                 (c.to_row() for c in joined[:int(conversations * RELEVANCE_KEPT)]))
    (workdir / "relevance" / "report.json").write_text(json.dumps({"report": {}, "funnel": []}))
    _stamp(workdir / "relevance", "relevance", _outputs(workdir)["relevance"])


def _outputs(workdir: Path) -> dict[str, list[Path]]:
    """Each stage's stamped outputs, as the build lists them."""
    return {"reddit": _reddit_outputs(workdir / "reddit"),
            "catalog": [workdir / "catalog" / name for name in ("conversations.jsonl", "items.jsonl", "report.json")],
            "relevance": [workdir / "relevance" / name for name in ("conversations.jsonl", "report.json")]}


def read_once(paths: list[Path]) -> None:
    for path in paths:
        with open(path, "rb", buffering=0) as handle:
            while handle.read(1 << 20):
                pass


def check_stamps(workdir: Path) -> None:
    for stage, outputs in _outputs(workdir).items():
        if _finished_outputs(workdir / stage, stage, outputs) is None:
            raise SystemExit(f"{workdir / stage}: its stamp does not vouch for its outputs: delete --dir's folder")


def edit_is_found(workdir: Path, path: Path) -> bool:
    """Whether the check finds one byte of ``path`` changed in place (its size and mtime kept)."""
    stat, offset = path.stat(), path.stat().st_size // 2
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 1]))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    try:
        check_stamps(workdir)
    except DamagedFileError:
        return True
    finally:
        with open(path, "r+b") as handle:
            handle.seek(offset)
            handle.write(byte)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    return False


def read_rows(workdir: Path) -> None:
    _read_items(workdir / "catalog" / "items.jsonl")
    _read_conversations(workdir / "relevance" / "conversations.jsonl", require_domain=True)


def _timed(function, *args) -> float:
    started = time.perf_counter()
    function(*args)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=int, default=20_000, help="the Reddit stage's candidates")
    parser.add_argument("--items", type=int, default=6_000, help="the catalog's items")
    parser.add_argument("--shards", type=int, default=16, help="the Reddit stage's shards (it writes up to 256)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved measurement rounds (median reported)")
    parser.add_argument("--dir", type=Path, help="workdir to write (kept; an existing one of this script is reused)")
    args = parser.parse_args()
    if args.conversations < 1 or args.items < 2 or args.shards < 1 or args.rounds < 1:
        parser.error("--conversations, --shards and --rounds must be at least 1, --items at least 2")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.dir or Path(tmp) / "work"
        if not (workdir / "relevance" / "stage.json").is_file():
            started = time.perf_counter()
            make_workdir(workdir, args.conversations, args.items, args.shards)
            print(f"wrote {workdir} in {time.perf_counter() - started:.1f} s")
        files = [path for outputs in _outputs(workdir).values() for path in outputs]
        stamped = sum(path.stat().st_size for path in files) / GIB
        parsed = sum((workdir / name).stat().st_size for name in ("catalog/items.jsonl",
                                                                   "relevance/conversations.jsonl")) / GIB
        print(f"{len(files)} stamped outputs, {stamped * 1024:,.1f} MiB; "
              f"rows parsed on reuse: {parsed * 1024:,.1f} MiB")
        read_once(files)  # the page cache warm for every round alike
        read_rows(workdir)  # and the modules the parsing imports on first use loaded
        rounds = []
        for number in range(1, args.rounds + 1):
            measured = {"read": _timed(read_once, files), "check": _timed(check_stamps, workdir),
                        "rows": _timed(read_rows, workdir)}
            rounds.append(measured)
            print(f"round {number}: " + ", ".join(f"{name} {seconds:.3f} s" for name, seconds in measured.items()))
        largest = max(files, key=lambda path: path.stat().st_size)
        if not edit_is_found(workdir, largest):
            raise SystemExit(f"{largest}: one byte changed (same size and mtime), and the check did not find it")
        print(f"one byte changed in {largest.relative_to(workdir)} (same size and mtime): found")
    median = {name: statistics.median(r[name] for r in rounds) for name in rounds[0]}
    print(f"read  (cat-like, the floor): {median['read']:.3f} s = {median['read'] / stamped:.2f} s/GiB")
    print(f"check (the stamps):          {median['check']:.3f} s = {median['check'] / stamped:.2f} s/GiB")
    print(f"rows  (parsed on reuse):     {median['rows']:.3f} s = {median['rows'] / parsed:.2f} s/GiB of those files")
    print(f"ratio check / read: {statistics.median(r['check'] / r['read'] for r in rounds):.2f}x; "
          f"check / rows: {statistics.median(r['check'] / r['rows'] for r in rounds):.2f}x")


if __name__ == "__main__":
    main()
