"""A tiny random-weight LLaVA-NeXT (tiny CLIP + tiny Mistral) and a word-level tokenizer, saved to a folder.

Loading it back with ``from_pretrained(folder)`` is the same code path as a hub checkpoint. Also used by
``benchmarks/lavic_gpu.py --tiny``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
ITEM_TOKENS = [f"<ItemImageEmb{i}>" for i in range(1, 6)]
VOCAB_SIZE = 1024
IMAGE_SIZE = 28
PATCH_SIZE = 14


def tiny_configs(vocab_size: int = VOCAB_SIZE):
    from transformers import CLIPVisionConfig, LlavaNextConfig, MistralConfig

    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, projection_dim=32)
    text = MistralConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         pad_token_id=3, bos_token_id=1, eos_token_id=2)
    return LlavaNextConfig(vision_config=vision, text_config=text, image_token_id=4,
                           image_grid_pinpoints=[[2 * IMAGE_SIZE, 2 * IMAGE_SIZE]],
                           vision_feature_select_strategy="default", vision_feature_layer=-2)


def _words(texts: Iterable[str]) -> list[str]:
    seen: dict[str, None] = {}
    for text in texts:
        for word in re.findall(r"\w+|[^\w\s]", text):
            seen.setdefault(word, None)
    return list(seen)


def build_tokenizer(texts: Iterable[str], vocab_size: int = VOCAB_SIZE):
    """Word-level tokenizer whose vocabulary is exactly ``vocab_size``.

    Words enter in order of first appearance in ``texts`` until the vocabulary is full (later ones become
    ``<unk>``); unused slots get filler words.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = [w for w in _words(texts) if w not in SPECIAL_TOKENS + ITEM_TOKENS]
    vocab_list = (SPECIAL_TOKENS + ITEM_TOKENS + words)[:vocab_size]
    vocab_list += [f"filler{i}" for i in range(vocab_size - len(vocab_list))]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab_list)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>",
                                        eos_token="</s>", pad_token="<pad>")
    tokenizer.add_tokens(["<image>", *ITEM_TOKENS], special_tokens=True)
    return tokenizer


def save_tiny_llava(folder: str | Path, texts: Iterable[str], seed: int = 0) -> Path:
    """Build the tiny model + processor and save both to ``folder``; returns the folder."""
    import torch
    from transformers import LlavaNextForConditionalGeneration, LlavaNextImageProcessorPil, LlavaNextProcessor

    folder = Path(folder)
    torch.manual_seed(seed)
    model = LlavaNextForConditionalGeneration(tiny_configs())
    with torch.no_grad():
        # At hidden size 64 the normed final state bounds logits to about +-1.3 with the default init, so
        # no adapter could make one token likely; a larger output layer lets tiny overfit tests learn.
        model.lm_head.weight.mul_(10)
    tokenizer = build_tokenizer(texts)
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_grid_pinpoints=[[2 * IMAGE_SIZE, 2 * IMAGE_SIZE]],
    )
    processor = LlavaNextProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=PATCH_SIZE,
                                   vision_feature_select_strategy="default", num_additional_image_tokens=1)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
