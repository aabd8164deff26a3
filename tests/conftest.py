"""Test-wide settings: no network, and private caches per test session.

`datasets` silently falls back to a cached copy of a same-named folder, so every session gets
its own HF_HOME (see shared/notes/datasets5.md). The embedding and chat caches
($REDDIT_AMAZON_CACHE, else ~/.cache/reddit-amazon) and the candidate image files
($REDDIT_AMAZON_IMAGE_DIR, else the temp dir) go to the same session folder, removed when the
session ends: a test run leaves nothing in the user's home or the shared temp dir but torch's
compile cache (torchinductor_<user> there; TORCHINDUCTOR_CACHE_DIR moves it), which is kept on
purpose: warm, the `--compile` test takes seconds instead of most of a minute.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer

if sys.platform == "win32":  # one line, not AttributeErrors (signal.SIGKILL, os.fork, os.killpg) in a dozen files
    pytest.exit("the test suite needs a POSIX system (it forks, kills process groups, sends SIGKILL): run it in WSL",
                returncode=1)

SESSION_DIR = Path(tempfile.mkdtemp(prefix="reddit-amazon-tests-"))
os.environ["HF_HOME"] = str(SESSION_DIR / "hf")
os.environ["HF_DATASETS_CACHE"] = str(SESSION_DIR / "hf" / "datasets")
os.environ["REDDIT_AMAZON_CACHE"] = str(SESSION_DIR / "reddit-amazon")
os.environ["REDDIT_AMAZON_IMAGE_DIR"] = str(SESSION_DIR / "images")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.pop("OPENAI_API_KEY", None)
# Started in the background by a non-interactive shell (`pytest &`, `nohup`), the suite inherits SIGINT ignored, as
# would every CLI it starts (the CLIs then rightly leave Ctrl-C ignored): the Ctrl-C tests need Python's default.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
LAVIC_RELEASE = SHARED / "lavic_release"


def pytest_unconfigure(config):
    shutil.rmtree(SESSION_DIR, ignore_errors=True)


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
def short_lock_wait(monkeypatch) -> None:
    """folder_lock waits 3 s for a folder's lock to free before refusing: 0.2 s where this process holds it."""
    from reddit_amazon import files

    monkeypatch.setattr(files, "BUSY_WAIT_S", 0.2)


@pytest.fixture
def user_home(tmp_path, monkeypatch) -> Path:
    """$HOME in one temporary folder and the current folder in another: where a `~/x` path lands tells them apart."""
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    return home


@pytest.fixture
def file_size_limit():
    """``file_size_limit(n)``: for the ``with`` block, this process cannot grow a file past ``n`` bytes, as on a
    full disk: the kernel fails the write (EFBIG, "File too large"; SIGXFSZ ignored so it does not kill the process)
    at the OS boundary, whatever library writes. Files already larger are left as they are. pytest's capture file is
    limited too: keep what the block prints well under ``n``."""
    import resource
    from contextlib import contextmanager

    @contextmanager
    def limited(size: int):
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
        try:
            yield
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
            signal.signal(signal.SIGXFSZ, handler)

    return limited
