"""The Reddit stage end to end on fixture dumps the tests write themselves."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from contextlib import suppress
from pathlib import Path

import orjson
import pytest
from core_install import import_extra  # tests/
from werkzeug import Response

from reddit_amazon.dumps import iter_chunks, write_zst_ndjson
from reddit_amazon.pipeline import RedditStageOptions, bad_line_warnings, run_reddit_stage
from reddit_amazon.schema import DELETED_TEXT, REMOVED_TEXT, Conversation

AUTHORS = ["alice_real_name", "bob_real_name", "carol_real_name", "dave_real_name", "erin_real_name"]


def _sub(sid, title, selftext="", author="alice_real_name", created=1_600_000_000, subreddit="wicked_edge"):
    return {"id": sid, "title": title, "selftext": selftext, "author": author, "created_utc": created,
            "subreddit": subreddit, "permalink": f"/r/{subreddit}/comments/{sid}/x/", "score": 3, "is_self": True}


def _com(cid, link, parent, body, author="bob_real_name", created=1_600_000_100, subreddit="wicked_edge"):
    return {"id": cid, "link_id": f"t3_{link}", "parent_id": parent, "body": body, "author": author,
            "created_utc": created, "subreddit": subreddit, "score": 1, "permalink": f"/r/x/comments/{link}/x/{cid}/"}


FILLER = [_com(f"f{i}", "zz", "t3_zz", f"just chatting about razors number {i}", created=1_600_000_000 + i)
          for i in range(300)]


def write_world(folder: Path) -> Path:
    """Dumps covering the cases the stage must handle; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    write_zst_ndjson(
        folder / "RS_2020-09.zst",
        [
            _sub("s1", "Need a safety razor", "Budget is $40, sensitive skin."),
            _sub("s2", "Moisturizer for winter?", "[removed]", author="[deleted]", subreddit="SkincareAddiction"),
            _sub("s3", "Best kettle", "", subreddit="BuyItForLife"),
            _sub("s4", "Is this worth it? https://www.amazon.com/dp/B0000000S4", "", subreddit="BuyItForLife"),
            _sub("s5", "Question [deleted thread]", "[deleted]", created="1600000500"),
        ],
        frames=2,
    )
    write_zst_ndjson(
        folder / "RC_2020-09.zst",
        [
            *FILLER[:150],
            _com("c1", "s1", "t3_s1", "Try [this](https://www.amazon.com/Merkur-Razor/dp/B000NL0T1G/ref=sr_1_3)"),
            _com("c2", "s1", "t1_c1", "[deleted]", author="[deleted]", created=1_600_000_200),
            _com("c3", "s1", "t1_c2",
                 r"Or amazon.co.uk/gp/product/B00AGG3MZ8 and "
                 r"[blades](https://smile.amazon.com/Derby\_Blades/dp/B0002XKG4S).",
                 author="carol_real_name", created="1600000300"),
            _com("t1_c4", "s2", "t3_s2", "https://www.amazon.ca/gp/aw/d/B01N5IB20Q?psc=1", author="dave_real_name",
                 created=1_600_000_400, subreddit="SkincareAddiction"),
            _com("c5", "s9", "t3_s9", "https://www.amazon.com/dp/B0000000C5", created=1_600_000_500),  # no submission
            _com("c6", "s1", "t1_gone", "https://www.amazon.com/dp/B0000000C6", created=1_600_000_600),  # lost parent
            _com("c7", "s3", "t3_s3", "I bought mine on Amazon. Search amazon.com/s?k=kettle", created=1_600_000_700),
            _com("c8", "s3", "t1_c7", "https://amzn.to/kettle1 is the one", author="erin_real_name",
                 created=1_600_000_800),
            _com("c9", "s4", "t3_s4", "Get www.amazon.de/exec/obidos/ASIN/B0000000C9 instead", created=1_600_000_900),
            _com("c10", "s5", "t3_s5", "[removed]", author="[deleted]", created=1_600_001_000),
            b'{"id":"bad1","body":"broken json https://www.amazon.com/dp/B0000000X1',
            b'{"id":"bad2","body":"\xff\xfe https://www.amazon.com/dp/B0000000X2"}',
            orjson.dumps({"id": "bad3", "body": "no link_id https://www.amazon.com/dp/B0000000X3"}),
            *FILLER[150:],
        ],
        frames=3,
    )
    # Next month: a reply to a September comment (its ancestors are in the other files).
    write_zst_ndjson(
        folder / "RC_2020-10.zst",
        [
            _com("d1", "s5", "t1_c10", "Replying late: https://a.co/d/ctx123 then amazon.com/dp/B0000000D1",
                 author="alice_real_name", created=1_602_000_000),
            _com("d2", "s5", "t1_d1", "Same here https://www.amazon.com/gp/product/B0000000D2/", created=1_602_000_100),
        ],
        trailing_newline=False,
    )
    # A per-subreddit file repeating a September comment (deduplicated), as plain NDJSON.
    repeated = _com("c1", "s1", "t3_s1", "Try [this](https://www.amazon.com/Merkur-Razor/dp/B000NL0T1G/ref=sr_1_3)")
    (folder / "wicked_edge_comments.ndjson").write_bytes(orjson.dumps(repeated) + b"\n")
    # A truncated month: the first frame (with c20) is readable, the rest is lost.
    whole = write_zst_ndjson(
        folder / "RC_2020-11.zst",
        [
            _com("c20", "s1", "t3_s1", "Late answer: https://www.amazon.com/dp/B0000000K1", created=1_604_000_000),
            *FILLER,
            _com("c21", "s1", "t3_s1", "Lost: https://www.amazon.com/dp/B0000000K2", created=1_604_000_100),
        ],
        frames=2,
    )
    data = whole.read_bytes()
    whole.write_bytes(data[: len(data) - 40])
    return folder


def _rows(result) -> dict[str, dict]:
    rows = {}
    for shard in result.shards:
        for number, line in enumerate(shard.read_bytes().splitlines(), start=1):
            row = orjson.loads(line)
            Conversation.from_row(row, where=f"{shard}:{number}", require_domain=False)
            rows[row["example_id"]] = row
    return rows


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return write_world(tmp_path_factory.mktemp("dumps"))


@pytest.fixture(scope="module")
def built(world, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("work")
    result = run_reddit_stage([world], workdir, RedditStageOptions(salt="test-salt", progress=False))
    return workdir, result


def test_conversations(built):
    workdir, result = built
    rows = _rows(result)
    assert sorted(rows) == ["c1", "c20", "c3", "c4", "c9", "d1", "d2"]

    c3 = rows["c3"]
    assert [t["id"] for t in c3["turns"]] == ["s1", "c1", "c2"]
    assert [t["text"] for t in c3["turns"]] == [
        "Need a safety razor Budget is $40, sensitive skin.",
        "Try [this](https://www.amazon.com/Merkur-Razor/dp/B000NL0T1G/ref=sr_1_3)",
        DELETED_TEXT,
    ]
    assert c3["gt_items"] == ["B00AGG3MZ8", "B0002XKG4S"]
    assert c3["context_items"] == ["B000NL0T1G"]
    assert c3["created_utc"] == 1_600_000_300 and c3["thread_id"] == "s1" and c3["subreddit"] == "wicked_edge"
    assert c3["gt_comment_id"] == "c3" and c3["domain"] == ""
    assert c3["context"].startswith("<submission>Need a safety razor Budget")

    c4 = rows["c4"]  # t1_ prefix on the id, removed submission body, deleted author
    assert c4["turns"][0]["text"] == f"Moisturizer for winter? {REMOVED_TEXT}" and c4["turns"][0]["author"] == ""
    assert c4["subreddit"] == "SkincareAddiction"

    assert rows["c9"]["context_items"] == ["B0000000S4"]  # linked in the submission title
    assert rows["c9"]["turns"][0]["text"] == "Is this worth it? https://www.amazon.com/dp/B0000000S4 "

    # Cross-file thread: submission and a removed parent in September, the replies in October.
    d2 = rows["d2"]
    assert [t["id"] for t in d2["turns"]] == ["s5", "c10", "d1"]
    assert [t["text"] for t in d2["turns"][:2]] == [f"Question [deleted thread] {DELETED_TEXT}", REMOVED_TEXT]
    assert d2["context_items"] == ["B0000000D1"]  # the short link is not resolved (option off)
    assert rows["d1"]["gt_items"] == ["B0000000D1"]
    assert rows["c1"]["turns"][0]["created_utc"] == 1_600_000_000


def test_pseudonyms_and_no_real_names(built):
    workdir, result = built
    text = b"".join(p.read_bytes() for p in result.shards)
    for name in AUTHORS:
        assert name.encode() not in text
    rows = _rows(result)
    # The same person has the same pseudonym across threads.
    assert rows["c3"]["turns"][0]["author"] == rows["d2"]["turns"][-1]["author"] != ""


def test_funnel_and_incomplete_files(built, world):
    workdir, result = built
    funnel = orjson.loads((workdir / "reddit" / "funnel.json").read_bytes())
    assert funnel == result.funnel
    assert result.incomplete_files == [(world / "RC_2020-11.zst").resolve()]
    reason = result.incomplete_reasons[str((world / "RC_2020-11.zst").resolve())]
    assert "truncated" in reason and "compressed byte" in reason
    assert funnel["files"] == 5 and funnel["files_incomplete"] == 1
    dropped = funnel["dropped"]
    assert (dropped["malformed_json"], dropped["invalid_utf8"], dropped["missing_fields"]) == (1, 1, 1)
    september = str((world / "RC_2020-09.zst").resolve())
    assert list(funnel["line_problems_by_file"]) == [september]
    september_problems = dict(funnel["line_problems_by_file"][september])
    text = b"".join(iter_chunks(Path(september)))  # as `zstd -dc` gives it
    bytes_at = [text.index(b'{"id":"bad' + number) for number in (b"1", b"2", b"3")]
    assert [text[:at].count(b"\n") + 1 for at in bytes_at] == [161, 162, 163]
    assert september_problems.pop("first_bad_lines") == [
        {"line": 161, "byte": bytes_at[0], "problem": "malformed_json",
         "why": "unexpected end of data (column 70 of the line)"},
        {"line": 162, "byte": bytes_at[1], "problem": "invalid_utf8",
         "why": "'utf-8' codec can't decode byte 0xff in position 21: invalid start byte"},
        {"line": 163, "byte": bytes_at[2], "problem": "missing_fields",
         "why": "`link_id` is missing; `parent_id` is missing"}]
    assert september_problems == {"malformed_json": 1, "invalid_utf8": 1, "missing_fields": 1}
    assert "B0000000X" not in repr(funnel)  # the lines' text stays in the work folder
    assert bad_line_warnings(funnel) == [
        f"{september}: 1 malformed_json, 1 invalid_utf8, 1 missing_fields dropped; the first at line 161 "
        f"(byte {bytes_at[0]:,}): malformed_json (unexpected end of data (column 70 of the line))"]
    assert dropped["submission_missing"] == 1 and dropped["ancestor_missing"] == 1
    assert dropped["duplicate_recommending_comment"] == 1
    assert funnel["thread_records_in_several_dumps"] == 1  # c1 again in wicked_edge_comments.ndjson
    assert dropped["only_unresolved_short_links"] == 1  # c8
    assert dropped["prefilter_hit_without_product_link"] == 1  # c7: search page only
    assert dropped["submission_with_amazon_text"] == 1  # s4
    assert funnel["threads_rebuilt"] == 7 and funnel["comments_with_asins"] == 9
    assert funnel["lines_read"] == 472 and funnel["prefilter_hits"] >= 14
    assert funnel["short_links_found"] == 2 and funnel["short_link_resolution"] == "off"
    assert funnel["ancestors_deleted_or_removed"] >= 2


def test_a_line_over_the_length_limit_is_reported_with_its_place_and_why(tmp_path):
    """A 65 MiB line (a damaged dump: zstd packs it into a few KiB) is cut at 64 MiB and reported as too long, by
    file and place, not parsed; the lines around it are read."""
    from reddit_amazon.pipeline import scan_file

    before = orjson.dumps(_com("c1", "s1", "t3_s1", "https://www.amazon.com/dp/B0000000A1"))
    huge = b'{"id": "c2", "body": "https://www.amazon.com/dp/B0000000A2 ' + b"x" * (65 << 20) + b'"}'
    after = orjson.dumps(_com("c3", "s1", "t3_s1", "https://www.amazon.com/dp/B0000000A3"))
    path = write_zst_ndjson(tmp_path / "RC_2020-09.zst", [before, huge, after])
    assert path.stat().st_size < 1 << 20
    stats = scan_file(path, tmp_path / "hits.jsonl")
    assert stats["problems"]["malformed_json"] == 1 and stats["comments_with_links"] == 2
    assert stats["problems"]["first_bad_lines"] == [{
        "line": 2, "byte": len(before) + 1, "problem": "malformed_json",
        "why": f"line longer than 64 MiB ({len(huge):,} bytes); not parsed"}]
    assert stats["problems"]["examples"][0].startswith(f"malformed_json at line 2 (byte {len(before) + 1}): ")
    assert len(stats["problems"]["examples"][0]) < 200


def test_unreadable_lines_of_needed_threads_are_reported(tmp_path):
    """The second pass meets bad lines too: a cut submission line is why its conversation is missing."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "RS_2020-09.ndjson").write_bytes(
        b'{"id":"s1","title":"Need a razor","selftext":"","author":"a","created_utc":1600000000,"subre\n'
        + orjson.dumps(_sub("s2", "Need a kettle")) + b"\n")
    (tmp_path / "in" / "RC_2020-09.ndjson").write_bytes(b"".join(orjson.dumps(record) + b"\n" for record in [
        _com("c1", "s1", "t3_s1", "https://www.amazon.com/dp/B000NL0T1G"),
        _com("c2", "s2", "t3_s2", "https://www.amazon.com/dp/B0000000C2")]))
    result = run_reddit_stage([tmp_path / "in"], tmp_path / "work", RedditStageOptions(salt="s", progress=False))
    assert result.funnel["threads_rebuilt"] == 1 and result.funnel["dropped"]["submission_missing"] == 1
    assert result.funnel["thread_lines_unreadable"]["malformed_json"] == 1
    assert result.funnel["dropped"]["malformed_json"] == 0  # the first pass never parses submission lines


def test_lone_surrogates_in_thread_lines_are_counted(tmp_path):
    """Half an emoji in a submission (read by the second pass only) is replaced by U+FFFD and counted too."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "RS_2020-09.ndjson").write_bytes(
        b'{"id":"s1","title":"Need a razor \\ud83d","selftext":"","author":"a","created_utc":1600000000}\n')
    (tmp_path / "in" / "RC_2020-09.ndjson").write_bytes(
        orjson.dumps(_com("c1", "s1", "t3_s1", "https://www.amazon.com/dp/B000NL0T1G")) + b"\n")
    result = run_reddit_stage([tmp_path / "in"], tmp_path / "work", RedditStageOptions(salt="s", progress=False))
    assert _rows(result)["c1"]["turns"][0]["text"] == "Need a razor \ufffd "
    assert result.funnel["lone_surrogates_replaced"] == 0  # the scan never parses submission lines
    assert result.funnel["thread_lines_lone_surrogates_replaced"] == 1


