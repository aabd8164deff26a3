"""Test-wide settings: no network, and a private Hugging Face cache per test session.

`datasets` silently falls back to a cached copy of a same-named folder, so every session gets
its own HF_HOME (see shared/notes/datasets5.md).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer

_HF_HOME = tempfile.mkdtemp(prefix="reddit-amazon-test-hf-")
os.environ["HF_HOME"] = _HF_HOME
os.environ["HF_DATASETS_CACHE"] = str(Path(_HF_HOME) / "datasets")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.pop("OPENAI_API_KEY", None)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
LAVIC_RELEASE = SHARED / "lavic_release"


@pytest.fixture(scope="session")
def lavic_release() -> Path:
    """The paper authors' release in ../shared (skips where absent, as in a user's clone)."""
    if not (LAVIC_RELEASE / "all_beauty" / "valid.jsonl").is_file():
        pytest.skip("../shared/lavic_release is not present")
    return LAVIC_RELEASE


@pytest.fixture
def threaded_httpserver():
    """A threaded loopback server: a deliberately slow answer must not hold up the others."""
    server = HTTPServer(threaded=True)
    server.start()
    yield server
    server.clear()
    server.stop()


@pytest.fixture
def user_home(tmp_path, monkeypatch) -> Path:
    """$HOME in one temporary folder and the current folder in another: where a `~/x` path lands tells them apart."""
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    return home
