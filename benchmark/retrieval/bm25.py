"""BM25 (``bm25s``, Lucene variant, English stop words, lower-cased) over item texts."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence

import numpy as np

from benchmark.retrieval.base import Retriever, best_first


class BM25Retriever(Retriever):
    candidate_set_name = "bm25"

    def __init__(self, k1: float = 1.5, b: float = 0.75, stopwords: str | None = "en") -> None:
        for name, value, high, allowed in (("k1", k1, math.inf, "a finite number >= 0"),
                                           ("b", b, 1, "a number from 0 to 1")):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                    math.isfinite(value) and 0 <= value <= high):  # NaN fails every comparison: test "inside"
                raise ValueError(f"bm25: {name} must be {allowed}, not {value!r}")
        if stopwords is not None and not isinstance(stopwords, str):
            raise ValueError(f"bm25: stopwords must be a language code such as 'en' or none, not {stopwords!r}")
        self.k1, self.b, self.stopwords = float(k1), float(b), stopwords

    def _tokenize(self, texts: Sequence[str]) -> list[list[str]]:
        return _bm25s().tokenize(list(texts), stopwords=self.stopwords, return_ids=False, show_progress=False)

    def _index(self, documents: list[list[str]]):
        """The BM25 index of tokenized item texts, or None when no item has a token."""
        if not any(documents):
            return None
        index = _bm25s().BM25(k1=self.k1, b=self.b)
        index.index(documents, show_progress=False)
        return index

    @staticmethod
    def _scores(index, tokens: list[str], count: int) -> np.ndarray:
        return np.zeros(count, dtype=np.float32) if index is None or not tokens else index.get_scores(tokens)

    def _score_rows(self, queries: Sequence[str], items: Sequence[tuple[str, str]]) -> Iterator[np.ndarray]:
        """Indexes the items once, then scores one query at a time (no queries x items matrix)."""
        index = self._index(self._tokenize([text for _, text in items]))
        for tokens in self._tokenize(queries):
            yield self._scores(index, tokens, len(items))

    def rank_candidates(self, queries: Sequence[str],
                        candidate_lists: Sequence[Sequence[tuple[str, str]]]) -> list[list[str]]:
        """As :meth:`Retriever.rank_candidates` (each list indexed on its own), with the texts of every query and
        list tokenized in one call each: bm25s makes its progress bars, disabled ones too, per call, and a query
        ranked on its own took 8 of them, more time than its scoring."""
        query_tokens = self._tokenize(queries)
        item_tokens = iter(self._tokenize([text for items in candidate_lists for _, text in items]))
        rankings = []
        for tokens, items in zip(query_tokens, candidate_lists, strict=True):
            scores = self._scores(self._index(list(itertools.islice(item_tokens, len(items)))), tokens, len(items))
            rankings.append([items[i][0] for i in best_first(scores, len(items))])
        return rankings


def _bm25s():
    try:
        import bm25s
    except ImportError as error:
        raise ImportError("the bm25 retriever needs bm25s: pip install 'reddit-amazon[retrieval]'") from error
    return bm25s