def test_an_edited_dump_rebuilds_the_comment_it_changed(tmp_path):
    """Same comment id and ASIN, new text and thread: the rerun must not publish the old conversation."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "RS.ndjson").write_bytes(orjson.dumps(_sub("s1", "Old thread")) + b"\n"
                                                 + orjson.dumps(_sub("s3", "New thread")) + b"\n")
    comments = tmp_path / "in" / "RC.ndjson"
    options = RedditStageOptions(salt="s", progress=False)
    comments.write_bytes(orjson.dumps(_com("c1", "s1", "t3_s1", "OLD https://www.amazon.com/dp/B000NL0T1G")) + b"\n")
    run_reddit_stage([tmp_path / "in"], tmp_path / "work", options)
    first_written = comments.stat().st_mtime_ns
    comments.write_bytes(orjson.dumps(_com("c1", "s3", "t3_s3", "NEW https://www.amazon.com/dp/B000NL0T1G")) + b"\n")
    # New content of the same size: a dump is told changed by its mtime, which a file system may keep as it was
    # for a write this soon after (1 s or 2 s granularity, or the clock's tick): a download ends later than that.
    os.utime(comments, ns=(first_written + 10**9, first_written + 10**9))
    run_reddit_stage([tmp_path / "in"], tmp_path / "work", options)
    rows = [orjson.loads(line) for path in sorted((tmp_path / "work" / "reddit" / "conversations").glob("*.jsonl"))
            for line in path.read_bytes().splitlines()]
    assert [(row["thread_id"], row["gt_text"][:3]) for row in rows] == [("s3", "NEW")]


def test_work_files_of_another_stage_version_are_not_reused(world, tmp_path, monkeypatch):
    """A new release whose stage output differs (e.g. new pseudonymisation) must not reuse old work."""
    from reddit_amazon import pipeline

    options = RedditStageOptions(salt="s", progress=False)
    run_reddit_stage([world], tmp_path, options)
    scans = set((tmp_path / "reddit" / "work" / "scan-without-a.co").glob("*.json"))
    monkeypatch.setattr(pipeline, "STAGE_VERSION", pipeline.STAGE_VERSION + 1)
    run_reddit_stage([world], tmp_path, options)
    rescanned = set((tmp_path / "reddit" / "work" / "scan-without-a.co").glob("*.json")) - scans
    assert len(rescanned) == len(scans)  # every file scanned again


def test_tasks_run_in_the_calling_process_leave_its_environment_as_it_was(world, tmp_path, monkeypatch):
    """With workers=1 datatrove runs each task in the caller's process and sets its DATATROVE_* variables in
    os.environ for it; a notebook or script calling the stage (or run_build) must not keep them, nor pass them to
    every subprocess it starts afterwards."""
    for name in [name for name in os.environ if name.startswith("DATATROVE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("DATATROVE_EXECUTOR", "SLURM")  # the caller's own value stays
    before = dict(os.environ)
    run_reddit_stage([world], tmp_path / "work", RedditStageOptions(salt="test-salt", workers=1, progress=False))
    assert dict(os.environ) == before


def _loguru_lines_of_module(module: str) -> list[str]:
    """What loguru passes on from a line logged in ``module`` (its enable/disable rules go by the module's name)."""
    from loguru import logger

    received: list[str] = []
    sink = logger.add(received.append, format="{message}")
    try:
        exec("logger.info('a line')", {"__name__": module, "logger": logger})
    finally:
        logger.remove(sink)
    return received


@pytest.mark.parametrize("workers", [1, 2])
def test_the_stage_leaves_the_callers_loguru_rules_as_they_were(world, tmp_path, workers):
    """The stage turns datatrove's executor lines off while it runs; it turned them on after it for good, so a
    caller who had silenced datatrove (logger.disable("datatrove")) got its executor's lines back."""
    from loguru import logger

    assert _loguru_lines_of_module("datatrove.executor.local")  # the test's probe sees enabled lines
    logger.disable("datatrove")
    try:
        run_reddit_stage([world], tmp_path / "work",
                         RedditStageOptions(salt="test-salt", workers=workers, tasks=2, progress=False))
        assert _loguru_lines_of_module("datatrove.executor.local") == []
        assert _loguru_lines_of_module("datatrove.pipeline") == []
    finally:
        logger.enable("datatrove")
    assert _loguru_lines_of_module("datatrove.executor.local")


def test_only_datatrove_variables_are_set_back_and_also_when_a_task_fails(monkeypatch):
    """What the stage sets back is datatrove's: a variable of any other name another thread changes meanwhile
    keeps its change; and a task failing in the calling process leaves no DATATROVE_* variable behind either."""
    from reddit_amazon.stage_executor import datatrove_variables_kept

    for name in [name for name in os.environ if name.startswith("DATATROVE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("DATATROVE_EXECUTOR", "SLURM")
    monkeypatch.setenv("REDDIT_AMAZON_TEST_SETTING", "before")
    monkeypatch.delenv("REDDIT_AMAZON_TEST_NEW", raising=False)
    with pytest.raises(RuntimeError, match="a task failed"), datatrove_variables_kept():
        os.environ.update(DATATROVE_EXECUTOR="LOCAL", DATATROVE_NODE_RANK="0",
                          REDDIT_AMAZON_TEST_SETTING="changed meanwhile", REDDIT_AMAZON_TEST_NEW="set meanwhile")
        raise RuntimeError("a task failed")
    assert {name: value for name, value in os.environ.items() if name.startswith("DATATROVE_")} == {
        "DATATROVE_EXECUTOR": "SLURM"}
    assert os.environ["REDDIT_AMAZON_TEST_SETTING"] == "changed meanwhile"
    assert os.environ["REDDIT_AMAZON_TEST_NEW"] == "set meanwhile"


def test_outputs_are_only_complete_files(built):
    workdir, result = built
    conversations = workdir / "reddit" / "conversations"
    assert sorted(conversations.iterdir()) == sorted(result.shards)
    assert not list((workdir / "reddit").rglob("*.tmp"))


def test_rerun_reuses_everything_and_two_workers_agree(built, world, tmp_path):
    workdir, result = built
    markers = sorted((workdir / "reddit" / "work").glob("scan*/*.json"))
    before = {p: p.stat().st_mtime_ns for p in markers}
    conversations = workdir / "reddit" / "conversations"
    (conversations / ".part-00099.jsonl.tmp").write_text("")  # as a run killed while publishing leaves it
    again = run_reddit_stage([world], workdir, RedditStageOptions(salt="test-salt", progress=False))
    assert {p: p.stat().st_mtime_ns for p in markers} == before
    assert _rows(again) == _rows(result)
    # A shard published again was linked under a temporary name renamed onto the shard: a no-op between two
    # links of one file, which left the temporary link behind.
    assert sorted(conversations.iterdir()) == sorted(again.shards)

    parallel = run_reddit_stage(
        [world], tmp_path / "w2", RedditStageOptions(salt="test-salt", progress=False, workers=2, tasks=3, buckets=4)
    )
    assert len(parallel.shards) == 4
    assert _rows(parallel) == _rows(result)
    assert parallel.funnel["dropped"] == result.funnel["dropped"]


def test_windows_workers_are_spawned_and_linux_ones_forked():
    """datatrove refuses a start method the platform lacks ("cannot find context for 'forkserver'"), and
    "forkserver" was the choice everywhere but Linux, Windows included, which has "spawn" only."""
    import multiprocessing

    from reddit_amazon.stage_executor import LOCAL_START_METHOD, local_start_method

    assert local_start_method(["spawn"]) == "spawn"
    assert LOCAL_START_METHOD in multiprocessing.get_all_start_methods()
    assert LOCAL_START_METHOD == ("fork" if sys.platform == "linux" else "forkserver" if sys.platform == "darwin"
                                  else "spawn")


@pytest.mark.parametrize("start_method", ["spawn", "forkserver"])
def test_workers_started_as_on_macos_and_windows_give_the_same_result_quietly(built, world, tmp_path, monkeypatch,
                                                                               capfd, start_method):
    """Workers that are not forked (macOS: forkserver, Windows: spawn) unpickle the steps in a fresh interpreter,
    and do not inherit the parent's disabled datatrove logger: each printed "N/M tasks completed." over the bars."""
    import multiprocessing

    from reddit_amazon import stage_executor

    if start_method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"no {start_method} here")
    monkeypatch.setattr(stage_executor, "LOCAL_START_METHOD", start_method)
    _, result = built
    capfd.readouterr()
    parallel = run_reddit_stage(
        [world], tmp_path / "w", RedditStageOptions(salt="test-salt", progress=False, workers=2, tasks=3, buckets=4)
    )
    assert _rows(parallel) == _rows(result)
    assert "tasks completed" not in capfd.readouterr().err


def test_a_workdir_inside_the_input_folder_is_not_read_as_dumps(world, tmp_path):
    import shutil

    dumps = tmp_path / "dumps"
    shutil.copytree(world, dumps)
    options = RedditStageOptions(salt="test-salt", progress=False)
    first = run_reddit_stage([dumps], dumps / "work", options)
    again = run_reddit_stage([dumps], dumps / "work", options)
    assert again.funnel["files"] == first.funnel["files"] == len(list(world.iterdir()))
    assert len(again.shards) == len(first.shards) and _rows(again) == _rows(first)


def test_the_work_folder_of_another_run_inside_the_input_folder_is_left_out_and_named(world, tmp_path):
    """`reddit-stage dumps/ --workdir dumps/w1`, then `reddit-stage dumps/ --workdir w2`: the second run read w1's
    .jsonl work files and shards as dumps (32 files instead of 5, and "bad lines" warnings about them)."""
    from click.testing import CliRunner

    from reddit_amazon.cli import cli

    dumps = tmp_path / "dumps"
    shutil.copytree(world, dumps)
    first = run_reddit_stage([dumps], dumps / "w1", RedditStageOptions(salt="test-salt", progress=False))
    named_like_dumps = sum(p.name.endswith((".jsonl", ".zst")) for p in (dumps / "w1").rglob("*"))
    assert named_like_dumps > len(list(world.iterdir()))  # shards and work files
    result = CliRunner().invoke(cli, ["reddit-stage", str(dumps), "--workdir", str(tmp_path / "w2"),
                                      "--salt", "test-salt", "--quiet"])
    assert result.exit_code == 0, result.output
    funnel = orjson.loads(result.stdout)
    assert funnel["files"] == first.funnel["files"] == len(list(world.iterdir()))
    assert funnel == first.funnel
    assert f"warning: left out {named_like_dumps} file(s) named like dumps in {dumps / 'w1'}: a reddit-amazon " \
           "work folder (it holds reddit/.lock), not dumps" in result.stderr
    assert "w1" not in "".join(line for line in result.stderr.splitlines() if line.startswith("bad lines"))


def test_work_and_dataset_folders_are_told_by_what_they_always_hold_and_named_files_are_read(world, tmp_path):
    """An interrupted run leaves only reddit/.lock (and maybe the salt) beside its work files; a dataset folder
    (an import keeps the release's .jsonl in lavic_source/) is told by its manifest. A dump named as a file is
    read wherever it lies; a folder merely called `reddit`, or holding an unrelated manifest.json, is searched."""
    from reddit_amazon.pipeline import dump_files_outside

    dumps = tmp_path / "dumps"
    shutil.copytree(world, dumps)
    interrupted = dumps / "old-run"
    (interrupted / "reddit" / "work" / "scan").mkdir(parents=True)
    (interrupted / "reddit" / ".lock").touch()
    (interrupted / "reddit" / "work" / "scan" / "part.jsonl").write_text('{"half": ')
    salted = dumps / "salted" / "reddit"
    salted.mkdir(parents=True)
    (salted / "salt").write_text("s")
    (salted / "RC_copy.zst").write_bytes((world / "RC_2020-09.zst").read_bytes())
    imported = dumps / "imported"
    (imported / "lavic_source").mkdir(parents=True)
    (imported / "manifest.json").write_text(json.dumps({"name": "reddit-amazon", "version": "1.0.0",
                                                        "fingerprint": "0" * 64, "counts": {}}))
    (imported / "lavic_source" / "item2meta_valid.jsonl").write_text('{"title": "x"}\n')
    other = dumps / "subreddits" / "reddit"  # no marker: a folder of dumps named after the site
    other.mkdir(parents=True)
    (other / "extra.jsonl").write_text("")
    (dumps / "subreddits" / "manifest.json").write_text('{"name": "a web app"}')
    named = interrupted / "reddit" / "work" / "scan" / "part.jsonl"

    search = dump_files_outside([dumps, named], tmp_path / "w")
    read = [*(dumps / p.name for p in world.iterdir()), other / "extra.jsonl", named]
    assert search.files == sorted(p.resolve() for p in read)
    assert {(f.folder, f.dump_named_files, f.why) for f in search.left_out} == {
        (interrupted, 1, "a reddit-amazon work folder (it holds reddit/.lock), not dumps"),
        (dumps / "salted", 1, "a reddit-amazon work folder (it holds reddit/salt), not dumps"),
        (imported, 1, "a reddit-amazon dataset folder (its manifest.json), not dumps"),
    }
    with pytest.raises(FileNotFoundError, match="no dump files .* inside; left out 1 file"):
        dump_files_outside([imported], tmp_path / "w")


def test_dumps_kept_inside_the_workdir_are_read(world, tmp_path, monkeypatch):
    """`reddit-stage work/dumps --workdir work` and `reddit-stage dumps/ --workdir .` read the dumps: only
    the work files are left out, not every file under the workdir."""
    import shutil

    shutil.copytree(world, tmp_path / "dumps")
    options = RedditStageOptions(salt="test-salt", progress=False)
    first = run_reddit_stage([tmp_path / "dumps"], tmp_path, options)
    assert first.funnel["files"] == len(list(world.iterdir()))
    monkeypatch.chdir(tmp_path)
    again = run_reddit_stage([Path("dumps")], Path("."), options)
    assert again.funnel["files"] == first.funnel["files"] and _rows(again) == _rows(first)


def test_salt_changes_pseudonyms_only(built, world, tmp_path):
    workdir, result = built
    other = run_reddit_stage([world], tmp_path / "w", RedditStageOptions(salt="other-salt", progress=False))
    first, second = _rows(result), _rows(other)
    assert first["c3"]["turns"][0]["author"] != second["c3"]["turns"][0]["author"]
    for row in (*first.values(), *second.values()):
        for turn in row["turns"]:
            turn["author"] = ""
    assert first == second


def _resolving_options(httpserver, tmp_path, **settings) -> RedditStageOptions:
    """Options that resolve amzn.to and a.co links on the test server, caching the answers under tmp_path."""
    endpoint = httpserver.url_for("").rstrip("/")
    return RedditStageOptions(salt="test-salt", progress=False, resolve_short_links=True,
                              short_link_endpoints={"amzn.to": endpoint, "a.co": endpoint},
                              short_link_cache=tmp_path / "links.sqlite", **settings)


def test_short_link_resolution(world, tmp_path, httpserver):
    httpserver.expect_request("/kettle1").respond_with_response(
        Response(status=301, headers={"Location": "https://www.amazon.com/Kettle/dp/B0000000KT/ref=x"})
    )
    httpserver.expect_request("/d/ctx123").respond_with_response(
        Response(status=302, headers={"Location": "https://www.amazon.com/dp/B0000000CX"})
    )
    options = _resolving_options(httpserver, tmp_path)
    result = run_reddit_stage([world], tmp_path / "w", options)
    rows = _rows(result)
    assert rows["c8"]["gt_items"] == ["B0000000KT"]
    assert rows["d2"]["context_items"] == ["B0000000CX", "B0000000D1"]
    assert result.funnel["short_links_resolved"] == 2 and result.unresolved_short_links == []
    # The cache answers the second build: nothing is fetched twice.
    requests_made = len(httpserver.log)
    run_reddit_stage([world], tmp_path / "w3", options)
    assert len(httpserver.log) == requests_made == 2


def test_unresolved_list_names_only_links_that_got_no_answer(world, tmp_path, httpserver):
    """A 404 or a redirect to a search page is a definitive (cached) answer, not a link to try again."""
    httpserver.expect_request("/kettle1").respond_with_response(Response("gone", status=404))
    httpserver.expect_request("/d/ctx123").respond_with_response(
        Response("", status=301, headers={"Location": "https://www.amazon.com/s?k=kettle"}))
    options = _resolving_options(httpserver, tmp_path, short_link_attempts=1)
    result = run_reddit_stage([world], tmp_path / "w", options)
    assert result.unresolved_short_links == [] and result.funnel["short_links_resolved"] == 0
    assert not (tmp_path / "w" / "reddit" / "unresolved_short_links.txt").exists()


def test_unresolved_list_names_only_the_links_unresolved_now(world, tmp_path, httpserver):
    httpserver.expect_request("/kettle1").respond_with_response(Response("busy", status=503))
    httpserver.expect_request("/d/ctx123").respond_with_response(Response("busy", status=503))
    options = _resolving_options(httpserver, tmp_path, short_link_attempts=1)
    listed = tmp_path / "w" / "reddit" / "unresolved_short_links.txt"
    down = run_reddit_stage([world], tmp_path / "w", options)
    assert down.unresolved_short_links == ["https://a.co/d/ctx123", "https://amzn.to/kettle1"]
    # ctx123 is in a recommending comment (d1) and in the thread of d2: asked once per run, not twice.
    assert sorted(request.path for request, _ in httpserver.log) == ["/d/ctx123", "/kettle1"]
    assert listed.read_text().split() == down.unresolved_short_links

    httpserver.clear()
    httpserver.expect_request("/kettle1").respond_with_response(
        Response(status=301, headers={"Location": "https://www.amazon.com/dp/B0000000KT"})
    )
    httpserver.expect_request("/d/ctx123").respond_with_response(
        Response(status=302, headers={"Location": "https://www.amazon.com/dp/B0000000CX"})
    )
    up = run_reddit_stage([world], tmp_path / "w", options)
    assert up.unresolved_short_links == [] and not listed.exists()
    assert _rows(up)["c8"]["gt_items"] == ["B0000000KT"]


def test_a_build_asks_the_short_links_its_finished_reddit_stage_left_unresolved_again(world, tmp_path, httpserver):
    """A build reuses its finished Reddit stage, but not the links that got no answer then (a block, a 503): they
    are asked again; once none is left, the stage is reused as it is."""
    import io

    from rich.console import Console

    from reddit_amazon.build import BuildOptions, reddit_stage

    httpserver.expect_request("/kettle1").respond_with_response(Response("busy", status=503))
    httpserver.expect_request("/d/ctx123").respond_with_response(
        Response(status=302, headers={"Location": "https://www.amazon.com/dp/B0000000CX"}))
    stage = _resolving_options(httpserver, tmp_path, short_link_attempts=1)
    reddit = {name: getattr(stage, name) for name in ("salt", "progress", "resolve_short_links",
                                                     "short_link_endpoints", "short_link_cache",
                                                     "short_link_attempts")}
    options = BuildOptions(inputs=[str(world)], meta=[], reviews=[], out=tmp_path / "ds", workdir=tmp_path / "w",
                           reddit=reddit)
    console = Console(file=io.StringIO(), width=200)
    files = sorted(world.iterdir())
    first = reddit_stage(options, files, console)
    assert first.report["short_links_resolved"] == 1

    httpserver.clear()
    httpserver.expect_request("/kettle1").respond_with_response(
        Response(status=301, headers={"Location": "https://www.amazon.com/dp/B0000000KT"}))
    second = reddit_stage(options, files, console)
    assert "asking the 1 short link(s) it left unresolved again" in console.file.getvalue()
    assert [request.path for request, _ in httpserver.log] == ["/kettle1"]  # the resolved one came from the cache
    assert second.report["short_links_resolved"] == 2 and second.key != first.key
    assert not (tmp_path / "w" / "reddit" / "unresolved_short_links.txt").exists()

    third = reddit_stage(options, files, console)
    assert "reusing the finished stage" in console.file.getvalue() and third.key == second.key
    assert len(httpserver.log) == 1


def test_the_short_link_deadline_option_bounds_each_link(world, tmp_path, threaded_httpserver):
    def slow(request):
        time.sleep(1.0)
        return Response(status=301, headers={"Location": "https://www.amazon.com/dp/B0000000KT"})

    threaded_httpserver.expect_request("/kettle1").respond_with_handler(slow)
    threaded_httpserver.expect_request("/d/ctx123").respond_with_handler(slow)
    options = _resolving_options(threaded_httpserver, tmp_path, short_link_attempts=1, short_link_deadline_s=0.3)
    result = run_reddit_stage([world], tmp_path / "w", options)
    assert result.unresolved_short_links == ["https://a.co/d/ctx123", "https://amzn.to/kettle1"]


def test_an_empty_salt_fails_before_any_dump_is_read(world, tmp_path):
    for salt in ("", "   "):
        with pytest.raises(ValueError, match="salt must not be empty"):
            run_reddit_stage([world], tmp_path / "w", RedditStageOptions(salt=salt, progress=False))
    assert not (tmp_path / "w" / "reddit" / "work").exists()


def test_a_named_pipe_is_refused_before_any_dump_is_read(world, tmp_path):
    """The stage reads each dump twice: the second pass would wait for a writer that is gone."""
    os.mkfifo(tmp_path / "RC_live.ndjson")
    with pytest.raises(ValueError, match="RC_live.ndjson: not a regular file"):
        run_reddit_stage([world, tmp_path / "RC_live.ndjson"], tmp_path / "w", RedditStageOptions(progress=False))
    assert not (tmp_path / "w" / "reddit" / "work").exists()


def test_a_dump_that_changes_during_the_run_keeps_the_key_the_stage_computed(world, tmp_path, monkeypatch):
    """A download still being written grows between the stage computing its key and a worker reading it."""
    import reddit_amazon.pipeline as pipeline

    computed = pipeline._file_key
    calls: dict[Path, int] = {}

    def key_of_a_growing_file(path: Path) -> str:
        calls[path] = calls.get(path, 0) + 1
        return computed(path) + ("" if calls[path] == 1 else f"-grown{calls[path]}")

    monkeypatch.setattr(pipeline, "_file_key", key_of_a_growing_file)
    result = run_reddit_stage([world], tmp_path / "w", RedditStageOptions(salt="s", progress=False))
    assert result.funnel["threads_rebuilt"] > 0


_CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import reddit_amazon.pipeline as pipeline
    from reddit_amazon.pipeline import RedditStageOptions, bad_line_warnings, run_reddit_stage

    read_chunks = pipeline.iter_chunks

    def stalling_on_the_last_file(path, *args, **kwargs):  # a download that stalls half-way: killed there
        for chunk in read_chunks(path, *args, **kwargs):
            yield chunk
            if Path(path).name.startswith("c_RC"):
                Path(sys.argv[1] + ".stalled").touch()
                time.sleep(600)

    pipeline.iter_chunks = stalling_on_the_last_file
    run_reddit_stage([Path(p) for p in sys.argv[2:]], Path(sys.argv[1]), RedditStageOptions(salt="s", progress=False))
    """
)


def test_resume_after_kill_9(tmp_path):
    """A build killed while reading its third file redoes only that file when run again."""
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    write_zst_ndjson(dumps / "a_RS.zst", [_sub("s1", "Need a razor")])
    write_zst_ndjson(dumps / "b_RC.zst", [*FILLER, _com("c1", "s1", "t3_s1", "https://www.amazon.com/dp/B000NL0T1G")])
    last = dumps / "c_RC.ndjson"
    reply = orjson.dumps(_com("c2", "s1", "t1_c1", "and https://www.amazon.com/dp/B0000000C2"))
    last.write_bytes(reply[:20])  # half a line so far
    workdir = tmp_path / "work"
    child_tmp = Path(tempfile.mkdtemp())  # the killed Manager's pymp-* folder stays (tmp_path: too long a socket name)
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(workdir), *(str(dumps / n) for n in ("a_RS.zst", "b_RC.zst", last.name))],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # killed as a group: datatrove's Manager process must not outlive the test
        env={**os.environ, "TMPDIR": str(child_tmp)},
    )
    scan = workdir / "reddit" / "work" / "scan-without-a.co"
    try:
        deadline = time.time() + 60
        while not Path(f"{workdir}.stalled").exists():  # the child reads the last file once the others are done
            assert time.time() < deadline and child.poll() is None
            time.sleep(0.05)
        assert len(list(scan.glob("*.json"))) == 2
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        with suppress(ProcessLookupError):  # its forked workers die a moment after it: wait for the whole group
            while time.time() < deadline:
                os.killpg(child.pid, 0)
                time.sleep(0.05)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
        shutil.rmtree(child_tmp, ignore_errors=True)
    done_before = {p: p.stat().st_mtime_ns for p in scan.glob("*.json")}
    assert not (workdir / "reddit" / "conversations").exists()
    assert not [p for p in scan.iterdir() if p.name.startswith("c_RC") and not p.name.startswith(".")]

    last.write_bytes(reply + b"\n")  # the download finished
    result = run_reddit_stage([dumps], workdir, RedditStageOptions(salt="s", progress=False))
    assert {p: p.stat().st_mtime_ns for p in done_before} == done_before
    assert sorted(_rows(result)) == ["c1", "c2"]
    assert _rows(result)["c2"]["context_items"] == ["B000NL0T1G"]


def test_bad_input_paths_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.zst"):
        run_reddit_stage([tmp_path / "nope.zst"], tmp_path / "w", RedditStageOptions(progress=False))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no dump files"):
        run_reddit_stage([tmp_path / "empty"], tmp_path / "w", RedditStageOptions(progress=False))


def test_command_line(world, tmp_path):
    from click.testing import CliRunner

    from reddit_amazon.cli import cli

    result = CliRunner().invoke(
        cli, ["reddit-stage", str(world), "--workdir", str(tmp_path / "w"), "--salt", "x", "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    assert "7 conversations in 5 shard(s)" in result.stderr
    assert "incomplete: " in result.output and "RC_2020-11.zst" in result.output
    assert re.search(r"bad lines: \S*RC_2020-09.zst: 1 malformed_json, .* the first at line 161 ", result.stderr)
    assert orjson.loads(result.stdout)["threads_rebuilt"] == 7  # stdout is the funnel JSON and nothing else
    assert (tmp_path / "w" / "reddit" / "funnel.json").exists()


def test_quiet_draws_no_progress_bar_as_no_progress_does(world, tmp_path):
    """`build`, `benchmark run` and the `lavic-ref` stages turn their bars off with --quiet; `reddit-stage` only knew
    --no-progress, so --quiet was "No such option" (exit 2). Both now mean the same."""
    from click.testing import CliRunner

    from reddit_amazon.cli import cli

    def stage(*flags: str):
        result = CliRunner().invoke(cli, ["reddit-stage", str(world), "--workdir", str(tmp_path / "-".join(flags)),
                                          "--salt", "x", *flags])
        assert result.exit_code == 0, result.output
        return result

    shown = stage()
    assert "%|" in shown.stderr  # the bars this test looks for
    for flags in (["--quiet"], ["--no-progress"], ["--progress", "--quiet"]):
        result = stage(*flags)
        assert "%|" not in result.stderr and "\r" not in result.stderr, result.stderr
        assert result.stdout == shown.stdout  # the funnel, as with bars
        assert "7 conversations in 5 shard(s)" in result.stderr and "bad lines: " in result.stderr
    assert "--quiet" in CliRunner().invoke(cli, ["reddit-stage", "--help"]).output


@pytest.mark.parametrize("workdir", [".", "work"])
def test_a_workdir_in_a_dataset_folder_is_refused_before_anything_is_written(world, tmp_path, workdir):
    """`reddit-stage dumps/ --workdir reddit-amazon` put its reddit/ work folder (Reddit excerpts, the salt) among the
    dataset's shards, which then no longer matched their manifest; `build` already refused such a workdir."""
    from click.testing import CliRunner

    from reddit_amazon.cli import cli
    from reddit_amazon.sample import sample_dataset_path

    dataset = shutil.copytree(sample_dataset_path(), tmp_path / "ds")
    before = sorted(path.relative_to(dataset) for path in dataset.rglob("*"))
    result = CliRunner().invoke(cli, ["reddit-stage", str(world), "--workdir", str(dataset / workdir), "--quiet"])
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines()[-1].startswith("Error: ") and "the dataset folder" in result.output
    assert sorted(path.relative_to(dataset) for path in dataset.rglob("*")) == before
    with pytest.raises(ValueError, match="mixed into the dataset"):
        run_reddit_stage([world], dataset / workdir, RedditStageOptions(salt="test-salt", progress=False))


def test_slurm_on_a_machine_without_slurm_says_so_in_one_line(world, tmp_path, monkeypatch):
    """Without Slurm the stage ended in datatrove's `FileNotFoundError: ... 'sbatch'`, naming neither Slurm nor what
    to do instead."""
    from click.testing import CliRunner

    from reddit_amazon.cli import cli

    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    result = CliRunner().invoke(cli, ["reddit-stage", str(world), "--workdir", str(tmp_path / "w"), "--quiet",
                                      "--executor", "slurm", "--partition", "cpu"])
    assert result.exit_code == 1 and result.output.startswith("Error: FileNotFoundError: executor 'slurm' needs "
                                                              "Slurm's sbatch, and there is none on PATH"), result.output
    assert result.output.count("\n") == 1


@pytest.mark.parametrize("command", ["reddit-stage", "build"])
def test_slurm_without_sbatch_is_refused_before_the_dumps_are_listed(command, tmp_path, monkeypatch):
    """`build --executor slurm` (and `reddit-stage`) looked for sbatch only at the stage's first step: after listing
    the dumps (a while on a big tree), seeding the workdir and starting the Reddit stage. An inputs folder without
    dumps shows the order: its listing would end the command with its own error."""
    from click.testing import CliRunner

    from reddit_amazon.cli import cli

    (tmp_path / "bin").mkdir()
    (tmp_path / "no-dumps").mkdir()
    (tmp_path / "meta_All_Beauty.jsonl").write_text("")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    if command == "build":
        args = ["build", "--inputs", str(tmp_path / "no-dumps"), "--meta", str(tmp_path / "meta_All_Beauty.jsonl"),
                "--out", str(tmp_path / "out"), "--retrievers", "none", "--quiet"]  # a core install has no sbert
    else:
        args = ["reddit-stage", str(tmp_path / "no-dumps"), "--quiet"]
    result = CliRunner().invoke(cli, [*args, "--workdir", str(tmp_path / "w"), "--executor", "slurm",
                                      "--partition", "cpu"])
    assert result.exit_code == 1, result.output
    assert result.output.splitlines() == ["Error: FileNotFoundError: executor 'slurm' needs Slurm's sbatch, and there "
                                          "is none on PATH: run on a machine that submits Slurm jobs, or use the "
                                          "local or ray executor"]
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("command", ["reddit-stage", "build"])
def test_ray_executor_without_ray_is_one_error_line_naming_the_extra(command, tmp_path):
    """check_executor's "executor 'ray' needs Ray: pip install ..." was a plain ImportError, which the command line
    shows as one line only for a missing module it can name: the message came at the end of a traceback."""
    inputs = tmp_path / "no-dumps"
    inputs.mkdir()
    (tmp_path / "meta_All_Beauty.jsonl").write_text("")
    if command == "build":
        args = ["build", "--inputs", str(inputs), "--meta", str(tmp_path / "meta_All_Beauty.jsonl"),
                "--out", str(tmp_path / "out"), "--retrievers", "none"]
    else:
        args = ["reddit-stage", str(inputs)]
    argv = ["reddit-amazon", *args, "--workdir", str(tmp_path / "w"), "--executor", "ray", "--quiet"]
    code = ("import sys; sys.modules['ray'] = None; from reddit_amazon.__main__ import main; "
            f"sys.argv = {argv!r}; main()")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines() == ["Error: executor 'ray' needs Ray: pip install 'reddit-amazon[cluster]'"]
    assert not (tmp_path / "w").exists()


def test_slurm_without_a_partition_is_a_usage_error(world, tmp_path):
    from click.testing import CliRunner

    from reddit_amazon.cli import cli

    result = CliRunner().invoke(cli, ["reddit-stage", str(world), "--workdir", str(tmp_path / "w"), "--executor", "slurm"])
    assert result.exit_code == 2 and "--executor slurm needs --partition" in result.output
    assert not (tmp_path / "w").exists()


_RAY_CHILD = """
import sys
from pathlib import Path
from reddit_amazon.pipeline import RedditStageOptions, run_reddit_stage
world, workdir = map(Path, sys.argv[1:])
options = RedditStageOptions(salt="test-salt", progress=False, executor="ray", workers=2, poll_interval_s=0.5)
run_reddit_stage([world], workdir, options)
"""

# Loaded by every Python process of the Ray cluster: a TCP connection past this machine is refused and noted.
_LOOPBACK_ONLY = """
import os, socket
_connect = socket.socket.connect
def connect(sock, address):
    if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM and not (
            address[0] in ("localhost", "::1") or str(address[0]).startswith("127.")):
        with open(os.environ["OUTSIDE_CONNECTIONS"], "a") as log:
            log.write(f"{os.getpid()} {address}\\n")
        raise ConnectionRefusedError(f"{address} is past this machine")
    return _connect(sock, address)
socket.socket.connect = connect
"""


def test_ray_executor_gives_the_local_result(built, world, tmp_path):
    """A real local Ray cluster (started by datatrove's RayPipelineExecutor) in a child process. Ray's own
    files (~/.ray, its session folders under the temp dir) go to temporary folders, and it connects to
    nothing past this machine."""
    import_extra("ray")
    (tmp_path / "home").mkdir()
    # Without a cluster config in the home folder, Ray's dashboard asks the cloud metadata hosts
    # (169.254.169.254, metadata.google.internal) what machine this is, even with usage stats off.
    (tmp_path / "home" / "ray_bootstrap_config.yaml").write_text("{}\n")
    (tmp_path / "guard").mkdir()
    (tmp_path / "guard" / "sitecustomize.py").write_text(_LOOPBACK_ONLY)
    outside = tmp_path / "outside-connections.txt"
    outside.touch()
    with tempfile.TemporaryDirectory(prefix="ray") as ray_tmp:  # short: Ray's socket paths must fit 107 bytes
        env = {**os.environ, "HOME": str(tmp_path / "home"), "TMPDIR": ray_tmp, "RAY_USAGE_STATS_ENABLED": "0",
               "OUTSIDE_CONNECTIONS": str(outside),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path / "guard"), os.environ.get("PYTHONPATH")]))}
        completed = subprocess.run([sys.executable, "-c", _RAY_CHILD, str(world), str(tmp_path / "w")],
                                   capture_output=True, text=True, timeout=300, env=env)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert outside.read_text() == ""
    _, result = built
    shards = sorted((tmp_path / "w" / "reddit" / "conversations").glob("*.jsonl"))
    rows = {}
    for shard in shards:
        rows.update({orjson.loads(line)["example_id"]: orjson.loads(line) for line in shard.read_bytes().splitlines()})
    assert rows == _rows(result)
    funnel = orjson.loads((tmp_path / "w" / "reddit" / "funnel.json").read_bytes())
    assert funnel["dropped"] == result.funnel["dropped"] and set(funnel["incomplete_files"]) == set(
        result.funnel["incomplete_files"])


