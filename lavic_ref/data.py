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


class MissingSplitError(ValueError):
    """The dataset has no such split for a domain (an imported LaViC release has only ``validation``)."""

    def __init__(self, domain: str, split: str, present: Sequence[str]):
        self.split, self.present = split, list(present)
        super().__init__(f"{domain} has no {split!r} split (splits: {', '.join(present) or 'none'})")


def load_conversations(dataset: str | os.PathLike | None, domain: str, split: str) -> list[Conversation]:
    from reddit_amazon.dataset_folder import iter_conversations, load

    splits = load(domain, dataset)  # every split, so a missing one is named beside those there are
    if split not in splits:
        raise MissingSplitError(domain, split, list(splits))
    return list(iter_conversations(splits[split], source=f"{dataset or 'sample'}:{domain}/{split}"))


#: How training instances are built: as Section 4.3 says, or as the authors' released code does.
INSTANCE_STYLES = ("paper", "authors-code")


@dataclass(frozen=True)
class RecommendationInstance:
    """One (conversation, gt item) pair: the candidates hold the target exactly once."""

    context: str
    candidates: tuple[str, ...]
    target: str


def recommendation_instances(conversations: Sequence[Conversation], candidate_set: str, rng: random.Random,
                             style: str = "paper") -> list[RecommendationInstance]:
    """One instance per gt item; a gt missing from the candidates replaces a random non-gt one.

    ``paper`` (Section 4.3: "exactly one candidate is correct", "randomly shuffle the candidate items"):
    the conversation's other gt items among the candidates are replaced by items retrieved for other
    conversations of ``conversations``, and the candidates are shuffled. ``authors-code``: the retrieval
    order is kept and so are the other gt items, as the released training code does.
    """
    if style not in INSTANCE_STYLES:
        raise ValueError(f"unknown instance style {style!r}: one of {', '.join(INSTANCE_STYLES)}")
    column = candidate_column(candidate_set)
    for conversation in conversations:
        if not conversation.candidates.get(candidate_set):
            raise ValueError(f"conversation {conversation.example_id} has no {column} (choose another --candidates)")
    retrieved = list(dict.fromkeys(c for conv in conversations for c in conv.candidates[candidate_set]))
    instances = []
    for conversation in conversations:
        gts = set(conversation.gt_items)
        for target in conversation.gt_items:
            chosen = list(conversation.candidates[candidate_set])
            if style == "paper":
                chosen = _without_other_gts(chosen, gts, target, retrieved, rng)
            if target not in chosen:
                # Every candidate a gt item too (a record with over 10 gt items): any position will do.
                replaceable = [i for i, c in enumerate(chosen) if c not in gts] or range(len(chosen))
                if replaceable:
                    chosen[rng.choice(replaceable)] = target
                else:
                    chosen.append(target)
            if style == "paper":
                rng.shuffle(chosen)
            instances.append(RecommendationInstance(conversation.context, tuple(chosen), target))
    return instances


def _without_other_gts(candidates: list[str], gts: set[str], target: str, retrieved: Sequence[str],
                       rng: random.Random) -> list[str]:
    """Other gt items replaced by random negatives from ``retrieved`` (dropped when there is none left)."""
    excluded = gts | set(candidates)
    result = []
    for candidate in candidates:
        if candidate in gts and candidate != target:
            negative = _random_negative(retrieved, excluded, rng)
            if negative is None:
                continue
            excluded.add(negative)
            candidate = negative
        result.append(candidate)
    return result


def _random_negative(pool: Sequence[str], excluded: set[str], rng: random.Random) -> str | None:
    for _ in range(32):  # the pool is the whole split's candidates: a few draws almost always do
        pick = rng.choice(pool) if pool else None
        if pick is None or pick not in excluded:
            return pick
    rest = [c for c in pool if c not in excluded]
    return rng.choice(rest) if rest else None
