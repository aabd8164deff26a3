"""``benchmark compare RUN_A RUN_B``: paired bootstrap of the metric differences over shared records, and
McNemar's exact test of HR@1 and VR."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

from benchmark.metrics import (
    DEFAULT_BOOTSTRAP_SAMPLES,
    DEFAULT_SEED,
    OVERALL,
    PairedDifference,
    outcome_from_mapping,
    paired_difference,
    ratios,
)
from benchmark.report import dataset_key, is_number, read_results
from benchmark.runner import PREDICTIONS_FILE, RESULTS_FILE
from reddit_amazon.files import read_jsonl


@dataclass(frozen=True)
class Comparison:
    differences: list[PairedDifference]
    shared_records: int
    only_a: int
    only_b: int
    warnings: list[str]


def _load(run_dir: Path) -> tuple[dict, dict[tuple[str, str], dict]]:
    results_path, predictions_path = run_dir / RESULTS_FILE, run_dir / PREDICTIONS_FILE
    results = read_results(results_path) if results_path.is_file() else None
    if results is not None and results.get("kind") == "retrieval":
        raise ValueError(f"{run_dir}: a `benchmark retrieve` folder (a full-catalog ranking, no per-record "
                         "predictions) cannot be compared: `benchmark compare` takes two `benchmark run` folders; "
                         "list it beside runs with `benchmark report`, or compare runs of models over its candidate "
                         f"set (`benchmark run --model M --candidates {results.get('candidate_set_name') or 'NAME'}`)")
    if results is None or not predictions_path.is_file():
        raise FileNotFoundError(f"{run_dir}: needs a finished run ({RESULTS_FILE} and {PREDICTIONS_FILE})")
    rows = {(row["domain"], row["example_id"]): row for row in scored_predictions(predictions_path)}
    return results, rows


def scored_predictions(path: Path) -> list[dict[str, Any]]:
    """The rows of a finished run's predictions.jsonl; a line that is not a scored prediction is a ValueError
    naming it (``file:line``) and saying to rerun the run."""
    rows = []
    for number, row in read_jsonl(path, remedy=_RERUN):
        problem = _scored_row_problem(row)
        if problem:
            raise ValueError(f"{path}:{number}: damaged, not a scored prediction of a benchmark run ({problem}); "
                             f"{_RERUN}")
        rows.append(row)
    return rows


#: What to do about a predictions.jsonl that is not a finished run's.
_RERUN = "rerun its `benchmark run` with --overwrite"


def _scored_row_problem(row: dict[str, Any]) -> str | None:
    """Why ``row`` is not a predictions.jsonl row the comparison can score; None when it is one."""
    wrong = [key for key in ("domain", "example_id") if not isinstance(row.get(key), str)]
    pairs, hits = row.get("gt_pairs"), row.get("hits")
    if not (_is_count(pairs) and pairs > 0):
        wrong.append("gt_pairs (a count of at least 1)")
    if not (_is_count(hits) and _is_count(pairs) and hits <= pairs):
        wrong.append("hits (a count up to gt_pairs)")
    if not isinstance(row.get("valid"), bool):
        wrong.append("valid (true or false)")
    wrong += [key for key in ("recall", "ndcg")
              if not (isinstance(row.get(key, []), list) and all(map(is_number, row.get(key, []))))]
    return f"missing or malformed: {', '.join(wrong)}" if wrong else None


def _is_count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def compare_runs(run_a: str | os.PathLike, run_b: str | os.PathLike, samples: int = DEFAULT_BOOTSTRAP_SAMPLES,
                 seed: int = DEFAULT_SEED) -> Comparison:
    results_a, rows_a = _load(Path(run_a))
    results_b, rows_b = _load(Path(run_b))
    warnings = []
    for field in ("split", "candidates", "limit"):
        if results_a.get(field) != results_b.get(field):
            warnings.append(f"runs differ in {field}: {results_a.get(field)} vs {results_b.get(field)}")
    if dataset_key(results_a) != dataset_key(results_b):
        warnings.append("runs used different datasets (content fingerprint, or the dataset id where the "
                        "fingerprint is unknown): the same example ids may hold other gt items")
    shared = [key for key in rows_a if key in rows_b]
    if not shared:
        raise ValueError(f"{run_a} and {run_b} share no records")
    groups = {OVERALL: shared}
    for key in shared:
        groups.setdefault(key[0], []).append(key)
    differences = []
    for group, keys in groups.items():
        ra = ratios([outcome_from_mapping(rows_a[k]) for k in keys])
        rb = ratios([outcome_from_mapping(rows_b[k]) for k in keys])
        for metric in ra:
            if metric in rb:
                differences.append(paired_difference(metric, group, ra[metric], rb[metric], samples, seed))
    order = {g: i for i, g in enumerate(sorted(groups, key=lambda g: (g == OVERALL, g)))}
    differences.sort(key=lambda d: (order[d.group], d.metric))
    return Comparison(differences, len(shared), len(set(rows_a) - set(rows_b)), len(set(rows_b) - set(rows_a)),
                      warnings)


def to_markdown(comparison: Comparison, name_a: str, name_b: str) -> str:
    from cards.markdown import cell, prose  # lazily: cards imports benchmark too (docs/architecture.md)

    # The run folders are typed by the user, the domains and the values the warnings quote come from results.json
    # and predictions.jsonl files, maybe someone else's: their HTML and Markdown are shown as text, never rendered.
    lines = [f"A = {prose(name_a)}", f"B = {prose(name_b)}", "",
             "| Metric | Domain | A | B | A − B | 95% CI | p | A better | B better | p (McNemar) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for d in comparison.differences:
        ci = f"[{d.ci95[0]:+.4f}, {d.ci95[1]:+.4f}]" if d.ci95 else "-"
        p = "-" if d.p_value is None else f"{d.p_value:.3f}"
        diff = "-" if d.difference is None else f"{d.difference:+.4f}"
        exact = "- | - | -" if d.exact is None else \
            f"{d.exact.a_better} | {d.exact.b_better} | {_p_value(d.exact.p_value)}"
        group = cell(prose(d.group))
        lines.append(f"| {d.metric} | {group} | {_value(d.a)} | {_value(d.b)} | {diff} | {ci} | {p} | {exact} |")
    lines.append("")
    lines.append(f"Paired bootstrap over {comparison.shared_records} shared records "
                 f"(only in A: {comparison.only_a}, only in B: {comparison.only_b}). "
                 "For hr@1 and vr, McNemar's exact test counts the records where A or B scored more (hits, or a "
                 "valid answer) and tests that count against Binomial(discordant, 1/2); with few discordant "
                 "records it is the p-value to trust.")
    lines.extend(f"WARNING: {prose(w)}" for w in comparison.warnings)
    return "\n".join(lines) + "\n"


def _p_value(p: float) -> str:
    """Three decimals, or a power of ten where that would show 0 (McNemar's p has no floor, the bootstrap's has);
    a p-value below the smallest double, which is 0.0 as a float, as below it: never a p of 0."""
    if p == 0:
        return f"< {math.ulp(0.0):.1e}"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def _value(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