# Stand-ins for Slurm's commands: `sbatch` runs an array job's tasks on this machine, in the
# background and only once the job it depends on succeeded, like a scheduler would; `squeue` lists
# the jobs not finished; `srun` runs its command; `scontrol show hostnames` names this machine.
_FAKE_SBATCH = r"""
import os, re, subprocess, sys
from pathlib import Path
state = Path(os.environ["FAKE_SLURM_STATE"])
*options, script = sys.argv[1:]
env = dict(os.environ)
after = ""
for option in options:
    if option.startswith("--export=ALL,"):
        env.update(pair.split("=", 1) for pair in option[len("--export=ALL,"):].split(","))
    elif option.startswith("--dependency="):
        after = option.rsplit(":", 1)[-1]
text = Path(script).read_text()
first, last = map(int, re.search(r"#SBATCH --array=(\d+)-(\d+)", text).groups())
job = str(1000 + len(list(state.glob("*.sh"))))
(state / f"{job}.sh").write_text(text)
log = open(state / f"{job}.log", "w")
runner = [sys.executable, os.path.abspath(__file__) + "-run", str(state), job, after, str(first), str(last)]
subprocess.Popen(runner, env=env, stdout=log, stderr=log, start_new_session=True)
print(f"Submitted batch job {job}")
"""
_FAKE_SBATCH_RUN = r"""
import os, subprocess, sys, time
from pathlib import Path
state, job, after, first, last = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
while after and not (state / f"{after}.done").exists():
    time.sleep(0.1)
if after and (state / f"{after}.done").read_text() != "ok":
    (state / f"{job}.done").write_text("cancelled: dependency failed")
    sys.exit()
environment = {**os.environ, "SLURM_JOB_ID": job, "SLURM_NODELIST": "localhost"}
tasks = [subprocess.Popen(["bash", str(state / f"{job}.sh")], env={**environment, "SLURM_ARRAY_TASK_ID": str(index)})
         for index in range(first, last + 1)]
codes = [task.wait() for task in tasks]
(state / f"{job}.done").write_text("ok" if not any(codes) else f"failed: {codes}")
"""
_FAKE_SQUEUE = r"""
import os, sys
from pathlib import Path
state = Path(os.environ["FAKE_SLURM_STATE"])
job = next(a for a in sys.argv[1:] if a.startswith("--jobs=")).split("=", 1)[1]
if (state / f"{job}.done").exists():
    sys.exit("slurm_load_jobs error: Invalid job id specified")
print(job)
"""
_FAKE_SCONTROL = r"""
import sys
print(sys.argv[-1])  # scontrol show hostnames NODELIST: one node
"""
_FAKE_SRUN = r"""
import os, sys
if os.environ.get("FAKE_SLURM_NODE_FAILS"):
    sys.exit("srun: error: node failure")
arguments = sys.argv[1:]
while arguments and arguments[0].startswith("-"):
    arguments = arguments[2:] if arguments[0] in ("-n", "-N") else arguments[1:]
os.execvp(arguments[0], arguments)
"""


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch) -> Path:
    bin_dir, state = tmp_path / "bin", tmp_path / "slurm"
    bin_dir.mkdir()
    state.mkdir()
    commands = {"sbatch": _FAKE_SBATCH, "sbatch-run": _FAKE_SBATCH_RUN, "squeue": _FAKE_SQUEUE, "srun": _FAKE_SRUN,
                "scontrol": _FAKE_SCONTROL}
    for name, source in commands.items():
        (bin_dir / name).write_text(f"#!{sys.executable}\n{source}")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), os.environ["PATH"]]))
    monkeypatch.setenv("FAKE_SLURM_STATE", str(state))
    found = signal.signal(signal.SIGALRM, lambda *_: pytest.fail("the Slurm run did not finish in 120 s"))
    signal.alarm(120)
    yield state
    signal.alarm(0)
    signal.signal(signal.SIGALRM, found)  # the rest of the session gets the handler it had


