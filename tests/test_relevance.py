"""The Table 9 relevance filter against a loopback OpenAI-compatible server."""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from werkzeug import Request, Response

from reddit_amazon.relevance import (
    DEFAULT_MODEL,
    AnswerCache,
    FilterOptions,
    REJECTED,
    RelevanceError,
    default_template,
    load_template,
    parse_answer,
    plan_filter,
    render_prompt,
    run_filter,
)
from reddit_amazon.schema import Conversation, Turn

PAPER = Path(__file__).resolve().parents[2] / "shared" / "paper" / "000_f3659b8b73db113b.txt"


def conversation(example_id: str, last: str) -> Conversation:
    return Conversation(
        example_id=example_id, domain="", thread_id="t1", subreddit="s", created_utc=1,
        turns=[Turn(kind="submission", text="Looking for a green lamp"), Turn(kind="comment", text="same here")],
        context_items=[], gt_text=last, gt_items=["B000000001"],
    )


class FakeOpenAI:
    """Answers chat completions from a script keyed by a tag in the prompt: ``SCRIPT=<name>``.

    Each script is a list of (status, answer) consumed one per request; the last entry repeats.
    """

    def __init__(self, scripts: dict[str, list[tuple[int, str]]]):
        self.scripts = scripts
        self.requests: Counter = Counter()
        self._lock = threading.Lock()  # requests come in on several server threads at once

    def __call__(self, request: Request) -> Response:
        body = json.loads(request.data)
        assert request.headers["Authorization"] == "Bearer sk-test"
        prompt = body["messages"][0]["content"]
        name = re.search(r"SCRIPT=(\w+)", prompt).group(1)
        with self._lock:  # a Counter's first += of a key is not atomic: two threads could both count 1
            self.requests[name] += 1
            asked = self.requests[name]
        script = self.scripts[name]
        status, answer = script[min(asked, len(script)) - 1]
        if status == 0:  # answer slower than the client's timeout
            time.sleep(float(answer))
            status, answer = 200, "yes"
        if status == 297:  # a 200 whose body is not JSON (a proxy's glitch, a body cut short)
            return Response(answer, status=200, content_type="application/json")
        if status == 299:  # a gateway's 200 that carries an error instead of a completion
            return Response(json.dumps({"error": {"message": answer}}), status=200, content_type="application/json")
        choice = {"finish_reason": "stop", "message": {"role": "assistant", "content": answer}}
        if status == 298:  # a completion with the choice given as JSON (a refusal, a cut answer, a tool call)
            status, choice = 200, json.loads(answer)
        if status != 200:
            headers = {"Retry-After": answer.removeprefix("retry-after=")} if answer.startswith("retry-after=") else {}
            return Response(json.dumps({"error": {"message": answer, "type": "x", "code": status}}),
                            status=status, content_type="application/json", headers=headers)
        return Response(json.dumps({
            "id": "c1", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, **choice}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }), content_type="application/json")


@pytest.fixture
def httpserver(threaded_httpserver):
    return threaded_httpserver


@pytest.fixture
def options(httpserver) -> FilterOptions:
    return FilterOptions(base_url=httpserver.url_for("/v1"), concurrency=4, max_attempts=4,
                         backoff_initial_s=0.01, backoff_max_s=0.02, timeout_s=5)


def serve(httpserver, scripts) -> FakeOpenAI:
    fake = FakeOpenAI(scripts)
    httpserver.expect_request("/v1/chat/completions", method="POST").respond_with_handler(fake)
    return fake


@pytest.mark.parametrize("answer,label", [
    ("yes", "yes"), ("Yes.", "yes"), ("'no'", "no"), ("\u2018uncertain\u2019", "uncertain"),
    ("Answer: NO!", "no"), ("Yes, the last utterance recommends items.", "yes"), ("yes or no", "unparseable"),
    ("I cannot tell", "unparseable"), ("", "unparseable"), (None, "unparseable"), ("nope", "unparseable"),
    ("Yes, there is no doubt the last utterance recommends items.", "yes"), ("Yes - no other items", "yes"),
    ("**No**, it only asks a question.", "no"), ("no idea, maybe yes", "unparseable"),
    ("Yes (no doubt about it).", "yes"), ("I would not say yes.", "unparseable"),
    ("It is not a clear yes.", "unparseable"), ("<think>It could be no, but</think>\n\nYes", "yes"),
    ("<think>no end to this thinking", "unparseable"), ("It does not recommend anything: no.", "no"),
    # DeepSeek-R1 distills and QwQ: the chat template opens the thoughts, the answer has only their end
    ("Is it a recommendation? Maybe no.\n</think>\n\nYes", "yes"),
])
def test_parse_answer(answer, label):
    assert parse_answer(answer) == label


def test_prompt_is_the_papers_table_9():
    if not PAPER.is_file():
        pytest.skip("../shared/paper is not present")
    lines = PAPER.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("You are a helpful assistant. I will show"))
    assert default_template() == "\n".join(lines[start:start + 3]) + "\n"


def test_prompt_numbers_the_utterances():
    prompt = render_prompt(default_template(), conversation("a", "Try this one"))
    assert prompt.endswith("Conversation: <utterance>(1) Looking for a green lamp</utterance>\n"
                           "<utterance>(2) same here</utterance>\n<utterance>(3) Try this one</utterance>\n")


