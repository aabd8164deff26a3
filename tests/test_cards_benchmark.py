"""Benchmark card: definitions taken from the harness itself, every candidate set described, no placeholders."""

from __future__ import annotations

import re

from benchmark.metrics import PREDICTION_PATTERN, parse_prediction
from benchmark.registry import BUILTIN, ENTRY_POINT_GROUP
from cards.benchmark_card import render_benchmark_card
from tests.test_cards_dataset import (
    HOSTILE_MARKDOWN,
    assert_no_placeholders,
    assert_shown_as_text,
    markdown_table_after,
)


def test_candidate_sets_are_described_one_row_each():
    card = render_benchmark_card(["sbert", "openai_large", "bm25", "clip_title", "sbert"])
    rows = {row["candidate set"]: row for row in markdown_table_after(card, "### Candidate sets", "candidate set")}
    assert list(rows) == ["sbert", "openai_large", "bm25", "clip_title"]
    assert "Table 3" in rows["sbert"]["how it was retrieved"]
    assert "text-embedding-3-large" in rows["openai_large"]["how it was retrieved"]
    assert "Table 5" in rows["openai_large"]["how it was retrieved"]
    assert "not one of the harness's built-in retrievers" in rows["clip_title"]["how it was retrieved"]
    assert rows["bm25"]["column"] == "`candidates_bm25`"
    assert_no_placeholders(card)


def test_parsing_rule_in_the_card_is_the_harness_rule():
    card = render_benchmark_card(["sbert"])
    pattern = re.search(r"matched by `([^`]+)`", card).group(1)
    assert pattern == PREDICTION_PATTERN.pattern
    for output in ["I recommend B0ABCDEFGH.", "0316769177 is it", "b0abcdefgh or B0ABCDEFG", "ID: 031676917X"]:
        match = re.search(pattern, output)
        assert (match.group(0) if match else None) == parse_prediction(output)


def test_metric_definitions_and_submission_steps_are_present():
    card = render_benchmark_card(["sbert"])
    assert "**HR@1** = hits / (record, gt item) pairs" in card
    assert "**VR** (valid ratio) = records whose parsed ID is one of that record's 10 candidates / records" in card
    assert f'[project.entry-points."{ENTRY_POINT_GROUP}"]' in card
    assert all(f"`{name}`" in card for name in BUILTIN)
    for heading in ["### Task", "### Candidate sets", "### Metrics", "### Submitting a recommender"]:
        assert heading in card


def test_no_candidate_set_is_said_plainly():
    card = render_benchmark_card([])
    assert "No candidate set was named for this report." in card
    assert_no_placeholders(card)


def test_a_hostile_candidate_set_name_is_shown_as_text():
    """A run's candidate set name (any column a results.json names) renders as text, in Markdown and in the HTML
    report: no link, image or emphasis of its own."""
    assert_shown_as_text(render_benchmark_card(["sbert", HOSTILE_MARKDOWN]), render_benchmark_card(["sbert", "plain"]))
