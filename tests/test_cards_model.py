"""Model card: valid Hub YAML (model-index), measured results beside the paper's, and the paper constants."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from huggingface_hub import ModelCard, ModelCardData

from cards.model_card import render_model_card
from cards.paper import PAPER_RESULTS, paper_lavic
from tests.test_cards_dataset import (
    HOSTILE_MARKDOWN,
    assert_no_placeholders,
    assert_shown_as_text,
    markdown_table_after,
    rendered_headings,
)

# As in conftest.py, which pytest imports as `conftest`: `from tests.conftest import ...` would run it a second
# time, with a second session folder.
SHARED = Path(__file__).resolve().parents[2] / "shared"
PAPER_TEXT = SHARED / "paper" / "000_f3659b8b73db113b.txt"
BASE = "llava-hf/llava-v1.6-mistral-7b-hf"


def result(candidates: str, hr1: dict[str, float], vr: float = 0.95, *, dataset_id: str = "org/reddit-amazon",
           legacy: bool = False) -> dict:
    def entry(value: float) -> dict:
        if legacy:
            return {"value": value, "ci_low": value / 2, "ci_high": min(1.0, value * 1.5)}
        return {"value": value, "ci95": [value / 2, min(1.0, value * 1.5)], "numerator": 3, "denominator": 40}

    overall = "overall" if legacy else "all"
    return {
        "metrics": {
            "hr@1": {**{d: entry(v) for d, v in hr1.items()}, overall: entry(sum(hr1.values()) / len(hr1))},
            "vr": {**{d: entry(vr) for d in hr1}, overall: entry(vr)},
        },
        "model": {"spec": "lavic", "name": "lavic", "args": {}},
        "dataset": {"id": dataset_id, "version": "1.0.0", "fingerprint": "f" * 64},
        "split": "test",
        "candidates": candidates,
    }


def render(results: list[dict], **overrides) -> str:
    arguments = dict(
        base_model=BASE,
        adapters={"distill_adapter": "out/distill", "rec_adapter": "out/rec", "item_embeddings": "out/items.st"},
        hyperparameters={"distill": {"lora_r": 8, "lora_alpha": 32, "learning_rate": 5e-5}, "finetune": {"epochs": 1}},
        data={"dataset": "org/reddit-amazon", "fingerprint": "f" * 64, "train_records": {"beauty": 120}},
        training={"time_s": 5025.4, "hardware": "1x NVIDIA H100 80GB", "peak_memory_gib": 31.5},
        results=results,
    )
    arguments.update(overrides)
    return render_model_card(**arguments)


def by_domain(card: str, heading: str) -> dict[str, dict[str, str]]:
    return {row["domain"]: row for row in markdown_table_after(card, heading, "domain")}


def test_yaml_round_trips_through_the_hub_card_classes(tmp_path):
    text = render([result("sbert", {"beauty": 0.125, "fashion": 0.1, "home": 0.3}),
                   result("openai_large", {"beauty": 0.175, "fashion": 0.2, "home": 0.35})])
    (tmp_path / "README.md").write_text(text, encoding="utf-8")
    card = ModelCard.load(tmp_path / "README.md")
    data = card.data.to_dict()
    assert ModelCardData(**data).to_dict() == data
    assert card.data.base_model == BASE and card.data.library_name == "peft"
    evals = card.data.eval_results
    assert len(evals) == 2 * 3 * 2  # results x domains x metrics; "all" is not a dataset config
    beauty_sbert = next(e for e in evals if e.dataset_config == "beauty" and e.metric_type == "hr@1"
                        and e.dataset_args == {"candidates": "sbert"})
    assert beauty_sbert.metric_value == 0.125 and beauty_sbert.dataset_type == "org/reddit-amazon"
    for candidates, value in (("sbert", 0.125), ("openai_large", 0.175)):  # two candidate sets never merge
        assert {e.metric_value for e in evals if e.dataset_config == "beauty" and e.metric_type == "hr@1"
                and e.metric_args == {"candidates": candidates}} == {value}
    assert {e.dataset_revision for e in evals} == {"v1.0.0"}  # the tag push_to_hub gives the version
    assert_no_placeholders(text)


def test_results_sit_beside_the_papers_lavic_row_for_the_same_candidate_set():
    card = render([result("sbert", {"beauty": 0.125, "fashion": 0.1, "home": 0.3}),
                   result("openai_large", {"beauty": 0.175, "fashion": 0.2, "home": 0.35})])
    sbert = by_domain(card, "candidates `sbert`)")
    openai = by_domain(card, "candidates `openai_large`)")
    assert (sbert["beauty"]["HR@1"], sbert["beauty"]["paper HR@1"], sbert["beauty"]["paper VR"]) == (
        "0.1250", "0.1187", "0.9702")  # Table 3
    assert (openai["home"]["HR@1"], openai["home"]["paper HR@1"]) == ("0.3500", "0.3537")  # Table 5
    assert sbert["beauty"]["HR@1 95% CI"] == "[0.0625, 0.1875]" and sbert["beauty"]["pairs"] == "40"
    assert sbert["all"]["paper HR@1"] == "—"  # the paper reports no pooled number
    assert "Paper column: Table 3." in card and "Paper column: Table 5." in card
    assert "Training time: 1 h 23 min 45 s (5,025 s), measured." in card
    assert "Hardware: 1x NVIDIA H100 80GB." in card and "| `peak_memory_gib` | 31.5 |" in card
    assert "| `distill.learning_rate` | 5e-05 |" in card
    assert "distill_adapter=out/distill,rec_adapter=out/rec,item_embeddings=out/items.st" in card


def test_candidate_set_without_paper_numbers_and_legacy_result_keys():
    card = render([result("bm25", {"beauty": 0.05, "home": 0.2}, legacy=True, dataset_id="/tmp/local-folder")])
    rows = by_domain(card, "candidates `bm25`)")
    assert "The paper reports no results for candidate set `bm25`." in card
    assert rows["beauty"]["paper HR@1"] == "—" and rows["beauty"]["HR@1 95% CI"] == "[0.0250, 0.0750]"
    assert rows["all"]["HR@1"] == "0.1250"  # "overall" read as the pooled group
    assert "fashion" not in rows
    assert "type: reddit-amazon" in card  # a local path is not a Hub dataset id


def test_missing_measurements_are_stated_not_invented():
    card = render([], adapters={}, hyperparameters={}, data={}, training={}, limitations=["Only a smoke test."])
    for sentence in ["No adapter files were given.", "The training data was not recorded.",
                     "The hyperparameters were not recorded.", "Training time was not recorded.",
                     "The hardware was not recorded.", "No benchmark results were given to this card",
                     "- Only a smoke test."]:
        assert sentence in card, sentence
    assert "model-index" not in card
    assert_no_placeholders(card)


def test_the_distillation_time_is_shown_beside_fine_tunings_where_recorded():
    training = {"time_s": 5025.4, "hardware": "1x NVIDIA H100 80GB"}
    card = render([], training={**training, "distill_time_s": 754.3})
    assert "- Stage 1 (distillation) training time: 12 min 34 s (754 s), measured (the training time and " \
           "hardware above are stage 2's, fine-tuning)." in card
    assert "distill_time_s" not in card  # not repeated in the table of further measurements
    assert "- Stage 1 (distillation) training time was not recorded." in render([], training={
        **training, "distill_time_s": None})
    assert "Stage 1 (distillation) training time" not in render([], training=training)  # no distill adapter


def test_model_card_from_a_real_benchmark_run(tmp_path):
    from benchmark.cli import cli as benchmark_cli

    out = tmp_path / "run"
    outcome = CliRunner().invoke(benchmark_cli, ["run", "--model", "random", "--out", str(out)])
    assert outcome.exit_code == 0, outcome.output
    import json

    results = json.loads((out / "results.json").read_text())
    card = render([results])
    rows = by_domain(card, "candidates `sbert`)")
    for domain, entry in results["metrics"]["hr@1"].items():
        assert rows[domain]["HR@1"] == f"{entry['value']:.4f}"
        assert rows[domain]["pairs"] == f"{entry['denominator']:,}"
    assert rows["beauty"]["paper HR@1"] == "0.1187"


# ---------------------------------------------------------------------------------------------
# The paper's numbers, checked against the paper text where ../shared has it
# ---------------------------------------------------------------------------------------------


def _normalise(name: str) -> str:
    return re.sub(r"[^a-z0-9.]", "", re.sub(r"<[^>]+>|\(ours\)", "", name.lower()))


def paper_table_rows(text: str, number: int) -> list[tuple[str, str, list[str]]]:
    """(group, method, cells) of Table ``number`` as printed in the paper text."""
    lines = text[text.index(f"**Table {number}:"):].splitlines()[1:]
    rows, group = [], ""
    for line in lines:
        if line.startswith("**Table") or (line.startswith("<b>Improvement")):
            break
        cells = line.split("\t")
        if cells[0].startswith("<i>") and not any(cells[1:]):
            group = cells[0]
        elif len(cells) == 7 and cells[0] not in ("", "Method"):
            rows.append((group, cells[0], cells[1:]))
    return rows


@pytest.mark.parametrize("number", [3, 5])
def test_paper_constants_equal_the_paper_text(number):
    if not PAPER_TEXT.is_file():
        pytest.skip("../shared/paper is not present")
    printed = paper_table_rows(PAPER_TEXT.read_text(encoding="utf-8"), number)
    ours = [row for row in PAPER_RESULTS if row.table == number]
    assert len(printed) == len(ours)
    for (_, method, cells), row in zip(printed, ours):
        assert _normalise(method) == _normalise(row.method).replace("-", ""), (method, row.method)
        values = [float(re.sub(r"<[^>]+>", "", c)) if re.search(r"\d", c) else None for c in cells]
        assert values[0::2] == list(row.hr1), row
        assert values[1::2] == (list(row.vr) if row.vr else [None, None, None]), row


def test_paper_lavic_rows_by_candidate_set():
    assert paper_lavic("sbert").hr1_of("home") == 0.3197
    assert paper_lavic("openai_large").vr_of("fashion") == 0.9455
    assert paper_lavic("bm25") is None


@pytest.mark.parametrize("bad, message", [
    ([], r"results 2: not a benchmark results.json \(a JSON object expected, not list\)"),
    ({}, r"results 2: .*missing or malformed: model, metrics, dataset, split, candidates"),
    ({**result("sbert", {"home": 0.3}), "metrics": {"hr@1": []}}, r"results 2: .*malformed: metrics.hr@1"),
    # one group's entry of the wrong JSON type: it once reached the table as a TypeError, AttributeError or
    # "Unknown format code 'f' for object of type 'str'"
    ({**result("sbert", {"home": 0.3}), "metrics": {"hr@1": {"home": 0.3}}}, r"malformed: metrics.hr@1.home\)"),
    ({**result("sbert", {"home": 0.3}), "metrics": {"hr@1": {"home": {}}}}, r"malformed: metrics.hr@1.home\)"),
    ({**result("sbert", {"home": 0.3}), "metrics": {"hr@1": {"home": {"value": "0.3"}}}}, r"metrics.hr@1.home\)"),
    ({**result("sbert", {"home": 0.3}), "metrics": {"vr": {"all": {"value": 0.9, "ci95": [0.8]}}}},
     r"malformed: metrics.vr.all\)"),
    ({**result("sbert", {"home": 0.3}), "metrics": {"hr@1": {"home": {"value": 0.3, "denominator": "40"}}}},
     r"malformed: metrics.hr@1.home\)"),
])
def test_results_that_are_not_a_results_json_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        render([result("sbert", {"home": 0.3}), bad])


def test_a_partial_run_is_marked_and_left_out_of_the_model_index():
    partial = {**result("sbert", {"beauty": 0.5, "fashion": 0.5, "home": 0.5}), "limit": 2}
    card = render([partial, result("sbert", {"beauty": 0.125, "fashion": 0.1, "home": 0.3})])
    assert "first 2 records per domain" in card and "A partial run (`benchmark run --limit 2`)" in card
    values = [m["value"] for entry in ModelCard(card).data.to_dict()["model-index"][0]["results"]
              for m in entry["metrics"]]
    assert 0.5 not in values and 0.125 in values


def test_unset_values_unknown_versions_and_hostile_text_stay_in_their_place():
    hostile = {**result("sbert\n\n## Injected", {"beauty": 0.1}), "model": {"spec": "lavic", "name": "evil\n## Limitations"}}
    hostile["dataset"]["version"] = "unknown"
    card = render([hostile], adapters={"distill_adapter": None, "rec_adapter": "runs/a,b/rec v2"},
                  training={"time_s": 10.0, "command": "run ``` ## Injected"})
    assert "| `distill_adapter` | not set |" in card and "None" not in card
    assert not re.search(r"^## (Injected|Limitations)\b.*evil", card, re.MULTILINE)
    assert [line for line in card.splitlines() if line.startswith("## Injected")] == []
    assert "revision" not in ModelCard(card).data.to_dict()["model-index"][0]["results"][0]["dataset"]
    usage = card.split("## Use", 1)[1]
    command = next(line for line in usage.splitlines() if line.startswith("benchmark run"))
    import shlex

    from benchmark.registry import parse_model_args

    argv = shlex.split(command)
    assert parse_model_args(argv[argv.index("--model-args") + 1])["rec_adapter"] == "runs/a,b/rec v2"


def test_the_use_command_runs_as_written_with_the_training_prompt_cap():
    import shlex

    from benchmark.registry import parse_model_args

    card = render([], hyperparameters={"max_prompt_tokens": 1024})
    command = next(line for line in card.split("## Use", 1)[1].splitlines() if line.startswith("benchmark run"))
    argv = shlex.split(command)
    assert argv[argv.index("--out") + 1] == "runs/lavic"
    assert parse_model_args(argv[argv.index("--model-args") + 1])["max_tokens"] == 1024
    assert "max_tokens" not in render([], hyperparameters={"max_prompt_tokens": 2048}).split("## Use", 1)[1]
    trained = render([], data={"dataset": "d", "candidates": "openai_large"})
    use = next(line for line in trained.split("## Use", 1)[1].splitlines() if line.startswith("benchmark run"))
    assert shlex.split(use)[-2:] == ["--candidates", "openai_large"]
    assert "--candidates" not in render([], data={"dataset": "d", "candidates": "sbert"}).split("## Use", 1)[1] \
        .split("```")[1]


def test_the_use_command_runs_on_the_data_and_domains_the_adapter_was_trained_on():
    import shlex

    def commands(data: dict) -> list[list[str]]:
        usage = render([], data=data).split("## Use", 1)[1]
        return [shlex.split(line) for line in usage.splitlines() if line.startswith("benchmark run")]

    def option(argv: list[str], name: str) -> str | None:
        return argv[argv.index(name) + 1] if name in argv else None

    (hub,) = commands({"dataset": "org/reddit-amazon", "domains": ["beauty", "fashion", "home"]})
    assert option(hub, "--dataset") == "org/reddit-amazon" and option(hub, "--domain") is None
    (local,) = commands({"dataset": "/home/alice/data/my-build", "domains": ["fashion"]})
    assert option(local, "--dataset") == "my-build" and option(local, "--domain") == "fashion"
    card = render([], data={"dataset": "/home/alice/data/my-build", "fingerprint": "b1f5e44189f1"})
    assert "/home/alice" not in card and "my-build (a local folder)" in card.split("## Data and splits")[1]
    (sample,) = commands({"dataset": "bundled sample", "domains": ["home"]})
    assert "--dataset" not in sample and option(sample, "--domain") == "home"
    two = commands({"dataset": "data/ra", "domains": ["home", "beauty"]})  # --domain takes one domain or all
    assert [(option(c, "--dataset"), option(c, "--domain"), option(c, "--out")) for c in two] == [
        ("data/ra", "beauty", "runs/lavic-beauty"), ("data/ra", "home", "runs/lavic-home")]


def test_the_use_command_of_a_titles_only_adapter_turns_images_off():
    import shlex

    from benchmark.registry import parse_model_args

    def model_args(card: str) -> dict:
        command = next(line for line in card.split("## Use", 1)[1].splitlines() if line.startswith("benchmark run"))
        argv = shlex.split(command)
        return parse_model_args(argv[argv.index("--model-args") + 1])

    assert model_args(render([], hyperparameters={"images": False}))["images"] is False  # finetune --no-images
    assert "images" not in model_args(render([], hyperparameters={"images": True}))


def test_results_on_other_data_than_the_training_data_are_flagged():
    same = render([result("sbert", {"beauty": 0.1})], data={"dataset": "d", "fingerprint": "f" * 64})
    other = render([result("sbert", {"beauty": 0.1})], data={"dataset": "d", "fingerprint": "a" * 64})
    assert "Evaluated on other data" not in same
    assert "Evaluated on other data than the adapters were trained on" in other and "`aaaaaaaaaaaa`" in other


def test_results_on_the_split_the_adapters_were_trained_on_are_flagged_and_left_out_of_the_model_index():
    """The authors' release has only validation records: `finetune --train-split validation` then scores there."""
    on_validation = {**result("sbert", {"home": 0.9}), "split": "validation"}
    trained = {"dataset": "d", "fingerprint": "f" * 64, "train_split": "validation"}
    card = render([on_validation, result("sbert", {"home": 0.3})], data=trained)
    assert "**Evaluated on the records the adapters were trained on** (`finetune --train-split validation`)" in card
    assert card.count("Evaluated on the records the adapters were trained on") == 1  # not the test split's result
    values = [m["value"] for entry in ModelCard(card).data.to_dict()["model-index"][0]["results"]
              for m in entry["metrics"]]
    assert 0.9 not in values and 0.3 in values
    elsewhere = render([on_validation], data={**trained, "fingerprint": "a" * 64})
    assert "records the adapters were trained on" not in elsewhere and "Evaluated on other data" in elsewhere
    assert "records the adapters were trained on" not in render([on_validation], data={**trained, "train_split": "train"})


