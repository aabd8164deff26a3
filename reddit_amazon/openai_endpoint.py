"""Talking to an OpenAI-compatible endpoint: the client, which errors to retry, request parameters as the
endpoint accepts them, and a reasoning model's thoughts told from its answer. Used by the relevance filter, the ``openai-emb`` retriever and the
``openai-chat`` recommender.

The key comes from ``OPENAI_API_KEY`` only and is never logged or written. With an explicit
``base_url`` (vLLM, llama.cpp, ...) no key is needed: such servers accept any.

OpenAI's reasoning models (o-series, gpt-5) refuse ``max_tokens`` (they take
``max_completion_tokens``) and any ``temperature`` but their default, answering 400 with the
parameter named in the error. :class:`ChatParameters` learns this from the first refusal; without
it such a refusal would be taken as an answer about one record and repeated for every record (the
relevance filter would reject every conversation, the benchmark would score every answer invalid).
"""

from __future__ import annotations

import functools
import importlib
import itertools
import json
import logging
import os
import queue
import re
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import SplitResult, parse_qsl, urlencode, urlsplit, urlunsplit

from reddit_amazon.redaction import REDACTED, URL_USERINFO, is_secret_parameter, redact_url_credentials

log = logging.getLogger(__name__)
T = TypeVar("T")


class MissingAPIKeyError(RuntimeError):
    """``OPENAI_API_KEY`` is not set and no ``base_url`` was given (a usage error, reported without a traceback)."""


class CallCancelled(RuntimeError):
    """The caller gave up on this call (another call failed for good, or Ctrl-C) before its retries ran out."""


DEFAULT_BASE_URL = "https://api.openai.com/v1"


def endpoint_url(base_url: str | None) -> str:
    """The endpoint a client made with ``base_url`` talks to (``OPENAI_BASE_URL`` when it is None)."""
    return base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL


def endpoint_key(base_url: str | None) -> str | None:
    """The endpoint as cache keys and records name it: None for OpenAI's own (the key earlier releases used, so
    their cached answers still count), else its URL as :func:`display_url` gives it, so two servers' answers
    never mix and one server's do not split over ``/v1`` and ``/v1/``."""
    endpoint = display_url(endpoint_url(base_url))
    return None if endpoint == DEFAULT_BASE_URL else endpoint


def _split(url: str) -> SplitResult:
    """``urlsplit(url)``, raising ``ValueError`` on a malformed port too (urlsplit parses it only when asked)."""
    parts = urlsplit(url)
    parts.port  # noqa: B018 - parsing the port is the check
    return parts


def display_url(url: str) -> str:
    """``url`` as it may be written down: without credentials (``user:password@``, secret-named parameters of
    its query, its path (``;api_key=…``, a segment of its own: ``/hdnts=…``, an Akamai token) or its fragment
    (``#access_token=…``), and those of a URL in a query value or the fragment:
    ``?next=https%3A%2F%2F…%3Ftoken%3D…``), with the scheme and host in
    lower case and no trailing ``/``."""
    try:
        parts = _split(url)
    except ValueError:  # a bad port or bracket: not a URL a client could use, but never one to write out whole
        return _redacted_path(URL_USERINFO.sub("", re.split(r"[?#]", url, maxsplit=1)[0]))
    hostname = parts.hostname or ""
    host = (f"[{hostname}]" if ":" in hostname else hostname) + (f":{parts.port}" if parts.port else "")
    query = urlencode([(k, "<redacted>" if is_secret_parameter(k) else redact_url_credentials(v))
                       for k, v in parse_qsl(parts.query, keep_blank_values=True)])
    return urlunsplit((parts.scheme.lower(), host, _redacted_path(parts.path.rstrip("/")), query,
                       _redacted_fragment(parts.fragment)))


def has_credentials(url: str) -> bool:
    """``url`` holds credentials (``user:password@``, a secret-named parameter in its query, path or fragment, or
    credentials of a URL nested in a query value or the fragment) or cannot be parsed to tell: :func:`display_url`
    is then the only form in which it may be written down."""
    try:
        parts = _split(url)
    except ValueError:
        return True
    return ("@" in parts.netloc
            or any(is_secret_parameter(k) or redact_url_credentials(v) != v for k, v in parse_qsl(parts.query))
            or _redacted_path(parts.path) != parts.path or _redacted_fragment(parts.fragment) != parts.fragment)


