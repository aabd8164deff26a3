"""Token sequences for distillation (Table 10) and recommendation (Table 11), with their labels.

One function per prompt, used by training and inference alike, so both see identical inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lavic_ref.model import IGNORE_INDEX
from lavic_ref.prompts import ITEM_PLACEHOLDER, chat_wrapping, description_prompt, recommendation_prompt_parts, \
    strip_item_tokens

MAX_PROMPT_TOKENS = 2048


@dataclass
class TokenSequence:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX on the prompt; the target's ids where the loss applies


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _with_target(tokenizer, prompt_ids: list[int], target: str | None, max_target_tokens: int) -> TokenSequence:
    prompt_ids = ([tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []) + prompt_ids
    if target is None:
        return TokenSequence(prompt_ids, [IGNORE_INDEX] * len(prompt_ids))
    target_ids = _ids(tokenizer, target)[:max_target_tokens] + [tokenizer.eos_token_id]
    return TokenSequence(prompt_ids + target_ids, [IGNORE_INDEX] * len(prompt_ids) + target_ids)


def distillation_sequence(tokenizer, title: str, description: str | None, *,
                          max_target_tokens: int = 128) -> TokenSequence:
    """Table 10 with the 5 item tokens as the image; the description is the target."""
    before, after = chat_wrapping(tokenizer)
    prompt = _ids(tokenizer, before + description_prompt(title, ITEM_PLACEHOLDER) + after)
    return _with_target(tokenizer, prompt, description, max_target_tokens)


def recommendation_sequence(
    tokenizer, context: str, candidates: Sequence[tuple[str, str]], target: str | None, *, with_images: bool,
    max_tokens: int = MAX_PROMPT_TOKENS,
) -> TokenSequence:
    """Table 11; when longer than ``max_tokens`` the oldest context tokens are dropped."""
    before, after = chat_wrapping(tokenizer)
    head, tail = recommendation_prompt_parts(candidates, with_images)
    head_ids = _ids(tokenizer, before + head)
    context_ids = _ids(tokenizer, strip_item_tokens(context).rstrip("\n"))
    tail_ids = _ids(tokenizer, tail + after)
    target_len = 0 if target is None else len(_ids(tokenizer, target)) + 1
    room = max_tokens - 1 - len(head_ids) - len(tail_ids) - target_len  # 1 for BOS
    if room < 0:
        raise ValueError(f"prompt without conversation needs {max_tokens - room} tokens, over the {max_tokens} cap")
    context_ids = context_ids[len(context_ids) - room:] if len(context_ids) > room else context_ids
    return _with_target(tokenizer, head_ids + context_ids + tail_ids, target, max_target_tokens=10**6)
