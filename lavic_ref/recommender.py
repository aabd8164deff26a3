"""The ``lavic`` recommender plugin: ``benchmark run --model lavic --model-args base=…,rec_adapter=…``.

Greedy decoding of at most 10 new tokens, batched with left padding. Candidate item embeddings come
from an ``item_embeddings`` cache (``lavic-ref embed``) when given; any candidate missing there is
embedded once from its image with the (distilled) vision tower and kept for later batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path

import torch

from lavic_ref import DEFAULT_BASE
from lavic_ref.embed import EmbeddingsError, ItemEmbeddings, check_embeddings, compute_item_embeddings
from lavic_ref.model import Backbone, adapter_fingerprint, attach_adapter, embed_inputs, load_backbone, pad_batch, \
    resolve_adapter_dir, saved_base
from lavic_ref.publish import local_or_hub
from lavic_ref.sequences import MAX_PROMPT_TOKENS, recommendation_sequence

MAX_NEW_TOKENS = 10


def _flag(value: bool | int | str) -> bool:
    """A yes/no option as Python callers pass it or as ``--model-args`` decodes it (``images=0`` arrives as 0)."""
    if isinstance(value, bool):
        return value
    text = str(value).lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true/false, got {value!r}")


def _positive_int(name: str, value: int | str) -> int:
    """A count as Python callers pass it or as ``--model-args`` decodes it; 2.5, 0 or true are refused."""
    if isinstance(value, str):
        with suppress(ValueError):
            value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, not {value!r}")
    return value


@torch.inference_mode()
def generate(backbone: Backbone, prompts: Sequence[tuple[str, Sequence[tuple[str, str]]]],
             embeddings: ItemEmbeddings | None, *, max_new_tokens: int = MAX_NEW_TOKENS,
             max_tokens: int = MAX_PROMPT_TOKENS) -> list[str]:
    """Greedy outputs for ``(context, [(item_id, title), …])`` prompts; ``embeddings=None`` means titles only."""
    tokenizer = backbone.tokenizer
    with_images = embeddings is not None
    sequences = [recommendation_sequence(tokenizer, context, candidates, None, with_images=with_images,
                                         max_tokens=max_tokens).input_ids
                 for context, candidates in prompts]
    batch = pad_batch(sequences, tokenizer.pad_token_id, left=True)
    item_embeddings = None
    if embeddings is not None:
        item_embeddings = embeddings.stack([item_id for _, candidates in prompts for item_id, _ in candidates])
    inputs_embeds = embed_inputs(backbone, batch.input_ids, item_embeddings)
    output = backbone.model.generate(inputs_embeds=inputs_embeds,
                                     attention_mask=batch.attention_mask.to(backbone.device),
                                     max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id)
    return [text.strip() for text in tokenizer.batch_decode(output, skip_special_tokens=True)]


class LavicRecommender:
    """LaViC on LLaVA-NeXT.

    Options (``--model-args``): ``base`` (hub id or folder; by default the base the adapters were trained on,
    else the 7B checkpoint), ``distill_adapter`` (vision LoRA from
    ``lavic-ref distill``), ``rec_adapter`` (LM LoRA from ``lavic-ref finetune``), ``item_embeddings``
    (safetensors from ``lavic-ref embed``), ``images`` (false: the titles-only ablation), ``device``,
    ``batch_size``, ``max_new_tokens``, ``max_tokens`` (the prompt cap: give the ``--max-tokens`` the adapter
    was fine-tuned with). An adapter option may name a training output folder (its ``best/`` is used); the adapter
    and embeddings options may name a Hub model repo ``lavic-ref push`` wrote (``owner/name[@revision]``), where no
    local path of that name exists. Adapters
    and embeddings made for another base model, or an adapter given in the other's role, are refused
    (``ValueError``).
    """

    name = "lavic"

    def __init__(self, base: str | None = None, distill_adapter: str | None = None, rec_adapter: str | None = None,
                 item_embeddings: str | None = None, images: bool | str = True, device: str | None = None,
                 batch_size: int | str = 8, max_new_tokens: int | str = MAX_NEW_TOKENS,
                 max_tokens: int | str = MAX_PROMPT_TOKENS):
        # --model-args decodes an all-digit value (a folder named 2024) as a number
        base, distill_adapter, rec_adapter, item_embeddings = (
            None if value is None else str(value) for value in (base, distill_adapter, rec_adapter, item_embeddings))
        # A Hub repo `lavic-ref push` wrote (owner/name[@revision]) stands for its files; a local path wins.
        located = {label: local_or_hub(value, label) for label, value in
                   (("distill_adapter", distill_adapter), ("rec_adapter", rec_adapter),
                    ("item_embeddings", item_embeddings)) if value}
        distill_adapter, rec_adapter, item_embeddings = (
            located[label].path if label in located else None
            for label in ("distill_adapter", "rec_adapter", "item_embeddings"))
        for label, path in (("distill_adapter", distill_adapter), ("rec_adapter", rec_adapter),
                            ("item_embeddings", item_embeddings)):
            if path and not Path(path).exists():
                raise FileNotFoundError(f"{label}: {path} does not exist")
        self.batch_size = _positive_int("batch_size", batch_size)
        self.max_new_tokens = _positive_int("max_new_tokens", max_new_tokens)
        self.max_tokens = _positive_int("max_tokens", max_tokens)
        self.images = self.uses_images = _flag(images)
        distill_adapter = str(resolve_adapter_dir(distill_adapter)) if distill_adapter else None
        rec_adapter = str(resolve_adapter_dir(rec_adapter)) if rec_adapter else None
        if rec_adapter:
            _check_rec_inputs(rec_adapter, self.images, distill_adapter)
        if base is None:
            base = next((saved["base"] for adapter in (rec_adapter, distill_adapter) if adapter
                         and (saved := saved_base(Path(adapter))) and saved.get("base")), DEFAULT_BASE)
        # What results.json records the run used: the base and adapter folders as resolved, not as given (None); a
        # Hub repo's files by the repo and commit, not by their path in this machine's Hugging Face cache.
        self.settings = {"base": base, "distill_adapter": distill_adapter, "rec_adapter": rec_adapter,
                         **{label: found.hub_source for label, found in located.items() if found.hub_source},
                         # the adapter's identity, wherever it lay: `lavic-ref card` checks results by it
                         "rec_adapter_hash": adapter_fingerprint(rec_adapter) if rec_adapter else None}
        self.backbone = load_backbone(base, device=device)
        if distill_adapter:
            attach_adapter(self.backbone, distill_adapter, role="vision")
        if rec_adapter:
            attach_adapter(self.backbone, rec_adapter, role="language")
        self.backbone.model.eval()
        self.embeddings: ItemEmbeddings | None = None
        if self.images:
            cache = ItemEmbeddings.load(item_embeddings) if item_embeddings else ItemEmbeddings({})
            check_embeddings(cache, item_embeddings, self.backbone)
            _check_same_vision(cache, item_embeddings, distill_adapter)
            self.embeddings = cache.to(self.backbone.device, self.backbone.dtype)

    @property
    def device(self) -> torch.device:
        """Where the model runs (recorded in results.json)."""
        return self.backbone.device

    def recommend(self, examples: Sequence) -> list[str]:
        if self.embeddings is not None:
            self._embed_missing(examples, self.embeddings)
        prompts = [(ex.context, [(c.item_id, c.title) for c in ex.candidates]) for ex in examples]
        outputs: list[str] = []
        for start in range(0, len(prompts), self.batch_size):
            outputs += generate(self.backbone, prompts[start:start + self.batch_size], self.embeddings,
                                max_new_tokens=self.max_new_tokens, max_tokens=self.max_tokens)
        return outputs

    def _embed_missing(self, examples: Sequence, embeddings: ItemEmbeddings) -> None:
        wanted = {c.item_id: c.image_bytes for ex in examples for c in ex.candidates}
        missing = embeddings.missing(wanted)
        if missing:
            pairs = [(item_id, wanted[item_id]) for item_id in missing]
            embeddings.add(compute_item_embeddings(self.backbone, pairs, progress=False))


def _check_rec_inputs(rec_adapter: str, images: bool, distill_adapter: str | None) -> None:
    """The items must be shown as ``lavic-ref finetune`` showed them to ``rec_adapter``: with or without item
    tokens, and with embeddings of the same vision adapter (none for the no-distillation ablation)."""
    trained = (saved_base(Path(rec_adapter)) or {}).get("trained_with") or {}
    if trained.get("task") != "finetune":
        return  # not recorded (an older or foreign adapter), or another stage's adapter (its role is checked)
    if "images" in trained and bool(trained["images"]) != images:
        raise ValueError(f"rec_adapter {rec_adapter} was fine-tuned {'with' if trained['images'] else 'without'} "
                         f"item images, but images={str(images).lower()}: pass "
                         f"images={str(bool(trained['images'])).lower()}")
    made_with = str(trained.get("item embeddings") or "")
    wanted = f"vision adapter {adapter_fingerprint(distill_adapter)}"
    if images and made_with.startswith("vision adapter ") and made_with != wanted:
        raise EmbeddingsError(f"rec_adapter {rec_adapter} was fine-tuned on item embeddings of {made_with}, but "
                              f"distill_adapter={distill_adapter} gives {wanted}: pass the distill adapter its "
                              "embeddings were made with")


def _check_same_vision(cache: ItemEmbeddings, path: str | None, distill_adapter: str | None) -> None:
    """Cached embeddings and those computed here for missing items must come from the same vision adapter."""
    recorded = cache.metadata.get("adapter_hash")
    if recorded is not None and recorded != adapter_fingerprint(distill_adapter):
        made_with = cache.metadata.get("adapter") or "the base vision tower"
        raise EmbeddingsError(f"item_embeddings {path} were computed with {made_with} (adapter hash {recorded}), "
                              f"not with distill_adapter={distill_adapter}: pass the adapter they were made with")
