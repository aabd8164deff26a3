"""`reddit-amazon build` end to end on the bundled sample inputs (offline), checked against the world."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import re
import shlex
import sqlite3
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest
from core_install import import_extra  # tests/
from click.testing import CliRunner
from werkzeug import Request, Response

from reddit_amazon.build import SAMPLE_INPUTS, SAMPLE_SALT, run_build, sample_options
from reddit_amazon.cli import cli
from reddit_amazon.dataset_folder import read_manifest
from reddit_amazon.sample import sample_dataset_path
from reddit_amazon.sample.world import make_world
from reddit_amazon.schema import DOMAINS, NUM_CANDIDATES, SPLITS

#: No candidates: the retrievers need the `retrieval` extra, which a core install (`.[test]`) lacks.
FAST = ["--retrievers", "none"]
#: The module's sample build (which skips without the extra) and the rebuilds compared with it.
BM25 = ["--retrievers", "bm25"]


def build(*args: str, env: dict | None = None):
    result = CliRunner().invoke(cli, ["build", *args], env=env, catch_exceptions=False)
    return result


def parquet_rows(folder: Path) -> dict[str, list[dict]]:
    return {p.relative_to(folder).as_posix(): pq.read_table(p).to_pylist()
            for p in sorted((folder / "data").rglob("*.parquet"))}


def parquet_digests(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((folder / "data").rglob("*.parquet"))}


# Every folder loaded with `datasets` gets its own name: offline, `datasets` may serve a cached copy
# of an earlier folder with the same name (shared/notes/datasets5.md).
def conversations(folder: Path) -> dict[str, list[dict]]:
    return {domain: {split: list(datasets.load_dataset(str(folder), domain, split=split)) for split in SPLITS}
            for domain in DOMAINS}


@pytest.fixture(scope="module")
def sample_build(tmp_path_factory):
    import_extra("bm25s")
    root = tmp_path_factory.mktemp("build")
    result = build("--out", str(root / "sample-ds"), "--workdir", str(root / "work"), *BM25)
    assert result.exit_code == 0, result.output
    return root, result.output


def test_sample_build_matches_the_world(sample_build):
    root, output = sample_build
    assert "Build funnel" in output and "relevance filter (Table 9)" in output
    folder = root / "sample-ds"
    records = conversations(folder)
    world = make_world(0)
    expected = {e.comment_id: e for e in world.expected_records()}
    built = {r["gt_comment_id"]: r for d in DOMAINS for s in SPLITS for r in records[d][s]}
    assert set(built) == set(expected)  # every recommendation kept, nothing else
    for comment_id, e in expected.items():
        r = built[comment_id]
        assert (r["domain"], r["thread_id"]) == (e.domain, e.thread_id)
        assert sorted(r["gt_items"]) == sorted(e.gt_items)
        assert sorted(r["context_items"]) == sorted(e.context_items)
        assert len(r["turns"]) == e.num_context_turns
        assert len(r["candidates_bm25"]) == NUM_CANDIDATES and r["candidates_openai_large"] == []
    for domain in DOMAINS:
        threads = [{r["thread_id"] for r in records[domain][s]} for s in SPLITS]
        assert not (threads[0] & threads[1] or threads[0] & threads[2] or threads[1] & threads[2])
        items = datasets.load_dataset(str(folder), "items", split=domain)
        ids = set(items["item_id"])
        assert {a for s in SPLITS for r in records[domain][s] for a in r["gt_items"]} <= ids
        assert all(set(r["candidates_bm25"]) <= ids for s in SPLITS for r in records[domain][s])


def test_manifest_records_the_build(sample_build):
    root, _ = sample_build
    manifest = json.loads((root / "sample-ds" / "manifest.json").read_text())
    build_record = manifest["build"]
    assert build_record["command"] == (f"reddit-amazon build --out {root / 'sample-ds'} --workdir {root / 'work'} "
                                       "--retrievers bm25")
    assert set(build_record) >= {"options", "inputs", "package_versions", "started_utc", "finished_utc", "seed"}
    by_name = {Path(i["path"]).name: i for i in build_record["inputs"]}
    comments = SAMPLE_INPUTS / "reddit" / "sample_comments.zst"
    assert by_name[comments.name] == {"path": "reddit_amazon/sample/inputs/reddit/sample_comments.zst",
                                      "bytes": comments.stat().st_size,
                                      "sha256": hashlib.sha256(comments.read_bytes()).hexdigest()}
    assert not any(Path(i["path"]).is_absolute() for i in build_record["inputs"])  # no install path in the output
    options_record = build_record["options"]
    assert options_record["inputs"] == ["reddit_amazon/sample/inputs/reddit"]
    assert options_record["meta"] == options_record["reviews"] == ["reddit_amazon/sample/inputs/amazon"]
    assert "meta_All_Beauty.jsonl" in by_name and "All_Beauty.jsonl.gz" in by_name
    stages = [stage["stage"] for stage in manifest["funnel"]]
    assert stages[-2:] == ["catalog: join with Amazon Reviews 2023", "relevance filter (Table 9)"]
    relevance = manifest["funnel"][-1]
    assert relevance["kept"] == sum(s["conversations"] for s in manifest["stats"].values())
    assert set(relevance["dropped"]) <= {"no", "uncertain", "unparseable", "rejected"}
    for domain in DOMAINS:
        stats, counts = manifest["stats"][domain], manifest["counts"][domain]
        assert stats["conversations"] == sum(counts.values()) > 0
        assert stats["items"] == manifest["counts"]["items"][domain]
    images = manifest["build_reports"]["images"]
    assert images["without_image"] == {"http_error": 2}  # the sample's pre-recorded failures: kept, with the gap
    assert sum(s["images"] for s in manifest["stats"].values()) == images["with_image"] == images["items"] - 2
    catalog = manifest["build_reports"]["catalog"]
    assert catalog["child_asins_mapped_to_parent"] > 0 and catalog["gt_links"]["asin_not_in_reviews_or_metadata"] > 0
    text = (root / "sample-ds" / "manifest.json").read_text()
    assert SAMPLE_SALT not in text and manifest["build"]["options"]["reddit"]["salt"] == "<redacted>"


def test_rebuild_is_byte_identical_and_resumes(sample_build, tmp_path):
    root, _ = sample_build
    manifest = run_build(sample_options(tmp_path / "ds", tmp_path / "work", retrievers=["bm25"]))  # the API
    assert manifest["build"]["command"] == f"reddit-amazon build --out {tmp_path / 'ds'} --workdir " \
                                           f"{tmp_path / 'work'} --retrievers bm25"
    assert parquet_digests(tmp_path / "ds") == parquet_digests(root / "sample-ds")
    resumed = build("--out", str(tmp_path / "ds"), "--workdir", str(tmp_path / "work"), *BM25)
    assert resumed.output.count("reusing the finished stage") == 3
    assert parquet_digests(tmp_path / "ds") == parquet_digests(root / "sample-ds")
    other_seed = build("--out", str(tmp_path / "seed1"), "--workdir", str(tmp_path / "work"), "--seed", "1", *BM25)
    assert other_seed.output.count("reusing the finished stage") == 3
    assert parquet_digests(tmp_path / "seed1") != parquet_digests(root / "sample-ds")


def test_a_resumed_build_does_not_read_the_conversations_of_reused_stages(sample_build, tmp_path, monkeypatch):
    """Each stage's conversations are read only when the next stage has to run: a resumed build whose catalog
    and relevance stages are reused reads only the relevance stage's (at 10^5 records, each read is seconds
    and hundreds of MB)."""
    import reddit_amazon.build as build_module

    root, _ = sample_build
    read = []
    read_conversations = build_module._read_conversations
    monkeypatch.setattr(build_module, "reddit_conversations", lambda workdir: read.append("reddit") or [])
    monkeypatch.setattr(build_module, "_read_conversations",
                        lambda path, **kw: read.append(path.parent.name) or read_conversations(path, **kw))
    resumed = build("--out", str(tmp_path / "ds"), "--workdir", str(root / "work"), *BM25)
    assert resumed.exit_code == 0, resumed.output
    assert resumed.output.count("reusing the finished stage") == 3
    assert read == ["relevance"]
    assert parquet_digests(tmp_path / "ds") == parquet_digests(root / "sample-ds")


def _key_paths(value, prefix: str = "") -> set[str]:
    if isinstance(value, dict):
        return {f"{prefix}{key}" for key in value}.union(
            *(_key_paths(inner, f"{prefix}{key}.") for key, inner in value.items()))
    if isinstance(value, list):
        return set().union(*(_key_paths(inner, f"{prefix}[].") for inner in value))
    return set()


def test_sbert_candidates_and_benchmark_run(sample_build, tmp_path):
    from benchmark.runner import RunConfig, run

    import_extra("sentence_transformers")  # the `retrieval` extra
    root, _ = sample_build
    result = build("--out", str(tmp_path / "sbert-ds"), "--workdir", str(root / "work"))  # default: sbert
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "sbert-ds" / "manifest.json").read_text())
    assert manifest["candidate_sets"] == ["sbert"]
    # The bundled sample dataset is exactly this default build (python -m reddit_amazon.sample.make_sample): the
    # same rows in the same shards always, and the same bytes (fingerprint) under the pyarrow and `datasets`
    # releases that wrote it (each shard records them), so a new release of either does not fail this test.
    bundled = sample_dataset_path()
    assert parquet_rows(tmp_path / "sbert-ds") == parquet_rows(bundled)
    recorded = read_manifest(bundled)["build"]["package_versions"]
    if all(recorded[name] == importlib.metadata.version(name) for name in ("pyarrow", "datasets")):
        assert manifest["fingerprint"] == read_manifest(bundled)["fingerprint"]
    # ... and its manifest records what a build records now (a field added to the funnel or the build reports
    # reaches the shipped sample too: regenerate it with make_sample).
    assert _key_paths(manifest) == _key_paths(read_manifest(bundled))
    recall = manifest["build_reports"]["candidates"]["recall"]["sbert"]
    assert all(0.2 < recall[d] <= 1.0 for d in DOMAINS)
    config = RunConfig(model="random", dataset=str(tmp_path / "sbert-ds"), candidates="sbert", bootstrap_samples=0)
    results = run(config, tmp_path / "run", progress=False)
    assert results["dataset"]["fingerprint"] == manifest["fingerprint"]
    assert results["counts"]["all"]["records"] == sum(manifest["counts"][d]["test"] for d in DOMAINS)
    assert results["items_missing_from_catalog"] == []


def test_dry_run_and_missing_key(sample_build, tmp_path):
    root, _ = sample_build
    base = ["--out", str(tmp_path / "ds"), "--workdir", str(tmp_path / "work"), *BM25]
    recorded = build(*base, "--dry-run")
    assert recorded.exit_code == 0, recorded.output
    assert "0 API calls" in recorded.output  # the sample's answers are pre-recorded for the paper's model
    flat = " ".join(recorded.output.split())  # rich wraps lines
    assert "All Beauty -> beauty" in flat and "Books -> dropped" in flat
    dry = build(*base, "--llm-model", "gpt-4o-mini", "--dry-run")
    calls = int(re.search(r"(\d+) API calls", dry.output).group(1))
    labels = json.loads((root / "work" / "relevance" / "report.json").read_text())["report"]["labels"]
    assert calls == sum(labels.values())  # every candidate conversation: nothing is cached for this model
    assert "tokens" in dry.output and not (tmp_path / "ds").exists()
    failed = build(*base, "--llm-model", "gpt-4o-mini", env={"OPENAI_API_KEY": ""})
    assert failed.exit_code == 1 and "OPENAI_API_KEY is not set" in failed.output
    assert not (tmp_path / "ds").exists()


def test_a_quiet_build_draws_no_progress_bar(tmp_path):
    """Only TQDM_DISABLE=1 hid the build's bars (Reddit scan, catalog files, candidates): `benchmark run` and
    `retrieve` had --quiet, `build` did not."""
    result = build("--out", str(tmp_path / "ds"), "--workdir", str(tmp_path / "work"), *FAST, "--quiet")
    assert result.exit_code == 0, result.output
    assert "1/5 reddit" in result.stderr and "Build funnel" in result.stderr  # what the build says is still said
    assert "%|" not in result.stderr and "\r" not in result.stderr, result.stderr


def test_mistyped_options_and_a_foreign_out_folder_fail_before_any_work(tmp_path):
    precious = tmp_path / "mydocs"
    precious.mkdir()
    (precious / "thesis.txt").write_text("years of work")
    template = tmp_path / "template.txt"
    template.write_text("Is it a recommendation?")  # no {conversation} slot
    cases = [(["--version", "1.0"], "not semver"), (["--retrievers", "bm2"], "Did you mean: bm25"),
             (["--out", str(precious)], "other content"), (["--out", str(tmp_path)], "holds"),
             (["--domain-map", "All Beauty=Beauty"], "domains are beauty, fashion, home"),
             (["--llm-template", str(template)], "has no {conversation} slot")]
    for args, message in cases:
        result = build("--out", str(tmp_path / "ds"), "--workdir", str(tmp_path / "work"), *FAST, *args)
        assert result.exit_code == 1 and message in " ".join(result.output.split()), result.output
        assert not (tmp_path / "work").exists()  # nothing ran
    assert (precious / "thesis.txt").read_text() == "years of work"
    for out, message in [("/", "must not be the filesystem root"), (".", "is the current folder")]:  # no default workdir to name
        result = build("--out", out, *FAST)
        assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output, result.output


def test_a_retriever_whose_extra_is_missing_fails_before_any_work(tmp_path, monkeypatch):
    """A core install (no extras) ran the Reddit, catalog, image and relevance stages, then failed at the
    candidates in a traceback: the missing package and its extra are named before stage 1 instead."""
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "bm25s" else real_find_spec(name, *args))
    result = build("--out", str(tmp_path / "ds"), "--workdir", str(tmp_path / "work"), "--retrievers", "bm25")
    assert result.exit_code == 1 and "the bm25 retriever needs bm25s: pip install 'reddit-amazon[retrieval]'" in (
        " ".join(result.output.split())), result.output
    assert not (tmp_path / "work").exists()
    dry = build("--out", str(tmp_path / "ds"), "--workdir", str(tmp_path / "work"), "--retrievers", "bm25",
                "--no-filter", "--no-images", "--dry-run")  # a dry run needs no retriever: it says what is missing
    assert dry.exit_code == 0 and "the bm25 retriever needs bm25s" in " ".join(dry.output.split()), dry.output


def test_a_stage_killed_after_writing_its_outputs_is_not_reused_by_the_next_run(tmp_path, monkeypatch):
    """The killed run wrote outputs for other options; the stamp of the run before it must not vouch for them."""
    import reddit_amazon.build as build_module

    quick = ["--no-filter", "--no-images", "--retrievers", "none", "--workdir", str(tmp_path / "work")]
    assert build("--out", str(tmp_path / "a"), *quick).exit_code == 0
    expected = parquet_digests(tmp_path / "a")
    write_json = build_module._write_json

    def killed_at_the_stamp(path, value):
        if path.name == build_module.STAGE_STAMP and path.parent.name == "catalog":
            raise KeyboardInterrupt  # as a kill between the outputs and the stamp
        write_json(path, value)

    monkeypatch.setattr(build_module, "_write_json", killed_at_the_stamp)
    killed = build("--out", str(tmp_path / "b"), *quick,
                   "--domain-map", "All Beauty=home;AMAZON FASHION=fashion;Amazon Home=home")
    assert killed.exit_code != 0 and (tmp_path / "work" / "catalog" / "conversations.jsonl").is_file()
    monkeypatch.setattr(build_module, "_write_json", write_json)
    result = build("--out", str(tmp_path / "c"), *quick)
    assert result.exit_code == 0 and "2/5 catalog: reusing" not in " ".join(result.output.split()), result.output
    assert parquet_digests(tmp_path / "c") == expected


def test_an_echoed_key_is_redacted_and_a_push_without_token_fails_first(httpserver, tmp_path, monkeypatch):
    httpserver.expect_request("/v1/chat/completions").respond_with_json(
        {"error": {"message": "Incorrect API key provided: sk-echoed-secret-123", "type": "invalid_request_error",
                   "code": "invalid_api_key"}}, status=401)
    result = build("--out", str(tmp_path / "ds"), "--workdir", str(tmp_path / "work"), "--llm-model", "m",
                   "--llm-base-url", httpserver.url_for("/v1"), "--no-images", *FAST,
                   env={"OPENAI_API_KEY": "sk-echoed-secret-123"})
    assert result.exit_code == 1 and "Incorrect API key" in result.output
    assert "sk-echoed-secret-123" not in result.output and "OPENAI_API_KEY redacted" in result.output
    monkeypatch.delenv("HF_TOKEN", raising=False)
    pushed = build("--out", str(tmp_path / "ds2"), "--workdir", str(tmp_path / "work2"), "--push-to-hub", "me/x", *FAST)
    assert pushed.exit_code == 1 and "needs a Hugging Face token" in pushed.output
    assert not (tmp_path / "work2").exists()


def answers_of(cache: Path, model: str) -> int:
    with sqlite3.connect(cache) as db:
        return db.execute("SELECT COUNT(*) FROM answers WHERE model = ?", (model,)).fetchone()[0]


class FlakyLLM:
    """Answers "yes" except: while ``down``, prompts whose hash is 0 mod 4 get HTTP 503, after the first
    ``answered_first`` requests (the prompts come in a random order: the first may be one of those)."""

    def __init__(self, answered_first: int = 0):
        self.down = True
        self.requests = 0
        self.answered_first = answered_first

    def __call__(self, request: Request) -> Response:
        self.requests += 1
        body = json.loads(request.data)
        assert request.headers["Authorization"] == "Bearer sk-test-key"
        prompt = body["messages"][0]["content"]
        hash_is_0_mod_4 = int(hashlib.sha256(prompt.encode()).hexdigest(), 16) % 4 == 0
        if self.down and self.requests > self.answered_first and hash_is_0_mod_4:
            return Response('{"error": {"message": "overloaded"}}', status=503, content_type="application/json")
        return Response(json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                                    "choices": [{"index": 0, "finish_reason": "stop",
                                                 "message": {"role": "assistant", "content": "Yes."}}]}),
                        content_type="application/json")


def test_llm_errors_stop_the_build_and_a_rerun_pays_only_the_rest(httpserver, tmp_path):
    llm = FlakyLLM()
    httpserver.expect_request("/v1/chat/completions", method="POST").respond_with_handler(llm)
    args = ["--out", str(tmp_path / "ds"), "--workdir", str(tmp_path / "work"), "--llm-model", "local-llm",
            "--llm-base-url", httpserver.url_for("/v1"), "--llm-max-attempts", "1", "--no-images", *FAST]
    first = build(*args, env={"OPENAI_API_KEY": "sk-test-key"})
    assert first.exit_code == 1 and "rerun to resume" in first.output and not (tmp_path / "ds").exists()
    answered = answers_of(tmp_path / "work" / "relevance-cache.sqlite", "local-llm")
    first_requests = llm.requests
    assert answered > 0 and first_requests > answered
    llm.down = False
    second = build(*args, env={"OPENAI_API_KEY": "sk-test-key"})
    assert second.exit_code == 0, second.output
    prompts = answers_of(tmp_path / "work" / "relevance-cache.sqlite", "local-llm")
    assert first_requests < prompts  # the first run stopped at the first failure, not after trying every prompt
    assert llm.requests - first_requests == prompts - answered  # the second run asked only what was missing
    manifest_text = (tmp_path / "ds" / "manifest.json").read_text()
    assert "sk-test-key" not in manifest_text and "sk-test-key" not in second.output
    manifest = json.loads(manifest_text)
    assert manifest["funnel"][-1]["dropped"] == {}  # every answer was "Yes."
    # The whole build's calls, not the last run's: each prompt was paid once, in the first run or the second.
    assert manifest["build_reports"]["relevance"]["calls_made"] == prompts
    assert manifest["build_reports"]["relevance"]["http_requests_sent"] == llm.requests  # the 503s included
    assert all(s["images"] == 0 for s in manifest["stats"].values())
    rebuilt = build(*args, "--out", str(tmp_path / "ds2"), env={"OPENAI_API_KEY": "sk-test-key"})
    assert rebuilt.exit_code == 0 and llm.requests == first_requests + prompts - answered  # the stage reused
    assert read_manifest(tmp_path / "ds2")["build_reports"] == manifest["build_reports"]


def test_the_calls_of_a_run_with_other_options_are_not_counted_in_the_build_that_finishes(httpserver, tmp_path):
    """The relevance stage counts its calls across the runs of the same inputs and options: a run of another
    model that failed half-way paid for answers this build does not use."""
    llm = FlakyLLM(answered_first=8)  # else a 503 to the very first call may stop the run before any answer
    httpserver.expect_request("/v1/chat/completions", method="POST").respond_with_handler(llm)
    args = ["--out", str(tmp_path / "ds"), "--workdir", str(tmp_path / "work"), "--llm-base-url",
            httpserver.url_for("/v1"), "--llm-max-attempts", "1", "--no-images", *FAST]
    first = build(*args, "--llm-model", "other-llm", env={"OPENAI_API_KEY": "sk-test-key"})
    assert first.exit_code == 1 and answers_of(tmp_path / "work" / "relevance-cache.sqlite", "other-llm") > 0
    llm.down, first_requests = False, llm.requests
    second = build(*args, "--llm-model", "local-llm", env={"OPENAI_API_KEY": "sk-test-key"})
    assert second.exit_code == 0, second.output
    report = read_manifest(tmp_path / "ds")["build_reports"]["relevance"]
    assert report["calls_made"] == answers_of(tmp_path / "work" / "relevance-cache.sqlite", "local-llm")
    assert report["http_requests_sent"] == llm.requests - first_requests


def test_real_inputs_with_damaged_metadata(tmp_path):
    """A non-sample build: bad metadata lines are skipped and named, a missing parent drops its records
    with the reason counted, and nothing else changes."""
    import shutil

    inputs = tmp_path / "inputs"
    shutil.copytree(SAMPLE_INPUTS, inputs)
    meta_file = inputs / "amazon" / "meta_Home_and_Kitchen.jsonl"
    lines = meta_file.read_text().splitlines()
    world = make_world(0)
    removed = sorted(e.gt_items[0] for e in world.expected_records() if e.domain == "home" and len(e.gt_items) == 1)[0]
    kept_lines = [line for line in lines if json.loads(line)["parent_asin"] != removed]
    assert len(kept_lines) == len(lines) - 1
    meta_file.write_text("\n".join(kept_lines[:3] + ['{"parent_asin": "B0TRUNCATED', *kept_lines[3:]]) + "\n")
    args = ["--inputs", str(inputs / "reddit"), "--meta", str(inputs / "amazon"), "--reviews", str(inputs / "amazon"),
            "--llm-cache", str(inputs / "relevance-cache.sqlite"), "--image-store", str(inputs / "images"),
            "--salt", SAMPLE_SALT, "--no-resolve-short-links", "--out", str(tmp_path / "damaged-ds"),
            "--workdir", str(tmp_path / "work"), *FAST]
    result = build(*args)
    assert result.exit_code == 0, result.output
    assert f"skippedbadline{meta_file}:4:notJSON" in "".join(result.output.split())  # rich wraps long paths
    manifest = json.loads((tmp_path / "damaged-ds" / "manifest.json").read_text())
    catalog = manifest["build_reports"]["catalog"]
    assert catalog["meta"]["bad_lines"] == 1 and catalog["gt_links"]["parent_asin_without_metadata"] > 0
    only_removed = [e for e in world.expected_records() if e.gt_items == [removed]]
    all_candidates = manifest["funnel"][2]["kept"]
    join = manifest["funnel"][3]
    assert join["dropped"]["no_gt_item_in_catalog"] >= len(only_removed) > 0
    assert join["kept"] + sum(join["dropped"].values()) == all_candidates
    expected = len(world.expected_records()) - len(only_removed)
    assert sum(s["conversations"] for s in manifest["stats"].values()) == expected
    records = [r for s in SPLITS for r in datasets.load_dataset(str(tmp_path / "damaged-ds"), "home", split=s)]
    assert all(removed not in r["gt_items"] for r in records)

    missing = build(*[a if a != str(inputs / "amazon") else str(tmp_path / "nope") for a in args])
    assert missing.exit_code == 1 and f"{tmp_path / 'nope'}: no such file or folder" in missing.output


def test_inputs_whose_names_are_not_utf8_are_read_and_recorded_printably(tmp_path):
    """A Linux file name is bytes: a Latin-1 folder name (or any non-ASCII one under a non-UTF-8 locale) reaches
    Python with lone surrogates, which orjson refused in the Reddit stage's file keys and the manifest's UTF-8 in
    the build record ("TypeError: str is not valid UTF-8"). The build reads such inputs and records them with
    their undecodable bytes as \\xNN; an --out that pyarrow cannot write is refused before any work."""
    import os
    import shutil

    inputs = tmp_path / os.fsdecode(b"inputs-caf\xe9")
    try:
        shutil.copytree(SAMPLE_INPUTS, inputs)
    except (OSError, UnicodeEncodeError):
        pytest.skip("this file system takes only UTF-8 names (macOS, Windows)")
    args = ["--inputs", str(inputs / "reddit"), "--meta", str(inputs / "amazon"), "--reviews", str(inputs / "amazon"),
            "--llm-cache", str(inputs / "relevance-cache.sqlite"), "--image-store", str(inputs / "images"),
            "--salt", SAMPLE_SALT, "--no-resolve-short-links", "--workdir", str(tmp_path / "work"), *FAST]
    refused = build(*args, "--out", str(tmp_path / os.fsdecode(b"ds-\xe9")))
    assert refused.exit_code == 1 and "ds-\\xe9: the path is not UTF-8" in refused.output
    assert not (tmp_path / "work").exists()

    result = build(*args, "--out", str(tmp_path / "ds"))
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text(encoding="utf-8"))
    printable = str(tmp_path / "inputs-caf\\xe9")
    assert f"--inputs '{printable}/reddit'" in manifest["build"]["command"]  # shlex quotes the backslash
    assert manifest["build"]["options"]["image_store"] == f"{printable}/images"
    recorded = [record["path"] for record in manifest["build"]["inputs"]]
    assert f"{printable}/reddit/sample_comments.zst" in recorded and all(path.startswith(printable) for path in recorded)
    assert sum(s["conversations"] for s in manifest["stats"].values()) == len(make_world(0).expected_records())

    from reddit_amazon.files import write_atomic

    write_atomic(inputs / os.fsdecode(b"caf\xe9.json"), b"{}")  # its hidden temporary's name is made from its own
    assert (inputs / os.fsdecode(b"caf\xe9.json")).read_bytes() == b"{}"


def test_openai_embedding_candidates_from_a_compatible_endpoint(sample_build, httpserver, tmp_path):
    """`--retrievers openai-emb` fills the paper's candidates_openai_large column through any endpoint."""
    root, _ = sample_build
    requests = []

    def embeddings(request: Request) -> Response:
        body = json.loads(request.data)
        requests.append(len(body["input"]))
        vectors = []
        for text in body["input"]:  # hashed bag of words: similar texts, similar vectors
            vector = [0.0] * 64
            for word in re.findall(r"[a-z]+", text.lower()):
                vector[int(hashlib.md5(word.encode()).hexdigest(), 16) % 64] += 1.0
            vectors.append(vector)
        data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
        return Response(json.dumps({"object": "list", "data": data, "model": body["model"],
                                    "usage": {"prompt_tokens": 1, "total_tokens": 1}}),
                        content_type="application/json")

    httpserver.expect_request("/v1/embeddings", method="POST").respond_with_handler(embeddings)
    result = build("--out", str(tmp_path / "openai-ds"), "--workdir", str(root / "work"),
                   "--retrievers", "bm25,openai-emb",
                   "--embedding-base-url", httpserver.url_for("/v1"), env={"OPENAI_API_KEY": "sk-emb-key"})
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "openai-ds" / "manifest.json").read_text())
    assert manifest["candidate_sets"] == ["bm25", "openai_large"] and sum(requests) > 0
    home = datasets.load_dataset(str(tmp_path / "openai-ds"), "home", split="test")
    assert all(len(ids) == NUM_CANDIDATES for ids in home["candidates_openai_large"])
    assert "sk-emb-key" not in (tmp_path / "openai-ds" / "manifest.json").read_text()


