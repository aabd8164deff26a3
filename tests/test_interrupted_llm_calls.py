"""Ctrl-C and SIGTERM during LLM calls that the endpoint never answers, or whose connection it never accepts (the
build's relevance filter, `benchmark run --model openai-chat`): the command stops at once, not after the calls'
timeout (60 s and 120 s by default; a Slurm job has ~30 s between SIGTERM and SIGKILL), keeps the answers it got,
and a rerun asks only the rest."""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from benchmark.synthetic import make_synthetic_dataset

ANSWERED_FIRST = 3  # requests answered before the endpoint stalls
RECORDS = 6  # openai-chat: one batch
STOPS_WITHIN_S = 5  # 1-2 s unloaded; the timeouts at fault are 60 s (build) and 120 s (openai-chat)


#: Linux drops a connection's SYN while the listener's backlog is full, so its connect hangs (others refuse it).
DROPS_SYNS_OF_A_FULL_BACKLOG = Path("/proc/net/tcp").exists()


def connects_hanging(port: int) -> int:
    """Connections to this loopback port waiting for an answer to their SYN (Linux's /proc/net/tcp: SYN_SENT)."""
    rows = (line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:])
    return sum(1 for row in rows if row[3] == "02" and int(row[2].split(":")[1], 16) == port)


class StallingEndpoint:
    """A loopback chat endpoint: answers "Yes." to its first ``answered_first`` requests, then accepts each
    request and never answers (``stall="hang"``) or sends its body a byte a second (``"drip"``), or accepts no
    more connections (``"unaccepted"``: each new one hangs in its connect), until :meth:`recover`, from which on
    it answers every request."""

    def __init__(self, answered_first: int, stall: str):
        self.answered_first, self.stall = answered_first, stall
        self.requests = 0
        self.stalled = threading.Event()  # a request, or a connect, is stalling
        self.recovered = threading.Event()
        self._lock = threading.Lock()
        self._serving = False
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                endpoint.handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler, bind_and_activate=False)
        self.server.daemon_threads = True
        if stall == "unaccepted":  # a backlog of one: once a connection waits in it, connects hang
            self.server.request_queue_size = 0
        self.server.server_bind()
        self.server.server_activate()
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        if stall == "unaccepted":
            threading.Thread(target=self._accept_the_first_connections_only, daemon=True).start()
        else:
            self._serve()

    def _serve(self) -> None:
        self._serving = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _accept_the_first_connections_only(self) -> None:
        for _ in range(self.answered_first):  # one request each: handle() closes the connection after it
            self.server.process_request(*self.server.get_request())
        while not (connects_hanging(self.port) or self.recovered.is_set()):
            time.sleep(0.05)
        self.stalled.set()

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        body = json.loads(handler.rfile.read(int(handler.headers["Content-Length"])))
        with self._lock:
            self.requests += 1
            answer = self.recovered.is_set() or self.requests <= self.answered_first
            handler.close_connection = self.stall == "unaccepted" and not self.recovered.is_set()
        if not answer:
            self.stalled.set()
            if self.stall == "drip":
                handler.send_response(200)
                handler.send_header("Content-Type", "application/json")
                handler.send_header("Content-Length", "100000")
                handler.end_headers()
                while not self.recovered.wait(1):
                    try:
                        handler.wfile.write(b" ")
                        handler.wfile.flush()
                    except OSError:  # the client is gone
                        break
            self.recovered.wait()
            return
        data = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                           "choices": [{"index": 0, "finish_reason": "stop",
                                        "message": {"role": "assistant", "content": "Yes."}}]}).encode()
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        if handler.close_connection:
            handler.send_header("Connection", "close")
        handler.end_headers()
        handler.wfile.write(data)

    def recover(self) -> int:
        """Answer every request from now on; returns the number of requests so far."""
        with self._lock:
            self.recovered.set()
            asked = self.requests
        if not self._serving:  # "unaccepted": drop the connections of the stopped run waiting in the backlog
            self.server.socket.setblocking(False)
            try:
                while True:
                    self.server.socket.accept()[0].close()
            except BlockingIOError:
                pass
            self.server.socket.setblocking(True)
            self._serve()
        return asked

    def close(self) -> None:
        self.recovered.set()
        if self._serving:
            self.server.shutdown()
        self.server.server_close()


