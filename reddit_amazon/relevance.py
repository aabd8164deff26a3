"""The paper's relevance filter (Table 9): does the last utterance explicitly recommend items?

An LLM behind any OpenAI-compatible endpoint answers yes / no / uncertain for each candidate
conversation; only "yes" is kept. Answers are stored in a SQLite cache keyed by model + the
sha256 of the full prompt (+ the endpoint, unless it is OpenAI's), so reruns and resumed builds
never pay for the same question twice, and a changed template, model or server asks again. Calls
run in a bounded thread pool with exponential backoff on 429, 5xx, timeouts and connection errors.
"""

from __future__ import annotations

import hashlib
import random
import re
import sqlite3
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from reddit_amazon.files import naming, write_atomic
from reddit_amazon.redaction import redact_secrets
from reddit_amazon.openai_endpoint import (
    ChatParameters,
    PROMPT_REFUSAL_STATUSES,
    MissingAPIKeyError,
    OpenConnections,
    RefusalStreak,
    RefusedEverything,
    approx_tokens,
    completed_in_window,
    endpoint_key,
    is_fatal,
    make_client,
    is_transient,
    reasoning_field,
    refuses_this_prompt_only,
    split_thoughts,
    stoppable_calls,
)
from reddit_amazon.schema import Conversation
from reddit_amazon.sqlite_cache import CacheFile, is_locked, other_tables

DEFAULT_MODEL = "gpt-3.5-turbo"  # the paper's model
TEMPLATE_FILE = "table9_relevance_filter.txt"
CONVERSATION_SLOT = "{conversation}"
KEPT_LABEL = "yes"
UNPARSEABLE = "unparseable"
REJECTED = "rejected"  # the endpoint refused this prompt (HTTP 400/413/422, a content filter, a refusal)
ANSWER_TOKENS = 2


class RelevanceError(RuntimeError):
    """The filter cannot finish (configuration, authentication, or calls still failing after retries)."""


def default_template() -> str:
    return resources.files("reddit_amazon.prompts").joinpath(TEMPLATE_FILE).read_text(encoding="utf-8")


def load_template(path: str | Path | None) -> str:
    if path is None:
        return default_template()
    text = Path(path).read_text(encoding="utf-8")
    if CONVERSATION_SLOT not in text:
        raise RelevanceError(f"{path}: the template has no {CONVERSATION_SLOT} slot")
    return text


def render_conversation(conversation: Conversation) -> str:
    """The thread as ``<utterance>(i) text</utterance>`` lines, the recommending comment last."""
    texts = [turn.text for turn in conversation.turns] + [conversation.gt_text]
    return "\n".join(f"<utterance>({i}) {text}</utterance>" for i, text in enumerate(texts, start=1))


def render_prompt(template: str, conversation: Conversation) -> str:
    return template.replace(CONVERSATION_SLOT, render_conversation(conversation))


def cache_key(model: str, prompt: str, endpoint: str | None = None) -> str:
    """The answer's key: model and prompt, scoped to ``endpoint`` (see :func:`endpoint_key`) when it is not None."""
    key = hashlib.sha256(f"{model}\0{prompt}".encode()).hexdigest()
    return key if endpoint is None else scoped_key(key, endpoint)


def scoped_key(key: str, endpoint: str) -> str:
    """``key`` of OpenAI's endpoint as the same question's key at ``endpoint``."""
    return hashlib.sha256(f"{key}\0{endpoint}".encode()).hexdigest()


#: A label, with the negation up to two words before it, if any ("not a clear yes", "wouldn't say yes").
_LABEL_WORDS = re.compile(r"((?:\bnot\b|\bnever\b|n't)(?:\s+\w+){0,2}\s+)?\b(yes|no|uncertain)\b")


def parse_answer(text: str | None) -> str:
    """``yes`` / ``no`` / ``uncertain`` from a free-form answer, else ``unparseable``.

    Case, quotes, punctuation and extra words are tolerated ("Yes.", "'no'", "Answer: uncertain");
    a reasoning model's ``<think>`` block is skipped. An answer naming two different labels ("yes or
    no"), or negating one ("I would not say yes"), is not guessed.
    """
    answer = split_thoughts(text or "").answer
    normalized = answer.lower().replace("\u2018", "'").replace("\u2019", "'")
    if not normalized.strip():
        return UNPARSEABLE
    leading = _LEADING_LABEL.match(normalized)
    if leading:  # "Yes, there is no doubt ...": the answer comes first, the explanation may name another word
        return leading.group(1)
    found = _LABEL_WORDS.findall(normalized)
    labels = {label for _, label in found}
    return labels.pop() if len(labels) == 1 and not any(negation for negation, _ in found) else UNPARSEABLE