def test_a_dry_run_estimates_the_embedding_requests_the_build_sends(httpserver, tmp_path):
    """`--dry-run --retrievers openai-emb` once printed nothing about the embedding calls: now the texts not in the
    cache, their tokens (as the relevance estimate counts them) and the requests, without sending any."""
    sent: list[list[str]] = []

    def embeddings(request: Request) -> Response:
        body = json.loads(request.data)
        sent.append(body["input"])
        data = [{"object": "embedding", "index": i, "embedding": [1.0, float(len(text))]}
                for i, text in enumerate(body["input"])]
        return Response(json.dumps({"object": "list", "data": data, "model": body["model"]}),
                        content_type="application/json")

    httpserver.expect_request("/v1/embeddings", method="POST").respond_with_handler(embeddings)
    args = ["--out", str(tmp_path / "ds"), "--workdir", str(tmp_path / "work"), "--no-filter", "--no-images",
            "--retrievers", "openai-emb", "--embedding-base-url", httpserver.url_for("/v1")]
    plan = re.compile(r"openai-emb candidates \(text-embedding-3-large\): ([\d,]+) texts to embed .* ~([\d,]+) tokens "
                      r"in ([\d,]+) requests of up to 256 texts")

    def estimate(result) -> tuple[int, ...]:
        found = plan.search(" ".join(result.output.split()))
        assert result.exit_code == 0 and found, result.output
        return tuple(int(n.replace(",", "")) for n in found.groups())

    before = estimate(build(*args, "--dry-run"))
    assert sent == [] and not httpserver.log  # a dry run asks nothing
    assert build(*args).exit_code == 0
    texts = [text for batch in sent for text in batch]
    assert before == (len(texts), sum(map(len, texts)) // 4, len(sent)) and len(sent) > 1
    assert estimate(build(*args, "--dry-run")) == (0, 0, 0)  # all in the embedding cache now


def test_openai_embeddings_need_a_key_only_from_openai(tmp_path, monkeypatch):
    from reddit_amazon.build import BuildError, check_options, sample_options

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    local = sample_options(tmp_path / "ds", tmp_path / "work", retrievers=["openai-emb"],
                           embedding_base_url="http://127.0.0.1:9/v1")
    check_options(local)  # a local server takes any key, or none
    with pytest.raises(BuildError, match="needs OPENAI_API_KEY"):
        check_options(sample_options(tmp_path / "ds", tmp_path / "work", retrievers=["openai-emb"]))


def test_a_build_error_line_never_shows_a_key(tmp_path):
    """A BuildError's line goes through the same redaction as every other error line: a key pasted into the
    wrong place of --llm-base-url is quoted back by the URL check (as the port it took it for)."""
    key = "sk-live-QZ7xW2Kp9Rt4Vb8Hm3Nc"
    result = build("--out", str(tmp_path / "ds"), "--workdir", str(tmp_path / "work"), *FAST,
                   "--llm-base-url", f"https://gateway.invalid:{key}/v1", env={"OPENAI_API_KEY": key})
    assert result.exit_code == 1 and result.output.startswith("Error: --llm-base-url is not an endpoint URL")
    assert key not in result.output and "<OPENAI_API_KEY redacted>" in result.output


def test_build_errors_are_runtime_errors_for_callers_from_python_and_one_line_on_the_command_line(tmp_path):
    """run_build and sample_options are called from notebooks and scripts: what they refuse is a RuntimeError (as
    benchmark.runner's RunError is), not a click exception that only the command line knows how to show; the
    command line still prints it as the one line it was."""
    import click

    from reddit_amazon.build import BuildError, run_build, sample_options

    with pytest.raises(RuntimeError, match="not semver") as refused:
        run_build(sample_options(tmp_path / "ds", tmp_path / "work", version="1.0"), progress=False)
    assert isinstance(refused.value, BuildError) and not isinstance(refused.value, click.ClickException)
    with pytest.raises(RuntimeError, match="must not be the filesystem root"):
        sample_options(Path("/"))
    result = build("--out", str(tmp_path / "ds"), "--workdir", str(tmp_path / "work"), *FAST, "--version", "1.0")
    assert result.exit_code == 1 and result.output.startswith("Error: --version '1.0' is not semver"), result.output


def test_a_reddit_stage_run_on_its_own_is_not_taken_for_the_builds(sample_build, tmp_path):
    """`reddit-amazon reddit-stage` in a build's workdir (another salt) replaces the stage's outputs: the next
    build must make its own again (with its own salt: the same dataset as before)."""
    from reddit_amazon.pipeline import RedditStageOptions, run_reddit_stage

    root, _ = sample_build
    work = tmp_path / "work"
    assert build("--out", str(tmp_path / "a"), "--workdir", str(work), *BM25).exit_code == 0
    run_reddit_stage([SAMPLE_INPUTS / "reddit"], work, RedditStageOptions(salt="another salt", progress=False))
    again = build("--out", str(tmp_path / "b"), "--workdir", str(work), *BM25)
    assert again.exit_code == 0 and "1/5 reddit: candidate conversations" in again.output, again.output
    assert parquet_digests(tmp_path / "b") == parquet_digests(root / "sample-ds")


@pytest.mark.parametrize("parameter", ["api_key", "pwd", "passphrase"])  # pwd, passphrase: written as given before
def test_credentials_in_endpoint_urls_never_reach_the_manifest_or_card(sample_build, tmp_path, parameter):
    root, _ = sample_build
    url = f"http://proxyuser:hunter2-secret@127.0.0.1:9/v1/?{parameter}=sk-in-the-url"
    result = build("--out", str(tmp_path / "ds"), "--workdir", str(root / "work"), *BM25, "--llm-base-url", url)
    assert result.exit_code == 0, result.output  # the sample's answers count as this endpoint's: no call
    for name in ("manifest.json", "README.md"):
        text = (tmp_path / "ds" / name).read_text()
        assert "hunter2" not in text and "sk-in-the-url" not in text and "127.0.0.1:9/v1" in text, name
    manifest = read_manifest(tmp_path / "ds")
    assert manifest["build_reports"]["relevance"]["base_url"] == f"http://127.0.0.1:9/v1?{parameter}=%3Credacted%3E"


def test_secrets_in_an_endpoints_path_parameters_or_fragment_never_reach_the_outputs(httpserver, tmp_path):
    """``;api_key=`` in the base URL's path is sent (the server may need it) and ``#access_token=`` is not, but
    neither may be written down: the manifest's endpoint and command line, the card, the build's output."""
    llm = FlakyLLM()
    llm.down = False
    httpserver.expect_request(re.compile(r"/v1;api_key=sk-PATH-SECRET-11/chat/completions"),
                              method="POST").respond_with_handler(llm)
    base = httpserver.url_for("/v1;api_key=sk-PATH-SECRET-11") + "?api-version=1#access_token=FRAGMENT-SECRET-22"
    result = build("--out", str(tmp_path / "ds"), "--workdir", str(tmp_path / "work"), "--llm-model", "local-llm",
                   "--llm-base-url", base, "--no-images", *FAST, env={"OPENAI_API_KEY": "sk-test-key"})
    assert result.exit_code == 0, result.output
    assert llm.requests > 0  # the endpoint was really asked, at its path parameter
    written = [result.output] + [p.read_text() for p in (tmp_path / "ds").rglob("*") if p.suffix in (".json", ".md")]
    assert not any("PATH-SECRET" in text or "FRAGMENT-SECRET" in text for text in written)
    manifest = read_manifest(tmp_path / "ds")
    assert manifest["build_reports"]["relevance"]["base_url"] == \
        f"{httpserver.url_for('/v1')};api_key=<redacted>?api-version=1#access_token=<redacted>"


def test_the_recorded_command_uses_the_build_flags_of_reddit_options(tmp_path):
    from reddit_amazon.build import BuildOptions, command_line

    options = BuildOptions(inputs=["d/"], meta=["m/"], reviews=[], out=tmp_path / "o", workdir=tmp_path / "w",
                           reddit={"executor": "slurm", "slurm_partition": "cpu", "workers": 4,
                                   "short_link_endpoints": {"amzn.to": "http://127.0.0.1:9"}})
    command = command_line(options)
    assert "--executor slurm --partition cpu --workers 4" in command and "endpoints" not in command


def test_the_recorded_command_keeps_how_the_build_asked_the_endpoints_and_published(tmp_path):
    """Like --workers, the concurrency and attempts chosen for an endpoint's limits (and --private) are given
    again by the recorded command; left at their defaults, they are left out."""
    from reddit_amazon.build import BuildOptions, command_line

    def command(**settings) -> list[str]:
        options = BuildOptions(inputs=["d/"], meta=["m/"], reviews=[], out=tmp_path / "o", workdir=tmp_path / "w",
                               **settings)
        return shlex.split(command_line(options))

    chosen = command(llm_concurrency=1, llm_max_attempts=2, image_concurrency=3, push_to_hub="me/ds", private=True)
    assert chosen[chosen.index("--llm-concurrency") + 1] == "1"
    assert chosen[chosen.index("--llm-max-attempts") + 1] == "2"
    assert chosen[chosen.index("--image-concurrency") + 1] == "3"
    assert "--private" in chosen and chosen[chosen.index("--push-to-hub") + 1] == "me/ds"
    defaults = command()
    assert not {"--llm-concurrency", "--llm-max-attempts", "--image-concurrency", "--private"} & set(defaults)


def test_the_short_link_deadline_reaches_the_reddit_stage_and_is_recorded(tmp_path, monkeypatch):
    """`build --short-link-deadline` is `reddit-stage --short-link-deadline`: the stage gets it, the manifest and
    its command line record it, and another deadline (which can resolve other links) runs the stage again."""
    from reddit_amazon import pipeline

    deadlines = []
    run_stage = pipeline.run_reddit_stage_on_files

    def watched(files, workdir, options):
        deadlines.append(options.short_link_deadline_s)
        return run_stage(files, workdir, options)

    monkeypatch.setattr(pipeline, "run_reddit_stage_on_files", watched)
    args = ["--workdir", str(tmp_path / "work"), *FAST, "--no-images"]
    result = build("--out", str(tmp_path / "a"), *args, "--short-link-deadline", "7.5")
    assert result.exit_code == 0, result.output
    manifest = read_manifest(tmp_path / "a")
    assert deadlines == [7.5] and manifest["build"]["options"]["reddit"]["short_link_deadline_s"] == 7.5
    assert "--short-link-deadline 7.5" in manifest["build"]["command"]
    assert build("--out", str(tmp_path / "b"), *args, "--short-link-deadline", "7.5").exit_code == 0
    assert build("--out", str(tmp_path / "c"), *args, "--short-link-deadline", "30").exit_code == 0
    assert deadlines == [7.5, 30.0]  # the same deadline reused the stage, another ran it again
    refused = build("--out", str(tmp_path / "d"), *args, "--short-link-deadline", "0")
    assert refused.exit_code == 2 and "--short-link-deadline" in refused.output


def test_a_sample_build_into_a_shared_image_store_stays_offline(tmp_path):
    """A store another build uses has its own sources.json: the sample's images must still count as stored."""
    from reddit_amazon.build import _seed_sample_caches
    from reddit_amazon.images import ImageStore

    store = tmp_path / "shared-images"
    store.mkdir()
    (store / "sources.json").write_text(json.dumps({"B0OTHER001": "http://x/y.jpg"}))
    _seed_sample_caches(sample_options(tmp_path / "ds", tmp_path / "work", image_store=store))
    sources = json.loads((SAMPLE_INPUTS / "images" / "sources.json").read_text())
    stored = ImageStore(store)
    assert all(stored.has(asin, url) for asin, url in sources.items())
    assert stored.sources["B0OTHER001"] == "http://x/y.jpg"


def test_an_endpoint_url_that_is_not_one_fails_before_any_stage(tmp_path):
    for flag, url, message in [("--llm-base-url", "http://host:99999/v1", "Port out of range"),
                               ("--embedding-base-url", "localhost:8000", "expected http(s)://host")]:
        result = build("--out", str(tmp_path / "ds"), "--workdir", str(tmp_path / "work"), flag, url)
        assert result.exit_code == 1 and f"{flag} is not an endpoint URL" in result.output and message in result.output
        assert not (tmp_path / "work").exists()


def test_a_build_that_keeps_no_conversation_says_so():
    from rich.console import Console

    from reddit_amazon.build import print_summary

    stats = {d: {"conversations": 0, "turns": 0, "items": 0, "images": 0} for d in DOMAINS}
    manifest = {"funnel": [{"stage": "relevance filter (Table 9)", "kept": 0, "dropped": {"no": 3}}], "stats": stats,
                "counts": {d: {} for d in DOMAINS}, "build_reports": {"images": {}}, "version": "1.0.0",
                "fingerprint": "0" * 64}
    console = Console(record=True, width=200)
    print_summary(manifest, console)
    assert "no conversation was kept, so the dataset is empty" in console.export_text()
    # no conversation reached the catalog (the Reddit stage kept none): the domains' emptiness is not the catalog's
    manifest["build_reports"]["catalog"] = {"domain_map": {"All Beauty": "beauty"}, "main_categories": {},
                                            "wanted_asins": 0}
    print_summary(manifest, console := Console(record=True, width=200))
    assert "domain is empty" not in console.export_text()
    manifest["build_reports"]["catalog"]["wanted_asins"] = 3
    print_summary(manifest, console := Console(record=True, width=200))
    assert "the beauty domain is empty: no linked product has metadata in the --meta files" in console.export_text()


def test_a_retriever_named_twice_is_computed_and_recorded_once(tmp_path, monkeypatch):
    """`--retrievers sbert,sbert,bm25` once gave candidate_sets ["sbert", "sbert", "bm25"] and ran SBERT twice."""
    import reddit_amazon.build as build_module

    seen = []
    monkeypatch.setattr(build_module, "run_build", lambda options, **_: seen.append(options))
    result = build("--out", str(tmp_path / "ds"), "--retrievers", "sbert,sbert", "--retrievers", "bm25, sbert")
    assert result.exit_code == 0, result.output
    assert seen[0].retrievers == ["sbert", "bm25"]
    assert sample_options(tmp_path / "ds", retrievers=["bm25", "bm25"]).retrievers == ["bm25"]  # the API too


def test_more_workers_on_a_rerun_reuse_the_finished_stages(tmp_path):
    """--workers / --executor say how the Reddit stage runs, not what it makes: resuming with more workers once
    ran the Reddit stage again and re-streamed every review and metadata file (the catalog key held them)."""
    quick = ["--no-filter", "--no-images", "--retrievers", "none", "--workdir", str(tmp_path / "work")]
    assert build("--out", str(tmp_path / "a"), *quick).exit_code == 0
    again = build("--out", str(tmp_path / "b"), *quick, "--workers", "2", "--executor", "local")
    output = " ".join(again.output.split())
    assert again.exit_code == 0 and "1/5 reddit: reusing" in output and "2/5 catalog: reusing" in output, output
    assert parquet_digests(tmp_path / "a") == parquet_digests(tmp_path / "b")


def test_a_build_lists_the_dump_files_once(tmp_path, monkeypatch):
    """The build listed --inputs for the Reddit stage, the stage listed them again, and the assembly a third time
    for the manifest: seconds each on a folder of thousands of dumps."""
    from reddit_amazon import pipeline

    listed = []
    search_dump_files = pipeline.search_dump_files

    def counted(inputs, leave_out=None):
        listed.append(list(inputs))
        return search_dump_files(listed[-1], leave_out)

    monkeypatch.setattr(pipeline, "search_dump_files", counted)
    result = build("--out", str(tmp_path / "ds"), "--workdir", str(tmp_path / "work"), "--no-images", *FAST)
    assert result.exit_code == 0, result.output
    assert listed == [[str(SAMPLE_INPUTS / "reddit")]]
    manifest = read_manifest(tmp_path / "ds")
    assert [i["path"] for i in manifest["build"]["inputs"][:2]] == [
        "reddit_amazon/sample/inputs/reddit/sample_comments.zst", "reddit_amazon/sample/inputs/reddit/sample_submissions.zst"]


def test_a_build_leaves_out_another_builds_workdir_inside_its_input_folder(tmp_path):
    """`build --inputs dumps/` with an earlier build's workdir in dumps/ read its catalog and relevance .jsonl files
    as dumps (told by the reddit/.lock every build takes), and said nothing."""
    import shutil

    dumps = tmp_path / "dumps"
    shutil.copytree(SAMPLE_INPUTS / "reddit", dumps)
    old = dumps / "old-work"
    for name in ("reddit/.lock", "catalog/conversations.jsonl", "catalog/items.jsonl", "relevance/conversations.jsonl"):
        (old / name).parent.mkdir(parents=True, exist_ok=True)
        (old / name).write_text('{"example_id": "x"}\n')
    result = build("--inputs", str(dumps), "--meta", str(SAMPLE_INPUTS / "amazon"), "--reviews",
                   str(SAMPLE_INPUTS / "amazon"), "--salt", SAMPLE_SALT, "--no-resolve-short-links", "--out",
                   str(tmp_path / "ds"), "--workdir", str(tmp_path / "work"), "--dry-run", "--no-filter")
    assert result.exit_code == 0, result.output
    output = "".join(result.output.split())  # rich wraps long paths
    assert "candidateconversationsfrom2dumpfile(s)" in output, result.output
    assert "".join(f"warning: --inputs: left out 3 file(s) named like dumps in {old}: a reddit-amazon work folder "
                   "(it holds reddit/.lock), not dumps".split()) in output, result.output


def test_a_dry_run_counts_only_the_images_the_build_would_download(tmp_path):
    """The sample's two images recorded as permanent 404s are never fetched (its build downloads 0), yet the dry
    run once reported them as 2 images "not in the store yet"."""
    result = build("--out", str(tmp_path / "ds"), "--workdir", str(tmp_path / "work"), "--dry-run", "--no-filter")
    output = " ".join(result.output.split())
    assert result.exit_code == 0 and re.search(r"images: \d+ items joined, 0 to download", output), output
    assert not (tmp_path / "ds").exists()


def test_answers_of_an_earlier_release_for_a_local_endpoint_are_named_before_they_are_asked_again(tmp_path):
    """A cache from before answers were keyed by endpoint holds a local server's answers under OpenAI's key: an
    upgraded build asked that server every prompt again, saying nothing. The bundled sample's recorded cache is
    such a file (keys without an endpoint); docs/build.md's upgrade step keeps its answers for the endpoint."""
    import shutil

    from reddit_amazon.openai_endpoint import endpoint_key
    from reddit_amazon.relevance import AnswerCache

    cache = tmp_path / "old-cache.sqlite"
    shutil.copyfile(SAMPLE_INPUTS / "relevance-cache.sqlite", cache)
    url = "http://127.0.0.1:9/v1"  # nothing listens: a call would fail the build
    args = ["--inputs", str(SAMPLE_INPUTS / "reddit"), "--meta", str(SAMPLE_INPUTS / "amazon"), "--reviews",
            str(SAMPLE_INPUTS / "amazon"), "--salt", SAMPLE_SALT, "--no-resolve-short-links", "--no-images",
            "--llm-base-url", url, "--llm-cache", str(cache), "--out", str(tmp_path / "ds"),
            "--workdir", str(tmp_path / "work"), *FAST]
    dry = build(*args, "--dry-run")
    flat = " ".join(dry.output.split())
    calls = int(re.search(r"(\d+) API calls", flat).group(1))
    assert dry.exit_code == 0 and calls > 0, dry.output
    assert f"{calls} of the {calls} prompt(s) to ask {url} are answered in {cache} under OpenAI's endpoint" in flat
    assert "docs/build.md (Upgrading)" in flat
    failed = build(*args, "--llm-max-attempts", "1")  # said before the first call, which finds no server
    assert failed.exit_code == 1 and "under OpenAI's endpoint" in failed.output, failed.output
    with AnswerCache(cache) as answers:  # the upgrade step of docs/build.md
        assert answers.import_answers(cache, endpoint_key(url)) == calls
    again = build(*args, "--dry-run")
    assert "0 API calls" in again.output and "under OpenAI's endpoint" not in again.output
    built = build(*args)
    assert built.exit_code == 0, built.output
    assert read_manifest(tmp_path / "ds")["build_reports"]["relevance"]["calls_made"] == 0


def test_a_dataset_folder_is_refused_as_workdir(tmp_path):
    """`--workdir` naming an earlier dataset once filled it with reddit/, catalog/, images/ and the answer cache:
    work files inside a publishable folder, which a later `--out` of it then refused as 'not a dataset'."""
    import shutil

    dataset = tmp_path / "released"
    shutil.copytree(sample_dataset_path(), dataset)
    before = sorted(p.name for p in dataset.iterdir())
    result = build("--out", str(tmp_path / "ds"), "--workdir", str(dataset), "--dry-run", "--no-filter")
    assert result.exit_code == 1 and "is a reddit-amazon dataset folder" in result.output, result.output
    assert sorted(p.name for p in dataset.iterdir()) == before
    # a folder inside one too, as reddit-stage refuses it: the build wrote its work there and the folder still
    # passed `verify`, its shards unchanged but work files (Reddit excerpts, caches) published with it
    result = build("--out", str(tmp_path / "ds"), "--workdir", str(dataset / "work"), "--no-filter",
                   "--retrievers", "none")
    assert result.exit_code == 1 and f"is inside {dataset}, which is a reddit-amazon dataset folder" in result.output
    assert sorted(p.name for p in dataset.iterdir()) == before


def test_a_quoted_tilde_in_out_is_the_home_folder_for_every_stage_and_for_verify(user_home):
    """pyarrow and `datasets` expand `~`, click and pathlib do not: one command must not split over two folders."""
    result = build("--out=~/tilde-build", *FAST)
    assert result.exit_code == 0, result.output
    assert (user_home / "tilde-build" / "manifest.json").is_file() and (user_home / "tilde-build.work").is_dir()
    assert not any(Path.cwd().iterdir())
    verified = CliRunner().invoke(cli, ["verify", "~/tilde-build"])
    assert verified.exit_code == 0 and "matches its manifest" in verified.output, verified.output
    assert str(user_home) not in CliRunner().invoke(cli, ["build", "--help"]).output  # the defaults as written


@pytest.mark.parametrize("how_it_runs", [
    {"progress": False},
    {"slurm_time": "2:00:00", "slurm_mem_per_cpu_gb": 8, "slurm_venv": "/opt/venv", "poll_interval_s": 5.0}],
    ids=["bars-off", "slurm-settings"])
def test_options_of_how_the_reddit_stage_runs_reuse_the_finished_stages(tmp_path, how_it_runs):
    """`reddit={"progress": False}` (the Python way to silence the Reddit stage's bars) was part of the stage key:
    the next build of the same workdir without it ran the Reddit stage, the catalog and the filter again. So were
    the slurm job's time, memory, venv and the polling interval, which change nothing the stage writes."""
    import io

    from rich.console import Console

    quick = {"no_filter": True, "images": False, "retrievers": []}
    run_build(sample_options(tmp_path / "a", tmp_path / "work", reddit=how_it_runs, **quick),
              console=Console(file=io.StringIO()))
    log = io.StringIO()
    run_build(sample_options(tmp_path / "b", tmp_path / "work", **quick), console=Console(file=log, width=200))
    output = " ".join(log.getvalue().split())
    assert "1/5 reddit: reusing" in output and "2/5 catalog: reusing" in output, output


def test_credentials_in_short_link_endpoints_never_reach_the_outputs_nor_the_stage_key(tmp_path):
    """``reddit={"short_link_endpoints": ...}`` (a proxy for amzn.to, set from Python) was written to the manifest
    and the card as given, its ``user:password@`` and ``?token=`` included, and keyed the Reddit stage by its
    secrets: a rotated proxy password redid the Reddit stage and every stage after it."""
    import io

    from rich.console import Console

    def options(out: str, password: str, token: str):
        endpoint = f"https://proxyuser:{password}@proxy.example/amzn?token={token}&region=eu"
        return sample_options(tmp_path / out, tmp_path / "work", no_filter=True, images=False, retrievers=[],
                              reddit={"short_link_endpoints": {"amzn.to": endpoint}})

    run_build(options("a", "OLD-proxy-pw-1", "OLD-TOKEN-22"), console=Console(file=io.StringIO()))
    for name in ("manifest.json", "README.md"):
        text = (tmp_path / "a" / name).read_text()
        assert "OLD-proxy-pw-1" not in text and "OLD-TOKEN-22" not in text, name
        assert "proxy.example/amzn" in text and "region=eu" in text, name
    recorded = read_manifest(tmp_path / "a")["build"]["options"]["reddit"]["short_link_endpoints"]
    assert recorded == {"amzn.to": "https://proxy.example/amzn?token=%3Credacted%3E&region=eu"}
    log = io.StringIO()
    run_build(options("b", "NEW-proxy-pw-3", "NEW-TOKEN-44"), console=Console(file=log, width=200))
    output = " ".join(log.getvalue().split())
    assert "1/5 reddit: reusing" in output and "2/5 catalog: reusing" in output, output


def test_run_build_with_progress_off_draws_no_bar(tmp_path, capfd, monkeypatch):
    """From Python the only switch was TQDM_DISABLE: `reddit={"progress": False}` left the catalog, relevance,
    images and candidates bars on, with no argument of `run_build` to turn them off."""
    import io

    from rich.console import Console

    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    capfd.readouterr()
    run_build(sample_options(tmp_path / "ds", tmp_path / "work", retrievers=[]),
              console=Console(file=io.StringIO()), progress=False)
    captured = capfd.readouterr()
    assert "%|" not in captured.err and "it/s" not in captured.err, captured.err[-2000:]
    assert (tmp_path / "ds" / "manifest.json").is_file()


def _sample_inputs_with_an_image_at(url: str, tmp_path: Path) -> tuple[list[str], str]:
    """The build arguments of a copy of the sample inputs in which a beauty item whose image the store holds has its
    main image at ``url`` instead (out: ``tmp_path / "ds"``), and that item's parent_asin."""
    import shutil

    inputs = tmp_path / "inputs"
    shutil.copytree(SAMPLE_INPUTS, inputs)
    stored = json.loads((inputs / "images" / "sources.json").read_text())
    meta_file = inputs / "amazon" / "meta_All_Beauty.jsonl"
    lines = [json.loads(line) for line in meta_file.read_text().splitlines()]
    moved = next(line for line in lines if line["parent_asin"] in stored)
    moved["images"][0]["hi_res"] = url
    meta_file.write_text("".join(json.dumps(line) + "\n" for line in lines))
    args = ["--inputs", str(inputs / "reddit"), "--meta", str(inputs / "amazon"), "--reviews", str(inputs / "amazon"),
            "--llm-cache", str(inputs / "relevance-cache.sqlite"), "--image-store", str(inputs / "images"),
            "--salt", SAMPLE_SALT, "--no-resolve-short-links", "--out", str(tmp_path / "ds"),
            "--workdir", str(tmp_path / "work"), *FAST]
    return args, moved["parent_asin"]


def _beauty_item(folder: Path, item_id: str) -> dict:
    return next(row for row in datasets.load_dataset(str(folder), "items", split="beauty") if row["item_id"] == item_id)


def test_an_image_url_at_a_private_address_is_refused_unless_allowed(tmp_path, threaded_httpserver):
    """A metadata file pointing an item's image at the build machine's own network (here loopback; on a cloud VM
    169.254.169.254 alike): the item is kept without its image, counted as private_host, nothing else changes;
    --allow-private-image-hosts fetches it and is recorded."""
    import io

    from PIL import Image

    url = threaded_httpserver.url_for("/private.jpg").replace("localhost", "127.0.0.1")
    args, moved = _sample_inputs_with_an_image_at(url, tmp_path)
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (0, 200, 0)).save(buffer, format="JPEG")
    threaded_httpserver.expect_request("/private.jpg").respond_with_data(buffer.getvalue(), content_type="image/jpeg")

    def item(folder: Path) -> dict:
        return _beauty_item(folder, moved)

    refused = build(*args)
    assert refused.exit_code == 0, refused.output
    assert not threaded_httpserver.log
    manifest = read_manifest(tmp_path / "ds")
    assert manifest["build_reports"]["images"]["without_image"] == {"http_error": 2, "private_host": 1}
    assert "private_host" in refused.output
    assert sum(s["conversations"] for s in manifest["stats"].values()) == len(make_world(0).expected_records())
    row = item(tmp_path / "ds")
    assert row["image"] is None and row["image_error"].startswith("private_host: 127.0.0.1 is not at a public address")
    assert manifest["build"]["options"]["allow_private_image_hosts"] is False

    allowed = build(*args, "--out", str(tmp_path / "allowed-ds"), "--allow-private-image-hosts")
    assert allowed.exit_code == 0, allowed.output
    manifest = read_manifest(tmp_path / "allowed-ds")
    assert manifest["build_reports"]["images"]["without_image"] == {"http_error": 2}
    assert item(tmp_path / "allowed-ds")["image"] is not None and len(threaded_httpserver.log) == 1
    assert manifest["build"]["options"]["allow_private_image_hosts"] is True
    assert " --allow-private-image-hosts" in manifest["build"]["command"]


