"""`benchmark run` end to end on synthetic dataset folders: outputs, caching/resume, errors, CLI, report, compare."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from core_install import import_extra  # tests/
from click.testing import CliRunner

from benchmark.cli import cli
from benchmark.data import DatasetError
from benchmark.registry import RegistryError
from benchmark.runner import RunConfig, RunError, run
from benchmark.synthetic import make_synthetic_dataset
from reddit_amazon.files import DamagedFileError


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("synthetic") / "ds", records_per_domain=12,
                                  items_per_domain=40, candidate_sets=("sbert", "bm25"))


def test_a_gt_item_listed_twice_counts_as_two_pairs_in_every_count(tmp_path):
    """As the reference evaluation counts (49 records of the authors' validation sets list a gt item twice)."""
    from reddit_amazon.dataset_folder import DatasetContents, write_dataset
    from reddit_amazon.schema import Conversation, Item, Turn

    ids = [f"B0000000{i:02d}" for i in range(10)]
    record = Conversation(example_id="home-test-000000", domain="home", thread_id="t", subreddit="r", created_utc=1,
                          turns=[Turn(kind="submission", text="a lamp?")], context_items=[], gt_text="this",
                          gt_items=[ids[3], ids[3]], candidates={"sbert": ids})
    items = [Item(item_id=item_id, domain="home", title=f"lamp {item_id}") for item_id in ids]
    write_dataset(tmp_path / "ds", DatasetContents(conversations={"home": {"test": [record]}}, items={"home": items},
                                                  version="0.0.0", candidate_sets=["sbert"]))

    class Fourth:
        def recommend(self, examples):
            return [e.candidates[3].item_id for e in examples]

    results = run(RunConfig(model="fourth", dataset=str(tmp_path / "ds"), domain="home", bootstrap_samples=0),
                  tmp_path / "run", recommender=Fourth(), progress=False)
    assert results["counts"]["all"] == {"records": 1, "gt_pairs": 2, "gt_in_candidates": 2, "hits": 2, "valid": 1}
    assert results["metrics"]["hr@1"]["all"]["value"] == 1.0


def test_an_answer_naming_a_candidate_in_lower_case_is_not_valid_as_in_the_reference(dataset, tmp_path):
    class LowerCase:
        def recommend(self, examples):
            return [f"  {e.candidates[0].item_id.lower()}  " for e in examples]

    results = run(RunConfig(model="lower", dataset=str(dataset), domain="home", limit=3, bootstrap_samples=0),
                  tmp_path, recommender=LowerCase(), progress=False)
    assert results["counts"]["home"]["valid"] == 0 and results["counts"]["home"]["hits"] == 0
    rows = [orjson.loads(line) for line in (tmp_path / "predictions.jsonl").read_bytes().splitlines()]
    assert [row["parsed"] for row in rows] == [None, None, None]


class LastCandidate:
    """Answers with chatter around the last candidate's id; counts calls."""

    def __init__(self, fail_after_batches: int | None = None) -> None:
        self.batch_size = 5
        self.fail_after_batches = fail_after_batches
        self.seen: list[str] = []

    def recommend(self, examples):
        if self.fail_after_batches is not None and len(self.seen) >= self.fail_after_batches * self.batch_size:
            raise KeyboardInterrupt  # what an interrupted run looks like
        self.seen.extend(e.example_id for e in examples)
        return [f"I'd go with {e.candidates[-1].item_id} for sure" for e in examples]


def _gt_rows(dataset: Path) -> list[dict]:
    import datasets

    rows = []
    for domain in ("beauty", "fashion", "home"):
        rows.extend(datasets.load_dataset(str(dataset), domain, split="test").to_list())
    return rows


def test_results_and_predictions_match_an_independent_count(dataset, tmp_path):
    results = run(RunConfig(model="last", dataset=str(dataset), bootstrap_samples=200), tmp_path / "run",
                  recommender=LastCandidate(), progress=False)
    rows = _gt_rows(dataset)
    pairs = sum(len(r["gt_items"]) for r in rows)
    hits = sum(r["candidates_sbert"][-1] == g for r in rows for g in r["gt_items"])
    assert pairs > len(rows)  # the synthetic set has multi-gt records
    assert results["metrics"]["hr@1"]["all"]["value"] == pytest.approx(hits / pairs)
    assert results["metrics"]["vr"]["all"]["value"] == 1.0
    for domain in ("beauty", "fashion", "home"):
        mine = [r for r in rows if r["domain"] == domain]
        expected = sum(r["candidates_sbert"][-1] == g for r in mine for g in r["gt_items"]) / \
            sum(len(r["gt_items"]) for r in mine)
        assert results["metrics"]["hr@1"][domain]["value"] == pytest.approx(expected)
        low, high = results["metrics"]["hr@1"][domain]["ci95"]
        assert low <= expected <= high
    within = sum(g in r["candidates_sbert"] for r in rows for g in r["gt_items"])
    assert 0 < within < pairs  # the synthetic set has gt items outside the candidates
    assert results["counts"]["all"] == {"records": 36, "gt_pairs": pairs, "gt_in_candidates": within, "hits": hits,
                                        "valid": 36}
    assert results["dataset"]["fingerprint"] == json.loads((dataset / "manifest.json").read_text())["fingerprint"]
    assert results["split"] == "test" and results["candidates"] == "sbert"
    for key in ("model", "timings", "package_version", "git_revision", "bootstrap"):
        assert key in results
    lines = [orjson.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_bytes().splitlines()]
    assert [line["example_id"] for line in lines] == [r["example_id"] for r in rows]
    first = lines[0]
    assert first["output"].startswith("I'd go with ") and first["parsed"] == rows[0]["candidates_sbert"][-1]
    assert {"valid", "hit", "hits", "gt_pairs"} <= set(first)


def test_interrupted_run_resumes_and_finished_run_is_reused(dataset, tmp_path):
    config = RunConfig(model="last", dataset=str(dataset), domain="beauty", bootstrap_samples=50)
    with pytest.raises(KeyboardInterrupt):
        run(config, tmp_path, recommender=LastCandidate(fail_after_batches=1), progress=False)
    assert len((tmp_path / "predictions.jsonl").read_bytes().splitlines()) == 5
    with open(tmp_path / "predictions.jsonl", "ab") as handle:
        handle.write(b'{"example_id": "beauty-te')  # a torn line from a crash mid-write
    second = LastCandidate()
    results = run(config, tmp_path, recommender=second, progress=False)
    assert len(second.seen) == 7 and results["timings"]["resumed_records"] == 5
    assert results["counts"]["all"]["records"] == 12
    third = LastCandidate()
    again = run(config, tmp_path, recommender=third, progress=False)
    assert third.seen == [] and again == results
    fourth = LastCandidate()
    run(config, tmp_path, recommender=fourth, overwrite=True, progress=False)
    assert len(fourth.seen) == 12


def test_a_write_cut_right_after_a_row_resumes_twice(dataset, tmp_path):
    config = RunConfig(model="last", dataset=str(dataset), domain="home", bootstrap_samples=0)
    with pytest.raises(KeyboardInterrupt):
        run(config, tmp_path, recommender=LastCandidate(fail_after_batches=1), progress=False)
    predictions = tmp_path / "predictions.jsonl"
    predictions.write_bytes(predictions.read_bytes().rstrip(b"\n"))  # the cut fell just before a newline
    with pytest.raises(KeyboardInterrupt):  # interrupted again: what it appended must stay readable
        run(config, tmp_path, recommender=LastCandidate(fail_after_batches=1), progress=False)
    assert all(orjson.loads(line) for line in predictions.read_bytes().splitlines())
    third = LastCandidate()
    results = run(config, tmp_path, recommender=third, progress=False)
    assert results["counts"]["all"]["records"] == 12 and len(third.seen) == 12 - 4 - 5


def test_a_different_run_in_the_same_folder_is_refused(dataset, tmp_path):
    run(RunConfig(model="random", dataset=str(dataset), domain="home", bootstrap_samples=0), tmp_path, progress=False)
    with pytest.raises(RunError, match="differs in: model_args"):
        run(RunConfig(model="random", model_args={"seed": 3}, dataset=str(dataset), domain="home"), tmp_path,
            progress=False)
    plugin = tmp_path / "tokens.py"
    plugin.write_text("class Tokens:\n"
                      "    def __init__(self, max_new_tokens=8):\n"
                      "        pass\n"
                      "    def recommend(self, examples):\n"
                      "        return [e.candidates[0].item_id for e in examples]\n")
    config = RunConfig(model=f"{plugin}:Tokens", model_args={"max_new_tokens": 8}, dataset=str(dataset),
                       domain="home", bootstrap_samples=0)
    run(config, tmp_path / "t", progress=False)
    with pytest.raises(RunError, match="differs in: model_args"):  # not taken for a secret and ignored
        run(RunConfig(**{**config.__dict__, "model_args": {"max_new_tokens": 512}}), tmp_path / "t", progress=False)


def test_a_run_folder_whose_plugin_code_changed_holds_another_run(dataset, tmp_path):
    """A plugin file edited between two runs into one folder: its earlier predictions were reused as if unchanged."""
    import hashlib

    plugin = tmp_path / "first.py"
    code = ("class First:\n"
            "    def recommend(self, examples):\n"
            "        return [e.candidates[0].item_id for e in examples]\n")
    plugin.write_text(code)
    config = RunConfig(model=f"{plugin}:First", dataset=str(dataset), domain="home", limit=3, bootstrap_samples=0)
    results = run(config, tmp_path / "out", progress=False)
    recorded = {"sha256": hashlib.sha256(code.encode()).hexdigest(), "distribution": None}
    assert results["model"]["code"] == recorded
    assert json.loads((tmp_path / "out" / "run.json").read_text())["model_code"] == recorded
    assert run(config, tmp_path / "out", progress=False) == results  # the same code: the finished run
    (tmp_path / "out" / "results.json").unlink()  # interrupted: resumed only with the same code
    plugin.write_text(code.replace("candidates[0]", "candidates[1]"))
    with pytest.raises(RunError, match=r"differs in: model_code \(the plugin's code is not the code that run used\)"):
        run(config, tmp_path / "out", progress=False)
    plugin.write_text(code)
    assert run(config, tmp_path / "out", progress=False)["metrics"] == results["metrics"]
    builtin = run(RunConfig(model="random", dataset=str(dataset), domain="home", limit=3, bootstrap_samples=0),
                  tmp_path / "random", progress=False)
    assert builtin["model"]["code"] is None  # the toolkit's own: package_version and git_revision name it


def test_missing_candidate_set_lists_the_available_ones(dataset, tmp_path):
    with pytest.raises(DatasetError, match="'openai_large' was not computed.*available: sbert, bm25"):
        run(RunConfig(model="random", dataset=str(dataset), candidates="openai_large"), tmp_path, progress=False)
    with pytest.raises(DatasetError, match="no 'validation' split"):
        run(RunConfig(model="random", dataset=str(dataset), domain="home", split="validation"), tmp_path / "b",
            progress=False)


def test_unknown_model_suggests_names(dataset, tmp_path):
    with pytest.raises(RegistryError, match="Did you mean: sbert"):
        run(RunConfig(model="sbret", dataset=str(dataset)), tmp_path, progress=False)


def test_plugin_from_file_with_model_args_and_limit(dataset, tmp_path):
    plugin = tmp_path / "my_plugin.py"
    plugin.write_text(
        "class Pick:\n"
        "    def __init__(self, index=0):\n"
        "        self.index = index\n"
        "    def recommend(self, examples):\n"
        "        return [e.candidates[self.index].item_id for e in examples]\n")
    results = run(RunConfig(model=f"{plugin}:Pick", model_args={"index": 2}, dataset=str(dataset), limit=4,
                            bootstrap_samples=0), tmp_path / "out", progress=False)
    assert results["counts"]["all"]["records"] == 12  # 4 per domain
    lines = [orjson.loads(x) for x in (tmp_path / "out" / "predictions.jsonl").read_bytes().splitlines()]
    rows = {r["example_id"]: r for r in _gt_rows(dataset)}
    assert all(line["parsed"] == rows[line["example_id"]]["candidates_sbert"][2] for line in lines)


def test_misbehaving_plugin_is_named(dataset, tmp_path):
    class Short:
        def recommend(self, examples):
            return ["B000000001"]

    with pytest.raises(RunError, match="returned 1 outputs for"):
        run(RunConfig(model="short", dataset=str(dataset), batch_size=4), tmp_path, recommender=Short(),
            progress=False)


class _Returns:
    """A plugin returning ``value(examples)`` from ``method``."""

    def __init__(self, method, value):
        setattr(self, method, value)


@pytest.mark.parametrize("method, value, error", [
    ("recommend", lambda examples: tuple("B000000001" for _ in examples),
     re.escape("recommend() returned a tuple for 4 examples; it must return a list with one str per example, in order")),
    ("recommend", lambda examples: None,
     re.escape("recommend() returned a NoneType for 4 examples; it must return a list with one str per example, in order")),
    ("recommend", lambda examples: ["B000000001"] * 3,
     re.escape("recommend() returned 3 outputs for 4 examples; it must return a list with one str per example, in order")),
    ("recommend", lambda examples: [None] * len(examples),
     r"recommend\(\) returned NoneType for \S+; expected a str \(return \"\" where the model has no answer: the "
     r"record then scores as not valid\)"),
    ("rank", lambda examples: [None] * len(examples),
     r"rank\(\) returned NoneType for \S+; expected a list of item ids \(str\) \(return \[\] where the model has no "
     r"answer"),
])
def test_a_plugin_s_unusable_output_is_refused_saying_what_to_return(dataset, tmp_path, method, value, error):
    """"returned tuple outputs for 4 examples (must be a list, one each)" and "returned NoneType for x; expected a
    str" said what was wrong, not what a plugin that has no answer for a record should return."""
    with pytest.raises(RunError, match=error):
        run(RunConfig(model="mine", dataset=str(dataset), batch_size=4), tmp_path, recommender=_Returns(method, value),
            progress=False)


@pytest.mark.parametrize("ranking, holding", [([1, 2, 3], "int"), ([None], "NoneType")])
def test_a_ranking_of_something_other_than_ids_says_what_it_holds(dataset, tmp_path, ranking, holding):
    """A ranking of ints was refused as "rank() returned list for x; expected a list of item ids (str)": the
    plugin did return a list, and the message did not say what was wrong with it."""
    recommender = _Returns("rank", lambda examples: [ranking] * len(examples))
    with pytest.raises(RunError, match=rf"rank\(\) returned a list holding {holding} for \S+; expected a list of item "
                                       r"ids \(str\)"):
        run(RunConfig(model="mine", dataset=str(dataset), batch_size=4), tmp_path, recommender=recommender,
            progress=False)


@pytest.mark.parametrize("method, value, returned", [
    ("rank", lambda examples: [list(e.candidates) for e in examples], "a list holding Candidate"),
    ("recommend", lambda examples: [e.candidates[0] for e in examples], "Candidate"),
])
def test_candidates_returned_instead_of_ids_are_refused_saying_where_the_id_is(dataset, tmp_path, method, value,
                                                                                returned):
    with pytest.raises(RunError, match=rf"{method}\(\) returned {returned} \(its id is its item_id\) for \S+; "):
        run(RunConfig(model="mine", dataset=str(dataset), batch_size=4), tmp_path, recommender=_Returns(method, value),
            progress=False)


def test_unusable_output_names_the_recommender(dataset, tmp_path):
    """"Error: recommend() returned NoneType for 0cb09fr" did not say which recommender: in a sweep's log of many
    runs, the failing one was left to guess (a constructor's failure did name it)."""
    plugin = tmp_path / "none_plugin.py"
    plugin.write_text("class Nothing:\n    def recommend(self, examples):\n        return [None for _ in examples]\n")
    result = CliRunner().invoke(cli, ["run", "--model", f"{plugin}:Nothing", "--dataset", str(dataset),
                                      "--out", str(tmp_path / "run"), "--quiet"])
    assert result.exit_code == 1
    assert f"Error: recommender '{plugin}:Nothing': recommend() returned NoneType for " in result.output


def test_a_plugin_that_reorders_its_batch_in_place_keeps_each_answer_on_its_record(dataset, tmp_path):
    """The harness zipped the outputs with the very list it had passed: a plugin that sorted that list in place (by
    length, for padding) and answered in the order it was given had its answers scored against other records,
    silently (on the sample: VR 0.25 instead of 1.0)."""

    class LengthSorted:
        def recommend(self, examples):
            given = list(examples)
            examples.sort(key=lambda e: len(e.context))
            answers = {id(e): e.candidates[0].item_id for e in examples}
            return [answers[id(e)] for e in given]

    results = run(RunConfig(model="sorted", dataset=str(dataset), batch_size=8, bootstrap_samples=0), tmp_path,
                  recommender=LengthSorted(), progress=False)
    assert results["metrics"]["vr"]["all"]["value"] == 1.0


def test_examples_never_carry_the_ground_truth(dataset, tmp_path):
    seen = []

    class Spy:
        def recommend(self, examples):
            seen.extend(examples)
            return ["" for _ in examples]

    results = run(RunConfig(model="spy", dataset=str(dataset), domain="fashion", bootstrap_samples=0), tmp_path,
                  recommender=Spy(), progress=False)
    assert results["metrics"]["vr"]["all"]["value"] == 0.0
    example = seen[0]
    assert not hasattr(example, "gt_items") and not hasattr(example, "gt_text")
    assert example.context.startswith("<submission>") and example.turns[0].kind == "submission"
    assert len(example.candidates) == 10 and example.candidates[0].title
    assert example.candidates[0].image.size == (8, 8)
    assert example.candidates[0].image_path.read_bytes() == example.candidates[0].image_bytes


def test_a_plugin_that_reads_no_image_gets_none_and_the_built_ins_say_which_read_them(dataset, tmp_path):
    """A large catalog's images are many GB: a text-only plugin must not have them all read into memory."""
    from benchmark.recommenders.random_choice import RandomRecommender
    from benchmark.recommenders.similarity import BM25Recommender, SBERTRecommender

    seen = {}

    class Spy:
        def __init__(self, uses_images):
            if uses_images is not None:
                self.uses_images = uses_images

        def recommend(self, examples):
            seen[self.__dict__.get("uses_images")] = examples[0].candidates
            return ["" for _ in examples]

    for uses_images in (None, True, False):
        run(RunConfig(model="spy", dataset=str(dataset), domain="fashion", bootstrap_samples=0),
            tmp_path / str(uses_images), recommender=Spy(uses_images), progress=False)
    assert all(c.image_bytes for c in seen[None]) and all(c.image_bytes for c in seen[True])
    assert all(c.image_bytes is None and c.title for c in seen[False])
    assert RandomRecommender.uses_images is BM25Recommender.uses_images is SBERTRecommender.uses_images is False


def test_a_plugin_that_reads_images_gets_each_candidate_s_own_image_as_bytes_pil_and_file(tmp_path, monkeypatch):
    """What docs/benchmark.md promises a plugin with ``uses_images`` left True (the default), on the bundled sample,
    which has candidates without an image: the item's encoded image as ``image_bytes``, an RGB PIL image of its size
    as ``image``, a file holding those bytes as ``image_path``, and None for all three where the item has none. A
    plugin saying ``uses_images = False`` gets None for all three and no file is written."""
    import io

    import datasets
    from PIL import Image

    from benchmark.data import resolve_dataset

    images = tmp_path / "images"
    monkeypatch.setenv("REDDIT_AMAZON_IMAGE_DIR", str(images))
    seen: dict[bool, dict] = {True: {}, False: {}}

    class Looking:
        def __init__(self, uses_images):
            self.uses_images = uses_images

        def recommend(self, examples):
            for example in examples:
                for candidate in example.candidates:
                    seen[self.uses_images][candidate.item_id] = (
                        candidate.image_bytes, candidate.image, candidate.image_path)
            return ["" for _ in examples]

    run(RunConfig(model="looking", bootstrap_samples=0), tmp_path / "with", recommender=Looking(True), progress=False)
    stored = {}
    for domain in ("beauty", "fashion", "home"):
        items = datasets.load_dataset(resolve_dataset(None).path, "items", split=domain)
        items = items.select_columns(["item_id", "image"]).cast_column("image", datasets.Image(decode=False))
        stored.update((row["item_id"], row["image"]) for row in items)
    without = [item_id for item_id in seen[True] if not (stored[item_id] or {}).get("bytes")]
    assert without and len(without) < len(seen[True])  # the sample has both kinds
    for item_id, (image_bytes, image, image_path) in seen[True].items():
        if item_id in without:
            assert image_bytes is image is image_path is None, item_id
            continue
        assert image_bytes == stored[item_id]["bytes"]
        assert isinstance(image, Image.Image) and image.mode == "RGB"
        assert image.size == Image.open(io.BytesIO(image_bytes)).size
        assert image_path.parent == images and image_path.read_bytes() == image_bytes
    written = set(images.iterdir())

    run(RunConfig(model="looking", bootstrap_samples=0), tmp_path / "without", recommender=Looking(False),
        progress=False)
    assert seen[False].keys() == seen[True].keys()
    assert all(value == (None, None, None) for value in seen[False].values())
    assert set(images.iterdir()) == written


def test_a_plugin_that_reads_images_gets_them_without_a_second_load_of_the_items(dataset, tmp_path, monkeypatch):
    """The items were read text-only before the plugin (a bad dataset fails before a heavy model loads), then
    loaded again whole for a plugin that reads images; now only their image column is read, once."""
    import datasets

    loaded = []
    load_dataset = datasets.load_dataset

    def counted(path, name=None, *args, **kwargs):
        loaded.append(name)
        return load_dataset(path, name, *args, **kwargs)

    class Pictures:
        def recommend(self, examples):
            assert all(c.image_bytes and c.title for e in examples for c in e.candidates)
            return [e.candidates[0].item_id for e in examples]

    monkeypatch.setattr(datasets, "load_dataset", counted)
    results = run(RunConfig(model="pictures", dataset=str(dataset), bootstrap_samples=0), tmp_path / "run",
                  recommender=Pictures(), progress=False)
    assert loaded.count("items") == len(results["domains"]) == 3 and results["items_missing_from_catalog"] == []


def test_items_none_of_which_are_in_the_catalog_load_as_an_empty_lookup(dataset):
    """No wanted item in the items table: an empty (untyped) list of row positions was an Arrow error."""
    from benchmark.data import load_items, resolve_dataset

    items = load_items(resolve_dataset(str(dataset)), "beauty", {"B0NOTTHERE"})
    items.finish_loading(with_images=True)
    assert items.items == {} and items.candidate("B0NOTTHERE").title == ""


def test_cli_run_report_compare(dataset, tmp_path):
    import_extra("bm25s")
    runner = CliRunner()
    for model in ("random", "bm25"):
        result = runner.invoke(cli, ["run", "--model", model, "--dataset", str(dataset), "--out",
                                     str(tmp_path / model), "--quiet", "--bootstrap-samples", "100"])
        assert result.exit_code == 0, result.output
        assert "hr@1" in result.output
    bm25 = json.loads((tmp_path / "bm25" / "results.json").read_text())
    random = json.loads((tmp_path / "random" / "results.json").read_text())
    assert bm25["metrics"]["hr@1"]["all"]["value"] > random["metrics"]["hr@1"]["all"]["value"]
    assert "recall@5" in bm25["metrics"] and "ndcg@10" in bm25["metrics"]
    html = tmp_path / "site" / "board.html"
    report = runner.invoke(cli, ["report", str(tmp_path / "random"), str(tmp_path / "bm25"), "--html", str(html)])
    assert report.exit_code == 0, report.output
    best = f"**{bm25['metrics']['hr@1']['beauty']['value']:.4f}**"
    assert "| Method | Beauty HR@1 | Beauty VR |" in report.output and best in report.output
    assert "<th colspan=2><i>Fashion</i></th>" in html.read_text()
    compare = runner.invoke(cli, ["compare", str(tmp_path / "bm25"), str(tmp_path / "random"),
                                  "--bootstrap-samples", "200"])
    assert compare.exit_code == 0, compare.output

    # `report runs/*` while one run is unfinished: the finished ones are reported, the other is named
    unfinished = tmp_path / "going"
    unfinished.mkdir()
    (unfinished / "run.json").write_text((tmp_path / "bm25" / "run.json").read_text())
    report = runner.invoke(cli, ["report", str(tmp_path / "random"), str(unfinished)])
    assert report.exit_code == 0 and f"skipped {unfinished}: the run has not finished" in report.output
    assert "| Method | Beauty HR@1 | Beauty VR |" in report.output
    alone = runner.invoke(cli, ["report", str(unfinished)])
    assert alone.exit_code == 1 and "no finished run to report" in alone.output
    hr_all = next(line for line in compare.output.splitlines() if line.startswith("| hr@1 | all |"))
    assert "+0." in hr_all.split("|")[5]
    bad = runner.invoke(cli, ["run", "--model", "rnadom", "--dataset", str(dataset), "--out", str(tmp_path / "x")])
    assert bad.exit_code != 0 and "Did you mean: random" in bad.output


def test_retrieve_over_the_full_catalog(dataset, tmp_path):
    import_extra("bm25s")
    import datasets

    from benchmark.retrieval import get_retriever

    result = CliRunner().invoke(cli, ["retrieve", "--retriever", "bm25", "--dataset", str(dataset), "--domain",
                                      "home", "--out", str(tmp_path), "--quiet", "--bootstrap-samples", "50"])
    assert result.exit_code == 0, result.output
    lines = [orjson.loads(x) for x in (tmp_path / "candidates.jsonl").read_bytes().splitlines()]
    rows = datasets.load_dataset(str(dataset), "home", split="test").to_list()
    items = datasets.load_dataset(str(dataset), "items", split="home").to_list()
    expected = get_retriever("bm25").top_k([r["context"] for r in rows], [(i["item_id"], i["title"]) for i in items])
    assert [line["candidates"] for line in lines] == expected
    hits = sum(ranking[0] == g for ranking, r in zip(expected, rows) for g in r["gt_items"])
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["metrics"]["hr@1"]["home"]["value"] == hits / sum(len(r["gt_items"]) for r in rows)
    assert "vr" not in results["metrics"] and results["candidate_set_name"] == "bm25"
    assert results["items_without_text"] == {"items": sum(not i["title"].strip() for i in items), "of": len(items)}
    for k in (5, 10):  # the default k=10 reports both cutoffs, per (record, gt item) pair
        found = sum(g in ranking[:k] for ranking, r in zip(expected, rows) for g in r["gt_items"])
        assert results["metrics"][f"recall@{k}"]["home"]["value"] == found / sum(len(r["gt_items"]) for r in rows)


def test_retrieve_reads_descriptions_only_when_asked_and_ranks_the_first_limit_records(dataset, tmp_path,
                                                                                        monkeypatch):
    import_extra("bm25s")
    import datasets

    import benchmark.retrieve
    from benchmark.retrieval import get_retriever
    from benchmark.retrieve import RetrieveConfig, retrieve

    rows = datasets.load_dataset(str(dataset), "home", split="test").to_list()[:2]
    items = datasets.load_dataset(str(dataset), "items", split="home").to_list()
    for with_description in (False, True):
        retriever, searched = get_retriever("bm25"), []
        ranked = retriever.top_k

        def top_k(queries, catalog, k=10, ranked=ranked, searched=searched):
            searched.append(catalog)
            return ranked(queries, catalog, k=k)

        retriever.top_k = top_k  # the real retriever, told what it was given to search
        monkeypatch.setattr(benchmark.retrieve, "get_retriever", lambda name, retriever=retriever: retriever)
        config = RetrieveConfig(retriever="bm25", dataset=str(dataset), domain="home", limit=2,
                                with_description=with_description, bootstrap_samples=0)
        out = tmp_path / f"with_description={with_description}"
        retrieve(config, out, progress=False)
        texts = sorted((i["item_id"], f"{i['title']}\n{i['description']}" if with_description else i["title"])
                       for i in items)
        assert [sorted(catalog) for catalog in searched] == [texts]
        lines = [orjson.loads(x) for x in (out / "candidates.jsonl").read_bytes().splitlines()]
        assert [line["example_id"] for line in lines] == [r["example_id"] for r in rows]
        assert [line["candidates"] for line in lines] == ranked([r["context"] for r in rows], searched[0])


def test_retrieve_and_run_report_bad_options_and_a_damaged_cache_in_one_line(dataset, tmp_path):
    args = ["--dataset", str(dataset), "--domain", "home", "--quiet", "--bootstrap-samples", "0"]
    unknown = CliRunner().invoke(cli, ["retrieve", "--retriever", "bm25", "--retriever-args", "k3=1", *args,
                                       "--out", str(tmp_path / "r")])
    assert unknown.exit_code == 1 and "retriever 'bm25' does not accept --retriever-args" in unknown.output
    assert "unexpected keyword argument 'k3'" in unknown.output and unknown.exc_info[0] is SystemExit
    nan = CliRunner().invoke(cli, ["retrieve", "--retriever", "bm25", "--retriever-args", "k1=NaN", *args,
                                   "--out", str(tmp_path / "r")])
    assert nan.exit_code == 1 and "--retriever-args: k1 is not a finite number" in nan.output
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "responses.sqlite").write_bytes(b"not a database" * 100)
    damaged = CliRunner().invoke(cli, ["run", "--model", "openai-chat", "--model-args",
                                       f"base_url=http://127.0.0.1:9/v1,cache_dir={cache}", *args,
                                       "--out", str(tmp_path / "o")])
    assert damaged.exit_code == 1 and damaged.exc_info[0] is SystemExit, damaged.output
    assert f"CacheError: {cache / 'responses.sqlite'} is damaged" in damaged.output
    assert "only a cache: delete or move it" in damaged.output


