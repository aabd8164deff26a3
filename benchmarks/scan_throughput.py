"""Link-scan throughput against raw zstd decompression, measured in the same run.

Generates two realistic RC-style comment dumps (NDJSON with the usual metadata fields, Zipf-
distributed words, ~0.1% comments linking Amazon products, a few more mentioning Amazon without a
link), compressed as a stream at zstd level 3 with a 2 GiB window and long-distance matching
(like ``zstd -3 --long=31``). Then it times:

* ``zstd -dc --long=31 FILE > /dev/null`` for each file (the floor),
* the scan stage (:class:`reddit_amazon.pipeline.ScanDumpsStep` on datatrove's
  ``LocalPipelineExecutor``, timed inside a fresh process) with 1 worker over both files, with
  2 workers over both files, and with 1 worker plus the "a.co/" prefilter pass that short-link
  resolution adds;
* for information, the second pass (:class:`reddit_amazon.pipeline.CollectThreadsStep`) that
  gathers the threads the scan found.

Targets: scan on one worker >= 0.5x the raw decompression throughput; 2 workers >= 1.8x 1 worker.
One worker reuses its decompressor (window pages already mapped) for the second file, so the script
also prints the 2-worker time against the two files scanned in turn by fresh processes, each cold
like the ``zstd`` runs: the same work without that head start. All of these run in interleaved
rounds and each ratio is the median of its per-round values: on a shared machine a noisy minute
then slows both sides of a ratio instead of one.

Usage:
  python benchmarks/scan_throughput.py                 # 2 files of 1 GiB uncompressed each
  python benchmarks/scan_throughput.py --size-mb 200   # quicker
  python benchmarks/scan_throughput.py --dir /tmp/scan --rounds 5   # keeps the dumps; reruns reuse them
"""

from __future__ import annotations

import argparse
import itertools
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import orjson

from reddit_amazon.dumps import write_zst_ndjson


def _vocabulary(rng: random.Random, size: int = 20_000) -> list[str]:
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    weights = [12.7, 9.1, 8.2, 7.5, 7.0, 6.7, 6.3, 6.1, 6.0, 4.3, 4.0, 2.8, 2.8,
               2.4, 2.4, 2.2, 2.0, 2.0, 1.9, 1.5, 1.0, 0.8, 0.2, 0.2, 0.1, 0.1]  # English letter frequencies
    return ["".join(rng.choices(letters, weights, k=rng.randint(1, 10))) for _ in range(size)]


def _base36(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        number, rest = divmod(number, 36)
        out = digits[rest] + out
        if not number:
            return out


def _comments(count: int, seed: int):
    rng = random.Random(seed)
    words = _vocabulary(rng)
    cumulative_zipf = list(itertools.accumulate(1 / (rank + 1) for rank in range(len(words))))
    subreddits = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(4, 14))) for _ in range(5_000)]
    base_id = seed * 10**9
    for i in range(count):
        body = " ".join(rng.choices(words, cum_weights=cumulative_zipf, k=min(2_000, int(rng.paretovariate(1.6) * 12))))
        roll = rng.random()
        if roll < 0.001:
            asin = "B0" + "".join(rng.choices("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", k=8))
            body += f" [this one](https://www.amazon.com/Some-Product-Name/dp/{asin}/ref=cm_sw_r_cp_api)"
        elif roll < 0.004:
            body += " I got mine on Amazon."
        created = 1_600_000_000 + i
        yield {
            "all_awardings": [],
            "archived": False,
            "associated_award": None,
            "author": f"user_{rng.randint(0, 3_000_000):x}",
            "author_flair_background_color": None,
            "author_flair_css_class": None,
            "author_flair_text": None,
            "author_fullname": "t2_" + _base36(rng.randint(0, 2**40)),
            "author_patreon_flair": False,
            "body": body,
            "can_gild": True,
            "collapsed": False,
            "controversiality": 0,
            "created_utc": created,
            "distinguished": None,
            "edited": False,
            "gilded": 0,
            "id": _base36(base_id + i),
            "is_submitter": rng.random() < 0.1,
            "link_id": "t3_" + _base36(rng.randint(0, 2**32)),
            "locked": False,
            "no_follow": True,
            "parent_id": "t1_" + _base36(base_id + rng.randint(0, i + 1)),
            "permalink": f"/r/x/comments/{_base36(rng.randint(0, 2**32))}/slug/{_base36(base_id + i)}/",
            "retrieved_on": created + rng.randint(0, 10**5),
            "score": int(rng.paretovariate(1.2)),
            "send_replies": True,
            "stickied": False,
            "subreddit": rng.choice(subreddits),
            "subreddit_id": "t5_" + _base36(rng.randint(0, 2**24)),
            "total_awards_received": 0,
        }