def test_labels_retries_and_cache(httpserver, options, tmp_path):
    fake = serve(httpserver, {
        "a": [(200, "Yes.")],
        "b": [(200, "no")],
        "c": [(200, "UNCERTAIN")],
        "d": [(200, "I'd say yes or no")],
        "e": [(429, "slow down"), (429, "slow down"), (200, "yes")],
        "f": [(500, "oops"), (503, "busy"), (200, "'yes'")],
        "g": [(400, "content filter")],
        "h": [(0, "1.5"), (200, "yes")],  # the first attempt times out
    })
    records = [conversation(name, f"check this SCRIPT={name}") for name in "abcdefgh"]
    options.timeout_s = 0.5
    with AnswerCache(tmp_path / "cache.sqlite") as cache:
        plan = plan_filter(records, cache, options)
        assert (plan.calls, plan.cached) == (8, 0) and plan.approx_prompt_tokens > 8 * 150
        result = run_filter(records, cache, options, api_key="sk-test")
    assert [c.example_id for c in result.kept] == ["a", "e", "f", "h"]
    assert result.labels == {"a": "yes", "b": "no", "c": "uncertain", "d": "unparseable", "e": "yes", "f": "yes",
                             "g": "rejected", "h": "yes"}
    assert fake.requests["e"] == 3 and fake.requests["f"] == 3 and fake.requests["h"] == 2
    assert result.calls_made == 8

    with AnswerCache(tmp_path / "cache.sqlite") as cache:  # a rerun pays nothing, and needs no key
        assert plan_filter(records, cache, options).calls == 0
        again = run_filter(records, cache, options)
    assert again.labels == result.labels and again.calls_made == 0
    assert sum(fake.requests.values()) == 1 + 1 + 1 + 1 + 3 + 3 + 1 + 2


def test_the_http_requests_sent_are_counted_with_their_retries(httpserver, options, tmp_path):
    """calls_made counts prompts answered; a user billed per request also needs the requests that took."""
    fake = serve(httpserver, {"limited": [(429, "slow down"), (200, "yes")], "broken": [(500, "oops"), (200, "no")],
                              "fine": [(200, "yes")]})
    records = [conversation(name, f"check this SCRIPT={name}") for name in ("limited", "broken", "fine")]
    with AnswerCache(tmp_path / "cache.sqlite") as cache:
        result = run_filter(records, cache, options, api_key="sk-test")
        again = run_filter(records, cache, options, api_key="sk-test")
    assert result.calls_made == 3
    assert result.http_requests_sent == sum(fake.requests.values()) == 5
    assert again.calls_made == again.http_requests_sent == 0


def test_persistent_errors_keep_answers_and_resume(httpserver, options, tmp_path):
    fake = serve(httpserver, {"ok": [(200, "yes")], "down": [(503, "unavailable")]})
    records = [conversation("1", "SCRIPT=ok"), conversation("2", "SCRIPT=down")]
    cache = AnswerCache(tmp_path / "cache.sqlite")
    with pytest.raises(RelevanceError, match="a relevance call failed after 4 attempts.*rerun to resume"):
        run_filter(records, cache, options, api_key="sk-test")
    assert fake.requests == {"ok": 1, "down": 4} and len(cache) == 1
    fake.scripts["down"] = [(200, "no")]
    result = run_filter(records, cache, options, api_key="sk-test")
    assert fake.requests == {"ok": 1, "down": 5} and result.labels == {"1": "yes", "2": "no"}


def test_a_refusal_of_every_request_stops_the_run_and_caches_nothing(httpserver, options, tmp_path):
    """A 400 about the model (not about one prompt), or 200s without a completion, must not become
    cached "rejected" / empty answers that a rerun would never ask again."""
    fake = serve(httpserver, {"bad": [(400, "Invalid model name passed in model=gpt-3.5-turbo")],
                              "empty": [(299, "upstream failed")], "long": [(400, "This model's maximum context "
                                                                                   "length is 4097 tokens")]})
    cache = AnswerCache(tmp_path / "cache.sqlite")
    with pytest.raises(RelevanceError, match="refused the request.*Invalid model name"):
        run_filter([conversation("1", "SCRIPT=bad")], cache, options, api_key="sk-test")
    with pytest.raises(RelevanceError, match="failed after 4 attempts.*without a completion"):
        run_filter([conversation("2", "SCRIPT=empty")], cache, options, api_key="sk-test")
    assert len(cache) == 0 and fake.requests["empty"] == 4  # retried like a server error
    result = run_filter([conversation("3", "SCRIPT=long")], cache, options, api_key="sk-test")
    assert result.labels == {"3": REJECTED} and len(cache) == 1  # a prompt too long: that prompt only
    fake.scripts["llama"] = [(400, "the request exceeds the available context size, try increasing it")]
    result = run_filter([conversation("4", "SCRIPT=llama")], cache, options, api_key="sk-test")  # llama.cpp's way
    assert result.labels == {"4": REJECTED}


def test_an_endpoint_that_stays_down_stops_the_run_early(httpserver, options, tmp_path):
    fake = serve(httpserver, {"down": [(503, "unavailable")]})
    records = [conversation(str(i), f"SCRIPT=down number {i}") for i in range(40)]
    with pytest.raises(RelevanceError, match="rerun to resume"):
        run_filter(records, AnswerCache(tmp_path / "cache.sqlite"), options, api_key="sk-test")
    assert fake.requests["down"] < 40 * 4 / 2  # not every call retried to the end


