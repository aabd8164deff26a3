"""Model card of the reference LaViC (written by ``lavic-ref`` next to its adapters).

Measured facts (hyperparameters, training time and hardware, benchmark results) come from the caller;
the paper's numbers come from :data:`cards.paper.PAPER_RESULTS` and are shown beside ours.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from cards.local_paths import is_local_path, path_name
from cards.markdown import code_block, duration, flatten, inline_code, prose, table
from cards.paper import PAPER_DOI, PAPER_RESULTS, PAPER_TITLE, TABLE_CANDIDATES, paper_lavic
from cards.template import read_template
from reddit_amazon.schema import DOMAINS, SEMVER

MODEL_NAME = "LaViC (reddit-amazon reference)"
METRICS = {"hr@1": "HR@1", "vr": "VR"}
OVERALL_KEYS = ("all", "overall")  # benchmark writes "all"; older results used "overall"
#: ``lavic`` plugin options that take a file written by ``lavic-ref``.
PLUGIN_FILE_OPTIONS = ("distill_adapter", "rec_adapter", "item_embeddings")
#: What ``lavic-ref finetune`` records as the dataset when it trained on the bundled sample (no ``--dataset``).
BUNDLED_SAMPLE = "bundled sample"
#: What the Use command's ``base=`` says for a base model that was a local checkpoint naming no Hub id.
LOCAL_BASE = "path/to/llava-next"
#: What the Use command says for a plugin file outside the card's folder (a reader has only that folder), and what
#: the sentence under it calls that file.
OUTSIDE_FILES = {"distill_adapter": ("<folder of the distill adapter>", "the distill adapter"),
                 "rec_adapter": ("<folder of the rec adapter>", "the rec adapter"),
                 "item_embeddings": ("<item embeddings file>", "the item embeddings")}
#: The ``lavic`` plugin's default ``max_tokens`` (``lavic_ref.sequences.MAX_PROMPT_TOKENS``, not imported: torch).
DEFAULT_PROMPT_TOKENS = 2048

DEFAULT_LIMITATIONS: tuple[str, ...] = (
    "It chooses among 10 retrieved candidates and cannot recommend an item the retriever missed: HR@1 is "
    "bounded by the candidate set's recall (the dataset card reports it per domain).",
    "It sees each candidate's ID, title and main image (5 CLS-position embeddings per image); price, reviews, "
    "availability and the other images are unknown to it.",
    "Trained and evaluated only on English Reddit conversations about beauty, fashion and home products; other "
    "domains, languages or a live shopping assistant are untested.",
    "The recommendation is an item ID parsed from generated text; a VR below 1 means some outputs named no "
    "candidate.",
    "It inherits the biases of its base model and of Reddit and Amazon data, and was not evaluated for "
    "differences across user groups.",
    "Our results sit beside the paper's only as a reference: the paper used the authors' own build and test "
    "split, which a `reddit-amazon build` approximates but does not reproduce record for record.",
)


def render_model_card(*, base_model: str | None, adapters: Mapping[str, Any], hyperparameters: Mapping[str, Any],
                      data: Mapping[str, Any], training: Mapping[str, Any], results: Sequence[Mapping[str, Any]],
                      limitations: Sequence[str] | None = None, base_fingerprint: str | None = None,
                      hub_repo: str | None = None) -> str:
    """README.md for the folder holding the LaViC adapters: Hub YAML plus the card body.

    ``base_model`` is the base model's Hub id, or None for a local checkpoint that names none: the card then says
    so, by ``base_fingerprint`` (its weights fingerprint) where given. Anything that cannot be a Hub id (an absolute
    path) counts as None: ``base_model`` in the YAML must be a Hub repo id, and a path is nobody's business.
    ``training`` may hold ``time_s`` (float), ``hardware`` (str), ``distill_time_s`` (the distill adapter's run:
    float, or None where it was not recorded), and any further measured entries;
    ``results`` are parsed ``results.json`` files of ``benchmark run`` (``ValueError`` for anything else).
    ``adapters`` name files by a path relative to the card's folder where they lie in it (``best``), by an absolute
    path where not: the card shows those by name only (see :func:`cards.local_paths.path_name`).
    ``hub_repo``: the Hub model repo the card is published in (``lavic-ref push``), whose files ``adapters`` name by
    their path in the repo; its Use command then gives the repo id for each of them (the plugin downloads them).
    """
    for index, result in enumerate(results):
        problem = results_problem(result)
        if problem:
            raise ValueError(f"results {index + 1}: {problem}")
    base_model = hub_model_id(base_model)
    card_data = ModelCardData(
        base_model=base_model,
        library_name="peft",
        pipeline_tag="image-text-to-text",
        tags=["lavic", "llava-next", "lora", "conversational-recommendation", "reddit-amazon"],
        model_name=MODEL_NAME,
        eval_results=_eval_results([r for r in results if not _on_training_data(r, data)]) or None,
    )
    sections = [
        _summary(base_model, base_fingerprint),
        _adapters(adapters, hub_repo),
        _key_values("## Data and splits", _without_local_path(data), "The training data was not recorded."),
        _hyperparameters(hyperparameters),
        _training(training),
        _results(results, data.get("fingerprint"), data.get("domains"), data),
        _paper_tables(),
        "## Limitations\n\n" + "\n".join(f"- {text}" for text in (limitations or DEFAULT_LIMITATIONS)),
        _usage(base_model, base_fingerprint, adapters, hyperparameters, data, hub_repo),
        "## Citation\n\n" + code_block(read_template("citation.bib").split("\n\n")[0], "bibtex"),
    ]
    body = "\n\n".join(section.strip() for section in sections) + "\n"
    return str(ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n{body}"))


def results_problem(result: Any) -> str | None:
    """Why ``result`` is not a parsed ``results.json`` of ``benchmark run``; None when it is one."""
    from benchmark.report import results_problem as shape_problem

    problem = shape_problem(result)
    return f"not a benchmark results.json ({problem})" if problem else None


def hub_model_id(value: Any) -> str | None:
    """``value`` where it can be a Hub model repo id (``name`` or ``org/name``); None for anything else (an absolute
    or ``~`` path, ``./folder``, ``a/b/c``)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not isinstance(value, str):
        return None
    try:
        validate_repo_id(value)
    except HFValidationError:
        return None
    return value


