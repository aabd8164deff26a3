"""Token sequences for distillation (Table 10) and recommendation (Table 11), with their labels.

One function per prompt, used by training and inference alike, so both see identical inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lavic_ref.model import IGNORE_INDEX
from lavic_ref.prompts import ITEM_PLACEHOLDER, MAX_DESCRIPTION_TOKENS, chat_wrapping, description_prompt, \
    recommendation_prompt_parts, strip_item_tokens

MAX_PROMPT_TOKENS = 2048


class PromptTooLongError(ValueError):
    """A prompt does not fit its token cap even with empty titles and no conversation."""


@dataclass
class TokenSequence:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX on the prompt; the target's ids where the loss applies


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def target_token_count(tokenizer, target: str, max_target_tokens: int = 10**6) -> int:
    """The tokens the loss is taken over for ``target``: its ids (at most ``max_target_tokens``) and EOS."""
    return min(len(_ids(tokenizer, target)), max_target_tokens) + 1


def _with_target(tokenizer, prompt_ids: list[int], target: str | None, max_target_tokens: int) -> TokenSequence:
    prompt_ids = ([tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []) + prompt_ids
    if target is None:
        return TokenSequence(prompt_ids, [IGNORE_INDEX] * len(prompt_ids))
    target_ids = _ids(tokenizer, target)[:max_target_tokens] + [tokenizer.eos_token_id]
    return TokenSequence(prompt_ids + target_ids, [IGNORE_INDEX] * len(prompt_ids) + target_ids)


def distillation_sequence(tokenizer, title: str, description: str | None, *,
                          max_target_tokens: int = MAX_DESCRIPTION_TOKENS) -> TokenSequence:
    """Table 10 with the 5 item tokens as the image; the description is the target."""
    before, after = chat_wrapping(tokenizer)
    prompt = _ids(tokenizer, before + description_prompt(title, ITEM_PLACEHOLDER) + after)
    return _with_target(tokenizer, prompt, description, max_target_tokens)


def recommendation_sequence(
    tokenizer, context: str, candidates: Sequence[tuple[str, str]], target: str | None, *, with_images: bool,
    max_tokens: int = MAX_PROMPT_TOKENS,
) -> TokenSequence:
    """Table 11; when longer than ``max_tokens`` the oldest context tokens are dropped.

    Where even the prompt without conversation is longer, the candidate titles are shortened
    (:func:`_shortened_titles`); every candidate keeps its ID and item tokens.
    """
    target_len = 0 if target is None else len(_ids(tokenizer, target)) + 1
    budget = max_tokens - 1 - target_len  # 1 for BOS
    head_ids, tail_ids = _prompt_ids(tokenizer, candidates, with_images)
    if len(head_ids) + len(tail_ids) > budget:
        head_ids, tail_ids = _shortened_titles(tokenizer, candidates, with_images, budget, max_tokens)
    room = budget - len(head_ids) - len(tail_ids)
    context_ids = _ids(tokenizer, strip_item_tokens(context).rstrip("\n"))
    context_ids = context_ids[len(context_ids) - room:] if len(context_ids) > room else context_ids
    return _with_target(tokenizer, head_ids + context_ids + tail_ids, target, max_target_tokens=10**6)


def least_prompt_caps(tokenizer, prompts: Sequence[tuple[Sequence[str], str | None]], *,
                      with_images: bool) -> list[int]:
    """For each (candidate IDs, target) the smallest ``max_tokens`` :func:`recommendation_sequence` fits it in: BOS,
    the prompt with empty titles and no conversation, the target and EOS (a smaller cap raises
    :class:`PromptTooLongError`). One tokenizer call for all of them: a training set has tens of thousands."""
    before, after = chat_wrapping(tokenizer)
    texts = []
    for candidate_ids, target in prompts:
        head, tail = recommendation_prompt_parts([(item_id, "") for item_id in candidate_ids], with_images)
        texts += [before + head, tail + after, target or ""]  # as _prompt_ids tokenises them
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []
    return [1 + head_len + tail_len + (0 if target is None else target_len + 1)
            for head_len, tail_len, target_len, (_, target) in zip(lengths[::3], lengths[1::3], lengths[2::3], prompts)]


def _prompt_ids(tokenizer, candidates: Sequence[tuple[str, str]], with_images: bool) -> tuple[list[int], list[int]]:
    """Token ids of the chat-wrapped Table 11 before and after the conversation."""
    before, after = chat_wrapping(tokenizer)
    head, tail = recommendation_prompt_parts(candidates, with_images)
    return _ids(tokenizer, before + head), _ids(tokenizer, tail + after)


def _shortened_titles(tokenizer, candidates: Sequence[tuple[str, str]], with_images: bool, budget: int,
                      max_tokens: int) -> tuple[list[int], list[int]]:
    """The prompt parts with each title cut to an equal share of the tokens the titles may take in ``budget``.

    Titles within the share stay whole. Text cut at a token boundary may re-tokenise to a few more tokens
    in place, so the share shrinks until the prompt fits; with empty titles it always does, unless even
    that prompt is over ``budget`` (:class:`PromptTooLongError`).
    """
    untitled = _prompt_ids(tokenizer, [(item_id, "") for item_id, _ in candidates], with_images)
    fixed = len(untitled[0]) + len(untitled[1])
    if fixed > budget:
        raise PromptTooLongError(f"a prompt of {len(candidates)} candidates needs {max_tokens - budget + fixed} "
                                 f"tokens without their titles and the conversation, over the {max_tokens}-token cap")
    titles = [_ids(tokenizer, strip_item_tokens(title)) for _, title in candidates]
    share = (budget - fixed) // len(candidates)
    while share > 0:
        shortened = [(item_id, title if len(ids) <= share else tokenizer.decode(ids[:share]))
                     for (item_id, title), ids in zip(candidates, titles)]
        head_ids, tail_ids = _prompt_ids(tokenizer, shortened, with_images)
        over = len(head_ids) + len(tail_ids) - budget
        if over <= 0:
            return head_ids, tail_ids
        share -= -(-over // len(candidates))  # ceil: every title gives up its part of the excess
    return untitled