def _make_dump(path: Path, size_mb: int, seed: int) -> int:
    """Write a dump of about ``size_mb`` MiB uncompressed, in 256 MiB frames, streamed; return its size."""
    target = size_mb * 2**20
    written = 0

    def lines():
        nonlocal written
        for record in _comments(10**12, seed):
            line = orjson.dumps(record)
            written += len(line) + 1
            yield line
            if written >= target:
                return

    write_zst_ndjson(path, lines(), frame_bytes=256 * 2**20, long_distance_matching=True)
    return written


def _dumps(files: list[Path], size_mb: int) -> int:
    """Write the benchmark dumps, or reuse those a previous run left in the same folder; return their
    total uncompressed size."""
    record = files[0].with_name("dumps.json")
    if record.exists() and all(path.exists() for path in files):
        made = orjson.loads(record.read_bytes())
        if made["size_mb"] == size_mb and made["compressed"] == [path.stat().st_size for path in files]:
            print(f"reusing the dumps in {files[0].parent}")
            return made["uncompressed"]
    started = time.perf_counter()
    with ProcessPoolExecutor(len(files)) as pool:
        uncompressed = sum(pool.map(_make_dump, files, [size_mb] * len(files), range(1, len(files) + 1)))
    for path in files:
        print(f"wrote {path.name}: {path.stat().st_size / 2**20:,.0f} MB compressed")
    print(f"{uncompressed / 2**30:.2f} GiB uncompressed in {len(files)} files ({time.perf_counter() - started:.0f} s)")
    record.write_bytes(orjson.dumps(
        {"size_mb": size_mb, "compressed": [path.stat().st_size for path in files], "uncompressed": uncompressed}))
    return uncompressed


def _timed(command) -> float:
    started = time.perf_counter()
    command()
    return time.perf_counter() - started


_STAGE_CHILD = """
import sys, time
from datatrove.executor import LocalPipelineExecutor
from reddit_amazon.pipeline import CollectThreadsStep, ScanDumpsStep
from reddit_amazon.stage_executor import LOCAL_START_METHOD
stage, out, workers, option, *files = sys.argv[1:]
if stage == "scan":
    step = ScanDumpsStep(files, out + "/out", progress=False, short_links=option == "short-links")
else:
    step = CollectThreadsStep(files, out + "/out", progress=False, needed_path=option, buckets=4)
executor = LocalPipelineExecutor(
    [step], tasks=len(files), workers=int(workers), logging_dir=out + "/logs", start_method=LOCAL_START_METHOD
)
started = time.perf_counter()
executor.run()
print(time.perf_counter() - started)
"""