def test_calls_waiting_to_retry_give_up_when_another_fails_for_good(httpserver, options, tmp_path):
    """Three calls told to come back in 60 s must not hold the stop for a minute once the fourth failed
    for good: they give up at once and a rerun asks them again."""
    fake = serve(httpserver, {"down": [(503, "unavailable")], "busy": [(429, "retry-after=60")]})
    records = [conversation("0", "SCRIPT=down")] + [conversation(str(i), f"SCRIPT=busy {i}") for i in range(1, 4)]
    start = time.monotonic()
    with pytest.raises(RelevanceError, match="0 answers received are cached.*rerun to resume"):
        run_filter(records, AnswerCache(tmp_path / "cache.sqlite"), options, api_key="sk-test")
    assert time.monotonic() - start < 15
    assert fake.requests["down"] == 4 and fake.requests["busy"] <= 3  # no busy call was retried


def test_dry_run_plan_counts_the_calls_the_run_makes(httpserver, options, tmp_path):
    """Records with the same thread text share one prompt: the plan must not count it twice."""
    fake = serve(httpserver, {"same": [(200, "yes")], "other": [(200, "no")]})
    records = [conversation("1", "SCRIPT=same"), conversation("2", "SCRIPT=same"), conversation("3", "SCRIPT=other")]
    with AnswerCache(tmp_path / "c.sqlite") as cache:
        plan = plan_filter(records, cache, options)
        assert (plan.records, plan.cached, plan.calls) == (3, 0, 2)
        result = run_filter(records, cache, options, api_key="sk-test")
        assert result.calls_made == plan.calls == sum(fake.requests.values())
        assert result.labels == {"1": "yes", "2": "yes", "3": "no"}
        assert (plan_filter(records, cache, options).cached, plan_filter(records, cache, options).calls) == (3, 0)


def test_a_reasoning_model_refusing_temperature_is_asked_again_without_it(httpserver, options, tmp_path):
    """OpenAI's reasoning models answer 400 to temperature=0; that is not an answer about the prompt."""
    asked = []

    def reasoning_model(request: Request) -> Response:
        body = json.loads(request.data)
        asked.append(body)
        if "temperature" in body:
            error = {"message": "Unsupported value: 'temperature' does not support 0 with this model.",
                     "type": "invalid_request_error", "param": "temperature", "code": "unsupported_value"}
            return Response(json.dumps({"error": error}), status=400, content_type="application/json")
        return Response(json.dumps({
            "id": "c1", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "yes"}}],
        }), content_type="application/json")

    httpserver.expect_request("/v1/chat/completions", method="POST").respond_with_handler(reasoning_model)
    records = [conversation(str(i), f"try this {i}") for i in range(6)]
    options.concurrency = 1
    with AnswerCache(tmp_path / "c.sqlite") as cache:
        result = run_filter(records, cache, options, api_key="sk-test")
    assert result.counts == {"yes": 6} and len(asked) == 7  # one refusal, then every prompt once
    assert result.parameter_changes == ["temperature dropped (model default)"]
    assert all("temperature" not in body for body in asked[1:])


def test_a_rejection_quoting_the_key_does_not_write_it_to_the_cache(httpserver, options, tmp_path):
    key = "sk-secret-quoted-back-12345"

    def refuse(request: Request) -> Response:
        error = {"message": f"flagged by the content filter (auth: {request.headers['Authorization']})",
                 "type": "invalid_request_error", "param": None, "code": "content_filter"}
        return Response(json.dumps({"error": error}), status=400, content_type="application/json")

    httpserver.expect_request("/v1/chat/completions", method="POST").respond_with_handler(refuse)
    with AnswerCache(tmp_path / "c.sqlite") as cache:
        result = run_filter([conversation("1", "try this")], cache, options, api_key=key)
    assert result.labels == {"1": REJECTED}
    stored = (tmp_path / "c.sqlite").read_bytes()
    assert key.encode() not in stored and b"<key redacted>" in stored


def test_a_refused_parameter_stops_the_run_and_caches_nothing(httpserver, options, tmp_path):
    def refuse(request: Request) -> Response:
        error = {"message": "Unsupported parameter: 'messages' ...", "type": "invalid_request_error",
                 "param": "messages", "code": "unsupported_parameter"}
        return Response(json.dumps({"error": error}), status=400, content_type="application/json")

    httpserver.expect_request("/v1/chat/completions", method="POST").respond_with_handler(refuse)
    records = [conversation(str(i), f"try this {i}") for i in range(3)]
    with AnswerCache(tmp_path / "c.sqlite") as cache:
        with pytest.raises(RelevanceError, match="refused the request: .*Unsupported parameter"):
            run_filter(records, cache, options, api_key="sk-test")
        assert len(cache) == 0  # no conversation was labelled "rejected" for it


def test_auth_error_stops_at_once(httpserver, options, tmp_path):
    fake = serve(httpserver, {"x": [(401, "invalid api key")]})
    records = [conversation(str(i), "SCRIPT=x") for i in range(3)]
    with AnswerCache(tmp_path / "c.sqlite") as cache, pytest.raises(RelevanceError, match="refused"):
        run_filter(records, cache, options, api_key="sk-test")
    assert fake.requests["x"] <= options.concurrency  # no retries of a 401