#: A ``name=`` in a path: a path parameter (``v1;api_key=…``, ``&`` too) or a segment of its own (a CDN's token:
#: ``/hdnts=exp=…~acl=/*~hmac=…/image.jpg``).
_PATH_PARAMETER = re.compile(r"(?:^|(?<=[/;&]))(?P<name>[^/;&=]+)=")
#: What ends a path parameter's value: its segment's ``/`` or the next parameter.
_PATH_PARAMETER_END = re.compile(r"[/;&]")
#: An Akamai token's ``~``-separated fields, up to the value of its last, ``hmac``: its ``acl`` holds the paths it
#: grants (``acl=/p/*``), so the token runs on past its segment's ``/``.
_AKAMAI_TOKEN_FIELDS = re.compile(r"(?:[\w.-]+=[^~?#]*~)+hmac=[^/;~?#]*", re.IGNORECASE)


def _redacted_path(path: str) -> str:
    """``path`` with the values of its secret-named parameters redacted: path parameters (``v1;api_key=k;v=2``)
    and segments of their own (``/hdnts=…/image.jpg``). A value ends at its segment's ``/`` or the segment's next
    parameter (``v=2`` above), so two endpoints that differ after it stay two; an Akamai token's (``hdnts``,
    ``__token__``, ...: ``exp=…~acl=/p/*~hmac=…``), whose ``acl`` holds ``/``, at the end of its ``hmac``."""
    shown, end = [], 0
    for parameter in _PATH_PARAMETER.finditer(path):
        if parameter.start() < end or not is_secret_parameter(parameter["name"]):
            continue  # inside a value just redacted, or no secret
        start = parameter.end()
        token = _AKAMAI_TOKEN_FIELDS.match(path, start)
        following = _PATH_PARAMETER_END.search(path, start)
        value_end = token.end() if token else following.start() if following else len(path)
        if value_end > start:
            shown += [path[end:start], REDACTED]
            end = value_end
    return "".join(shown) + path[end:]


def _redacted_fragment(fragment: str) -> str:
    return redact_url_credentials("#" + fragment)[1:] if fragment else fragment


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot be an endpoint's base URL (scheme, host, port), or None."""
    try:
        parts = _split(url)
    except ValueError as error:
        return str(error)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "expected http(s)://host[:port]/path"
    return None


#: Rough English average, for ``--dry-run`` estimates only (no tokenizer: the model may be any endpoint's).
CHARS_PER_TOKEN = 4


def approx_tokens(texts: Iterable[str]) -> int:
    """The approximate token count of ``texts`` sent to an endpoint (:data:`CHARS_PER_TOKEN`)."""
    return sum(map(len, texts)) // CHARS_PER_TOKEN


#: The most bytes one answer may hold. Chat answers and embedding batches are a few MB at most; without a
#: bound a runaway body is read whole into memory (a 600 MB answer took 1.4 GB, per concurrent call).
MAX_ANSWER_BYTES = 64 << 20


def make_client(base_url: str | None, timeout: float | None, api_key: str | None = None,
                max_answer_bytes: int = MAX_ANSWER_BYTES, connections: OpenConnections | None = None,
                on_request: Callable[[], None] | None = None):
    """An ``openai.OpenAI`` client that never retries on its own (:func:`with_retries` does, with backoff).

    ``timeout`` bounds each read, and also the whole body of an answer once its headers are in (a server
    sending a byte a second never hits a per-read timeout); a body over ``max_answer_bytes`` is cut off.
    Both end the call with a transport error, which is retried like a dropped connection. The client's
    connections are recorded in ``connections``, so that :func:`stoppable_calls` can cut them on Ctrl-C.
    ``on_request`` is called as each HTTP request is sent, retries included (what an endpoint billing per
    request counts).
    """
    from openai import DefaultHttpxClient, OpenAI

    api_key = api_key or os.environ.get("OPENAI_API_KEY")
    if not api_key:
        if endpoint_url(base_url) == DEFAULT_BASE_URL:
            raise MissingAPIKeyError("OPENAI_API_KEY is not set (or give the base URL of an OpenAI-compatible server)")
        api_key = "unused"  # local servers accept any key; the client requires one

    http = importlib.import_module(DefaultHttpxClient.__mro__[1].__module__.partition(".")[0])  # httpx or httpx2
    connections = OpenConnections() if connections is None else connections

    def trace_the_connections(request) -> None:  # an event hook: runs before each request is sent
        request.extensions["trace"] = connections.trace

    def bound_the_body(response) -> None:  # an event hook: runs once the headers are in, before the body is read
        deadline = float("inf") if timeout is None else time.monotonic() + timeout  # None: no timeout, as before
        response.stream = _bounded_body_class(http)(response.stream, deadline, max_answer_bytes)

    request_hooks: list[Callable[[Any], None]] = [trace_the_connections]
    if on_request is not None:
        request_hooks.append(lambda request: on_request())
    http_client = DefaultHttpxClient(timeout=timeout, event_hooks={"request": request_hooks,
                                                                   "response": [bound_the_body]})
    base_url, query = _without_query(base_url or os.environ.get("OPENAI_BASE_URL"))
    return OpenAI(api_key=api_key, base_url=base_url, max_retries=0, timeout=timeout, http_client=http_client,
                  default_query=query)