def test_synthetic_datasets_need_enough_items_per_domain(tmp_path):
    with pytest.raises(ValueError, match="items_per_domain=11 is too few: 20 records per domain need at least 12"):
        make_synthetic_dataset(tmp_path / "a", items_per_domain=11)
    make_synthetic_dataset(tmp_path / "b", items_per_domain=11, records_per_domain=3, with_images=False)
    make_synthetic_dataset(tmp_path / "c", items_per_domain=12, records_per_domain=4, with_images=False)


def test_default_dataset_is_the_bundled_sample_named_alike_in_every_install(tmp_path):
    """The sample's id was its absolute install path: another in every venv, and a home folder in results.json."""
    from reddit_amazon.sample import SAMPLE_DATASET_ID, sample_dataset_path

    result = CliRunner().invoke(cli, ["run", "--model", "random", "--limit", "3", "--out", str(tmp_path / "a"),
                                      "--quiet"])
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "a" / "results.json").read_text())
    assert results["dataset"]["id"] == SAMPLE_DATASET_ID == "reddit_amazon/sample/reddit-amazon"
    assert str(sample_dataset_path()) not in (tmp_path / "a" / "results.json").read_text()
    assert json.loads((tmp_path / "a" / "run.json").read_text())["dataset"]["id"] == SAMPLE_DATASET_ID
    assert results["dataset"]["version"] == json.loads((sample_dataset_path() / "manifest.json").read_text())["version"]
    assert results["counts"]["all"]["records"] == 9
    named = run(RunConfig(model="random", dataset=str(sample_dataset_path()), limit=3, bootstrap_samples=0),
                tmp_path / "b", progress=False)
    assert named["dataset"] == results["dataset"]  # the sample named by its path is the same dataset

    # A run folder of an earlier release, which named the sample by its path, still resumes: the fingerprint is the
    # dataset's identity, and report and compare take the runs for runs over one dataset.
    signature = json.loads((tmp_path / "b" / "run.json").read_text())
    signature["dataset"]["id"] = str(sample_dataset_path())
    (tmp_path / "b" / "run.json").write_text(json.dumps(signature))
    (tmp_path / "b" / "results.json").unlink()
    assert run(RunConfig(model="random", limit=3, bootstrap_samples=0), tmp_path / "b",
               progress=False)["metrics"] == named["metrics"]
    compare = CliRunner().invoke(cli, ["compare", str(tmp_path / "a"), str(tmp_path / "b")])
    assert compare.exit_code == 0 and "different datasets" not in compare.output
    report = CliRunner().invoke(cli, ["report", str(tmp_path / "a"), str(tmp_path / "b")])
    assert report.exit_code == 0 and "WARNING" not in report.output
    assert f"dataset {SAMPLE_DATASET_ID} v" in report.output


def test_hub_id_without_network_records_unknown_provenance():
    from benchmark.data import resolve_dataset

    info = resolve_dataset("someone/reddit-amazon")
    assert not info.local and info.version is None and info.fingerprint is None and info.counts is None


@pytest.mark.parametrize("published", [b"[1, 2]", b'{"version": '])
def test_a_hub_manifest_that_is_not_one_records_unknown_provenance(tmp_path, monkeypatch, published):
    """A Hub dataset's manifest.json holding a JSON array (another project's file of that name) ended the run in a
    traceback (AttributeError: 'list' object has no attribute 'get'); like an unreachable one, it is unknown."""
    import huggingface_hub

    from benchmark.data import resolve_dataset

    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    (snapshot / "manifest.json").write_bytes(published)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *args, **kwargs: str(snapshot / "manifest.json"))
    info = resolve_dataset("someone/reddit-amazon")
    assert not info.local and info.version is None and info.fingerprint is None and info.counts is None


def test_secret_model_args_never_reach_the_outputs(dataset, tmp_path):
    plugin = tmp_path / "keyed.py"
    plugin.write_text("class Keyed:\n"
                      "    def __init__(self, api_key, hf_token=None, temperature=0.0):\n"
                      "        self.api_key = api_key\n"
                      "    def recommend(self, examples):\n"
                      "        return [e.candidates[0].item_id for e in examples]\n")
    run(RunConfig(model=f"{plugin}:Keyed", model_args={"api_key": "sk-live-SECRET", "hf_token": "hf_SECRET",
                                                       "temperature": 0.5},
                  dataset=str(dataset), domain="home", bootstrap_samples=0), tmp_path / "out", progress=False)
    for path in (tmp_path / "out").iterdir():
        assert "SECRET" not in path.read_text(), path.name
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["model"]["args"] == {"api_key": "<redacted>", "hf_token": "<redacted>", "temperature": 0.5}