def test_missing_key_and_template_changes(httpserver, options, tmp_path):
    serve(httpserver, {"a": [(200, "yes")]})
    records = [conversation("1", "SCRIPT=a")]
    with AnswerCache(tmp_path / "c.sqlite") as cache:
        with pytest.raises(RelevanceError, match="OPENAI_API_KEY is not set"):
            run_filter(records, cache, FilterOptions(template=options.template))
        run_filter(records, cache, options, api_key="sk-test")
        other_model = FilterOptions(**{**options.__dict__, "model": "gpt-4o-mini"})
        assert plan_filter(records, cache, other_model).calls == 1
        template = tmp_path / "t.txt"
        template.write_text("Is this a recommendation?\n{conversation}\n")
        changed = FilterOptions(**{**options.__dict__, "template": load_template(template)})
        assert plan_filter(records, cache, changed).calls == 1
        assert plan_filter(records, cache, options).calls == 0 and options.model == DEFAULT_MODEL
    template.write_text("no slot here")
    with pytest.raises(RelevanceError, match="no \\{conversation\\} slot"):
        load_template(template)


def test_import_answers_adds_only_missing_and_leaves_the_source_alone(tmp_path):
    with AnswerCache(tmp_path / "recorded.sqlite") as recorded:
        recorded.put("k1", DEFAULT_MODEL, "Yes")
        recorded.put("k2", DEFAULT_MODEL, "No.")
    source = tmp_path / "recorded.sqlite"
    before = source.read_bytes()
    source.chmod(0o444)  # the bundled sample cache may live in a read-only site-packages
    with AnswerCache(tmp_path / "build.sqlite") as cache:
        cache.put("k1", DEFAULT_MODEL, "no (answered live)")
        assert cache.import_answers(source) == 1
        assert cache.get("k1") == ("ok", "no (answered live)") and cache.get("k2") == ("ok", "No.")
        assert cache.import_answers(source) == 0
    assert source.read_bytes() == before


def _database(path: Path, *statements: str) -> Path:
    import sqlite3

    db = sqlite3.connect(path)
    for statement in statements:
        db.execute(statement)
    db.commit()
    db.close()
    return path


#: Files given to import_answers that are not answer caches, and what the error says after the file's name.
NOT_ANSWER_CACHES = {
    "another cache": (("CREATE TABLE embeddings (key TEXT PRIMARY KEY, vector BLOB)",),
                      " holds another database (tables embeddings(key, vector))"),
    "answers of other columns": (("CREATE TABLE answers (key TEXT PRIMARY KEY, answer TEXT)",
                                  "INSERT INTO answers VALUES ('k9', 'Yes')"),
                                 " holds another database (tables answers(key, answer))"),
    # the columns' names, but a row may lack a value: INSERT OR IGNORE skipped such rows one by one, silently
    "answers without NOT NULL": (("CREATE TABLE answers (key TEXT, model TEXT, status TEXT, answer TEXT)",
                                  f"INSERT INTO answers VALUES ('k8', '{DEFAULT_MODEL}', 'ok', 'Yes')",
                                  "INSERT INTO answers VALUES ('k9', NULL, 'ok', 'No')"),
                                 " holds another database (tables answers(key, model, status, answer))"),
    "an empty database": ((), " holds another database (no tables)"),
}


@pytest.mark.parametrize("kind", [*NOT_ANSWER_CACHES, "not a database", "missing"])
def test_importing_a_file_that_is_not_an_answer_cache_is_one_error_naming_it_and_imports_nothing(tmp_path, kind):
    """Another database, or a file of no database, ended in sqlite3's "no such table: answers", "no such column:
    model" or "file is not a database", naming no file; a table without NOT NULL was imported in part."""
    source = tmp_path / "given.sqlite"
    if kind == "not a database":
        source.write_text("key,answer\nk9,Yes\n")
        said = " is damaged (file is not a database)"
    elif kind == "missing":
        said = ": unable to open database file"
    else:
        statements, said = NOT_ANSWER_CACHES[kind]
        _database(source, *statements)
    before = source.read_bytes() if source.exists() else None
    with AnswerCache(tmp_path / "build.sqlite") as cache:
        cache.put("k1", DEFAULT_MODEL, "Yes")
        with pytest.raises(RelevanceError) as raised:
            cache.import_answers(source)
        assert len(cache) == 1
    message = str(raised.value)
    assert message.startswith(f"{source}{said}"), message
    assert message.endswith("nothing was imported from it") and "\n" not in message, message
    assert (source.read_bytes() if source.exists() else None) == before


def test_answers_are_committed_without_an_fsync_each_and_the_closed_file_is_one_rollback_journal_file(tmp_path):
    """Each answer was committed with its fsyncs under the cache's lock, and the pre-send lookups queued behind
    them: run_filter made about half the calls/s of a plain client at --llm-concurrency 32
    (benchmarks/relevance_throughput.py). Closed, the file must again open read-only (the sample's ships so)."""
    path = tmp_path / "answers.sqlite"
    with AnswerCache(path) as cache:
        cache.put("k", DEFAULT_MODEL, "yes")
        assert cache._db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert cache._db.execute("PRAGMA synchronous").fetchone() == (1,)  # NORMAL: fsyncs at checkpoints only
    assert [p.name for p in tmp_path.iterdir()] == ["answers.sqlite"]
    assert path.read_bytes()[18:20] == b"\x01\x01"  # the header's rollback journal: no -wal / -shm to open
    assert answers_of(path) == [("k", "yes")]
    assert [p.name for p in tmp_path.iterdir()] == ["answers.sqlite"]  # reading it read-only made none