def test_a_signed_image_urls_signature_stays_in_its_image_urls_only(tmp_path, capfd):
    """An image host refusing the connection: requests' error quotes the signed URL, whose signature must reach no
    image_error, card, manifest, build output nor the image store's failure record; the item's image_urls are the
    metadata's, kept as they are. The other items' images and the counts are the sample's."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed once the block ends: nothing listens there
    signature = "Zq81xSIGNATUREvalue0123"
    url = (f"http://127.0.0.1:{port}/image.jpg?X-Amz-Credential=AKIA{signature}&X-Amz-Signature={signature}"
           f"&Policy=P{signature}&Signature={signature}&Key-Pair-Id=K{signature}")
    args, asin = _sample_inputs_with_an_image_at(url, tmp_path)
    result = build(*args, "--allow-private-image-hosts")
    assert result.exit_code == 0, result.output
    row = _beauty_item(tmp_path / "ds", asin)
    assert row["image_urls"][0] == url and row["image"] is None
    assert row["image_error"].startswith("download_failed: ConnectionError"), row["image_error"]
    assert "/image.jpg?X-Amz-Credential=<redacted>&X-Amz-Signature=<redacted>" in row["image_error"]
    assert read_manifest(tmp_path / "ds")["build_reports"]["images"]["without_image"] == {"download_failed": 1,
                                                                                         "http_error": 2}
    items = tmp_path / "ds" / "data" / "items"
    leaks = [path for path in (tmp_path / "ds").rglob("*")
             if path.is_file() and path.parent != items and signature.encode() in path.read_bytes()]
    failure = json.loads((tmp_path / "inputs" / "images" / "failures.json").read_text())[asin]
    assert failure["url"] == url and signature not in failure["error"]
    assert not leaks and signature not in result.output and signature not in "".join(capfd.readouterr())


def test_the_salt_can_come_from_the_environment_as_for_reddit_stage(tmp_path):
    """`reddit-stage` read REDDIT_AMAZON_SALT and `build` did not: a build given its salt in the environment (kept out
    of the process list) drew a random one and pseudonymised every author differently."""
    args = ["--inputs", str(SAMPLE_INPUTS / "reddit"), "--meta", str(SAMPLE_INPUTS / "amazon"), "--reviews",
            str(SAMPLE_INPUTS / "amazon"), "--no-resolve-short-links", "--no-images", "--no-filter",
            "--out", str(tmp_path / "ds"), "--workdir", str(tmp_path / "work"), *FAST]
    result = build(*args, env={"REDDIT_AMAZON_SALT": "salt from the environment"})
    assert result.exit_code == 0, result.output
    assert [path.read_text() for path in (tmp_path / "work").rglob("salt")] == ["salt from the environment"]
    assert "salt from the environment" not in (tmp_path / "ds" / "manifest.json").read_text()


#: Ways a work file the build wrote itself is found damaged (a full disk, a crash, an edit by hand).
DAMAGES = {"empty": lambda data: b"", "truncated": lambda data: data[:len(data) // 2],
           "a list": lambda data: b"[1, 2]\n", "a number": lambda data: b"7\n",
           "binary garbage": lambda data: bytes(range(255, -1, -1))}


@pytest.fixture(scope="module")
def quick_workdir(tmp_path_factory):
    """A finished build without filter, images or candidates: its workdir and its dataset's Parquet digests."""
    root = tmp_path_factory.mktemp("quick")
    result = build("--out", str(root / "ds"), "--workdir", str(root / "work"), "--no-filter", "--no-images", *FAST)
    assert result.exit_code == 0, result.output
    return root / "work", parquet_digests(root / "ds")