SLURM_OPTIONS = RedditStageOptions(salt="test-salt", progress=False, executor="slurm", slurm_partition="cpu", tasks=3,
                                   poll_interval_s=0.2)


def test_slurm_executor_gives_the_local_result(built, world, tmp_path, fake_slurm):
    """datatrove's SlurmPipelineExecutor end to end (launch scripts, pickled executor, array ranks, the
    wait for completion markers) on stand-in Slurm commands: only the scheduler is not real."""
    result = run_reddit_stage([world], tmp_path / "w", SLURM_OPTIONS)
    _, local = built
    assert _rows(result) == _rows(local)
    assert result.funnel["dropped"] == local.funnel["dropped"]
    scripts = [p.read_text() for p in sorted(fake_slurm.glob("*.sh"))]
    assert sum("launch_pickled_pipeline" in s for s in scripts) == 3  # scan, collect, rebuild
    assert all("#SBATCH --partition=cpu" in s for s in scripts)


def test_a_failed_slurm_job_is_an_error_not_an_endless_wait(world, tmp_path, fake_slurm, monkeypatch):
    monkeypatch.setenv("FAKE_SLURM_NODE_FAILS", "1")
    with pytest.raises(RuntimeError, match=r"scan.*tasks \[0, 1, 2\] did not complete"):
        run_reddit_stage([world], tmp_path / "w", SLURM_OPTIONS)


