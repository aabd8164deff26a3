"""Stage 2: visual knowledge self-distillation (Section 4.2).

LoRA on the vision tower and projector, LM frozen: from the Table 10 prompt and only the 5 CLS
embeddings of the item's sub-images, the LM must reproduce the full-token description. The loss
covers the description tokens only.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from lavic_ref.model import VISION_LORA_TARGETS, Backbone, cls_embeddings, decode_image, embed_inputs, new_adapter, \
    pad_batch, subimage_pixels, target_loss
from lavic_ref.prompts import MAX_DESCRIPTION_TOKENS
from lavic_ref.sequences import distillation_sequence, target_token_count
from lavic_ref.training import TrainConfig, TrainResult, digest, train
from reddit_amazon.schema import Item


@dataclass(frozen=True)
class DistillExample:
    item_id: str
    title: str
    image: bytes
    description: str


def distill_examples(items: Mapping[str, Item], descriptions: Mapping[str, str]) -> list[DistillExample]:
    return [DistillExample(item.item_id, item.title, image, descriptions[item.item_id])
            for item in items.values()
            if descriptions.get(item.item_id) and (image := item.encoded_image()) is not None]


def split_validation(examples: Sequence[DistillExample], size: int, seed: int) -> tuple[list, list]:
    """Hold out ``size`` examples, at most a fifth (the paper holds out 512 images), for the validation loss."""
    shuffled = list(examples)
    random.Random(seed).shuffle(shuffled)
    size = min(size, len(shuffled) // 5)
    return shuffled[size:], shuffled[:size]


def distillation_loss(backbone: Backbone, batch: Sequence[DistillExample], *,
                      length_multiple: int = 1) -> torch.Tensor:
    """Description tokens' cross-entropy given the Table 10 prompt and the 5 CLS embeddings (with the LoRA).

    The batch is left-padded to a multiple of ``length_multiple`` tokens (for CUDA graphs; the loss is the same).
    """
    tokenizer = backbone.tokenizer
    sequences = [distillation_sequence(tokenizer, ex.title, ex.description) for ex in batch]
    tokens = pad_batch([s.input_ids for s in sequences], tokenizer.pad_token_id,
                       labels=[s.labels for s in sequences], left=True, multiple_of=length_multiple)
    images = [decode_image(ex.image, ex.item_id) for ex in batch]
    item_embeddings = cls_embeddings(backbone.model, subimage_pixels(backbone.processor, images))
    inputs_embeds = embed_inputs(backbone, tokens.input_ids, item_embeddings)
    return target_loss(backbone.model, inputs_embeds, tokens.attention_mask.to(backbone.device),
                       tokens.training_labels())


def distill(backbone: Backbone, examples: Sequence[DistillExample], config: TrainConfig, *,
            validation_size: int = 512, resume: bool = True, settings: dict | None = None) -> TrainResult:
    """Train the vision LoRA; the best adapter (lowest validation loss) is saved to ``<output_dir>/best``.

    ``settings`` (e.g. the domains) join the run's settings that a resumed checkpoint must match.
    """
    new_adapter(backbone, VISION_LORA_TARGETS, seed=config.seed)
    train_set, val_set = split_validation(examples, validation_size, config.seed)
    run = {"task": "distill", **(settings or {}), "training examples": _examples_digest(train_set),
           "validation examples": _examples_digest(val_set)}
    return train(backbone, train_set, val_set,
                 lambda batch: distillation_loss(backbone, batch, length_multiple=config.length_multiple), config,
                 resume=resume, description="distill", settings=run,
                 target_tokens=lambda batch: distillation_target_tokens(backbone, batch))


def distillation_target_tokens(backbone: Backbone, batch: Sequence[DistillExample]) -> int:
    """The description tokens (EOS included) :func:`distillation_loss` averages over."""
    return sum(target_token_count(backbone.tokenizer, ex.description, MAX_DESCRIPTION_TOKENS) for ex in batch)


def _examples_digest(examples: Sequence[DistillExample]) -> str:
    return digest(value for ex in examples for value in (ex.item_id, ex.title, ex.image, ex.description))
