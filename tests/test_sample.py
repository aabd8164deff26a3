"""The bundled sample dataset: loadable on a fresh install, consistent, and reproducible from its script."""

import datasets

from reddit_amazon.dataset_folder import read_manifest
from reddit_amazon.lavic_release import _has_mojibake
from reddit_amazon.sample import load_sample, sample_dataset_path
from reddit_amazon.schema import DOMAINS, SPLITS, Conversation, Item


def test_one_call_accessor_loads_every_config():
    for domain in DOMAINS:
        splits = load_sample(domain)
        assert set(splits) == set(SPLITS) and all(len(splits[s]) > 0 for s in SPLITS)
    items = load_sample("items")
    assert set(items) == set(DOMAINS)


def test_sample_records_are_valid_and_reference_known_items():
    path = sample_dataset_path()
    for domain in DOMAINS:
        catalog = {row["item_id"]: row for row in datasets.load_dataset(str(path), "items", split=domain)}
        assert all(row["image"].size[0] <= 128 for row in catalog.values() if row["image"] is not None)
        assert all(row["image_error"] for row in catalog.values() if row["image"] is None)
        Item.from_row(next(iter(catalog.values())))
        threads = {}
        for split, rows in load_sample(domain).items():
            for index, row in enumerate(rows):
                record = Conversation.from_row(row, where=f"sample {domain}/{split}[{index}]")
                assert set(record.gt_items) <= set(catalog)
                assert set(record.candidates["sbert"]) <= set(catalog)
                assert threads.setdefault(record.thread_id, split) == split  # no thread in two splits


def test_sample_has_no_mojibake_and_declares_its_candidate_sets():
    for domain in DOMAINS:
        for rows in load_sample(domain).values():
            assert not any(_has_mojibake(row["context"]) or _has_mojibake(row["gt_text"]) for row in rows)
    manifest = read_manifest(sample_dataset_path())
    assert manifest["candidate_sets"] == ["sbert"]


def test_regenerated_inputs_leave_no_lock_file_in_the_image_store(tmp_path):
    # `python -m reddit_amazon.sample.make_inputs` (docs/build.md) writes into the package: nothing but inputs
    from reddit_amazon.images import STORE_LOCK
    from reddit_amazon.sample import SAMPLE_DIR
    from reddit_amazon.sample.make_inputs import write_inputs

    write_inputs(tmp_path / "inputs")
    written = {p.relative_to(tmp_path / "inputs") for p in (tmp_path / "inputs").rglob("*") if p.is_file()}
    shipped = {p.relative_to(SAMPLE_DIR / "inputs") for p in (SAMPLE_DIR / "inputs").rglob("*") if p.is_file()}
    assert not (tmp_path / "inputs" / "images" / STORE_LOCK).exists()
    assert written == shipped


def test_regenerated_answer_cache_opens_read_only_as_shipped(tmp_path):
    """The bundled answers are read in place (``mode=ro``), possibly from a read-only site-packages: a file left
    in WAL mode would need -wal / -shm files beside it, which SQLite then creates, or fails to."""
    import sqlite3

    from reddit_amazon.build import SAMPLE_RELEVANCE_CACHE
    from reddit_amazon.sample.make_inputs import write_inputs

    def rows(path):
        db = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
        try:
            return db.execute("SELECT * FROM answers ORDER BY key").fetchall()
        finally:
            db.close()

    write_inputs(tmp_path / "inputs")
    regenerated = tmp_path / "inputs" / SAMPLE_RELEVANCE_CACHE.name
    for path in (regenerated, SAMPLE_RELEVANCE_CACHE):
        assert path.read_bytes()[18:20] == b"\x01\x01", path  # the header's rollback journal, not WAL
    assert rows(regenerated) == rows(SAMPLE_RELEVANCE_CACHE)
    assert sorted(p.name for p in regenerated.parent.glob("relevance-cache*")) == [regenerated.name]


def test_the_readme_filter_example_finds_its_item_in_the_bundled_sample():
    """README's `filters=` example, run on the sample that `reddit-amazon build` writes: a filter that leaves the split
    empty raises 'corresponds to no data' instead of loading nothing."""
    import re
    from pathlib import Path

    from reddit_amazon.dataset_folder import load

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    example = re.search(r'load_dataset\("reddit-amazon", "items", split="(\w+)", filters=\[\("item_id", "==", "(\w+)"\)\]',
                        readme)
    assert example, "README.md has no items filters= example"
    split, asin = example.groups()
    rows = load("items", split=split, filters=[("item_id", "==", asin)], verification_mode="no_checks")
    assert rows["item_id"] == [asin]