def test_cluster_executors_explain_what_they_need(world, tmp_path):
    with pytest.raises(ValueError, match="partition"):
        run_reddit_stage([world], tmp_path / "w", RedditStageOptions(progress=False, executor="slurm"))
    try:
        import ray  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"reddit-amazon\[cluster\]"):
            run_reddit_stage([world], tmp_path / "w", RedditStageOptions(progress=False, executor="ray"))
    with pytest.raises(ValueError, match="unknown executor"):
        run_reddit_stage([world], tmp_path / "w", RedditStageOptions(progress=False, executor="dask"))


def test_one_large_dump_is_rebuilt_in_several_buckets(built, world, tmp_path, monkeypatch):
    """A rebuild task holds one bucket's threads in memory: the default bucket count follows the input's size,
    not only its file count (one monthly dump is one file), and the conversations are the same."""
    from reddit_amazon import pipeline

    workdir, result = built
    size = sum(path.stat().st_size for path in world.iterdir())
    monkeypatch.setattr(pipeline, "BUCKET_INPUT_BYTES", max(1, size // 20))
    split = run_reddit_stage([world], tmp_path, RedditStageOptions(salt="test-salt", progress=False))
    assert len(split.shards) >= 20 > len(result.shards)
    assert _rows(split) == _rows(result)
    assert split.funnel["dropped"] == result.funnel["dropped"]


def test_a_second_run_on_a_busy_workdir_is_refused(world, tmp_path, short_lock_wait):
    """Two runs on one workdir share the work files' temporary names: one must not start while the other runs
    (they corrupted each other's hits files, NUL bytes included, and the rerun failed on them)."""
    from click.testing import CliRunner

    from reddit_amazon.build import run_build, sample_options
    from reddit_amazon.cli import cli
    from reddit_amazon.files import FolderBusyError, folder_lock

    with folder_lock(tmp_path / "w" / "reddit", "Reddit stage"):  # the other run
        with pytest.raises(FolderBusyError, match="another Reddit stage or build is running"):
            run_reddit_stage([world], tmp_path / "w", RedditStageOptions(salt="x", progress=False))
        result = CliRunner().invoke(cli, ["reddit-stage", str(world), "--workdir", str(tmp_path / "w"),
                                          "--salt", "x", "--no-progress"])
        assert result.exit_code == 1 and "another Reddit stage or build is running" in result.output, result.output
    with folder_lock(tmp_path / "bw", "build"):
        with pytest.raises(FolderBusyError, match=f"another build is running.*{tmp_path / 'bw'}"):
            run_build(sample_options(tmp_path / "ds", tmp_path / "bw", retrievers=[]))
    result = run_reddit_stage([world], tmp_path / "w", RedditStageOptions(salt="x", progress=False))
    assert len(_rows(result)) == 7  # the lock is released with the run that held it


_STALLING_CLI = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    import reddit_amazon.pipeline as pipeline

    in_dumps = Path(sys.argv[3])

    def stalled(path, progress):  # every worker hangs in its dump, as in a long scan, and says it is there
        (in_dumps / str(os.getpid())).touch()
        time.sleep(120)
        yield from ()

    pipeline.iter_chunks = stalled
    from reddit_amazon.cli import main
    sys.argv = ["reddit-amazon", "reddit-stage", sys.argv[2], "--workdir", sys.argv[1], "--salt", "s",
                "--workers", "2", "--no-progress"]
    main()
    """
)


def test_sigterm_stops_the_workers_too(tmp_path):
    """`kill PID` (SIGTERM, as schedulers and containers send) must not leave the forked workers running on:
    they went on writing into the work folder, under the temporary names a rerun writes too."""
    import psutil

    dumps = tmp_path / "dumps"
    dumps.mkdir()
    write_zst_ndjson(dumps / "a_RC.zst", [*FILLER])
    write_zst_ndjson(dumps / "b_RC.zst", [*FILLER])
    in_dumps = tmp_path / "in-dumps"  # a file named by the pid of each worker in its dump
    in_dumps.mkdir()
    child = subprocess.Popen([sys.executable, "-c", _STALLING_CLI, str(tmp_path / "w"), str(dumps), str(in_dumps)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 60
        while len(list(in_dumps.iterdir())) < 2:
            assert time.time() < deadline and child.poll() is None, "the workers never reached their dumps"
            time.sleep(0.1)
        workers = psutil.Process(child.pid).children(recursive=True)
        assert {str(worker.pid) for worker in workers} >= {path.name for path in in_dumps.iterdir()}
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=30) == 128 + signal.SIGTERM  # a terminated job, as a scheduler expects
        _, alive = psutil.wait_procs(workers, timeout=15)
        alive = [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
        assert not alive, f"workers still running after SIGTERM: {alive}"
    finally:
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except ProcessLookupError:  # the whole group is gone, as it should be
            pass


def test_a_non_ascii_salt_works_under_an_ascii_locale(tmp_path):
    import os
    import subprocess
    import sys

    code = ("import sys; from pathlib import Path; from reddit_amazon.pipeline import _salt_file; "
            "p = _salt_file(Path(sys.argv[1]), 's\\u00e9l\\U0001F600'); _salt_file(Path(sys.argv[1]), None); "
            "print(p.read_bytes().decode('utf-8') == 's\\u00e9l\\U0001F600')")
    env = {**os.environ, "LANG": "C", "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONIOENCODING": "ascii"}
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "True", done.stderr


def test_task_logs_are_utf8_under_a_locale_that_is_not(world, tmp_path):
    """datatrove wrote its task logs in the locale's encoding (Windows: cp1252), which has no emoji for its log lines
    and the steps' names: each such line was lost, with a "--- Logging error in Loguru Handler ---" traceback on the
    console (12 in a run of the sample)."""
    code = ("import sys; from pathlib import Path; from reddit_amazon.pipeline import RedditStageOptions, "
            "run_reddit_stage; run_reddit_stage([Path(sys.argv[1])], Path(sys.argv[2]), "
            "RedditStageOptions(salt='s', progress=False, workers=2))")
    env = {**os.environ, "LANG": "C", "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    done = subprocess.run([sys.executable, "-c", code, str(world), str(tmp_path / "w")], env=env, capture_output=True,
                          text=True, encoding="utf-8", errors="replace", timeout=300)
    assert done.returncode == 0 and "Logging error" not in done.stderr, done.stderr
    logs = sorted((tmp_path / "w" / "reddit").rglob("logs/task_*.log"))
    assert logs and "🔎 scan dumps for Amazon links" in "".join(log.read_text(encoding="utf-8") for log in logs)


def test_a_record_in_two_same_named_dumps_is_taken_by_input_order_not_by_path_hash(tmp_path):
    """Two editions of one subreddit dump (both BuyItForLife_comments.ndjson) hold the parent comment with
    different text: the kept copy is the first file's in input (path) order, not the one whose folder path or
    mtime happens to hash first, so moving or copying the dumps does not change the dataset."""
    from reddit_amazon.pipeline import _file_key

    first, second = tmp_path / "dumps" / "a2023", tmp_path / "dumps" / "b2024"
    for folder, text in ((first, "FIRST edition text"), (second, "SECOND edition text")):
        folder.mkdir(parents=True)
        (folder / "BuyItForLife_submissions.ndjson").write_bytes(orjson.dumps(_sub("s1", "Desk lamp?")) + b"\n")
        (folder / "BuyItForLife_comments.ndjson").write_bytes(
            orjson.dumps(_com("c1", "s1", "t3_s1", text)) + b"\n"
            + orjson.dumps(_com("c2", "s1", "t1_c1", "https://www.amazon.com/dp/B000NL0T1G", created=1_600_000_200))
            + b"\n")
    comments = first / "BuyItForLife_comments.ndjson"
    for mtime in range(1, 200):  # an mtime whose key sorts the first edition's collect folder last
        os.utime(comments, ns=(mtime * 10**9, mtime * 10**9))
        if _file_key(comments) > _file_key(second / "BuyItForLife_comments.ndjson"):
            break
    result = run_reddit_stage([tmp_path / "dumps"], tmp_path / "work", RedditStageOptions(salt="s", progress=False))
    rows = [orjson.loads(line) for path in result.shards for line in path.read_bytes().splitlines()]
    assert [turn["text"] for row in rows for turn in row["turns"] if turn["id"] == "c1"] == ["FIRST edition text"]


def test_a_damaged_or_unopenable_short_link_cache_is_named(world, tmp_path, capsys):
    """reddit-stage --short-link-cache on a damaged file, or where SQLite cannot open one: one Error: line
    naming the file, not a traceback of sqlite3's "file is not a database" naming none."""
    from click.testing import CliRunner

    from reddit_amazon.cli import cli

    damaged = tmp_path / "damaged.sqlite"
    damaged.write_bytes(b"SQLite format 3\x00" + b"\x07" * 5000)
    unopenable = tmp_path / "folder.sqlite"
    unopenable.mkdir()  # SQLite cannot open it, as in a folder it may not write in
    for cache, message in [(damaged, f"{damaged} is damaged (file is not a database)"),
                           (unopenable, f"{unopenable}: unable to open database file")]:
        result = CliRunner().invoke(cli, ["reddit-stage", str(world), "--workdir", str(tmp_path / cache.stem),
                                          "--salt", "s", "--resolve-short-links", "--short-link-cache", str(cache),
                                          "--no-progress"])
        assert result.exit_code == 1 and result.exc_info[0] is SystemExit, result.output
        assert f"Error: ShortLinkCacheError: {message}" in result.output


_LOCK_HOLDER_KILLED = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    import multiprocess
    from reddit_amazon.files import folder_lock
    with folder_lock(Path(sys.argv[1]), "build"):
        manager = multiprocess.get_context("fork").Manager()  # as datatrove's LocalPipelineExecutor.run() starts one
        print(manager._process.pid, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)  # kill -9 of the build
    """
)


def test_kill_9_leaves_no_process_holding_the_workdir_lock(tmp_path):
    """`kill -9` of a build during the Reddit stage left datatrove's forked Manager process running for good,
    holding the inherited workdir lock: every rerun stopped with "another build is running"."""
    import psutil

    from reddit_amazon.files import folder_lock

    pid_file, log = tmp_path / "manager.pid", tmp_path / "stderr"  # not pipes: a survivor would keep them open
    with open(pid_file, "w") as out, open(log, "w") as err, tempfile.TemporaryDirectory() as child_tmp:
        child = subprocess.run([sys.executable, "-c", _LOCK_HOLDER_KILLED, str(tmp_path / "w")], stdout=out,
                               stderr=err, timeout=60, env={**os.environ, "TMPDIR": child_tmp})  # its pymp-* stays
    assert child.returncode == -signal.SIGKILL, log.read_text()
    manager = psutil.Process(int(pid_file.read_text().split()[0]))
    try:
        _, alive = psutil.wait_procs([manager], timeout=10)
        assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], "the forked process outlived its parent"
        with folder_lock(tmp_path / "w", "build"):  # the rerun gets the folder
            pass
    finally:
        with suppress(psutil.NoSuchProcess):
            manager.kill()


def test_a_full_disk_names_the_work_file_and_the_rerun_finishes_the_same(tmp_path, file_size_limit):
    """The stage's work files were plain open()s: a full disk ended the build in "Error: OSError: [Errno 28] No
    space left on device", naming no file (nor so the disk). The hits file of the sample's comments (114 KB) is now
    named, and the rerun resumes to the conversations of an undisturbed run."""
    import errno

    from reddit_amazon.build import SAMPLE_REDDIT

    options = RedditStageOptions(salt="s", progress=False)
    whole = run_reddit_stage([SAMPLE_REDDIT], tmp_path / "whole", options)
    with file_size_limit(60_000), pytest.raises(OSError) as caught:
        run_reddit_stage([SAMPLE_REDDIT], tmp_path / "work", options)
    assert caught.value.errno == errno.EFBIG, caught.value
    assert Path(caught.value.filename).is_relative_to(tmp_path / "work" / "reddit" / "work"), caught.value
    again = run_reddit_stage([SAMPLE_REDDIT], tmp_path / "work", options)
    assert _rows(again) == _rows(whole)


def test_a_failing_task_logs_its_traceback_without_the_salt(tmp_path, file_size_limit, capfd):
    """A task run in the calling process logged its exception with loguru's variable values and the frames above
    it: the stage's options, --salt included, went to its task log and the console (docs: the salt is never
    written to datatrove's logs), in some 300 lines above the Error: line. The task log keeps the traceback; the
    console shows none (the exception is raised to the caller)."""
    from reddit_amazon.build import SAMPLE_REDDIT

    salt = "salt-that-must-stay-out-of-logs"
    with file_size_limit(60_000), pytest.raises(OSError):
        run_reddit_stage([SAMPLE_REDDIT], tmp_path / "work", RedditStageOptions(salt=salt, progress=False))
    console = capfd.readouterr().err
    task_logs = [log.read_text(encoding="utf-8") for log in (tmp_path / "work" / "reddit" / "logs").rglob("task_*.log")]
    assert any("Traceback" in text and "File too large" in text for text in task_logs), task_logs
    assert "Traceback" not in console and "File too large" not in console, console
    for text in (console, *task_logs):
        assert salt not in text


def test_a_rerun_keeps_the_failed_tasks_log_and_only_the_last_one(tmp_path, file_size_limit):
    """datatrove opens a task's log with "w": the rerun of a failed task rewrote it, and the failure's traceback (in
    no other place: the console shows only the Error: line) was gone."""
    from reddit_amazon.build import SAMPLE_REDDIT

    options = RedditStageOptions(salt="s", progress=False)
    for _ in range(2):
        with file_size_limit(60_000), pytest.raises(OSError):
            run_reddit_stage([SAMPLE_REDDIT], tmp_path / "work", options)
    run_reddit_stage([SAMPLE_REDDIT], tmp_path / "work", options)
    logs = tmp_path / "work" / "reddit" / "logs"
    previous = [log.read_text(encoding="utf-8") for log in logs.rglob("task_*.log.1")]
    assert any("Traceback" in text and "File too large" in text for text in previous), previous
    for log in logs.rglob("task_*.log"):
        assert "Traceback" not in log.read_text(encoding="utf-8"), log
    assert {log.name.partition(".")[2] for log in logs.rglob("task_*")} == {"log", "log.1"}


@pytest.mark.parametrize("workers", [1, 2])
def test_a_full_disk_in_a_task_is_one_error_line_naming_the_file(tmp_path, file_size_limit, workers):
    """datatrove logged a failing task's exception to the console: a full disk printed a ~50-line traceback (the
    same error twice) above the command's Error: line naming the file. Now that line is all the console shows, from
    a task run in the command's process (1 worker) as from a worker process (2). The limit is the child's too."""
    from reddit_amazon.build import SAMPLE_REDDIT

    workdir = tmp_path / "work"
    with file_size_limit(60_000):
        done = subprocess.run([sys.executable, "-m", "reddit_amazon.cli", "reddit-stage", str(SAMPLE_REDDIT),
                               "--workdir", str(workdir), "--salt", "s", "--workers", str(workers), "--no-progress"],
                              capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: OSError: [Errno 27] File too large: "), done.stderr
    assert str(workdir / "reddit" / "work") in lines[0]
    task_log = re.fullmatch(r".* \(traceback in (.*/logs/task_\d{5}\.log)\)", lines[0])  # the console shows none
    assert task_log and Path(task_log.group(1)).is_relative_to(workdir / "reddit" / "logs"), lines[0]
    assert "File too large" in Path(task_log.group(1)).read_text(encoding="utf-8").partition("Traceback")[2]


def test_build_warns_of_bad_lines_by_file_and_place(tmp_path):
    from rich.console import Console

    from reddit_amazon.build import BuildOptions, reddit_stage

    (tmp_path / "in").mkdir()
    dump = tmp_path / "in" / "RC_2020-09.ndjson"
    first = orjson.dumps(_com("c1", "s1", "t3_s1", "https://www.amazon.com/dp/B0000000C1"))
    dump.write_bytes(first + b"\n\n" + b'{"id": "c2", "body": 5, "url": "https://www.amazon.com/dp/B0000000C2"}\n')
    options = BuildOptions(inputs=[str(tmp_path / "in")], meta=[], reviews=[], out=tmp_path / "out",
                           workdir=tmp_path / "work", reddit={"salt": "s", "progress": False})
    console = Console(record=True, width=300)
    reddit_stage(options, [dump], console)
    warning = (f"bad lines {dump}: 1 missing_fields dropped; the first at line 3 (byte {len(first) + 2}): "
               "missing_fields (`link_id` is missing; `parent_id` is missing; `body` is a number, not a string)")
    assert warning in console.export_text()


def test_a_damaged_salt_file_is_named_with_what_to_do_before_any_dump_is_read(world, tmp_path):
    """Binary bytes in <workdir>/reddit/salt ended the stage in "Error: UnicodeDecodeError: 'utf-8' codec can't
    decode byte 0xff", naming no file. Now the Error line names it and says what to do, and that drawing a new salt
    changes the pseudonyms; a salt passed again replaces the damaged file."""
    from click.testing import CliRunner

    from reddit_amazon.cli import cli

    salt = tmp_path / "w" / "reddit" / "salt"
    salt.parent.mkdir(parents=True)
    salt.write_bytes(bytes(range(255, -1, -1)))
    stage = ["reddit-stage", str(world), "--workdir", str(tmp_path / "w"), "--no-progress"]
    result = CliRunner().invoke(cli, stage, env={"REDDIT_AMAZON_SALT": None})
    assert result.exit_code == 1 and result.exc_info[0] is SystemExit, result.output
    error = result.output.strip().splitlines()
    assert len(error) == 1 and error[0].startswith(f"Error: DamagedFileError: {salt}: damaged"), result.output
    assert "--salt" in error[0] and "delete it" in error[0] and "pseudonyms" in error[0]
    assert not (tmp_path / "w" / "reddit" / "work").exists()
    result = CliRunner().invoke(cli, [*stage, "--salt", "the earlier salt"])
    assert result.exit_code == 0, result.output
    assert salt.read_text() == "the earlier salt"


def _stage_error_over_damage(built, world, tmp_path, pattern: str, damage, rebuilt: str | None = None
                             ) -> tuple[Path, Path, str]:
    """A copy of the built work folder with the one work file matching ``pattern`` damaged by ``damage`` (and the
    marker matching ``rebuilt`` deleted, so that its bucket is rebuilt, which reads the file), then `reddit-stage`
    run over it, which must stop in one Error line: the copy, the damaged file and that line."""
    from click.testing import CliRunner

    from reddit_amazon.cli import cli

    workdir = tmp_path / "w"
    shutil.copytree(built[0], workdir)
    [damaged] = (workdir / "reddit" / "work").glob(pattern)
    damaged.write_bytes(damage(damaged.read_bytes()))
    if rebuilt:
        next((workdir / "reddit" / "work").glob(rebuilt)).unlink()
    stage = ["reddit-stage", str(world), "--workdir", str(workdir), "--salt", "test-salt", "--no-progress"]
    result = CliRunner().invoke(cli, stage)
    assert result.exit_code == 1 and result.exc_info[0] is SystemExit, result.output
    error = result.output.strip().splitlines()
    assert len(error) == 1 and error[0].startswith(f"Error: DamagedFileError: {damaged}"), result.output
    return workdir, damaged, error[0]


def _rerun_gives_the_built_stage(built, world, workdir: Path) -> None:
    rerun = run_reddit_stage([world], workdir, RedditStageOptions(salt="test-salt", progress=False))
    assert _rows(rerun) == _rows(built[1]) and rerun.funnel == built[1].funnel


#: Ways a work file the stage wrote itself is found damaged (a full disk, a crash, an edit by hand).
DAMAGES = {"empty": lambda data: b"", "truncated": lambda data: data[:len(data) // 2],
           "a list": lambda data: b"[1, 2]\n", "a number": lambda data: b"7\n",
           "binary garbage": lambda data: bytes(range(255, -1, -1))}


@pytest.mark.parametrize(("pattern", "damage"), [
    (pattern, damage) for pattern in ["scan-without-a.co/RC_2020-09*.json", "scan-without-a.co/RC_2020-09*.hits.jsonl",
                                      "collect-*/RC_2020-09*.json", "collect-*/RC_2020-09*/bucket-00002.jsonl",
                                      "rebuild-*/part-00002.json", "rebuild-*/part-00002.jsonl"]
    # an empty bucket file is a valid one of no rows
    for damage in DAMAGES if not (damage == "empty" and pattern.endswith("bucket-00002.jsonl"))])
def test_a_damaged_work_file_is_one_error_line_naming_it_and_the_marker_whose_deletion_redoes_it(built, world,
                                                                                                  tmp_path, pattern,
                                                                                                  damage):
    """A rerun over damaged per-file stats or hits of the stage's own passes ended in a traceback (AttributeError:
    'list' object has no attribute 'get', TypeError) or in "Error: JSONDecodeError" naming no file, and an emptied
    hits file silently lost its comments' conversations. Deleting the completion marker the error names, as it says,
    redoes that file (or bucket): datatrove had marked its task complete, so a deleted marker was a
    FileNotFoundError."""
    # a bucket is read when it is rebuilt: in a task, from a collected dump
    rebuilt = "rebuild-*/part-00002.json" if pattern.endswith("bucket-00002.jsonl") else None
    workdir, damaged, error = _stage_error_over_damage(built, world, tmp_path, pattern, DAMAGES[damage], rebuilt)
    marker = Path(re.search(r"; delete (\S+) and rerun the stage: ", error).group(1))
    owner = damaged.parent if damaged.name.startswith("bucket-") else damaged  # a collected dump's folder
    assert marker == owner.with_name(owner.name.replace(".hits.jsonl", "").removesuffix(".jsonl").removesuffix(".json")
                                     + ".json"), error
    marker.unlink()  # as the error says
    _rerun_gives_the_built_stage(built, world, workdir)


def _with(*keys_and_value):
    """A damage setting the marker's value at ``keys`` (a path into its JSON object) to the last argument."""
    *keys, value = keys_and_value

    def damage(data: bytes) -> bytes:
        stats = orjson.loads(data)
        inner = stats
        for key in keys[:-1]:
            inner = inner[key]
        inner[keys[-1]] = value
        return orjson.dumps(stats)
    return damage


