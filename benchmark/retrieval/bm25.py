"""BM25 (``bm25s``, Lucene variant, English stop words, lower-cased) over item texts."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from benchmark.retrieval.base import Retriever


class BM25Retriever(Retriever):
    candidate_set_name = "bm25"

    def __init__(self, k1: float = 1.5, b: float = 0.75, stopwords: str | None = "en") -> None:
        self.k1, self.b, self.stopwords = k1, b, stopwords

    def _tokenize(self, texts: Sequence[str]) -> list[list[str]]:
        try:
            import bm25s
        except ImportError as error:
            raise ImportError("the bm25 retriever needs bm25s: pip install 'reddit-amazon[retrieval]'") from error

        return bm25s.tokenize(list(texts), stopwords=self.stopwords, return_ids=False, show_progress=False)

    def scores(self, queries: Sequence[str], items: Sequence[tuple[str, str]]) -> np.ndarray:
        import bm25s

        documents = self._tokenize([text for _, text in items])
        matrix = np.zeros((len(queries), len(items)), dtype=np.float32)
        if not any(documents):
            return matrix
        index = bm25s.BM25(k1=self.k1, b=self.b)
        index.index(documents, show_progress=False)
        for row, tokens in enumerate(self._tokenize(queries)):
            if tokens:
                matrix[row] = index.get_scores(tokens)
        return matrix
