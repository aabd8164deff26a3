"""The speed scripts in benchmarks/ run at their smallest sizes and print their ratios.

These are smoke runs, not timings (numbers on a shared machine mean nothing at these sizes): they keep the
scripts that produce the README's measurements from breaking silently when the code they measure changes.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from core_install import core_install_env, import_extra  # tests/: the extras hidden, as in a `.[test]` install

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_script(name: str, *args: str, tmp_path: Path) -> str:
    result = subprocess.run([sys.executable, str(BENCHMARKS / name), *args], capture_output=True, text=True,
                            cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result.stdout


def test_scan_throughput(tmp_path):
    if shutil.which("zstd") is None:
        pytest.skip("the zstd command (the script's baseline) is not installed")
    output = run_script("scan_throughput.py", "--size-mb", "4", "--rounds", "1", "--dir", str(tmp_path / "dumps"),
                        tmp_path=tmp_path)
    assert "ratio scan(1 worker) / zstd" in output and "speed-up 2 workers / 1" in output


def test_harness_overhead(tmp_path):
    import_extra("sentence_transformers")
    output = run_script("harness_overhead.py", "--records", "200", "--items-per-domain", "30", "--repeats", "1",
                        "--sbert-items", "20", tmp_path=tmp_path)
    assert "harness (no CIs)" in output and "ratio" in output and "warm cache" in output


def test_catalog_parent_map(tmp_path):
    output = run_script("catalog_parent_map.py", "--rows", "2000", "--wanted", "100", tmp_path=tmp_path)
    assert "x the I/O floor" in output and "peak memory" in output


def test_relevance_throughput(tmp_path):
    output = run_script("relevance_throughput.py", "--calls", "10", "--latency-ms", "1", "--concurrency", "2",
                        "--dir", str(tmp_path), tmp_path=tmp_path)
    assert "plain openai" in output and "run_filter" in output and "x   (latency bound" in output


def test_relevance_stub_holds_every_concurrent_connection():
    """The stub's listen backlog admits the benchmark's 32 clients connecting at once before it accepts any: with
    the default 5, the connections past the backlog were reset, and the plain client's run failed."""
    import importlib.util
    import socket

    spec = importlib.util.spec_from_file_location("relevance_throughput", BENCHMARKS / "relevance_throughput.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    server = script.stub_server(0.0)  # bound and listening, accepting nothing yet
    clients = []
    try:
        for _ in range(64):  # twice the README's --llm-concurrency 32
            clients.append(socket.create_connection(server.server_address, timeout=2))  # past the backlog: timeout
            clients[-1].sendall(b"GET / HTTP/1.1\r\n")  # a connection the server has not queued gets a reset
    finally:
        for client in clients:
            client.close()
        server.server_close()


def test_stage_reuse(tmp_path):
    output = run_script("stage_reuse.py", "--conversations", "300", "--items", "50", "--shards", "2", "--rounds", "1",
                        "--dir", str(tmp_path / "work"), tmp_path=tmp_path)
    assert "ratio check / read" in output and "s/GiB" in output
    assert "(same size and mtime): found" in output


def test_lavic_gpu_at_tiny_size(tmp_path):
    import_extra("transformers")
    import_extra("peft")
    output = run_script("lavic_gpu.py", "--tiny", "--steps", "1", "--warmup", "1", "--seq-len", "136",
                        "--json", str(tmp_path / "lavic.json"), tmp_path=tmp_path)
    assert "step_speedup" in output and "inference_speedup" in output
    assert (tmp_path / "lavic.json").read_text().count('"seq_len": 136') == 1


@pytest.mark.parametrize("script", sorted(path.name for path in BENCHMARKS.glob("*.py")))
def test_help_shows_the_scripts_example_commands(script, tmp_path):
    """The README's Speed table points at these scripts; their --help printed the docstring's first line only,
    leaving out the example commands (and what is measured) written just below it."""
    if script == "lavic_gpu.py":
        import_extra("torch")
    output = run_script(script, "--help", tmp_path=tmp_path)
    assert f"python benchmarks/{script}" in output


def test_lavic_gpu_without_the_lavic_extra_names_it_in_one_line(tmp_path):
    """On a core install the script ended in a ModuleNotFoundError traceback for torch, even for --help."""
    result = subprocess.run([sys.executable, str(BENCHMARKS / "lavic_gpu.py"), "--help"], capture_output=True,
                            text=True, cwd=tmp_path, timeout=600, env=core_install_env())
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr == "Error: No module named 'torch' (pip install 'reddit-amazon[lavic]')\n"


def test_catalog_parent_map_refuses_more_wanted_asins_than_the_file_holds(tmp_path):
    """``--rows 3000`` alone (default ``--wanted 2000``, about 1,650 distinct ASINs) ended in a random.sample
    traceback ("Sample larger than population") instead of saying which option to change."""
    result = subprocess.run([sys.executable, str(BENCHMARKS / "catalog_parent_map.py"), "--rows", "3000"],
                            capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "--wanted 2000" in result.stderr and "--rows 3000" in result.stderr
