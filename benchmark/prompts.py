"""The paper's recommendation prompt (Table 11, Appendix A), kept in one place.

Wording follows the paper. Two readings of the typeset table are made explicit here:

* the paper prints the turn markers as ``{submission}`` / ``{comment}``; the conversation text uses
  the tags ``<submission>`` / ``<comment>`` (as the authors' code does), so the prompt names the tags;
* the gray "and images" / "followed by an image" phrases are dropped for the title-only prompt, leaving
  "with their IDs and titles formatted as ...".

With images, :data:`IMAGE_PLACEHOLDER` follows each candidate line; a recommender replaces it with
whatever its model takes (an image part of a chat message, a processor's image token, item tokens).
"""

from __future__ import annotations

from collections.abc import Sequence

IMAGE_PLACEHOLDER = "<image>"

RECOMMENDATION_PROMPT = (
    "You are an AI assistant specialized in providing personalized product recommendations based on user "
    "conversations. You are given a conversation between a user seeking recommendation (denoted by <submission>) "
    "and other users providing comments (denoted by <comment>). You are also given a set of candidate products "
    "with their IDs{and_images} formatted as \"ID: title\"{followed_by_image}. Among the candidates, recommend the "
    "most relevant product to the seeker. Only reply with its ID, and don't say anything else.\n\n"
    "Conversation:\n{conversation}\n\n"
    "Candidates:\n{candidates}"
)


def render_candidates(candidates: Sequence[tuple[str, str]], with_images: bool) -> str:
    """One ``ID: title`` line per candidate, each followed by :data:`IMAGE_PLACEHOLDER` when ``with_images``."""
    lines = []
    for item_id, title in candidates:
        lines.append(f"{item_id}: {title}")
        if with_images:
            lines.append(IMAGE_PLACEHOLDER)
    return "\n".join(lines)


def render_recommendation_prompt(conversation: str, candidates: list[tuple[str, str]], with_images: bool) -> str:
    """Table 11 filled in. ``candidates`` are ``(item_id, title)`` pairs in the order shown to the model."""
    return RECOMMENDATION_PROMPT.format(
        and_images=", titles, and images" if with_images else " and titles",
        followed_by_image=" followed by an image" if with_images else "",
        conversation=conversation.rstrip("\n"),
        candidates=render_candidates(candidates, with_images),
    )