def test_results_on_domains_the_adapters_were_not_trained_on_are_marked():
    scores = result("sbert", {"beauty": 0.1, "fashion": 0.2, "home": 0.3})
    one = render([scores], data={"dataset": "d", "fingerprint": "f" * 64, "domains": ["fashion"]})
    rows = by_domain(one, "### lavic on org/reddit-amazon")
    assert set(rows) == {"beauty (not trained on)", "fashion", "home (not trained on)", "all"}
    assert "trained on fashion only" in one
    every = render([scores], data={"dataset": "d", "fingerprint": "f" * 64, "domains": ["beauty", "fashion", "home"]})
    assert "not trained on" not in every


def test_hostile_markdown_in_results_and_training_records_is_shown_as_text():
    """The model and dataset names and the split of a results.json (a results heading), the hardware and the
    candidate set show Markdown as the text it is: the card links, embeds and emphasises nothing of theirs."""

    def card(text: str) -> str:
        given = {**result("sbert", {"beauty": 0.1}), "model": {"spec": "lavic", "name": text}, "split": text}
        given["dataset"]["id"] = text
        return render([given], training={"time_s": 10.0, "hardware": text},
                      data={"dataset": f"/home/me/{text}", "candidates": text, "fingerprint": "f" * 64})

    hostile = card(HOSTILE_MARKDOWN)
    assert_shown_as_text(hostile, card("plain"))
    assert f"{HOSTILE_MARKDOWN} on {HOSTILE_MARKDOWN} ({HOSTILE_MARKDOWN}, candidates sbert)" in rendered_headings(hostile)