def _summary(base_model: str | None, base_fingerprint: str | None) -> str:
    return (
        f"# {MODEL_NAME}\n\n"
        f"LoRA adapters that turn {_base_text(base_model, base_fingerprint)} into LaViC, the visually-aware "
        "conversational recommender of "
        f"*{PAPER_TITLE}* (Jeon et al., KDD'25, doi:{PAPER_DOI}), reimplemented in the `reddit-amazon` toolkit. "
        "Stage 1 (visual knowledge self-distillation) trains a LoRA on the vision tower and projector so that 5 "
        "CLS-position embeddings per image (one per sub-image) let the frozen language model reproduce the "
        "image description it wrote from all 2,885 image tokens (5 sub-images x 577). Stage 2 (recommendation "
        "fine-tuning) trains a LoRA on the language model to read a Reddit conversation and 10 candidates (ID, "
        "title, 5 item embeddings each) and answer with the ID of the recommended item. Every number below was "
        "measured by the run that wrote this card, except those labelled as the paper's."
    )


def _base_text(base_model: str | None, base_fingerprint: str | None) -> str:
    if base_model:
        return inline_code(base_model)
    return f"a local LLaVA-NeXT checkpoint ({_weights_text(base_fingerprint)}; it names no Hub model)"


def _weights_text(base_fingerprint: str | None) -> str:
    return (f"weights fingerprint {inline_code(base_fingerprint)}" if base_fingerprint
            else "its weights fingerprint was not recorded")


def _value(value: Any) -> str:
    if value is None:
        return "not set"
    if isinstance(value, (list, tuple, dict)):
        return inline_code(json.dumps(value, ensure_ascii=False))
    if isinstance(value, float):
        return f"{value:g}"
    return inline_code(value) if isinstance(value, str) else str(value)


def _key_values(heading: str, mapping: Mapping[str, Any], absent: str) -> str:
    if not mapping:
        return f"{heading}\n\n{absent}"
    return f"{heading}\n\n" + table(["", "value"], [[inline_code(k), _value(v)] for k, v in flatten(mapping)])


