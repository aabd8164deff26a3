"""``openai-chat``: the paper's Table 11 prompt sent to any OpenAI-compatible chat endpoint.

Title-only by default; ``with_images=true`` puts each candidate's image (as a data URL) after its
``ID: title`` line, as the paper's "title and image" baselines do. Greedy-ish decoding
(``temperature=0``). Responses are cached on disk (SQLite, keyed by the full request), requests in a
batch run concurrently, and transient failures are retried with backoff.

Reasoning models (OpenAI's o-series, gpt-5) refuse ``max_tokens`` (they take
``max_completion_tokens``) and any temperature but their default. When the endpoint says so, the
request is changed as it asks, once for the whole run, with a warning; a rejected request is never
silently scored as a wrong answer for every record. Their hidden reasoning counts against the token
limit, so an answer cut at the limit is reported: give such models ``max_tokens=2000`` or more.

Open reasoning models (DeepSeek-R1's distills, Qwen3, QwQ) served without a reasoning parser write their
thoughts inline, ``<think>...</think>`` before the answer; the thoughts name candidates too, so they are left
out of the output the harness parses (a server with a parser returns them apart, in ``reasoning_content``,
and the content as is). The cache keeps the content as received, so a cached answer is read the same way.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import threading
from collections.abc import Sequence
from concurrent.futures import as_completed
from pathlib import Path
from typing import Any

import orjson

from benchmark.prompts import NO_IMAGE_TEXT, recommendation_prompt_segments, render_recommendation_prompt
from benchmark.protocol import Candidate, Example, image_mime
from benchmark.retrieval.cache import cache_file, default_cache_dir
from reddit_amazon.redaction import redact_secrets
from reddit_amazon.sqlite_cache import GoesOnWithoutTheFile
from reddit_amazon.openai_endpoint import (
    ChatParameters,
    OpenConnections,
    RefusalStreak,
    endpoint_key,
    endpoint_url,
    make_client,
    reasoning_field,
    refuses_this_prompt_only,
    split_thoughts,
    stoppable_calls,
)

log = logging.getLogger(__name__)


class ChatCache:
    """request hash -> response text, shared by threads (one connection, one lock). While another process holds the
    file, a lookup is a miss (the request is sent) and an answer is not stored (:class:`GoesOnWithoutTheFile`)."""

    def __init__(self, folder: Path, *, in_default_folder: bool = False) -> None:
        self.path = folder / "responses.sqlite"
        self._file = cache_file(self.path, "the openai-chat response cache", in_default_folder=in_default_folder)
        self._shared = GoesOnWithoutTheFile(
            self._file, "CREATE TABLE IF NOT EXISTS response (key TEXT PRIMARY KEY, text TEXT NOT NULL)")
        self._db = self._shared.connect(owner=self, check_same_thread=False)
        self._lock = threading.Lock()

    def get(self, key: str) -> str | None:
        with self._lock:
            row = self._shared.read(
                self._db, lambda: self._db.execute("SELECT text FROM response WHERE key = ?", (key,)).fetchone(), None)
        return None if row is None else row[0]

    def put(self, key: str, text: str) -> None:
        with self._lock:
            self._shared.write(self._db, lambda: self._db.execute("INSERT OR REPLACE INTO response VALUES (?, ?)",
                                                                   (key, text)))


class OpenAIChatRecommender:
    name = "openai-chat"

    def __init__(self, model: str = "gpt-4o-mini", base_url: str | None = None, with_images: bool = False,
                 temperature: float = 0.0, max_tokens: int = 32, max_workers: int = 8, max_retries: int = 6,
                 timeout: float = 120.0, image_detail: str = "auto", batch_size: int = 32,
                 cache_dir: str | os.PathLike | None = None) -> None:
        self.model = model
        self.base_url = base_url
        self.with_images = self.uses_images = with_images
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.max_workers = max_workers
        self.max_retries = max_retries
        self.image_detail = image_detail
        self.batch_size = batch_size
        self.timeout = timeout
        self.name = f"{model} ({'title+image' if with_images else 'title'})"
        folder = Path(cache_dir) if cache_dir is not None else default_cache_dir().parent / "chat"
        self.cache = ChatCache(folder, in_default_folder=cache_dir is None)
        self._client = None
        self._connections = OpenConnections()  # the client's, cut on Ctrl-C
        self._parameters = ChatParameters(model)
        self._warned: set[str] = set()  # the answers without an answer told of: once a run each
        self._warned_lock = threading.Lock()
        self._refusals = RefusalStreak()  # refusals of every prompt stop the run: they are a setting's

    def _messages(self, example: Example) -> list[dict[str, Any]]:
        candidates = [(c.item_id, c.title) for c in example.candidates]
        if not self.with_images:
            return [{"role": "user", "content": render_recommendation_prompt(example.context, candidates, False)}]
        segments = recommendation_prompt_segments(example.context, candidates)
        content: list[dict[str, Any]] = [{"type": "text", "text": segments[0]}]
        for candidate, text in zip(example.candidates, segments[1:], strict=True):
            content.append(self._image_part(candidate))
            if text:
                content.append({"type": "text", "text": text})
        return [{"role": "user", "content": content}]

    def _image_part(self, candidate: Candidate) -> dict[str, Any]:
        if candidate.image_bytes is None:
            return {"type": "text", "text": NO_IMAGE_TEXT}
        url = f"data:{image_mime(candidate.image_bytes)};base64,{base64.b64encode(candidate.image_bytes).decode()}"
        return {"type": "image_url", "image_url": {"url": url, "detail": self.image_detail}}

    def _request(self, example: Example) -> dict[str, Any]:
        return {"model": self.model, "messages": self._messages(example), "temperature": self.temperature,
                "max_tokens": self.max_tokens}

    def _key(self, request: dict[str, Any], endpoint: str | None = None) -> str:
        # The endpoint as resolved (OPENAI_BASE_URL too): two servers' answers never mix. OpenAI's own
        # stays None, the key earlier releases used for it, so their cached answers still count.
        endpoint = endpoint_key(self.base_url) if endpoint is None else endpoint
        return hashlib.sha256(orjson.dumps({"base_url": endpoint, **request},
                                           option=orjson.OPT_SORT_KEYS)).hexdigest()

    def _cached(self, request: dict[str, Any]) -> tuple[str, str | None]:
        """The request's cache key and its cached answer, also looked up under the endpoint as earlier caches
        were keyed (the URL as given: ``/v1/`` not yet normalised to ``/v1``)."""
        key = self._key(request)
        cached = self.cache.get(key)
        as_given = endpoint_url(self.base_url)
        if cached is None and endpoint_key(self.base_url) not in (None, as_given):
            cached = self.cache.get(self._key(request, as_given))
        return key, cached

    def _complete(self, example_id: str, request: dict[str, Any], cancel: threading.Event | None = None) -> str:
        import openai

        key, cached = self._cached(request)  # the request as configured, not as the endpoint made us adapt it
        if cached is not None:
            self._refusals.answered()
            return self._answer(cached)
        if self._client is None:
            self._client = make_client(self.base_url, self.timeout, connections=self._connections)
        try:
            response = self._parameters.create(self._client, request, self.max_retries, cancel=cancel)
        except openai.APIStatusError as error:
            if not refuses_this_prompt_only(error):  # a 5xx, an unknown model, a parameter ...: not this prompt's
                raise
            reason = redact_secrets(error.message)
            self._refusals.refused(lambda: None, reason)  # not cached: a refusal may be a setting's after all
            log.warning("request for %s rejected (%s); scored as an invalid answer", example_id, reason)  # only it
            return ""
        self._refusals.answered()
        choice = response.choices[0]
        text = choice.message.content or ""
        self.cache.put(key, text)  # as received: thoughts and all
        return self._answer(text, choice.finish_reason, reasoning_field(choice.message))

    def _answer(self, text: str, finish: str | None = None, reasoning: str = "") -> str:
        """The answer in ``text``, a response's content as received or cached: without the model's inline
        thoughts. Warns (once a run) of answers with nothing after the thoughts; the finish reason and the
        reasoning field are known when the response arrives, an unclosed ``<think>`` from the cache too."""
        split = split_thoughts(text)
        thoughts_only = not split.answer.strip() and bool(split.thoughts or reasoning)
        if finish == "length":
            how = (" while the model was thinking, before any answer" if thoughts_only
                   else ", with no visible text" if not text else "")
            self._warn_once("cut", "%s: an answer was cut at the token limit (%d)%s; raise max_tokens%s", self.model,
                            self.max_tokens, how, " (2000 or more for thoughts)" if thoughts_only else "")
        elif thoughts_only:
            if split.unclosed:
                how = "<think> never closed"
            elif split.thoughts:
                how = "nothing after </think>"
            else:
                how = f"finish_reason {finish!r}, the thoughts in the reasoning field"
            self._warn_once("thoughts only", "%s: an answer holds the model's thoughts and no answer after them (%s); "
                            "scored as an invalid answer (if the token limit, %d, cut it: raise max_tokens)",
                            self.model, how, self.max_tokens)
        return split.answer

    def _warn_once(self, kind: str, message: str, *args: Any) -> None:
        with self._warned_lock:
            if kind in self._warned:
                return
            self._warned.add(kind)
        log.warning(message, *args)

    def recommend(self, examples: Sequence[Example]) -> list[str]:
        requests = [(example.example_id, self._request(example)) for example in examples]
        if self.max_workers <= 1 or len(requests) <= 1:
            return [self._complete(*r) for r in requests]
        with stoppable_calls(self.max_workers, self._connections) as (pool, stopping):
            futures = [pool.submit(self._complete, *request, stopping) for request in requests]
            for future in as_completed(futures):
                future.result()  # the first call that fails for good ends the batch at once
            return [future.result() for future in futures]
