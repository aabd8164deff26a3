"""The speed scripts in benchmarks/ run at their smallest sizes and print their ratios.

These are smoke runs, not timings (numbers on a shared machine mean nothing at these sizes): they keep the
scripts that produce the README's measurements from breaking silently when the code they measure changes.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from core_install import core_install_env, import_extra  # tests/: the extras hidden, as in a `.[test]` install

from reddit_amazon.sample import SAMPLE_DATASET

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
    versions = json.loads((tmp_path / "lavic.json").read_text())["versions"]
    assert versions["torch"] == import_extra("torch").__version__ and versions["transformers"].startswith("5.")


def test_lavic_gpu_cut_short_keeps_what_it_measured(tmp_path):
    """A device call has a time limit: H200 run 10 hit it during its CUDA-graph widths, and the JSON, written only
    after a whole stage, lacked the one it had measured (the number survived in the log alone). Each measurement is
    written as it is made."""
    import_extra("transformers")
    import_extra("peft")
    json_path = tmp_path / "lavic.json"
    process = subprocess.Popen([sys.executable, str(BENCHMARKS / "lavic_gpu.py"), "--tiny", "--steps", "1",
                                "--warmup", "1", "--seq-len", "136", "144", "--json", str(json_path)],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=tmp_path)
    try:
        for line in process.stdout:
            if line.startswith("136 tokens: research step"):
                process.kill()  # as `timeout` ends a call, before the run reaches the next length
                break
    finally:
        process.kill()
        process.wait(timeout=60)
    rows = json.loads(json_path.read_text())["cases"]
    assert [row["seq_len"] for row in rows] == [136] and rows[0]["research_step_no_ckpt_s"] > 0


@pytest.mark.parametrize("script", sorted(path.name for path in BENCHMARKS.glob("*.py")))
def test_help_shows_the_scripts_example_commands(script, tmp_path):
    """The README's Speed table points at these scripts; their --help printed the docstring's first line only,
    leaving out the example commands (and what is measured) written just below it."""
    if script in ("lavic_gpu.py", "lavic_prompt_lengths.py"):
        import_extra("torch")
    output = run_script(script, "--help", tmp_path=tmp_path)
    assert f"python benchmarks/{script}" in output


@pytest.mark.parametrize("script", ["lavic_gpu.py", "lavic_prompt_lengths.py"])
def test_lavic_scripts_without_the_lavic_extra_name_it_in_one_line(script, tmp_path):
    """On a core install the script ended in a ModuleNotFoundError traceback for torch, even for --help."""
    result = subprocess.run([sys.executable, str(BENCHMARKS / script), "--help"], capture_output=True,
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


def _script_module(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name.removesuffix(".py"), BENCHMARKS / name)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_llava_base(tmp_path_factory) -> Path:
    """The tiny LLaVA-NeXT of tests/tiny_llava.py, its word-level vocabulary made from the bundled sample."""
    import_extra("torch")
    import_extra("transformers")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from tiny_llava import save_tiny_llava

    from benchmark.prompts import render_recommendation_prompt
    from reddit_amazon.sample import load_sample
    from reddit_amazon.schema import DOMAINS

    texts = [render_recommendation_prompt("<submission>a</submission>", [("A", "b")], True), "[INST] [/INST]"]
    items = load_sample("items")
    for domain in DOMAINS:
        texts += [" ".join(items[domain]["item_id"]), *items[domain]["title"], *load_sample(domain, "train")["context"]]
    return save_tiny_llava(tmp_path_factory.mktemp("tiny-llava"), texts)


def test_lavic_prompt_lengths_are_those_of_the_sequences_finetune_trains_on(tiny_llava_base):
    """Each instance is counted as `lavic-ref finetune --domain D` builds it (its training set, the titles, the
    sequence with BOS, item tokens, target and EOS) before the cap and after it, through lavic_ref's own code."""
    from lavic_ref.cli import _recommendation_sets
    from lavic_ref.data import iter_domain_items
    from lavic_ref.model import load_processor
    from lavic_ref.prompts import ITEM_TOKENS
    from lavic_ref.sequences import recommendation_sequence
    from reddit_amazon.sample import SAMPLE_DATASET

    script = _script_module("lavic_prompt_lengths.py")
    tokenizer = load_processor(str(tiny_llava_base)).tokenizer
    args = script.argparse.Namespace(splits=["train"], candidates="sbert", instances="paper", seed=3,
                                     no_images=False, max_tokens=360)
    count = script.count_domain(script.load_tokenizer(str(tiny_llava_base)), SAMPLE_DATASET, "home", [], args)

    train_set, _ = _recommendation_sets(None, ("home",), "sbert", 3, "paper", "train")
    titles = {item.item_id: item.title for item in iter_domain_items(None, ["home"])}

    def sequence(ex, cap):
        return recommendation_sequence(tokenizer, ex.context, [(c, titles.get(c, "")) for c in ex.candidates],
                                       ex.target, with_images=True, max_tokens=cap).input_ids

    assert [(length.untruncated, length.trained) for length in count.lengths] == \
        [(len(sequence(ex, 10**6)), len(sequence(ex, 360))) for ex in train_set]
    assert any(length.untruncated > 360 == length.trained for length in count.lengths)  # the cap cut some
    assert any(length.untruncated == length.trained < 360 for length in count.lengths)
    item_token_ids = set(tokenizer.convert_tokens_to_ids(list(ITEM_TOKENS)))
    assert sum(token in item_token_ids for token in sequence(train_set[0], 10**6)) == 5 * 10  # 5 per candidate
    assert count.candidates == 10 * len(train_set) and count.untitled == 0
    assert {length.padded for length in count.lengths} == {384}


