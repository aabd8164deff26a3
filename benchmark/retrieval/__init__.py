"""Retrievers: ``get_retriever("bm25" | "sbert" | "openai-emb", **options)``.

Query text = the record's ``context`` (the paper encodes the conversation text); item text = the
title, or title + description when the caller builds it so (:func:`item_text`).
"""

from __future__ import annotations

import difflib
import importlib.util
from typing import Any

from benchmark.retrieval.base import Retriever

RETRIEVERS = ("bm25", "sbert", "openai-emb")
#: The optional packages each retriever imports (all from the ``retrieval`` extra).
_NEEDS = {"bm25": ("bm25s",), "sbert": ("sentence_transformers", "torch"), "openai-emb": ()}


def check_retriever_name(name: str) -> None:
    """Raise ``ValueError`` (with a did-you-mean) unless ``name`` is a retriever."""
    if name not in RETRIEVERS:
        close = difflib.get_close_matches(name, RETRIEVERS, n=2, cutoff=0.4)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown retriever {name!r}.{hint} Available: {', '.join(RETRIEVERS)}")


def check_retriever_installed(name: str) -> None:
    """Raise ``ImportError`` naming the extra when a package retriever ``name`` imports is not installed,
    without importing anything (a build checks this before its long stages)."""
    missing = [module for module in _NEEDS[name] if importlib.util.find_spec(module) is None]
    if missing:
        raise ImportError(f"the {name} retriever needs {', '.join(missing)}: pip install 'reddit-amazon[retrieval]'")


def get_retriever(name: str, **options: Any) -> Retriever:
    check_retriever_name(name)
    if name == "bm25":
        from benchmark.retrieval.bm25 import BM25Retriever

        return BM25Retriever(**options)
    if name == "sbert":
        from benchmark.retrieval.sbert import SBERTRetriever

        return SBERTRetriever(**options)
    from benchmark.retrieval.openai_emb import OpenAIEmbeddingRetriever

    return OpenAIEmbeddingRetriever(**options)


def item_text(title: str, description: str = "", with_description: bool = False) -> str:
    """The text a retriever sees for an item."""
    if with_description and description:
        return f"{title}\n{description}"
    return title


__all__ = ["RETRIEVERS", "Retriever", "check_retriever_name", "get_retriever", "item_text"]
