"""Synthetic dataset folders for the harness's own tests and speed benchmark (not for model comparisons).

Items get titles from small word lists; each conversation asks for words of its gt item's title, so
similarity baselines beat random. Candidate lists hold the gt item with probability ``gt_in_candidates``.
"""

from __future__ import annotations

import io
import os
import random
from pathlib import Path

from reddit_amazon.dataset_folder import DatasetContents, write_dataset
from reddit_amazon.schema import DOMAINS, Conversation, Item, Turn

_COLORS = ["red", "blue", "green", "black", "white", "pink", "gold", "silver", "navy", "beige"]
_NOUNS = {
    "beauty": ["lipstick", "serum", "shampoo", "mascara", "moisturizer", "perfume", "comb", "sunscreen"],
    "fashion": ["jacket", "sneakers", "scarf", "wallet", "dress", "boots", "hat", "backpack"],
    "home": ["lamp", "kettle", "pillow", "rug", "blender", "curtain", "mug", "heater"],
}
_STYLES = ["vintage", "modern", "matte", "glossy", "compact", "oversized", "wooden", "leather", "linen", "ceramic"]
_PALETTE = {"red": (200, 30, 30), "blue": (30, 30, 200), "green": (30, 160, 30), "black": (10, 10, 10),
            "white": (245, 245, 245), "pink": (240, 150, 180), "gold": (212, 175, 55), "silver": (190, 190, 190),
            "navy": (20, 20, 90), "beige": (220, 200, 160)}


def synthetic_asin(domain_index: int, number: int) -> str:
    return f"B{domain_index}{number:08d}"


def _image(color: str) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), _PALETTE[color]).save(buffer, format="PNG")
    return buffer.getvalue()


def min_items_per_domain(records_per_domain: int, candidate_sets: tuple[str, ...]) -> int:
    """The fewest items a domain needs: the gt items of a record (2 for record 3, 10, 17, ...), plus the 10
    other items its candidate lists are drawn from."""
    if records_per_domain <= 0:
        return 0
    gt_items = 2 if records_per_domain > 3 else 1
    return gt_items + (10 if candidate_sets else 0)


def make_synthetic_dataset(out: str | os.PathLike, *, records_per_domain: int = 20, items_per_domain: int = 60,
                           split: str = "test", seed: int = 0, gt_in_candidates: float = 0.8,
                           with_images: bool = True, candidate_sets: tuple[str, ...] = ("sbert",),
                           domains: tuple[str, ...] = DOMAINS) -> Path:
    """Write a dataset folder at ``out`` and return its path."""
    needed = min_items_per_domain(records_per_domain, candidate_sets)
    if items_per_domain < needed:
        raise ValueError(f"items_per_domain={items_per_domain} is too few: {records_per_domain} records per domain "
                         f"need at least {needed} (a record's gt items, up to 2, and 10 other candidates)")
    rng = random.Random(seed)
    images = {color: _image(color) for color in _COLORS} if with_images else {}
    conversations: dict[str, dict[str, list[Conversation]]] = {}
    items: dict[str, list[Item]] = {}
    for domain_index, domain in enumerate(domains):
        catalog = []
        for number in range(items_per_domain):
            color, style, noun = rng.choice(_COLORS), rng.choice(_STYLES), rng.choice(_NOUNS[domain])
            catalog.append(Item(item_id=synthetic_asin(DOMAINS.index(domain), number), domain=domain,
                                title=f"{style.title()} {color} {noun}",
                                description=f"A {style} {noun} in {color}.", image=images.get(color),
                                image_error="" if with_images else "no image"))
        records = []
        for number in range(records_per_domain):
            gt = rng.sample(catalog, 2 if number % 7 == 3 else 1)
            words = gt[0].title.lower().split()
            turns = [Turn(kind="submission", text=f"Looking for a {words[2]} for my sister",
                          author=f"u{number}", created_utc=1_600_000_000 + number, id=f"s{domain_index}{number}"),
                     Turn(kind="comment", text=f"She likes {words[1]} things, {words[0]} style.",
                          author=f"v{number}", created_utc=1_600_000_100 + number, id=f"c{domain_index}{number}")]
            candidates = {}
            for name in candidate_sets:
                others = [i for i in catalog if i not in gt]
                chosen = rng.sample(others, 10)
                if rng.random() < gt_in_candidates:
                    chosen[rng.randrange(10)] = gt[0]
                candidates[name] = [i.item_id for i in chosen]
            records.append(Conversation(
                example_id=f"{domain}-{split}-{number:06d}", domain=domain, thread_id=f"t{domain_index}{number}",
                subreddit=f"r{domain}", created_utc=1_600_000_200 + number, turns=turns, context_items=[],
                gt_text=f"Try this: https://www.amazon.com/dp/{gt[0].item_id}", gt_items=[i.item_id for i in gt],
                gt_comment_id=f"g{domain_index}{number}", candidates=candidates))
        conversations[domain] = {split: records}
        items[domain] = catalog
    write_dataset(out, DatasetContents(conversations=conversations, items=items, version="0.0.0",
                                       candidate_sets=list(candidate_sets),
                                       metadata={"source": "benchmark.synthetic (harness tests)"}))
    return Path(out)