@pytest.mark.parametrize(("pattern", "damage", "said"), [
    ("scan-without-a.co/RC_2020-09*.json", _with("problems", []), "'problems' is not a JSON object"),
    ("scan-without-a.co/RC_2020-09*.json", _with("lines_read", "12"), "'lines_read' is not a JSON integer"),
    ("scan-without-a.co/RC_2020-09*.json", _with("error", 5), "'error' is not a JSON string"),
    ("scan-without-a.co/RC_2020-09*.json", _with("problems", "first_bad_lines", [{"line": "1"}]),
     "a 'problems' 'first_bad_lines' item's 'line' is not a JSON integer"),
    ("collect-*/RC_2020-09*.json", _with("problems", []), "'problems' is not a JSON object"),
    ("collect-*/RC_2020-09*.json", _with("problems", "malformed_json", "1"),
     "'problems' 'malformed_json' is not a JSON integer"),
    ("collect-*/RC_2020-09*.json", _with("short_links", "https://a.co/d/x"), "'short_links' is not a JSON array"),
    ("collect-*/RC_2020-09*.json", _with("short_links", [7]), "a 'short_links' item is not a JSON string"),
    ("rebuild-*/part-00002.json", _with("conversations", "2"), "'conversations' is not a JSON integer"),
    ("rebuild-*/part-00002.json", _with("duplicate_records", True), "'duplicate_records' is not a JSON integer"),
], ids=["scan problems []", "scan count string", "scan error number", "scan bad line item", "collect problems []",
        "collect problem count string", "collect short_links string", "collect short link number",
        "rebuild conversations string", "rebuild count true"])
