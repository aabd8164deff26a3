"""``bm25`` / ``sbert``: order each record's candidates by similarity of item text to the conversation.

The rank-1 candidate is the recommendation (the "retrieval baselines" restricted to the candidate list;
``benchmark retrieve`` gives the paper's full-catalog numbers).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from benchmark.protocol import Example
from benchmark.retrieval import get_retriever, item_text

if TYPE_CHECKING:
    from benchmark.retrieval.sbert import SBERTRetriever


class _SimilarityRecommender:
    retriever_name = ""
    batch_size = 64
    uses_images = False

    def __init__(self, with_description: bool = False, **retriever_options: Any) -> None:
        self.with_description = with_description
        self.retriever = get_retriever(self.retriever_name, **retriever_options)
        self._retriever_options = retriever_options

    @property
    def settings(self) -> dict[str, Any]:
        """The retriever's settings, defaults included (recorded in results.json)."""
        from benchmark.registry import settings_of

        return {"with_description": self.with_description,
                **settings_of(type(self.retriever), self._retriever_options)}

    def rank(self, examples: Sequence[Example]) -> list[list[str]]:
        return self.retriever.rank_candidates(
            [e.context for e in examples],
            [[(c.item_id, item_text(c.title, c.description, self.with_description)) for c in e.candidates]
             for e in examples],
        )


class BM25Recommender(_SimilarityRecommender):
    name = "bm25"
    retriever_name = "bm25"


class SBERTRecommender(_SimilarityRecommender):
    name = "sbert"
    retriever_name = "sbert"
    retriever: SBERTRetriever

    @property
    def device(self) -> str | None:
        """Where its model ran (recorded in results.json)."""
        return self.retriever.resolved_device

    @property
    def embedding_provenance(self) -> dict[str, Any]:
        """Where its vectors came from (recorded in results.json)."""
        return self.retriever.embedding_provenance
