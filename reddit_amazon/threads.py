"""Rebuild the thread up to each recommending comment: submission, then ancestor comments, oldest first.

The records here are the few fields of a dump line the build keeps (:class:`RedditComment`,
:class:`RedditSubmission`). :class:`ThreadIndex` holds the comments and submissions of the threads
that are needed -- never a whole month -- and turns one recommending comment into a
:class:`reddit_amazon.schema.Conversation` whose ``domain`` is still unknown (``""``).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from reddit_amazon.dumps import bare_id, json_type, parse_created_utc, real_author, text_state

if TYPE_CHECKING:  # the schema imports `datasets` (0.6 s); scan and collect workers never need it
    from reddit_amazon.schema import Conversation

#: Deeper chains than this are treated as broken (parent_id cycles are caught on their own).
MAX_THREAD_DEPTH = 10_000


@dataclass
class RedditComment:
    id: str  # without t1_
    link_id: str  # submission id, without t3_
    parent_id: str  # as in the dump: "t1_…" (a comment) or "t3_…" (the submission)
    body: str
    author: str
    created_utc: int | None
    subreddit: str

    def to_json(self) -> dict[str, Any]:
        return {"kind": "comment", **vars(self)}  # flat fields: a copy of vars() is asdict, 10x faster


@dataclass
class RedditSubmission:
    id: str  # without t3_
    title: str
    selftext: str
    author: str
    created_utc: int | None
    subreddit: str

    def to_json(self) -> dict[str, Any]:
        return {"kind": "submission", **vars(self)}


#: The essential fields of a dump record, each a string; True: it must not be empty either. The readers below refuse
#: a record lacking one, and :func:`comment_problems` / :func:`submission_problems` say which.
_COMMENT_FIELDS = {"id": True, "link_id": True, "parent_id": True, "body": False}
_SUBMISSION_FIELDS = {"id": True, "title": False}


def _has_fields(record: Mapping[str, Any], fields: dict[str, bool]) -> bool:
    return all(isinstance(value := record.get(name), str) and (value or not needs_text)
               for name, needs_text in fields.items())


def comment_from_dump(record: Mapping[str, Any]) -> RedditComment | None:
    """The kept fields of a dump comment, or ``None`` when an essential field is missing."""
    if not _has_fields(record, _COMMENT_FIELDS):
        return None
    comment_id, link_id = bare_id(record["id"]), bare_id(record["link_id"])
    parent_id, body = record["parent_id"], record["body"]
    if not parent_id.startswith(("t1_", "t3_")):
        # Some exports drop the prefix: the submission's own id means a top-level comment.
        parent_id = ("t3_" if parent_id == link_id else "t1_") + parent_id
    return RedditComment(
        id=comment_id,
        link_id=link_id,
        parent_id=parent_id,
        body=body,
        author=_text_field(record, "author"),
        created_utc=parse_created_utc(record.get("created_utc")),
        subreddit=_text_field(record, "subreddit"),
    )


def submission_from_dump(record: Mapping[str, Any]) -> RedditSubmission | None:
    if not _has_fields(record, _SUBMISSION_FIELDS):
        return None
    return RedditSubmission(
        id=bare_id(record["id"]),
        title=record["title"],
        selftext=_text_field(record, "selftext"),
        author=_text_field(record, "author"),
        created_utc=parse_created_utc(record.get("created_utc")),
        subreddit=_text_field(record, "subreddit"),
    )


def comment_problems(record: Mapping[str, Any]) -> str:
    """Why :func:`comment_from_dump` refuses ``record`` (``""`` when it does not): each of its essential fields
    that is missing, not a string or empty, e.g. "`body` is a number, not a string"."""
    return _field_problems(record, _COMMENT_FIELDS)


def submission_problems(record: Mapping[str, Any]) -> str:
    """Why :func:`submission_from_dump` refuses ``record`` (``""`` when it does not)."""
    return _field_problems(record, _SUBMISSION_FIELDS)


def _field_problems(record: Mapping[str, Any], fields: dict[str, bool]) -> str:
    problems = []
    for name, needs_text in fields.items():
        if name not in record:
            problems.append(f"`{name}` is missing")
        elif not isinstance(value := record[name], str):
            article = "an" if json_type(value)[0] in "aeiou" else "a"
            problems.append(f"`{name}` is {'null' if value is None else f'{article} {json_type(value)}'}, "
                            "not a string")
        elif needs_text and not value:
            problems.append(f"`{name}` is empty")
    return "; ".join(problems)


def _text_field(record: Mapping[str, Any], key: str) -> str:
    """An optional text field of a dump record; ``""`` when missing or not a string (``null``)."""
    value = record.get(key)
    return value if isinstance(value, str) else ""


def record_from_json(data: Mapping[str, Any]) -> RedditComment | RedditSubmission:
    """Inverse of ``to_json`` (the work files between stages)."""
    fields = {k: v for k, v in data.items() if k != "kind"}
    return RedditComment(**fields) if data["kind"] == "comment" else RedditSubmission(**fields)


class Pseudonymizer:
    """Salted hash of a user name: the same name gives the same pseudonym within one salt.

    Besides authors, user names appear as ``u/name`` mentions (and profile links) in texts and as
    the ``u_<name>`` pseudo-subreddit of posts on a user's profile; :meth:`text` and
    :meth:`subreddit` replace those with the same hash, so a mention points at the turns that user
    wrote. Reddit user names are unique regardless of case (``u/SomeUser`` and ``u/someuser`` are one
    account) and mentions are often typed in another case than the account's, so the name is
    hashed in lower case.
    """

    def __init__(self, salt: str):
        if not salt:
            raise ValueError("the pseudonymisation salt must not be empty")
        self._key = hashlib.blake2b(salt.encode("utf-8"), digest_size=32).digest()

    def __call__(self, author: str) -> str:
        name = real_author(author)
        if not name:
            return ""
        return PSEUDONYM_PREFIX + self._hash(name)

    def digest(self, data: bytes) -> str:
        """A hash of ``data`` keyed with the salt: as secret as the pseudonyms (the manifest's removal requests)."""
        return hashlib.blake2b(data, key=self._key, digest_size=32, person=b"removals").hexdigest()

    def salt_check(self) -> str:
        """A hash of a fixed public string keyed with the salt, for the manifest: another salt gives another one, so
        ``remove --salt`` tells a wrong salt from a user with no records. It names the salt no more than the
        pseudonyms do (a salt is found from either only by trying candidates: the random default's 128 bits, never)."""
        return hashlib.blake2b(b"reddit-amazon salt check", key=self._key, digest_size=8,
                               person=b"salt check").hexdigest()

    def _hash(self, name: str) -> str:
        return hashlib.blake2b(name.lower().encode("utf-8"), key=self._key, digest_size=8).hexdigest()

    def text(self, text: str) -> str:
        """``text`` with the name of every user mention (:data:`_MENTION`) replaced by the name's hash,
        the mention's own form kept (``u/<hash>``, ``r/u_<hash>``, ``reddit.com\\/user\\/<hash>`` ...)."""
        return _MENTION.sub(lambda match: f"{match.group(1)}{self._hash(match.group(2).replace(chr(92), ''))}", text)

    def subreddit(self, name: str) -> str:
        """A subreddit name, or the hashed form of a profile's ``u_<name>``."""
        return PSEUDONYM_PREFIX + self._hash(name[2:]) if name.startswith("u_") else name


PSEUDONYM_PREFIX = "u_"
#: A user mention, then a user name (3-20 of letters, digits, ``-``, ``_``; Markdown may escape ``_`` as
#: ``\_`` and bold or italicise it, ``u/**name**``). The mention is ``u/`` or ``/u/`` (either case) not
#: inside a word or URL path (``_`` for Markdown italics, ``.`` or ``-`` ending a word, "thanks...u/x", and
#: letters of scripts written without spaces may come before), ``/user/``, ``reddit.com/u(ser)/`` (any
#: case), the profile subreddit ``r/u_`` / ``/r/u_`` / ``reddit.com/r/u_``, the same paths with JSON-escaped
#: ``\/`` or percent-encoded ``%2F`` slashes, or a message link's ``compose?to=`` (with or without ``u/``).
_MENTION = re.compile(
    r"((?:(?:(?<=(?i:reddit\.com)/)(?i:u|user)/)|(?:(?<![A-Za-z0-9/%])/?[uU]/)|(?:(?<![A-Za-z0-9.%-])/user/)"
    r"|(?:(?<=(?i:reddit\.com)/)(?i:r/u_))|(?:(?<![A-Za-z0-9/%])/?[rR]/[uU]_)"
    r"|(?:\\/(?:u|user|r\\/u_)\\/?)|(?:%2[fF](?:u|user)%2[fF])"
    r"|(?:(?:(?<=compose/\?to=)|(?<=compose\?to=))(?:/?u(?:/|%2[fF]))?))\*{0,3})"
    r"((?:[A-Za-z0-9-]|\\?_){3,20})(?![A-Za-z0-9_-])")


def displayed_text(text: str) -> str:
    """A body as a turn shows it: deleted / removed markers become the schema's marker texts."""
    from reddit_amazon.schema import DELETED_TEXT, REMOVED_TEXT

    state = text_state(text)
    if state == "deleted":
        return DELETED_TEXT
    if state == "removed":
        return REMOVED_TEXT
    return text


def submission_text(submission: RedditSubmission) -> str:
    """``title + " " + selftext`` as in the paper's release (an empty body leaves ``"title "``)."""
    title = displayed_text(submission.title)
    body = "" if text_state(submission.selftext) == "empty" else displayed_text(submission.selftext)
    return f"{title} {body}"


def linkable_texts(record: RedditComment | RedditSubmission) -> list[str]:
    """The texts of a record whose links count (deleted / removed ones have none)."""
    if isinstance(record, RedditComment):
        texts = [record.body]
    else:
        texts = [record.title, record.selftext]
    return [t for t in texts if text_state(t) == "ok"]


@dataclass
class RebuildCounts:
    conversations: int = 0
    submission_missing: int = 0
    ancestor_missing: int = 0
    broken_parent_chain: int = 0
    ancestors_deleted_or_removed: int = 0
    submissions_deleted_or_removed: int = 0
    duplicate_records: int = 0


_Record = TypeVar("_Record", "RedditComment", "RedditSubmission")


class ThreadIndex:
    """Comments and submissions of the needed threads, by id."""

    def __init__(self) -> None:
        self.comments: dict[str, RedditComment] = {}
        self.submissions: dict[str, RedditSubmission] = {}
        self.duplicates = 0

    def add(self, record: RedditComment | RedditSubmission) -> None:
        if isinstance(record, RedditComment):
            self._keep(self.comments, record)
        else:
            self._keep(self.submissions, record)

    def _keep(self, table: dict[str, _Record], record: _Record) -> None:
        known = table.get(record.id)
        if known is not None:
            self.duplicates += 1
            # The same item in two dumps (monthly and per-subreddit): keep the copy whose text survived.
            if _is_gone(record) or not _is_gone(known):
                return
        table[record.id] = record

    def add_all(self, records: Iterable[RedditComment | RedditSubmission]) -> None:
        for record in records:
            self.add(record)

    def ancestors(self, comment: RedditComment) -> tuple[RedditSubmission | None, list[RedditComment], str]:
        """(submission, ancestor comments oldest first, problem) -- problem is "" when complete.

        Every ancestor must be of the comment's thread and the chain must end at its submission: a parent
        from another thread (a damaged or mixed dump) would splice that thread's turns and links in.
        """
        chain: list[RedditComment] = []
        parent = comment.parent_id
        seen = {comment.id}
        while parent.startswith("t1_"):
            parent_id = parent[3:]
            ancestor = self.comments.get(parent_id)
            if ancestor is None:
                return None, [], "ancestor_missing"
            if parent_id in seen or len(chain) >= MAX_THREAD_DEPTH or ancestor.link_id != comment.link_id:
                return None, [], "broken_parent_chain"
            seen.add(parent_id)
            chain.append(ancestor)
            parent = ancestor.parent_id
        if parent != f"t3_{comment.link_id}":
            return None, [], "broken_parent_chain"
        submission = self.submissions.get(comment.link_id)
        if submission is None:
            return None, [], "submission_missing"
        chain.reverse()
        return submission, chain, ""

    def conversation(
        self,
        comment: RedditComment,
        gt_items: list[str],
        pseudonymize: Pseudonymizer,
        asins_of: Callable[[str], list[str]],
        counts: RebuildCounts,
    ) -> Conversation | None:
        """The conversation ending in ``comment`` (recommending ``gt_items``), or ``None`` (counted)."""
        from reddit_amazon.schema import Conversation, Turn

        submission, chain, problem = self.ancestors(comment)
        if submission is None:
            setattr(counts, problem, getattr(counts, problem) + 1)
            return None
        turns = [
            Turn(
                kind="submission",
                text=pseudonymize.text(submission_text(submission)),
                author=pseudonymize(submission.author),
                created_utc=submission.created_utc,
                id=submission.id,
            )
        ]
        if text_state(submission.selftext) in ("deleted", "removed"):
            counts.submissions_deleted_or_removed += 1
        for ancestor in chain:
            if text_state(ancestor.body) in ("deleted", "removed"):
                counts.ancestors_deleted_or_removed += 1
            turns.append(
                Turn(
                    kind="comment",
                    text=pseudonymize.text(displayed_text(ancestor.body)),
                    author=pseudonymize(ancestor.author),
                    created_utc=ancestor.created_utc,
                    id=ancestor.id,
                )
            )
        context_items: list[str] = []
        records: list[RedditComment | RedditSubmission] = [submission, *chain]
        for record in records:
            for text in linkable_texts(record):
                context_items.extend(asins_of(text))
        counts.conversations += 1
        return Conversation(
            example_id=comment.id,
            domain="",
            thread_id=submission.id,
            subreddit=pseudonymize.subreddit(comment.subreddit or submission.subreddit),
            created_utc=comment.created_utc,
            turns=turns,
            context_items=list(dict.fromkeys(context_items)),
            gt_text=pseudonymize.text(comment.body),
            gt_items=list(gt_items),
            gt_comment_id=comment.id,
        )


def _is_gone(record: RedditComment | RedditSubmission) -> bool:
    text = record.body if isinstance(record, RedditComment) else record.selftext or record.title
    return text_state(text) in ("deleted", "removed")