def test_a_cache_another_process_has_open_is_left_to_it_to_close(tmp_path):
    path = tmp_path / "answers.sqlite"
    first, second = AnswerCache(path), AnswerCache(path)
    first.put("a", DEFAULT_MODEL, "yes")
    second.put("b", DEFAULT_MODEL, "no")
    first.close()  # cannot leave WAL mode while the other has the file open: not an error
    assert second.get("a") == ("ok", "yes")
    second.close()
    assert [p.name for p in tmp_path.iterdir()] == ["answers.sqlite"]
    assert path.read_bytes()[18:20] == b"\x01\x01" and answers_of(path) == [("a", "yes"), ("b", "no")]


def test_answers_a_full_disk_keeps_in_the_wal_file_are_reported_naming_both_files(tmp_path, file_size_limit):
    """close() ignored every error of its checkpoint, not only "database is locked": on a full disk the answers
    stayed in the -wal file, unsaid, and a copy of the cache file alone lacked them."""
    path = tmp_path / "answers.sqlite"
    cache = AnswerCache(path)
    for i in range(50):
        cache.put(f"k{i}", DEFAULT_MODEL, "yes" * 100)
    with file_size_limit(path.stat().st_size), pytest.raises(RelevanceError) as raised:
        cache.close()
    assert str(path) in str(raised.value) and f"{path}-wal" in str(raised.value)
    assert (tmp_path / "answers.sqlite-wal").stat().st_size > 0
    with AnswerCache(path) as again:  # nothing lost: the next open reads them back, and its close has room
        assert len(again) == 50
    assert [p.name for p in tmp_path.iterdir()] == ["answers.sqlite"] and len(answers_of(path)) == 50


def test_an_error_in_the_block_is_not_hidden_by_a_close_that_fails_too(tmp_path, file_size_limit):
    path = tmp_path / "answers.sqlite"
    cache = AnswerCache(path)
    for i in range(50):
        cache.put(f"k{i}", DEFAULT_MODEL, "yes" * 100)
    with file_size_limit(path.stat().st_size), pytest.raises(KeyError, match="the block's"), cache:
        raise KeyError("the block's")
    assert (tmp_path / "answers.sqlite-wal").stat().st_size > 0

def test_an_answer_stored_survives_the_process_being_killed(tmp_path):
    """A paid answer is never asked again: put() returns once a SIGKILL can no longer lose it."""
    import signal
    import subprocess
    import sys

    path = tmp_path / "answers.sqlite"
    child = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "from reddit_amazon.relevance import AnswerCache\n"
        f"cache = AnswerCache({str(path)!r})\n"
        "cache.put('k', 'm', 'yes')\n"
        "print('stored', flush=True)\n"
        "time.sleep(60)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "stored\n"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    with AnswerCache(path) as cache:
        assert cache.get("k") == ("ok", "yes")
    assert [p.name for p in tmp_path.iterdir()] == ["answers.sqlite"]


def answers_of(path: Path) -> list[tuple[str, str]]:
    """The file's answers, read as the bundled sample's are (read-only)."""
    import sqlite3

    db = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    try:
        return db.execute("SELECT key, answer FROM answers ORDER BY key").fetchall()
    finally:
        db.close()


def test_answers_are_kept_apart_per_endpoint(httpserver, options, tmp_path):
    """Two servers may serve different weights under one model name: one's answers are not the other's."""
    from pytest_httpserver import HTTPServer

    serve(httpserver, {"x": [(200, "no")]})
    other = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    other.start()
    try:
        second = serve(other, {"x": [(200, "yes")]})
        records = [conversation("1", "SCRIPT=x")]
        with AnswerCache(tmp_path / "cache.sqlite") as cache:
            assert run_filter(records, cache, options, api_key="sk-test").labels == {"1": "no"}
            again = run_filter(records, cache, FilterOptions(base_url=other.url_for("/v1"), template=options.template,
                                                             backoff_initial_s=0.01), api_key="sk-test")
        assert again.labels == {"1": "yes"} and second.requests["x"] == 1
    finally:
        other.stop()


def test_answers_imported_for_an_endpoint_count_as_its_own(tmp_path):
    from reddit_amazon.relevance import cache_key

    with AnswerCache(tmp_path / "recorded.sqlite") as recorded:
        recorded.put(cache_key("m", "prompt"), "m", "yes")
    with AnswerCache(tmp_path / "local.sqlite") as local:
        assert local.import_answers(tmp_path / "recorded.sqlite", "http://127.0.0.1:9/v1") == 1
        assert local.get(cache_key("m", "prompt", "http://127.0.0.1:9/v1")) == ("ok", "yes")
        assert local.get(cache_key("m", "prompt")) is None


