"""Stage 3: each item's 5 embeddings, computed once for the whole catalog with the distilled vision adapter.

Stored as safetensors, one ``(5, D)`` tensor per item id; the metadata names the base model (and its
weights fingerprint) and the adapter's weight hash, and the file name carries both hashes so a cache made
with other weights is never picked up by mistake; :func:`check_embeddings` refuses a file made with another
base model. Without an adapter (``--no-distill``) the base vision tower's CLS outputs are stored:
the paper's "no self-distillation" ablation.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from lavic_ref.model import Backbone, adapter_fingerprint, cls_embeddings, decode_image, same_base_name, \
    subimage_pixels
from lavic_ref.prompts import ITEM_TOKENS

if TYPE_CHECKING:
    from reddit_amazon.schema import Item


class EmbeddingsError(ValueError):
    """Item embeddings that do not fit the model or adapter they are used with."""


def embeddings_filename(base: str, adapter: str | os.PathLike | None) -> str:
    base_hash = hashlib.sha256(str(base).encode()).hexdigest()[:8]
    return f"item_embeddings-{base_hash}-{adapter_fingerprint(adapter)}.safetensors"


@torch.inference_mode()
def compute_item_embeddings(backbone: Backbone, items: Sequence[tuple[str, bytes | None]], *,
                            batch_size: int = 16, progress: bool = True) -> dict[str, torch.Tensor]:
    """``{item_id: (5, D)}`` from ``(item_id, image bytes)`` pairs (a blank image where bytes are None)."""
    result: dict[str, torch.Tensor] = {}
    for start in tqdm(range(0, len(items), batch_size), desc="embed", unit="batch", disable=not progress):
        batch = items[start:start + batch_size]
        images = [decode_image(data, item_id) for item_id, data in batch]
        pixels = subimage_pixels(backbone.processor, images).to(backbone.device)
        embeddings = cls_embeddings(backbone.model, pixels).to("cpu")
        for (item_id, _), row in zip(batch, embeddings):
            result[item_id] = row.clone()
    return result


def save_item_embeddings(path: str | os.PathLike, embeddings: dict[str, torch.Tensor], *, base: str,
                         adapter: str | os.PathLike | None, base_fingerprint: str = "") -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    metadata = {"base": str(base), "base_fingerprint": base_fingerprint, "adapter": str(adapter or ""),
                "adapter_hash": adapter_fingerprint(adapter)}
    save_file({k: v.contiguous() for k, v in embeddings.items()}, str(tmp), metadata=metadata)
    tmp.replace(path)
    return path


class ItemEmbeddings:
    """Cached item embeddings in one ``(num_items, 5, D)`` matrix, gathered by id in candidate order."""

    def __init__(self, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None):
        self.index = {item_id: row for row, item_id in enumerate(tensors)}
        self.matrix = torch.stack(list(tensors.values())) if tensors else torch.empty(0)
        self.metadata = metadata or {}
        self.device, self.dtype = self.matrix.device, self.matrix.dtype

    @classmethod
    def load(cls, path: str | os.PathLike) -> ItemEmbeddings:
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        return cls(load_file(str(path)), metadata)

    def identity(self) -> str:
        """What the embeddings were made with (the vision adapter's hash; their values' hash without metadata)."""
        if self.metadata.get("adapter_hash"):
            return f"vision adapter {self.metadata['adapter_hash']}"
        values = hashlib.sha256(self.matrix.detach().cpu().contiguous().view(torch.uint8).numpy())
        return f"values {values.hexdigest()[:16]}"

    def to(self, device: torch.device, dtype: torch.dtype) -> ItemEmbeddings:
        """Move the matrix once (e.g. to the GPU) so lookups during training are a single index_select."""
        self.device, self.dtype = device, dtype
        self.matrix = self.matrix.to(device=device, dtype=dtype)
        return self

    def add(self, tensors: dict[str, torch.Tensor]) -> None:
        new = {k: v for k, v in tensors.items() if k not in self.index}
        if not new:
            return
        start = len(self.index)
        self.index.update({item_id: start + i for i, item_id in enumerate(new)})
        rows = torch.stack(list(new.values())).to(self.device, self.dtype)
        self.matrix = rows if self.matrix.numel() == 0 else torch.cat([self.matrix, rows])

    def missing(self, item_ids: Iterable[str]) -> list[str]:
        return [i for i in dict.fromkeys(item_ids) if i not in self.index]

    def stack(self, item_ids: Sequence[str]) -> torch.Tensor:
        """``(len(item_ids), 5, D)`` on the matrix's device."""
        absent = self.missing(item_ids)
        if absent:
            raise KeyError(f"no cached embedding for item(s) {', '.join(absent[:5])}"
                           + (f" and {len(absent) - 5} more" if len(absent) > 5 else ""))
        rows = torch.tensor([self.index[i] for i in item_ids], device=self.matrix.device)
        return self.matrix.index_select(0, rows)


def embed_catalog(backbone: Backbone, items: Iterable[Item], out_dir: str | os.PathLike, *,
                  adapter: str | os.PathLike | None, batch_size: int = 16) -> Path:
    """Embed every item (blank image where it has none) and write the cache file into ``out_dir``.

    The file name depends on the base and adapter only, so a file already there with the same base weights and
    adapter keeps its other items (``embed --domain home`` then ``--domain fashion`` holds both domains).
    """
    pairs = [(item.item_id, item.image) for item in items]
    embeddings = compute_item_embeddings(backbone, pairs, batch_size=batch_size)
    path = Path(out_dir) / embeddings_filename(backbone.base, adapter)
    if path.is_file():
        previous = ItemEmbeddings.load(path)
        if (previous.metadata.get("base_fingerprint") == backbone.fingerprint
                and previous.metadata.get("adapter_hash") == adapter_fingerprint(adapter)):
            kept = {i: previous.matrix[row] for i, row in previous.index.items() if i not in embeddings}
            embeddings = {**kept, **embeddings}
    return save_item_embeddings(path, embeddings, base=backbone.base, adapter=adapter,
                                base_fingerprint=backbone.fingerprint)


def check_embeddings(cache: ItemEmbeddings, path: str | os.PathLike | None, backbone: Backbone) -> None:
    """Refuse embeddings made with another base model, or not ``(5, LM hidden size)`` per item."""
    made_with = cache.metadata.get("base")
    recorded = cache.metadata.get("base_fingerprint")
    if recorded and backbone.fingerprint:
        same = recorded == backbone.fingerprint
    else:  # a file from before weights fingerprints: compare the names
        same = made_with is None or same_base_name(made_with, backbone.base)
    if not same:
        raise EmbeddingsError(
            f"item embeddings {path} were made with base model {made_with}"
            + (f" (weights {recorded})" if recorded else "")
            + f", not with {backbone.base} (weights {backbone.fingerprint}): run `lavic-ref embed` with this base")
    expected = (len(ITEM_TOKENS), backbone.model.get_input_embeddings().embedding_dim)
    if cache.matrix.numel() and tuple(cache.matrix.shape[1:]) != expected:
        raise EmbeddingsError(f"item embeddings {path} are {tuple(cache.matrix.shape[1:])} per item, but "
                              f"{backbone.base} takes {expected} ({expected[0]} item tokens x its LM hidden size): "
                              "they were made with another base model")