def test_a_local_base_checkpoint_is_named_by_its_weights_not_its_path(tmp_path):
    """`base_model: /home/someone/models/llava` leaked a local path into a published card and was no Hub repo id."""
    import shlex

    from benchmark.registry import parse_model_args

    text = render([result("sbert", {"beauty": 0.1})], base_model="/home/someone/models/llava",
                  base_fingerprint="0123abcd")
    assert "/home/someone" not in text and "models/llava" not in text
    (tmp_path / "README.md").write_text(text, encoding="utf-8")
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.base_model is None and "base_model" not in text.split("---")[1]
    assert "turn a local LLaVA-NeXT checkpoint (weights fingerprint `0123abcd`; it names no Hub model) into" in text
    from cards.model_card import LOCAL_BASE

    use = text.split("## Use", 1)[1]
    command = next(line for line in use.splitlines() if line.startswith("benchmark run"))
    argv = shlex.split(command)
    assert parse_model_args(argv[argv.index("--model-args") + 1])["base"] == LOCAL_BASE
    assert f"`{LOCAL_BASE}` stands for the local base checkpoint it was trained on (weights fingerprint" in use
    unknown = render([], base_model=None)
    assert "(its weights fingerprint was not recorded; it names no Hub model)" in unknown
    assert f"base={BASE}" in render([]).split("## Use", 1)[1]  # a Hub id stays, in the Use command too