def _without_query(base_url: str | None) -> tuple[str | None, dict[str, str] | None]:
    """``base_url`` without its query string, and that query's parameters, which the client sends with every
    request: Azure-style endpoints need ``?api-version=…``, and the client appends each request's path to the
    whole base URL (``…/v1?api-version=1/chat/completions``)."""
    if base_url is None or "?" not in base_url:
        return base_url, None
    parts = urlsplit(base_url)
    return urlunsplit(parts._replace(query="")), dict(parse_qsl(parts.query, keep_blank_values=True)) or None


class OpenConnections:
    """The sockets of a client's connections, learnt from httpcore's ``trace`` extension as each connects (and,
    for ``https``, once TLS wraps it: wrapping detaches the plain socket), so that another thread can end the
    calls in flight at once (a thread blocked reading a socket wakes only when the socket is shut, not when it
    is closed)."""

    def __init__(self) -> None:
        self._sockets: weakref.WeakSet[socket.socket] = weakref.WeakSet()
        self._cut_threads: weakref.WeakSet[threading.Thread] = weakref.WeakSet()
        self._lock = threading.Lock()

    def trace(self, event: str, info: dict[str, Any]) -> None:
        if event.endswith((".connect_tcp.complete", ".connect_unix_socket.complete", ".start_tls.complete")):
            sock = info["return_value"].get_extra_info("socket")
            if sock is None:  # a network backend without sockets
                return
            with self._lock:
                self._sockets.add(sock)
                cut = threading.current_thread() in self._cut_threads
            if cut:
                _shut(sock)

    def cut(self, threads: Iterable[threading.Thread]) -> None:
        """Shut every connection, and any that ``threads`` (those making the calls to stop) connect from now on: a
        read in flight ends as a dropped connection, and a call still connecting (its socket is not known before
        it connects: a server that never accepts) or about to connect ends as it connects, its request unsent.
        The connections are not used again (an idle one that was shut reads as closed by the server, and is
        dropped by the pool); other threads' new connections are not cut."""
        with self._lock:
            self._cut_threads.update(threads)
            sockets = list(self._sockets)
        for sock in sockets:
            _shut(sock)


def _shut(sock: socket.socket) -> None:
    try:  # socket's own shutdown, not SSLSocket's: that also unwraps it under the thread reading it
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:  # already closed
        pass


@functools.cache
def _bounded_body_class(http: Any) -> type:
    """A response body stream of ``http`` (httpx, or httpx2 for newer ``openai``) that ends in a read timeout
    past a deadline and in a read error past a size."""

    class BoundedBody(http.SyncByteStream):
        def __init__(self, stream: Any, deadline: float, max_bytes: int):
            self._stream, self._deadline, self._max_bytes = stream, deadline, max_bytes

        def __iter__(self) -> Iterator[bytes]:
            received = 0
            for chunk in self._stream:
                received += len(chunk)
                if received > self._max_bytes:
                    raise http.ReadError(f"the answer is longer than {self._max_bytes:,} bytes: cut off")
                if time.monotonic() > self._deadline:
                    raise http.ReadTimeout("the answer's body did not arrive within the timeout")
                yield chunk

        def close(self) -> None:
            self._stream.close()

    return BoundedBody


class MalformedResponseError(ValueError):
    """The endpoint answered 200 with something that is not a chat completion (no choices, an error
    object): retried like a server error, never taken as an empty answer."""


