"""``benchmark report``: a leaderboard of finished runs in the layout of the paper's Table 3.

Rows are grouped like the paper: retrieval baselines over the full catalog first, then one group per
candidate set ("+ SBERT", "+ OpenAI-emb large"). Columns: HR@1 and VR per domain. In each column the
best value is bold and the second best underlined.
"""

from __future__ import annotations

import html
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reddit_amazon.files import LOCK_FILE, read_json
from reddit_amazon.schema import DOMAINS

DOMAIN_TITLES = {"beauty": "Beauty", "fashion": "Fashion", "home": "Home"}
CANDIDATE_TITLES = {"sbert": "SBERT", "openai_large": "OpenAI-emb<sub>large</sub>", "bm25": "BM25"}
COLUMNS = [(domain, metric) for domain in DOMAINS for metric in ("hr@1", "vr")]


@dataclass(frozen=True)
class Run:
    path: Path
    results: dict[str, Any]

    @property
    def label(self) -> str:
        """The model, its args and what limited the run. A local path (a plugin file's: ``mine.py:Mine``; an arg's:
        ``rec_adapter=rec/best``) is shown by its name only, as the cards show them: the page is published, and
        where the files lay on the machine that ran it (``/home/<user>/...``) is nobody's business."""
        from cards.local_paths import shown_value  # lazily: cards imports benchmark too (docs/architecture.md)

        model = self.results["model"]
        args = ", ".join(f"{k}={shown_value(v)}" for k, v in sorted(model.get("args", {}).items()))
        limit = self.results.get("limit")
        return (f"{shown_value(model.get('name') or model['spec'])}" + (f" ({args})" if args else "")
                + (f" [first {limit} records per domain]" if limit else "") + self._blind_note)

    @property
    def _blind_note(self) -> str:
        """Items the model could not tell apart by text (an imported release has no titles): a row that chose among
        them blind must say so in the table, not only in the warning its run printed."""
        if self.results.get("kind") == "retrieval":
            count, what = self.results.get("items_without_text"), "catalog items without text"
        else:
            count, what = self.results.get("items_without_title"), "candidate items without title"
        if not isinstance(count, dict) or not count.get("items"):
            return ""
        return f" [{count['items']} of {count.get('of', '?')} {what}]"

    @property
    def group(self) -> str:
        """The title of the run's group of rows, as HTML."""
        return self.group_title(html.escape)

    def group_title(self, escape: Callable[[str], str]) -> str:
        """The title of the run's group of rows, with the candidate set's name (from a results.json, maybe someone
        else's) shown as text by ``escape``."""
        if self.results.get("kind") == "retrieval":
            text = "title + description" if "description" in self.results["model"].get("item_text", "") else "title"
            return f"Retrieval baselines (item {text}, full catalog)"
        candidates = self.results["candidates"]
        return f"Recommenders + {CANDIDATE_TITLES.get(candidates) or escape(candidates)} candidates"

    def value(self, domain: str, metric: str) -> float | None:
        entry = self.results["metrics"].get(metric, {}).get(domain)
        return None if entry is None else entry["value"]

    def interval(self, domain: str, metric: str) -> list[float] | None:
        entry = self.results["metrics"].get(metric, {}).get(domain)
        return None if entry is None else entry.get("ci95")


def is_unfinished_run(path: str | os.PathLike) -> bool:
    """``path`` is a run folder whose run has started but not finished (no results.json): its run.json is written,
    or the folder holds only the run's lock (a run loading its dataset and model, or killed while it did)."""
    path = Path(path)
    if not path.is_dir() or (path / "results.json").is_file():
        return False
    return (path / "run.json").is_file() or ((path / LOCK_FILE).is_file()
                                             and all(entry.name.startswith(".") for entry in path.iterdir()))


def load_runs(paths: Sequence[str | os.PathLike]) -> list[Run]:
    """The finished runs of ``paths`` (run folders or their results.json), each once however often it is named
    (``runs/a runs/a``, a glob overlapping another, a link to a folder also given): it is one row."""
    runs, seen = [], set()
    for path in paths:
        path = Path(path)
        results_path = path / "results.json" if path.is_dir() else path
        if not results_path.is_file():
            if path.is_dir() and not is_unfinished_run(path):  # a model or embeddings folder beside the runs
                raise FileNotFoundError(f"{path}: not a run folder (no results.json); name the folders that "
                                        "`benchmark run` or `benchmark retrieve` wrote")
            raise FileNotFoundError(f"{path}: no results.json (is the run finished?)")
        if (identity := results_path.resolve()) not in seen:
            seen.add(identity)
            runs.append(Run(results_path.parent, read_results(results_path)))
    return runs


