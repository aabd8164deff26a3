"""Reading a dataset folder for the LaViC stages: items (with image bytes) and training instances."""

from __future__ import annotations

import os
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from reddit_amazon.schema import DOMAINS, Conversation, Item, candidate_column


def load_items(dataset: str | os.PathLike | None, domains: Iterable[str] = DOMAINS) -> dict[str, Item]:
    """Items of ``domains`` keyed by id, images kept as encoded bytes (the bundled sample when ``dataset`` is None)."""
    return {item.item_id: item for item in iter_domain_items(dataset, domains)}


def iter_domain_items(dataset: str | os.PathLike | None, domains: Iterable[str] = DOMAINS) -> Iterator[Item]:
    """The validated items of ``domains`` one at a time, so a caller that keeps only titles never holds every image."""
    import datasets

    from reddit_amazon.dataset_folder import iter_items, load

    for domain in domains:
        split = load("items", dataset, split=domain).cast_column("image", datasets.Image(decode=False))
        yield from iter_items(split, source=f"{dataset or 'sample'}:items/{domain}")


def load_conversations(dataset: str | os.PathLike | None, domain: str, split: str) -> list[Conversation]:
    from reddit_amazon.dataset_folder import iter_conversations, load

    rows = load(domain, dataset, split=split)
    return list(iter_conversations(rows, source=f"{dataset or 'sample'}:{domain}/{split}"))


@dataclass(frozen=True)
class RecommendationInstance:
    """One (conversation, gt item) pair: the candidates hold the target exactly once."""

    context: str
    candidates: tuple[str, ...]
    target: str


def recommendation_instances(conversations: Sequence[Conversation], candidate_set: str,
                             rng: random.Random) -> list[RecommendationInstance]:
    """One instance per gt item. A gt missing from the candidates replaces a random non-gt one (as the authors do)."""
    column = candidate_column(candidate_set)
    instances = []
    for conversation in conversations:
        candidates = conversation.candidates.get(candidate_set)
        if not candidates:
            raise ValueError(f"conversation {conversation.example_id} has no {column} (choose another --candidates)")
        for target in conversation.gt_items:
            chosen = list(candidates)
            if target not in chosen:
                # Every candidate a gt item too (a record with over 10 gt items): any position will do.
                replaceable = [i for i, c in enumerate(chosen) if c not in conversation.gt_items] or range(len(chosen))
                chosen[rng.choice(replaceable)] = target
            instances.append(RecommendationInstance(conversation.context, tuple(chosen), target))
    return instances
