"""Stage 1: a visually grounded description of each item image (Table 10), from the full image tokens.

Descriptions are appended to a JSONL cache (``{"item_id", "description"}`` per line) after every batch,
so an interrupted run resumes where it stopped. Descriptions shipped with the dataset
(``image_description``) are used as they are unless ``regenerate`` is set, and written to the cache too,
so it holds every description of the run.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

import orjson
import torch
from tqdm.auto import tqdm

from lavic_ref.model import Backbone, decode_image
from lavic_ref.prompts import chat_wrapping, description_prompt
from reddit_amazon.schema import Item

MAX_NEW_TOKENS = 128


def read_cache(path: str | os.PathLike) -> dict[str, str]:
    """Descriptions already generated; a corrupt line fails with its line number."""
    path = Path(path)
    found: dict[str, str] = {}
    if not path.is_file():
        return found
    with path.open("rb") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = orjson.loads(line)
                found[record["item_id"]] = record["description"]
            except (orjson.JSONDecodeError, KeyError, TypeError) as error:
                raise ValueError(f"{path}:{number}: not a description record ({error})") from error
    return found


def describe_items(backbone: Backbone, items: Iterable[Item], cache: str | os.PathLike, *, batch_size: int = 8,
                   max_new_tokens: int = MAX_NEW_TOKENS, regenerate: bool = False) -> dict[str, str]:
    """Descriptions for every item with an image, generated greedily where neither shipped nor cached.

    All of them end up in ``cache``: shipped ones are appended before any is generated.
    """
    cache = Path(cache)
    cache.parent.mkdir(parents=True, exist_ok=True)
    descriptions = read_cache(cache)
    shipped: dict[str, str] = {}
    todo: list[Item] = []
    for item in items:
        if item.image is None or item.item_id in descriptions:
            continue
        if item.image_description and not regenerate:
            shipped[item.item_id] = item.image_description
        else:
            todo.append(item)
    with cache.open("ab") as handle:
        handle.write(b"".join(_record(item_id, text) for item_id, text in shipped.items()))
        handle.flush()
        descriptions.update(shipped)
        if todo:
            _generate(backbone, todo, handle, descriptions, batch_size, max_new_tokens)
    return descriptions


def _generate(backbone: Backbone, todo: list[Item], handle: BinaryIO, descriptions: dict[str, str],
              batch_size: int, max_new_tokens: int) -> None:
    """Describe ``todo`` greedily in batches, each batch appended to ``handle`` (and ``descriptions``)."""
    tokenizer = backbone.tokenizer
    tokenizer.padding_side = "left"
    before, after = chat_wrapping(tokenizer)
    image_token = backbone.processor.image_token
    with tqdm(total=len(todo), desc="describe", unit="item") as progress:
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            texts = [before + description_prompt(item.title, image_token) + after for item in batch]
            inputs = backbone.processor(text=texts, images=[decode_image(item.image, item.item_id) for item in batch],
                                        padding=True, return_tensors="pt").to(backbone.device)
            inputs["pixel_values"] = inputs["pixel_values"].to(backbone.dtype)
            with torch.inference_mode():
                output = backbone.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                                 pad_token_id=tokenizer.pad_token_id)
            new_tokens = output[:, inputs["input_ids"].shape[1]:]
            for item, text in zip(batch, tokenizer.batch_decode(new_tokens, skip_special_tokens=True)):
                descriptions[item.item_id] = text.strip()
                handle.write(_record(item.item_id, text.strip()))
            handle.flush()
            progress.update(len(batch))


def _record(item_id: str, description: str) -> bytes:
    return orjson.dumps({"item_id": item_id, "description": description}) + b"\n"