def test_model_args_named_like_secrets_in_any_style_never_reach_the_outputs(dataset, tmp_path):
    """``accessToken``, ``pwd``, ``passphrase``, ``sig``, ``access_code``, ``client_secret_id`` and a base_url's
    ``?pwd=`` were written as given to run.json and results.json: the args' names were matched only as
    ``*_token`` / ``*_key`` / ``password`` ... and the URL's by another list. Benign names are still recorded."""
    plugin = tmp_path / "styled.py"
    plugin.write_text("class Styled:\n"
                      "    def __init__(self, accessToken='', pwd='', passphrase='', sig='', access_code='',\n"
                      "                 client_secret_id='', base_url='', max_tokens=1, key_column=''):\n"
                      "        pass\n"
                      "    def recommend(self, examples):\n"
                      "        return [e.candidates[0].item_id for e in examples]\n")
    secrets = {"accessToken": "TOKEN-SECRET-1", "pwd": "PWD-SECRET-2", "passphrase": "PHRASE-SECRET-3",
               "sig": "SIG-SECRET-4", "access_code": "CODE-SECRET-5", "client_secret_id": "SECRET-ID-6"}
    model_args = ",".join(f"{name}={value}" for name, value in secrets.items())
    model_args += ',base_url="http://127.0.0.1:9/v1?pwd=URL-SECRET-7",max_tokens=64,key_column=asin'
    done = subprocess.run([sys.executable, "-m", "benchmark.cli", "run", "--model", f"{plugin}:Styled",
                           "--model-args", model_args, "--dataset", str(dataset), "--domain", "home",
                           "--bootstrap-samples", "0", "--out", str(tmp_path / "out")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for text in (done.stdout, done.stderr, *(path.read_text() for path in (tmp_path / "out").iterdir())):
        assert "SECRET" not in text
    args = json.loads((tmp_path / "out" / "results.json").read_text())["model"]["args"]
    assert args == {**dict.fromkeys(secrets, "<redacted>"), "base_url": "http://127.0.0.1:9/v1?pwd=%3Credacted%3E",
                    "max_tokens": 64, "key_column": "asin"}


def test_compare_says_a_retrieval_folder_cannot_be_compared_and_report_lists_it(dataset, tmp_path):
    import_extra("bm25s")
    runner = CliRunner()
    common = ["--dataset", str(dataset), "--domain", "home", "--quiet", "--bootstrap-samples", "0"]
    assert runner.invoke(cli, ["retrieve", "--retriever", "bm25", *common, "--out", str(tmp_path / "bm25")]) \
        .exit_code == 0
    assert runner.invoke(cli, ["run", "--model", "random", *common, "--out", str(tmp_path / "random")]).exit_code == 0
    for args in ([tmp_path / "bm25", tmp_path / "random"], [tmp_path / "random", tmp_path / "bm25"]):
        result = runner.invoke(cli, ["compare", *map(str, args)])
        assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
        assert result.output == (f"Error: {tmp_path / 'bm25'}: a `benchmark retrieve` folder (a full-catalog ranking, "
                                 "no per-record predictions) cannot be compared: `benchmark compare` takes two "
                                 "`benchmark run` folders; list it beside runs with `benchmark report`, or compare "
                                 "runs of models over its candidate set (`benchmark run --model M --candidates "
                                 "bm25`)\n")
    report = runner.invoke(cli, ["report", str(tmp_path / "bm25"), str(tmp_path / "random")])
    assert report.exit_code == 0 and "| BM25 |" in report.output, report.output


def test_report_and_compare_name_a_damaged_results_file(dataset, tmp_path):
    run(RunConfig(model="random", dataset=str(dataset), domain="home", bootstrap_samples=0), tmp_path / "good",
        progress=False)
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for name in ("run.json", "predictions.jsonl"):
        (damaged / name).write_bytes((tmp_path / "good" / name).read_bytes())
    (damaged / "results.json").write_text('{"metrics": ')  # cut short
    runner = CliRunner()
    for args in (["report", str(tmp_path / "good"), str(damaged)], ["compare", str(tmp_path / "good"), str(damaged)]):
        result = runner.invoke(cli, args)
        assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
        assert f"{damaged / 'results.json'}: damaged, not valid JSON" in result.output


def test_report_names_a_damaged_retrieval_results_file_with_how_to_write_it_again(dataset, tmp_path):
    """`benchmark report` reads retrievals' results.json too, but said of a damaged one to "rerun the `benchmark
    run` that wrote it": no run wrote it, and `benchmark run --out` there is refused (the folder is a retrieval's)."""
    import_extra("bm25s")
    from benchmark.retrieve import RetrieveConfig, retrieve

    out = tmp_path / "bm25-catalog"
    retrieve(RetrieveConfig(retriever="bm25", dataset=str(dataset), domain="home", bootstrap_samples=0), out,
             progress=False)
    (out / "results.json").write_text('{"metrics": ')  # cut short
    result = CliRunner().invoke(cli, ["report", str(out)])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    error = " ".join(result.output.split())
    assert f"{out / 'results.json'}: damaged, not valid JSON" in error
    assert "`benchmark retrieve`" in error and "--overwrite" in error, error


def test_report_refuses_json_of_another_shape_and_escapes_pipes_in_labels(dataset, tmp_path):
    plugin = tmp_path / "piped.py"
    plugin.write_text("class Piped:\n"
                      "    def __init__(self, prompt=''):\n"
                      "        pass\n"
                      "    def recommend(self, examples):\n"
                      "        return [e.candidates[0].item_id for e in examples]\n")
    run(RunConfig(model=f"{plugin}:Piped", model_args={"prompt": "a|b"}, dataset=str(dataset), bootstrap_samples=0),
        tmp_path / "good", progress=False)
    result = CliRunner().invoke(cli, ["report", str(tmp_path / "good")])
    row = next(line for line in result.output.splitlines() if "Piped" in line)
    assert result.exit_code == 0 and "a\\|b" in row and row.replace("\\|", "").count("|") == 8, row
    for text in ('{"metrics": {}}', "[]", "{}"):
        odd = tmp_path / "odd"
        odd.mkdir(exist_ok=True)
        (odd / "results.json").write_text(text)
        result = CliRunner().invoke(cli, ["report", str(odd)])
        assert result.exit_code == 1 and "not the results.json of a benchmark run" in result.output, result.output


@pytest.mark.parametrize("entry", [0.41, {}, {"value": "0.41"}, {"value": 0.41, "ci95": "[0.3, 0.5]"}])
def test_report_refuses_a_metric_entry_of_the_wrong_json_type(tmp_path, entry):
    """A results.json whose metric entries are not objects with a number value once ended `benchmark report` with a
    traceback (TypeError: 'float' object is not subscriptable, or Unknown format code 'f' for a str)."""
    results = {"model": {"spec": "random"}, "dataset": {"id": "d", "version": "1", "fingerprint": "f"},
               "split": "test", "candidates": "sbert", "metrics": {"hr@1": {"beauty": entry}}}
    (tmp_path / "results.json").write_text(json.dumps(results))
    result = CliRunner().invoke(cli, ["report", str(tmp_path)])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert "not the results.json of a benchmark run (missing or malformed: metrics.hr@1.beauty)" in result.output


@pytest.mark.parametrize("change, problem", [
    ({"gt_pairs": 0, "hits": 0}, "gt_pairs (a count of at least 1)"), ({"hits": 99}, "hits (a count up to gt_pairs)"),
    ({"domain": None}, "domain"), ({"valid": "yes"}, "valid (true or false)"), ({"recall": "0"}, "recall"),
])
def test_compare_names_a_malformed_predictions_row_instead_of_crashing(dataset, tmp_path, change, problem):
    """A hand-edited or foreign predictions.jsonl row ended `benchmark compare` with a KeyError, or an IndexError
    from the bootstrap when run B's rows held no gt pairs."""
    run(RunConfig(model="random", dataset=str(dataset), domain="home", bootstrap_samples=0), tmp_path / "a",
        progress=False)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    lines = (tmp_path / "a" / "predictions.jsonl").read_bytes().splitlines()
    rows = [{**orjson.loads(line), **change} for line in lines]
    (tmp_path / "b" / "predictions.jsonl").write_bytes(b"".join(orjson.dumps(row) + b"\n" for row in rows))
    result = CliRunner().invoke(cli, ["compare", str(tmp_path / "a"), str(tmp_path / "b")])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert (f"predictions.jsonl:1: damaged, not a scored prediction of a benchmark run (missing or malformed: "
            f"{problem})" in result.output.replace("\n", ""))


def test_markdown_report_shows_html_from_results_files_as_text(dataset, tmp_path):
    run(RunConfig(model="random", dataset=str(dataset), bootstrap_samples=0), tmp_path / "r", progress=False)
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    results["model"]["name"] = "<img src=x onerror=alert(1)>"
    results["dataset"]["id"] = "<script>alert(2)</script>"
    results["candidates"] = "<svg onload=alert(3)>"
    (tmp_path / "r" / "results.json").write_text(json.dumps(results))
    result = CliRunner().invoke(cli, ["report", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    rendered = re.sub(r"`[^`\n]*`", "", result.output)  # text in code spans is shown as it is, never as HTML
    assert "<img" not in rendered and "<script" not in rendered and "<svg" not in rendered, rendered
    assert "&lt;img src=x onerror=alert(1)&gt;" in result.output


def rendered_rows(markdown: str) -> list[str]:
    """The first cell of each row of ``markdown``'s leaderboard table as a reader sees it (escapes resolved), and
    the kinds of inline markup in it other than text."""
    from markdown_it import MarkdownIt

    tokens = MarkdownIt("commonmark").enable(["table", "strikethrough"]).parse(markdown.split("\n\n", 1)[0])
    cells = [inline for opening, inline in zip(tokens, tokens[1:]) if opening.type in ("td_open", "th_open")]
    return [("".join(child.content for child in cell.children),
             sorted({child.type for child in cell.children} - {"text", "text_special", "em_open", "em_close"}))
            for cell in cells[::7]]


def test_markdown_report_shows_markdown_from_results_files_as_text(dataset, tmp_path):
    """A run label, its args or a candidate set name holding Markdown (a link, emphasis, an image) render as the
    text they are; a plain label with its ``[split …; dataset …]`` renders as before (as written)."""
    from benchmark.report import load_runs, to_markdown
    from reddit_amazon.sample import sample_dataset_path

    run(RunConfig(model="random", dataset=str(dataset), bootstrap_samples=0), tmp_path / "a", progress=False)
    run(RunConfig(model="random", dataset=str(sample_dataset_path()), split="validation", bootstrap_samples=0),
        tmp_path / "b", progress=False)
    plain = to_markdown(load_runs([tmp_path / "a", tmp_path / "b"]))
    rows = rendered_rows(plain)
    fingerprint = json.loads((tmp_path / "a" / "results.json").read_text())["dataset"]["fingerprint"][:12]
    assert (f"random [split test; dataset ds {fingerprint}]", []) in rows, rows
    hostile = "[click](http://evil.example) *x* ![i](http://evil.example/p.gif) __b__ <b>y</b> a|b"
    results = json.loads((tmp_path / "a" / "results.json").read_text())
    results["model"]["name"] = hostile
    results["model"]["args"] = {"base_url": "http://h/v1", "prompt": "_em_ **strong**"}
    results["candidates"] = "*sbert*"
    (tmp_path / "a" / "results.json").write_text(json.dumps(results))
    rows = rendered_rows(to_markdown(load_runs([tmp_path / "a", tmp_path / "b"])))
    assert (f"{hostile} (base_url=http://h/v1, prompt=_em_ **strong**) [split test; dataset ds {fingerprint}]",
            []) in rows, rows
    assert ("Recommenders + *sbert* candidates", []) in rows, rows


def test_compare_shows_paths_domains_and_warned_values_as_text(dataset, tmp_path):
    """The run folders typed on the command line, the domains of predictions.jsonl and the values a warning quotes
    from results.json render as the text they are: no link, image, emphasis or HTML of theirs."""
    from markdown_it import MarkdownIt

    hostile = "[click](javascript:alert(1)) *x* ![i](p.gif) <b>y</b> www.evil.example"  # a folder name: no "/"
    run(RunConfig(model="last", dataset=str(dataset), bootstrap_samples=0), tmp_path / "run",
        recommender=LastCandidate(), progress=False)
    folders = [tmp_path / f"{hostile} {side}" for side in ("a", "b")]
    for folder in folders:
        shutil.copytree(tmp_path / "run", folder)
        predictions = folder / "predictions.jsonl"
        rows = [{**orjson.loads(line), "domain": "<i>home</i>|x"} for line in predictions.read_bytes().splitlines()]
        predictions.write_bytes(b"".join(orjson.dumps(row) + b"\n" for row in rows))
    results = json.loads((folders[1] / "results.json").read_text())
    (folders[1] / "results.json").write_text(json.dumps({**results, "candidates": "<svg onload=alert(3)> *s*"}))

    result = CliRunner().invoke(cli, ["compare", *map(str, folders), "--bootstrap-samples", "10"])
    assert result.exit_code == 0, result.output
    tokens = MarkdownIt("commonmark").enable(["table", "strikethrough"]).parse(result.output)
    inline = [token for token in tokens if token.type == "inline"]
    markup = {child.type for token in inline for child in token.children} - {"text", "text_special", "softbreak"}
    assert not markup, (markup, result.output)
    shown = ["".join("\n" if child.type == "softbreak" else child.content for child in token.children)
             for token in inline]
    assert f"A = {folders[0]}\nB = {folders[1]}" in shown, shown
    assert "<i>home</i>|x" in shown, shown
    assert any("<svg onload=alert(3)> *s*" in line for line in shown), shown


def test_a_zero_hr1_is_never_marked_best():
    from benchmark.report import Run, _ranks

    def scored(values):
        return Run(Path("r"), {"metrics": {"hr@1": {d: {"value": v} for d, v in zip(("beauty", "fashion", "home"), values)}},
                               "dataset": SAME_DATASET})

    runs = [scored([0.0, 0.2, 0.0]), scored([0.0, 0.1, 0.3])]
    assert _ranks(runs) == {(0, "fashion", "hr@1"): 1, (1, "fashion", "hr@1"): 2, (1, "home", "hr@1"): 1}


def test_a_run_that_fails_before_predicting_leaves_the_folder_free(dataset, tmp_path):
    """A typo in the split or the model args must not block the corrected command."""
    with pytest.raises(DatasetError):
        run(RunConfig(model="random", dataset=str(dataset), split="tset"), tmp_path, progress=False)
    with pytest.raises(RegistryError) as caught:
        run(RunConfig(model="random", model_args={"sed": 1, "api_key": "sk-SECRET"}, dataset=str(dataset)),
            tmp_path, progress=False)
    assert "SECRET" not in str(caught.value) and "--model-args sed, api_key" in str(caught.value)  # names, no value
    assert not (tmp_path / "run.json").exists()
    run(RunConfig(model="random", model_args={"seed": 1}, dataset=str(dataset), bootstrap_samples=0), tmp_path,
        progress=False)

    class NoBatches:
        batch_size = -1

        def recommend(self, examples):
            return [e.candidates[0].item_id for e in examples]

    with pytest.raises(RunError, match="batch_size must be a positive integer"):
        run(RunConfig(model="nobatch", dataset=str(dataset)), tmp_path / "b", recommender=NoBatches(), progress=False)
    assert not (tmp_path / "b").exists()
    with pytest.raises(RunError, match="batch_size must be a positive integer"):  # nor the folders made for it
        run(RunConfig(model="nobatch", dataset=str(dataset)), tmp_path / "new" / "deeper" / "run",
            recommender=NoBatches(), progress=False)
    assert not (tmp_path / "new").exists()


def test_a_zero_batch_size_a_surrogate_output_and_damaged_run_files_are_clear_errors(dataset, tmp_path):
    class Configurable:
        def __init__(self, batch_size=None, prefix=""):
            self.batch_size, self.prefix = batch_size, prefix

        def recommend(self, examples):
            return [self.prefix + e.candidates[0].item_id for e in examples]

    with pytest.raises(RunError, match="batch_size must be a positive integer, not 0"):
        run(RunConfig(model="zero", dataset=str(dataset)), tmp_path / "a", recommender=Configurable(0), progress=False)
    with pytest.raises(RunError, match="not valid Unicode.*for "):
        run(RunConfig(model="s", dataset=str(dataset)), tmp_path / "b", recommender=Configurable(prefix="\udcff "),
            progress=False)
    config = RunConfig(model="ok", dataset=str(dataset), bootstrap_samples=0)
    run(config, tmp_path / "c", recommender=Configurable(), progress=False)
    for name in ("results.json", "run.json"):
        path = tmp_path / "c" / name
        intact = path.read_bytes()
        path.write_bytes(intact[:50])
        with pytest.raises(DamagedFileError, match=f"{name}: damaged, not valid JSON .*; pass --overwrite to start "):
            run(config, tmp_path / "c", recommender=Configurable(), progress=False)
        path.write_bytes(intact)


def test_other_bootstrap_settings_rescore_a_finished_run_without_predicting(dataset, tmp_path):
    config = RunConfig(model="last", dataset=str(dataset), bootstrap_samples=100)
    first = run(config, tmp_path, recommender=LastCandidate(), progress=False)
    again = LastCandidate()
    second = run(RunConfig(model="last", dataset=str(dataset), bootstrap_samples=0, seed=7), tmp_path,
                 recommender=again, progress=False)
    assert again.seen == [] and second["bootstrap"] != first["bootstrap"]
    assert second["metrics"]["hr@1"]["all"]["value"] == first["metrics"]["hr@1"]["all"]["value"]
    assert first["metrics"]["hr@1"]["all"]["ci95"] and not second["metrics"]["hr@1"]["all"]["ci95"]
    assert json.loads((tmp_path / "results.json").read_text())["bootstrap"] == second["bootstrap"]


def test_retrieve_never_writes_over_a_model_run_and_reports_only_cutoffs_within_k(dataset, tmp_path):
    import_extra("bm25s")
    run(RunConfig(model="random", dataset=str(dataset), domain="home", bootstrap_samples=0), tmp_path / "r",
        progress=False)
    args = ["retrieve", "--retriever", "bm25", "--dataset", str(dataset), "--domain", "home", "--quiet",
            "--bootstrap-samples", "0"]
    refused = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "r")])
    assert refused.exit_code == 1 and "holds a `benchmark run` result" in refused.output
    assert json.loads((tmp_path / "r" / "results.json").read_text())["model"]["spec"] == "random"
    top1 = CliRunner().invoke(cli, [*args, "--k", "1", "--out", str(tmp_path / "k1")])
    assert top1.exit_code == 0, top1.output
    metrics = json.loads((tmp_path / "k1" / "results.json").read_text())["metrics"]
    assert "hr@1" in metrics and not any(name.endswith(("@5", "@10")) for name in metrics)
    report = CliRunner().invoke(cli, ["report", str(tmp_path / "r"), str(tmp_path / "k1")])
    assert report.exit_code == 0 and "candidates_sbert" in report.output, report.output
    assert "full catalog`" not in report.output  # a retrieval run names no candidate column


@pytest.mark.parametrize("damaged", [b'{"kind": ', b"[1, 2]", b"\xff"])
def test_retrieve_into_a_folder_with_a_damaged_results_file_is_one_error_line_naming_it(dataset, tmp_path, damaged):
    """`benchmark retrieve --out` a folder whose results.json was damaged ended in "Error: JSONDecodeError: unexpected
    end of data", naming no file, or in a traceback (AttributeError: 'list' object has no attribute 'get')."""
    out = tmp_path / "r"
    out.mkdir()
    (out / "results.json").write_bytes(damaged)
    result = CliRunner().invoke(cli, ["retrieve", "--retriever", "bm25", "--dataset", str(dataset), "--domain",
                                      "home", "--quiet", "--out", str(out)])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert f"{out / 'results.json'}: damaged" in result.output and "--overwrite" in result.output
    assert (out / "results.json").read_bytes() == damaged


def test_a_file_plugin_imports_its_neighbours_and_endpoint_errors_are_one_line(dataset, tmp_path, httpserver):
    (tmp_path / "helper_for_plugin.py").write_text("def pick(example):\n    return example.candidates[1].item_id\n")
    (tmp_path / "neighbourly.py").write_text(
        "from helper_for_plugin import pick\n"
        "class Neighbourly:\n"
        "    def recommend(self, examples):\n"
        "        return [pick(e) for e in examples]\n")
    result = CliRunner().invoke(cli, ["run", "--model", f"{tmp_path / 'neighbourly.py'}:Neighbourly", "--dataset",
                                      str(dataset), "--out", str(tmp_path / "n"), "--quiet", "--bootstrap-samples", "0"])
    assert result.exit_code == 0, result.output
    httpserver.expect_request("/v1/chat/completions").respond_with_json(
        {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}}, status=401)
    result = CliRunner().invoke(cli, ["run", "--model", "openai-chat", "--model-args",
                                      f"base_url={httpserver.url_for('/v1')},cache_dir={tmp_path / 'c'}",
                                      "--dataset", str(dataset), "--out", str(tmp_path / "o"), "--quiet"],
                                env={"OPENAI_API_KEY": "sk-test"})
    assert result.exit_code == 1 and "AuthenticationError" in result.output and "Traceback" not in result.output


def test_a_file_plugin_run_from_python_leaves_sys_path_as_it_was(dataset, tmp_path, monkeypatch):
    """The plugin's folder is on sys.path while the run lasts (it imports the modules beside it, also lazily in
    ``recommend``, as a script would) and off it afterwards: run() from a notebook or a sweep left it first on
    sys.path for the rest of the session, so a later ``import utils`` (any name a plugin folder may hold) found
    the plugin folder's module instead of the caller's own."""
    monkeypatch.setattr(sys, "path", list(sys.path))  # a failing check leaves other tests' sys.path alone
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "lazy_helper_for_plugin.py").write_text("def pick(example):\n    return example.candidates[0].item_id\n")
    (folder / "lazy_plugin.py").write_text(
        "class Lazy:\n"
        "    def recommend(self, examples):\n"
        "        from lazy_helper_for_plugin import pick\n"
        "        return [pick(e) for e in examples]\n")
    (folder / "broken_plugin.py").write_text("raise RuntimeError('broken at import')\n")
    before = list(sys.path)
    results = run(RunConfig(model=f"{folder / 'lazy_plugin.py'}:Lazy", dataset=str(dataset), bootstrap_samples=0),
                  tmp_path / "lazy", progress=False)
    assert results["metrics"]["vr"]["all"]["value"] == 1.0  # the helper was found while the run lasted
    assert sys.path == before
    with pytest.raises(RegistryError, match="broken at import"):
        run(RunConfig(model=f"{folder / 'broken_plugin.py'}:Rec", dataset=str(dataset)), tmp_path / "broken")
    assert sys.path == before


@pytest.mark.parametrize("same_folder", [False, True])
def test_file_plugins_run_at_once_in_threads_keep_their_folders_until_each_run_ends(dataset, tmp_path, monkeypatch,
                                                                                   same_folder):
    """Two runs in threads (a sweep): the one ending first took every plugin folder the other had put on sys.path
    since it started (or the one folder both use), and the other's lazy import of a module beside its plugin
    failed with ModuleNotFoundError."""
    import threading
    import types

    monkeypatch.setattr(sys, "path", list(sys.path))
    events = types.SimpleNamespace(a_started=threading.Event(), b_started=threading.Event(), b_done=threading.Event())
    monkeypatch.setitem(sys.modules, "_plugin_race_events", events)
    folders = [tmp_path / "a", tmp_path / "a" if same_folder else tmp_path / "b"]
    for folder in folders:
        folder.mkdir(exist_ok=True)
    (folders[0] / "race_helper_a.py").write_text("def pick(example):\n    return example.candidates[0].item_id\n")
    (folders[0] / "race_plugin_a.py").write_text(
        "import _plugin_race_events as events\n"
        "class A:\n"
        "    def recommend(self, examples):\n"
        "        events.a_started.set()\n"
        "        assert events.b_done.wait(30)\n"
        "        from race_helper_a import pick  # after the other run ended\n"
        "        return [pick(e) for e in examples]\n")
    (folders[1] / "race_plugin_b.py").write_text(
        "import _plugin_race_events as events\n"
        "class B:\n"
        "    def recommend(self, examples):\n"
        "        events.b_started.set()\n"
        "        assert events.a_started.wait(30)  # the other run has put its folder on sys.path\n"
        "        return [e.candidates[0].item_id for e in examples]\n")
    before = list(sys.path)
    outcomes = {}

    def run_in_thread(name: str, spec: str) -> None:
        try:
            outcomes[name] = run(RunConfig(model=spec, dataset=str(dataset), domain="home", bootstrap_samples=0),
                                 tmp_path / f"out-{name}", progress=False)
        except Exception as error:  # reported by the assert below
            outcomes[name] = error
        finally:
            if name == "b":
                events.b_done.set()

    threads = [threading.Thread(target=run_in_thread, args=("b", f"{folders[1] / 'race_plugin_b.py'}:B"))]
    threads[0].start()
    assert events.b_started.wait(30)  # B's run is in its block, its plugin resolved, before A's starts
    threads.append(threading.Thread(target=run_in_thread, args=("a", f"{folders[0] / 'race_plugin_a.py'}:A")))
    threads[1].start()
    for thread in threads:
        thread.join(60)
    assert all(isinstance(outcome, dict) for outcome in outcomes.values()), outcomes
    assert outcomes["a"]["metrics"]["vr"]["all"]["value"] == 1.0
    assert sys.path == before


