"""Stage 4: recommendation fine-tuning (Section 4.3).

LoRA on the LM's attention and MLP projections, vision frozen. Each Table 11 prompt lists 10 candidates
as ``ID: title`` followed by 5 item tokens; their input embeddings are replaced (one ``masked_scatter``)
by the cached item embeddings from :mod:`lavic_ref.embed`, so no image is processed during training.
The target is the gt item's ID.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from lavic_ref.data import RecommendationInstance
from lavic_ref.embed import ItemEmbeddings
from lavic_ref.model import LANGUAGE_LORA_TARGETS, Backbone, embed_inputs, inner_model, new_adapter, pad_batch, \
    target_loss
from lavic_ref.sequences import MAX_PROMPT_TOKENS, PromptTooLongError, least_prompt_caps, \
    recommendation_sequence, target_token_count
from lavic_ref.training import TrainConfig, TrainResult, digest, train


def recommendation_loss(backbone: Backbone, batch: Sequence[RecommendationInstance], titles: Mapping[str, str],
                        embeddings: ItemEmbeddings | None, max_tokens: int = MAX_PROMPT_TOKENS, *,
                        length_multiple: int = 1) -> torch.Tensor:
    """Cross-entropy on the target ID tokens; ``embeddings=None`` is the titles-only ablation.

    The batch is left-padded to a multiple of ``length_multiple`` tokens (for CUDA graphs; the loss is the same).
    """
    tokenizer = backbone.tokenizer
    with_images = embeddings is not None
    sequences = [
        recommendation_sequence(tokenizer, ex.context, [(c, titles.get(c, "")) for c in ex.candidates], ex.target,
                                with_images=with_images, max_tokens=max_tokens)
        for ex in batch
    ]
    tokens = pad_batch([s.input_ids for s in sequences], tokenizer.pad_token_id,
                       labels=[s.labels for s in sequences], left=True, multiple_of=length_multiple)
    item_embeddings = None if embeddings is None else embeddings.stack([c for ex in batch for c in ex.candidates])
    inputs_embeds = embed_inputs(backbone, tokens.input_ids, item_embeddings)
    return target_loss(backbone.model, inputs_embeds, tokens.attention_mask.to(backbone.device),
                       tokens.training_labels())


def check_prompt_cap(tokenizer, instances: Sequence[RecommendationInstance], *, with_images: bool,
                     max_tokens: int) -> None:
    """Refuse ``max_tokens`` before training when a prompt does not fit it even with empty titles and no
    conversation (:class:`PromptTooLongError`, naming the cap the longest such prompt needs)."""
    caps = least_prompt_caps(tokenizer, [(ex.candidates, ex.target) for ex in instances], with_images=with_images)
    needed, longest = max(zip(caps, instances), key=lambda pair: pair[0], default=(0, None))
    if longest is not None and needed > max_tokens:
        raise PromptTooLongError(f"a prompt of {len(longest.candidates)} candidates needs {needed} tokens without "
                                 f"their titles and the conversation, over the {max_tokens}-token cap")


def release_vision(backbone: Backbone) -> None:
    """Fine-tuning reads cached embeddings only: the vision tower and projector leave the accelerator."""
    inner = inner_model(backbone.model)
    inner.vision_tower.to("cpu")
    inner.multi_modal_projector.to("cpu")


def finetune(backbone: Backbone, train_set: Sequence[RecommendationInstance],
             val_set: Sequence[RecommendationInstance], titles: Mapping[str, str], embeddings: ItemEmbeddings | None,
             config: TrainConfig, *, max_tokens: int = MAX_PROMPT_TOKENS, resume: bool = True,
             settings: dict | None = None) -> TrainResult:
    """Train the LM LoRA; the best adapter (lowest validation loss) is saved to ``<output_dir>/best``.

    ``settings`` (e.g. the domains) join the run's settings that a resumed checkpoint must match.
    """
    run = {"task": "finetune", **(settings or {}), "images": embeddings is not None,
           "item embeddings": embeddings.identity() if embeddings is not None else None, "max_tokens": max_tokens,
           "training examples": _instances_digest(train_set, titles),
           "validation examples": _instances_digest(val_set, titles)}
    if embeddings is not None:
        embeddings.to(backbone.device, backbone.dtype)
    new_adapter(backbone, LANGUAGE_LORA_TARGETS, seed=config.seed)
    release_vision(backbone)
    return train(backbone, train_set, val_set,
                 lambda batch: recommendation_loss(backbone, batch, titles, embeddings, max_tokens,
                                                   length_multiple=config.length_multiple), config,
                 resume=resume, description="finetune", settings=run,
                 target_tokens=lambda batch: sum(target_token_count(backbone.tokenizer, ex.target) for ex in batch))


def _instances_digest(instances: Sequence[RecommendationInstance], titles: Mapping[str, str]) -> str:
    return digest(value for ex in instances
                  for value in (ex.context, ex.target, *(f"{c}: {titles.get(c, '')}" for c in ex.candidates)))