@pytest.mark.parametrize("status, message", [
    (422, "Input validation error: `inputs` tokens + `max_new_tokens` must be <= 4096. Given: 5000 `inputs` tokens"),
    (413, "Request Entity Too Large"),
    (298, json.dumps({"finish_reason": "stop", "message": {"role": "assistant", "content": None,
                                                          "refusal": "I can't help with that."}})),
    (298, json.dumps({"finish_reason": "content_filter", "message": {"role": "assistant", "content": None}})),
    (298, json.dumps({"finish_reason": "length", "message": {"role": "assistant", "content": ""}})),
])
def test_a_refusal_of_one_prompt_in_any_form_is_rejected_not_an_empty_answer(httpserver, options, tmp_path, status,
                                                                                message):
    fake = serve(httpserver, {"ok": [(200, "yes")], "refused": [(status, message)]})
    records = [conversation("1", "SCRIPT=ok"), conversation("2", "SCRIPT=refused")]
    with AnswerCache(tmp_path / "cache.sqlite") as cache:
        result = run_filter(records, cache, options, api_key="sk-test")
        assert result.labels == {"1": "yes", "2": REJECTED} and fake.requests["refused"] == 1
        assert run_filter(records, cache, options).calls_made == 0  # cached: asking again gets the same


def test_a_completion_without_text_or_reason_is_retried_then_stops_the_run(httpserver, options, tmp_path):
    tool_call = json.dumps({"finish_reason": "tool_calls", "message": {"role": "assistant", "content": None}})
    fake = serve(httpserver, {"tool": [(298, tool_call)]})
    with AnswerCache(tmp_path / "cache.sqlite") as cache:
        with pytest.raises(RelevanceError, match="failed after 4 attempts .*MalformedResponseError.*no text"):
            run_filter([conversation("1", "SCRIPT=tool")], cache, options, api_key="sk-test")
        assert len(cache) == 0 and fake.requests["tool"] == 4


def test_refusals_of_every_prompt_or_of_the_answer_limit_stop_the_run_and_cache_nothing(httpserver, options,
                                                                                       tmp_path):
    """A refusal worded like one about a prompt, but hitting every prompt, is about a setting."""
    too_long = "This model's maximum context length is 2048 tokens, your prompt is too long"
    fake = serve(httpserver, {f"p{i}": [(400, too_long)] for i in range(8)}
                 | {"limit": [(400, "'max_tokens' or 'max_completion_tokens' is too large: 4000. This model's "
                                    "maximum context length is 2048 tokens")]})
    with AnswerCache(tmp_path / "cache.sqlite") as cache:
        with pytest.raises(RelevanceError, match="refused each of the first 5 prompts"):
            run_filter([conversation(str(i), f"SCRIPT=p{i}") for i in range(8)], cache, options, api_key="sk-test")
        assert len(cache) == 0
        with pytest.raises(RelevanceError, match="refused the request: .*max_tokens"):
            run_filter([conversation("x", "SCRIPT=limit")], cache, options, api_key="sk-test")
        assert len(cache) == 0 and fake.requests["limit"] == 1


def test_a_damaged_cache_file_is_named(tmp_path):
    damaged = tmp_path / "cache.sqlite"
    damaged.write_bytes(b"not a database" * 100)
    with pytest.raises(RelevanceError, match=r"cache.sqlite is damaged .*delete or move it \(the relevance answer cache"):
        AnswerCache(damaged)


def test_an_empty_completion_is_retried_not_cached_as_an_unparseable_answer(httpserver, options, tmp_path):
    """content "" (or blank) with finish_reason "stop" carries no answer: retried like a 5xx, never cached."""
    fake = serve(httpserver, {"blank": [(200, ""), (200, "  \n"), (200, "yes")]})
    with AnswerCache(tmp_path / "cache.sqlite") as cache:
        result = run_filter([conversation("1", "SCRIPT=blank")], cache, options, api_key="sk-test")
        assert result.labels == {"1": "yes"} and fake.requests["blank"] == 3


def test_a_200_whose_body_is_not_json_is_retried_not_the_end_of_the_run(httpserver, options, tmp_path):
    """One garbled answer from a gateway (invalid JSON in a 200) is retried like a 5xx, as the docs say of a 200
    without a completion; it once stopped the whole build (and `benchmark run` with openai-chat) at once."""
    fake = serve(httpserver, {"garbled": [(297, '{"id": "c1", "choi'), (297, "{not json"), (200, "yes")]})
    with AnswerCache(tmp_path / "cache.sqlite") as cache:
        result = run_filter([conversation("1", "SCRIPT=garbled")], cache, options, api_key="sk-test")
        assert result.labels == {"1": "yes"} and fake.requests["garbled"] == 3


def test_calls_are_made_as_earlier_ones_finish_not_all_at_once():
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from reddit_amazon.openai_endpoint import completed_in_window

    drawn: list[int] = []
    finished = 0
    lock = threading.Lock()

    def arguments():
        for number in range(100):
            drawn.append(number)  # a prompt is rendered only when its call is about to be submitted
            with lock:
                assert len(drawn) - finished <= 5  # at most 5 calls submitted and not finished
            yield (number,)

    def square(number: int) -> int:
        nonlocal finished
        with lock:
            finished += 1
        return number * number

    with ThreadPoolExecutor(2) as pool:
        squares = [future.result() for future in completed_in_window(pool, square, arguments(), window=5)]
    assert sorted(squares) == [number * number for number in range(100)]

    def slow_square(number: int) -> int:
        time.sleep(0.005)
        return square(number)

    drawn.clear()
    finished = 0
    with ThreadPoolExecutor(2) as pool:
        for count, _ in enumerate(completed_in_window(pool, slow_square, arguments(), window=5), start=1):
            time.sleep(0.01)  # a consumer slower than the calls, as on a loaded machine: several finish meanwhile
            if count == 3:
                break
        drawn_at_stop = len(drawn)
    # Every finished call is replaced before its result is handed out (the workers stay busy), so the calls
    # finished but not yet handed out were replaced too: up to window - 1 more than 3 + window.
    assert len(drawn) == drawn_at_stop <= 3 + 5 + (5 - 1)  # stopping early submits nothing more