def test_report_flags_runs_over_fewer_records(dataset, tmp_path):
    from benchmark.report import load_runs, provenance

    run(RunConfig(model="random", dataset=str(dataset), bootstrap_samples=0), tmp_path / "full", progress=False)
    run(RunConfig(model="random", dataset=str(dataset), limit=2, bootstrap_samples=0), tmp_path / "two",
        progress=False)
    runs = load_runs([tmp_path / "full", tmp_path / "two"])
    assert runs[1].label.endswith("[first 2 records per domain]") and "first" not in runs[0].label
    assert provenance(runs)[0].startswith("WARNING") and "record limits" in provenance(runs)[0]


def test_report_treats_the_same_shards_at_two_paths_as_one_dataset(dataset, tmp_path):
    import shutil

    from benchmark.report import load_runs, provenance

    copy = shutil.copytree(dataset, tmp_path / "copy" / dataset.name)  # same shards, same fingerprint
    run(RunConfig(model="random", dataset=str(dataset), bootstrap_samples=0), tmp_path / "a", progress=False)
    run(RunConfig(model="random", dataset=str(copy), bootstrap_samples=0), tmp_path / "b", progress=False)
    lines = provenance(load_runs([tmp_path / "a", tmp_path / "b"]))
    assert len(lines) == 1 and lines[0].startswith(f"dataset {dataset.name} v")  # local folders by name only


def test_a_run_whose_first_batch_fails_leaves_the_folder_free_and_batch_size_is_part_of_a_run(dataset, tmp_path):
    class Strict:
        def __init__(self, model="good"):
            self.model = model

        def recommend(self, examples):
            if self.model != "good":
                raise ValueError(f"model {self.model!r} does not exist (404)")
            return [e.candidates[0].item_id for e in examples]

    with pytest.raises(ValueError, match="does not exist"):
        run(RunConfig(model="strict", model_args={"model": "godo"}, dataset=str(dataset)), tmp_path,
            recommender=Strict("godo"), progress=False)
    run(RunConfig(model="strict", model_args={"model": "good"}, dataset=str(dataset), bootstrap_samples=0),
        tmp_path, recommender=Strict(), progress=False)
    with pytest.raises(RunError, match="differs in: batch_size"):
        run(RunConfig(model="strict", model_args={"model": "good"}, dataset=str(dataset), batch_size=7), tmp_path,
            recommender=Strict(), progress=False)


def test_a_model_that_fails_on_its_first_batch_leaves_nothing_that_looks_like_a_run(dataset, tmp_path):
    """`benchmark run --model sbert --model-args model=/nonexistent` (sbert loads its model on first use) left
    run.json and an empty predictions.jsonl, which `report` skipped as an unfinished run."""
    import_extra("sentence_transformers")
    missing = tmp_path / "no-such-model"
    result = CliRunner().invoke(cli, ["run", "--model", "sbert", "--model-args", f"model={missing}", "--dataset",
                                      str(dataset), "--domain", "home", "--out", str(tmp_path / "sbert"), "--quiet"])
    assert result.exit_code == 1 and f"sbert: cannot load model {missing}" in result.output, result.output
    assert not (tmp_path / "sbert").exists()

    class FailsAfter:
        """Answers ``batches`` batches (None: all), then fails as a model loaded on first use or an outage."""

        batch_size = 5

        def __init__(self, batches: int | None) -> None:
            self.batches = batches

        def recommend(self, examples):
            if self.batches == 0:
                raise OSError("cannot load the model")
            self.batches = None if self.batches is None else self.batches - 1
            return [e.candidates[0].item_id for e in examples]

    config = RunConfig(model="lazy", dataset=str(dataset), domain="home", bootstrap_samples=0)
    (tmp_path / "made").mkdir()  # a folder the user made is left, empty, in place
    with pytest.raises(OSError, match="cannot load"):
        run(config, tmp_path / "made", recommender=FailsAfter(0), progress=False)
    assert {path.name for path in (tmp_path / "made").iterdir()} <= {".lock"}
    # A run with predictions keeps them, and its run.json, for a rerun to resume.
    with pytest.raises(OSError, match="cannot load"):
        run(config, tmp_path / "made", recommender=FailsAfter(1), progress=False)
    with pytest.raises(OSError, match="cannot load"):  # resumed, and failing on its first batch
        run(config, tmp_path / "made", recommender=FailsAfter(0), progress=False)
    assert len((tmp_path / "made" / "predictions.jsonl").read_bytes().splitlines()) == 5
    assert (tmp_path / "made" / "run.json").is_file()
    results = run(config, tmp_path / "made", recommender=FailsAfter(None), progress=False)
    assert results["timings"]["resumed_records"] == 5


def test_a_record_filed_under_another_domain_is_refused_before_any_inference(tmp_path):
    import datasets

    from benchmark.data import iter_records
    from reddit_amazon.dataset_folder import DatasetContents, write_dataset
    from reddit_amazon.schema import Conversation, SchemaError, Turn

    candidates = [f"B{i:09d}" for i in range(10)]
    record = Conversation(example_id="r1", domain="beauty", thread_id="t1", subreddit="x", created_utc=1,
                          turns=[Turn(kind="submission", text="hi")], context_items=[], gt_text="",
                          gt_items=[candidates[0]], candidates={"sbert": candidates})
    with pytest.raises(SchemaError, match=r"home/test\[0\] \(r1\): its domain is 'beauty', not 'home'"):
        write_dataset(tmp_path / "ds", DatasetContents({"home": {"test": [record]}}, {}, "1.0.0"))
    rows = datasets.Dataset.from_list([{**record.to_row(), "candidates_sbert": candidates}])
    with pytest.raises(DatasetError, match=r"\(r1\): its domain is 'beauty', in the home config"):
        list(iter_records(rows, "candidates_sbert", None, "ds home/test", domain="home"))


def test_html_report_escapes_what_results_files_say(dataset, tmp_path):
    run(RunConfig(model="random", dataset=str(dataset), bootstrap_samples=0), tmp_path / "a", progress=False)
    results = json.loads((tmp_path / "a" / "results.json").read_text())
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "results.json").write_text(json.dumps({**results, "candidates": "<img src=x onerror=alert(1)>"}))
    result = CliRunner().invoke(cli, ["report", str(tmp_path / "a"), str(tmp_path / "b"), "--html",
                                      str(tmp_path / "board.html")])
    page = (tmp_path / "board.html").read_text()
    assert result.exit_code == 0 and "<img" not in page and "&lt;img src=x" in page


def test_bootstrap_intervals_hold_their_estimate_and_p_values_are_never_zero():
    from benchmark.metrics import Outcome, paired_difference, ratios, summarize

    hr1 = summarize([Outcome(pairs=3, hits=1, valid=True)] * 5, 100, 0)["hr@1"]
    assert hr1["ci95"][0] <= hr1["value"] <= hr1["ci95"][1]
    one = paired_difference("hr@1", "all", ratios([Outcome(1, 1, True)])["hr@1"], ratios([Outcome(1, 0, True)])["hr@1"],
                            100, 0)
    assert one.p_value == pytest.approx(2 / 101)


def test_negative_seeds_and_integers_beyond_64_bits_are_refused_up_front(dataset, tmp_path):
    result = CliRunner().invoke(cli, ["run", "--model", "random", "--dataset", str(dataset), "--seed", "-1",
                                      "--out", str(tmp_path / "a"), "--quiet"])
    assert result.exit_code == 2 and "-1 is not in the range 0<=x<=18446744073709551615" in result.output
    result = CliRunner().invoke(cli, ["run", "--model", "random", "--dataset", str(dataset), "--quiet",
                                      "--model-args", "seed=123456789012345678901234567890", "--out", str(tmp_path / "b")])
    assert result.exit_code == 1 and "beyond 64 bits" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_run_folder_from_before_batch_size_was_recorded_still_resumes(dataset, tmp_path):
    config = RunConfig(model="random", dataset=str(dataset), domain="beauty", limit=5, bootstrap_samples=0)
    run(config, tmp_path, progress=False)
    signature = json.loads((tmp_path / "run.json").read_text())
    del signature["batch_size"], signature["model_code"]  # as earlier releases wrote run.json
    (tmp_path / "run.json").write_text(json.dumps(signature))
    (tmp_path / "results.json").unlink()  # interrupted
    assert run(config, tmp_path, progress=False)["counts"]["all"]["records"] == 5


def test_a_plugin_run_folder_from_before_its_code_was_recorded_says_why_it_is_refused(dataset, tmp_path):
    """Earlier releases wrote run.json without model_code: their plugin runs were refused as 'differs in:
    model_code' though nobody had edited the plugin."""
    plugin = tmp_path / "first.py"
    plugin.write_text("class First:\n"
                      "    def recommend(self, examples):\n"
                      "        return [e.candidates[0].item_id for e in examples]\n")
    config = RunConfig(model=f"{plugin}:First", dataset=str(dataset), domain="home", limit=3, bootstrap_samples=0)
    out = tmp_path / "out"
    run(config, out, progress=False)
    signature = json.loads((out / "run.json").read_text())
    del signature["batch_size"], signature["model_code"]  # as earlier releases wrote run.json
    (out / "run.json").write_text(json.dumps(signature))
    (out / "results.json").unlink()  # interrupted
    with pytest.raises(RunError, match=r"by an earlier release, which did not record the plugin's code, so whether "
                                       r"it changed since is unknown; pass --overwrite") as refused:
        run(config, out, progress=False)
    assert "differs in" not in str(refused.value)
    with pytest.raises(RunError, match="differs in: model_code, limit"):  # another run whatever its code
        run(RunConfig(**{**config.__dict__, "limit": 2}), out, progress=False)
    assert run(config, out, overwrite=True, progress=False)["counts"]["all"]["records"] == 3


def test_ctrl_c_keeps_the_predictions_and_says_how_to_resume(dataset, tmp_path):
    plugin = tmp_path / "stopper.py"
    plugin.write_text(
        "from pathlib import Path\n"
        "class Stopper:\n"
        "    batches = 0\n"
        "    def recommend(self, examples):\n"
        "        Stopper.batches += 1\n"
        f"        stopped = Path({str(tmp_path / 'stopped')!r})\n"
        "        if Stopper.batches == 2 and not stopped.exists():\n"
        "            stopped.touch()\n"
        "            raise KeyboardInterrupt\n"
        "        return [e.candidates[0].item_id for e in examples]\n"
    )
    arguments = ["run", "--model", f"{plugin}:Stopper", "--dataset", str(dataset), "--out", str(tmp_path / "o"),
                 "--batch-size", "4", "--quiet", "--bootstrap-samples", "0"]
    result = CliRunner().invoke(cli, arguments)
    assert result.exit_code == 130 and "run the same command again to resume" in result.output
    kept = (tmp_path / "o" / "predictions.jsonl").read_text().splitlines()
    assert len(kept) == 4
    again = CliRunner().invoke(cli, arguments)
    assert again.exit_code == 0, again.output
    assert len((tmp_path / "o" / "predictions.jsonl").read_text().splitlines()) == 36


@pytest.mark.parametrize("item_id", ["../../../escaped", "/abs/path", "a\x00b", "line\nbreak", ".."])
def test_a_candidate_image_file_stays_in_the_image_folder_whatever_its_id(tmp_path, monkeypatch, item_id):
    from benchmark.protocol import Candidate

    monkeypatch.setenv("REDDIT_AMAZON_IMAGE_DIR", str(tmp_path / "images"))
    path = Candidate(item_id=item_id, title="t", image_bytes=b"\xff\xd8\xff fake jpeg").image_path
    assert path.parent == tmp_path / "images" and path.read_bytes() == b"\xff\xd8\xff fake jpeg"
    assert list(tmp_path.iterdir()) == [tmp_path / "images"]


def test_an_endpoint_error_quoting_its_url_shows_no_credentials_of_it(dataset, tmp_path, httpserver):
    """A gateway's error may quote the URL it was asked at; the URL's password and key stay out of the output."""
    from werkzeug import Response

    def quote_the_url(request):
        return Response(json.dumps({"error": {"message": f"no route for {request.url}", "type": "x"}}), status=404,
                        content_type="application/json")

    httpserver.expect_request(re.compile("/v1.*")).respond_with_handler(quote_the_url)  # the query lands mid-path
    base = httpserver.url_for("/v1").replace("://", "://alice:PW-SECRET-99@")
    result = CliRunner().invoke(cli, ["run", "--model", "openai-chat", "--model-args",
                                      f'base_url="{base}?api_key=QUERY-SECRET-77",cache_dir={tmp_path / "c"}',
                                      "--dataset", str(dataset), "--out", str(tmp_path / "o"), "--quiet"],
                                env={"OPENAI_API_KEY": "sk-test"})
    assert result.exit_code == 1 and "no route for" in result.output, result.output
    assert "api_key=<redacted>" in result.output
    assert "PW-SECRET-99" not in result.output and "QUERY-SECRET-77" not in result.output


def test_secrets_in_an_endpoints_path_parameters_or_fragment_are_not_recorded(dataset, tmp_path, httpserver):
    """run.json / results.json record a base_url holding ``;api_key=`` (sent to the server in the path) or
    ``#access_token=`` (never sent) with the secret redacted, and the command's output shows neither."""
    from werkzeug import Response

    def answer(request):
        body = json.loads(request.data)
        return Response(json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                                    "choices": [{"index": 0, "finish_reason": "stop",
                                                 "message": {"role": "assistant", "content": "no idea"}}]}),
                        content_type="application/json")

    httpserver.expect_request(re.compile("/v1;api_key=PATH-SECRET-11/chat/completions")).respond_with_handler(answer)
    base = httpserver.url_for("/v1;api_key=PATH-SECRET-11") + "#access_token=FRAGMENT-SECRET-22"
    result = CliRunner().invoke(cli, ["run", "--model", "openai-chat", "--model-args",
                                      f'base_url="{base}",cache_dir={tmp_path / "c"}', "--domain", "home",
                                      "--dataset", str(dataset), "--out", str(tmp_path / "o"), "--quiet"],
                                env={"OPENAI_API_KEY": "sk-test"})
    assert result.exit_code == 0, result.output
    assert len(httpserver.log) == 12  # every example was asked, at the path parameter
    recorded = orjson.loads((tmp_path / "o" / "run.json").read_bytes())["model_args"]["base_url"]
    assert recorded == httpserver.url_for("/v1") + ";api_key=<redacted>#access_token=<redacted>"
    written = [result.output] + [p.read_text() for p in (tmp_path / "o").rglob("*") if p.is_file()]
    assert not any("PATH-SECRET" in text or "FRAGMENT-SECRET" in text for text in written)


def test_the_same_data_at_another_path_reuses_the_run(dataset, tmp_path):
    """The bundled sample and a rebuild of it, or a folder that moved: same fingerprint, same run."""
    import shutil

    config = RunConfig(model="random", dataset=str(dataset), domain="home", bootstrap_samples=0)
    first = run(config, tmp_path / "o", progress=False)
    moved = tmp_path / "elsewhere" / "ds"
    shutil.copytree(dataset, moved)
    again = run(RunConfig(model="random", dataset=str(moved), domain="home", bootstrap_samples=0), tmp_path / "o",
                progress=False)
    assert again["metrics"] == first["metrics"]
    other = make_synthetic_dataset(tmp_path / "other", records_per_domain=12, items_per_domain=40,
                                   candidate_sets=("sbert", "bm25"), seed=1)
    with pytest.raises(RunError, match=rf"differs in: dataset \(content fingerprint {first['dataset']['fingerprint'][:12]} "
                                       r"in the folder, [0-9a-f]{12} now\)"):  # the same --dataset after an upgrade
        run(RunConfig(model="random", dataset=str(other), domain="home", bootstrap_samples=0), tmp_path / "o",
            progress=False)


def test_a_run_json_whose_dataset_fingerprint_is_not_text_is_refused_not_a_type_error(dataset, tmp_path):
    """The refusal sliced each fingerprint ("content fingerprint {f[:12]}"): a run.json whose fingerprint is a
    number (edited by hand, written by another tool) ended in a TypeError traceback instead of the refusal."""
    run(RunConfig(model="random", dataset=str(dataset), domain="home", bootstrap_samples=0), tmp_path / "o",
        progress=False)
    recorded = orjson.loads((tmp_path / "o" / "run.json").read_bytes())
    recorded["dataset"]["fingerprint"] = 12345
    (tmp_path / "o" / "run.json").write_bytes(orjson.dumps(recorded))
    with pytest.raises(RunError, match=r"holds a different run \(differs in: dataset\)"):
        run(RunConfig(model="random", dataset=str(dataset), domain="home", bootstrap_samples=0), tmp_path / "o",
            progress=False)


def test_a_second_run_into_a_busy_folder_is_refused_and_a_failed_start_leaves_no_folder(dataset, tmp_path,
                                                                                       short_lock_wait):
    from reddit_amazon.files import FolderBusyError, folder_lock

    with folder_lock(tmp_path / "o", "benchmark run"):  # another run is writing there
        with pytest.raises(FolderBusyError, match="another benchmark run or retrieve is running"):
            run(RunConfig(model="random", dataset=str(dataset), bootstrap_samples=0), tmp_path / "o", progress=False)
        result = CliRunner().invoke(cli, ["run", "--model", "random", "--dataset", str(dataset), "--out",
                                          str(tmp_path / "o"), "--quiet"])
        assert result.exit_code == 1 and result.output.strip().splitlines()[-1] == (
            f"Error: FolderBusyError: another benchmark run or retrieve is running in this folder (it holds "
            f"{tmp_path / 'o' / '.lock'}); "
            f"wait for it to end or choose another folder: {tmp_path / 'o'}")
    assert not (tmp_path / "o" / "run.json").exists()
    with pytest.raises(DatasetError):
        run(RunConfig(model="random", dataset=str(dataset), split="tset"), tmp_path / "typo", progress=False)
    assert not (tmp_path / "typo").exists()
    run(RunConfig(model="random", dataset=str(dataset), bootstrap_samples=0), tmp_path / "o", progress=False)
    assert (tmp_path / "o" / "results.json").is_file()


def test_a_retrieval_into_the_folder_a_run_is_writing_is_refused_and_the_run_keeps_its_results(dataset, tmp_path):
    """`benchmark retrieve` took no lock: started while a `benchmark run` wrote the same --out, it found no
    results.json yet, wrote its own, and the run's was replaced (or the other way round): both exited 0 and the folder
    held one's predictions with the other's scores. Two retrievals at once likewise swapped candidates.jsonl and
    results.json of each other (k=3 results over k=10 lists)."""
    plugin, go_on = tmp_path / "waiting_plugin.py", tmp_path / "go-on"
    plugin.write_text(f"import pathlib, time\n\nclass Waiting:\n    def __init__(self):  # a model loading\n"
                      f"        pathlib.Path({str(tmp_path / 'started')!r}).touch()\n"
                      f"        while not pathlib.Path({str(go_on)!r}).exists():\n            time.sleep(0.05)\n\n"
                      f"    def recommend(self, examples):\n"
                      f"        return [e.candidates[0].item_id for e in examples]\n")
    out = tmp_path / "o"
    first = subprocess.Popen([sys.executable, "-m", "benchmark.cli", "run", "--model", f"{plugin}:Waiting", "--dataset",
                              str(dataset), "--domain", "home", "--out", str(out), "--quiet", "--bootstrap-samples", "0"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "started").exists():  # the run holds the folder, no run.json written yet
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.05)
        second = subprocess.run([sys.executable, "-m", "benchmark.cli", "retrieve", "--retriever", "bm25", "--dataset",
                                 str(dataset), "--domain", "home", "--out", str(out), "--quiet"],
                                capture_output=True, text=True)
    finally:
        go_on.touch()
        outputs = first.communicate(timeout=60)
    assert first.returncode == 0, outputs
    assert second.returncode == 1 and "Traceback" not in second.stderr, second.stderr
    assert second.stderr.strip().splitlines()[-1] == (
        f"Error: FolderBusyError: another benchmark run or retrieve is running in this folder (it holds "
        f"{out / '.lock'}); wait for it to end or choose another folder: {out}")
    results = orjson.loads((out / "results.json").read_bytes())
    assert results.get("kind") != "retrieval" and results["model"]["spec"] == f"{plugin}:Waiting"
    assert not (out / "candidates.jsonl").exists()