def test_a_marker_value_of_another_json_type_is_one_error_line_naming_it(built, world, tmp_path, pattern, damage,
                                                                         said):
    """A completion marker whose keys are there but hold another JSON type than the stage writes (an array of
    problems, a count written as a string) ended a rerun in AttributeError ('list' object has no attribute 'get')
    or TypeError (int + str); a string of short links was taken letter by letter, an "error" number taken for an
    incomplete dump. Now each is the same one Error line other damaged markers give, and deleting it redoes it."""
    workdir, damaged, error = _stage_error_over_damage(built, world, tmp_path, pattern, damage)
    assert error.startswith(f"Error: DamagedFileError: {damaged}: damaged, {said}"), error
    assert f"; delete {damaged} and rerun the stage: " in error, error
    damaged.unlink()  # as the error says
    _rerun_gives_the_built_stage(built, world, workdir)


def _without_the_id_of_the_first_row(data: bytes) -> bytes:
    first, rest = data.split(b"\n", 1)
    row = orjson.loads(first)
    del row["id"]
    return orjson.dumps(row) + b"\n" + rest


@pytest.mark.parametrize(("pattern", "damage", "marker_pattern"), [
    ("scan-without-a.co/RC_2020-09*.json", lambda data: b"{}\n", None),
    ("collect-*/RC_2020-09*.json", lambda data: b"{}\n", None),
    ("rebuild-*/part-00002.json", lambda data: b"{}\n", None),
    ("scan-without-a.co/RC_2020-09*.hits.jsonl", _without_the_id_of_the_first_row, None),
    ("short_links-*.json", lambda data: data[:len(data) // 2], "rebuild-*/part-00002.json"),
], ids=["scan stats {}", "collect stats {}", "rebuild stats {}", "hits row without id", "short links cut"])
def test_a_work_file_lacking_keys_or_short_links_read_by_a_rebuild_is_one_error_line_naming_it(
        built, world, tmp_path, pattern, damage, marker_pattern):
    """A stats JSON that was a JSON object without the stage's keys ({}) ended a rerun in KeyError: 'error' (or
    'problems', 'short_links'), and a hits row without its id in KeyError: 'id'; a damaged short_links-*.json, read
    in a rebuild task, in "Error: JSONDecodeError" naming no file. Each is now one Error line naming the file and
    what to delete, and deleting it redoes that file."""
    workdir, damaged, error = _stage_error_over_damage(built, world, tmp_path, pattern, damage, marker_pattern)
    assert error.startswith(f"Error: DamagedFileError: {damaged}:"), error
    to_delete = Path(re.search(r"; delete (\S+) and rerun the stage: ", error).group(1))
    expected = damaged.with_name(damaged.name.replace(".hits.jsonl", ".json")) if damaged.suffix == ".jsonl" else damaged
    assert to_delete == expected, error
    to_delete.unlink()  # as the error says
    _rerun_gives_the_built_stage(built, world, workdir)


def _first_row_changed(change):
    """A damage applying ``change`` to the first row of a JSONL work file."""
    def damage(data: bytes) -> bytes:
        first, rest = data.split(b"\n", 1)
        row = orjson.loads(first)
        change(row)
        return orjson.dumps(row) + b"\n" + rest
    return damage


def _as_a_submission(row: dict) -> None:
    for key in ("link_id", "parent_id", "body"):
        del row[key]
    row.update(kind="submission", title="a title", selftext="")


@pytest.mark.parametrize(("pattern", "damage", "said"), [
    ("collect-*/RC_2020-09*/bucket-00002.jsonl", _first_row_changed(lambda row: row.pop("id")),
     "not a Reddit record"),
    ("targets-*/bucket-00002.jsonl", _first_row_changed(lambda row: row.pop("gt_items")),
     "not a Reddit record"),
    ("targets-*/bucket-00002.jsonl", _first_row_changed(_as_a_submission),
     "not a comment with a list of gt_items"),
    ("targets-*/bucket-00002.jsonl", _first_row_changed(lambda row: row.update(gt_items="B000000001")),
     "not a comment with a list of gt_items"),
    ("targets-*/bucket-00002.jsonl", _first_row_changed(lambda row: row.update(gt_items=["B000000001", 1])),
     "not a comment with a list of gt_items"),
    ("collect-*/RC_2020-09*/bucket-00002.jsonl", _first_row_changed(lambda row: row.update(body=None)),
     "'body' is not a JSON string"),
    ("targets-*/bucket-00002.jsonl", _first_row_changed(lambda row: row.update(created_utc="soon")),
     "'created_utc' is not a JSON integer or null"),
], ids=["collected row without id", "target without gt_items", "target of another kind", "gt_items a string",
        "gt_items holding a number",
        "collected body null", "target created_utc a string"])
def test_a_rebuild_input_row_that_is_no_record_is_one_error_line_naming_it(built, world, tmp_path, pattern, damage,
                                                                           said):
    """A collected-threads or targets row of valid JSON that does not make the record the stage wrote (a field
    missing, a target without its gt_items or of another kind, a field of another JSON type) ended a rebuild in a
    traceback (TypeError, KeyError, AssertionError). Now it is one Error line naming the file and line
    (``file:line: damaged, ...``, as every damaged row of a work file is named), and doing what it says redoes it."""
    workdir, damaged, error = _stage_error_over_damage(built, world, tmp_path, pattern, damage,
                                                       "rebuild-*/part-00002.json")  # so its bucket is rebuilt
    assert error.startswith(f"Error: DamagedFileError: {damaged}:1: damaged, {said}"), error
    to_delete = Path(re.search(r"; delete (\S+) and rerun the stage", error).group(1))
    shutil.rmtree(to_delete) if to_delete.is_dir() else to_delete.unlink()  # as the error says
    _rerun_gives_the_built_stage(built, world, workdir)


def test_a_worker_left_by_an_interrupted_executor_run_is_stopped_and_the_process_exits(tmp_path):
    """A Ctrl-C while datatrove's local executor started its multiprocess.Manager() came before the manager was
    assigned, so datatrove's ``finally`` never shut it down: the manager process (it ignores SIGINT) served forever,
    and the build, having printed "Aborted!", waited on it forever at exit. Here a process that serves forever the
    same way is left running when the interrupt comes."""
    script = textwrap.dedent("""
        import signal, time
        import multiprocess
        from reddit_amazon.stage_executor import workers_stopped_if_interrupted

        def serve_forever():
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # as multiprocess's manager server does
            while True:
                time.sleep(1)

        if __name__ == "__main__":
            try:
                with workers_stopped_if_interrupted():
                    multiprocess.get_context("fork").Process(target=serve_forever).start()
                    raise KeyboardInterrupt  # before the caller holds anything to shut the process down with
            except KeyboardInterrupt:
                print("interrupted", flush=True)
    """)
    try:
        done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}, timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail("the process waited at exit for the worker it left running")
    assert done.stdout == "interrupted\n", done.stderr
    assert done.returncode == 0