def is_transient(error: BaseException) -> bool:
    """Connection problems, timeouts, rate limits, server errors and malformed answers (a 200 whose body is
    not JSON included: a gateway's glitch) are retried; bad requests are not."""
    import openai

    if isinstance(error, (openai.APIConnectionError, MalformedResponseError, json.JSONDecodeError)):  # + timeouts
        return True
    if isinstance(error, openai.APIStatusError):
        return error.status_code in (408, 409, 429) or error.status_code >= 500
    return False


#: What a refusal says when it is about one prompt (too long, flagged), not about the request settings.
_PROMPT_REFUSAL_CODES = {"context_length_exceeded", "string_above_max_length", "content_filter",
                         "content_policy_violation", "invalid_prompt", "exceed_context_size_error"}
_PROMPT_REFUSAL_TEXT = re.compile(r"context (length|size|window)|exceeds? .*context|too long|too many tokens"
                                  r"|maximum .*tokens|longer than the maximum|content (management )?policy"
                                  r"|content filter|flagged|safety|`?inputs`? tokens", re.IGNORECASE)
#: A refusal naming the answer's token limit is about a setting every prompt shares (vLLM: "'max_tokens' or
#: 'max_completion_tokens' is too large: 4000. This model's maximum context length is 2048 tokens ...").
_SETTING_REFUSAL_TEXT = re.compile(r"\bmax_(?:completion_)?tokens\b", re.IGNORECASE)
#: Statuses a refusal of one prompt comes with: 400, 413 (payload too large), 422 (TGI's input validation).
PROMPT_REFUSAL_STATUSES = (400, 413, 422)


def refuses_this_prompt_only(error: BaseException) -> bool:
    """Whether a 400 / 413 / 422 refusal is about this prompt alone (every other prompt may pass). Anything
    else, such as an unknown model or a parameter the endpoint does not take, would refuse every call."""
    status = getattr(error, "status_code", 400)
    if status not in PROMPT_REFUSAL_STATUSES:
        return False
    if status == 413:  # the request body, i.e. this prompt, is too large
        return True
    codes = {str(getattr(error, name, "") or "") for name in ("code", "type")}  # llama.cpp puts it in "type"
    message = str(getattr(error, "message", "") or error)
    if _SETTING_REFUSAL_TEXT.search(message):
        return False
    return bool(codes & _PROMPT_REFUSAL_CODES) or bool(_PROMPT_REFUSAL_TEXT.search(message))


class RefusalStreak:
    """Stops a run whose first calls are all refused "about this prompt": a refusal that hits every prompt is
    about a setting the patterns did not recognise, and recording it for every record would be silent.

    Until some call is answered, refusals are held back (not stored); the first answer stores them, and
    ``limit`` refusals with no answer raise :class:`RefusedEverything` and drop them.
    """

    def __init__(self, limit: int = 5):
        self.limit = limit
        self._answered = False
        self._held: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    def refused(self, store: Callable[[], None], reason: str) -> None:
        with self._lock:
            if self._answered:
                store()
                return
            self._held.append(store)
            if len(self._held) >= self.limit:
                self._held.clear()
                raise RefusedEverything(f"the endpoint refused each of the first {self.limit} prompts it was "
                                        f"sent, which points at a setting, not at the prompts; the last: {reason}")

    def answered(self) -> None:
        with self._lock:
            if not self._answered:
                self._answered = True
                self.flush()

    def flush(self) -> None:
        """Store the refusals held back (a run with fewer prompts than ``limit``, all refused)."""
        held, self._held = self._held, []
        for store in held:
            store()


class RefusedEverything(RuntimeError):
    """See :class:`RefusalStreak`."""


def is_fatal(error: BaseException) -> bool:
    """Errors every other call would hit too (bad key, no access, unknown model): stop at once."""
    import openai

    return isinstance(error, (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError))


