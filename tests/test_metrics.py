"""Parsing and counting rules of the reference evaluation, and the bootstrap machinery."""

from __future__ import annotations

import math
import time
from fractions import Fraction

import numpy as np
import pytest

from benchmark.metrics import (
    Outcome,
    bootstrap_intervals,
    paired_difference,
    parse_prediction,
    ratios,
    score,
    summarize_by_domain,
)


@pytest.mark.parametrize("output, expected", [
    ("B07XJ8C8F5", "B07XJ8C8F5"),
    ("I recommend B07XJ8C8F5.", "B07XJ8C8F5"),
    ("ID: B07XJ8C8F5: Red lipstick", "B07XJ8C8F5"),
    ("first B000000001 then B000000002", "B000000001"),
    ("0060188782", None),  # all-digit (ISBN-10 style) ASINs: never parsed, as in the reference
    ("try 080442957X then B07XJ8C8F5", "B07XJ8C8F5"),
    ("XB07XJ8C8F5", None),  # no word boundary before B
    ("B07XJ8C8F5X", None),  # 11 characters
    ("b07xj8c8f5", None),  # the reference is case-sensitive
    ("A07XJ8C8F5", None),  # letters but not starting with B
    ("B07XJ8C8F", None),
    ("B07XJ8C8F5_", None),  # "_" is a word character: no boundary
    ("12345678901", None),
    ("", None),
    ("call 555-123-4567 or B060188782", "B060188782"),  # a phone number is not an ASIN
])
def test_parse_prediction_first_asin_shaped_token(output, expected):
    assert parse_prediction(output) == expected


def test_hr_counts_each_gt_item_and_vr_counts_records():
    candidates = ["B000000001", "B000000002"]
    outcomes = [
        score("B000000001", ["B000000001", "B000000009"], candidates),  # 1 hit of 2 pairs, valid
        score("B000000002", ["B000000001"], candidates),  # miss, valid
        score(None, ["B000000002"], candidates),  # unparsable: miss, invalid
        score("B000000009", ["B000000009"], candidates),  # hit outside the candidates: hit, invalid
    ]
    metrics = ratios(outcomes)
    assert metrics["hr@1"].value == pytest.approx(2 / 5)
    assert metrics["vr"].value == pytest.approx(2 / 4)
    assert "recall@5" not in metrics


def test_a_gt_item_listed_twice_is_two_pairs_and_a_hit_on_it_two_hits():
    """As the reference evaluation counts (49 records of the authors' validation sets list a gt item twice)."""
    candidates = ["B000000001", "B000000002"]
    outcomes = [score("B000000001", ["B000000001", "B000000001"], candidates),
                score("B000000002", ["B000000001", "B000000001"], candidates)]
    assert [(o.pairs, o.hits) for o in outcomes] == [(2, 2), (2, 0)]
    assert ratios(outcomes)["hr@1"].value == pytest.approx(2 / 4)


def test_ranking_metrics_per_gt_pair():
    ranking = [f"B00000000{i}" for i in range(10)]
    outcome = score(ranking[0], ["B000000002", "B000000007"], ranking, ranking)
    assert outcome.recall == (1, 2)  # k = 5, 10
    assert outcome.ndcg[0] == pytest.approx(1 / math.log2(4))
    assert outcome.ndcg[1] == pytest.approx(1 / math.log2(4) + 1 / math.log2(9))
    metrics = ratios([outcome])
    assert metrics["recall@5"].value == pytest.approx(0.5)
    assert metrics["recall@10"].value == pytest.approx(1.0)


def test_an_ndcg_summary_keeps_its_fractional_numerator():
    ranking = [f"B00000000{i}" for i in range(10)]
    summary = summarize_by_domain(["home"], [score(ranking[0], ["B000000002"], ranking, ranking)], samples=0)
    assert summary["ndcg@5"]["all"]["numerator"] == pytest.approx(1 / math.log2(4))
    assert summary["ndcg@5"]["all"]["value"] == pytest.approx(1 / math.log2(4))
    assert summary["recall@5"]["all"]["numerator"] == 1 and type(summary["recall@5"]["all"]["numerator"]) is int


