"""LLaVA-NeXT with LaViC's item tokens: loading, 5-sub-image preprocessing, CLS embeddings, insertion, LoRA.

Module paths follow transformers 5.x: ``model.model.vision_tower`` (CLIP without a ``vision_model``
wrapper), ``model.model.multi_modal_projector``, ``model.model.language_model``, ``model.lm_head``.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from lavic_ref import DEFAULT_BASE
from lavic_ref.prompts import ITEM_TOKENS

SUBIMAGES_PER_ITEM = 5
IGNORE_INDEX = -100

#: LoRA targets as regexes: a plain name list (``q_proj``) would match the vision tower and the LM alike.
VISION_LORA_TARGETS = (
    r".*vision_tower.*\.(q_proj|k_proj|v_proj|out_proj|fc1|fc2)|.*multi_modal_projector\.linear_[12]"
)
LANGUAGE_LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
LORA_RANK, LORA_ALPHA, LORA_DROPOUT = 8, 32, 0.1


@dataclass
class Backbone:
    model: Any  # LlavaNextForConditionalGeneration, possibly wrapped by peft
    processor: Any  # LlavaNextProcessor
    device: torch.device
    dtype: torch.dtype
    base: str

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @cached_property
    def item_token_ids(self) -> torch.Tensor:
        """Ids of the 5 item tokens on the device, built once (every loss and generation batch reads them)."""
        return torch.tensor(self.tokenizer.convert_tokens_to_ids(list(ITEM_TOKENS)), device=self.device)


def resolve_device(device: str | None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def fix_five_subimages(config: Any, image_processor: Any) -> None:
    """One grid pinpoint of 2x2 crops: every image gives 1 base + 4 crops whatever its aspect ratio."""
    crop = image_processor.crop_size
    side = crop["height"] if isinstance(crop, dict) else crop.height
    pinpoints = [[2 * side, 2 * side]]
    image_processor.image_grid_pinpoints = pinpoints
    config.image_grid_pinpoints = pinpoints


def load_backbone(base: str = DEFAULT_BASE, *, device: str | None = None, dtype: torch.dtype | None = None) -> Backbone:
    """Load a LLaVA-NeXT checkpoint (hub id or local folder) with the item tokens and the 5-sub-image grid."""
    from transformers import AutoProcessor, LlavaNextForConditionalGeneration

    target = resolve_device(device)
    dtype = dtype or default_dtype(target)
    processor = AutoProcessor.from_pretrained(base)
    model = LlavaNextForConditionalGeneration.from_pretrained(base, dtype=dtype)
    fix_five_subimages(model.config, processor.image_processor)
    tokenizer = processor.tokenizer
    tokenizer.add_tokens(list(ITEM_TOKENS), special_tokens=True)
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        # Rows of item tokens are always overwritten by item embeddings, so their initial values do not matter.
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    model.to(target)
    model.requires_grad_(False)
    return Backbone(model=model, processor=processor, device=target, dtype=dtype, base=str(base))


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------


def decode_image(data: bytes | None) -> Image.Image:
    """RGB image from encoded bytes; items without an image get a blank one (as the authors' code does)."""
    if not data:
        return Image.new("RGB", (336, 336), "white")
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


def subimage_pixels(processor: Any, images: Sequence[Image.Image]) -> torch.Tensor:
    """``(num_images, 5, C, H, W)`` pixel values: base image + 4 crops each."""
    pixels = processor.image_processor(list(images), return_tensors="pt")["pixel_values"]
    if pixels.shape[1] != SUBIMAGES_PER_ITEM:
        raise ValueError(f"expected {SUBIMAGES_PER_ITEM} sub-images per image, got {pixels.shape[1]}: "
                         "call fix_five_subimages on the image processor")
    return pixels


def inner_model(model: Any) -> Any:
    """The ``LlavaNextModel`` (vision tower, projector, LM) inside a plain or peft-wrapped model."""
    return model.get_base_model().model if hasattr(model, "get_base_model") else model.model


def cls_embeddings(model: Any, pixel_values: torch.Tensor) -> torch.Tensor:
    """``(N, 5, C, H, W)`` -> ``(N, 5, D_lm)``: the vision tower's CLS output of each sub-image, projected."""
    inner = inner_model(model)
    count, views = pixel_values.shape[:2]
    flat = pixel_values.flatten(0, 1).to(inner.vision_tower.dtype)
    cls = inner.vision_tower(flat).last_hidden_state[:, 0]
    return inner.multi_modal_projector(cls).view(count, views, -1)


# --------------------------------------------------------------------------------------------
# Item tokens
# --------------------------------------------------------------------------------------------


def insert_item_embeddings(
    inputs_embeds: torch.Tensor, input_ids: torch.Tensor, item_token_ids: torch.Tensor, item_embeddings: torch.Tensor
) -> torch.Tensor:
    """Replace the embeddings of item-token positions, in sequence order, by ``item_embeddings``.

    ``item_embeddings`` is ``(num_items_in_batch, 5, D)`` in the order the items appear (row-major over the
    batch); one ``masked_scatter`` fills every position at once.
    """
    mask = torch.isin(input_ids, item_token_ids)
    expected = int(mask.sum())
    if expected != item_embeddings.shape[0] * item_embeddings.shape[1]:
        raise ValueError(f"{expected} item-token positions but {item_embeddings.shape[0]} items x "
                         f"{item_embeddings.shape[1]} embeddings")
    values = item_embeddings.reshape(-1, inputs_embeds.shape[-1]).to(inputs_embeds.dtype)
    return inputs_embeds.masked_scatter(mask.unsqueeze(-1), values)


def embed_inputs(backbone: Backbone, input_ids: torch.Tensor, item_embeddings: torch.Tensor | None) -> torch.Tensor:
    embeds = backbone.model.get_input_embeddings()(input_ids)
    if item_embeddings is None or item_embeddings.numel() == 0:
        return embeds
    return insert_item_embeddings(embeds, input_ids, backbone.item_token_ids, item_embeddings)


def target_loss(model: Any, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled (target) tokens of a left-padded batch.

    Targets sit at the end of every row, so only the last positions go through the LM head
    (``logits_to_keep``): the full-vocabulary logits of the prompt are never materialised.
    """
    labelled = (labels != IGNORE_INDEX).any(dim=0).nonzero()  # labels stay on the CPU: no device sync
    keep = labels.shape[1] - int(labelled[0]) + 1 if labelled.numel() else 1
    # use_cache=False: a training forward has no use for a KV cache (HF builds one by default).
    logits = model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, logits_to_keep=keep,
                   use_cache=False).logits
    targets = labels[:, -keep:].to(logits.device)
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets[:, 1:].flatten(),
                                             ignore_index=IGNORE_INDEX)


# --------------------------------------------------------------------------------------------
# Token sequences
# --------------------------------------------------------------------------------------------


@dataclass
class TokenBatch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor | None


def pad_batch(
    sequences: Sequence[Sequence[int]], pad_id: int, *, labels: Sequence[Sequence[int]] | None = None,
    left: bool = True,
) -> TokenBatch:
    """Pad token lists to one tensor (left padding for generation)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    label_tensor = torch.full((len(sequences), width), IGNORE_INDEX, dtype=torch.long) if labels is not None else None
    for row, sequence in enumerate(sequences):
        span = slice(width - len(sequence), width) if left else slice(0, len(sequence))
        ids[row, span] = torch.tensor(sequence, dtype=torch.long)
        mask[row, span] = 1
        if label_tensor is not None:
            label_tensor[row, span] = torch.tensor(labels[row], dtype=torch.long)
    return TokenBatch(ids, mask, label_tensor)


# --------------------------------------------------------------------------------------------
# LoRA
# --------------------------------------------------------------------------------------------


def lora_config(targets: str):
    from peft import LoraConfig

    return LoraConfig(r=LORA_RANK, lora_alpha=LORA_ALPHA, lora_dropout=LORA_DROPOUT, target_modules=targets,
                      bias="none")


def attach_adapter(backbone: Backbone, path: str | os.PathLike, *, trainable: bool = False) -> None:
    """Load a saved LoRA adapter onto the backbone (merged into the weights unless it is to be trained)."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(backbone.model, str(path), is_trainable=trainable)
    backbone.model = model if trainable else model.merge_and_unload()
    backbone.model.to(backbone.device)


def new_adapter(backbone: Backbone, targets: str) -> None:
    from peft import get_peft_model

    backbone.model = get_peft_model(backbone.model, lora_config(targets))  # LoRA weights on their layers' device


def compile_language_layers(model: Any, mode: str | None = None) -> None:
    """``torch.compile`` each LM decoder layer in place (fewer, fused kernels: a batch-1 step is launch-bound).

    The first steps compile (a minute or more) and recompile once for a new prompt length, after which
    lengths are dynamic. Numerics are those of the eager layers up to kernel fusion. ``mode`` is
    torch.compile's (``"reduce-overhead"`` adds CUDA graphs on a GPU).
    """
    for layer in inner_model(model).language_model.layers:
        layer.compile(mode=mode)


def adapter_fingerprint(path: str | os.PathLike | None) -> str:
    """Short hash of an adapter's weights ("none" without one): names embedding caches."""
    if path is None:
        return "none"
    digest = hashlib.sha256()
    for file in sorted(Path(path).glob("adapter_*")):
        digest.update(file.name.encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()[:16]