#: Fields of a results.json that its readers (the report, the model card) rely on, with their JSON types.
RESULT_FIELDS: dict[str, type] = {"model": dict, "metrics": dict, "dataset": dict, "split": str, "candidates": str}


def results_problem(results: Any) -> str | None:
    """Why ``results`` is not a parsed results.json of ``benchmark run`` or ``retrieve``; None when it is one."""
    if not isinstance(results, dict):
        return f"a JSON object expected, not {type(results).__name__}"
    wrong = [key for key, kind in RESULT_FIELDS.items() if not isinstance(results.get(key), kind)]
    if not wrong:
        wrong = [f"metrics.{key}" for key, groups in results["metrics"].items() if not isinstance(groups, dict)]
    if not wrong:
        wrong = [f"metrics.{key}.{group}" for key, groups in results["metrics"].items()
                 for group, entry in groups.items() if not _is_metric_entry(entry)]
    if not wrong and not (isinstance(results["model"].get("spec"), str)
                          and all(results["dataset"].get(k) is not None for k in ("id", "version", "fingerprint"))):
        wrong = ["model.spec or dataset id / version / fingerprint"]
    return f"missing or malformed: {', '.join(wrong)}" if wrong else None


def _is_metric_entry(entry: Any) -> bool:
    """``entry`` is one group's metric as its readers take it: a number or null ``value``, a ``ci95`` of two
    numbers or null, and the counts (and the bounds of older results) numbers or null where present."""
    if not isinstance(entry, dict) or "value" not in entry:
        return False
    ci95 = entry.get("ci95")
    return (all(entry.get(key) is None or is_number(entry[key])
                for key in ("value", "numerator", "denominator", "ci_low", "ci_high"))
            and (ci95 is None or (isinstance(ci95, list) and len(ci95) == 2 and all(map(is_number, ci95)))))


