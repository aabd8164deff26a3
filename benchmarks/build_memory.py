"""Peak memory and time of ``reddit-amazon build`` as its inputs grow: per stage, at 1x, 4x and 16x.

Real inputs are tens of GB of Reddit comments and millions of Amazon items, while the dataset built from them is
small: only the threads that link products and the items they link are needed. So the build's memory must follow
the *linked* threads and items, not the size of the dumps or the catalog. This script writes synthetic inputs
from the bundled sample's world (``reddit_amazon.sample.world``: the same thread shapes, URL forms and Amazon
Reviews 2023 rows) at each scale, scaled on three axes independently:

* ``threads``: threads that link products;
* ``comments``: comments without links added to each of those threads;
* ``background``: comments of threads that link nothing (the bulk of a real dump);
* ``items``: Amazon items nobody links (metadata and review rows of the size real ones have).

``--grow`` names the axes a scale multiplies (default: threads, background and items, the dumps and the catalog
growing together; ``comments`` makes the linked threads longer); the others keep their 1x size, so e.g.
``--grow background,items`` grows only what the build must read but not keep.

Each build runs in a fresh process (``--no-filter --no-images --retrievers bm25``: offline, no model to load,
every stage but the two skipped ones does its work). The script samples the RSS of the build's process tree
every 20 ms, splitting it by the stage the build last announced on stderr (``1/5 reddit`` ...), and prints, per
scale, the peak RSS of each stage and the wall time, then the ratios peak_RSS(16x) / peak_RSS(1x) and
time(16x) / time(1x).

Target: the peak RSS grows far slower than the inputs (a ratio well under 16 for 16x the input; the linked
threads and items grow 16x too, so some growth is the output's).

Usage:
  python benchmarks/build_memory.py                     # 1,000 linked threads at 1x; 1x, 4x, 16x (~4 min on 2 CPUs)
  python benchmarks/build_memory.py --grow background,items    # only what is read but not kept grows
  python benchmarks/build_memory.py --grow comments --dir /tmp/mem   # longer threads; keeps the inputs
"""

from __future__ import annotations

import argparse
import gzip
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson

from reddit_amazon.dumps import write_zst_ndjson
from reddit_amazon.sample.make_inputs import CATEGORY_FILES
from reddit_amazon.sample.world import asin_for, make_world

AXES = ("threads", "comments", "background", "items")
STAGES = ("start", "reddit", "catalog", "relevance", "images", "assemble")
STAGE_LINE = re.compile(r"([1-5])/5 ")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


def _filler(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(("really", "love", "this", "colour", "looks", "great", "thanks", "same", "with",
                                "mine", "the", "cheaper", "one", "washes", "well")) for _ in range(words))