def stored_rows(database: Path, query: str) -> list[tuple]:
    """``query``'s rows in the SQLite file a command writes (none yet: no file, or no table in it)."""
    if not database.exists():
        return []
    try:
        with sqlite3.connect(f"{database.as_uri()}?mode=ro", uri=True) as db:
            return db.execute(query).fetchall()
    except sqlite3.OperationalError:  # the table is not made yet
        return []


def interrupted(command: list[str], endpoint: StallingEndpoint, signum: int,
                stored: Callable[[], int]) -> tuple[int, float, str]:
    """Run ``command`` until its calls stall and ``stored()`` counts the answers it was sent, send it
    ``signum``: its exit status, the seconds it took to stop and its output."""
    child = subprocess.Popen([sys.executable, "-m", *command], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    try:
        assert endpoint.stalled.wait(120), "no call reached the endpoint"
        time.sleep(1)  # every worker is in a call by now
        deadline = time.monotonic() + 120
        while stored() < ANSWERED_FIRST:  # the answers sent are stored: within the second above unless loaded
            assert time.monotonic() < deadline and child.poll() is None, "the answers sent were not stored"
            time.sleep(0.05)
        child.send_signal(signum)
        sent = time.monotonic()
        output, _ = child.communicate(timeout=30)
        return child.returncode, time.monotonic() - sent, output
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


#: How each CLI ends on an interrupt, as it did before the calls were cut: SIGTERM is 143 (run_cli); Ctrl-C is
#: click's "Aborted!" for the build, a hint to resume for `benchmark run`; status 130 after Ctrl-C, 143 after SIGTERM.
BUILD_INTERRUPTED = {signal.SIGINT: 128 + signal.SIGINT, signal.SIGTERM: 128 + signal.SIGTERM}
BENCHMARK_INTERRUPTED = {signal.SIGINT: 128 + signal.SIGINT, signal.SIGTERM: 128 + signal.SIGTERM}

CASES = [(signal.SIGINT, "hang"), (signal.SIGTERM, "drip"),
         pytest.param(signal.SIGINT, "unaccepted", marks=pytest.mark.skipif(
             not DROPS_SYNS_OF_A_FULL_BACKLOG, reason="connects to a full backlog are refused, not left hanging"))]
CASE_IDS = ["ctrl-c-unanswered", "sigterm-dripping", "ctrl-c-never-accepted"]


@pytest.mark.parametrize(("signum", "stall"), CASES, ids=CASE_IDS)
def test_an_interrupted_build_stops_at_once_and_resumes(tmp_path, signum, stall):
    cache = tmp_path / "work" / "relevance-cache.sqlite"

    def answers() -> list[tuple[str, str]]:
        return stored_rows(cache, "SELECT status, answer FROM answers WHERE model = 'm'")

    endpoint = StallingEndpoint(ANSWERED_FIRST, stall)
    command = ["reddit_amazon", "build", "--out", str(tmp_path / "ds"), "--workdir", str(tmp_path / "work"),
               "--llm-model", "m", "--llm-base-url", endpoint.url, "--llm-concurrency", "4", "--no-images",
               "--retrievers", "none"]  # the relevance stage is what is cut: no `retrieval` extra needed
    try:
        status, took, output = interrupted(command, endpoint, signum, lambda: len(answers()))
        assert status == BUILD_INTERRUPTED[signum] and took < STOPS_WITHIN_S, (status, took, output)
        assert output.rstrip().endswith("Aborted!") and "Traceback" not in output, output
        assert answers() == [("ok", "Yes.")] * ANSWERED_FIRST  # neither the cut calls nor their failures

        asked_before = endpoint.recover()  # the same URL: the endpoint is part of each answer's key
        rerun = subprocess.run([sys.executable, "-m", *command], capture_output=True, text=True, timeout=300)
    finally:
        endpoint.close()
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    asked_again = endpoint.requests - asked_before
    assert asked_again == len(answers()) - ANSWERED_FIRST  # the answers of the interrupted run are not asked again
    # The build's calls, both runs': each answer was paid once, before the interruption or after it.
    assert json.loads((tmp_path / "ds" / "manifest.json").read_text())["build_reports"]["relevance"]["calls_made"] \
        == len(answers()) == ANSWERED_FIRST + asked_again


def test_ctrl_c_pressed_again_while_the_build_exits_keeps_status_130_and_the_resume(tmp_path):
    """Ctrl-C pressed twice, or held: a Ctrl-C while the interrupted build was exiting (after "Aborted!", in the
    interpreter's finalization, where SIGINT is back to its default action) killed it by SIGINT, status -2 to
    subprocess (7 of 8 runs with the second Ctrl-C 0.05-0.3 s after the first), not the 130 it was exiting with."""
    cache = tmp_path / "work" / "relevance-cache.sqlite"

    def answers() -> list[tuple[str, str]]:
        return stored_rows(cache, "SELECT status, answer FROM answers WHERE model = 'm'")

    endpoint = StallingEndpoint(ANSWERED_FIRST, "hang")
    command = ["reddit_amazon", "build", "--out", str(tmp_path / "ds"), "--workdir", str(tmp_path / "work"),
               "--llm-model", "m", "--llm-base-url", endpoint.url, "--llm-concurrency", "4", "--no-images",
               "--retrievers", "none"]
    child = subprocess.Popen([sys.executable, "-m", *command], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    try:
        assert endpoint.stalled.wait(120), "no call reached the endpoint"
        deadline = time.monotonic() + 120
        while len(answers()) < ANSWERED_FIRST:
            assert time.monotonic() < deadline and child.poll() is None, "the answers sent were not stored"
            time.sleep(0.05)
        stop = time.monotonic() + 30
        while child.poll() is None and time.monotonic() < stop:  # a Ctrl-C every 20 ms until the build has exited
            child.send_signal(signal.SIGINT)
            time.sleep(0.02)
        output, _ = child.communicate(timeout=30)
        assert child.returncode == 128 + signal.SIGINT, (child.returncode, output)
        assert output.rstrip().endswith("Aborted!") and "Traceback" not in output, output
        assert answers() == [("ok", "Yes.")] * ANSWERED_FIRST

        asked_before = endpoint.recover()
        rerun = subprocess.run([sys.executable, "-m", *command], capture_output=True, text=True, timeout=300)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        endpoint.close()
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert endpoint.requests - asked_before == len(answers()) - ANSWERED_FIRST  # the kept answers not asked again


@pytest.mark.parametrize(("signum", "stall"), CASES, ids=CASE_IDS)
def test_an_interrupted_openai_chat_run_stops_at_once_and_resumes(tmp_path, signum, stall):
    dataset = make_synthetic_dataset(tmp_path / "ds", records_per_domain=RECORDS, domains=("home",))
    responses = tmp_path / "chat-cache" / "responses.sqlite"

    def cached() -> list[str]:
        return [text for (text,) in stored_rows(responses, "SELECT text FROM response")]

    endpoint = StallingEndpoint(ANSWERED_FIRST, stall)
    command = ["benchmark", "run", "--model", "openai-chat", "--dataset", str(dataset), "--out", str(tmp_path / "run"),
               "--quiet", "--bootstrap-samples", "0", "--model-args",
               f"base_url={endpoint.url},cache_dir={tmp_path / 'chat-cache'},max_workers=4"]
    try:
        status, took, output = interrupted(command, endpoint, signum, lambda: len(cached()))
        assert status == BENCHMARK_INTERRUPTED[signum] and took < STOPS_WITHIN_S, (status, took, output)
        assert "run the same command again to resume" in output and "Traceback" not in output, output
        assert cached() == ["Yes."] * ANSWERED_FIRST

        asked_before = endpoint.recover()
        rerun = subprocess.run([sys.executable, "-m", *command], capture_output=True, text=True, timeout=120)
    finally:
        endpoint.close()
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert endpoint.requests - asked_before == len(cached()) - ANSWERED_FIRST == RECORDS - ANSWERED_FIRST
    assert len((tmp_path / "run" / "predictions.jsonl").read_text().splitlines()) == RECORDS


def test_the_cut_ends_a_call_over_https(tmp_path, monkeypatch):
    """OpenAI's endpoint is https: wrapping a socket in TLS detaches the plain one, so the cut must shut the
    TLS socket (it once shut only the detached one, and the call ran to its timeout)."""
    import shutil
    import ssl

    from reddit_amazon.openai_endpoint import OpenConnections, make_client

    if shutil.which("openssl") is None:
        pytest.skip("no openssl to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    endpoint = StallingEndpoint(0, "hang")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    endpoint.server.socket = context.wrap_socket(endpoint.server.socket, server_side=True)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    connections = OpenConnections()
    client = make_client(endpoint.url.replace("http:", "https:"), 60, "sk-test", connections=connections)
    failures: list[BaseException] = []

    def call() -> None:
        try:
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        except BaseException as error:  # noqa: BLE001 - the cut call's error, checked below
            failures.append(error)

    caller = threading.Thread(target=call, daemon=True)
    try:
        caller.start()
        assert endpoint.stalled.wait(30), "the call never reached the endpoint"
        connections.cut([caller])
        caller.join(STOPS_WITHIN_S)
        assert not caller.is_alive(), "the cut left the https call waiting for its timeout"
        assert failures and type(failures[0]).__name__ == "APIConnectionError", failures
    finally:
        endpoint.close()


def test_the_readme_gives_the_exit_statuses_an_interrupt_gives():
    """Every CLI exits 130 after Ctrl-C (the build and lavic-ref gave click's 1) and 143 after SIGTERM."""
    from pathlib import Path

    readme = " ".join((Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8").split())
    assert BENCHMARK_INTERRUPTED == BUILD_INTERRUPTED
    assert (f"{BUILD_INTERRUPTED[signal.SIGINT]} Ctrl-C, {BUILD_INTERRUPTED[signal.SIGTERM]} SIGTERM" in readme)


def test_ctrl_c_while_the_calls_in_flight_finish_after_a_failure_cuts_them():
    """A call failed for good (a 401): leaving the pool waits for the other calls to answer or time out (120 s for
    openai-chat, 60 s for the build). Ctrl-C then, as a user seeing the command hang presses it, waited too."""
    import os

    from reddit_amazon.openai_endpoint import OpenConnections, make_client, stoppable_calls

    endpoint = StallingEndpoint(0, "hang")
    connections = OpenConnections()
    client = make_client(endpoint.url, 60, "sk-test", connections=connections)

    def call() -> None:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])

    def press_ctrl_c() -> None:
        time.sleep(1)  # the main thread waits in the pool's shutdown by now
        os.kill(os.getpid(), signal.SIGINT)

    try:
        with pytest.raises(KeyboardInterrupt):
            with stoppable_calls(2, connections) as (pool, _):
                in_flight = pool.submit(call)
                assert endpoint.stalled.wait(30), "the call never reached the endpoint"
                threading.Thread(target=press_ctrl_c, daemon=True).start()
                raise RuntimeError("another call failed for good")
        assert in_flight.exception(timeout=STOPS_WITHIN_S) is not None  # cut, not left to its timeout
    finally:
        endpoint.close()


@pytest.mark.skipif(not DROPS_SYNS_OF_A_FULL_BACKLOG, reason="connects to a full backlog are refused, not left hanging")
def test_ctrl_c_leaves_a_call_still_connecting_which_sends_nothing_once_connected():
    """A call whose connect hangs (a server that never accepts, a firewall dropping packets) has no socket to cut:
    Ctrl-C waited out its connect timeout. It is now left behind, and cut as it connects: its request is never
    sent (a late answer would be paid for, and stored while the command cleans up)."""
    from reddit_amazon.openai_endpoint import OpenConnections, make_client, stoppable_calls, with_retries

    listener = socket.create_server(("127.0.0.1", 0), backlog=0)
    port = listener.getsockname()[1]
    waiting = socket.create_connection(("127.0.0.1", port))  # fills the backlog: the next connect hangs
    connections = OpenConnections()
    client = make_client(f"http://127.0.0.1:{port}/v1", 10, "sk-test", connections=connections)
    try:
        with pytest.raises(KeyboardInterrupt):
            with stoppable_calls(2, connections) as (pool, stopping):
                left = pool.submit(with_retries, lambda: client.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": "hi"}]), 3, cancel=stopping)
                deadline = time.monotonic() + 30
                while not connects_hanging(port):  # the call is connecting (within ~0.1 s unloaded)
                    assert time.monotonic() < deadline and not left.done(), "the call never connected"
                    time.sleep(0.05)
                started = time.monotonic()
                raise KeyboardInterrupt
        assert time.monotonic() - started < STOPS_WITHIN_S / 2, "Ctrl-C waited for the connect's timeout"
        assert not left.done()

        listener.accept()[0].close()  # room in the backlog: the call's next SYN connects it
        listener.settimeout(10)
        connection, _ = listener.accept()
        connection.settimeout(10)
        try:
            sent = connection.recv(1 << 16)
        except ConnectionResetError:
            sent = b""
        assert sent == b"", sent[:200]
        assert type(left.exception(timeout=STOPS_WITHIN_S)).__name__ == "CallCancelled"
    finally:
        waiting.close()
        listener.close()