def test_a_report_into_an_unwritable_place_is_one_line_naming_the_file(dataset, tmp_path):
    run(RunConfig(model="random", dataset=str(dataset), bootstrap_samples=0), tmp_path / "r", progress=False)
    (tmp_path / "taken").write_text("a file where a folder should be")
    target = tmp_path / "taken" / "board.html"
    result = CliRunner().invoke(cli, ["report", str(tmp_path / "r"), "--html", str(target)])
    assert result.exit_code == 1 and f"cannot write {target}" in result.output and "Traceback" not in result.output


def test_a_report_file_is_never_written_over_a_run_it_reads(dataset, tmp_path):
    """`--markdown runs/a/results.json` replaced the run's results with the table, and the next report found the
    run damaged: a report file in a run folder read, on a run file read, or both options on one file is refused."""
    run(RunConfig(model="random", dataset=str(dataset), bootstrap_samples=0), tmp_path / "r", progress=False)
    run_files = {path.name: path.read_bytes() for path in (tmp_path / "r").iterdir()}
    results = tmp_path / "r" / "results.json"
    for runs, options, message in [
        ([tmp_path / "r"], ["--markdown", results], f"--markdown {results} is in the run folder {tmp_path / 'r'}"),
        ([tmp_path / "r"], ["--html", tmp_path / "r" / "board.html"], "is in the run folder"),
        ([results], ["--markdown", results], f"is the run file {results}"),
        ([tmp_path / "r"], ["--markdown", tmp_path / "b", "--html", tmp_path / "b"], "are the same file"),
    ]:
        result = CliRunner().invoke(cli, ["report", *map(str, runs), *map(str, options)])
        assert result.exit_code == 1 and "Traceback" not in result.output, result.output
        assert message in " ".join(result.output.split())
        assert {path.name: path.read_bytes() for path in (tmp_path / "r").iterdir()} == run_files
        assert not (tmp_path / "b").exists()
    result = CliRunner().invoke(cli, ["report", str(tmp_path / "r"), "--markdown", str(tmp_path / "board.md")])
    assert result.exit_code == 0 and (tmp_path / "board.md").read_text().startswith("| Method |")


def test_run_and_retrieve_never_write_into_a_dataset_folder(dataset, tmp_path):
    """`--out` = `--dataset` (the bundled sample's folder included) put results.json, run.json, predictions.jsonl
    and .lock among the shards: the folder no longer passed as a dataset folder. Refused before anything is made."""
    import_extra("bm25s")
    copy = tmp_path / "ds"
    shutil.copytree(dataset, copy)
    before = sorted(path.relative_to(copy) for path in copy.rglob("*"))
    for out in (copy, copy / "runs" / "random"):
        for args in (["run", "--model", "random"], ["retrieve", "--retriever", "bm25", "--quiet"]):
            result = CliRunner().invoke(cli, [*args, "--dataset", str(copy), "--bootstrap-samples", "0",
                                              "--out", str(out)])
            assert result.exit_code == 1 and "Traceback" not in result.output, result.output
            assert "a reddit-amazon dataset folder: the run's files would be mixed into it" in " ".join(
                result.output.split())
            assert sorted(path.relative_to(copy) for path in copy.rglob("*")) == before


def test_a_recommenders_network_error_is_not_blamed_on_the_predictions_file(dataset, tmp_path):
    """naming() is for the predictions file's own writes: a recommender's refused connection or timeout (an
    OSError without a file name) reaches the caller as raised, not as an OSError naming predictions.jsonl."""

    class Unreachable:
        batch_size = 5

        def recommend(self, examples):
            raise ConnectionRefusedError(111, "Connection refused")

    with pytest.raises(ConnectionRefusedError) as caught:
        run(RunConfig(model="down", dataset=str(dataset)), tmp_path / "run", recommender=Unreachable(),
            progress=False)
    assert caught.value.filename is None and "predictions" not in str(caught.value)


def test_a_password_holding_an_at_sign_is_redacted_whole():
    """urlsplit (and requests) read the userinfo up to the last '@': all of it is the credentials."""
    from reddit_amazon.redaction import redact_secrets

    shown = redact_secrets("error at https://bob:p@ss-SECRET@api.example.com/v1 and https://host/a@b?x=1")
    assert "ss-SECRET" not in shown and "api.example.com/v1" in shown and "https://host/a@b?x=1" in shown
    from reddit_amazon.openai_endpoint import display_url

    assert display_url("http://bob:p@ss-SECRET@host:99999/v1?api_key=k") == "http://host:99999/v1"  # a bad port
    # Scheme-relative, as a base URL written without "http:" may be: no scheme, still credentials.
    assert display_url("//bob:SECRET@host:99999/v1") == "//host:99999/v1"
    assert "SECRET" not in redact_secrets("cannot reach //bob:SECRET@host/v1")


class FirstOrNothing:
    """The first candidate, except every third example gets an answer naming no item (VR < 1)."""

    batch_size = 8

    def recommend(self, examples):
        return ["no idea" if int.from_bytes(e.example_id.encode(), "big") % 3 == 0 else e.candidates[0].item_id
                for e in examples]


def test_compare_reports_a_minus_b_per_domain_and_a_rescored_run_keeps_its_values(dataset, tmp_path):
    from benchmark.compare import compare_runs

    first = run(RunConfig(model="first", dataset=str(dataset), bootstrap_samples=100), tmp_path / "a",
                recommender=FirstOrNothing(), progress=False)
    assert 0 < first["metrics"]["vr"]["all"]["value"] < 1
    lines = [orjson.loads(line) for line in (tmp_path / "a" / "predictions.jsonl").read_bytes().splitlines()]
    gt = {r["example_id"]: r["gt_items"] for r in _gt_rows(dataset)}
    assert [line["hit"] for line in lines] == [line["parsed"] in gt[line["example_id"]] for line in lines]
    assert any(line["hit"] for line in lines) and not all(line["hit"] for line in lines)
    # Other bootstrap settings: new intervals, the same values (VR included) and counts
    rescored = run(RunConfig(model="first", dataset=str(dataset), bootstrap_samples=50, seed=3), tmp_path / "a",
                   recommender=FirstOrNothing(), progress=False)
    for metric in ("hr@1", "vr"):
        for group, entry in first["metrics"][metric].items():
            again = rescored["metrics"][metric][group]
            assert (again["value"], again["numerator"], again["denominator"]) == \
                (entry["value"], entry["numerator"], entry["denominator"]), (metric, group)
    second = run(RunConfig(model="last", dataset=str(dataset), bootstrap_samples=0), tmp_path / "b",
                 recommender=LastCandidate(), progress=False)
    comparison = compare_runs(tmp_path / "a", tmp_path / "b", samples=100, seed=0)
    found = {(d.metric, d.group): d for d in comparison.differences}
    assert {group for _, group in found} == {"beauty", "fashion", "home", "all"}
    for (metric, group), d in found.items():
        a, b = first["metrics"][metric][group]["value"], second["metrics"][metric][group]["value"]
        assert (d.a, d.b, d.records) == (pytest.approx(a), pytest.approx(b), first["counts"][group]["records"])
        assert d.difference == pytest.approx(a - b)
    assert found[("vr", "all")].difference < 0


def test_a_limited_run_loads_every_candidate_it_shows(dataset, tmp_path):
    results = run(RunConfig(model="last", dataset=str(dataset), domain="home", limit=3, bootstrap_samples=0),
                  tmp_path, recommender=LastCandidate(), progress=False)
    assert results["items_missing_from_catalog"] == [] and results["items_without_title"]["items"] == 0


#: What results.json records of the dataset (read_results requires it), one dataset for all rows.
SAME_DATASET = {"id": "reddit-amazon", "version": "1.0.0", "fingerprint": "f" * 64}


def test_the_second_best_hr1_is_the_second_highest_of_three():
    from benchmark.report import Run, _ranks

    runs = [Run(Path(f"r{i}"), {"metrics": {"hr@1": {"beauty": {"value": v}}}, "dataset": SAME_DATASET})
            for i, v in enumerate((0.1, 0.3, 0.2))]
    assert _ranks(runs) == {(1, "beauty", "hr@1"): 1, (2, "beauty", "hr@1"): 2}


def test_a_domain_without_items_fails_before_the_plugin_is_made(dataset, tmp_path):
    """A heavy model (minutes to load) must not be loaded for a run that cannot start: the items config is
    checked with the conversations, whether or not the plugin reads images."""
    import pyarrow.parquet as pq

    from reddit_amazon.dataset_folder import DatasetContents, write_dataset
    from reddit_amazon.schema import Conversation, Item

    rows = {p: pq.read_table(p).to_pylist() for p in sorted((dataset / "data").rglob("*.parquet"))}
    conversations = {p.parent.name: {"test": [Conversation.from_row(r) for r in found]}
                     for p, found in rows.items() if p.parent.name != "items"}
    items = {p.name.split("-")[0]: [Item.from_row(r) for r in found]
             for p, found in rows.items() if p.parent.name == "items" and not p.name.startswith("home")}
    write_dataset(tmp_path / "ds", DatasetContents(conversations=conversations, items=items, version="1.0.0",
                                                   candidate_sets=["sbert", "bm25"]))
    plugin = tmp_path / "heavy.py"
    plugin.write_text("from pathlib import Path\n"
                      "class Heavy:\n"
                      "    def __init__(self):\n"
                      "        Path(__file__).with_suffix('.loaded').touch()\n"
                      "    def recommend(self, examples):\n"
                      "        return ['' for _ in examples]\n")
    with pytest.raises(DatasetError, match="items of 'home'"):
        run(RunConfig(model=f"{plugin}:Heavy", dataset=str(tmp_path / "ds"), domain="home", bootstrap_samples=0),
            tmp_path / "out", progress=False)
    assert not plugin.with_suffix(".loaded").exists()


def test_a_cache_that_cannot_be_opened_or_written_is_named_in_one_line(tmp_path):
    """A read-only cache folder or file (a shared $REDDIT_AMAZON_CACHE) ends the run with an Error: line naming
    the file, not a traceback of a bare sqlite3.OperationalError."""
    import sqlite3

    from benchmark.recommenders.openai_chat import ChatCache
    from benchmark.retrieval.cache import CacheUnavailable, EmbeddingCache

    cache = tmp_path / "cache"
    (cache / "responses.sqlite").mkdir(parents=True)  # SQLite cannot open it, as in a folder it may not write in
    args = ["--domain", "home", "--quiet", "--bootstrap-samples", "0", "--limit", "1"]
    result = CliRunner().invoke(cli, ["run", "--model", "openai-chat", "--model-args",
                                      f"base_url=http://127.0.0.1:9/v1,cache_dir={cache}", *args,
                                      "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and result.exc_info[0] is SystemExit, result.output
    assert f"CacheUnavailable: {cache / 'responses.sqlite'}: unable to open database file" in result.output

    chat = ChatCache(tmp_path / "chat")  # a file only readable (mode=ro stands for permissions root ignores)
    chat._db = sqlite3.connect(f"{(tmp_path / 'chat' / 'responses.sqlite').as_uri()}?mode=ro", uri=True,
                               check_same_thread=False)
    with pytest.raises(CacheUnavailable, match="responses.sqlite: attempt to write a readonly database"):
        chat.put("key", "B000000001")
    embeddings = EmbeddingCache("m", tmp_path / "emb")
    embeddings._db = sqlite3.connect(f"{embeddings.path.as_uri()}?mode=ro", uri=True)
    with pytest.raises(CacheUnavailable, match=f"{embeddings.path}: attempt to write a readonly database"):
        embeddings.encode(["text"], lambda texts: [[0.0, 1.0]] * len(texts))


def test_a_damaged_image_file_in_the_shared_image_folder_is_not_handed_to_a_plugin(tmp_path, monkeypatch):
    """The content-addressed file of a candidate's image is written again when what lies there (a file cut
    short, or planted by another user of the folder) is not the image."""
    from benchmark.protocol import Candidate

    monkeypatch.setenv("REDDIT_AMAZON_IMAGE_DIR", str(tmp_path / "images"))
    candidate = Candidate(item_id="B000000001", title="t", image_bytes=b"\xff\xd8\xff fake jpeg")
    candidate.image_path.write_bytes(b"\xff\xd8")  # damaged
    assert candidate.image_path.read_bytes() == b"\xff\xd8\xff fake jpeg"


def test_the_default_image_folder_is_the_users_own(tmp_path, monkeypatch):
    """Under the shared temp dir, a folder someone else made first under this user's name is refused: its
    owner could swap the image files a plugin reads."""
    import os
    import tempfile

    from benchmark.protocol import Candidate

    monkeypatch.delenv("REDDIT_AMAZON_IMAGE_DIR", raising=False)
    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(tmp_path))
    candidate = Candidate(item_id="B000000001", title="t", image_bytes=b"\xff\xd8\xff fake jpeg")
    path = candidate.image_path
    assert path.parent == tmp_path / f"reddit-amazon-images-{os.getuid()}"
    assert path.parent.stat().st_mode & 0o777 == 0o700 and path.read_bytes() == candidate.image_bytes
    if os.getuid() == 0:  # root can give the folder away to test the refusal
        os.chown(path.parent, 65534, 65534)
        with pytest.raises(PermissionError, match="belongs to another user"):
            _ = candidate.image_path


def test_an_output_folder_that_cannot_be_made_is_named_as_the_runs(tmp_path):
    (tmp_path / "a-file").write_text("x")
    result = CliRunner().invoke(cli, ["run", "--model", "random", "--out", str(tmp_path / "a-file" / "run"),
                                      "--limit", "1", "--quiet"])
    assert result.exit_code == 1
    assert "cannot make the folder of this benchmark run" in result.output and "a-file/run" in result.output


def test_a_failed_retrieve_leaves_no_empty_folder_that_breaks_report(dataset, tmp_path):
    runner = CliRunner()
    assert runner.invoke(cli, ["run", "--model", "random", "--dataset", str(dataset), "--quiet",
                               "--bootstrap-samples", "0", "--out", str(tmp_path / "runs" / "random")]).exit_code == 0
    failed = runner.invoke(cli, ["retrieve", "--retriever", "bm25", "--retriever-args", "k3=1", "--dataset",
                                 str(dataset), "--quiet", "--out", str(tmp_path / "runs" / "bm25")])
    assert failed.exit_code == 1 and not (tmp_path / "runs" / "bm25").exists()
    report = runner.invoke(cli, ["report", *map(str, sorted((tmp_path / "runs").iterdir()))])
    assert report.exit_code == 0, report.output


def test_report_rows_of_different_splits_or_datasets_say_which_is_which(dataset, tmp_path):
    from benchmark.report import load_runs, to_html, to_markdown
    from reddit_amazon.sample import sample_dataset_path

    run(RunConfig(model="random", dataset=str(dataset), bootstrap_samples=0), tmp_path / "a", progress=False)
    run(RunConfig(model="random", dataset=str(sample_dataset_path()), split="validation", bootstrap_samples=0),
        tmp_path / "b", progress=False)
    runs = load_runs([tmp_path / "a", tmp_path / "b"])
    for text in (to_markdown(runs).replace("\\[", "["), to_html(runs)):  # Markdown shows its brackets escaped
        assert "random [split test; dataset " in text and "random [split validation; dataset " in text
    same = load_runs([tmp_path / "a", tmp_path / "a"])
    assert "[split" not in to_markdown(same)


def test_report_shows_a_run_named_twice_once_and_tells_rows_that_read_alike_by_their_folder(dataset, tmp_path,
                                                                                            monkeypatch):
    """`report runs/a runs/a` (or a glob overlapping another) listed the run twice; two runs of one model that read
    alike (the same plugin as `--model NAME` and as `file.py:Class`: its `name` labels both) were two rows nobody
    could tell apart."""
    from benchmark.report import load_runs, to_html, to_markdown

    monkeypatch.chdir(tmp_path)
    for folder in ("runs/a", "runs/b"):
        run(RunConfig(model="random", dataset=str(dataset), bootstrap_samples=0), folder, progress=False)
    twice = load_runs(["runs/a", "runs/a/results.json", "runs/b/../a", tmp_path / "runs" / "a"])
    assert len(twice) == 1 and "| random |" in to_markdown(twice)
    both = load_runs(["runs/a", "runs/b"])
    for text in (to_markdown(both).replace("\\[", "[").replace("\\]", "]"), to_html(both)):
        assert "random [runs/a]" in text and "random [runs/b]" in text


def test_rows_that_read_alike_name_an_absolute_run_folder_by_its_name_only(dataset, tmp_path):
    """`benchmark report ~/runs/a ~/runs/b --html site/leaderboard.html` (the shell expands the ~) put the machine's
    folders, /home/<user>/... included, into the page to publish: an absolute run folder is shown by its name, as
    the cards show local paths (cards.local_paths), and so is the dataset folder the runs name."""
    from benchmark.report import load_runs, to_html, to_markdown

    for name in ("a", "b"):
        run(RunConfig(model="random", dataset=str(dataset), bootstrap_samples=0), tmp_path / "runs" / name,
            progress=False)
    both = load_runs([tmp_path / "runs" / "a", tmp_path / "runs" / "b"])
    for text in (to_markdown(both).replace("\\[", "[").replace("\\]", "]"), to_html(both)):
        assert "random [a]" in text and "random [b]" in text
        assert str(tmp_path) not in text
        assert str(dataset) not in text and f"dataset {dataset.name} v" in text  # the dataset folder too


def test_a_plugin_file_or_model_arg_at_an_absolute_path_is_shown_by_its_name_only(dataset, tmp_path):
    """`--model /home/<user>/mine.py:Mine --model-args weights=/home/<user>/runs/best` put the machine's folders
    into the row label of the page to publish; they are shown by name, as the cards show local paths, and two
    runs whose args then read alike are told apart by their run folders."""
    from benchmark.report import load_runs, to_html, to_markdown

    plugin = tmp_path / "mine.py"
    plugin.write_text("class Mine:\n"
                      "    def __init__(self, weights: str = '', depth: int = 3):\n"
                      "        pass\n"
                      "    def recommend(self, examples):\n"
                      "        return [e.candidates[0].item_id for e in examples]\n")
    for name in ("a", "b"):
        weights = tmp_path / "home" / name / "adapters" / "best"
        run(RunConfig(model=f"{plugin}:Mine", model_args={"weights": str(weights), "depth": 5}, dataset=str(dataset),
                      domain="home", limit=2, bootstrap_samples=0), tmp_path / "runs" / name, progress=False)
    both = load_runs([tmp_path / "runs" / "a", tmp_path / "runs" / "b"])
    for text in (to_markdown(both).replace("\\[", "[").replace("\\]", "]"), to_html(both)):
        assert str(tmp_path) not in text
        assert "mine.py:Mine (depth=5, weights=adapters/best) [first 2 records per domain] [a]" in text
        assert "mine.py:Mine (depth=5, weights=adapters/best) [first 2 records per domain] [b]" in text


def test_rows_over_local_folders_of_unknown_fingerprint_name_them_by_their_name_only(dataset, tmp_path):
    """Rows over two dataset folders without a manifest (fingerprint unknown) were labelled with the folder's
    absolute path, `random [dataset one /home/<user>/one]`, in the page to publish; the notes under the table
    already name a local folder by its name."""
    from benchmark.report import load_runs, to_html, to_markdown

    for name in ("one", "two"):
        shutil.copytree(dataset, tmp_path / "data" / name)
        (tmp_path / "data" / name / "manifest.json").unlink()
        run(RunConfig(model="random", dataset=str(tmp_path / "data" / name), bootstrap_samples=0),
            tmp_path / "runs" / name, progress=False)
    both = load_runs([tmp_path / "runs" / "one", tmp_path / "runs" / "two"])
    assert {r.results["dataset"]["fingerprint"] for r in both} == {"unknown"}
    for text in (to_markdown(both).replace("\\[", "[").replace("\\]", "]"), to_html(both)):
        assert "[dataset one]" in text and "[dataset two]" in text
        assert str(tmp_path) not in text


def test_quiet_draws_no_progress_bar_of_datasets_either(tmp_path):
    """A folder's first load makes `datasets` draw "Generating ... split" bars of its own."""
    import os
    import shutil
    import subprocess
    import sys

    from reddit_amazon.sample import sample_dataset_path

    copy = shutil.copytree(sample_dataset_path(), tmp_path / "fresh-copy")
    done = subprocess.run([sys.executable, "-m", "benchmark.cli", "run", "--model", "random", "--dataset", str(copy),
                           "--out", str(tmp_path / "run"), "--limit", "1", "--quiet"],
                          capture_output=True, text=True, env={**os.environ, "HF_DATASETS_CACHE": str(tmp_path / "c")})
    assert done.returncode == 0, done.stderr
    assert "Generating" not in done.stderr and "%|" not in done.stderr


def test_report_of_runs_glob_skips_a_folder_holding_runs_as_the_lavic_docs_lay_them_out(dataset, tmp_path):
    # README / docs/lavic.md: runs/lavic/ holds descriptions, distill/, rec/ and the run runs/lavic/test;
    # `benchmark report runs/*` must still report the runs, naming the run inside runs/lavic.
    runner = CliRunner()
    runs = tmp_path / "runs"
    for out in (runs / "random", runs / "lavic" / "test"):
        assert runner.invoke(cli, ["run", "--model", "random", "--dataset", str(dataset), "--quiet",
                                   "--bootstrap-samples", "0", "--out", str(out)]).exit_code == 0
    (runs / "lavic" / "descriptions.jsonl").write_text("")
    (runs / "lavic" / "rec").mkdir()
    report = runner.invoke(cli, ["report", *map(str, sorted(runs.iterdir()))])
    assert report.exit_code == 0, report.output
    assert f"skipped {runs / 'lavic'}: not a run folder" in report.output and str(runs / "lavic" / "test") in report.output
    assert "| Method | Beauty HR@1 | Beauty VR |" in report.output
    empty = runs / "empty"
    empty.mkdir()
    assert runner.invoke(cli, ["report", str(empty)]).exit_code == 1  # nothing to report: still an error


@pytest.mark.parametrize("name", ["[exp1]", "a[/b]", "données 🎁"])
def test_cli_summary_prints_out_path_verbatim_whatever_stdout_encodes(dataset, tmp_path, name):
    """The summary names --out as given: square brackets are no Rich markup (printed, never a MarkupError),
    and an out path stdout cannot encode (PYTHONIOENCODING=ascii, C locale) is no UnicodeEncodeError."""
    import_extra("bm25s")
    out = tmp_path / name
    for command in (["run", "--model", "random"], ["retrieve", "--retriever", "bm25"]):
        result = CliRunner(charset="ascii").invoke(cli, [*command, "--dataset", str(dataset), "--out", str(out),
                                                         "--quiet", "--bootstrap-samples", "0", "--overwrite"])
        assert result.exit_code == 0, result.output
        assert (out / "results.json").is_file()
        assert f"wrote {out / 'results.json'}\n".encode() in result.stdout_bytes
        again = CliRunner(charset="ascii").invoke(cli, [*command, "--dataset", str(dataset), "--out", str(out),
                                                        "--quiet", "--bootstrap-samples", "0"])
        assert again.exit_code == 0, again.output
        # run returns a finished run as it is (nothing written); retrieve computes its run again
        said = "unchanged" if command[0] == "run" else "wrote"
        assert f"{said} {out / 'results.json'}\n".encode() in again.stdout_bytes


def test_a_quoted_tilde_in_dataset_and_out_is_the_home_folder(dataset, user_home):
    shutil.copytree(dataset, user_home / "tilde-ds")
    runner = CliRunner()
    result = runner.invoke(cli, ["run", "--model", "random", "--dataset", "~/tilde-ds", "--out", "~/tilde-run",
                                 "--bootstrap-samples", "0", "--quiet"])
    assert result.exit_code == 0, result.output
    results = json.loads((user_home / "tilde-run" / "results.json").read_text())
    assert results["dataset"]["id"] == str(user_home / "tilde-ds")
    report = runner.invoke(cli, ["report", "~/tilde-run", "--markdown=~/board.md"])
    assert report.exit_code == 0 and (user_home / "board.md").is_file(), report.output
    assert not any(Path.cwd().iterdir())


def test_a_run_that_waited_on_a_lock_its_holder_removed_still_guards_the_folder(tmp_path):
    """A run that fails before starting removes its lock file and folder; one waiting on it must then lock the
    file at that path, not the removed one, or a third run would write into the folder at the same time."""
    import threading

    from reddit_amazon.files import LOCK_FILE, FolderBusyError, folder_lock

    out, taken, release = tmp_path / "o", threading.Event(), threading.Event()

    def failed_start() -> None:  # what run() does when the folder was new and nothing was written
        with folder_lock(out, "benchmark run"):
            taken.set()
            release.wait(5)
            (out / LOCK_FILE).unlink()
            out.rmdir()

    first = threading.Thread(target=failed_start)
    first.start()
    assert taken.wait(5)
    threading.Timer(0.3, release.set).start()
    with folder_lock(out, "benchmark run", wait_s=5):  # waits for the first one, then runs
        assert (out / LOCK_FILE).is_file()
        with pytest.raises(FolderBusyError, match="another benchmark run is running"):
            with folder_lock(out, "benchmark run", wait_s=0):  # a third run is refused while the second runs
                pass
    first.join()


def test_an_unknown_split_over_all_domains_lists_the_splits_there_are(dataset, tmp_path):
    with pytest.raises(DatasetError, match=r"no domain has a 'tests' split \(splits with records: test\); "
                                           r"did you mean 'test'\?"):
        run(RunConfig(model="random", dataset=str(dataset), split="tests"), tmp_path, progress=False)


def test_a_finished_run_returned_again_says_the_model_did_not_run(dataset, tmp_path, caplog):
    config = RunConfig(model="last", dataset=str(dataset), domain="home", bootstrap_samples=0)
    run(config, tmp_path, recommender=LastCandidate(), progress=False)
    assert "without running the model" not in caplog.text
    again = LastCandidate()
    run(config, tmp_path, recommender=again, progress=False)
    assert again.seen == [] and "already holds this finished run" in caplog.text and "--overwrite" in caplog.text


def test_a_plugin_bug_is_shown_with_its_traceback_and_the_predictions_before_it_kept(dataset, tmp_path):
    """A plugin's ValueError was reduced to "Error: ValueError: invalid literal ..." (the one line meant for the
    toolkit's own recommenders): no plugin, no example, no line of the plugin's code."""
    plugin = tmp_path / "buggy_plugin.py"
    plugin.write_text("class Buggy:\n    batch_size = 2\n    calls = 0\n\n    def recommend(self, examples):\n"
                      "        Buggy.calls += 1\n        if Buggy.calls == 2:\n"
                      "            int('not a number')\n        return [e.candidates[0].item_id for e in examples]\n")
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "benchmark.cli", "run", "--model", f"{plugin}:Buggy", "--dataset",
                           str(dataset), "--domain", "home", "--out", str(out), "--quiet"],
                          capture_output=True, text=True)
    assert done.returncode == 1
    assert "Traceback" in done.stderr and "int('not a number')" in done.stderr  # the plugin's own line
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"benchmark.registry.PluginError: recommender '{plugin}:Buggy': recommend() failed on 2 "
                           "example(s) (")
    assert last.endswith("): ValueError: invalid literal for int() with base 10: 'not a number'")
    assert len((out / "predictions.jsonl").read_bytes().splitlines()) == 2


