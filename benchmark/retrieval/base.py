"""The retriever interface shared by the dataset build, ``benchmark retrieve`` and the rank-1 baselines."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np


class Retriever:
    """Ranks items for text queries.

    ``items`` are ``(item_id, text)`` pairs; results are item ids best-first. Ties keep catalog order,
    so results are deterministic. Subclasses provide :meth:`_score_rows`.
    """

    #: Column suffix of the candidate set this retriever produces (``candidates_<name>``).
    candidate_set_name: str = ""

    def _score_rows(self, queries: Sequence[str], items: Sequence[tuple[str, str]]) -> Iterator[np.ndarray]:
        """One row of ``len(items)`` similarities per query (higher is better); ``items`` is not empty.

        The items are prepared (indexed, embedded) once per call, however many queries there are.
        """
        raise NotImplementedError

    def top_k(self, queries: Sequence[str], items: Sequence[tuple[str, str]], k: int = 10) -> list[list[str]]:
        if not items:
            return [[] for _ in queries]
        ids = [item_id for item_id, _ in items]
        return [[ids[i] for i in best_first(row, k)] for row in self._score_rows(queries, items)]

    def rank_candidates(self, queries: Sequence[str],
                        candidate_lists: Sequence[Sequence[tuple[str, str]]]) -> list[list[str]]:
        """Order each query's own small candidate list (the rank-1 baselines)."""
        return [self.top_k([query], list(items), k=len(items))[0] if items else []
                for query, items in zip(queries, candidate_lists, strict=True)]


def best_first(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest scores, highest first; equal scores keep index order."""
    k = min(k, len(scores))
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    if k < len(scores):
        threshold = np.partition(scores, len(scores) - k)[len(scores) - k]
        pool = np.flatnonzero(scores >= threshold)
    else:
        pool = np.arange(len(scores))
    order = np.lexsort((pool, -scores[pool]))
    return pool[order][:k]