def with_retries(call: Callable[[], T], max_attempts: int, initial_wait: float = 0.5, max_wait: float = 30.0,
                 cancel: threading.Event | None = None) -> T:
    """``call()``, retried on :func:`is_transient` errors with jittered exponential backoff (threads
    stay apart); a server's ``Retry-After`` is waited out when it asks for longer (up to 10 minutes).

    Setting ``cancel`` ends the wait between attempts at once and raises :class:`CallCancelled`
    instead of trying again (a call already sent runs to its timeout, unless its connection is cut: see
    :func:`stoppable_calls`).
    """
    from tenacity import (Retrying, retry_if_exception, sleep, sleep_using_event, stop_after_attempt,
                          wait_random_exponential)

    backoff = wait_random_exponential(multiplier=initial_wait, max=max_wait)

    def wait(state: Any) -> float:
        asked = retry_after(state.outcome.exception())
        return max(backoff(state), min(asked, MAX_RETRY_AFTER)) if asked is not None else backoff(state)

    def attempt() -> T:
        if cancel is not None and cancel.is_set():
            raise CallCancelled("given up: the run is stopping (a call failed for good, or Ctrl-C)")
        return call()

    # A Retrying called directly: the ``retry`` decorator would also wrap ``attempt`` and copy itself, each call.
    retrying = Retrying(retry=retry_if_exception(is_transient), stop=stop_after_attempt(max_attempts), wait=wait,
                        sleep=sleep if cancel is None else sleep_using_event(cancel), reraise=True)
    return retrying(attempt)


MAX_RETRY_AFTER = 600.0


@contextmanager
def stoppable_calls(workers: int, connections: OpenConnections) -> Iterator[tuple[Executor, threading.Event]]:
    """A thread pool for endpoint calls and the ``cancel`` event to give their :func:`with_retries`.

    Leaving the block (the caller stopped at a call that failed for good, a fatal error, Ctrl-C) sets the
    event, so calls waiting to retry give up instead of waiting out a backoff or a ``Retry-After``, and
    cancels the calls not yet started; it returns once the calls in flight have finished. On Ctrl-C (or
    SIGTERM, which ``run_cli`` turns into one) it returns at once: ``connections``, those of the calls' client,
    are cut, the calls end as cancelled, neither retried nor answered, and a call still connecting (a server
    that never accepts) is left to end on its own, sending nothing (see :class:`CallThreads`). Otherwise calls
    already sent run to their answer or their timeout (an answer received is one less to pay for), unless
    Ctrl-C comes while waiting for them.
    """
    stopping = threading.Event()
    pool = CallThreads(max(1, workers))
    interrupted = False
    try:
        yield pool, stopping
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        stopping.set()  # before the cut: a call that wakes from it is not sent again
        try:
            if interrupted:
                _cut(pool, connections)
            else:
                pool.shutdown(wait=True, cancel_futures=True)
        except KeyboardInterrupt:  # Ctrl-C while waiting for the calls in flight after a failure: cut them now
            _cut(pool, connections)
            raise


#: How long a Ctrl-C waits for the calls it cut to end (they end within milliseconds; one still connecting
#: is left behind).
CUT_CALLS_WAIT_S = 0.5


def _cut(pool: CallThreads, connections: OpenConnections) -> None:
    connections.cut(pool.threads)
    pool.shutdown(wait=False, cancel_futures=True)
    deadline = time.monotonic() + CUT_CALLS_WAIT_S
    for thread in pool.threads:
        thread.join(max(0.0, deadline - time.monotonic()))


class CallThreads(Executor):
    """``ThreadPoolExecutor``'s work, but in daemon threads, which the interpreter does not wait for at exit.

    At exit the interpreter waits for each ``ThreadPoolExecutor`` thread to finish its call, and the call of one
    still connecting to a server that never accepts (a full backlog, a firewall dropping packets) cannot be cut
    short: its socket is not known before it connects. After Ctrl-C the process waited out that connect's
    timeout (60 s for the build, 120 s for ``openai-chat``); it now exits, and the call, cut as it connects
    (:meth:`OpenConnections.cut`), sends nothing meanwhile.
    """

    def __init__(self, workers: int) -> None:
        self._calls: queue.SimpleQueue[tuple[Future, Callable[..., Any], tuple, dict] | None] = queue.SimpleQueue()
        self._shut_down = False
        self.threads = [threading.Thread(target=self._work, name=f"endpoint-call-{n}", daemon=True)
                        for n in range(workers)]
        for thread in self.threads:
            thread.start()

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        if self._shut_down:
            raise RuntimeError("cannot submit calls after shutdown")
        future: Future[T] = Future()
        self._calls.put((future, fn, args, kwargs))
        return future

    def _work(self) -> None:
        while (call := self._calls.get()) is not None:
            future, fn, args, kwargs = call
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args, **kwargs))
                except BaseException as error:  # noqa: BLE001 - the caller's to see, as in ThreadPoolExecutor
                    future.set_exception(error)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._shut_down = True
        if cancel_futures:
            while True:
                try:
                    call = self._calls.get_nowait()
                except queue.Empty:
                    break
                if call is not None:
                    call[0].cancel()
        for _ in self.threads:
            self._calls.put(None)  # one each: a thread ends at the first it takes
        if wait:
            for thread in self.threads:
                thread.join()