def test_bootstrap_is_seeded_and_brackets_the_value():
    rng = np.random.default_rng(1)
    outcomes = [Outcome(pairs=1 + (i % 3 == 0), hits=int(rng.random() < 0.3), valid=bool(rng.random() < 0.9))
                for i in range(400)]
    hr = ratios(outcomes)["hr@1"]
    first = bootstrap_intervals({"hr@1": hr}, samples=500, seed=7)["hr@1"]
    assert first == bootstrap_intervals({"hr@1": hr}, samples=500, seed=7)["hr@1"]
    assert first != bootstrap_intervals({"hr@1": hr}, samples=500, seed=8)["hr@1"]
    low, high = first
    assert low < hr.value < high
    assert 0.02 < high - low < 0.15  # ~ 4 standard errors of a proportion over ~530 pairs


def test_summary_per_domain_and_overall():
    outcomes = [Outcome(1, 1, True), Outcome(2, 1, True), Outcome(1, 0, False)]
    metrics = summarize_by_domain(["beauty", "home", "home"], outcomes, samples=100, seed=0)
    assert metrics["hr@1"]["beauty"]["value"] == 1.0
    assert metrics["hr@1"]["home"]["value"] == pytest.approx(1 / 3)
    assert metrics["hr@1"]["all"]["value"] == pytest.approx(2 / 4)
    assert metrics["hr@1"]["all"]["numerator"] == 2 and metrics["hr@1"]["all"]["denominator"] == 4
    assert metrics["vr"]["all"]["value"] == pytest.approx(2 / 3)
    assert len(metrics["vr"]["all"]["ci95"]) == 2


def test_paired_difference_detects_a_better_run_and_not_an_identical_one():
    n = 300
    better = ratios([Outcome(1, int(i % 2 == 0), True) for i in range(n)])["hr@1"]
    worse = ratios([Outcome(1, int(i % 5 == 0), True) for i in range(n)])["hr@1"]
    diff = paired_difference("hr@1", "all", better, worse, samples=500, seed=0)
    assert diff.difference == pytest.approx(0.5 - 0.2)
    assert diff.ci95[0] > 0 and diff.p_value < 0.01
    same = paired_difference("hr@1", "all", better, better, samples=200, seed=0)
    assert same.difference == 0 and same.ci95 == (0.0, 0.0) and same.p_value == 1.0


def test_paired_difference_of_a_run_without_pairs_has_no_difference_not_a_crash():
    """A run whose records hold no (record, gt item) pairs has no HR@1: its difference is unknown. It raised
    IndexError (a percentile of no resamples) when only the second run had none."""
    scored = ratios([Outcome(1, i % 2, True) for i in range(10)])["hr@1"]
    unscored = ratios([Outcome(0, 0, True) for _ in range(10)])["hr@1"]
    for a, b in ((scored, unscored), (unscored, scored)):
        diff = paired_difference("hr@1", "all", a, b, samples=50, seed=0)
        assert diff.difference is None and diff.ci95 is None and diff.p_value is None
        assert {diff.a, diff.b} == {0.5, None}


def test_bootstrap_memory_stays_bounded_on_large_splits_with_the_same_intervals(monkeypatch):
    """100 resamples of a 1M-record split were drawn at once (~3 GB of index and count arrays)."""
    from benchmark import metrics

    n = 1_000_001  # odd: an odd-sized draw would shift the generator's stream
    rng = np.random.default_rng(5)
    ratios_ = {"hr@1": metrics.Ratio(rng.integers(0, 2, n).astype(np.float64), np.ones(n))}
    blocks = []
    counts = metrics._resample_counts
    monkeypatch.setattr(metrics, "_resample_counts", lambda idx: blocks.append(idx.size) or counts(idx))
    bounded = metrics.bootstrap_intervals(ratios_, samples=11, seed=2)
    assert max(blocks) <= 4_000_000 + n
    monkeypatch.setattr(metrics, "RESAMPLE_BLOCK_DRAWS", 10**12)
    assert metrics.bootstrap_intervals(ratios_, samples=11, seed=2) == bounded  # as 100-resample blocks gave


def test_ranking_cutoffs_count_the_top_k_only_and_a_repeated_item_at_its_first_place():
    ranking = [f"B00000000{i}" for i in range(10)]
    at_sixth = score(ranking[0], [ranking[5]], ranking, ranking)  # rank 6: outside the top 5, inside the top 10
    assert at_sixth.recall == (0, 1)
    assert at_sixth.ndcg == (0.0, pytest.approx(1 / math.log2(7)))
    repeated = [ranking[3], *ranking[:3], ranking[4], ranking[5], ranking[6], ranking[7], ranking[8], ranking[3]]
    first_place = score(repeated[0], [ranking[3]], ranking, repeated)  # first at rank 1, again at rank 10
    assert first_place.recall == (1, 1)
    assert first_place.ndcg == (pytest.approx(1.0), pytest.approx(1.0))


