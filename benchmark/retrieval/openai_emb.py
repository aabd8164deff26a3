"""OpenAI embeddings (default ``text-embedding-3-large``) through the ``openai`` client: batched, cached, retried.

Works with any OpenAI-compatible endpoint (``base_url``). The key comes from ``OPENAI_API_KEY``.
"""

from __future__ import annotations

import os
import re

import numpy as np

from reddit_amazon.openai_endpoint import endpoint_key, make_client, with_retries
from benchmark.retrieval.cache import EmbeddingCache
from benchmark.retrieval.dense import DenseRetriever

DEFAULT_OPENAI_EMBEDDING_MODEL = "text-embedding-3-large"
#: The API rejects inputs over 8,192 tokens; a conservative character cap keeps long threads under it.
MAX_INPUT_CHARS = 24_000


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
            self._client = make_client(self.base_url, self.timeout)
        return self._client

    def _embed(self, texts: list[str]) -> np.ndarray:
        client = self._load()
        inputs = [(t[:MAX_INPUT_CHARS] or " ") for t in texts]  # the API rejects empty strings
        options = {"dimensions": self.dimensions} if self.dimensions else {}

        response = with_retries(lambda: client.embeddings.create(model=self.model_name, input=inputs, **options),
                                self.max_retries)
        ordered = sorted(response.data, key=lambda d: d.index)
        if [d.index for d in ordered] != list(range(len(inputs))):
            raise RuntimeError(f"embedding endpoint returned {len(ordered)} vectors for {len(inputs)} inputs, "
                               f"not one for each input (index 0..{len(inputs) - 1})")
        return np.asarray([d.embedding for d in ordered], dtype=np.float32)


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
