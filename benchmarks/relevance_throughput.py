"""Calls per second of the build's relevance filter vs a plain ``openai`` client, against the same loopback stub.

A stub OpenAI-compatible server (in a process of its own, so that it takes no time from the clients' threads)
answers every chat completion "Yes." after ``--latency-ms``, as a local vLLM server would at a fixed speed. At
each concurrency, in the same run: a plain ``openai.OpenAI`` client sending the same number of distinct prompts
from that many threads (the floor), then ``run_filter`` into a fresh answer cache in ``--dir`` (each answer
committed as it arrives, as in a build). The ratio run_filter / plain is what the filter's own work costs.

    python benchmarks/relevance_throughput.py
    python benchmarks/relevance_throughput.py --calls 800 --latency-ms 50 --concurrency 8 32
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

MODEL = "stub-model"
STUB_BACKLOG = 256  # connections the stub holds before accepting them: more than any --concurrency


def serve(latency_s: float, port_out) -> None:
    """The stub endpoint, serving until the process is ended (see :func:`stub_server`)."""
    server = stub_server(latency_s)
    port_out.send(server.server_address[1])
    server.serve_forever()


def stub_server(latency_s: float) -> ThreadingHTTPServer:
    """A loopback server, bound and listening, answering every POST "Yes." after ``latency_s``; keeps connections
    alive."""
    answer = json.dumps({
        "id": "c1", "object": "chat.completion", "created": 0, "model": MODEL,
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "Yes."}}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }).encode()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go in two writes: Nagle would hold the body a delayed ACK

        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            time.sleep(latency_s)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        # listen()'s backlog, read when the server binds (set on an instance, it came too late: the default 5 then
        # reset connections when 32 clients connected at once, and the plain client, which does not retry, failed)
        request_queue_size = STUB_BACKLOG

    return Server(("127.0.0.1", 0), Handler)


def conversations(count: int, round_: int) -> list:
    """``count`` conversations whose prompts differ from those of every other round (no cached answer)."""
    from reddit_amazon.schema import Conversation, Turn

    return [Conversation(example_id=f"r{round_}-{i}", domain="", thread_id=f"t{i}", subreddit="s", created_utc=1,
                         turns=[Turn(kind="submission", text=f"Looking for a lamp #{round_}-{i}")],
                         context_items=[], gt_text="Try this one.", gt_items=["B000000001"])
            for i in range(count)]


def plain_client(url: str, records: list, concurrency: int) -> float:
    """Calls/s of a plain openai client sending each record's prompt once."""
    import openai

    from reddit_amazon.relevance import default_template, render_prompt

    template = default_template()
    client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60)

    def ask(record) -> str:
        response = client.chat.completions.create(
            model=MODEL, temperature=0, messages=[{"role": "user", "content": render_prompt(template, record)}])
        return response.choices[0].message.content

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        answers = list(pool.map(ask, records))
    elapsed = time.perf_counter() - started
    assert answers == ["Yes."] * len(records)
    client.close()
    return len(records) / elapsed


def filter_run(url: str, records: list, concurrency: int, folder: Path) -> float:
    """Calls/s of ``run_filter`` answering every record into a fresh cache in ``folder``."""
    from reddit_amazon.relevance import AnswerCache, FilterOptions, run_filter

    options = FilterOptions(model=MODEL, base_url=url, concurrency=concurrency, timeout_s=60)
    with AnswerCache(folder / f"relevance-cache-c{concurrency}.sqlite") as cache:
        started = time.perf_counter()
        result = run_filter(records, cache, options, api_key="unused")
        elapsed = time.perf_counter() - started
        assert result.calls_made == len(records) and len(result.kept) == len(records), result.counts
    return len(records) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=800, help="distinct prompts per measurement")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="the stub's time to answer each call")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--dir", type=Path, default=None,
                        help="where the answer caches go (its file system's fsync cost counts); a temporary folder")
    args = parser.parse_args()

    receiving, sending = multiprocessing.Pipe(duplex=False)
    stub = multiprocessing.Process(target=serve, args=(args.latency_ms / 1000, sending), daemon=True)
    stub.start()
    url = f"http://127.0.0.1:{receiving.recv()}/v1"
    try:
        with tempfile.TemporaryDirectory(prefix="relevance-throughput-", dir=args.dir) as folder:
            print(f"{args.calls} calls per measurement, stub latency {args.latency_ms:g} ms, caches in {folder}")
            print(f"{'concurrency':>11} {'plain openai':>14} {'run_filter':>12} {'ratio':>6}   (calls/s)")
            for round_, concurrency in enumerate(args.concurrency):
                plain = plain_client(url, conversations(args.calls, round_), concurrency)
                filtered = filter_run(url, conversations(args.calls, round_), concurrency, Path(folder))
                ideal = concurrency / (args.latency_ms / 1000)
                print(f"{concurrency:>11} {plain:>14.0f} {filtered:>12.0f} {filtered / plain:>5.2f}x"
                      f"   (latency bound: {ideal:.0f})")
    finally:
        stub.terminate()
        stub.join()


if __name__ == "__main__":
    main()