def test_report_skips_a_run_killed_or_still_loading_before_its_run_json(dataset, tmp_path):
    """A run killed (kill -9) while loading its dataset or model, or still loading it, has made its folder and lock
    but written no run.json yet: `report runs/*` must name it as unfinished, not fail on the whole leaderboard."""
    finished = tmp_path / "runs" / "random"
    result = CliRunner().invoke(cli, ["run", "--model", "random", "--dataset", str(dataset), "--out", str(finished),
                                      "--quiet", "--bootstrap-samples", "10"])
    assert result.exit_code == 0, result.output
    plugin = tmp_path / "dying_plugin.py"
    plugin.write_text("import os\n\nclass Dying:\n    def __init__(self):\n        os._exit(137)  # killed while loading\n")
    killed = tmp_path / "runs" / "killed"
    done = subprocess.run([sys.executable, "-m", "benchmark.cli", "run", "--model", f"{plugin}:Dying", "--dataset",
                           str(dataset), "--out", str(killed), "--quiet"], capture_output=True, text=True)
    assert done.returncode == 137 and killed.is_dir() and not (killed / "run.json").exists()
    report = CliRunner().invoke(cli, ["report", str(finished), str(killed)])
    assert report.exit_code == 0, report.output
    assert f"skipped {killed}: the run has not finished" in report.output and "| random |" in report.output
    stray = tmp_path / "runs" / "notes"  # a folder that is no run at all is still an error
    stray.mkdir()
    (stray / "todo.txt").write_text("x")
    refused = CliRunner().invoke(cli, ["report", str(finished), str(stray)])
    # named for what it is (docs/lavic.md's model folder beside the runs was told "is the run finished?")
    assert refused.exit_code == 1 and f"{stray}: not a run folder (no results.json)" in refused.output
    assert "is the run finished" not in refused.output


def test_a_plugin_bug_s_traceback_shows_no_secret(dataset, tmp_path):
    """The one Error line redacted a secret-named variable's value; the plugin's traceback must too."""
    plugin = tmp_path / "leaky_plugin.py"
    plugin.write_text("import os\n\nclass Leaky:\n    def recommend(self, examples):\n"
                      "        raise OSError('refused: ' + os.environ['MY_SERVICE_TOKEN'])\n")
    done = subprocess.run([sys.executable, "-m", "benchmark.cli", "run", "--model", f"{plugin}:Leaky", "--dataset",
                           str(dataset), "--domain", "home", "--out", str(tmp_path / "run"), "--quiet"],
                          capture_output=True, text=True, env={**os.environ, "MY_SERVICE_TOKEN": "tok-1234567890abcdef"})
    assert done.returncode == 1 and "Traceback" in done.stderr and "tok-1234567890abcdef" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].endswith("OSError: refused: <MY_SERVICE_TOKEN redacted>")


@pytest.mark.parametrize("start", ["benchmark", "benchmark.cli"])
def test_a_bug_the_harness_does_not_report_shows_no_secret_of_the_environment_or_model_args(dataset, tmp_path,
                                                                                            start):
    """A plugin's ``uses_images`` property raising was no failure of a plugin call that benchmark reports: Python
    printed its traceback, the message quoting OPENAI_API_KEY with the key in it, and the api_key of --model-args,
    which only benchmark knows (`python -m benchmark.cli` had no excepthook of the console scripts either). It is
    the plugin's failure now, reported as one with its traceback."""
    plugin = tmp_path / "leaky_plugin.py"
    plugin.write_text("import os\n\nclass Leaky:\n    def __init__(self, api_key):\n        self.key = api_key\n\n"
                      "    @property\n    def uses_images(self):\n"
                      "        raise KeyError(f\"no 'title' in record with key {os.environ['OPENAI_API_KEY']}\"\n"
                      "                       f\" or {self.key}\")\n\n"
                      "    def recommend(self, examples):\n        return ['' for _ in examples]\n")
    done = subprocess.run([sys.executable, "-m", start, "run", "--model", f"{plugin}:Leaky", "--dataset",
                           str(dataset), "--domain", "home", "--out", str(tmp_path / "run"), "--quiet",
                           "--model-args", "api_key=sk-proj-ABCDEF123456"],
                          capture_output=True, text=True, env={**os.environ, "OPENAI_API_KEY": "sk-secret-abcdef123"})
    lines = done.stderr.splitlines()
    assert done.returncode == 1 and "sk-secret-abcdef123" not in done.stderr and "ABCDEF123456" not in done.stderr
    assert lines[0] == "Traceback (most recent call last):" and f'  File "{plugin}", line 9, in uses_images' in lines
    message = """KeyError: "no 'title' in record with key <OPENAI_API_KEY redacted> or <key redacted>\""""
    plugin_error = "benchmark.registry.PluginError: reading the recommender's uses_images: "
    assert message in lines and lines[-1] == plugin_error + message


@pytest.mark.parametrize("attribute", ["settings", "embedding_provenance"])
def test_a_plugin_property_read_for_results_json_raising_shows_no_model_args_secret(dataset, tmp_path, attribute):
    """The attributes read for results.json's model entry after the run (``settings``, ``embedding_provenance``)
    were read with a bare getattr, not as the plugin's: a property raising printed Python's traceback with
    --model-args' api_key in its message."""
    plugin = tmp_path / "leaky_plugin.py"
    plugin.write_text("class Leaky:\n    def __init__(self, api_key):\n        self.key = api_key\n\n"
                      f"    @property\n    def {attribute}(self):\n"
                      "        raise KeyError(f'refused: {self.key}')\n\n"
                      "    def recommend(self, examples):\n        return ['' for _ in examples]\n")
    done = subprocess.run([sys.executable, "-m", "benchmark", "run", "--model", f"{plugin}:Leaky", "--dataset",
                           str(dataset), "--domain", "home", "--out", str(tmp_path / "run"), "--quiet",
                           "--model-args", "api_key=sk-proj-ABCDEF123456"], capture_output=True, text=True)
    lines = done.stderr.splitlines()
    assert done.returncode == 1 and "ABCDEF123456" not in done.stderr, done.stderr
    assert f'  File "{plugin}", line 7, in {attribute}' in lines
    assert lines[-1] == (f"benchmark.registry.PluginError: reading the recommender's {attribute}: "
                         "KeyError: 'refused: <key redacted>'")


def test_a_plugin_bug_s_traceback_shows_no_secret_of_a_variable_named_in_any_style(dataset, tmp_path):
    """Only variables whose names held KEY, TOKEN, SECRET or PASSWORD were redacted: MySQL's ``MYSQL_PWD``, a
    ``*_PASSPHRASE``, ``HF_AUTH`` or Terraform's ``GOOGLE_CREDENTIALS`` quoted in a plugin's error were printed."""
    secrets = {"MYSQL_PWD": "mysql-1234567890", "GPG_PASSPHRASE": "gpg-1234567890", "HF_AUTH": "hf-1234567890",
               "GOOGLE_CREDENTIALS": '{"private_key": "gcp-1234567890"}'}
    plugin = tmp_path / "leaky_plugin.py"
    plugin.write_text("import os\n\nclass Leaky:\n    def recommend(self, examples):\n"
                      f"        raise OSError('refused: ' + ' '.join(os.environ[name] for name in {list(secrets)}))\n")
    done = subprocess.run([sys.executable, "-m", "benchmark.cli", "run", "--model", f"{plugin}:Leaky", "--dataset",
                           str(dataset), "--domain", "home", "--out", str(tmp_path / "run"), "--quiet"],
                          capture_output=True, text=True, env={**os.environ, **secrets})
    assert done.returncode == 1 and "Traceback" in done.stderr and "1234567890" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].endswith(
        "OSError: refused: " + " ".join(f"<{name} redacted>" for name in secrets))


@pytest.mark.parametrize("fails_in", ["__init__", "recommend"])
def test_a_plugin_bug_s_traceback_shows_no_secret_given_in_model_args(dataset, tmp_path, fails_in):
    """run.json and results.json record api_key=... as <redacted>, but the traceback printed when the plugin
    raised showed the key wherever the plugin's error quoted it."""
    plugin = tmp_path / "keyed_plugin.py"
    plugin.write_text("class Keyed:\n    def __init__(self, api_key: str, hf_token: str = '', depth: int = 1):\n"
                      "        self.key = api_key\n"
                      f"        if {fails_in == '__init__'}:\n"
                      "            raise PermissionError(f'key {api_key} refused (token {hf_token})')\n"
                      "    def recommend(self, examples):\n"
                      "        raise PermissionError(f'key {self.key} refused')\n")
    done = subprocess.run([sys.executable, "-m", "benchmark.cli", "run", "--model", f"{plugin}:Keyed", "--model-args",
                           "api_key=sk-proj-ABCDEF123456,hf_token=hf_ZYXWVUT98765,depth=12345678", "--dataset",
                           str(dataset), "--domain", "home", "--out", str(tmp_path / "run"), "--quiet"],
                          capture_output=True, text=True)
    assert done.returncode == 1 and "Traceback" in done.stderr
    assert "ABCDEF123456" not in done.stderr and "ZYXWVUT98765" not in done.stderr
    assert "PermissionError: key <key redacted> refused" in done.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("field, value", [("limit", 0), ("batch_size", 0), ("bootstrap_samples", -1), ("seed", None),
                                          ("limit", 2.5), ("limit", True)])
def test_run_config_refuses_what_the_command_line_refuses(field, value):
    """RunConfig(limit=0) from Python quietly wrote an empty run; the command line refuses --limit 0."""
    with pytest.raises(RunError, match=f"RunConfig.{field} must be an integer"):
        RunConfig(model="random", **{field: value})


def test_a_config_takes_no_third_positional_argument_it_would_put_in_another_field():
    """Since the configs share keyword-only fields, a third positional argument, once RunConfig's ``dataset``, went
    silently into ``candidates`` (RetrieveConfig's: into ``k``): RunConfig("bm25", {}, "./my-dataset") scored
    the bundled sample with candidates_./my-dataset."""
    from benchmark.retrieve import RetrieveConfig

    assert RunConfig("bm25", {"k": 1}).model_args == {"k": 1}
    assert RetrieveConfig("bm25", {"model": "m"}).retriever_options == {"model": "m"}
    with pytest.raises(TypeError, match="positional argument"):
        RunConfig("bm25", {}, "./my-dataset")
    with pytest.raises(TypeError, match="positional argument"):
        RetrieveConfig("bm25", {}, "./my-dataset")


@pytest.mark.parametrize("config", ["RunConfig", "RetrieveConfig"])
@pytest.mark.parametrize("seed", [-1, 2**64])
def test_a_config_refuses_a_seed_the_command_line_refuses_before_any_work(config, seed):
    """RunConfig(seed=2**64) from Python passed the config's checks, made every prediction, and then ended in
    orjson's "TypeError: Integer exceeds 64-bit range" writing results.json, naming no field; the command line
    refuses such a --seed up front (0 to 2**64-1)."""
    from benchmark.retrieve import RetrieveConfig

    with pytest.raises(RunError, match=rf"{config}\.seed must be an integer from 0 to 2\*\*64-1, not {seed}$"):
        if config == "RunConfig":
            RunConfig(model="random", seed=seed)
        else:
            RetrieveConfig(retriever="bm25", seed=seed)