def _rebuild_with_damaged(quick_workdir, tmp_path: Path, name: str, damage: str, damages: dict = DAMAGES):
    import shutil

    finished, _ = quick_workdir
    work = tmp_path / "work"
    shutil.copytree(finished, work)
    (work / name).write_bytes(damages[damage]((work / name).read_bytes()))
    return work, build("--out", str(tmp_path / "ds"), "--workdir", str(work), "--no-filter", "--no-images", *FAST)


@pytest.mark.parametrize("damage", DAMAGES)
@pytest.mark.parametrize("name", ["input-hashes.json", "catalog/stage.json", "reddit/stage.json"])
def test_a_damaged_cache_or_stage_stamp_is_redone(quick_workdir, tmp_path, name, damage):
    work, result = _rebuild_with_damaged(quick_workdir, tmp_path, name, damage)
    assert result.exit_code == 0, result.output
    assert parquet_digests(tmp_path / "ds") == quick_workdir[1]
    assert isinstance(json.loads((work / name).read_text()), dict)  # written anew


def _cut_at_a_line_end(data: bytes) -> bytes:
    lines = data.splitlines(keepends=True)
    return b"".join(lines[:len(lines) // 2])


def _lines_reversed(data: bytes) -> bytes:
    """The same bytes in another order: a file of the same size."""
    return b"".join(reversed(data.splitlines(keepends=True)))


#: Ways a finished stage's output is found damaged: besides DAMAGES, what still reads as valid JSON Lines (fewer
#: rows, or the rows in another order) and only the stage stamp's record of the outputs tells.
OUTPUT_DAMAGES = {**DAMAGES, "cut at a line's end": _cut_at_a_line_end, "lines reversed": _lines_reversed}


@pytest.mark.parametrize("damage", OUTPUT_DAMAGES)
@pytest.mark.parametrize("name", ["catalog/report.json", "reddit/funnel.json", "catalog/items.jsonl",
                                  "catalog/conversations.jsonl", "reddit/conversations/part-00000.jsonl"])
def test_a_damaged_stage_output_is_one_error_line_naming_it_and_how_to_redo_the_stage(quick_workdir, tmp_path,
                                                                                      name, damage):
    """An emptied JSONL output, or one cut at a line's end (a full disk), read as fewer rows: the reused stage
    silently made a smaller dataset."""
    work, result = _rebuild_with_damaged(quick_workdir, tmp_path, name, damage, OUTPUT_DAMAGES)
    stamp = work / name.split("/")[0] / "stage.json"
    assert result.exit_code == 1
    error = result.output.strip().splitlines()[-1]
    assert error.startswith(f"Error: DamagedFileError: {work / name}") and f"delete {stamp} " in error, result.output
    stamp.unlink()  # as the error says
    rerun = build("--out", str(tmp_path / "ds"), "--workdir", str(work), "--no-filter", "--no-images", *FAST)
    assert rerun.exit_code == 0, rerun.output
    assert parquet_digests(tmp_path / "ds") == quick_workdir[1]


@pytest.mark.parametrize("change", ["removed", "added"])
def test_a_conversation_shard_removed_or_added_after_the_reddit_stage_is_named(quick_workdir, tmp_path, change):
    """The Reddit stage's shards are listed from its folder: one gone, or one more, changed the conversations."""
    import shutil

    finished, _ = quick_workdir
    work = tmp_path / "work"
    shutil.copytree(finished, work)
    shard = work / "reddit" / "conversations" / "part-00000.jsonl"
    if change == "removed":
        shard.unlink()
    else:
        shard = shutil.copyfile(shard, shard.with_name("part-09999.jsonl"))
    result = build("--out", str(tmp_path / "ds"), "--workdir", str(work), "--no-filter", "--no-images", *FAST)
    assert result.exit_code == 1
    error = result.output.strip().splitlines()[-1]
    assert error.startswith(f"Error: DamagedFileError: {shard}: damaged") and \
        f"delete {work / 'reddit' / 'stage.json'} " in error, result.output


def test_relevance_conversations_cut_at_a_line_end_are_named_and_redone_as_the_error_says(tmp_path):
    quick = ["--out", str(tmp_path / "ds"), "--workdir", str(tmp_path / "work"), "--no-images", *FAST]
    assert build(*quick).exit_code == 0
    expected = parquet_digests(tmp_path / "ds")
    kept = tmp_path / "work" / "relevance" / "conversations.jsonl"
    kept.write_bytes(_cut_at_a_line_end(kept.read_bytes()))
    result = build(*quick)
    stamp = kept.with_name("stage.json")
    assert result.exit_code == 1
    error = result.output.strip().splitlines()[-1]
    assert error.startswith(f"Error: DamagedFileError: {kept}: damaged") and f"delete {stamp} " in error, result.output
    stamp.unlink()  # as the error says
    rerun = build(*quick)
    assert rerun.exit_code == 0 and "3/5 relevance: reusing" not in " ".join(rerun.output.split()), rerun.output
    assert parquet_digests(tmp_path / "ds") == expected


def test_a_reddit_stage_run_on_its_own_while_a_build_reads_its_shards_is_refused(quick_workdir, tmp_path,
                                                                                  monkeypatch, short_lock_wait):
    """A build checks the Reddit stage's shards against its stamp, then the catalog stage reads them: a
    `reddit-amazon reddit-stage` on the same workdir in between (another salt) replaced them, and the dataset was
    made from other shards than the sha256 its stage keys record. It is refused as busy, and the build is not
    touched."""
    import shutil

    from reddit_amazon import build as build_module
    from reddit_amazon.files import FolderBusyError
    from reddit_amazon.pipeline import RedditStageOptions, run_reddit_stage

    finished, digests = quick_workdir
    work = tmp_path / "work"
    shutil.copytree(finished, work)
    (work / "catalog" / "stage.json").unlink()  # the catalog stage reads the reused Reddit shards again
    refusals = []
    catalog_stage = build_module.catalog_stage

    def standalone_stage_first(options, upstream, console):
        try:
            run_reddit_stage([SAMPLE_INPUTS / "reddit"], work, RedditStageOptions(salt="another salt", progress=False))
        except FolderBusyError as error:
            refusals.append(str(error))
        return catalog_stage(options, upstream, console)

    monkeypatch.setattr(build_module, "catalog_stage", standalone_stage_first)
    result = build("--out", str(tmp_path / "ds"), "--workdir", str(work), "--no-filter", "--no-images", *FAST)
    assert result.exit_code == 0 and "1/5 reddit: reusing the finished stage" in result.output, result.output
    assert refusals == [f"another Reddit stage or build is running in this folder (it holds "
                        f"{work / 'reddit' / '.lock'}); wait for it to end or choose another folder: {work / 'reddit'}"]
    assert parquet_digests(tmp_path / "ds") == digests
    again = build("--out", str(tmp_path / "again"), "--workdir", str(work), "--no-filter", "--no-images", *FAST)
    assert "1/5 reddit: reusing the finished stage" in again.output and "2/5 catalog: reusing" in again.output


def test_a_build_started_while_a_reddit_stage_runs_on_its_own_is_refused(quick_workdir, tmp_path, short_lock_wait):
    """A `reddit-amazon reddit-stage` holding the workdir's `reddit/.lock` may not yet have removed the stamp of
    the outputs it is about to replace: a build starting then reused them, and read them while they were being
    replaced. It stops with the busy error instead."""
    import shutil

    from reddit_amazon.files import FolderBusyError, folder_lock

    finished, _ = quick_workdir
    work = tmp_path / "work"
    shutil.copytree(finished, work)
    with folder_lock(work / "reddit", "Reddit stage"):  # the standalone run
        with pytest.raises(FolderBusyError, match=f"another Reddit stage or build is running.*{work / 'reddit'}"):
            run_build(sample_options(tmp_path / "ds", work, retrievers=[], no_filter=True, images=False))
    assert not (tmp_path / "ds").exists()


def test_temporary_files_of_a_run_killed_mid_write_are_removed_by_the_next(tmp_path):
    """A build killed with kill -9 while writing a work file left its hidden temporary copy (host-and-pid name) in the
    workdir for good: the catalog stage's conversations are as large as the candidate set. The next build removes
    them in the build's folders and the Reddit stage's, even where it reuses the stage; a write still running
    (another process) is kept."""
    import subprocess
    import sys

    from reddit_amazon.files import atomic_path

    work = tmp_path / "work"
    quick = ["--no-filter", "--no-images", "--retrievers", "none", "--workdir", str(work)]
    assert build("--out", str(tmp_path / "a"), *quick).exit_code == 0
    targets = [work / "input-hashes.json", work / "catalog" / "conversations.jsonl", work / "reddit" / "funnel.json",
               next((work / "reddit" / "work").glob("scan-*/*.json")), work / "relevance" / "report.json"]
    killed_mid_write = ("import os, signal, sys; from contextlib import ExitStack; from pathlib import Path\n"
                        "from reddit_amazon.files import atomic_path\n"
                        "with ExitStack() as stack:\n"
                        "    for name in sys.argv[1:]:\n"
                        "        stack.enter_context(atomic_path(Path(name))).write_bytes(b'half a file')\n"
                        "    os.kill(os.getpid(), signal.SIGKILL)\n")
    killed = subprocess.Popen([sys.executable, "-c", killed_mid_write, *map(str, targets)])
    assert killed.wait() == -9
    left = [path for path in work.rglob(f"*-{killed.pid}-*") if ".tmp-" in path.name]
    assert len(left) == len(targets)
    with atomic_path(work / "catalog" / "items.jsonl") as writing:  # a write still running
        writing.write_bytes(b"")
        result = build("--out", str(tmp_path / "b"), *quick)
        assert result.exit_code == 0 and "2/5 catalog: reusing" in " ".join(result.output.split()), result.output
        assert writing.exists()
    assert not [path for path in left if path.exists()]
    assert parquet_digests(tmp_path / "a") == parquet_digests(tmp_path / "b")


def test_catalog_files_given_with_the_wrong_flag_are_refused_before_the_reddit_stage(tmp_path):
    """Swapped --meta / --reviews used to run every stage and write an empty dataset (exit 0)."""
    amazon = SAMPLE_INPUTS / "amazon"
    args = ["--inputs", str(SAMPLE_INPUTS / "reddit"), "--out", str(tmp_path / "ds"),
            "--workdir", str(tmp_path / "work"), "--no-filter", "--no-images", *FAST]
    swapped = build(*args, "--meta", str(amazon / "All_Beauty.jsonl.gz"),
                    "--reviews", str(amazon / "meta_All_Beauty.jsonl"))
    assert swapped.exit_code == 1, swapped.output
    assert (f"{amazon / 'All_Beauty.jsonl.gz'} (given with --meta) looks like an Amazon Reviews 2023 REVIEW file"
            in " ".join(swapped.output.split()))
    assert "give it with --reviews" in " ".join(swapped.output.split())
    assert not (tmp_path / "work").exists() and not (tmp_path / "ds").exists()  # nothing ran
    missing = build(*args, "--meta", str(tmp_path / "nope"))
    assert missing.exit_code == 1 and f"{tmp_path / 'nope'}: no such file or folder" in missing.output
    assert not (tmp_path / "work").exists()


def test_a_domain_left_empty_by_a_mistyped_domain_map_is_named_with_the_category_meant(tmp_path):
    """'Amazon Fashion' for the metadata's 'AMAZON FASHION' used to write a dataset without fashion conversations,
    exit 0 and not a word: only the funnel's gt_items_outside_domains count hinted at it."""
    amazon = str(SAMPLE_INPUTS / "amazon")
    result = build("--inputs", str(SAMPLE_INPUTS / "reddit"), "--meta", amazon, "--reviews", amazon,
                   "--domain-map", "All Beauty=beauty;Amazon Fashion=fashion;Amazon Home=home",
                   "--out", str(tmp_path / "ds"), "--workdir", str(tmp_path / "work"), "--no-filter", "--no-images",
                   *FAST)
    assert result.exit_code == 0, result.output
    stats = read_manifest(tmp_path / "ds")["stats"]
    assert stats["fashion"]["conversations"] == 0 and stats["beauty"]["conversations"] > 0
    output = " ".join(result.output.split())
    assert ("warning: the fashion domain is empty: no linked product has main_category 'Amazon Fashion' (the domain "
            "map's name for it); the linked products' main categories outside the map are 'AMAZON FASHION' (45)"
            in output)
    assert "did you mean 'AMAZON FASHION'? (--domain-map)" in output
    assert "the beauty domain is empty" not in output and "the home domain is empty" not in output


def test_a_catalog_file_that_cannot_be_read_from_its_start_is_refused_before_the_reddit_stage(tmp_path):
    """Plain JSON Lines under a .zst name, or a cut archive, stopped the build only at the catalog stage, after the
    Reddit stage (hours on real dumps); the error now comes first, with the same words."""
    meta = tmp_path / "meta_All_Beauty.jsonl.zst"
    meta.write_bytes((SAMPLE_INPUTS / "amazon" / "meta_All_Beauty.jsonl").read_bytes())
    result = build("--inputs", str(SAMPLE_INPUTS / "reddit"), "--meta", str(meta), "--out", str(tmp_path / "ds"),
                   "--workdir", str(tmp_path / "work"), "--no-filter", "--no-images", *FAST)
    assert result.exit_code == 1, result.output
    assert (f"{meta}: cannot read it to the end: not a zstd frame (the file holds uncompressed JSON text under a "
            "zstd name: rename it .jsonl to read it)" in " ".join(result.output.split()))
    assert not (tmp_path / "work").exists()


def test_dumps_without_comments_or_without_submissions_are_named_as_what_the_inputs_lack(tmp_path):
    """Submission dumps alone used to end in "comments linking Amazon products: 0" and no word of why; comment dumps
    alone (or of other months than the submissions) in submission_missing counts, without what to add."""
    import shutil

    amazon = str(SAMPLE_INPUTS / "amazon")
    for kept, lacking in [("sample_submissions.zst", "no comment of the 1 dump file(s) links an Amazon product "
                           "(300 lines read): if they hold only submissions, add the comment dumps (RC_*.zst, "
                           "<sub>_comments.zst) of the same months"),
                          ("sample_comments.zst", "none of the 300 threads' submissions is in the dumps, so no "
                           "thread could be rebuilt (submission_missing): add the submission dumps (RS_*.zst, "
                           "<sub>_submissions.zst) of the months the threads were started in")]:
        dumps = tmp_path / kept / "dumps"
        dumps.mkdir(parents=True)
        shutil.copy(SAMPLE_INPUTS / "reddit" / kept, dumps)
        result = build("--inputs", str(dumps), "--meta", amazon, "--reviews", amazon,
                       "--out", str(tmp_path / kept / "ds"), "--no-filter", "--no-images", *FAST)
        assert result.exit_code == 0, result.output
        assert f"warning: --inputs: {lacking}" in " ".join(result.output.split())
        alone = CliRunner().invoke(cli, ["reddit-stage", str(dumps), "--workdir", str(tmp_path / kept / "stage"),
                                         "--quiet"])
        assert alone.exit_code == 0 and f"warning: {lacking}" in " ".join(alone.stderr.split()), alone.output
    whole = build("--inputs", str(SAMPLE_INPUTS / "reddit"), "--meta", amazon, "--reviews", amazon,
                  "--out", str(tmp_path / "whole"), "--no-filter", "--no-images", *FAST)
    assert whole.exit_code == 0 and "warning: --inputs" not in whole.output, whole.output
