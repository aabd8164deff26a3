"""Parsing model outputs and scoring them: HR@1, VR, Recall@k, NDCG@k, bootstrap CIs, paired differences and
McNemar's exact test.

Counting follows the paper's reference evaluation:

* **HR@1** = hits / number of (record, ground-truth item) pairs. A record with several gt items is
  run once and counts once per gt item.
* **VR** = records whose parsed prediction is one of that record's candidates / number of records.
* **Recall@k / NDCG@k** (ranking plugins): per (record, gt item) pair, like HR@1.

Confidence intervals resample *records* (pairs of one record stay together), seeded, percentile method.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

#: An ASIN-shaped token exactly as the reference evaluation reads one: ``B`` + 9 capitals/digits. All-digit
#: (ISBN-10 style) ASINs are never parsed, as there: an answer naming one recommends nothing.
PREDICTION_PATTERN = re.compile(r"\bB[A-Z0-9]{9}\b")

RANKING_CUTOFFS: tuple[int, ...] = (5, 10)  # k=1 is HR@1 itself
OVERALL = "all"
DEFAULT_BOOTSTRAP_SAMPLES = 1000
DEFAULT_SEED = 0


def parse_prediction(output: str) -> str | None:
    """The first ASIN-shaped ID in a model's output, or None."""
    match = PREDICTION_PATTERN.search(output)
    return match.group(0) if match else None


@dataclass(frozen=True)
class Outcome:
    """How one record scored."""

    pairs: int  # number of gt items (each is one evaluation example)
    hits: int  # gt items equal to the parsed prediction
    valid: bool  # parsed prediction is one of the record's candidates
    recall: tuple[int, ...] = ()  # per RANKING_CUTOFFS: gt items within the top k (ranking plugins)
    ndcg: tuple[float, ...] = ()  # per RANKING_CUTOFFS: sum over gt items of 1/log2(rank+1) within the top k


def score(parsed: str | None, gt_items: Sequence[str], candidates: Sequence[str],
          ranking: Sequence[str] | None = None) -> Outcome:
    hits = sum(1 for gt in gt_items if parsed is not None and parsed == gt)
    valid = parsed is not None and parsed in candidates
    if ranking is None:
        return Outcome(pairs=len(gt_items), hits=hits, valid=valid)
    position: dict[str, int] = {}
    for index, item_id in enumerate(ranking):
        position.setdefault(item_id, index)
    recall, ndcg = [], []
    for k in RANKING_CUTOFFS:
        ranks = [position[gt] for gt in gt_items if gt in position and position[gt] < k]
        recall.append(len(ranks))
        ndcg.append(sum(1.0 / math.log2(r + 2) for r in ranks))
    return Outcome(pairs=len(gt_items), hits=hits, valid=valid, recall=tuple(recall), ndcg=tuple(ndcg))


@dataclass(frozen=True)
class Ratio:
    """A metric as a ratio of per-record sums, so records can be resampled as units."""

    numerators: np.ndarray
    denominators: np.ndarray

    @property
    def value(self) -> float | None:
        total = float(self.denominators.sum())
        return float(self.numerators.sum()) / total if total else None


def ratios(outcomes: Sequence[Outcome]) -> dict[str, Ratio]:
    """``hr@1``, ``vr`` and, when every outcome has a ranking, ``recall@k`` / ``ndcg@k``."""
    pairs = np.array([o.pairs for o in outcomes], dtype=np.float64)
    result = {
        "hr@1": Ratio(np.array([o.hits for o in outcomes], dtype=np.float64), pairs),
        "vr": Ratio(np.array([o.valid for o in outcomes], dtype=np.float64), np.ones(len(outcomes))),
    }
    if outcomes and all(o.recall for o in outcomes):
        for i, k in enumerate(RANKING_CUTOFFS):
            result[f"recall@{k}"] = Ratio(np.array([o.recall[i] for o in outcomes], dtype=np.float64), pairs)
            result[f"ndcg@{k}"] = Ratio(np.array([o.ndcg[i] for o in outcomes], dtype=np.float64), pairs)
    return result


#: Resampled draws (resamples x records) made at once: each costs ~32 bytes across the index, count and product
#: arrays, so a block stays near 128 MiB however many records a split has (100 resamples of 10M records: 32 GB).
RESAMPLE_BLOCK_DRAWS = 4_000_000