@pytest.mark.parametrize("field, value", [("limit", 0), ("limit", -1), ("k", 0), ("bootstrap_samples", -5),
                                          ("seed", "x"), ("limit", True)])
def test_retrieve_config_refuses_what_the_command_line_refuses(field, value):
    """RetrieveConfig(limit=-1) from Python wrote a retrieval of no records, bootstrap_samples=-5 a results.json
    recording "samples": -5; the command line refuses both, as RunConfig does."""
    from benchmark.retrieve import RetrieveConfig

    with pytest.raises(RunError, match=f"RetrieveConfig.{field} must be an integer"):
        RetrieveConfig(retriever="bm25", **{field: value})


def test_a_folder_inside_a_dataset_is_not_taken_for_one(dataset, tmp_path):
    """`--dataset ds/data` reached `datasets`, which said "BuilderConfig 'beauty' not found. Available: ['default']"."""
    with pytest.raises(DatasetError, match=r"data: not a dataset folder \(it has no manifest.json or README.md\); "
                                           r"did you mean its parent folder .*\?"):
        run(RunConfig(model="random", dataset=str(dataset / "data")), tmp_path / "run", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"empty: not a dataset folder \(it has no manifest.json or README.md\)$"):
        run(RunConfig(model="random", dataset=str(tmp_path / "empty")), tmp_path / "run", progress=False)


def test_compare_warns_when_datasets_without_fingerprint_or_record_limits_differ(dataset, tmp_path):
    """Two folders without a manifest (or two Hub ids read offline) record fingerprint "unknown": their ids
    tell them apart, as in `benchmark report`; a paired test over "the same" example ids of other data is not."""
    from benchmark.compare import compare_runs

    for name in ("one", "two"):
        copy = shutil.copytree(dataset, tmp_path / name / "ds")
        (copy / "manifest.json").unlink()
        run(RunConfig(model="last", dataset=str(copy), bootstrap_samples=0), tmp_path / f"run-{name}",
            recommender=LastCandidate(), progress=False)
    assert not compare_runs(tmp_path / "run-one", tmp_path / "run-one", samples=10).warnings
    assert any("different datasets" in w for w in compare_runs(tmp_path / "run-one", tmp_path / "run-two",
                                                                samples=10).warnings)
    run(RunConfig(model="last", dataset=str(tmp_path / "one" / "ds"), limit=2, bootstrap_samples=0),
        tmp_path / "run-limited", recommender=LastCandidate(), progress=False)
    assert any("limit" in w for w in compare_runs(tmp_path / "run-one", tmp_path / "run-limited", samples=10).warnings)


def test_report_marks_best_only_among_rows_over_the_same_data():
    """A run over the first record of each domain (HR@1 1.0 by luck) or over another split is not "best"
    of the full test runs beside it."""
    from benchmark.report import Run, _ranks, to_markdown

    def made(value, split="test", limit=None):
        return Run(Path("r"), {"metrics": {"hr@1": {"beauty": {"value": value}}}, "split": split, "limit": limit,
                               "dataset": {"id": "d", "version": "1", "fingerprint": "f"}})

    runs = [made(0.2), made(0.1), made(1.0, limit=1), made(0.5, split="validation")]
    marks = _ranks(runs)
    assert marks[(0, "beauty", "hr@1")] == 1 and marks[(1, "beauty", "hr@1")] == 2
    # a row that hit nothing is never marked, even as the second best, and the legend says so
    assert (1, "beauty", "hr@1") not in _ranks([made(0.2), made(0.0)])
    assert "an HR@1 of 0 is never marked" in to_markdown([])


def test_report_marks_are_those_of_comparing_every_row_with_every_other():
    """_ranks compared each row with every other (quadratic in the runs): its grouped form marks the same cells,
    ties, zeros, missing values and rows over other data included."""
    import random

    from benchmark.report import DOMAINS, Run, _comparable, _ranks

    def pairwise(runs):  # the former implementation, as the reference
        marks = {}
        for domain in DOMAINS:
            for index, row in enumerate(runs):
                peers = [r for r in runs if _comparable(r) == _comparable(row)]
                values = sorted({v for r in peers if (v := r.value(domain, "hr@1"))}, reverse=True)
                value = row.value(domain, "hr@1")
                if value and values and value == values[0]:
                    marks[(index, domain, "hr@1")] = 1
                elif value and len(values) > 1 and value == values[1]:
                    marks[(index, domain, "hr@1")] = 2
        return marks

    rng = random.Random(0)
    for _ in range(50):
        runs = []
        for _ in range(rng.randint(0, 40)):
            metrics = {"hr@1": {d: {"value": rng.choice([0.0, 0.1, 0.2, 0.25, 0.3, 0.5, 1.0])}
                                for d in DOMAINS if rng.random() < 0.8}}
            dataset = {"id": "d", "version": rng.choice(["1", "2"]), "fingerprint": rng.choice(["f", "unknown"])}
            runs.append(Run(Path("r"), {"metrics": metrics, "dataset": dataset, "split": rng.choice(["test", "val"]),
                                        "limit": rng.choice([None, None, 5])}))
        assert _ranks(runs) == pairwise(runs)
        assert list(_ranks(runs)) == list(pairwise(runs))  # in the same order too


def test_results_record_the_python_platform_and_library_versions(dataset, tmp_path):
    """A reader reproducing a published number needs the environment that produced it, as the dataset
    build records its package versions."""
    from importlib import metadata

    results = run(RunConfig(model="last", dataset=str(dataset), domain="home", bootstrap_samples=0), tmp_path,
                  recommender=LastCandidate(), progress=False)
    env = results["environment"]
    assert env["python"] == ".".join(map(str, sys.version_info[:3]))
    assert env["packages"]["numpy"] == metadata.version("numpy") and "datasets" in env["packages"]
    assert json.loads((tmp_path / "results.json").read_text())["environment"] == env


def test_results_say_which_device_the_model_ran_on_apart_from_the_machines_gpu(dataset, tmp_path, monkeypatch):
    """`environment.gpu` named the CUDA device torch saw, even for a model that ran on the CPU beside it."""
    torch = import_extra("torch")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: f"Test GPU {getattr(device, 'index', device)}")
    config = RunConfig(model="last", dataset=str(dataset), domain="home", limit=2, bootstrap_samples=0)

    def ran(name: str, device) -> dict:
        recommender = LastCandidate()
        if device is not None:
            recommender.device = device
        return run(config, tmp_path / name, recommender=recommender, progress=False)

    on_cpu = ran("cpu", "cpu")
    assert (on_cpu["model"]["device"], on_cpu["model"]["device_name"]) == ("cpu", None)
    assert on_cpu["environment"]["machine_gpu"] == "Test GPU 0" and "gpu" not in on_cpu["environment"]
    on_gpu = ran("gpu", torch.device("cuda", 1))
    assert (on_gpu["model"]["device"], on_gpu["model"]["device_name"]) == ("cuda:1", "Test GPU 1")
    silent = ran("silent", None)  # random, bm25, openai-chat: no model runs here
    assert (silent["model"]["device"], silent["model"]["device_name"]) == (None, None)
    assert {k: v for k, v in ran("again", "cpu").items() if k not in ("timings", "created_utc")} == \
        {k: v for k, v in on_cpu.items() if k not in ("timings", "created_utc")}


def test_results_record_every_setting_the_model_ran_with_defaults_included(tmp_path):
    """`--model sbert` recorded `args: {}`: which checkpoint gave the numbers was nowhere in results.json."""
    from benchmark.retrieval.sbert import DEFAULT_SBERT_MODEL

    import_extra("sentence_transformers")
    plugin = tmp_path / "mine.py"
    plugin.write_text("from pathlib import Path\n"
                      "class Mine:\n"
                      "    def __init__(self, depth: int = 3, folder: Path = Path('x'), api_key: str = 'sk-secret'):\n"
                      "        pass\n"
                      "    def recommend(self, examples):\n"
                      "        return [e.candidates[0].item_id for e in examples]\n")
    mine = run(RunConfig(model=f"{plugin}:Mine", model_args={"depth": 5}, domain="home", limit=2,
                         bootstrap_samples=0), tmp_path / "mine", progress=False)
    assert mine["model"]["args"] == {"depth": 5}
    assert mine["model"]["settings"] == {"depth": 5, "folder": "x", "api_key": "<redacted>"}
    sbert = run(RunConfig(model="sbert", model_args={"cache_dir": str(tmp_path / "emb")}, domain="home", limit=2,
                          bootstrap_samples=0), tmp_path / "sbert", progress=False)
    assert sbert["model"]["settings"]["model"] == DEFAULT_SBERT_MODEL
    from sentence_transformers.util import get_device_name

    assert sbert["model"]["device"].partition(":")[0] == get_device_name()  # the one sentence-transformers picks
    assert json.loads((tmp_path / "sbert" / "results.json").read_text())["model"] == sbert["model"]
    given = run(RunConfig(model="last", domain="home", limit=2, bootstrap_samples=0), tmp_path / "given",
                recommender=LastCandidate(), progress=False)
    assert given["model"]["settings"] is None  # an object the caller built: its settings are not known
    from benchmark.retrieve import RetrieveConfig, retrieve

    bm25 = retrieve(RetrieveConfig(retriever="bm25", retriever_options={"k1": 1.2}, domain="home", limit=2,
                                   bootstrap_samples=0), tmp_path / "bm25", progress=False)
    assert bm25["model"]["settings"] == {"k1": 1.2, "b": 0.75, "stopwords": "en"}


def test_progress_false_also_silences_the_bars_of_datasets(tmp_path, capfd, monkeypatch):
    """`run(..., progress=False)` still drew `datasets`' "Generating test split" bars on a folder's first load
    (the CLI's --quiet turned them off, the Python argument did not); the caller's own setting is kept."""
    import datasets

    from reddit_amazon.sample import sample_dataset_path

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")  # a first load: splits generated
    capfd.readouterr()
    run(RunConfig(model="last", domain="fashion", dataset=str(sample_dataset_path())), tmp_path / "run",
        recommender=LastCandidate(), progress=False)
    err = capfd.readouterr().err
    assert "Generating" not in err and "%|" not in err, err[-1000:]
    assert not datasets.utils.are_progress_bars_disabled()


def test_retrieve_with_progress_false_silences_the_bars_of_datasets_too(tmp_path, capfd, monkeypatch):
    """`retrieve(..., progress=False)` had the same gap as `run`: only the CLI's --quiet turned datasets' bars off."""
    import_extra("bm25s")
    import datasets

    from benchmark.retrieve import RetrieveConfig, retrieve
    from reddit_amazon.sample import sample_dataset_path

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    capfd.readouterr()
    retrieve(RetrieveConfig(retriever="bm25", domain="home", limit=2, bootstrap_samples=0,
                            dataset=str(sample_dataset_path())), tmp_path / "bm25", progress=False)
    err = capfd.readouterr().err
    assert "Generating" not in err and "%|" not in err, err[-1000:]
    assert not datasets.utils.are_progress_bars_disabled()


_METADATA_PLUGIN = '''
class ByMetadata:
    """Picks the candidate whose categories, features and details share the most words with the conversation."""

    uses_images = False

    def recommend(self, examples):
        outputs = []
        for example in examples:
            words = set(example.context.lower().replace("<", " ").replace(">", " ").split())

            def overlap(candidate):
                assert candidate.image_bytes is None
                texts = [*candidate.categories, *candidate.features, *map(str, candidate.details.values())]
                return len(words & set(" ".join(texts).lower().replace(":", " ").split()))

            outputs.append(f"Try {max(example.candidates, key=overlap).item_id}")
        return outputs
'''


def test_a_plugin_reads_each_candidates_categories_features_and_details_from_the_candidate(tmp_path):
    """A candidate carried only item_id, title, description and image: a plugin choosing by categories or features
    had to load the items config again, and to be told by a --model-arg which dataset the harness was running."""
    import datasets

    from reddit_amazon.sample import sample_dataset_path

    plugin = tmp_path / "by_metadata.py"
    plugin.write_text(_METADATA_PLUGIN)
    result = CliRunner().invoke(cli, ["run", "--model", f"{plugin}:ByMetadata", "--out", str(tmp_path / "run"),
                                      "--quiet", "--bootstrap-samples", "0"])
    assert result.exit_code == 0, result.output
    predictions = [orjson.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_bytes().splitlines()]

    expected = {}
    for domain in ("beauty", "fashion", "home"):  # the same choice, from the items config read here
        items = {row["item_id"]: row for row in datasets.load_dataset(str(sample_dataset_path()), "items",
                                                                      split=domain).remove_columns("image")}
        for record in datasets.load_dataset(str(sample_dataset_path()), domain, split="test"):
            words = set(record["context"].lower().replace("<", " ").replace(">", " ").split())

            def overlap(item_id, items=items, words=words):
                row = items[item_id]
                texts = [*row["categories"], *row["features"], *map(str, json.loads(row["details"]).values())]
                return len(words & set(" ".join(texts).lower().replace(":", " ").split()))

            expected[record["example_id"]] = max(record["candidates_sbert"], key=overlap)
    assert {p["example_id"]: p["parsed"] for p in predictions} == expected
    assert len(set(expected.values())) > 3  # the metadata told the candidates apart
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["metrics"]["hr@1"]["all"]["value"] > 0


def test_a_candidate_keeps_its_positions_and_fields_a_dataset_lacks_are_empty(dataset, tmp_path):
    """The first four fields keep their places (plugins and tests build candidates positionally); a dataset
    whose items leave metadata out or null (an imported release has none but titles) gives empty fields."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import yaml

    from benchmark.data import load_items, resolve_dataset
    from benchmark.protocol import Candidate

    positional = Candidate("B000000001", "Lamp", "A lamp.", b"\x89PNG")
    assert (positional.title, positional.description, positional.image_bytes) == ("Lamp", "A lamp.", b"\x89PNG")
    assert (positional.categories, positional.features, positional.details, positional.store) == ((), (), {}, "")
    with pytest.raises(ValueError, match="item B000000002: details is JSON list"):
        _ = Candidate("B000000002", "Lamp", details_json="[1]").details
    with pytest.raises(ValueError, match="item B000000003: details is not valid JSON"):
        _ = Candidate("B000000003", "Lamp", details_json='{"Brand": ').details

    copy = tmp_path / "ds"
    shutil.copytree(dataset, copy)
    (copy / "manifest.json").unlink()  # its fingerprint no longer holds; README.md still names the configs
    _, front, body = (copy / "README.md").read_text().split("---\n", 2)
    card = yaml.safe_load(front)
    del card["dataset_info"]  # the features it declares: those of the columns as the items had them
    (copy / "README.md").write_text(f"---\n{yaml.safe_dump(card)}---\n{body}")
    for shard in (copy / "data" / "items").glob("*.parquet"):  # in every shard: no other one has the columns
        table = pq.read_table(shard).drop_columns(["store", "details", "image_urls"])
        table = table.replace_schema_metadata(None)
        nulls = {"categories": pa.nulls(table.num_rows, pa.list_(pa.string())),
                 "features": pa.nulls(table.num_rows, pa.large_list(pa.string())),  # a large list is a list too
                 "main_category": pa.nulls(table.num_rows, pa.string()),
                 "parent_asin": pa.nulls(table.num_rows, pa.string())}
        for name, column in nulls.items():
            table = table.set_column(table.column_names.index(name), name, column)
        pq.write_table(table, shard)
    items = load_items(resolve_dataset(str(copy)), "home")
    items.finish_loading(with_images=True)
    candidate = next(iter(items.items.values()))
    assert candidate.title and candidate.image_bytes
    assert (candidate.store, candidate.main_category, candidate.categories, candidate.features,
            candidate.details, candidate.image_urls, candidate.parent_asin) == ("", "", (), (), {}, (), "")


@pytest.mark.parametrize("with_images", [False, True])
def test_every_column_of_an_item_reaches_its_candidate_with_or_without_its_image(tmp_path, with_images):
    """Each field holds its own column (lists as tuples: a candidate is frozen and hashable), whether or not the
    images were read: reading them once dropped everything but the title and description."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    from benchmark.data import load_items, resolve_dataset
    from reddit_amazon.sample import sample_dataset_path

    copy = tmp_path / "ds"
    shutil.copytree(sample_dataset_path(), copy)
    (copy / "manifest.json").unlink()  # its fingerprint no longer holds
    shard = next((copy / "data" / "items").glob("home-*.parquet"))
    table = pq.read_table(shard)
    described = pa.array([f"A photo of item {item_id}" for item_id in table.column("item_id").to_pylist()])
    pq.write_table(table.set_column(table.column_names.index("image_description"), "image_description", described),
                   shard)
    rows = datasets.load_dataset(str(copy), "items", split="home").cast_column("image", datasets.Image(decode=False))
    items = load_items(resolve_dataset(str(copy)), "home")
    items.finish_loading(with_images=with_images)
    assert len(items.items) == len(rows)
    for row in rows:
        candidate = items.items[row["item_id"]]
        assert (candidate.title, candidate.description, candidate.store, candidate.main_category,
                candidate.categories, candidate.features, candidate.details_json, candidate.parent_asin,
                candidate.image_urls, candidate.image_description) == (
            row["title"], row["description"], row["store"], row["main_category"], tuple(row["categories"]),
            tuple(row["features"]), row["details"], row["parent_asin"], tuple(row["image_urls"]),
            row["image_description"])
        image = row["image"]["bytes"] if row["image"] else None
        assert candidate.image_bytes == (image if with_images else None)
        assert candidate in {candidate}  # hashable: its lists are held as tuples
    assert any(candidate.image_bytes for candidate in items.items.values()) is with_images


def test_a_file_plugin_spelled_another_way_resumes_and_reuses_its_run(dataset, tmp_path, monkeypatch):
    """run.json compared --model as typed: `./plugins/x.py:C`, `plugins/x.py:C` and the absolute path, one plugin,
    were three runs, so a rerun spelled otherwise was refused as another run instead of resuming."""
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "first.py").write_text(
        "import os\n"
        "class First:\n"
        "    batch_size = 4\n"
        "    def __init__(self):\n"
        "        self.calls = 0\n"
        "    def recommend(self, examples):\n"
        "        self.calls += 1\n"
        "        if self.calls > 1 and os.environ.get('STOP_AFTER_ONE_BATCH'):\n"
        "            raise KeyboardInterrupt\n"
        "        return [e.candidates[0].item_id for e in examples]\n"
        "class Second(First):\n"
        "    pass\n")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"

    def config(spec):
        return RunConfig(model=spec, dataset=str(dataset), domain="home", bootstrap_samples=0)

    monkeypatch.setenv("STOP_AFTER_ONE_BATCH", "1")
    with pytest.raises(KeyboardInterrupt):
        run(config("./plugins/first.py:First"), out, progress=False)
    monkeypatch.delenv("STOP_AFTER_ONE_BATCH")
    resumed = run(config("plugins/first.py:First"), out, progress=False)
    assert resumed["timings"]["resumed_records"] == 4 and resumed["model"]["spec"] == "plugins/first.py:First"
    recorded = json.loads((out / "run.json").read_text())
    assert (recorded["model"], recorded["model_identity"]) == ("plugins/first.py:First", "first.py:First")
    again = run(config(f"{tmp_path}/plugins/first.py:First"), out, progress=False)
    assert again == resumed  # the finished run, as typed when it ran

    with pytest.raises(RunError, match="differs in: model_identity"):
        run(config("plugins/first.py:Second"), out, progress=False)
    with pytest.raises(RunError, match="differs in: model_identity"):
        run(config("random"), out, progress=False)
    random = run(config("random"), tmp_path / "random", progress=False)
    named = run(config("benchmark.recommenders.random_choice:RandomRecommender"), tmp_path / "random", progress=False)
    assert named == random


