"""Numbers and references copied from the LaViC paper (Jeon et al., KDD'25), each with its table.

Nothing here is computed: these are the paper's reported values, used beside our measured ones.
Tables 3 and 5 keep every row; retrieval baselines rank the whole item catalog (no VR), the other
rows choose among 10 candidates from the table's retriever.
"""

from __future__ import annotations

from dataclasses import dataclass

PAPER_TITLE = "Adapting Large Vision-Language Models to Visually-Aware Conversational Recommendation"
PAPER_DOI = "10.1145/3711896.3736828"

#: Table 1: # Conv., # Turns, # Items, # Images per domain. The paper's "# Images" counts every
#: image of the items (several per item); our "images" counts items with an embedded main image.
PAPER_TABLE_1: dict[str, dict[str, int]] = {
    "beauty": {"conversations": 7_672, "turns": 22_966, "items": 5_433, "images": 28_082},
    "fashion": {"conversations": 8_039, "turns": 21_831, "items": 6_716, "images": 31_162},
    "home": {"conversations": 3_701, "turns": 6_675, "items": 3_077, "images": 18_505},
}

#: Which candidate set each results table used (our candidate column suffixes).
TABLE_CANDIDATES: dict[int, str] = {3: "sbert", 5: "openai_large"}


@dataclass(frozen=True)
class PaperRow:
    table: int
    group: str
    method: str
    hr1: tuple[float, float, float]  # beauty, fashion, home
    vr: tuple[float, float, float] | None  # None where the paper prints "-" (retrieval baselines)

    def hr1_of(self, domain: str) -> float:
        return self.hr1[_DOMAIN_INDEX[domain]]

    def vr_of(self, domain: str) -> float | None:
        return None if self.vr is None else self.vr[_DOMAIN_INDEX[domain]]


_DOMAIN_INDEX = {"beauty": 0, "fashion": 1, "home": 2}

_RETRIEVAL = "Retrieval baselines (item title)"
_RETRIEVAL_ROWS = [
    ("BM25", (0.0169, 0.0140, 0.0479)),
    ("SBERT", (0.0551, 0.0681, 0.2166)),
    ("RoBERTa-large", (0.0640, 0.0631, 0.1814)),
    ("SimCSE-large", (0.0326, 0.0301, 0.0957)),
    ("BLaIR-base", (0.0371, 0.0441, 0.1335)),
]

#: Tables 3 (SBERT candidates) and 5 (OpenAI-emb-large candidates) of the paper, every row.
PAPER_RESULTS: tuple[PaperRow, ...] = (
    *(PaperRow(3, _RETRIEVAL, method, hr1, None) for method, hr1 in _RETRIEVAL_ROWS),
    PaperRow(3, "Generative baselines (item title) + SBERT", "Vicuna-v1.5",
             (0.0533, 0.0481, 0.1184), (0.9870, 0.9903, 1.0000)),
    PaperRow(3, "Generative baselines (item title) + SBERT", "LLaVA-v1.5",
             (0.0476, 0.0441, 0.0932), (0.9896, 0.9855, 1.0000)),
    PaperRow(3, "Generative baselines (item title) + SBERT", "LLaVA-v1.6",
             (0.0770, 0.0827, 0.2030), (0.9870, 0.9867, 0.9919)),
    PaperRow(3, "Generative baselines (item title and image) + SBERT", "LLaVA-v1.5",
             (0.0000, 0.0000, 0.0000), (0.0000, 0.0000, 0.0000)),
    PaperRow(3, "Generative baselines (item title and image) + SBERT", "LLaVA-v1.6",
             (0.0584, 0.0459, 0.1089), (0.9741, 0.9843, 0.9919)),
    PaperRow(3, "Proposed method (item title and image) + SBERT", "LaViC",
             (0.1187, 0.1232, 0.3197), (0.9702, 0.9298, 0.9892)),
    *(PaperRow(5, _RETRIEVAL, method, hr1, None) for method, hr1 in _RETRIEVAL_ROWS),
    PaperRow(5, _RETRIEVAL, "OpenAI-emb-large", (0.1461, 0.1393, 0.3224), None),
    PaperRow(5, "Generative baselines (item title) + OpenAI-emb-large", "Vicuna-v1.5",
             (0.0728, 0.0718, 0.1360), (0.9819, 0.9867, 1.0000)),
    PaperRow(5, "Generative baselines (item title) + OpenAI-emb-large", "LLaVA-v1.5",
             (0.0762, 0.0768, 0.1114), (0.9832, 0.9903, 0.9946)),
    PaperRow(5, "Generative baselines (item title) + OpenAI-emb-large", "LLaVA-v1.6",
             (0.0972, 0.1150, 0.2430), (0.9870, 0.9867, 0.9839)),
    PaperRow(5, "Generative baselines (item title and image) + OpenAI-emb-large", "LLaVA-v1.5",
             (0.0000, 0.0000, 0.0000), (0.0000, 0.0000, 0.0000)),
    PaperRow(5, "Generative baselines (item title and image) + OpenAI-emb-large", "LLaVA-v1.6",
             (0.0641, 0.0857, 0.1646), (0.9728, 0.9806, 0.9946)),
    PaperRow(5, "Proposed method + OpenAI-emb-large", "LaViC",
             (0.1743, 0.1787, 0.3537), (0.9676, 0.9455, 0.9892)),
)


def paper_lavic(candidates: str) -> PaperRow | None:
    """The paper's LaViC row for a candidate set (``sbert`` -> Table 3, ``openai_large`` -> Table 5)."""
    for table, name in TABLE_CANDIDATES.items():
        if name == candidates:
            return next(row for row in PAPER_RESULTS if row.table == table and row.method == "LaViC")
    return None