def test_results_on_a_local_dataset_name_its_folder_not_its_path():
    """A local dataset's results.json records its absolute path as the id; the results heading showed it."""
    text = render([result("sbert", {"beauty": 0.1}, dataset_id="/home/someone/data/my-build")])
    assert "/home/someone" not in text
    assert "### lavic on my-build (a local folder) (test, candidates `sbert`)" in text
    assert "### lavic on org/reddit-amazon (test," in render([result("sbert", {"beauty": 0.1})])


def test_the_published_card_names_files_outside_its_folder_by_placeholders_and_its_own_relative_to_it():
    """The Adapters table and the Use command showed where the adapters and item embeddings lay on the training
    machine (`/home/alice/...`): a leak in a published card, and a command nobody who downloaded the folder can run.
    Files in the card's folder are named relative to it; others by a placeholder and, in a sentence, their name."""
    import shlex

    from benchmark.registry import parse_model_args

    embeddings = "item_embeddings-9ced1b61-68c575d654aa4c79.safetensors"
    card = render([], adapters={"distill_adapter": "/home/alice/runs/distill/best", "rec_adapter": "best",
                                "item_embeddings": f"~/runs/emb/{embeddings}"})
    assert "/home/alice" not in card and "~/runs" not in card
    usage = card.split("## Use", 1)[1]
    argv = shlex.split(next(line for line in usage.splitlines() if line.startswith("benchmark run")))
    model_args = parse_model_args(argv[argv.index("--model-args") + 1])
    assert (model_args["distill_adapter"], model_args["rec_adapter"], model_args["item_embeddings"]) == (
        "<folder of the distill adapter>", "best", "<item embeddings file>")
    assert (" Run it in this folder: the files it names there are in it. `<folder of the distill adapter>` stands "
            "for the distill adapter (`distill/best` on the training machine); `<item embeddings file>` stands for "
            f"the item embeddings (`{embeddings}` on the training machine): these files are not in this folder."
            ) in " ".join(usage.split())
    adapters = {row[""]: row["value"] for row in markdown_table_after(card, "## Adapters", "")}
    assert adapters == {"`rec_adapter`": "`best`", "`distill_adapter`": "`distill/best`, not in this folder",
                        "`item_embeddings`": f"`{embeddings}`, not in this folder"}


def test_a_dataset_under_the_home_folder_is_named_by_its_folder_as_every_local_path_of_the_cards():
    """The model card named an absolute dataset path by its folder but showed a `~` path as recorded (the home
    folder's layout), unlike every other local path the cards show (cards.local_paths)."""
    import shlex

    home = "~/data/my-build"
    card = render([result("sbert", {"beauty": 0.1}, dataset_id=home)], data={"dataset": home, "domains": ["beauty"]})
    assert "~/data" not in card
    assert "### lavic on my-build (a local folder) (test," in card
    assert "my-build (a local folder)" in card.split("## Data and splits")[1].split("##")[0]
    (use,) = [shlex.split(line) for line in card.split("## Use", 1)[1].splitlines() if line.startswith("benchmark")]
    assert use[use.index("--dataset") + 1] == "my-build"
