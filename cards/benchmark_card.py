"""The benchmark card: task, candidate sets, metric definitions, how to submit a recommender.

Definitions are read from the harness itself (``benchmark.metrics``, ``benchmark.registry``) so the card
cannot drift from what ``benchmark run`` does; the prose lives in ``templates/benchmark_card.md``.
"""

from __future__ import annotations

from collections.abc import Sequence

from cards.markdown import inline_code, prose, table
from cards.paper import TABLE_CANDIDATES
from cards.template import fill_template


def describe_candidate_set(name: str) -> str:
    from benchmark.retrieval.openai_emb import DEFAULT_OPENAI_EMBEDDING_MODEL, candidate_set_for
    from benchmark.retrieval.sbert import DEFAULT_SBERT_MODEL

    paper = {candidates: number for number, candidates in TABLE_CANDIDATES.items()}
    in_paper = f" The paper's Table {paper[name]} uses this set." if name in paper else ""
    if name == "sbert":
        text = (f"cosine similarity of SBERT sentence embeddings (harness default `{DEFAULT_SBERT_MODEL}`) "
                "between the conversation and the item titles.")
    elif name == candidate_set_for(DEFAULT_OPENAI_EMBEDDING_MODEL):
        text = f"cosine similarity of OpenAI `{DEFAULT_OPENAI_EMBEDDING_MODEL}` embeddings."
    elif name.startswith("openai_"):
        text = "cosine similarity of OpenAI embeddings (model named by the suffix)."
    elif name == "bm25":
        text = "BM25 (bm25s, Lucene variant, English stop words) over the item titles."
    else:
        text = f"retrieved by the retriever {inline_code(name)} (not one of the harness's built-in retrievers)."
    return text + in_paper


def render_benchmark_card(candidate_sets: Sequence[str]) -> str:
    """Markdown for ``benchmark report`` (one section; no YAML header)."""
    from benchmark.metrics import DEFAULT_BOOTSTRAP_SAMPLES, OVERALL, PREDICTION_PATTERN, RANKING_CUTOFFS
    from benchmark.registry import BUILTIN, ENTRY_POINT_GROUP

    names = list(dict.fromkeys(candidate_sets))
    sets = (table(["candidate set", "column", "how it was retrieved"],
                  [[prose(name), inline_code(f"candidates_{name}"), describe_candidate_set(name)]
                   for name in names])
            if names else "No candidate set was named for this report.")
    return fill_template(
        "benchmark_card.md",
        overall=OVERALL,
        candidate_sets=sets,
        pattern=PREDICTION_PATTERN.pattern,
        cutoffs=", ".join(str(k) for k in RANKING_CUTOFFS),
        bootstrap_samples=f"{DEFAULT_BOOTSTRAP_SAMPLES:,}",
        entry_point_group=ENTRY_POINT_GROUP,
        builtins=", ".join(inline_code(name) for name in BUILTIN),
    ).rstrip() + "\n"