def _resample_indices(n: int, samples: int, seed: int, chunk: int = 100) -> Iterable[np.ndarray]:
    # An even number of rows per block: the generator then draws the same indices as 100-row blocks did
    # (an odd-sized call discards half a 64-bit word), so intervals stay as published.
    chunk = max(2, min(chunk, RESAMPLE_BLOCK_DRAWS // max(n, 1)) // 2 * 2)
    rng = np.random.default_rng(seed)
    for start in range(0, samples, chunk):
        yield rng.integers(0, n, size=(min(chunk, samples - start), n), dtype=np.int64)


def _resample_counts(idx: np.ndarray) -> np.ndarray:
    """How often each record is drawn in each resample (rows of ``idx``), as a float32 matrix for BLAS."""
    rows, n = idx.shape
    flat = (idx + (np.arange(rows) * n)[:, None]).ravel()
    return np.bincount(flat, minlength=rows * n).reshape(rows, n).astype(np.float32)


def _column_sums(counts: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """``counts @ columns`` without BLAS: OpenBLAS threads made this 10-100x slower on a busy machine,
    while a multiply-and-sum per column costs about 2 ms per 100 resamples of 10,000 records."""
    return np.stack([(counts * columns[:, j]).sum(axis=1) for j in range(columns.shape[1])], axis=1)


def _resampled_sums(columns: np.ndarray, samples: int, seed: int) -> np.ndarray:
    """Column sums of ``columns`` (one row per record) over ``samples`` seeded resamples of the records."""
    n = len(columns)
    return np.concatenate([_column_sums(_resample_counts(idx), columns) for idx in _resample_indices(n, samples, seed)])


def bootstrap_intervals(metrics: Mapping[str, Ratio], samples: int = DEFAULT_BOOTSTRAP_SAMPLES,
                        seed: int = DEFAULT_SEED) -> dict[str, tuple[float, float] | None]:
    """95% percentile bootstrap intervals over records, one shared set of resamples for all metrics.

    Every metric sees the same resampled records, so the interval of a metric does not depend on
    which other metrics are computed with it.
    """
    names = list(metrics)
    if not names:
        return {}
    n = len(metrics[names[0]].numerators)
    usable = [name for name in names if metrics[name].denominators.sum() > 0]
    intervals: dict[str, tuple[float, float] | None] = {name: None for name in names}
    if n == 0 or samples <= 0 or not usable:
        return intervals
    columns = np.column_stack([a for name in usable for a in (metrics[name].numerators, metrics[name].denominators)
                               ]).astype(np.float32)  # sums of counts stay exact in float32; NDCG's fractional
    # numerators are rounded to float32 (intervals move by ~1e-8, far below the resampling's own noise)
    sums = _resampled_sums(columns, samples, seed).astype(np.float64)  # the ratios are not: 1/3 must be 1/3
    tail = (1 - 0.95) / 2 * 100  # 2.500000000000002, not 2.5: kept so that published intervals stay the same
    for j, name in enumerate(usable):
        num, den = sums[:, 2 * j], sums[:, 2 * j + 1]
        values = num[den > 0] / den[den > 0]
        low, high = np.percentile(values, [tail, 100 - tail])
        intervals[name] = (float(low), float(high))
    return intervals


def summarize(outcomes: Sequence[Outcome], samples: int = DEFAULT_BOOTSTRAP_SAMPLES,
              seed: int = DEFAULT_SEED) -> dict[str, dict]:
    """``{metric: {"value", "ci95", "numerator", "denominator"}}`` for one group of records."""
    metrics = ratios(outcomes)
    intervals = bootstrap_intervals(metrics, samples, seed)
    return {
        name: {
            "value": ratio.value,
            "ci95": list(interval) if (interval := intervals[name]) else None,
            "numerator": _plain_number(ratio.numerators.sum()),
            "denominator": _plain_number(ratio.denominators.sum()),
        }
        for name, ratio in metrics.items()
    }


def _plain_number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else float(value)


def summarize_by_domain(domains: Sequence[str], outcomes: Sequence[Outcome],
                        samples: int = DEFAULT_BOOTSTRAP_SAMPLES, seed: int = DEFAULT_SEED) -> dict[str, dict]:
    """``{metric: {domain: {...}, "all": {...}}}`` (``all`` pools every record)."""
    groups: dict[str, list[Outcome]] = {}
    for domain, outcome in zip(domains, outcomes, strict=True):
        groups.setdefault(domain, []).append(outcome)
    groups[OVERALL] = list(outcomes)
    by_group = {group: summarize(members, samples, seed) for group, members in groups.items()}
    metrics: dict[str, dict] = {}
    for group, summary in by_group.items():
        for name, entry in summary.items():
            metrics.setdefault(name, {})[group] = entry
    return metrics


@dataclass(frozen=True)
class PairedDifference:
    metric: str
    group: str
    records: int
    a: float | None
    b: float | None
    difference: float | None  # a - b
    ci95: tuple[float, float] | None
    p_value: float | None  # two-sided, from the bootstrap distribution of the difference
    exact: ExactTest | None = None  # McNemar's exact test, for the per-record metrics hr@1 and vr


def paired_difference(metric: str, group: str, a: Ratio, b: Ratio, samples: int = DEFAULT_BOOTSTRAP_SAMPLES,
                      seed: int = DEFAULT_SEED) -> PairedDifference:
    """Paired bootstrap of ``a - b`` over the same records (the same resampled indices for both)."""
    n = len(a.numerators)
    if n != len(b.numerators):
        raise ValueError("paired difference needs the same records in both runs")
    exact = exact_mcnemar(a.numerators, b.numerators) if metric in EXACT_TEST_METRICS and n else None
    a_value, b_value = a.value, b.value
    if n == 0 or a_value is None or b_value is None or samples <= 0:  # None: no pairs to score in that run
        return PairedDifference(metric, group, n, a_value, b_value, None, None, None, exact)
    columns = np.column_stack([a.numerators, a.denominators, b.numerators, b.denominators]).astype(np.float32)
    sums = _resampled_sums(columns, samples, seed).astype(np.float64)
    ok = (sums[:, 1] > 0) & (sums[:, 3] > 0)
    values = sums[ok, 0] / sums[ok, 1] - sums[ok, 2] / sums[ok, 3]
    low, high = np.percentile(values, [2.5, 97.5])
    # Each tail counted with the observed sample added (Davison & Hinkley): p is never exactly 0, which
    # a finite number of resamples cannot show.
    tails = (int((values <= 0).sum()), int((values >= 0).sum()))
    p_value = min(1.0, 2 * (min(tails) + 1) / (len(values) + 1))
    return PairedDifference(metric, group, n, a_value, b_value, a_value - b_value, (float(low), float(high)), p_value,
                            exact)


#: Metrics whose records are compared by :func:`exact_mcnemar`: a record's count of hits (hr@1) or its validity (vr).
EXACT_TEST_METRICS = ("hr@1", "vr")


@dataclass(frozen=True)
class ExactTest:
    """McNemar's exact test of two runs over the same records."""

    a_better: int  # records where A scored more than B (more hits; valid where B is not)
    b_better: int
    p_value: float  # two-sided; 0.0 only where it is below the smallest double (5e-324), as 5,000 to 0 is


def exact_mcnemar(a: np.ndarray, b: np.ndarray) -> ExactTest:
    """McNemar's exact test of per-record scores ``a`` and ``b`` (same records, same order).

    Only the discordant records count: under the null hypothesis (neither run is better) each is as likely to
    favour A as B, so the number favouring A is Binomial(discordant, 1/2); the two-sided p-value doubles the
    smaller tail. For a record with several gt items (HR@1 counts each), the sign of its difference in hits
    decides, which is the sign test; for one gt item per record it is McNemar's test exactly. Unlike the
    bootstrap's p-value it holds its level with few discordant records (8 discordant records of 758 rejected a
    true null 9% of the time at p < 0.05 with the bootstrap, 1% with this test).
    """
    if len(a) != len(b):
        raise ValueError("McNemar's test needs the same records in both runs")
    a_better, b_better = int((a > b).sum()), int((a < b).sum())
    return ExactTest(a_better, b_better, two_sided_half_binomial_p(min(a_better, b_better), a_better + b_better))


#: Up to this many discordant records the tail is an exact integer sum (quadratic in n: 1.2 s at 100,000).
EXACT_TAIL_MAX_N = 1_000


def two_sided_half_binomial_p(k: int, n: int) -> float:
    """min(1, 2 P(X <= k)) for X ~ Binomial(n, 1/2) and 0 <= k <= n / 2, rounded to a double once: the doubling is
    done before the rounding, so a p-value in the subnormal range (n above ~1,000) keeps its value, where doubling
    the rounded tail made 0.0 of a positive double or lost its digits. Exact to float precision up to
    EXACT_TAIL_MAX_N, within about 1e-9 of it above (or one step of the subnormals), in linear time."""
    if n <= EXACT_TAIL_MAX_N:
        return float(min(Fraction(1), 2 * _exact_half_binomial_lower_tail(k, n)))
    return min(1.0, math.exp(math.log(2) + _log_summed_half_binomial_lower_tail(k, n)))


def _exact_half_binomial_lower_tail(k: int, n: int) -> Fraction:
    term, tail = 1, 0
    for i in range(k + 1):  # C(n, i), i <= k, in exact integers
        tail += term
        term = term * (n - i) // (i + 1)
    return Fraction(tail, 2 ** n)


def _log_summed_half_binomial_lower_tail(k: int, n: int) -> float:
    """The log of the tail, as log P(X = k) plus the log of the sum of P(X = i) / P(X = k) for i = k, k - 1, …:
    each term is the one before times i / (n - i + 1), so the sum stops once what is left (less than a geometric
    series) is below float precision. In logs, nothing underflows or overflows."""
    relative_sum, term = 0.0, 1.0
    for i in range(k, -1, -1):
        relative_sum += term
        ratio = i / (n - i + 1)
        term *= ratio
        if term <= relative_sum * 1e-17 * (1 - ratio):
            break
    return _log_half_binomial_pmf(k, n) + math.log(relative_sum)


def _log_half_binomial_pmf(k: int, n: int) -> float:
    """log(C(n, k) / 2^n), to about 1e-9 of the probability at n = 10^6 (lgamma's rounding): far finer than a
    p-value is read."""
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) - n * math.log(2)


def outcome_from_mapping(row: Mapping) -> Outcome:
    """Rebuild an :class:`Outcome` from a ``predictions.jsonl`` row."""
    return Outcome(pairs=row["gt_pairs"], hits=row["hits"], valid=row["valid"],
                   recall=tuple(row.get("recall", ())), ndcg=tuple(row.get("ndcg", ())))
