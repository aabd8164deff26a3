"""Parsing model outputs and scoring them: HR@1, VR, Recall@k, NDCG@k, bootstrap CIs, paired differences.

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

import numpy as np

#: An ASIN-shaped token: ``B`` + 9 capitals/digits (the authors' ``\bB[A-Z0-9]{9}\b``), or an
#: ISBN-10-style all-digit ASIN (10 digits, or 9 digits + check character ``X``).
PREDICTION_PATTERN = re.compile(r"\b(?:B[A-Z0-9]{9}|[0-9]{9}[0-9X])\b")

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
    position = {}
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


def _resample_indices(n: int, samples: int, seed: int, chunk: int = 100) -> Iterable[np.ndarray]:
    rng = np.random.default_rng(seed)
    for start in range(0, samples, chunk):
        yield rng.integers(0, n, size=(min(chunk, samples - start), n))


def _bootstrap_values(ratio: Ratio, samples: int, seed: int) -> np.ndarray:
    values = []
    for idx in _resample_indices(len(ratio.numerators), samples, seed):
        num = ratio.numerators[idx].sum(axis=1)
        den = ratio.denominators[idx].sum(axis=1)
        values.append(np.divide(num, den, out=np.full_like(num, np.nan), where=den > 0))
    return np.concatenate(values)


def confidence_interval(ratio: Ratio, samples: int = DEFAULT_BOOTSTRAP_SAMPLES, seed: int = DEFAULT_SEED,
                        level: float = 0.95) -> tuple[float, float] | None:
    """Percentile bootstrap interval over records; None when there is nothing to resample."""
    if len(ratio.numerators) == 0 or not ratio.denominators.sum() or samples <= 0:
        return None
    values = _bootstrap_values(ratio, samples, seed)
    values = values[~np.isnan(values)]
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def summarize(outcomes: Sequence[Outcome], samples: int = DEFAULT_BOOTSTRAP_SAMPLES,
              seed: int = DEFAULT_SEED) -> dict[str, dict]:
    """``{metric: {"value", "ci95", "numerator", "denominator"}}`` for one group of records."""
    summary = {}
    for name, ratio in ratios(outcomes).items():
        ci = confidence_interval(ratio, samples, seed)
        summary[name] = {
            "value": ratio.value,
            "ci95": list(ci) if ci else None,
            "numerator": _plain_number(ratio.numerators.sum()),
            "denominator": _plain_number(ratio.denominators.sum()),
        }
    return summary


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


def paired_difference(metric: str, group: str, a: Ratio, b: Ratio, samples: int = DEFAULT_BOOTSTRAP_SAMPLES,
                      seed: int = DEFAULT_SEED) -> PairedDifference:
    """Paired bootstrap of ``a - b`` over the same records (the same resampled indices for both)."""
    n = len(a.numerators)
    if n != len(b.numerators):
        raise ValueError("paired difference needs the same records in both runs")
    if n == 0 or not a.denominators.sum() or samples <= 0:
        return PairedDifference(metric, group, n, a.value, b.value, None, None, None)
    diffs = []
    for idx in _resample_indices(n, samples, seed):
        da, db = a.denominators[idx].sum(axis=1), b.denominators[idx].sum(axis=1)
        ok = (da > 0) & (db > 0)
        va = np.divide(a.numerators[idx].sum(axis=1), da, out=np.zeros_like(da), where=ok)
        vb = np.divide(b.numerators[idx].sum(axis=1), db, out=np.zeros_like(db), where=ok)
        diffs.append((va - vb)[ok])
    values = np.concatenate(diffs)
    low, high = np.percentile(values, [2.5, 97.5])
    p_value = min(1.0, 2 * min(float((values <= 0).mean()), float((values >= 0).mean())))
    return PairedDifference(metric, group, n, a.value, b.value, a.value - b.value, (float(low), float(high)), p_value)


def outcome_from_mapping(row: Mapping) -> Outcome:
    """Rebuild an :class:`Outcome` from a ``predictions.jsonl`` row."""
    return Outcome(pairs=row["gt_pairs"], hits=row["hits"], valid=row["valid"],
                   recall=tuple(row.get("recall", ())), ndcg=tuple(row.get("ndcg", ())))
