"""The paper's prompts: Table 10 (image description) and Table 11 (recommendation).

Item images enter the recommendation and distillation prompts as five placeholder tokens
(:data:`ITEM_TOKENS`) whose input embeddings are replaced by the item's five CLS embeddings.
Table 11 itself lives in :mod:`benchmark.prompts` (shared with the other generative baselines).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

ITEM_TOKENS: tuple[str, ...] = tuple(f"<ItemImageEmb{i}>" for i in range(1, 6))
ITEM_PLACEHOLDER = "".join(ITEM_TOKENS)
_RESERVED = (*ITEM_TOKENS, "<image>")
_RESERVED_TOKENS = re.compile("|".join(map(re.escape, _RESERVED)))
_LONGEST_RESERVED = max(map(len, _RESERVED))

DESCRIPTION_PROMPT = (
    "You are a helpful AI assistant. Given an Amazon product's title and its image, please provide a detailed, "
    "visually grounded description of the product that would help someone decide whether to purchase it. "
    "Please focus on the product's appearance, features, and any other visually informative aspects. "
    "Do not mention the product's title in your answer.\n\n"
    "This product's title is: {title}\n"
    "{image}"
)
#: The longest description, in tokens: generated with at most this many new tokens, and the distillation target
#: cut to it ("we set the maximum output length to 128 tokens", Section 5.1).
MAX_DESCRIPTION_TOKENS = 128


def description_prompt(title: str, image: str) -> str:
    """Table 10 with ``image`` (the processor's ``<image>`` token, or :data:`ITEM_PLACEHOLDER`)."""
    return DESCRIPTION_PROMPT.format(title=strip_item_tokens(title), image=image)


def recommendation_prompt_parts(candidates: Sequence[tuple[str, str]], with_images: bool) -> tuple[str, str]:
    """Table 11 (``benchmark.prompts``) split around the conversation, item tokens in place of images."""
    from benchmark.prompts import IMAGE_PLACEHOLDER, render_recommendation_prompt

    marker = "\x00CONVERSATION\x00"
    clean = [(item_id, strip_item_tokens(title)) for item_id, title in candidates]  # one line each: Table 11 sees to it
    rendered = render_recommendation_prompt(marker, clean, with_images)
    head, tail = rendered.split(marker)
    lines = [ITEM_PLACEHOLDER if line == IMAGE_PLACEHOLDER else line for line in tail.split("\n")]
    return head, "\n".join(lines)


def strip_item_tokens(text: str) -> str:
    """User text must not contain the item tokens (or ``<image>``): their count has to match the items.

    Removed until none is left, since removing one can join its neighbours into another
    (``<ItemImageEmb<ItemImageEmb2>1>``). One pass with a stack, so deep nesting costs linear time: a
    token has no "<" or ">" inside, so two can never overlap and the order of removal does not matter.
    """
    if not _RESERVED_TOKENS.search(text):
        return text
    kept: list[str] = []
    for character in text:
        kept.append(character)
        if character == ">":
            tail = "".join(kept[-_LONGEST_RESERVED:])
            token = next((token for token in _RESERVED if tail.endswith(token)), None)
            if token:
                del kept[-len(token):]
    return "".join(kept)


#: llava-v1.6-mistral's user turn, for a Mistral language model whose checkpoint has no chat template (see
#: :func:`lavic_ref.model.load_processor`).
MISTRAL_CHAT_TEMPLATE = ("{% for message in messages %}{% if message['role'] == 'user' %}"
                         "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% endif %}{% endfor %}")


def chat_wrapping(tokenizer) -> tuple[str, str]:
    """The text before and after a user turn in the tokenizer's chat format.

    Uses the tokenizer's chat template (``[INST] … [/INST]`` for llava-v1.6-mistral), so training and inference
    format prompts identically; :func:`lavic_ref.model.load_processor` gives the tokenizer one, or refuses the
    checkpoint. Templates take the message content as a string (text models) or as a list of
    ``{"type": "text", ...}`` parts (processors': llava-hf's ``chat_template.json``, which a tokenizer loads as
    its own from a folder the processor was saved to); both are tried.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"{tokenizer.name_or_path}: the tokenizer has no chat template to wrap prompts in: load it "
                         "with lavic_ref.model.load_processor, which gives it the checkpoint's (or Mistral's)")
    from jinja2 import TemplateError

    marker = "\x00USER_TEXT\x00"
    for content in (marker, [{"type": "text", "text": marker}]):
        try:
            rendered = tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                                     add_generation_prompt=True)
        except (TypeError, TemplateError):  # a template written for the other kind of content
            continue
        if rendered.count(marker) == 1:
            before, after = rendered.split(marker)
            if tokenizer.bos_token and before.startswith(tokenizer.bos_token):
                before = before[len(tokenizer.bos_token):]  # the tokenizer adds BOS itself
            return before, after
    raise ValueError(f"{tokenizer.name_or_path}: its chat template shows a user message's text neither as a string "
                     "nor as a list of text parts")
