"""Library entry points called from Python leave the caller's process as they found it (tests/process_state.py).

Not counted: what the libraries underneath do once per process on first use, which no caller can avoid by not
calling this project: tqdm's first bar fixes multiprocessing's start method (its write lock is a multiprocessing
RLock) and starts its monitor thread, fsspec starts its IO loop thread, imports create loggers and register
atexit callbacks. Documented: with workers=1 datatrove replaces loguru's handlers (docs/reddit-stage.md).
"""

from __future__ import annotations

import importlib
import shutil
import sys
from pathlib import Path

import pytest
from core_install import import_extra  # tests/

sys.path.insert(0, str(Path(__file__).resolve().parent))

from process_state import changes, snapshot  # noqa: E402

_THIRD_PARTY_FIRST_USE = ("start_method: None -> ", "threads: + tqdm_monitor ", "threads: + fsspecIO ",
                          "atexit_callbacks: ")


@pytest.fixture(autouse=True, scope="module")
def _libraries_imported():
    """Imported before the first snapshot: what importing them does to the process is theirs (scikit-learn sets
    KMP_DUPLICATE_LIB_OK, requests adds warning filters, rich draws from Python's global RNG)."""
    for name in ("numpy", "torch", "sklearn", "pyarrow.parquet", "datasets", "tqdm.auto", "PIL.Image", "requests",
                 "rich.console", "loguru", "datatrove.executor", "datatrove.utils.logging", "bm25s", "scipy"):
        try:
            importlib.import_module(name)
        except ImportError:
            pass


def _left_changed(call, *, documented: tuple[str, ...] = ()) -> list[str]:
    """The changes ``call`` leaves in the process, without the libraries' first-use ones and ``documented``.
    Only additions count for threads and open files: another test's leftovers may end or close meanwhile."""
    before = snapshot()
    call()
    return [line for line in changes(before, snapshot())
            if not line.startswith(_THIRD_PARTY_FIRST_USE + documented)
            and not (line.startswith("loggers[") and "'<absent>' -> " in line)  # a logger created by an import
            and not line.startswith(("threads: - ", "open_fds: - "))]


def test_loading_the_sample_and_running_the_benchmark_leave_the_process_as_it_was(tmp_path):
    import_extra("bm25s")
    from benchmark.runner import RunConfig, run
    from reddit_amazon.sample import load_sample

    class FirstCandidate:
        def recommend(self, examples):
            return [example.candidates[0].item_id for example in examples]

    assert _left_changed(lambda: load_sample("home")) == []
    for model in ("random", "bm25"):
        assert _left_changed(lambda: run(RunConfig(model=model, bootstrap_samples=50), tmp_path / model)) == []
    assert _left_changed(lambda: run(RunConfig(model="mine"), tmp_path / "mine", recommender=FirstCandidate(),
                                     progress=False)) == []


def test_retrieval_and_cards_leave_the_process_as_it_was(tmp_path):
    import_extra("bm25s")
    from benchmark.retrieve import RetrieveConfig, retrieve
    from cards.benchmark_card import render_benchmark_card
    from reddit_amazon.dataset_folder import refresh_card, verify
    from reddit_amazon.sample import sample_dataset_path

    copy = tmp_path / "sample"
    shutil.copytree(sample_dataset_path(), copy)
    assert _left_changed(lambda: retrieve(RetrieveConfig(retriever="bm25"), tmp_path / "bm25")) == []
    assert _left_changed(lambda: refresh_card(copy)) == []
    assert _left_changed(lambda: verify(copy)) == []
    assert _left_changed(lambda: render_benchmark_card(["sbert", "bm25"])) == []


@pytest.mark.parametrize("workers", [1, 2])
def test_the_reddit_stage_leaves_the_process_as_it_was_but_for_documented_loguru_handlers(tmp_path, workers):
    from reddit_amazon.build import SAMPLE_REDDIT
    from reddit_amazon.pipeline import RedditStageOptions, run_reddit_stage

    documented = ("loguru_handlers: ",) if workers == 1 else ()
    assert _left_changed(lambda: run_reddit_stage([SAMPLE_REDDIT], tmp_path / "work",
                                                  RedditStageOptions(workers=workers, tasks=2)),
                         documented=documented) == []
