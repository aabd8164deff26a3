"""The test suite itself: the caches a test could fill are the session's own, and a session leaves nothing
in the user's home or the shared temp dir."""

from __future__ import annotations

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
