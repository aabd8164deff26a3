"""child ASIN -> parent ASIN from review files: throughput and memory of the build's scan.

Amazon Reviews 2023 review files are large (Home_and_Kitchen: tens of millions of rows) while the
build needs the mapping of only the few thousand ASINs Reddit links. ``read_parent_map`` streams
the file and keeps only the wanted mappings, so its memory must not grow with the file. This script
writes a synthetic review file (realistic row sizes), then reports, in the same process:

* throughput of the scan, relative to a bare loop that only reads the lines (the I/O floor);
* peak memory growth of the scan (target: bounded, under 8 MiB whatever the file's size: the reader holds two
  1 MiB blocks and the lines split from one; run ``--rows`` 30000 and 600000 to see it not grow).

    python benchmarks/catalog_parent_map.py
    python benchmarks/catalog_parent_map.py --rows 2000000 --wanted 5000
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
import tracemalloc
from pathlib import Path

import orjson

from reddit_amazon.catalog import read_parent_map

#: The scan holds the reader's two 1 MiB blocks and the lines split from one, whatever the file's size.
MEMORY_BOUND_MIB = 8


def asin(rng: random.Random) -> str:
    return "B0" + "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") for _ in range(8))


def write_reviews(path: Path, rows: int, seed: int = 0) -> dict[str, str]:
    rng = random.Random(seed)
    parents = [asin(rng) for _ in range(max(1, rows // 20))]
    mapping: dict[str, str] = {}
    with open(path, "wb") as out:
        for _ in range(rows):
            parent = rng.choice(parents)
            child = asin(rng) if rng.random() < 0.5 else parent
            mapping.setdefault(child, parent)
            out.write(orjson.dumps({
                "rating": 5.0, "title": "Great value",
                "text": "Exactly as pictured, the colour is lovely and it arrived quickly. " * rng.randint(1, 6),
                "images": [], "asin": child, "parent_asin": parent, "user_id": "AE" + "X" * 26,
                "timestamp": 1_600_000_000_000, "helpful_vote": rng.randint(0, 9), "verified_purchase": True,
            }) + b"\n")
    return mapping


def read_lines_only(path: Path) -> int:
    with open(path, "rb") as handle:
        return sum(1 for _ in handle)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--wanted", type=int, default=2_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "Home_and_Kitchen.jsonl"
        mapping = write_reviews(path, args.rows)
        if args.wanted > len(mapping):
            parser.error(f"--wanted {args.wanted} is more than the {len(mapping):,} distinct ASINs of "
                         f"--rows {args.rows}: lower --wanted or raise --rows")
        wanted = set(random.Random(1).sample(sorted(mapping), args.wanted))
        size = path.stat().st_size

        started = time.perf_counter()
        read_lines_only(path)
        floor_s = time.perf_counter() - started
        started = time.perf_counter()
        result = read_parent_map([str(path)], wanted)
        scan_s = time.perf_counter() - started
        assert result.parents == {a: mapping[a] for a in wanted}, "wrong mapping"

        tracemalloc.start()  # a separate pass: tracing slows Python code down several times
        read_parent_map([str(path)], wanted)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()

    mib = size / 2**20
    print(f"{args.rows:,} review rows ({mib:.0f} MiB), {len(wanted):,} wanted ASINs")
    print(f"read lines only : {floor_s:6.2f} s ({mib / floor_s:6.1f} MiB/s)")
    print(f"build scan      : {scan_s:6.2f} s ({mib / scan_s:6.1f} MiB/s), {scan_s / floor_s:.1f}x the I/O floor")
    print(f"peak memory     : +{peak / 2**20:.2f} MiB ({100 * peak / size:.2f}% of the file; target: under "
          f"{MEMORY_BOUND_MIB} MiB whatever the file's size)")


if __name__ == "__main__":
    main()