def test_a_run_folder_from_before_model_identity_was_recorded_resumes_under_another_spelling(dataset, tmp_path,
                                                                                               monkeypatch):
    (tmp_path / "pick.py").write_text("class Pick:\n"
                                      "    def recommend(self, examples):\n"
                                      "        return [e.candidates[1].item_id for e in examples]\n"
                                      "class Other(Pick):\n"
                                      "    pass\n")
    monkeypatch.chdir(tmp_path)
    config = RunConfig(model="./pick.py:Pick", dataset=str(dataset), domain="fashion", bootstrap_samples=0)
    first = run(config, tmp_path / "out", progress=False)
    signature = json.loads((tmp_path / "out" / "run.json").read_text())
    signature.pop("model_identity", None)  # as earlier releases wrote run.json
    (tmp_path / "out" / "run.json").write_text(json.dumps(signature))
    (tmp_path / "out" / "results.json").unlink()  # interrupted
    with pytest.raises(RunError, match="differs in: model_identity"):  # another class of the same file: same code
        run(RunConfig(**{**config.__dict__, "model": "./pick.py:Other"}), tmp_path / "out", progress=False)
    again = run(RunConfig(**{**config.__dict__, "model": f"{tmp_path}/pick.py:Pick"}), tmp_path / "out",
                progress=False)
    assert again["timings"]["resumed_records"] == first["counts"]["all"]["records"]


def test_a_full_disk_while_predicting_names_the_predictions_file_and_a_rerun_finishes_the_same(
        dataset, tmp_path, file_size_limit):
    """The predictions file was appended to through a plain file: its failing flush was named, but closing it
    flushed the same bytes again and that second, unnamed "[Errno 28] No space left on device" was the error shown."""
    import errno

    config = RunConfig(model="random", dataset=str(dataset), domain="all", batch_size=4, bootstrap_samples=0)
    run(config, tmp_path / "whole", progress=False)
    predictions = tmp_path / "run" / "predictions.jsonl"
    with file_size_limit(1500), pytest.raises(OSError) as caught:
        run(config, tmp_path / "run", progress=False)
    assert caught.value.errno == errno.EFBIG and caught.value.filename == str(predictions), caught.value
    assert predictions.stat().st_size <= 1500 and not (tmp_path / "run" / "results.json").exists()
    run(config, tmp_path / "run", progress=False)
    assert predictions.read_bytes() == (tmp_path / "whole" / "predictions.jsonl").read_bytes()


def test_a_full_datasets_cache_ends_the_run_in_an_error_naming_it(dataset, tmp_path, monkeypatch, file_size_limit):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    with file_size_limit(2000):
        result = CliRunner().invoke(cli, ["run", "--model", "random", "--dataset", str(dataset), "--out",
                                          str(tmp_path / "run"), "--quiet"])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert result.output.strip().splitlines()[-1].startswith("Error: OSError: [Errno 27] File too large (the datasets "
                                                              "cache: make room there or set HF_DATASETS_CACHE")
    assert f"'{tmp_path / 'cache'}'" in result.output


def test_compare_gives_mcnemar_exact_test_of_hr1_and_vr_counted_from_the_predictions(dataset, tmp_path):
    import math

    from benchmark.compare import compare_runs, to_markdown

    run(RunConfig(model="first", dataset=str(dataset), bootstrap_samples=0), tmp_path / "a",
        recommender=FirstOrNothing(), progress=False)
    run(RunConfig(model="last", dataset=str(dataset), bootstrap_samples=0), tmp_path / "b",
        recommender=LastCandidate(), progress=False)
    rows = {name: [orjson.loads(line) for line in (tmp_path / name / "predictions.jsonl").read_bytes().splitlines()]
            for name in ("a", "b")}
    a_valid = sum(x["valid"] and not y["valid"] for x, y in zip(rows["a"], rows["b"], strict=True))
    b_valid = sum(y["valid"] and not x["valid"] for x, y in zip(rows["a"], rows["b"], strict=True))
    assert b_valid > 0  # FirstOrNothing answers nothing for some records, LastCandidate always answers
    p = min(1.0, 2 * sum(math.comb(a_valid + b_valid, i) for i in range(min(a_valid, b_valid) + 1))
            / 2 ** (a_valid + b_valid))
    comparison = compare_runs(tmp_path / "a", tmp_path / "b", samples=100)
    vr = next(d for d in comparison.differences if (d.metric, d.group) == ("vr", "all"))
    assert (vr.exact.a_better, vr.exact.b_better) == (a_valid, b_valid) and vr.exact.p_value == pytest.approx(p)
    table = to_markdown(comparison, "a", "b")
    assert "| A better | B better | p (McNemar) |" in table
    line = next(line for line in table.splitlines() if line.startswith("| vr | all |"))
    assert line.endswith(f"| {a_valid} | {b_valid} | {p:.3f} |") if p >= 0.001 else line.endswith(f"| {p:.1e} |")
    assert next(line for line in table.splitlines() if line.startswith("| hr@1 | all |")).count("|") == 11


def test_compare_scores_only_the_records_both_runs_have(dataset, tmp_path):
    """A record only one run scored is counted (only in A / only in B) and left out of both sides: values,
    paired differences and McNemar's discordant counts, recomputed here from the predictions.jsonl rows."""
    import math

    from benchmark.compare import compare_runs

    run(RunConfig(model="first", dataset=str(dataset), bootstrap_samples=0), tmp_path / "a",
        recommender=FirstOrNothing(), progress=False)
    run(RunConfig(model="last", dataset=str(dataset), limit=4, bootstrap_samples=0), tmp_path / "b",
        recommender=LastCandidate(), progress=False)
    rows = {name: {(r["domain"], r["example_id"]): r for r in map(orjson.loads,
                                                                   (tmp_path / name / "predictions.jsonl")
                                                                   .read_bytes().splitlines())}
            for name in ("a", "b")}
    shared = [key for key in rows["a"] if key in rows["b"]]
    assert len(shared) == len(rows["b"]) == 12 and len(rows["a"]) == 36

    def value(name: str, metric: str, keys: list) -> float:
        if metric == "vr":
            return sum(rows[name][k]["valid"] for k in keys) / len(keys)
        return sum(rows[name][k]["hits"] for k in keys) / sum(rows[name][k]["gt_pairs"] for k in keys)

    def score(name: str, metric: str, key) -> int:
        return int(rows[name][key]["valid"]) if metric == "vr" else rows[name][key]["hits"]

    assert value("a", "vr", shared) != value("a", "vr", list(rows["a"]))  # the left-out records would show
    comparison = compare_runs(tmp_path / "a", tmp_path / "b", samples=200)
    assert (comparison.shared_records, comparison.only_a, comparison.only_b) == (12, 24, 0)
    swapped = compare_runs(tmp_path / "b", tmp_path / "a", samples=200)
    assert (swapped.shared_records, swapped.only_a, swapped.only_b) == (12, 0, 24)
    for d in comparison.differences:
        if d.metric not in ("hr@1", "vr"):
            continue
        keys = [k for k in shared if d.group in ("all", k[0])]
        a, b = value("a", d.metric, keys), value("b", d.metric, keys)
        assert (d.records, d.a, d.b, d.difference) == (len(keys), pytest.approx(a), pytest.approx(b),
                                                         pytest.approx(a - b)), (d.metric, d.group)
        a_better = sum(score("a", d.metric, k) > score("b", d.metric, k) for k in keys)
        b_better = sum(score("a", d.metric, k) < score("b", d.metric, k) for k in keys)
        discordant = a_better + b_better
        p = min(1.0, sum(math.comb(discordant, i) for i in range(min(a_better, b_better) + 1)) * 2 / 2 ** discordant)
        assert (d.exact.a_better, d.exact.b_better, d.exact.p_value) == (a_better, b_better, pytest.approx(p))


def test_report_labels_a_row_whose_items_had_no_text(tmp_path):
    """A run (or retrieval) over items without titles chose blind: its row says so, in Markdown and HTML alike."""
    from benchmark.report import load_runs, to_html, to_markdown

    base = {"model": {"spec": "bm25", "name": "bm25"}, "metrics": {"hr@1": {"beauty": {"value": 0.02}}},
            "dataset": SAME_DATASET, "split": "test", "candidates": "sbert"}
    for name, extra in (("blind", {"items_without_title": {"items": 7704, "of": 7704}}),
                        ("sighted", {"items_without_title": {"items": 0, "of": 80}}),
                        ("old", {}),
                        ("retrieval", {"kind": "retrieval", "candidates": "full catalog",
                                       "model": {"spec": "retrieve:bm25", "name": "BM25", "item_text": "title"},
                                       "items_without_text": {"items": 3, "of": 4}})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps({**base, **extra}))
    runs = {run.path.name: run for run in load_runs([tmp_path / n for n in ("blind", "sighted", "old", "retrieval")])}
    assert runs["blind"].label == "bm25 [7704 of 7704 candidate items without title]"
    assert runs["sighted"].label == runs["old"].label == "bm25"
    assert runs["retrieval"].label == "BM25 [3 of 4 catalog items without text]"
    assert "| bm25 \\[7704 of 7704 candidate items without title\\] |" in to_markdown(list(runs.values()))
    assert "bm25 [7704 of 7704 candidate items without title]" in to_html(list(runs.values()))


def test_a_model_args_error_shows_its_hint_whole(dataset, tmp_path):
    """The hint goes through the redaction of every error: its example names no secret, so it is shown whole."""
    result = CliRunner().invoke(cli, ["run", "--model", "random", "--model-args", "oops", "--dataset", str(dataset),
                                      "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 or result.exit_code == 1, result.output
    assert 'expected name=value[,name=value...]; quote a value holding a comma: name="a,b"' in result.output


def test_sbert_served_from_the_embedding_cache_on_a_core_install_says_so_in_results(tmp_path, monkeypatch):
    """`--model sbert` on a core install (no sentence-transformers, no torch) ran from a warm embedding cache, and its
    results.json could not tell: nothing said the model never ran, nor which library versions made the vectors (the
    environment lists what is installed here, which is not what encoded them). A cold cache stops with one line
    naming the extra, and leaves no folder."""
    sentence_transformers = import_extra("sentence_transformers")  # the `retrieval` extra, to fill the cache
    import torch
    import transformers

    from core_install import core_install_env  # tests/: the extras hidden, as in a `.[test]` install

    monkeypatch.setenv("REDDIT_AMAZON_CACHE", str(tmp_path / "cache"))

    def cli_run(out: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "benchmark.cli", "run", "--model", "sbert", "--domain", "home",
                               "--limit", "3", "--bootstrap-samples", "0", "--quiet", "--out", str(tmp_path / out)],
                              capture_output=True, text=True, env=core_install_env(), timeout=600)

    cold = cli_run("cold")
    assert cold.returncode == 1 and "Traceback" not in cold.stderr, cold.stderr[-2000:]
    assert cold.stderr.strip().splitlines()[-1] == \
        "Error: the sbert retriever needs sentence-transformers: pip install 'reddit-amazon[retrieval]'"
    assert not (tmp_path / "cold").exists()

    computed = run(RunConfig(model="sbert", domain="home", limit=3, bootstrap_samples=0), tmp_path / "computed",
                   progress=False)
    versions = {"sentence-transformers": sentence_transformers.__version__, "torch": torch.__version__,
                "transformers": transformers.__version__}
    texts = computed["model"]["embeddings"]["computed"]
    assert texts > 0 and computed["model"]["embeddings"] == {"computed": texts, "from_cache": 0,
                                                             "cache_written_with": [versions]}
    assert computed["model"]["device"] == "cpu"
    warm = cli_run("warm")
    assert warm.returncode == 0, warm.stderr[-2000:]
    served = json.loads((tmp_path / "warm" / "results.json").read_text())
    assert served["metrics"] == computed["metrics"]
    assert (tmp_path / "warm" / "predictions.jsonl").read_bytes() == \
        (tmp_path / "computed" / "predictions.jsonl").read_bytes()
    assert served["model"]["embeddings"] == {"computed": 0, "from_cache": texts, "cache_written_with": [versions]}
    assert (served["model"]["device"], served["model"]["device_name"]) == (None, None)  # no model ran
    from benchmark.retrieve import RetrieveConfig, retrieve

    retrieved = retrieve(RetrieveConfig(retriever="sbert", domain="home", limit=3, bootstrap_samples=0),
                         tmp_path / "retrieved", progress=False)  # `benchmark retrieve` says so too
    assert retrieved["model"]["embeddings"]["cache_written_with"] == [versions]


@pytest.mark.parametrize("damaged_line", [b"[1, 2]", b"7", b"{}", b"\xff\r\xfe"])
@pytest.mark.parametrize("finished", [False, True], ids=["resumed", "new-intervals"])
def test_a_damaged_predictions_line_is_one_error_line_and_loses_no_prediction(tmp_path, damaged_line, finished):
    """A resumed run, or a finished one given other bootstrap settings, reads predictions.jsonl back. A damaged line
    (not an object, no domain, a ``\\r`` taken for a line end) was a traceback, or cut the file there silently."""
    run_args = ["run", "--model", "random", "--limit", "3", "--quiet", "--out", str(tmp_path / "a")]
    assert CliRunner().invoke(cli, [*run_args, "--bootstrap-samples", "0"]).exit_code == 0
    predictions = tmp_path / "a" / "predictions.jsonl"
    damaged = damaged_line + b"\n" + predictions.read_bytes()
    predictions.write_bytes(damaged)
    if not finished:
        (tmp_path / "a" / "results.json").unlink()
    result = CliRunner().invoke(cli, [*run_args, "--bootstrap-samples", "10"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert result.output.strip().splitlines()[-1].startswith(f"Error: {predictions}:1: damaged, not ")
    assert "--overwrite" in result.output and predictions.read_bytes() == damaged


@pytest.mark.parametrize("where", ["recommend", "constructor"])
def test_a_plugin_calling_sys_exit_is_named_and_its_predictions_kept_for_a_rerun(dataset, tmp_path, where):
    """sys.exit(3) in a plugin (its own argparse, a "cannot go on" branch) ended `benchmark run` in status 3 without
    a word: nothing said that the recommender, not the harness, had stopped the run, nor which one."""
    plugin = tmp_path / "exiting_plugin.py"
    plugin.write_text("import os\nimport sys\n\nclass Exiting:\n    batch_size = 2\n    calls = 0\n\n"
                      "    def __init__(self):\n"
                      f"        if {where == 'constructor'} and not os.environ.get('FIXED'):\n"
                      "            sys.exit(2)\n\n"
                      "    def recommend(self, examples):\n"
                      "        Exiting.calls += 1\n"
                      "        if Exiting.calls == 2 and not os.environ.get('FIXED'):\n"
                      "            sys.exit(3)\n"
                      "        return [e.candidates[0].item_id for e in examples]\n")
    out = tmp_path / "run"
    command = [sys.executable, "-m", "benchmark.cli", "run", "--model", f"{plugin}:Exiting", "--dataset", str(dataset),
               "--domain", "home", "--out", str(out), "--quiet", "--bootstrap-samples", "0"]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 1, done.stderr
    assert "Traceback" in done.stderr and "sys.exit(" in done.stderr  # the plugin's own line
    last = done.stderr.strip().splitlines()[-1]
    called = ": recommend() failed on 2 example(s) (" if where == "recommend" else " failed while starting: "
    assert last.startswith(f"benchmark.registry.PluginError: recommender '{plugin}:Exiting'{called}"), last
    assert last.endswith(f"SystemExit: {3 if where == 'recommend' else 2} (the recommender exited: a recommender "
                         "returns its outputs or raises)"), last
    assert not (out / "results.json").exists()
    if where == "recommend":  # the first batch's predictions are kept, whole, and a rerun resumes after them
        assert len((out / "predictions.jsonl").read_bytes().splitlines()) == 2
    else:
        assert not out.exists()
    rerun = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "FIXED": "1"})
    assert rerun.returncode == 0, rerun.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["timings"]["resumed_records"] == (2 if where == "recommend" else 0)
    assert results["counts"]["all"]["records"] == results["counts"]["all"]["valid"] == 12


@pytest.mark.parametrize("batch", [1, 2])
def test_an_interruption_names_the_recommender_it_stopped_and_says_only_what_was_kept(dataset, tmp_path, batch):
    """A KeyboardInterrupt from a plugin's call (Ctrl-C while it ran, or one it raised) ended the run with "the
    predictions made so far are kept in DIR" even where the first batch was interrupted and nothing was kept (the
    folder was removed), and without naming the recommender or the call it stopped."""
    plugin = tmp_path / "stopping_plugin.py"
    plugin.write_text("class Stopping:\n    batch_size = 2\n    calls = 0\n\n    def recommend(self, examples):\n"
                      f"        Stopping.calls += 1\n        if Stopping.calls == {batch}:\n"
                      "            raise KeyboardInterrupt\n        return [e.candidates[0].item_id for e in examples]\n")
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "benchmark.cli", "run", "--model", f"{plugin}:Stopping", "--dataset",
                           str(dataset), "--domain", "home", "--out", str(out), "--quiet"],
                          capture_output=True, text=True)
    assert done.returncode == 130, done.stderr
    message = done.stderr.strip()
    assert message.startswith(f"interrupted in recommender '{plugin}:Stopping': recommend() on 2 example(s) ("), message
    if batch == 1:
        assert not out.exists() and f"no prediction had been written to {out}; run the same command again" in message
    else:
        assert len((out / "predictions.jsonl").read_bytes().splitlines()) == 2
        assert message.endswith(f"the predictions made so far are kept in {out}; run the same command again to resume")


def _abandoned_temporary(target: Path) -> Path:
    """The hidden temporary file a writer of ``target`` killed mid-write (kill -9) leaves beside it."""
    from reddit_amazon.files import sibling_prefix

    leftover = target.parent / (sibling_prefix(target, "tmp").replace(str(os.getpid()), "999999999") + "k1ll3d00")
    leftover.write_bytes(b'{"half": ')
    return leftover


@pytest.mark.parametrize("finished", [False, True])
def test_run_retrieve_and_report_killed_mid_write_leave_no_temporary_file_once_run_again(dataset, tmp_path,
                                                                                         finished):
    """What `benchmark run`, `retrieve` and `report` killed while writing a file left (its hidden temporary) is gone
    after the same command is run again, whether the run had finished or is resumed; only their own files remain."""
    import_extra("bm25s")
    runner = CliRunner()
    commands = {
        "run": ["run", "--model", "random", "--dataset", str(dataset), "--domain", "home", "--out",
                str(tmp_path / "run"), "--quiet", "--bootstrap-samples", "20"],
        "retrieve": ["retrieve", "--retriever", "bm25", "--dataset", str(dataset), "--domain", "home", "--out",
                     str(tmp_path / "retrieve"), "--quiet", "--bootstrap-samples", "20"],
        "report": ["report", str(tmp_path / "run"), "--html", str(tmp_path / "site" / "board.html"),
                   "--markdown", str(tmp_path / "site" / "board.md")],
    }
    for args in commands.values():
        assert runner.invoke(cli, args).exit_code == 0
    kept = {folder: sorted(p.name for p in (tmp_path / folder).iterdir()) for folder in ("run", "retrieve", "site")}
    if not finished:  # killed writing results.json: the rerun resumes from the predictions
        (tmp_path / "run" / "results.json").unlink()
    for target in ("run/run.json", "run/results.json", "retrieve/candidates.jsonl", "retrieve/results.json",
                   "site/board.html", "site/board.md"):
        _abandoned_temporary(tmp_path / target)
    for name, args in commands.items():
        result = runner.invoke(cli, args)
        assert result.exit_code == 0, (name, result.output)
    assert {folder: sorted(p.name for p in (tmp_path / folder).iterdir()) for folder in kept} == kept