def _hits(rng, n, p):
    return ratios([Outcome(1, int(h), True) for h in rng.random(n) < p])["hr@1"]


def test_intervals_are_95_percent_wide():
    """Over 2000 records, percentile bootstrap intervals of a proportion and of a paired difference are as
    wide as the normal approximation's 95% intervals (a 90% one would be ~16% narrower)."""
    rng = np.random.default_rng(3)
    a, b = _hits(rng, 2000, 0.3), _hits(rng, 2000, 0.2)
    low, high = bootstrap_intervals({"hr@1": a}, samples=2000, seed=0)["hr@1"]
    p = a.value
    assert 0.9 < (high - low) / (2 * 1.959964 * math.sqrt(p * (1 - p) / 2000)) < 1.1
    diff = paired_difference("hr@1", "all", a, b, samples=2000, seed=0)
    per_record = a.numerators - b.numerators
    se = per_record.std(ddof=1) / math.sqrt(2000)
    assert 0.9 < (diff.ci95[1] - diff.ci95[0]) / (2 * 1.959964 * se) < 1.1


def test_every_record_can_be_drawn_by_the_bootstrap():
    for hit_at in range(3):  # a single hit, wherever it sits, is in some resamples and missing from others
        hr = ratios([Outcome(1, int(i == hit_at), True) for i in range(3)])["hr@1"]
        low, high = bootstrap_intervals({"hr@1": hr}, samples=200, seed=0)["hr@1"]
        assert low == 0.0 and high > 0.0


def test_paired_difference_is_antisymmetric_with_unequal_denominators():
    """Records with several gt items: each run's ratio is over its own pairs."""
    rng = np.random.default_rng(5)
    pairs = 1 + (rng.random(300) < 0.4)
    a = ratios([Outcome(int(n), int(rng.integers(0, n + 1)), True) for n in pairs])["hr@1"]
    b = ratios([Outcome(1, int(rng.random() < 0.3), True) for _ in pairs])["hr@1"]
    ab = paired_difference("hr@1", "all", a, b, samples=500, seed=0)
    ba = paired_difference("hr@1", "all", b, a, samples=500, seed=0)
    assert ab.difference == pytest.approx(a.value - b.value) == pytest.approx(-ba.difference)
    assert ab.ci95 == (pytest.approx(-ba.ci95[1]), pytest.approx(-ba.ci95[0]))
    assert ab.ci95[0] < ab.difference < ab.ci95[1]


def test_intervals_resample_records_not_their_gt_pairs():
    """A record with several gt items is one unit of the bootstrap (docs/benchmark.md): its pairs share one
    prediction, so they are drawn together. Here each record has 1 or 6 gt items and one hit at most; the intervals
    are as wide as the delta-method 95% interval of a ratio of per-record sums, computed here from the records.
    Resampling the (record, gt item) pairs, each holding its record's share of the hits, makes them ~23% narrower."""
    rng = np.random.default_rng(11)
    n = 2000
    pairs = np.where(rng.random(n) < 0.5, 6, 1)
    a = ratios([Outcome(int(p), int(h), True) for p, h in zip(pairs, rng.random(n) < 0.5, strict=True)])["hr@1"]
    b = ratios([Outcome(int(p), int(h), True) for p, h in zip(pairs, rng.random(n) < 0.3, strict=True)])["hr@1"]

    def delta_method_width(numerators: np.ndarray) -> float:
        # ratio R = sum(y) / sum(x) over records: se = sqrt(sum((y - R x)^2) / (n (n - 1))) * n / sum(x)
        residuals = numerators - numerators.sum() / pairs.sum() * pairs
        return 2 * 1.959964 * math.sqrt((residuals ** 2).sum() / (n * (n - 1))) * n / pairs.sum()

    low, high = bootstrap_intervals({"hr@1": a}, samples=2000, seed=0)["hr@1"]
    assert 0.9 < (high - low) / delta_method_width(a.numerators) < 1.1
    diff = paired_difference("hr@1", "all", a, b, samples=2000, seed=0)
    assert 0.9 < (diff.ci95[1] - diff.ci95[0]) / delta_method_width(a.numerators - b.numerators) < 1.1