def _adapters(adapters: Mapping[str, Any], hub_repo: str | None = None) -> str:
    if not adapters:
        return "## Adapters\n\nNo adapter files were given."
    if hub_repo:
        rows = [[inline_code(key), f"{inline_code(value)} in this repo" if value else _value(value)]
                for key, value in flatten(adapters)]
        return "## Adapters\n\n" + table(["", "value"], rows)
    rows = [[inline_code(key), f"{inline_code(path_name(value))}, not in this folder" if is_local_path(value)
             else _value(value)] for key, value in flatten(adapters)]
    return "## Adapters\n\n" + table(["", "value"], rows)


def _hyperparameters(hyperparameters: Mapping[str, Any]) -> str:
    paper = ("The paper uses LoRA r=8, alpha=32, dropout 0.1 in both stages; batch size 4 for distillation and 1 "
             "for fine-tuning; learning rate and weight decay picked on validation from {5e-5, 1e-5, 5e-6, 1e-6} "
             "x {1e-2, 1e-3, 1e-4, 1e-5, 0}; up to 5 epochs; at most 128 generated description tokens and 2K input "
             "tokens (Section 5.1). It does not mention gradient clipping; the authors' code clips the gradient "
             "norm at 1.0 (`max_grad_norm`).")
    return _key_values("## Hyperparameters", hyperparameters, "The hyperparameters were not recorded.") \
        + "\n\n" + paper


def _training(training: Mapping[str, Any]) -> str:
    time_s = training.get("time_s")
    hardware = training.get("hardware")
    lines = [
        f"- Training time: {duration(float(time_s))}, measured." if time_s is not None
        else "- Training time was not recorded.",
        f"- Hardware: {prose(hardware)}." if hardware else "- The hardware was not recorded.",
    ]
    if "distill_time_s" in training:  # absent: no distill adapter (embeddings of the base vision tower, no images)
        distill_s = training["distill_time_s"]
        lines.append(f"- Stage 1 (distillation) training time: {duration(float(distill_s))}, measured (the "
                     "training time and hardware above are stage 2's, fine-tuning)." if distill_s is not None
                     else "- Stage 1 (distillation) training time was not recorded.")
    others = {k: v for k, v in training.items() if k not in ("time_s", "hardware", "distill_time_s")}
    text = "## Training\n\n" + "\n".join(lines)
    if others:
        text += "\n\n" + table(["", "value"], [[inline_code(k), _value(v)] for k, v in flatten(others)])
    return text + "\n\nThe paper trained on one NVIDIA A100 40GB GPU (Section 5.1)."


def _metric(result: Mapping[str, Any], metric: str, group: str) -> Mapping[str, Any] | None:
    groups = result.get("metrics", {}).get(metric, {})
    if group == "all":
        return next((groups[k] for k in OVERALL_KEYS if k in groups), None)
    return groups.get(group)


def _interval(entry: Mapping[str, Any] | None) -> str:
    if entry is None:
        return "—"
    if entry.get("ci95"):
        low, high = entry["ci95"]
    elif entry.get("ci_low") is not None and entry.get("ci_high") is not None:
        low, high = entry["ci_low"], entry["ci_high"]
    else:
        return "—"
    return f"[{low:.4f}, {high:.4f}]"


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def _name(value: Any, *keys: str) -> str:
    if isinstance(value, Mapping):
        return str(next((value[k] for k in keys if value.get(k)), json.dumps(value, sort_keys=True)))
    return str(value)


def _on_training_data(result: Mapping[str, Any], data: Mapping[str, Any]) -> bool:
    """Whether ``result`` scored the split the adapters were trained on (``finetune --train-split validation`` on the
    authors' release, which has no other), of the same dataset where both fingerprints are known."""
    train_split = data.get("train_split")
    if not train_split or result.get("split") != train_split:
        return False
    dataset = result.get("dataset", {})
    evaluated_on = dataset.get("fingerprint") if isinstance(dataset, Mapping) else None
    return not (evaluated_on and data.get("fingerprint") and evaluated_on != data.get("fingerprint"))


