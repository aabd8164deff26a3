"""OpenAI embeddings (default ``text-embedding-3-large``) through the ``openai`` client: batched, cached, retried.

Works with any OpenAI-compatible endpoint (``base_url``). The key comes from ``OPENAI_API_KEY``.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from reddit_amazon.openai_endpoint import (MAX_ANSWER_BYTES, MalformedResponseError, approx_tokens, endpoint_key,
                                           make_client, with_retries)
from benchmark.retrieval.cache import EmbeddingCache
from benchmark.retrieval.dense import DenseRetriever

DEFAULT_OPENAI_EMBEDDING_MODEL = "text-embedding-3-large"
#: The API rejects inputs over 8,192 tokens; a conservative character cap keeps long threads under it.
MAX_INPUT_CHARS = 24_000


@dataclass
class EmbeddingPlan:
    """What embedding would send: ``texts`` not in the cache yet (~``approx_tokens``) in ``requests`` requests
    of up to ``batch_size`` texts."""

    texts: int
    approx_tokens: int
    requests: int
    batch_size: int


def _sent_text(text: str) -> str:
    return text[:MAX_INPUT_CHARS] or " "  # the API rejects empty strings


class OpenAIEmbeddingRetriever(DenseRetriever):
    def __init__(self, model: str = DEFAULT_OPENAI_EMBEDDING_MODEL, base_url: str | None = None,
                 batch_size: int = 256, dimensions: int | None = None, max_retries: int = 6,
                 timeout: float = 60.0, cache_dir: str | os.PathLike | None = None) -> None:
        self.model_name = model
        self.base_url = base_url
        self.dimensions = dimensions
        self.max_retries = max_retries
        self.timeout = timeout
        self.encode_batch_size = batch_size
        self.candidate_set_name = candidate_set_for(model)
        self.model_id = embedding_model_id(model, dimensions, base_url)
        self.cache = EmbeddingCache(self.model_id, cache_dir)
        self._client = None

    def _load(self):
        if self._client is None:
            # A batch of 256 large vectors as JSON floats is ~17 MB: room for bigger batches and dimensions.
            self._client = make_client(self.base_url, self.timeout, max_answer_bytes=4 * MAX_ANSWER_BYTES)
        return self._client

    def _embed(self, texts: list[str]) -> np.ndarray:
        client = self._load()
        inputs = [_sent_text(t) for t in texts]
        options = {"dimensions": self.dimensions} if self.dimensions else {}

        def create():
            try:
                return client.embeddings.create(model=self.model_name, input=inputs, **options)
            except (AttributeError, TypeError) as error:  # a 200 that is no embedding list (an HTML page)
                raise MalformedResponseError(f"the embedding endpoint answered with something that is not an "
                                             f"embedding list ({type(error).__name__}: {error})") from error

        response = with_retries(create, self.max_retries)
        ordered = sorted(response.data, key=lambda d: d.index)
        if [d.index for d in ordered] != list(range(len(inputs))):
            raise RuntimeError(f"embedding endpoint returned {len(ordered)} vectors for {len(inputs)} inputs, "
                               f"not one for each input (index 0..{len(inputs) - 1})")
        vectors = [d.embedding for d in ordered]
        lengths = {len(v) if isinstance(v, (list, tuple)) else None for v in vectors}
        if len(lengths) != 1 or None in lengths or 0 in lengths:
            raise RuntimeError(f"embedding endpoint returned vectors of lengths {sorted(map(str, lengths))}: "
                               f"not one non-empty list of numbers of the same length for each input")
        array = np.asarray(vectors, dtype=np.float32)
        if not np.isfinite(array).all():
            raise RuntimeError("embedding endpoint returned vectors holding NaN or infinite values")
        return array

    def plan_top_k(self, searches: Iterable[tuple[Sequence[str], Sequence[tuple[str, str]]]]) -> EmbeddingPlan:
        """What :meth:`top_k` on each ``(queries, items)`` in turn would send, sending nothing. It encodes a
        search's item texts, then its queries, each in batches; a text in the cache or sent before is not sent."""
        sent: set[str] = set()
        requests = 0
        for queries, items in searches:
            for texts in ([text for _, text in items], queries):
                unsent = [text for text in self.cache.unseen(texts) if text not in sent]
                sent.update(unsent)
                requests += math.ceil(len(unsent) / self.encode_batch_size)
        return EmbeddingPlan(texts=len(sent), approx_tokens=approx_tokens(map(_sent_text, sent)), requests=requests,
                             batch_size=self.encode_batch_size)


def embedding_model_id(model: str, dimensions: int | None, base_url: str | None) -> str:
    """The embedding cache's model id: ``openai:<model>[@<dimensions>]``, then `` at <endpoint>`` for any
    endpoint but OpenAI's (``OPENAI_BASE_URL`` too), so two servers' vectors never mix. OpenAI's own keeps
    the id earlier releases used, so their caches still count."""
    suffix = f"@{dimensions}" if dimensions else ""
    endpoint = endpoint_key(base_url)
    return f"openai:{model}{suffix}" + ("" if endpoint is None else f" at {endpoint}")


def candidate_set_for(model: str) -> str:
    """``text-embedding-3-large`` -> ``openai_large`` (the paper's column), others -> ``openai_<model>``."""
    if model == DEFAULT_OPENAI_EMBEDDING_MODEL:
        return "openai_large"
    return "openai_" + re.sub(r"[^a-z0-9]+", "_", model.lower()).strip("_")