def test_summaries_use_the_seed_they_are_given():
    rng = np.random.default_rng(2)
    outcomes = [Outcome(1, int(rng.random() < 0.4), bool(rng.random() < 0.8)) for _ in range(200)]
    domains = ["beauty"] * 200
    first = summarize_by_domain(domains, outcomes, samples=300, seed=1)
    assert first == summarize_by_domain(domains, outcomes, samples=300, seed=1)
    assert first["hr@1"]["all"]["ci95"] != summarize_by_domain(domains, outcomes, samples=300, seed=2)["hr@1"]["all"]["ci95"]


def test_mcnemar_exact_p_matches_the_binomial_tail_counted_by_hand():
    # VR: B valid where A is not in 7 records, A where B is not in 1, the other 50 agree.
    # p = 2 * P(X <= 1), X ~ Binomial(8, 1/2) = 2 * (1 + 8) / 256.
    a = [Outcome(1, 0, False)] * 7 + [Outcome(1, 0, True)] + [Outcome(1, 0, True)] * 50
    b = [Outcome(1, 0, True)] * 7 + [Outcome(1, 0, False)] + [Outcome(1, 0, True)] * 50
    vr = paired_difference("vr", "all", ratios(a)["vr"], ratios(b)["vr"], 200, 0)
    assert (vr.exact.a_better, vr.exact.b_better) == (1, 7)
    assert vr.exact.p_value == 18 / 256
    # HR@1: a record with two gt items counts once, on the sign of its difference in hits (2 vs 1: A better).
    a = [Outcome(2, 2, True)] + [Outcome(1, 1, True)] * 29 + [Outcome(1, 0, True)] * 16
    b = [Outcome(2, 1, True)] + [Outcome(1, 0, True)] * 29 + [Outcome(1, 1, True)] * 16
    hr1 = paired_difference("hr@1", "all", ratios(a)["hr@1"], ratios(b)["hr@1"], 200, 0)
    assert (hr1.exact.a_better, hr1.exact.b_better) == (30, 16)
    assert hr1.exact.p_value == pytest.approx(2 * sum(math.comb(46, i) for i in range(17)) / 2 ** 46, rel=1e-12)
    assert hr1.exact.p_value == pytest.approx(0.0540760, abs=5e-7)  # scipy.stats.binomtest(16, 46).pvalue
    # No discordant record: nothing tells the runs apart; ranking metrics get no McNemar test.
    same = paired_difference("hr@1", "all", ratios(a)["hr@1"], ratios(a)["hr@1"], 200, 0)
    assert (same.exact.a_better, same.exact.b_better, same.exact.p_value) == (0, 0, 1.0)
    ranked = [Outcome(1, 1, True, recall=(1, 1), ndcg=(1.0, 1.0))]
    assert paired_difference("recall@5", "all", ratios(ranked)["recall@5"], ratios(ranked)["recall@5"]).exact is None


def test_mcnemar_exact_p_is_exact_far_in_the_tail_of_many_discordant_records():
    from benchmark.metrics import exact_mcnemar

    # 10,000 discordant records, 4,800 favouring A: the tail is below what a float sum of terms could hold
    # exactly, and is still a positive probability.
    a = np.array([1.0] * 4800 + [0.0] * 5200)
    test = exact_mcnemar(a, 1 - a)
    # Python's ints are exact; each C(n, i+1) from C(n, i) (a math.comb per term took seconds)
    term, tail = 1, 0
    for i in range(4801):
        tail += term
        term = term * (10_000 - i) // (i + 1)
    expected = 2 * tail / 2 ** 10_000
    assert (test.a_better, test.b_better) == (4800, 5200) and test.p_value == pytest.approx(expected, rel=1e-9)
    assert 0 < test.p_value < 1e-4