def completed_in_window(pool: Executor, call: Callable[..., Any], arguments: Iterable[tuple],
                        window: int) -> Iterator[Future]:
    """The futures of ``call(*args)`` for each of ``arguments``, as they complete, with at most ``window``
    calls submitted and not finished: the arguments (a prompt each) are made as the calls go, so memory
    stays bounded whatever their number. Stopping the iteration submits nothing more."""
    # Each future puts itself in a queue as it completes. ``concurrent.futures.wait`` instead added and removed a
    # waiter on every pending future at each completion: at a window of 128 (32 threads, 50 ms calls) that took
    # ~110 us of CPU per call, against ~25 us now, CPU the calls' own threads wait for.
    completed: queue.SimpleQueue[Future] = queue.SimpleQueue()
    remaining = iter(arguments)

    def submit(args: tuple) -> None:
        pool.submit(call, *args).add_done_callback(completed.put)

    in_flight = 0
    for args in itertools.islice(remaining, max(1, window)):
        submit(args)
        in_flight += 1
    while in_flight:
        future = completed.get()
        in_flight -= 1
        for args in itertools.islice(remaining, 1):  # refill first: the workers stay busy
            submit(args)
            in_flight += 1
        yield future


def retry_after(error: BaseException | None) -> float | None:
    """Seconds an HTTP error's ``retry-after-ms`` / ``Retry-After`` header (seconds or a date) asks for."""
    headers = getattr(getattr(error, "response", None), "headers", None)
    if not headers:
        return None
    try:
        if "retry-after-ms" in headers:
            return float(headers["retry-after-ms"]) / 1000
        value = headers.get("retry-after")
        if value is None:
            return None
        try:
            return max(0.0, float(value))
        except ValueError:
            from email.utils import parsedate_to_datetime

            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class ChatParameters:
    """Rewrites requests as the endpoint asked in an earlier refusal; shared by threads."""

    def __init__(self, model: str):
        self.model = model
        self._rename_max_tokens = False
        self._drop_temperature = False
        self._lock = threading.Lock()

    def apply(self, request: dict[str, Any]) -> dict[str, Any]:
        """``request`` as this endpoint accepts it (a new dict)."""
        sent = dict(request)
        if self._rename_max_tokens and "max_tokens" in sent:
            sent["max_completion_tokens"] = sent.pop("max_tokens")
        if self._drop_temperature:
            sent.pop("temperature", None)
        return sent

    def learn(self, error: Any, sent: dict[str, Any]) -> bool:
        """Take note of what a 400 refusal of ``sent`` asks for; False when it is not about a parameter we set."""
        param, code = getattr(error, "param", None), getattr(error, "code", None)
        with self._lock:
            if param == "max_tokens" and code == "unsupported_parameter" and "max_tokens" in sent:
                if not self._rename_max_tokens:
                    log.warning("%s refuses max_tokens: sending max_completion_tokens instead", self.model)
                self._rename_max_tokens = True
                return True
            if param == "temperature" and code == "unsupported_value" and "temperature" in sent:
                if not self._drop_temperature:
                    log.warning("%s accepts only its default temperature: answers are sampled, not greedy", self.model)
                self._drop_temperature = True
                return True
        return False

    def create(self, client: Any, request: dict[str, Any], max_attempts: int, initial_wait: float = 0.5,
               max_wait: float = 30.0, cancel: threading.Event | None = None) -> Any:
        """``client.chat.completions.create`` for ``request`` as the endpoint accepts it, with retries
        (``cancel`` as in :func:`with_retries`).

        A refusal of a parameter this class can change is learnt and the request sent again; any
        other ``openai.BadRequestError`` (e.g. a prompt that is too long) is raised to the caller.
        """
        import openai

        while True:
            sent = self.apply(request)
            try:
                return with_retries(lambda: _checked(client.chat.completions.create(**sent)), max_attempts,
                                    initial_wait, max_wait, cancel)
            except openai.BadRequestError as error:
                if not self.learn(error, sent):
                    raise

    @property
    def adaptations(self) -> list[str]:
        """What was changed, for reports and manifests (empty when the endpoint took the requests as configured)."""
        return [name for name, on in (("max_tokens -> max_completion_tokens", self._rename_max_tokens),
                                      ("temperature dropped (model default)", self._drop_temperature)) if on]


