"""The test suite itself: the caches a test could fill are the session's own, and a session leaves nothing
in the user's home or the shared temp dir."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def test_every_cache_a_test_could_fill_is_in_the_sessions_folder():
    import datasets.config
    import huggingface_hub.constants

    from benchmark.protocol import Candidate
    from benchmark.retrieval.cache import default_cache_dir

    session = Path(os.environ["HF_HOME"]).parent
    assert session.name.startswith("reddit-amazon-tests-") and session.parent == Path(tempfile.gettempdir())
    image = Candidate(item_id="B000000001", title="t", image_bytes=b"\xff\xd8\xff fake jpeg").image_path
    for what, path in {"datasets": datasets.config.HF_DATASETS_CACHE, "hub": huggingface_hub.constants.HF_HUB_CACHE,
                       "embeddings": default_cache_dir(), "images": image}.items():
        assert Path(path).is_relative_to(session), (what, path)


def test_a_session_leaves_nothing_in_the_home_or_temp_folders(tmp_path):
    """Tests that fill the embedding cache and the image folder, and one whose killed child leaves its
    multiprocessing folder (pymp-*) behind, run in a session of their own."""
    home, temp = tmp_path / "home", Path(tempfile.mkdtemp())  # short: a child's socket names must fit 107 bytes
    home.mkdir()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
             f"{TESTS}/test_benchmark_run.py::test_examples_never_carry_the_ground_truth",
             f"{TESTS}/test_recommenders.py::test_a_model_missing_from_the_offline_cache_is_one_error_line_naming_it",
             f"{TESTS}/test_reddit_stage.py::test_kill_9_leaves_no_process_holding_the_workdir_lock"],
            cwd=TESTS.parent, env={**os.environ, "HOME": str(home), "TMPDIR": str(temp)},
            capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert sorted(p.name for p in home.iterdir()) == []
        # pytest's own folders, and torch's compile cache: kept from one run to the next it saves ~40 s (conftest.py)
        kept = ("pytest-of-", "torchinductor_")
        assert sorted(p.name for p in temp.iterdir() if not p.name.startswith(kept)) == []
    finally:
        shutil.rmtree(temp, ignore_errors=True)


#: Tests that failed, not skipped, in a core install (``pip install -c constraints.txt -e ".[test]"``, run on
#: Python 3.10 and 3.13, where no torch wheel is at hand): each needed the `retrieval` or `lavic` extra.
NEEDING_AN_EXTRA = [
    "test_assemble.py::test_candidates_from_the_domain_catalog_and_stats",
    "test_benchmark_exactness.py::test_a_retrieval_over_items_without_titles_says_so",
    "test_benchmark_run.py::test_cli_run_report_compare",
    "test_benchmark_run.py::test_retrieve_over_the_full_catalog",
    "test_benchmark_run.py::test_compare_says_a_retrieval_folder_cannot_be_compared_and_report_lists_it",
    "test_benchmark_run.py::test_retrieve_never_writes_over_a_model_run_and_reports_only_cutoffs_within_k",
    "test_benchmark_run.py::test_a_model_that_fails_on_its_first_batch_leaves_nothing_that_looks_like_a_run",
    "test_benchmark_run.py::test_cli_summary_prints_out_path_verbatim_whatever_stdout_encodes",
    "test_benchmark_run.py::test_retrieve_with_progress_false_silences_the_bars_of_datasets_too",
    "test_benchmark_scripts.py::test_help_shows_the_scripts_example_commands",
    "test_build.py",
    "test_interrupted_llm_calls.py::test_an_interrupted_build_stops_at_once_and_resumes[ctrl-c-unanswered]",
    "test_process_state.py::test_loading_the_sample_and_running_the_benchmark_leave_the_process_as_it_was",
    "test_recommenders.py::test_candidate_image_refuses_a_decompression_bomb_before_decoding_it",
    "test_redaction.py::test_the_relevance_filter_in_a_build_never_shows_or_writes_an_echoed_key",
    "test_reddit_stage.py::test_a_second_run_on_a_busy_workdir_is_refused",
    "test_retrieval.py::test_bm25_ranks_matching_titles_first",
    "test_retrieval.py::test_bm25_ranks_a_batch_of_candidate_lists_with_one_tokenize_call_each_for_queries_and_items",
]


def test_a_core_install_hides_every_module_of_the_extras():
    """What the run below relies on: the extras' modules are not found, in this interpreter's children too."""
    from core_install import core_install_env

    found = subprocess.run(
        [sys.executable, "-c", "import importlib.util; from reddit_amazon.cli_errors import EXTRA_OF_MODULE; "
                               "print(sorted(m for m in EXTRA_OF_MODULE if importlib.util.find_spec(m)))"],
        cwd=TESTS.parent, env=core_install_env(), capture_output=True, text=True, timeout=120)
    assert (found.returncode, found.stdout) == (0, "[]\n"), found.stderr[-2000:]


def test_tests_needing_an_extra_skip_in_a_core_install():
    """The suite of a `.[test]` install (Python 3.10 and 3.13 here) failed 45 tests that ran bm25, SBERT or torch
    code unguarded (`--retrievers bm25`, `benchmark retrieve`, lavic_ref.model): they must skip, or run without it."""
    from core_install import core_install_env

    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
                           *(f"{TESTS}/{node}" for node in NEEDING_AN_EXTRA)],
                          cwd=TESTS.parent, env=core_install_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "extra) is not installed" in done.stdout, done.stdout[-2000:]


def test_a_test_needing_an_extra_skips_naming_the_extra():
    """pytest.importorskip("transformers") skipped as "could not import 'transformers'" (20 tests of a `.[test]`
    install on Python 3.13): core_install.import_extra says which extra to install."""
    from reddit_amazon.cli_errors import EXTRA_OF_MODULE

    bare = []
    for path in sorted(set(TESTS.glob("*.py")) - {TESTS / "core_install.py"}):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "importorskip" and node.args):
                module = node.args[0]
                if not isinstance(module, ast.Constant) or module.value in EXTRA_OF_MODULE:
                    bare.append(f"{path.name}:{node.lineno}")
    assert bare == [], "use core_install.import_extra, which names the extra"
