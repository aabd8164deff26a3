"""The Python examples of the dataset card, README.md, docs/dataset.md, docs/cards.md and docs/reddit-stage.md run
as written, against a copy of the bundled sample named as they name it (``reddit-amazon``), and give what their
comments say.

Two kinds of line are changed, as the text itself allows: the placeholder ``/abs/path/reddit-amazon`` becomes the
copy's absolute path, and a line loading a Hub id (``your-org/...``) is left out: offline, ``datasets`` loads a Hub
id only from a copy it prepared from the Hub before, which no test can make without the Hub. What a push uploads is
tested in test_dataset_folder.py.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import datasets
import pytest
from click.testing import CliRunner

from reddit_amazon.sample import SAMPLE_DATASET

ROOT = Path(__file__).resolve().parents[1]
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.M | re.S)
HUB_ID_LINE = re.compile(r'^.*load_dataset\("your-org/[^"]*".*\n', re.M)


def python_blocks(document: Path) -> list[str]:
    return PYTHON_BLOCK.findall(document.read_text(encoding="utf-8"))


def runnable(block: str, folder: Path) -> str:
    return HUB_ID_LINE.sub("", block).replace('"/abs/path/reddit-amazon"', json.dumps(str(folder)))


def run_block(block: str, name: str) -> dict:
    namespace: dict = {"__name__": name}
    exec(compile(block, name, "exec"), namespace)
    return namespace


@pytest.fixture
def sample_here(tmp_path, monkeypatch) -> Path:
    """The working folder holds a copy of the bundled sample named ``reddit-amazon``, as the examples load it."""
    folder = tmp_path / "reddit-amazon"
    shutil.copytree(SAMPLE_DATASET, folder)
    monkeypatch.chdir(tmp_path)
    return folder


def test_the_sample_cards_loading_example_loads_the_splits_its_comment_names(sample_here):
    (block,) = python_blocks(sample_here / "README.md")
    names = run_block(runnable(block, sample_here), "card")
    said = re.search(r"# splits: (.+)", block).group(1).split(", ")
    assert list(names["fashion"]) == said
    assert set(names["items"]["domain"]) == {"fashion"}


@pytest.mark.parametrize("document", ["README.md", "docs/dataset.md"])
def test_the_loading_example_runs_and_loads_what_its_comments_say(sample_here, document):
    (block,) = python_blocks(ROOT / document)
    assert HUB_ID_LINE.search(block) and "/abs/path/reddit-amazon" in block  # what runnable() replaces is there
    names = run_block(runnable(block, sample_here), document)
    assert isinstance(names["fashion"], datasets.DatasetDict) and set(names["fashion"]["test"]["domain"]) == {"fashion"}
    assert set(names["home"]["train"]["domain"]) == {"home"}  # by path
    assert set(names["items"]["domain"]) == {"fashion"}  # item catalog of a domain
    asin = re.search(r'filters=\[\("item_id", "==", "(\w+)"\)\]', block).group(1)
    assert names["one"]["item_id"] == [asin]
    assert names["sample"]["test"]["example_id"] == names["home"]["test"]["example_id"]  # the bundled sample


def test_the_cards_page_model_and_benchmark_card_examples_run(tmp_path, monkeypatch, capsys):
    """The model card example reads runs/lavic-sbert/results.json and writes out/README.md; the benchmark card
    example reads runs/sbert and runs/lavic: real `benchmark run` results stand in for them."""
    from benchmark.cli import cli as benchmark_cli

    monkeypatch.chdir(tmp_path)
    outcome = CliRunner().invoke(benchmark_cli, ["run", "--model", "random", "--out", "runs/sbert"])
    assert outcome.exit_code == 0, outcome.output
    for name in ["lavic", "lavic-sbert"]:
        shutil.copytree(tmp_path / "runs" / "sbert", tmp_path / "runs" / name)
    (tmp_path / "out").mkdir()
    model_card, benchmark_card = python_blocks(ROOT / "docs" / "cards.md")
    run_block(model_card, "model card")
    card = (tmp_path / "out" / "README.md").read_text(encoding="utf-8")
    assert card.startswith("---\nbase_model: llava-hf/llava-v1.6-mistral-7b-hf\n")
    assert "/home/me" not in card  # "elsewhere: absolute, shown by name only"
    capsys.readouterr()
    run_block(benchmark_card, "benchmark card")
    assert capsys.readouterr().out.startswith("## Benchmark card\n")


def test_the_reddit_stage_page_example_runs_on_a_dumps_folder(tmp_path, monkeypatch):
    """docs/reddit-stage.md's Python example, over a ``dumps`` folder holding the bundled sample's Reddit dumps; its
    comments name where the shards and the funnel are and what ``incomplete_files`` lists."""
    from reddit_amazon.build import SAMPLE_INPUTS

    shutil.copytree(SAMPLE_INPUTS / "reddit", tmp_path / "dumps")
    monkeypatch.chdir(tmp_path)
    (block,) = python_blocks(ROOT / "docs" / "reddit-stage.md")
    names = run_block(block, "reddit-stage")
    result = names["result"]
    assert [shard.name for shard in result.shards][0] == "part-00000.jsonl"
    assert all(shard.parent == Path("work/reddit/conversations") for shard in result.shards)
    assert json.loads((tmp_path / "work/reddit/funnel.json").read_text()) == result.funnel
    assert result.funnel["threads_rebuilt"] > 0
    assert result.incomplete_files == []  # the sample's dumps are whole
