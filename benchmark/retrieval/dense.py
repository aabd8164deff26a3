"""Cosine-similarity retrieval over cached embeddings (shared by SBERT and OpenAI embeddings)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from benchmark.retrieval.base import Retriever, best_first
from benchmark.retrieval.cache import EmbeddingCache


def normalize(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms == 0, 1, norms)


def distinct_texts(texts: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """The distinct texts in first-seen order, and for each text the position of its distinct text."""
    positions: dict[str, int] = {}
    inverse = np.array([positions.setdefault(text, len(positions)) for text in texts], dtype=np.intp)
    return list(positions), inverse


class DenseRetriever(Retriever):
    """Subclasses provide ``model_id`` and ``_embed(texts) -> array``; everything goes through the cache."""

    model_id: str
    cache: EmbeddingCache
    encode_batch_size: int = 1024

    def _embed(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError

    def _library_versions(self) -> dict[str, str]:
        """The versions of the libraries that computed the vectors here (none: they are computed elsewhere)."""
        return {}

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return normalize(self.cache.encode(list(texts), self._embed, batch_size=self.encode_batch_size,
                                           written_with=self._library_versions))

    @property
    def embedding_provenance(self) -> dict[str, Any]:
        """Where this retriever's vectors came from, for results.json: texts encoded here, texts read from the
        embedding cache, and the library versions of the processes that wrote the cache's vectors (a run served
        from the cache ran no model: the versions installed here did not make its vectors; ``None`` where another
        process holds the file)."""
        return {"computed": self.cache.computed, "from_cache": self.cache.from_disk,
                "cache_written_with": self.cache.writers()}

    def _score_rows(self, queries: Sequence[str], items: Sequence[tuple[str, str]]) -> Iterator[np.ndarray]:
        # Each distinct item text is scored once, whatever the query count. Identical texts (duplicate
        # titles) must tie exactly so catalog order breaks the tie: scored at different rows of a matrix
        # product they can differ in the last bit, depending on the row and the BLAS build.
        texts, inverse = distinct_texts([text for _, text in items])
        item_vectors = self.encode(texts)
        query_vectors = self.encode(queries)
        chunk = max(1, 2_000_000 // len(items))  # bound the score matrix held at once
        for start in range(0, len(query_vectors), chunk):
            yield from (query_vectors[start:start + chunk] @ item_vectors.T)[:, inverse]

    def rank_candidates(self, queries: Sequence[str],
                        candidate_lists: Sequence[Sequence[tuple[str, str]]]) -> list[list[str]]:
        query_vectors = self.encode(queries)
        texts = list(dict.fromkeys(text for items in candidate_lists for _, text in items))
        vectors = dict(zip(texts, self.encode(texts))) if texts else {}
        rankings: list[list[str]] = []
        for query_vector, items in zip(query_vectors, candidate_lists, strict=True):
            if not items:
                rankings.append([])
                continue
            distinct, inverse = distinct_texts([text for _, text in items])  # identical texts tie exactly
            scores = np.stack([vectors[text] for text in distinct]) @ query_vector
            rankings.append([items[i][0] for i in best_first(scores[inverse], len(items))])
        return rankings