def _reddit(folder: Path, threads: int, comments: int, background: int, seed: int) -> tuple[dict[str, int], Any]:
    """The world's threads (a third per domain), each with ``comments`` more link-less replies, and
    ``background`` link-less comments in threads that link nothing, as two dumps."""
    world = make_world(seed, threads_per_domain=max(1, threads // 3))
    rng = random.Random(seed)

    def all_comments():
        for comment in world.comments:
            yield comment
        for submission in world.submissions:
            for k in range(comments):
                yield {"id": f"x{submission['id']}{k:x}", "author": "user_000001", "body": _filler(rng, 25),
                       "link_id": f"t3_{submission['id']}", "parent_id": f"t3_{submission['id']}",
                       "subreddit": submission["subreddit"], "created_utc": int(submission["created_utc"]) + 60,
                       "score": 1}
        for n in range(background):
            yield {"id": f"b{n:x}", "author": "user_000002", "body": _filler(rng, 30),
                   "link_id": f"t3_bg{n // 20:x}", "parent_id": f"t3_bg{n // 20:x}", "subreddit": "AskReddit",
                   "created_utc": 1_640_000_000 + n, "score": 1}

    write_zst_ndjson(folder / "bench_submissions.zst", world.submissions, frame_bytes=64 * 2**20)
    write_zst_ndjson(folder / "bench_comments.zst", all_comments(), frame_bytes=64 * 2**20)
    return {"linked_threads": len(world.submissions), "world_items": len(world.items)}, world


def _amazon(folder: Path, world, unlinked_items: int, seed: int) -> None:
    """The world's catalog plus ``unlinked_items`` items of the world's categories nobody links (~2 KB of metadata
    and two review rows each, as Amazon Reviews 2023 rows are), one metadata and one review file per category."""
    rng = random.Random(seed)
    categories = sorted(CATEGORY_FILES)
    meta = {c: open(folder / f"meta_{CATEGORY_FILES[c]}.jsonl", "wb") for c in categories}
    reviews = {c: gzip.open(folder / f"{CATEGORY_FILES[c]}.jsonl.gz", "wb", compresslevel=1) for c in categories}
    try:
        for item in world.items:
            category = item.metadata["main_category"]
            meta[category].write(orjson.dumps(item.metadata) + b"\n")
            for asin in (item.parent_asin, *item.child_asins):
                reviews[category].write(orjson.dumps({"rating": 5.0, "asin": asin, "parent_asin": item.parent_asin,
                                                      "text": "Lovely.", "user_id": "A1"}) + b"\n")
        template = world.items[0].metadata
        for n in range(unlinked_items):
            category = categories[n % len(categories)]
            parent = asin_for("unlinked", seed, n)
            row = {**template, "main_category": category, "parent_asin": parent, "title": _filler(rng, 12),
                   "features": [_filler(rng, 20) for _ in range(5)], "description": [_filler(rng, 80)]}
            meta[category].write(orjson.dumps(row) + b"\n")
            for asin in (parent, asin_for("unlinked-child", seed, n)):
                reviews[category].write(orjson.dumps({
                    "rating": 4.0, "title": "Good", "text": _filler(rng, 40), "images": [], "asin": asin,
                    "parent_asin": parent, "user_id": "A2", "timestamp": 1_600_000_000_000, "helpful_vote": 0,
                    "verified_purchase": True}) + b"\n")
    finally:
        for handle in [*meta.values(), *reviews.values()]:
            handle.close()


def write_inputs(folder: Path, threads: int, comments: int, background: int, items: int, seed: int = 0) -> dict:
    """Inputs of one scale under ``folder`` (``reddit/``, ``amazon/``), reused when a previous run wrote them."""
    done = folder / "inputs.json"
    wanted = {"threads": threads, "comments": comments, "background": background, "items": items, "seed": seed}
    if done.exists() and orjson.loads(done.read_bytes()).get("made") == wanted:
        return orjson.loads(done.read_bytes())
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "reddit").mkdir(parents=True)
    (folder / "amazon").mkdir()
    counts, world = _reddit(folder / "reddit", threads, comments, background, seed)
    _amazon(folder / "amazon", world, items, seed)
    sizes = {name: sum(p.stat().st_size for p in (folder / name).iterdir()) for name in ("reddit", "amazon")}
    record = {"made": wanted, **counts, "bytes": sizes}
    done.write_bytes(orjson.dumps(record))
    return record


def _tree_rss_kib(root: int) -> int:
    """Resident memory of ``root`` and all its descendants (KiB), from /proc."""
    children: dict[int, list[int]] = defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            children[int(stat.rsplit(")", 1)[1].split()[1])].append(int(entry))
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_KIB
        except OSError:
            pass
        todo.extend(children.get(pid, ()))
    return total


def measure_build(inputs: Path, out: Path) -> dict:
    """Run one build in a fresh process; its wall time, the peak RSS of its process tree per stage (MiB)."""
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(out.with_name(out.name + ".work"), ignore_errors=True)
    command = [sys.executable, "-m", "reddit_amazon.cli", "build", "--inputs", str(inputs / "reddit"),
               "--meta", str(inputs / "amazon"), "--reviews", str(inputs / "amazon"), "--out", str(out),
               "--no-filter", "--no-images", "--retrievers", "bm25", "--quiet"]
    started = time.perf_counter()
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    stage = {"now": "start"}
    log: list[str] = []

    def follow() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            log.append(line)
            found = STAGE_LINE.search(line)
            if found:
                stage["now"] = STAGES[int(found.group(1))]

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    peaks: dict[str, int] = defaultdict(int)
    while process.poll() is None:
        current = stage["now"]
        peaks[current] = max(peaks[current], _tree_rss_kib(process.pid))
        time.sleep(0.02)
    seconds = time.perf_counter() - started
    reader.join()
    if process.returncode:
        raise RuntimeError(f"build failed ({process.returncode}):\n{''.join(log[-30:])}")
    return {"seconds": seconds, "peak_mib": {s: peaks[s] / 1024 for s in STAGES if s in peaks}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1000, help="threads linking products at 1x")
    parser.add_argument("--comments", type=int, default=20, help="link-less comments added to each linked thread")
    parser.add_argument("--background", type=int, default=100_000, help="comments of threads that link nothing")
    parser.add_argument("--items", type=int, default=20_000, help="Amazon items nobody links")
    parser.add_argument("--scales", default="1,4,16", help="comma-separated multiples of the 1x input")
    parser.add_argument("--grow", default="threads,background,items",
                        help="the axes a scale multiplies (comma-separated)")
    parser.add_argument("--dir", type=Path, default=None, help="where to write inputs and builds (default: temp)")
    args = parser.parse_args()
    folder = args.dir or Path(tempfile.mkdtemp(prefix="build-memory-"))
    scales = [int(s) for s in args.scales.split(",")]
    grow = set(args.grow.split(","))
    if grow - set(AXES):
        parser.error(f"--grow: unknown axes {sorted(grow - set(AXES))}; known: {', '.join(AXES)}")
    results = {}
    for scale in scales:
        size = {axis: getattr(args, axis) * (scale if axis in grow else 1) for axis in AXES}
        name = "-".join(f"{axis}{size[axis]}" for axis in AXES)
        inputs = write_inputs(folder / f"inputs-{name}", **size)
        measured = measure_build(folder / f"inputs-{name}", folder / f"out-{scale}x")
        results[scale] = measured
        mib = {name: size / 2**20 for name, size in inputs["bytes"].items()}
        print(f"{scale:>3}x: {inputs['linked_threads']:,} linked threads (+{size['comments']} comments each), "
              f"{size['background']:,} other comments, {size['items']:,} unlinked items; "
              f"reddit {mib['reddit']:.1f} MiB and amazon {mib['amazon']:.1f} MiB on disk; "
              f"build {measured['seconds']:.1f} s, peak RSS "
              + ", ".join(f"{stage} {peak:.0f}" for stage, peak in measured["peak_mib"].items()) + " MiB",
              flush=True)
    first, last = results[scales[0]], results[scales[-1]]
    growth = scales[-1] // scales[0]
    print(f"peak RSS {growth}x / 1x: {max(last['peak_mib'].values()) / max(first['peak_mib'].values()):.2f} "
          f"(input {growth}x); per stage: " + ", ".join(
              f"{stage} {last['peak_mib'][stage] / first['peak_mib'][stage]:.2f}"
              for stage in STAGES if stage in first["peak_mib"] and stage in last["peak_mib"]))
    print(f"time {growth}x / 1x: {last['seconds'] / first['seconds']:.2f}")
    if args.dir is None:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