def _results(results: Sequence[Mapping[str, Any]], trained_on: str | None = None,
             trained_domains: Sequence[str] | None = None, data: Mapping[str, Any] | None = None) -> str:
    if not results:
        return ("## Results\n\nNo benchmark results were given to this card: run `benchmark run --model lavic` "
                "and write the card again with its `results.json`.")
    parts = ["## Results",
             "HR@1 counts (record, gt item) pairs; VR counts records; 95% bootstrap intervals over records. The "
             "paper's values are its reported LaViC numbers for the same candidate set (Table 3: SBERT, Table 5: "
             "OpenAI-emb-large)."]
    for result in results:
        candidates = str(result.get("candidates", ""))
        paper = paper_lavic(candidates)
        dataset = result.get("dataset", {})
        limit = result.get("limit")
        heading = (f"### {prose(_name(result.get('model'), 'name', 'spec'))} on {prose(_dataset_shown(dataset))}"
                   f" ({prose(result.get('split', 'split not recorded'))}, candidates {inline_code(candidates)})"
                   + (f", first {limit:,} records per domain" if limit else ""))
        details = []
        if limit:
            details.append(f"A partial run (`benchmark run --limit {limit}`): not comparable with the paper's "
                           "numbers, and left out of this card's model index.")
        if _on_training_data(result, data or {}):
            details.append(f"**Evaluated on the records the adapters were trained on** (`finetune --train-split "
                           f"{result.get('split')}`): not a held-out score, not comparable with the paper's, and "
                           "left out of this card's model index.")
        evaluated_on = dataset.get("fingerprint") if isinstance(dataset, Mapping) else None
        if trained_on and evaluated_on and evaluated_on != trained_on:
            details.append(f"**Evaluated on other data than the adapters were trained on** (dataset fingerprint "
                           f"{inline_code(str(evaluated_on)[:12])}, training data {inline_code(trained_on[:12])}).")
        if isinstance(dataset, Mapping) and dataset.get("fingerprint"):
            details.append(f"Dataset version {inline_code(dataset.get('version', 'unknown'))}, fingerprint "
                           f"{inline_code(dataset['fingerprint'])}.")
        evaluated_domains = [d for d in DOMAINS if _metric(result, "hr@1", d) or _metric(result, "vr", d)]
        if trained_domains and set(evaluated_domains) - set(trained_domains):
            details.append(f"The adapters were trained on {', '.join(trained_domains)} only; rows marked "
                           "\"not trained on\" are transfer results, unlike the paper's per-domain training.")
        details.append(f"Paper column: Table {paper.table}."
                       if paper else f"The paper reports no results for candidate set {inline_code(candidates)}.")
        rows = []
        for group in [*DOMAINS, "all"]:
            hr1, vr = _metric(result, "hr@1", group), _metric(result, "vr", group)
            if hr1 is None and vr is None:
                continue
            untrained = bool(trained_domains) and group in DOMAINS and group not in (trained_domains or ())
            rows.append([
                f"{group} (not trained on)" if untrained else group,
                _number(None if hr1 is None else hr1.get("value")), _interval(hr1),
                _number(paper.hr1_of(group)) if paper and group in DOMAINS else "—",
                _number(None if vr is None else vr.get("value")), _interval(vr),
                _number(paper.vr_of(group)) if paper and group in DOMAINS else "—",
                _pairs(hr1),
            ])
        parts += [heading, " ".join(details),
                  table(["domain", "HR@1", "HR@1 95% CI", "paper HR@1", "VR", "VR 95% CI", "paper VR", "pairs"], rows,
                        numeric=[False, True, False, True, True, False, True, True])]
    return "\n\n".join(parts)


def _pairs(entry: Mapping[str, Any] | None) -> str:
    if entry is None or entry.get("denominator") is None:
        return "—"
    return f"{int(entry['denominator']):,}"


def _paper_tables() -> str:
    parts = ["## The paper's Tables 3 and 5",
             "As reported (HR@1 / VR per domain; retrieval baselines rank the full catalog, so they have no VR):"]
    for number, candidates in TABLE_CANDIDATES.items():
        rows = [[row.group, row.method,
                 *(value for d in DOMAINS for value in (_number(row.hr1_of(d)), _number(row.vr_of(d))))]
                for row in PAPER_RESULTS if row.table == number]
        headers = ["group", "method", *(f"{d} {m}" for d in DOMAINS for m in ("HR@1", "VR"))]
        parts += [f"Table {number} (candidates `{candidates}`):",
                  table(headers, rows, numeric=[False, False, *(True for _ in range(6))])]
    return "\n\n".join(parts)