@pytest.mark.parametrize("n", [1, 2, 5, 16, 17, 50, 333, 1_000, 1_001, 2_001, 10_000, 30_000])
def test_summed_binomial_tail_matches_the_exact_integer_sum_for_every_split(n):
    """Above EXACT_TAIL_MAX_N the tail is summed in floats from P(X = k) in logs; it must give the exact integer
    sum's value (the exact sum took 1.2 s at 100,000 discordant records and 2 min at 10^6)."""
    from benchmark.metrics import _log_summed_half_binomial_lower_tail

    spread = math.isqrt(n)
    splits = {0, 1, n // 10, n // 3, n // 2 - 4 * spread, n // 2 - spread, n // 2 - 1, n // 2}
    term, tail = 1, 0
    for k in range(n // 2 + 1):
        tail += term  # sum of C(n, i) for i <= k, in exact integers
        term = term * (n - k) // (k + 1)
        if k in splits and (exact := Fraction(tail, 2 ** n)) > Fraction(1, 10 ** 300):  # below: too few digits
            assert math.exp(_log_summed_half_binomial_lower_tail(k, n)) == pytest.approx(float(exact), rel=1e-9), (n, k)


def test_mcnemar_exact_p_keeps_its_value_in_the_subnormal_range():
    """The tail was rounded to a double and then doubled: where the p-value is subnormal (about 1,050 to 1,200
    discordant records all but a few one way) that lost its digits (up to 100% off), and made 0.0 of 17 p-values
    between 1,001 and 1,199 discordant records that are a positive double (5e-324)."""
    from benchmark.metrics import exact_mcnemar

    smallest = math.ulp(0.0)  # the spacing of the subnormal doubles
    for n, k in [(1075, 0), (1175, 13), (1195, 16), (1110, 5), (1050, 2), (1001, 0)]:
        a = np.array([1.0] * k + [0.0] * (n - k))
        expected = float(Fraction(2 * sum(math.comb(n, i) for i in range(k + 1)), 2 ** n))  # Python's ints: exact
        got = exact_mcnemar(a, 1 - a).p_value
        assert got > 0 and abs(got - expected) <= 1e-9 * expected + smallest, (n, k, got, expected)


def test_mcnemar_p_below_the_smallest_double_is_not_shown_as_0():
    """5,000 to 0 discordant records: p = 2^-4999, below the smallest double, is 0.0 as a float; compare showed
    it as "0.0e+00", a p-value of 0. It says "< 4.9e-324"."""
    from benchmark.compare import Comparison, to_markdown
    from benchmark.metrics import exact_mcnemar, ratios

    a = np.array([1.0] * 5000)
    test = exact_mcnemar(a, 1 - a)
    assert (test.a_better, test.b_better, test.p_value) == (5000, 0, 0.0)
    moderate = exact_mcnemar(np.array([1.0] * 30 + [0.0] * 16), np.array([0.0] * 30 + [1.0] * 16))
    assert moderate.p_value == pytest.approx(0.0540760, abs=5e-7)  # scipy.stats.binomtest(16, 46).pvalue
    outcomes = [Outcome(1, 1, True)] * 5000
    missed = [Outcome(1, 0, True)] * 5000
    difference = paired_difference("hr@1", "all", ratios(outcomes)["hr@1"], ratios(missed)["hr@1"], 10, 0)
    table = to_markdown(Comparison([difference], 5000, 0, 0, []), "a", "b")
    row = next(line for line in table.splitlines() if line.startswith("| hr@1 "))
    assert row.endswith("| 5000 | 0 | < 4.9e-324 |"), row


def test_mcnemar_exact_p_of_a_million_discordant_records():
    from benchmark.metrics import exact_mcnemar

    m = 500_000
    a = np.array([1.0] * (m - 1) + [0.0] * (m + 1))
    started = time.perf_counter()
    test = exact_mcnemar(a, 1 - a)
    assert time.perf_counter() - started < 10  # the exact integer sum took about 2 minutes
    # 2 P(X <= m - 1) = 1 - C(2m, m) / 4^m, and C(2m, m) / 4^m = (1 - 1/(8m) + 1/(128m^2) - ...) / sqrt(pi m)
    centre = (1 - 1 / (8 * m) + 1 / (128 * m ** 2)) / math.sqrt(math.pi * m)
    assert (test.a_better, test.b_better) == (m - 1, m + 1) and test.p_value == pytest.approx(1 - centre, rel=1e-8)
    # a tail below the smallest float (2^-10^6) is 0.0, as the exact sum rounds it
    assert exact_mcnemar(np.ones(10 ** 6), np.zeros(10 ** 6)).p_value == 0.0