def is_number(value: Any) -> bool:
    """A JSON number: an int or float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_results(path: Path) -> dict[str, Any]:
    """A results.json; a damaged one (a :class:`~reddit_amazon.files.DamagedFileError`), or JSON of another shape,
    fails naming the file."""
    results = read_json(path, object, remedy="rerun the `benchmark run` (or `benchmark retrieve`) that wrote "
                                              "it, with --overwrite")
    problem = results_problem(results)
    if problem:
        raise ValueError(f"{path}: not the results.json of a benchmark run ({problem})")
    return results


def _grouped(runs: Sequence[Run]) -> list[tuple[str, list[Run]]]:
    groups: dict[str, list[Run]] = {}
    for run in sorted(runs, key=lambda r: (r.results.get("kind") != "retrieval", r.results.get("candidates", ""))):
        groups.setdefault(run.group, []).append(run)
    return list(groups.items())


def dataset_key(results: dict[str, Any]) -> str:
    """The data a run used: its content fingerprint, or its dataset id where that is unknown (a Hub id read
    offline, a folder without a manifest): two such runs are over one dataset only when their ids are."""
    dataset = results["dataset"]
    return dataset["id"] if dataset["fingerprint"] == "unknown" else dataset["fingerprint"]


def _comparable(run: Run) -> tuple:
    """What rows must share to be ranked against each other: dataset, version, split and record limit."""
    results = run.results
    return dataset_key(results), results["dataset"]["version"], results.get("split"), results.get("limit")


def _ranks(runs: Sequence[Run]) -> dict[tuple[int, str, str], int]:
    """(run index, domain, metric) -> 1 for best, 2 for second best (HR@1 only, as the paper marks), among
    the rows over the same data: a run over the first 5 records, or another split, is not "best" of full runs.
    Each set of comparable rows is sorted once per domain, so a report of many runs takes O(n log n)."""
    keys = [_comparable(run) for run in runs]
    peers: dict[tuple, list[Run]] = {}
    for key, run in zip(keys, runs):
        peers.setdefault(key, []).append(run)
    marks = {}
    for domain in DOMAINS:
        # a zero HR@1 is never marked: a row that hit nothing is not "best", even if no row did better
        best_two = {key: sorted({v for r in members if (v := r.value(domain, "hr@1"))}, reverse=True)[:2]
                    for key, members in peers.items()}
        for index, (key, run) in enumerate(zip(keys, runs)):
            values = best_two[key]
            value = run.value(domain, "hr@1")
            if value and values and value == values[0]:
                marks[(index, domain, "hr@1")] = 1
            elif value and len(values) > 1 and value == values[1]:
                marks[(index, domain, "hr@1")] = 2
    return marks


def _dataset_key(run: Run) -> str:
    """:func:`dataset_key`, a fingerprint shortened to its first 12 characters."""
    key = dataset_key(run.results)
    return key if key == run.results["dataset"]["id"] else key[:12]


def _labels(runs: Sequence[Run]) -> dict[int, str]:
    """id(run) -> its row label, plus its split and dataset where the runs differ in them: rows of a
    mixed report must say which is which (the provenance notes alone do not map to rows). Rows of one group that
    would still read alike (one plugin run as ``--model mine`` and as ``mine.py:Mine``, a rerun with another seed
    of a model that records none) also name their run folder, an absolute one by its name (the page is published)."""
    from cards.local_paths import shown_value  # lazily: cards imports benchmark too (docs/architecture.md)

    splits = len({run.results["split"] for run in runs}) > 1
    datasets = len({_dataset_key(run) for run in runs}) > 1
    labels = {}
    for run in runs:
        extra = ([f"split {run.results['split']}"] if splits else []) + ([_dataset_label(run)] if datasets else [])
        labels[id(run)] = run.label + (f" [{'; '.join(extra)}]" if extra else "")
    alike = Counter((run.group, labels[id(run)]) for run in runs)
    for run in runs:
        if alike[run.group, labels[id(run)]] > 1:
            labels[id(run)] += f" [{shown_value(run.path.as_posix())}]"
    return labels


def _dataset_label(run: Run) -> str:
    """How a row names its dataset where the rows' datasets differ: by name and fingerprint, or, the fingerprint
    unknown, by its id alone (the key then), a local folder by its name only (the page is published)."""
    from cards.local_paths import shown_value  # lazily: cards imports benchmark too (docs/architecture.md)

    dataset_id, key = run.results["dataset"]["id"], _dataset_key(run)
    return f"dataset {shown_value(dataset_id)}" if key == dataset_id else f"dataset {Path(dataset_id).name} {key}"


def _format(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def provenance(runs: Sequence[Run]) -> list[str]:
    """One line per distinct (dataset, version, fingerprint, split, record limit); more than one is flagged.

    A known content fingerprint identifies the data: the same shards at two paths (the bundled sample and a
    rebuild of it, a Hub copy and its local download) are one dataset; the id tells them apart only when the
    fingerprint is unknown."""
    seen: dict[tuple, list[str]] = {}
    for run in runs:
        d = run.results["dataset"]
        key = (_dataset_key(run), d["version"], run.results["split"], run.results.get("limit"))
        ids = seen.setdefault(key, [])
        if d["id"] not in ids:
            ids.append(d["id"])
    from cards.local_paths import shown_value  # lazily: cards imports benchmark too (docs/architecture.md)

    # a local folder by its name only: the report is for publishing, where a path of this machine means nothing
    lines = [f"dataset {', '.join(dict.fromkeys(shown_value(ids)))} v{v} "
             f"(fingerprint {f if f != ids[0] else 'unknown'}), split {s}"
             + (f", first {n} records per domain" if n else "") for (f, v, s, n), ids in seen.items()]
    if len(seen) > 1:
        lines.insert(0, "WARNING: these runs used different datasets, splits or record limits; "
                        "rows are not comparable.")
    return lines


def to_markdown(runs: Sequence[Run]) -> str:
    from cards.markdown import prose  # lazily: cards imports benchmark too (docs/architecture.md)

    groups = _grouped(runs)
    marks = _ranks([run for _, members in groups for run in members])
    labels = _labels(runs)
    header = "| Method | " + " | ".join(f"{DOMAIN_TITLES[d]} {m.upper()}" for d, m in COLUMNS) + " |"
    lines = [header, "|" + " --- |" * (len(COLUMNS) + 1)]
    index = 0
    # Labels, candidate set names and dataset ids come from results.json files, maybe someone else's: their HTML
    # and Markdown (links, images, emphasis) are shown as the text they are, never rendered.
    for _, members in groups:
        lines.append(f"| *{_markdown_cell(members[0].group_title(prose))}* |" + " |" * len(COLUMNS))
        for run in members:
            cells = []
            for domain, metric in COLUMNS:
                text = _format(run.value(domain, metric))
                mark = marks.get((index, domain, metric))
                cells.append(f"**{text}**" if mark == 1 else f"<u>{text}</u>" if mark == 2 else text)
            lines.append(f"| {_markdown_cell(prose(labels[id(run)]))} | " + " | ".join(cells) + " |")
            index += 1
    notes = [f"- {prose(line)}" for line in provenance(runs)]
    legend = ("HR@1 per (record, gt item) pair; VR per record; rounded to 4 decimals. Bold: best HR@1, "
              "underlined: second best (among rows over the same dataset, split and records; an HR@1 of 0 is never "
              "marked).")
    return "\n".join(lines + ["", legend, *notes, "", benchmark_card(runs)]) + "\n"


def _markdown_cell(markdown: str) -> str:
    """``markdown`` (on one line, its text escaped) safe in a table cell: a ``|`` (in a model arg or a plugin's
    name) would start a new column."""
    return markdown.replace("|", "\\|")


def benchmark_card(runs: Sequence[Run]) -> str:
    """The task, candidate sets, metric definitions and how to submit a plugin (Markdown)."""
    from cards.benchmark_card import render_benchmark_card

    # A retrieval run ranks the whole catalog: its "candidates" names no candidate column.
    return render_benchmark_card(sorted({r.results["candidates"] for r in runs
                                         if r.results.get("kind") != "retrieval"}))


def to_html(runs: Sequence[Run], title: str = "Reddit-Amazon leaderboard") -> str:
    groups = _grouped(runs)
    marks = _ranks([run for _, members in groups for run in members])
    labels = _labels(runs)
    esc = html.escape
    head = ("<tr><th rowspan=2>Method</th>" + "".join(f"<th colspan=2><i>{DOMAIN_TITLES[d]}</i></th>" for d in DOMAINS)
            + "</tr><tr>" + "<th>HR@1</th><th>VR</th>" * len(DOMAINS) + "</tr>")
    body = []
    index = 0
    for group, members in groups:
        # group titles may carry <sub> from CANDIDATE_TITLES; everything else is escaped
        body.append(f"<tr class=group><td colspan={len(COLUMNS) + 1}><i>{group}</i></td></tr>")
        for run in members:
            cells = []
            for domain, metric in COLUMNS:
                value = run.value(domain, metric)
                ci = run.interval(domain, metric)
                tip = f' title="95% CI {ci[0]:.4f}–{ci[1]:.4f}"' if ci else ""
                text = _format(value)
                mark = marks.get((index, domain, metric))
                text = f"<b>{text}</b>" if mark == 1 else f"<u>{text}</u>" if mark == 2 else text
                cells.append(f"<td{tip}>{text}</td>")
            body.append(f"<tr><td class=method>{esc(labels[id(run)])}</td>{''.join(cells)}</tr>")
            index += 1
    from markdown_it import MarkdownIt

    notes = "".join(f"<li>{esc(line)}</li>" for line in provenance(runs))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; }}
table {{ border-collapse: collapse; }}
th, td {{ padding: .25rem .75rem; text-align: center; }}
thead tr:first-child th {{ border-top: 2px solid #000; }}
thead tr:last-child th {{ border-bottom: 1px solid #000; }}
tbody tr:last-child td {{ border-bottom: 2px solid #000; }}
td.method {{ text-align: left; }}
tr.group td {{ text-align: left; color: #555; border-top: 1px solid #ccc; }}
</style></head><body>
<h1>{esc(title)}</h1>
<table><thead>{head}</thead><tbody>
{chr(10).join(body)}
</tbody></table>
<p>HR@1 per (record, gt item) pair; VR per record; rounded to 4 decimals. Bold: best HR@1, underlined: second
best (among rows over the same dataset, split and records).
Hover a cell for its 95% bootstrap CI.</p>
<ul>{notes}</ul>
{MarkdownIt("commonmark", {"html": False}).enable("table").render(benchmark_card(runs))}
</body></html>
"""