def _checked(response: Any) -> Any:
    """``response`` if it is a chat completion with a message (some gateways answer 200 with an error).

    A message without text is accepted only with a reason the caller can act on (a refusal, a content
    filter, the token limit, thoughts in a reasoning field but no answer after them); otherwise (e.g. a tool
    call) it is malformed, so it is retried, never taken as an empty answer.
    """
    # The client does not validate the JSON it is given: a gateway's "choices" or "content" may be of any type.
    choices = getattr(response, "choices", None)
    choice = choices[0] if isinstance(choices, list) and choices else None
    message = getattr(choice, "message", None)
    content = getattr(message, "content", 0)
    if message is None or not (content is None or isinstance(content, str)):
        raise MalformedResponseError(f"the endpoint answered without a completion: {str(response)[:300]}")
    finish = getattr(choice, "finish_reason", None)
    blank = not (content or "").strip()  # None, "" or whitespace: no answer ("" is a gateway's too)
    if (blank and not getattr(message, "refusal", None) and not reasoning_field(message)
            and finish not in ("length", "content_filter")):
        raise MalformedResponseError(f"the completion has no text (finish_reason {finish!r}): {str(message)[:200]}")
    return response


#: The fields servers with a reasoning parser put a model's thoughts in, the answer staying in ``content``:
#: ``reasoning_content`` (vLLM, DeepSeek's API, SGLang), ``reasoning`` (Ollama, OpenRouter, newer vLLM).
REASONING_FIELDS = ("reasoning_content", "reasoning")


def reasoning_field(message: Any) -> str:
    """The thoughts ``message`` holds in a reasoning field (see :data:`REASONING_FIELDS`), or ``""``."""
    for name in REASONING_FIELDS:
        value = getattr(message, name, None)
        if isinstance(value, str) and value.strip():
            return value
    return ""


#: A reasoning model's thoughts, written inline before its answer by a server without a reasoning parser
#: (DeepSeek-R1, Qwen3, QwQ): "<think>...</think>\n\nYes". A block never closed (the text cut at the token
#: limit while the model thought) runs to the end of the text.
_THOUGHTS = re.compile(r"<think>.*?(?:</think>|$)", re.DOTALL)
OPEN_THOUGHTS, _CLOSE_THOUGHTS = "<think>", "</think>"


@dataclass(frozen=True)
class InlineThoughts:
    """A text split into its answer and the thoughts written inline before it."""

    answer: str  # the text itself, byte for byte, when it holds no thoughts; else from its first non-space
    thoughts: tuple[str, ...]  # each block's text, its tags left out
    unclosed: bool  # the text ends inside thoughts: the model had not answered yet


def split_thoughts(text: str) -> InlineThoughts:
    """``text`` without its ``<think>...</think>`` blocks (an unclosed one taken to the end).

    A ``</think>`` that no ``<think>`` comes before closes thoughts begun at the
    start of the text: the chat templates of DeepSeek-R1's distills and QwQ end the prompt with ``<think>``, so
    the model's text holds only the closing tag. (Thoughts such a template opened and the token limit cut hold
    no tag at all: nothing tells them from an answer.)
    """
    thoughts: list[str] = []
    closing, opening = text.find(_CLOSE_THOUGHTS), text.find(OPEN_THOUGHTS)
    if closing >= 0 and (opening < 0 or opening > closing):
        thoughts.append(text[:closing])
        text = text[closing + len(_CLOSE_THOUGHTS):]
    if OPEN_THOUGHTS not in text:
        return InlineThoughts(text.lstrip() if thoughts else text, tuple(thoughts), False)
    blocks = [block.group()[len(OPEN_THOUGHTS):] for block in _THOUGHTS.finditer(text)]
    unclosed = not blocks[-1].endswith(_CLOSE_THOUGHTS)
    thoughts.extend(block.removesuffix(_CLOSE_THOUGHTS) for block in blocks)
    return InlineThoughts(_THOUGHTS.sub("", text).lstrip(), tuple(thoughts), unclosed)
