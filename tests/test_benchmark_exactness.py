"""HR@1 / VR on the authors' real validation sets equal a count made here straight from their JSONL files."""

from __future__ import annotations

import json
import re

import pytest
from core_install import import_extra  # tests/

from benchmark.runner import RunConfig, run

RELEASE_DOMAINS = {"all_beauty": "beauty", "amazon_fashion": "fashion", "amazon_home": "home"}
RELEASE_COLUMNS = {"sbert": "candidates_st", "openai_large": "candidates_gpt_large"}


class Nth:
    """Names the candidate at ``index`` inside chatter, so the harness has to parse it out."""

    batch_size = 512

    def __init__(self, index: int) -> None:
        self.index = index

    def recommend(self, examples):
        return [f"Sure! ID: {e.candidates[self.index].item_id} - enjoy" for e in examples]


@pytest.fixture(scope="module")
def imported(lavic_release, tmp_path_factory):
    from reddit_amazon.lavic_release import import_release

    out = tmp_path_factory.mktemp("lavic") / "reddit-amazon"
    import_release(lavic_release, out)
    return out


REFERENCE_PATTERN = re.compile(r"\bB[A-Z0-9]{9}\b")  # the authors' evaluation code, written out here again


@pytest.mark.parametrize("candidates, index", [("sbert", 0), ("openai_large", 0), ("sbert", 9)])
def test_hr_at_1_and_vr_equal_an_independent_count(lavic_release, imported, tmp_path, candidates, index):
    results = run(RunConfig(model="nth", dataset=str(imported), split="validation", candidates=candidates,
                            bootstrap_samples=0), tmp_path, recommender=Nth(index), progress=False)
    column = RELEASE_COLUMNS[candidates]
    total_hits = total_pairs = total_records = 0
    for folder, domain in RELEASE_DOMAINS.items():
        records = [json.loads(line) for line in (lavic_release / folder / "valid.jsonl").read_text().splitlines()]
        hits = valid = 0
        for record in records:
            match = REFERENCE_PATTERN.search(f"Sure! ID: {record[column][index]} - enjoy")
            parsed = match.group(0) if match else None
            hits += sum(gt == parsed for gt in record["gt_items"])
            valid += parsed in record[column]
        pairs = sum(len(record["gt_items"]) for record in records)
        within = sum(gt in record[column] for record in records for gt in record["gt_items"])
        assert results["counts"][domain] == {"records": len(records), "gt_pairs": pairs, "gt_in_candidates": within,
                                             "hits": hits, "valid": valid}
        assert results["metrics"]["hr@1"][domain]["value"] == hits / pairs
        assert results["metrics"]["vr"][domain]["value"] == valid / len(records)
        total_hits, total_pairs, total_records = total_hits + hits, total_pairs + pairs, total_records + len(records)
    assert results["metrics"]["hr@1"]["all"]["value"] == total_hits / total_pairs
    assert total_records == 758 + 797 + 368


def test_a_run_on_items_without_titles_says_so(imported, tmp_path, caplog):
    """The release has no metadata for its validation items: bm25/sbert/LLM baselines would silently score
    as 'first candidate'; the run must warn and record it."""
    with caplog.at_level("WARNING", logger="benchmark.runner"):
        results = run(RunConfig(model="nth", dataset=str(imported), split="validation", domain="home",
                                bootstrap_samples=0), tmp_path, recommender=Nth(0), progress=False)
    assert results["items_without_title"]["items"] == results["items_without_title"]["of"] > 0
    assert any("no title" in record.getMessage() for record in caplog.records)


def test_a_retrieval_over_items_without_titles_says_so(imported, tmp_path, caplog):
    """`benchmark retrieve` over the imported release ranks items that all have the same (empty) text: its HR@1 is
    the catalog order's, and it must warn and record it as `benchmark run` does."""
    import_extra("bm25s")
    from benchmark.retrieve import RetrieveConfig, retrieve

    with caplog.at_level("WARNING", logger="benchmark.retrieve"):
        results = retrieve(RetrieveConfig(retriever="bm25", dataset=str(imported), split="validation", domain="home",
                                          bootstrap_samples=0), tmp_path / "bm25", progress=False)
    assert results["items_without_text"]["items"] == results["items_without_text"]["of"] > 0
    assert any("have no title" in record.getMessage() for record in caplog.records)
