"""``random``: a uniformly random order of the candidates, seeded per example (independent of batching)."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence

from benchmark.protocol import Example


class RandomRecommender:
    name = "random"
    batch_size = 256
    uses_images = False

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def rank(self, examples: Sequence[Example]) -> list[list[str]]:
        rankings = []
        for example in examples:
            digest = hashlib.sha256(f"{self.seed}\0{example.example_id}".encode()).digest()
            ids = [c.item_id for c in example.candidates]
            random.Random(int.from_bytes(digest[:8], "big")).shuffle(ids)
            rankings.append(ids)
        return rankings
