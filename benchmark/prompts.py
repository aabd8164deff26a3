"""The paper's recommendation prompt (Table 11, Appendix A), kept in one place.

Wording follows the paper. Where the typeset table is not literal text, the prompt follows the authors' code
(``build_prompt``):

* the paper prints the turn markers as ``{submission}`` / ``{comment}``; the conversation text uses
  the tags ``<submission>`` / ``<comment>`` (as the authors' code does), so the prompt names the tags;
* the quotes around "ID: title" and the apostrophe of "don't" are straight (the paper prints ’);
* layout: the paper prints ``Conversation: {conversation}`` and ``Candidates: {list of candidates}`` each on one
  line; here, as in the authors' code, each label ends its line and a blank line separates the conversation (its
  trailing newline dropped) from ``Candidates:``, which lists one ``ID: title`` line per candidate;
* the gray "and images" / "followed by an image" phrases are dropped for the title-only prompt, leaving
  "with their IDs and titles formatted as ...".

With images, :data:`IMAGE_PLACEHOLDER` follows each candidate line. A title is shown on one line (its
line breaks become spaces), so each candidate is exactly one ``ID: title`` line. A recommender puts whatever its
model takes (an image part of a chat message, a processor's image token, item tokens) between the
texts of :func:`recommendation_prompt_segments`.
"""

from __future__ import annotations

from collections.abc import Sequence

IMAGE_PLACEHOLDER = "<image>"
#: What an image-capable baseline shows in place of a candidate that has no image.
NO_IMAGE_TEXT = "(no image available)"

RECOMMENDATION_PROMPT = (
    "You are an AI assistant specialized in providing personalized product recommendations based on user "
    "conversations. You are given a conversation between a user seeking recommendation (denoted by <submission>) "
    "and other users providing comments (denoted by <comment>). You are also given a set of candidate products "
    "with their IDs{and_images} formatted as \"ID: title\"{followed_by_image}. Among the candidates, recommend the "
    "most relevant product to the seeker. Only reply with its ID, and don't say anything else.\n\n"
    "Conversation:\n{conversation}\n\n"
    "Candidates:\n{candidates}"
)


def _head(conversation: str, with_images: bool) -> str:
    """Table 11 up to the first candidate line."""
    return RECOMMENDATION_PROMPT.format(
        and_images=", titles, and images" if with_images else " and titles",
        followed_by_image=" followed by an image" if with_images else "",
        conversation=conversation.rstrip("\n"),
        candidates="",
    )


def recommendation_prompt_segments(conversation: str, candidates: Sequence[tuple[str, str]]) -> list[str]:
    """Table 11 with images as the ``len(candidates) + 1`` texts around the images.

    Candidate ``i``'s image goes between segment ``i`` and segment ``i + 1``. Built from the parts, not by
    splitting rendered text, so a conversation or title that contains :data:`IMAGE_PLACEHOLDER` cannot
    move an image.
    """
    segments = [_head(conversation, True)]
    for index, (item_id, title) in enumerate(candidates):
        segments[-1] += ("\n" if index else "") + f"{item_id}: {_one_line(title)}\n"
        segments.append("")
    return segments


def render_recommendation_prompt(conversation: str, candidates: Sequence[tuple[str, str]], with_images: bool) -> str:
    """Table 11 filled in. ``candidates`` are ``(item_id, title)`` pairs in the order shown to the model;
    with images, :data:`IMAGE_PLACEHOLDER` follows each candidate line."""
    if with_images:
        return IMAGE_PLACEHOLDER.join(recommendation_prompt_segments(conversation, candidates))
    return _head(conversation, False) + "\n".join(f"{item_id}: {_one_line(title)}" for item_id, title in candidates)


def _one_line(title: str) -> str:
    """A title as one candidate line: its line breaks (``\\n``, ``\\r\\n``, ``\\r``, U+2028 ...) become spaces,
    so a title cannot end its line early and show text of its own as another ``ID: title`` candidate."""
    return " ".join(title.splitlines())
