"""Harness overhead of `benchmark run` vs just iterating the dataset (target: at most 2x).

On a synthetic dataset (default 10,000 records over three domains, 2,000 items per domain with
images), times, in the same process:

* iterate: ``datasets.load_dataset`` of each domain's split + iterating every row as a dict;
* harness: ``benchmark.runner.run`` with a no-op plugin (load, build examples, parse, score, write
  predictions.jsonl and results.json), with and without the 1,000-sample bootstrap CIs.

Optionally (``--sbert-items N``) encodes an N-item catalog with the real SBERT model twice through the
embedding cache and reports how many texts each pass encoded (the second must be 0).

    python benchmarks/harness_overhead.py
    python benchmarks/harness_overhead.py --records 10000 --sbert-items 20000
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import tempfile
import time
from pathlib import Path


class NoOp:
    batch_size = 512

    def recommend(self, examples):
        return ["" for _ in examples]


def _iterate(dataset: Path, domains: list[str]) -> int:
    import datasets

    count = 0
    for domain in domains:
        for _row in datasets.load_dataset(str(dataset), domain, split="test"):
            count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--items-per-domain", type=int, default=2_000)
    parser.add_argument("--repeats", type=int, default=3, help="best of N for each timing")
    parser.add_argument("--sbert-items", type=int, default=0, help="also time SBERT encoding of an N-item catalog")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="harness-overhead-"))
    atexit.register(shutil.rmtree, work, True)  # the dataset, its caches and the run folder
    os.environ.setdefault("HF_HOME", str(work / "hf"))  # a fresh datasets cache, like a first run
    from benchmark.runner import RunConfig, run
    from benchmark.synthetic import make_synthetic_dataset

    per_domain = -(-args.records // 3)
    dataset = make_synthetic_dataset(work / "ds", records_per_domain=per_domain,
                                     items_per_domain=args.items_per_domain)
    domains = ["beauty", "fashion", "home"]
    records = _iterate(dataset, domains)  # warm: Parquet -> Arrow cache conversion is not what we measure

    def best(fn) -> float:
        times = []
        for _ in range(args.repeats):
            began = time.perf_counter()
            fn()
            times.append(time.perf_counter() - began)
        return min(times)

    iterate_s = best(lambda: _iterate(dataset, domains))
    timings = {}
    for label, samples in (("harness (no CIs)", 0), ("harness (1000-sample CIs)", 1000)):
        config = RunConfig(model="noop", dataset=str(dataset), bootstrap_samples=samples)
        timings[label] = best(lambda config=config: run(config, work / "run", overwrite=True, recommender=NoOp(),
                                                        progress=False))

    print(f"records: {records}  (items per domain: {args.items_per_domain}, with images)")
    print(f"{'iterate dataset':28} {iterate_s:8.3f} s  {iterate_s / records * 1e6:8.1f} us/record")
    for label, seconds in timings.items():
        print(f"{label:28} {seconds:8.3f} s  {seconds / records * 1e6:8.1f} us/record  "
              f"ratio {seconds / iterate_s:5.2f}x (target <= 2x)")

    if args.sbert_items:
        from benchmark.retrieval import get_retriever

        texts = [f"{title} #{i}" for i, title in enumerate(
            f"Item {i % 997} {['red', 'blue', 'green'][i % 3]} {['lamp', 'mug', 'rug'][i % 7 % 3]}"
            for i in range(args.sbert_items))]
        items = list(zip((f"B{i:09d}" for i in range(len(texts))), texts))
        queries = [f"<submission>looking for item {i} in red</submission>\n" for i in range(100)]
        for attempt in ("cold cache", "warm cache"):
            retriever = get_retriever("sbert", cache_dir=work / "emb")
            began = time.perf_counter()
            retriever.top_k(queries, items, k=10)
            print(f"sbert top-10, {len(items)} items x {len(queries)} queries, {attempt}: "
                  f"{time.perf_counter() - began:7.2f} s, texts encoded: {retriever.cache.computed}")


if __name__ == "__main__":
    main()