def _usage(base_model: str | None, base_fingerprint: str | None, adapters: Mapping[str, Any],
           hyperparameters: Mapping[str, Any], data: Mapping[str, Any], hub_repo: str | None = None) -> str:
    """``benchmark run`` of the adapter on the test split of the data and domains it was fine-tuned on."""
    files = {k: adapters[k] for k in PLUGIN_FILE_OPTIONS if adapters.get(k)}
    outside = {} if hub_repo else {k: str(path) for k, path in files.items() if is_local_path(path)}
    values = {"base": base_model or LOCAL_BASE, **files, **{k: OUTSIDE_FILES[k][0] for k in outside}}
    if hub_repo:
        values.update({k: hub_repo for k in files})
    if hyperparameters.get("images") is False:  # a titles-only adapter (`finetune --no-images`): no item tokens
        values["images"] = False
    max_prompt_tokens = hyperparameters.get("max_prompt_tokens")
    if max_prompt_tokens not in (None, DEFAULT_PROMPT_TOKENS):  # the plugin caps prompts as training did
        values["max_tokens"] = max_prompt_tokens
    model_args = ",".join(f"{key}=" + (json.dumps(value) if isinstance(value, (bool, int)) else _model_arg(str(value)))
                          for key, value in values.items())
    dataset = _usage_dataset(data.get("dataset"))
    candidates = data.get("candidates")
    # `benchmark run --domain` takes one domain or all of them: a subset is run one domain at a time.
    domains = [d for d in DOMAINS if d in (data.get("domains") or DOMAINS)]
    per_domain = domains if len(domains) < len(DOMAINS) else [None]
    commands = [shlex.join(["benchmark", "run", "--model", "lavic", "--model-args", model_args]
                           + (["--dataset", dataset] if dataset else [])
                           + (["--domain", domain] if domain else [])
                           + ["--split", "test", "--out", f"runs/lavic-{domain}" if domain else "runs/lavic"]
                           + (["--candidates", str(candidates)] if candidates and candidates != "sbert" else []))
                for domain in per_domain]
    trained = " ".join(part for part in (
        f"with {inline_code(candidates)} candidates" if candidates else "",
        "on the bundled sample" if data.get("dataset") == BUNDLED_SAMPLE else "",
        f"on {', '.join(domains)} only" if per_domain != [None] else "") if part)
    local_folder = dataset is not None and dataset != data.get("dataset")
    return ("## Use\n\n" + code_block("\n".join(commands), "bash") + "\n\nThe `lavic` plugin is registered by the "
            "`reddit-amazon` package; `--candidates sbert` or `--candidates openai_large` selects the candidate set"
            + (f" (the adapter was trained {trained})." if trained else ".")
            + (_repo_files_text(hub_repo) if hub_repo else _files_text(files, outside))
            + (f" {inline_code(f'--dataset {dataset}')} stands for the local folder it was trained on."
               if local_folder else "")
            + ("" if base_model else f" {inline_code(LOCAL_BASE)} stands for the local base checkpoint it was trained "
               f"on ({_weights_text(base_fingerprint)}); the plugin refuses an adapter on other base weights."))


def _files_text(files: Mapping[str, Any], outside: Mapping[str, str]) -> str:
    """What the Use command's file options need: to be run in the card's folder for the files in it, and the files
    its placeholders stand for, each named as the training used it."""
    text = " Run it in this folder: the files it names there are in it." if len(files) > len(outside) else ""
    if outside:
        text += " " + "; ".join(f"{inline_code(OUTSIDE_FILES[key][0])} stands for {OUTSIDE_FILES[key][1]} "
                                f"({inline_code(path_name(path))} on the training machine)"
                                for key, path in outside.items())
        text += ": this file is not in this folder." if len(outside) == 1 else ": these files are not in this folder."
    return text