#: A label opening the answer and closed by punctuation or the end ("Yes.", "**No** -", "Answer: yes,").
_LEADING_LABEL = re.compile(r"^\W*(?:answer\s*:\W*)?(yes|no|uncertain)\b\W*?(?:[.,!:;\-\u2013\u2014()\n]|$)")


# --------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------


_ANSWERS_TABLE = ("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, model TEXT NOT NULL, "
                  "status TEXT NOT NULL, answer TEXT NOT NULL)")


class AnswerCache:
    """SQLite store of raw answers; every answer is committed as soon as it arrives.

    While open, the file is in WAL mode with ``synchronous=NORMAL``: a commit appends to the ``-wal`` file
    without an fsync, so the calls' threads do not queue behind each other's fsyncs (and a lookup never waits
    for a writer). A committed answer survives the process being killed (the operating system holds it), though
    not a power loss before the next checkpoint. Closing returns the file to a rollback journal, one
    self-contained file that opens read-only (the bundled sample's answers ship so), unless another process
    still has it open: the last one to close it does.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._file = CacheFile(self.path, "the relevance answer cache, --llm-cache", unavailable=RelevanceError,
                               damaged=RelevanceError, loss="its answers are then asked again")
        self._db = self._file.connect(_ANSWERS_TABLE, owner=self, check_same_thread=False)
        with self._file.named_errors():
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")

    def get(self, key: str) -> tuple[str, str] | None:
        """``(status, answer)``: status ``ok`` or ``rejected``."""
        with self._lock, self._file.named_errors():
            row = self._db.execute("SELECT status, answer FROM answers WHERE key = ?", (key,)).fetchone()
        return None if row is None else (row[0], row[1])

    def put(self, key: str, model: str, answer: str, status: str = "ok") -> None:
        """Store an answer. One another process keeps from the file past its wait is a :class:`RelevanceError`:
        unlike the other caches', it is not skipped, since the labels are read back from the file and a resumed
        build counts each paid answer once by finding it there."""
        with self._lock, self._file.named_errors(), self._db:  # a failed write is rolled back, not left open
            self._db.execute("INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?)", (key, model, status, answer))

    def import_answers(self, other: str | Path, endpoint: str | None = None) -> int:
        """Copy the answers this cache lacks from another cache file (opened read-only), as answers of
        ``endpoint`` when it is given (the other file's keys are OpenAI's); returns how many. A file that is not
        an answer cache is a :class:`RelevanceError` naming it, and nothing is imported."""
        rows = _answers_in(Path(other))
        if endpoint is not None:
            rows = [(scoped_key(key, endpoint), model, status, answer) for key, model, status, answer in rows]
        with self._lock, self._file.named_errors(), self._db:
            before = self._db.total_changes
            self._db.executemany("INSERT OR IGNORE INTO answers VALUES (?, ?, ?, ?)", rows)
            return self._db.total_changes - before

    def __len__(self) -> int:
        with self._lock, self._file.named_errors():
            return self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]

    def close(self) -> None:
        """Close the file, returned to one self-contained file. Where SQLite cannot move the answers out of the
        ``-wal`` file (a full disk), they stay there, read back by the next open: :class:`RelevanceError` then names
        both files, since a copy of the cache file alone would lack them."""
        with self._lock:
            try:
                self._db.execute("PRAGMA journal_mode=DELETE")  # checkpoints: every answer moves into the file
            except sqlite3.OperationalError as error:
                self._db.close()
                if is_locked(error):  # another process has it open, and the last one to close it converts it
                    return
                wal = self.path.with_name(f"{self.path.name}-wal")
                raise RelevanceError(
                    f"{self.path}: its latest answers could not be moved into it ({error}); they are kept in {wal}, "
                    f"which the next run reads back: keep (copy) both files together until a run closes the cache "
                    f"with room to write (the relevance answer cache, --llm-cache)") from error
            self._db.close()

    def __enter__(self) -> AnswerCache:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        try:
            self.close()
        except RelevanceError:
            if exc_type is None:
                raise
            # The block's own error (often the same full disk) is the one to report; the answers are not lost.


def _answers_in(path: Path) -> list[tuple[str, str, str, str]]:
    """Every answer in the answer cache file ``path``, opened read-only. Another database (or none) is refused
    whole: a table of other columns, or one whose rows may lack a value (which the import would skip one by one)."""
    nothing = "nothing was imported from it"
    try:
        source = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            if held := other_tables(source, (_ANSWERS_TABLE,), all_needed=True):
                raise RelevanceError(f"{path} holds another database ({held}), not a relevance answer cache: {nothing}")
            return source.execute("SELECT key, model, status, answer FROM answers").fetchall()
        finally:
            source.close()
    except sqlite3.OperationalError as error:  # the file is not at fault: missing, locked, unreadable
        raise RelevanceError(f"{path}: {error} (a relevance answer cache to import): {nothing}") from error
    except sqlite3.DatabaseError as error:
        raise RelevanceError(f"{path} is damaged ({error}), not a relevance answer cache: {nothing}") from error


# --------------------------------------------------------------------------------------------
# Running the filter
# --------------------------------------------------------------------------------------------


@dataclass
class FilterOptions:
    model: str = DEFAULT_MODEL
    base_url: str | None = None
    template: str = field(default_factory=default_template)
    concurrency: int = 8
    max_attempts: int = 6
    timeout_s: float = 60.0
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0


@dataclass
class FilterPlan:
    """What a run would cost: ``calls`` prompts are not in the cache yet."""

    records: int
    cached: int
    calls: int
    approx_prompt_tokens: int
    approx_total_tokens: int
    #: of ``calls``, prompts the cache answers under OpenAI's key although another endpoint is configured: see
    #: :func:`_answered_without_endpoint`
    answered_without_endpoint: int = 0


@dataclass
class FilterResult:
    kept: list[Conversation]
    labels: dict[str, str]  # example_id -> yes/no/uncertain/unparseable/rejected
    counts: Counter
    calls_made: int  # prompts answered (or refused) by this run and the earlier runs its CallTally counted
    http_requests_sent: int  # what those took: retries and re-sends with adapted parameters included
    parameter_changes: list[str] = field(default_factory=list)  # what the endpoint made us change (ChatParameters)


def _unanswered(conversations: Iterable[Conversation], cache: AnswerCache,
                options: FilterOptions) -> tuple[dict[str, str], dict[str, Conversation]]:
    """``({example_id: cache key}, {cache key: conversation})``: each record's key, and a conversation for
    each distinct prompt ``cache`` holds no answer for (records with the same thread text share one call).
    Prompts are rendered again when they are sent, not kept: a large build would hold them all."""
    keys: dict[str, str] = {}
    missing: dict[str, Conversation] = {}
    endpoint = endpoint_key(options.base_url)
    for conversation in conversations:
        key = keys[conversation.example_id] = cache_key(options.model, _prompt(options, conversation), endpoint)
        if key not in missing and cache.get(key) is None:
            missing[key] = conversation
    return keys, missing


def _prompt(options: FilterOptions, conversation: Conversation) -> str:
    return render_prompt(options.template, conversation)


def plan_filter(conversations: Sequence[Conversation], cache: AnswerCache, options: FilterOptions) -> FilterPlan:
    keys, missing = _unanswered(conversations, cache, options)
    prompt_tokens = elsewhere = 0
    for conversation in missing.values():  # each prompt rendered once here, and not kept
        prompt = _prompt(options, conversation)
        prompt_tokens += approx_tokens([prompt])
        elsewhere += _answered_without_endpoint(prompt, cache, options)
    return FilterPlan(records=len(conversations), cached=sum(key not in missing for key in keys.values()),
                      calls=len(missing), approx_prompt_tokens=prompt_tokens,
                      approx_total_tokens=prompt_tokens + ANSWER_TOKENS * len(missing),
                      answered_without_endpoint=elsewhere)


def _answered_without_endpoint(prompt: str, cache: AnswerCache, options: FilterOptions) -> bool:
    """Whether ``cache`` answers ``prompt``, unanswered for ``options.base_url``, under OpenAI's key. Such answers
    are OpenAI's, or any endpoint's in a cache written before answers were keyed by endpoint, which the cache
    cannot tell apart: they are not used for another endpoint, and are asked again unless the user imports them
    as its own (docs/build.md, "Upgrading")."""
    return endpoint_key(options.base_url) is not None and cache.get(cache_key(options.model, prompt)) is not None


def _client(options: FilterOptions, api_key: str | None, connections: OpenConnections,
            on_request: Callable[[], None]):
    try:
        return make_client(options.base_url, options.timeout_s, api_key, connections=connections,
                           on_request=on_request)
    except MissingAPIKeyError:
        raise RelevanceError(
            "the relevance filter needs answers that are not cached, but OPENAI_API_KEY is not set "
            "(set it, point --llm-base-url at a local OpenAI-compatible server, or use --no-filter / --dry-run)"
        ) from None


class CallTally:
    """The calls paid (prompts the endpoint answered or refused) and the HTTP requests they took, counted from the
    threads that send them.

    With a ``path``, each is also appended to that file as it happens, and the counts start from what the file
    holds: the runs of one build stage, interrupted and resumed, are counted together, each call once (an answer
    received before an interruption is served from the cache afterwards, not paid again), even after a kill -9.
    The file belongs to one ``run_key`` (the stage's inputs and options): a file of another key is started afresh.
    A damaged file (not a key and events: binary bytes, an edit by hand) only fed the counts: it is started afresh
    too, and :attr:`damaged` says so, for a warning that the counts cover this run only. A last line cut short by a
    crash is counted as what it holds, and the next event goes on a line of its own.
    """

    CALL, REQUEST = b"c", b"r"
    _KEY = re.compile(rb"[0-9a-f]*")

    def __init__(self, path: Path | None = None, run_key: str = ""):
        self.path = path
        self.calls = self.requests = 0
        self.damaged: str | None = None  # why a damaged file was started afresh
        self._lock = threading.Lock()
        self._file: Any = None
        if path is not None:
            self._file = self._open(path, f"{run_key}\n".encode())

    def _open(self, path: Path, header: bytes) -> Any:
        with naming(path):
            held = path.read_bytes() if path.is_file() else b""
            first, newline, rest = held.partition(b"\n")
            events = rest.split(b"\n")
            readable = bool(newline and self._KEY.fullmatch(first) and set(events) <= {self.CALL, self.REQUEST, b""})
            if readable and held.startswith(header):
                self.calls, self.requests = events.count(self.CALL), events.count(self.REQUEST)
                cut = not held.endswith(b"\n")
            else:
                if held and not readable:
                    self.damaged = (f"{path} is damaged (not a run key and its calls); the calls and requests "
                                    "counted before this run are lost: the counts cover this run only")
                write_atomic(path, header)
                cut = False
            log = open(path, "ab", buffering=0)  # unbuffered: each event is one write, on disk as it happens
            if cut:
                log.write(b"\n")
            return log

    def call(self) -> None:
        self._count(self.CALL)

    def request(self) -> None:
        self._count(self.REQUEST)

    def _count(self, event: bytes) -> None:
        with self._lock:
            if self._file is not None and self.path is not None:  # the file is the path's
                with naming(self.path):
                    self._file.write(event + b"\n")
            if event == self.CALL:
                self.calls += 1
            else:
                self.requests += 1

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> CallTally:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PromptRefused(Exception):
    """The endpoint answered, but not about this prompt: a refusal, a content filter, or no text before its
    token limit. Cached as :data:`REJECTED` (asking again gets the same)."""


def _ask(client: Any, options: FilterOptions, parameters: ChatParameters, prompt: str,
         cancel: threading.Event) -> str:
    request = {"model": options.model, "messages": [{"role": "user", "content": prompt}], "temperature": 0}
    response = parameters.create(client, request, options.max_attempts, options.backoff_initial_s,
                                 options.backoff_max_s, cancel)
    choice = response.choices[0]  # ChatParameters.create checked there is a message
    content, finish = choice.message.content, getattr(choice, "finish_reason", None)
    refusal = getattr(choice.message, "refusal", None)
    if refusal or finish == "content_filter":
        raise PromptRefused(f"refused ({finish or 'refusal'}): {refusal or 'no text'}")
    if not content and finish == "length":
        raise PromptRefused("the answer reached the model's token limit before any text")
    # What a server's reasoning parser that does not fit the model gives for every prompt, too: the streak stops it.
    if not (content or "").strip() and reasoning_field(choice.message):
        raise PromptRefused(f"the model's thoughts came with no answer after them (finish_reason {finish!r})")
    return content or ""


def run_filter(conversations: Sequence[Conversation], cache: AnswerCache, options: FilterOptions, *,
               api_key: str | None = None, progress: Callable[[Iterable, int], Iterable] | None = None,
               tally: CallTally | None = None) -> FilterResult:
    """Label every conversation, asking the endpoint only for prompts missing from ``cache``.

    Calls that still fail after the retries do not lose the answers already received (they are
    cached); the run then raises :class:`RelevanceError` so that a rerun resumes. The calls and requests are
    counted in ``tally`` (this run's alone without one).
    """
    import openai

    def redacted(error: BaseException) -> str:
        return redact_secrets(str(error), api_key)

    keys, missing = _unanswered(conversations, cache, options)
    tally = tally or CallTally()
    parameters = ChatParameters(options.model)
    if missing:
        connections = OpenConnections()
        client = _client(options, api_key, connections, tally.request)
        failure = ""  # the first call that failed after its retries: the run stops there
        streak = RefusalStreak()

        def ask_and_store(key: str, conversation: Conversation) -> None:
            if cache.get(key) is not None:  # another build sharing the cache answered it meanwhile
                return
            try:
                answer = _ask(client, options, parameters, _prompt(options, conversation), stopping)
            except PromptRefused as refusal:
                reason = str(refusal)
            except openai.APIStatusError as error:
                if error.status_code not in PROMPT_REFUSAL_STATUSES:
                    raise
                if not refuses_this_prompt_only(error):  # the model, a parameter ...: every call would fail
                    raise RelevanceError(f"the LLM endpoint refused the request: {redacted(error)}") from error
                reason = str(error)
            else:
                cache.put(key, options.model, answer)
                tally.call()  # here, not where the future is collected: an interrupted run stops collecting
                streak.answered()
                return
            # About this prompt only. The cache is a file: an endpoint quoting the key must not put it there.
            reason = redact_secrets(reason, api_key)[:500]
            tally.call()
            streak.refused(lambda: cache.put(key, options.model, reason, status=REJECTED), reason)

        with stoppable_calls(options.concurrency, connections) as (pool, stopping):
            # In an order of this run's own: builds sharing the cache do not ask the same prompts side by side.
            order = random.sample(list(missing.items()), len(missing))
            done = completed_in_window(pool, ask_and_store, order, window=4 * options.concurrency)
            for future in (progress(done, len(missing)) if progress else done):
                error = future.exception()
                if error is None:
                    continue
                if isinstance(error, RelevanceError):
                    raise error
                elif isinstance(error, RefusedEverything) or is_fatal(error):
                    raise RelevanceError(f"the LLM endpoint refused the request: {redacted(error)}") from error
                else:  # retried to the end: the endpoint is down, stop instead of waiting out every call
                    tries = f" after {options.max_attempts} attempts" if is_transient(error) else ""
                    # Redacted before it is cut short: a key the cut falls inside would no longer be recognised.
                    failure = f"failed{tries} ({type(error).__name__}: {redacted(error)[:300]})"
                    break
        streak.flush()
        if failure:
            answered = sum(1 for key in missing if cache.get(key) is not None)  # calls in flight finished too
            raise RelevanceError(
                f"a relevance call {failure}; the {answered} answers received are cached "
                f"({len(missing) - answered} to go), rerun to resume"
            )

    labels: dict[str, str] = {}
    for example_id, key in keys.items():
        status, answer = cache.get(key)  # type: ignore[misc]  # every key is cached by now
        labels[example_id] = REJECTED if status == REJECTED else parse_answer(answer)
    kept = [c for c in conversations if labels[c.example_id] == KEPT_LABEL]
    return FilterResult(kept=kept, labels=labels, counts=Counter(labels.values()), calls_made=tally.calls,
                        http_requests_sent=tally.requests, parameter_changes=parameters.adaptations)