def test_lavic_prompt_lengths_epoch_interpolates_each_variant_against_its_research_step(tmp_path):
    """Research at each instance's trained length, ours with CUDA graphs at its padded width, linearly between the
    measured lengths; a length outside them is refused, naming the range."""
    import_extra("torch")
    script = _script_module("lavic_prompt_lengths.py")
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"cases": [
        {"seq_len": 128, "research_step_s": 3.0, "research_step_no_ckpt_s": 1.0, "cached_step_s": 1.5,
         "compiled_reduce_overhead_padded_len": 128, "compiled_reduce_overhead_step_no_ckpt_s": 0.1},
        {"seq_len": 1024, "research_step_s": 3.0, "research_step_no_ckpt_s": 2.0, "cached_step_s": 2.5,
         "compiled_reduce_overhead_padded_len": 1024, "compiled_reduce_overhead_step_no_ckpt_s": 0.8,
         "compiled_reduce_overhead_step_error": "ignored"},
    ]}))
    length = script.PromptLength
    lengths = {"home": [length(128, 128), length(576, 576)], "beauty": [length(3000, 1024)]}
    report = script.epoch_report(lengths, script.read_bench(bench))

    graphs = report["compiled_reduce_overhead_step_no_ckpt_s"]
    assert graphs["research"] == "research_step_no_ckpt_s" and graphs["ours_at_padded_width"]
    # research 1.0 + 1.5 + 2.0 at 128/576/1024; ours 0.1 + 0.5 (576 padded to 640) + 0.8
    assert graphs["epoch"]["overall"] == {"research_s": 4.5, "ours_s": 1.4, "ratio": round(4.5 / 1.4, 3)}
    assert graphs["epoch"]["home"] == {"research_s": 2.5, "ours_s": 0.6, "ratio": round(2.5 / 0.6, 3)}
    assert graphs["step_ratio_per_measured_length"] == {"128": 10.0, "1024": 2.5}
    eager = report["cached_step_s"]
    assert eager["research"] == "research_step_s" and not eager["ours_at_padded_width"]
    assert eager["epoch"]["overall"] == {"research_s": 9.0, "ours_s": 6.0, "ratio": 1.5}  # 1.5 + 2.0 + 2.5

    with pytest.raises(script.InputError, match="measured at 128-1024 tokens, the instances need 64-576"):
        script.epoch_report({"home": [length(64, 64), length(576, 576)]}, script.read_bench(bench))


def test_lavic_prompt_lengths_on_the_bundled_sample_with_a_bench_result(tiny_llava_base, tmp_path):
    import_extra("torch")
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"cases": [
        {"seq_len": length, "research_step_no_ckpt_s": 1.0, "compiled_reduce_overhead_padded_len": length,
         "compiled_reduce_overhead_step_no_ckpt_s": 0.25} for length in (128, 2048)]}))
    output = run_script("lavic_prompt_lengths.py", str(SAMPLE_DATASET), "--tokenizer", str(tiny_llava_base),
                        "--bench-json", str(bench), "--json", str(tmp_path / "lengths.json"), tmp_path=tmp_path)
    report = json.loads((tmp_path / "lengths.json").read_text())
    assert report["overall"]["records"] == 216  # training instances of the sample's train splits (docs/lavic.md)
    assert report["overall"]["untitled_candidate_slots"] == 0
    assert sum(report["overall"]["padded_widths"].values()) == 216
    assert report["epoch"]["compiled_reduce_overhead_step_no_ckpt_s"]["epoch"]["overall"]["ratio"] == 4.0
    assert "padded to multiples of 128" in output and "4.00x" in output


def test_lavic_prompt_lengths_on_the_authors_release_counts_every_gt_item(lavic_release, tiny_llava_base, tmp_path):
    """The release folder is imported first; it has titles for none of its candidates, so --title-pool fills them."""
    output = run_script("lavic_prompt_lengths.py", str(lavic_release), "--split", "validation", "--tokenizer",
                        str(tiny_llava_base), "--title-pool", str(lavic_release / "item2meta_valid.jsonl"),
                        "--json", str(tmp_path / "lengths.json"), tmp_path=tmp_path)
    report = json.loads((tmp_path / "lengths.json").read_text())
    gt_items = {domain: sum(len(json.loads(line)["gt_items"])
                            for line in (lavic_release / folder / "valid.jsonl").read_text().splitlines() if line)
                for folder, domain in (("all_beauty", "beauty"), ("amazon_fashion", "fashion"),
                                       ("amazon_home", "home"))}
    assert {domain: stats["records"] for domain, stats in report["domains"].items()} == gt_items
    assert report["overall"]["untitled_candidate_slots"] == report["overall"]["candidate_slots"]
    assert "100.0% of the candidate slots have no title in the dataset, each given a title from" in output


@pytest.mark.parametrize(("args", "message"), [
    (["missing-folder"], "Error: dataset missing-folder: no such folder"),
    ([str(SAMPLE_DATASET), "--tokenizer", "./no-such-tokenizer"],
     "Error: base model ./no-such-tokenizer: no such folder"),
    ([str(SAMPLE_DATASET), "--split", "dev", "--domain", "home", "--tokenizer", "TINY"],
     "Error: home has no 'dev' split (splits: train, validation, test)"),
])
def test_lavic_prompt_lengths_bad_input_is_one_line(args, message, tiny_llava_base, tmp_path):
    args = [str(tiny_llava_base) if arg == "TINY" else arg for arg in args]
    result = subprocess.run([sys.executable, str(BENCHMARKS / "lavic_prompt_lengths.py"), *args],
                            capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.splitlines()[-1] == message