def _repo_files_text(hub_repo: str) -> str:
    return (f" The plugin downloads the adapters and item embeddings from this repo ({inline_code(hub_repo)}: the rec "
            "adapter in `best/`, the distill adapter in `distill/`, the item embeddings' `.safetensors` file) into the "
            f"Hugging Face cache; {inline_code(hub_repo + '@<revision>')} pins a revision, and `HF_HUB_OFFLINE=1` runs "
            "from the cache.")


def _without_local_path(data: Mapping[str, Any]) -> Mapping[str, Any]:
    """The data block with an absolute dataset path shown as its folder name: the card is published, and where the
    data lay on the training machine (``/home/<user>/...``) is nobody's business (the fingerprint names the data)."""
    name = _local_folder_name(data.get("dataset"))
    return {**data, "dataset": f"{name} (a local folder)"} if name else data


def _dataset_shown(dataset: Any) -> str:
    """A results.json's dataset as the card names it: a local folder's absolute path as its folder name."""
    dataset_id = _name(dataset, "id")
    name = _local_folder_name(dataset_id)
    return f"{name} (a local folder)" if name else dataset_id


def _usage_dataset(recorded: Any) -> str | None:
    """``--dataset`` of the Use command: none for the bundled sample, a Hub id or relative path as recorded, and the
    folder name of an absolute path (where the training data lay on that machine means nothing to a reader)."""
    if recorded == BUNDLED_SAMPLE:
        return None
    if not recorded:
        return "reddit-amazon"  # not recorded: the folder `reddit-amazon build` writes by default
    return _local_folder_name(recorded) or str(recorded)


def _local_folder_name(recorded: Any) -> str | None:
    """The name a card gives a dataset recorded as a local (absolute or ``~``) path; None for a Hub id or a relative
    path."""
    return path_name(recorded) if is_local_path(recorded) else None


def _model_arg(value: str) -> str:
    """``value`` as ``--model-args`` reads it back: quoted where it holds a comma or quote, or would be read
    as a number, a boolean or null."""
    from benchmark.registry import parse_model_args

    plain = "," not in value and '"' not in value and parse_model_args(f"v={value}") == {"v": value}
    return value if plain else json.dumps(value, ensure_ascii=False)


def _hub_dataset_id(dataset_id: str) -> str:
    """A Hub repo id as is; a local folder becomes the dataset's name (a path means nothing on the Hub)."""
    if re.fullmatch(r"[\w.-]+/[\w.-]+", dataset_id) and not Path(dataset_id).exists():
        return dataset_id
    return "reddit-amazon"


def _version_tag(dataset: Any) -> str | None:
    """The Hub tag ``push_to_hub`` gives the dataset version (``v1.0.0``), which pins that revision."""
    version = dataset.get("version") if isinstance(dataset, Mapping) else None
    return f"v{version}" if isinstance(version, str) and SEMVER.fullmatch(version) else None


def _eval_results(results: Sequence[Mapping[str, Any]]) -> list[EvalResult]:
    evals = []
    for result in results:
        if result.get("limit"):  # a partial run is not the model's score
            continue
        dataset = result.get("dataset", {})
        dataset_id = _hub_dataset_id(_name(dataset, "id"))
        for metric, metric_name in METRICS.items():
            for domain in DOMAINS:
                entry = _metric(result, metric, domain)
                if entry is None or entry.get("value") is None:
                    continue
                evals.append(EvalResult(
                    task_type="image-text-to-text",
                    task_name="Visually-aware conversational recommendation",
                    dataset_type=dataset_id,
                    dataset_name=f"Reddit-Amazon {domain}",
                    dataset_config=domain,
                    dataset_split=str(result.get("split", "test")),
                    dataset_args={"candidates": str(result.get("candidates", ""))},
                    dataset_revision=_version_tag(dataset),
                    metric_type=metric,
                    # The model index merges results of one dataset config and split whatever their
                    # dataset_args, so each metric names its candidate set itself.
                    metric_name=f"{metric_name} ({result.get('candidates', '')} candidates)",
                    metric_args={"candidates": str(result.get("candidates", ""))},
                    metric_value=round(float(entry["value"]), 6),
                ))
    return evals