def _stage_seconds(stage: str, files: list[Path], workers: int, work: Path, option: str) -> float:
    """Seconds a Reddit-stage step takes on datatrove's local executor, timed inside a fresh process.

    Imports are not counted, and a fresh process starts with a fresh zstd window, exactly like the
    ``zstd`` command the scan is compared with.
    """
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    completed = subprocess.run(
        [sys.executable, "-c", _STAGE_CHILD, stage, str(work), str(workers), option, *map(str, files)],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(completed.stdout.strip().splitlines()[-1])


def _scan(files: list[Path], workers: int, work: Path, short_links: bool = False) -> float:
    return _stage_seconds("scan", files, workers, work, "short-links" if short_links else "product-links")


def _collect(files: list[Path], scan_out: Path, work: Path) -> float:
    """Seconds the second pass takes over ``files`` for the threads the scan found, on 1 worker."""
    threads = {orjson.loads(line)["link_id"].removeprefix("t3_")
               for hits in scan_out.glob("*.hits.jsonl") for line in hits.read_bytes().splitlines()}
    needed = work.with_name(work.name + "-needed.txt")
    needed.write_text("\n".join(sorted(threads)) + "\n")
    return _stage_seconds("collect", files, 1, work, str(needed))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=1024, help="uncompressed MiB per file (2 files)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved measurement rounds (median reported)")
    parser.add_argument("--dir", type=Path, default=None, help="where to write the dumps (default: a temp dir)")
    args = parser.parse_args()
    folder = args.dir or Path(tempfile.mkdtemp(prefix="scan-throughput-"))
    folder.mkdir(parents=True, exist_ok=True)
    files = [folder / f"RC_2020-0{i + 1}.zst" for i in range(2)]
    uncompressed = _dumps(files, args.size_mb)

    def zstd_all() -> None:
        for path in files:
            subprocess.run(["zstd", "-dc", "--long=31", str(path)], stdout=subprocess.DEVNULL, check=True)

    def zstd_parallel() -> None:
        commands = [subprocess.Popen(["zstd", "-dc", "--long=31", str(p)], stdout=subprocess.DEVNULL) for p in files]
        if any(command.wait() for command in commands):
            raise RuntimeError("zstd failed")

    zstd_all()  # warm the page cache
    # Rounds interleave every measurement, so a noisy minute on a shared machine hits all of them
    # alike; each ratio is taken within a round and the median round is reported.
    rounds = []
    for round_number in range(1, args.rounds + 1):
        measured = {
            "zstd": _timed(zstd_all),
            "zstd_parallel": _timed(zstd_parallel),
            "one": _scan(files, 1, folder / "scan1"),
            "two": _scan(files, 2, folder / "scan2"),
            "in_turn": sum(_scan([path], 1, folder / "scan-one") for path in files),
        }
        rounds.append(measured)
        print(f"round {round_number}: zstd {measured['zstd']:.2f} s, two zstd at once {measured['zstd_parallel']:.2f} s, "
              f"scan 1 worker {measured['one']:.2f} s, 2 workers {measured['two']:.2f} s, "
              f"fresh scan per file in turn {measured['in_turn']:.2f} s", flush=True)
    with_a_co_s = min(_scan(files, 1, folder / "scan3", short_links=True) for _ in range(2))
    collect_s = min(_collect(files, folder / "scan1" / "out", folder / "collect") for _ in range(2))

    def ratio(numerator: str, denominator: str) -> str:
        values = sorted(measured[numerator] / measured[denominator] for measured in rounds)
        spread = f" (rounds: {values[0]:.2f}-{values[-1]:.2f}x)" if len(values) > 1 else ""
        return f"{statistics.median(values):.2f}x{spread}"

    mb = uncompressed / 2**20
    median = {key: statistics.median(measured[key] for measured in rounds) for key in rounds[0]}
    raw_s, one_s, two_s = median["zstd"], median["one"], median["two"]
    print(f"medians over {len(rounds)} rounds:")
    print(f"zstd -dc --long=31      : {raw_s:6.2f} s  {mb / raw_s:7.0f} MB/s")
    print(f"scan, 1 worker, 2 files : {one_s:6.2f} s  {mb / one_s:7.0f} MB/s")
    print(f"scan, 2 workers, 2 files: {two_s:6.2f} s  {mb / two_s:7.0f} MB/s")
    print(f"scan, 1 worker, + a.co/ : {with_a_co_s:6.2f} s  {mb / with_a_co_s:7.0f} MB/s  (short-link resolution on)")
    print(f"ratio scan(1 worker) / zstd : {ratio('zstd', 'one')}  (target >= 0.5x)")
    print(f"speed-up 2 workers / 1      : {ratio('one', 'two')}  (target >= 1.8x)")
    print(f"  the machine's own scaling : {ratio('zstd', 'zstd_parallel')}  (two zstd processes at once vs in turn)")
    print(f"  vs one fresh scan per file: {ratio('in_turn', 'two')}  (each file scanned cold in its own process, "
          f"in turn, as the zstd runs are)")
    print(f"ratio with a.co/ pass / zstd: {raw_s / with_a_co_s:.2f}x")
    print(f"second pass (collect the needed threads), 1 worker: {collect_s:.2f} s, {collect_s / one_s:.2f}x the scan's "
          f"time (no target)")
    if args.dir is None:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