def test_more_records_than_calls_in_flight_are_all_labelled(httpserver, options, tmp_path):
    fake = serve(httpserver, {"yes": [(200, "yes")], "no": [(200, "no")]})
    records = [conversation(str(i), f"item {i // 2} SCRIPT={'yes' if i % 3 else 'no'}") for i in range(90)]
    with AnswerCache(tmp_path / "cache.sqlite") as cache:
        result = run_filter(records, cache, options, api_key="sk-test")
    assert result.calls_made == sum(fake.requests.values()) == len({r.gt_text for r in records})
    assert result.labels == {r.example_id: "yes" if int(r.example_id) % 3 else "no" for r in records}


def test_a_cache_that_cannot_be_opened_or_written_is_named_and_stops_the_run(httpserver, options, tmp_path):
    """--llm-cache in a folder it may not write, or a read-only file: the error names the file (a build has
    several caches) and the run stops at the first answer it cannot keep, not saying it was cached."""
    import sqlite3

    folder = tmp_path / "folder.sqlite"
    folder.mkdir()  # SQLite cannot open it, as in a folder it may not write in
    with pytest.raises(RelevanceError, match=f"{folder}: unable to open database file"):
        AnswerCache(folder)
    serve(httpserver, {"a": [(200, "yes")], "b": [(200, "no")]})
    cache = AnswerCache(tmp_path / "cache.sqlite")
    cache._db = sqlite3.connect(f"{cache.path.as_uri()}?mode=ro", uri=True, check_same_thread=False)  # read-only
    records = [conversation(name, f"check this SCRIPT={name}") for name in "ab"]
    with pytest.raises(RelevanceError, match=f"{cache.path}: attempt to write a readonly database") as error:
        run_filter(records, cache, options, api_key="sk-test")
    assert "are cached" not in str(error.value)


def test_answers_a_build_sharing_the_cache_stored_meanwhile_are_not_asked_again(httpserver, options, tmp_path):
    """Two builds sharing one --llm-cache: the prompts still to ask were listed at the start, so every answer the
    other build stored after that was paid for again."""
    fake = FakeOpenAI({name: [(200, "yes")] for name in "abcdef"})
    records = [conversation(name, f"check this SCRIPT={name}") for name in "abcdef"]
    shared, other = tmp_path / "shared.sqlite", tmp_path / "other.sqlite"
    shares = []

    def endpoint(request: Request) -> Response:
        if shares:  # the other build answers the rest while this build's first call is in flight
            shares.clear()
            with AnswerCache(shared) as its_cache:
                its_cache.import_answers(other)
        return fake(request)

    httpserver.expect_request("/v1/chat/completions", method="POST").respond_with_handler(endpoint)
    with AnswerCache(other) as cache:  # what the other build will have answered
        run_filter(records[1:], cache, options, api_key="sk-test")
    fake.requests.clear()
    shares.append(True)
    options.concurrency = 1
    with AnswerCache(shared) as cache:
        result = run_filter(records, cache, options, api_key="sk-test")
    assert result.labels == {name: "yes" for name in "abcdef"}
    asked = sum(fake.requests.values())  # the first prompt sent (any: each run has its own order), then only 'a'
    assert fake.requests["a"] == 1 and asked <= 2 and result.calls_made == asked


@pytest.fixture
def body_server():
    """A chat endpoint on loopback whose path picks how the body comes: whole, a byte at a time, or padded."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    completion = json.dumps({"id": "c", "object": "chat.completion", "created": 0, "model": "m", "choices": [
        {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "yes"}}]}).encode()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            body = completion + b" " * 5000 if "/padded/" in self.path else completion
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                for start in range(0, len(body), 1 if "/drip/" in self.path else len(body)):
                    self.wfile.write(body[start:start + (1 if "/drip/" in self.path else len(body))])
                    self.wfile.flush()
                    if "/drip/" in self.path:
                        time.sleep(0.05)
            except OSError:  # the client gave up
                pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_an_answer_dripping_in_or_without_end_is_cut_off_and_retried(body_server):
    """The timeout bounded each read only: a body sent a byte at a time took minutes and was taken; an endless
    body was read whole into memory (1.4 GB for 600 MB). Both now end the call with a retried transport error."""
    import openai

    from reddit_amazon.openai_endpoint import is_transient, make_client

    def ask(path: str, **options):
        client = make_client(f"{body_server}/{path}/v1", api_key="sk-test", **options)
        return client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])

    assert ask("whole", timeout=5).choices[0].message.content == "yes"
    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError) as dripped:
        ask("drip", timeout=1)  # ~200 bytes at 20 bytes/s: 10 s, though no single read waits 1 s
    assert time.monotonic() - started < 6 and is_transient(dripped.value)  # the whole body would take 10 s
    with pytest.raises(openai.APIConnectionError) as padded:
        ask("padded", timeout=5, max_answer_bytes=1000)
    assert "longer than 1,000 bytes" in str(padded.value.__cause__) and is_transient(padded.value)
    assert ask("padded", timeout=5).choices[0].message.content == "yes"  # within the default bound


def test_no_timeout_still_means_none(body_server):
    """``--model-args timeout=null`` (openai-chat, openai-emb) asked without a timeout; the body's deadline must not
    turn it into a TypeError."""
    from reddit_amazon.openai_endpoint import make_client

    client = make_client(f"{body_server}/whole/v1", None, api_key="sk-test")
    answer = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content == "yes"


def test_a_base_url_with_a_query_string_sends_it_with_every_request(httpserver):
    """Azure-style endpoints need ``?api-version=…`` on every request; the client appended each request's path to
    the whole base URL, after the query (``/v1?api-version=2024-06-01/chat/completions``), so no request reached
    the endpoint."""
    from reddit_amazon.openai_endpoint import make_client

    answer = {"id": "x", "object": "chat.completion", "created": 0, "model": "m",
              "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "yes"}}]}
    httpserver.expect_request("/v1/chat/completions", method="POST",
                              query_string={"api-version": "2024-06-01"}).respond_with_json(answer)
    client = make_client(httpserver.url_for("/v1?api-version=2024-06-01"), 5, api_key="sk-test")
    reply = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content == "yes"


def test_thoughts_in_a_reasoning_field_without_an_answer_reject_the_prompt(httpserver, options, tmp_path):
    """A server's reasoning parser puts the thoughts in reasoning_content; with no answer after them the content
    is empty. That was taken for a malformed response: asked again to the last attempt, then the build stopped."""
    def lost_in_thought(request: Request) -> Response:
        body = json.loads(request.data)
        answer = None if "lost" in body["messages"][0]["content"] else "yes"
        message = {"role": "assistant", "content": answer, "reasoning_content": "Is it? yes... no..."}
        return Response(json.dumps({"id": "c1", "object": "chat.completion", "created": 0, "model": body["model"],
                                    "choices": [{"index": 0, "finish_reason": "stop", "message": message}]}),
                        content_type="application/json")

    httpserver.expect_request("/v1/chat/completions", method="POST").respond_with_handler(lost_in_thought)
    options.concurrency = 1
    with AnswerCache(tmp_path / "c.sqlite") as cache:
        result = run_filter([conversation("1", "try this"), conversation("2", "lost")], cache, options,
                            api_key="sk-test")
    assert result.labels == {"1": "yes", "2": REJECTED} and len(httpserver.log) == 2
    assert b"no answer after them (finish_reason 'stop')" in (tmp_path / "c.sqlite").read_bytes()


@pytest.mark.parametrize("body", [
    '{"id": "c1", "choices": 5}', '{"id": "c1", "choices": {"0": {}}}', '{"id": "c1", "choices": [{"message": 3}]}',
    '{"id": "c1", "choices": [{"finish_reason": "stop", "message": {"role": "assistant", "content": 5}}]}',
    '{"id": "c1", "choices": [{"finish_reason": "length", "message": {"role": "assistant", "content": ["yes"]}}]}',
])
def test_a_200_whose_choices_have_the_wrong_json_types_is_retried_not_a_crash(httpserver, options, tmp_path, body):
    """A gateway's completion of the wrong shape (choices not a list, a message or its text not what the API
    gives) is malformed, retried like a 200 without a completion: it once ended the run with a TypeError,
    KeyError or AttributeError from inside the response check."""
    fake = serve(httpserver, {"odd": [(297, body), (200, "yes")]})
    with AnswerCache(tmp_path / "cache.sqlite") as cache:
        result = run_filter([conversation("1", "SCRIPT=odd")], cache, options, api_key="sk-test")
        assert result.labels == {"1": "yes"} and fake.requests["odd"] == 2


_RUN = "0f" * 32


@pytest.mark.parametrize(("held", "counts", "damaged"), [
    (f"{_RUN}\nc\nr\nc".encode(), (2, 1), False),  # the last newline cut by a crash
    (f"{'ab' * 32}\nc\nc\nr\n".encode(), (0, 0), False),  # another run's log
    (bytes(range(255, -1, -1)), (0, 0), True),
    (f"{_RUN}\nc\n".encode() + bytes(range(255, -1, -1)), (0, 0), True),
    (b"\x00" * 64, (0, 0), True),
], ids=["cut last line", "another run", "binary garbage", "garbage after its events", "zeros"])
def test_a_damaged_calls_log_restarts_the_counts_with_a_warning_and_a_cut_line_loses_no_event(tmp_path, held, counts,
                                                                                               damaged):
    """The calls log only feeds the report's counts: it must never stop a build. A cut last line is counted, and
    the next event no longer joins it ("cr", counted as neither); a damaged log restarts the counts, saying so;
    another run's log restarts them as documented, silently."""
    from reddit_amazon.relevance import CallTally

    log = tmp_path / "calls.log"
    log.write_bytes(held)
    with CallTally(log, _RUN) as tally:
        assert (tally.calls, tally.requests) == counts
        assert (tally.damaged is not None) == damaged
        if damaged:
            assert str(log) in tally.damaged and "cover this run only" in tally.damaged
        tally.request()
        tally.call()
    with CallTally(log, _RUN) as again:
        assert (again.calls, again.requests) == (counts[0] + 1, counts[1] + 1) and again.damaged is None
