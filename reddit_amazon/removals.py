"""Removal requests: drop the records someone asked to have removed, without moving any other record.

A request file is plain text, one request per line; ``#`` starts a comment, blank lines are ignored::

    # 2026-12-01, issue 41
    t1_k3b9xq2        a comment: every record it is the recommendation of, or a context turn of
    t3_18zq4ab        a submission: its whole thread
    k3b9xq2           a bare Reddit id: a record's example_id, thread_id, gt_comment_id or a turn's id
    lavic-home-test-000042     an imported record's example_id (or an imported thread_id, lavic-<16 hex>)
    u_93d6cee91ed9831a         an author pseudonym as turns[].author holds it: every record with a turn of theirs
    u/SomeUser        a user name, hashed with the build's salt into that pseudonym (build --removals, remove --salt)

A record whose recommending comment is removed takes with it the records that quote that comment as context (the
replies below it in the thread): in a build the request matches their turn of that id, in an imported copy, whose
turns have no ids, the comment's text within the thread does. Records are dropped after the thread split, so the
other records keep their split:
``assemble.split_by_thread`` places threads greedily against per-split targets, and dropping records before it
would move other threads between train and test.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from reddit_amazon.schema import DOMAINS, SPLITS, Conversation, SchemaError

RequestKind = Literal["comment", "submission", "reddit_id", "record", "author", "username"]

_REDDIT_ID = r"[0-9a-z]{1,13}"
#: Each form a line may take, tried in this order: the first that matches the whole line decides its kind.
_FORMS: tuple[tuple[RequestKind, re.Pattern[str]], ...] = (
    ("comment", re.compile(rf"t1_({_REDDIT_ID})")),
    ("submission", re.compile(rf"t3_({_REDDIT_ID})")),
    ("author", re.compile(r"(u_[0-9a-f]{16})")),
    ("username", re.compile(r"/?u/([A-Za-z0-9_-]{1,64})")),
    ("record", re.compile(r"(lavic-(?:[0-9a-f]{16}|(?:beauty|fashion|home)-(?:train|validation|test)-\d{6}))")),
    ("reddit_id", re.compile(f"({_REDDIT_ID})")),
)
FORMS_HELP = ("t1_<comment id>, t3_<submission id>, a bare Reddit id, an example_id or thread_id (lavic-...), "
              "an author pseudonym (u_ and 16 hex digits) or u/<user name>")


@dataclass(frozen=True)
class RemovalRequest:
    """One line of a request file. ``line`` only says where it came from: two lines asking the same are one."""

    kind: RequestKind
    value: str
    line: str = field(default="", compare=False)  # file:line

    @property
    def normalised(self) -> str:
        return f"{self.kind}:{self.value}"


@dataclass(frozen=True)
class RemovalRequests:
    """The distinct requests of a file, in normalised order."""

    requests: tuple[RemovalRequest, ...]

    @property
    def by_user_name(self) -> bool:
        """Whether a request is ``u/<name>``, which only the build's salt finds the records of."""
        return any(request.kind == "username" for request in self.requests)

    def digest(self, pseudonymize: Any) -> str:
        """Of the normalised list, keyed with the salt of ``pseudonymize`` (a
        :class:`~reddit_amazon.threads.Pseudonymizer`): tells which requests a version honours to whoever holds the
        salt. A plain sha256 named them to anyone: hashing each id of the previous, public version finds the one
        asked for (and who asked is personal too)."""
        return pseudonymize.digest("".join(f"{r.normalised}\n" for r in self.requests).encode("utf-8"))

    def with_pseudonyms(self, pseudonymize: Any | None) -> RemovalRequests:
        """``u/<name>`` requests as the pseudonym ``pseudonymize`` (a :class:`~reddit_amazon.threads.Pseudonymizer`)
        gives that name; without one (no salt), such a request is refused, naming its line."""
        resolved = []
        for request in self.requests:
            if request.kind == "username":
                if pseudonymize is None:
                    raise SchemaError(f"{request.line}: u/{request.value} needs the salt the folder's pseudonyms were "
                                      "made with (remove --salt, or build --removals in the build's workdir); or "
                                      "give the pseudonym as turns[].author holds it (u_...)")
                request = RemovalRequest("author", pseudonymize(request.value), request.line)
            resolved.append(request)
        return _distinct(resolved)


def read_requests(path: str | os.PathLike) -> RemovalRequests:
    """The requests of the file at ``path``; a line of no known form is a :class:`SchemaError` naming file:line."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")  # and the BOM Windows editors start a UTF-8 file with
    except UnicodeDecodeError as error:
        raise SchemaError(f"{path}: not UTF-8 text ({error})") from None
    requests = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if line:
            requests.append(parse_request(line, f"{path}:{number}"))
    return _distinct(requests)


def parse_request(text: str, where: str) -> RemovalRequest:
    # Every form is lower case as the records hold it (Reddit ids are base36, pseudonyms hex): an id copied in
    # upper case (T1_K3B9XQ2) names the same thing, and Reddit user names ignore case.
    for kind, pattern in _FORMS:
        if match := pattern.fullmatch(text.lower()):
            return RemovalRequest(kind, match.group(1), where)
    raise SchemaError(f"{where}: {text[:80]!r} is no removal request; a line holds one of: {FORMS_HELP}")


def _distinct(requests: Iterable[RemovalRequest]) -> RemovalRequests:
    return RemovalRequests(tuple(sorted(set(requests), key=lambda r: r.normalised)))


# --------------------------------------------------------------------------------------------
# Matching records
# --------------------------------------------------------------------------------------------


Splits = Mapping[str, Mapping[str, list[Conversation]]]


@dataclass
class Removal:
    """What applying requests to a dataset's splits kept and dropped."""

    kept: dict[str, dict[str, list[Conversation]]]
    dropped: dict[str, dict[str, int]]  # domain -> split -> records dropped
    requests: int
    unmatched: int  # requests that matched no record

    @property
    def records_dropped(self) -> int:
        return sum(n for splits in self.dropped.values() for n in splits.values())

    def record(self, requests: RemovalRequests, pseudonymize: Any | None, **extra: Any) -> dict[str, Any]:
        """The manifest's entry: counts, never the ids asked for; with the salt (``pseudonymize``), the requests'
        keyed digest (:meth:`RemovalRequests.digest`)."""
        digest = {"requests_digest": requests.digest(pseudonymize)} if pseudonymize else {}
        return {"requests": self.requests, **digest, "unmatched_requests": self.unmatched,
                "records_dropped": self.dropped, **extra}


def drop_requested(splits: Splits, requests: RemovalRequests) -> Removal:
    """``splits`` without the records ``requests`` ask for (``u/<name>`` resolved already: see
    :meth:`RemovalRequests.with_pseudonyms`); every other record stays in its split, unchanged."""
    if requests.by_user_name:
        raise ValueError("u/<name> requests must be resolved to pseudonyms first (RemovalRequests.with_pseudonyms)")
    by_kind: dict[str, dict[str, RemovalRequest]] = {}
    for request in requests.requests:
        by_kind.setdefault(request.kind, {})[request.value] = request
    records = [record for domain in splits.values() for split in domain.values() for record in split]
    matched_requests: set[RemovalRequest] = set()
    removed: set[int] = set()
    for record in records:
        if hits := _requests_for(record, by_kind):
            matched_requests.update(hits)
            removed.add(id(record))
    # the recommending comments of the records asked for, and the records quoting them as context
    gone = _GoneComments()
    for record in records:
        if id(record) in removed:
            gone.add(record)
    for record in records:
        if id(record) not in removed and gone.quoted_by(record):
            removed.add(id(record))
    kept: dict[str, dict[str, list[Conversation]]] = {}
    dropped: dict[str, dict[str, int]] = {}
    for domain in DOMAINS:
        for split in SPLITS:
            records_here = splits.get(domain, {}).get(split, [])
            kept.setdefault(domain, {})[split] = [r for r in records_here if id(r) not in removed]
            dropped.setdefault(domain, {})[split] = len(records_here) - len(kept[domain][split])
    return Removal(kept=kept, dropped=dropped, requests=len(requests.requests),
                   unmatched=len(requests.requests) - len(matched_requests))


def _requests_for(record: Conversation, by_kind: Mapping[str, Mapping[str, RemovalRequest]]) -> list[RemovalRequest]:
    """The requests asking for ``record`` (looked up by each of its ids, so a long request file costs no more)."""
    turn_ids = {turn.id for turn in record.turns if turn.id}
    keys: dict[str, set[str]] = {
        "comment": {record.gt_comment_id, *(t.id for t in record.turns if t.kind == "comment")},
        "submission": {record.thread_id, *(t.id for t in record.turns if t.kind == "submission")},
        "reddit_id": {record.example_id, record.thread_id, record.gt_comment_id, *turn_ids},
        "record": {record.example_id, record.thread_id},
        "author": {turn.author for turn in record.turns},
    }
    return [request for kind, values in keys.items() for value in values - {""}
            if (request := by_kind.get(kind, {}).get(value)) is not None]


class _GoneComments:
    """The recommending comments of the removed records of an imported copy, by thread, to find the records quoting
    one as a context turn by its text (imported turns have no ids). A build needs none of this: a record's id is its
    recommending comment's, which its replies' turns hold, so the request naming the one names the others."""

    def __init__(self) -> None:
        self._texts: dict[str, set[str]] = {}

    def add(self, record: Conversation) -> None:
        if not record.gt_comment_id:
            self._texts.setdefault(record.thread_id, set()).add(record.gt_text)

    def quoted_by(self, record: Conversation) -> bool:
        texts = self._texts.get(record.thread_id, ())
        return any(turn.kind == "comment" and not turn.id and turn.text in texts for turn in record.turns)


# --------------------------------------------------------------------------------------------
# A dataset folder
# --------------------------------------------------------------------------------------------


@dataclass
class FolderRemoval:
    """What ``remove`` did to a folder: ``manifest`` is None when no record matched (the folder is unchanged);
    ``warning``, a line for the maintainer (the salt could not be checked)."""

    removal: Removal
    version: str
    manifest: dict[str, Any] | None
    warning: str | None = None


def next_version(version: str) -> str:
    """The MINOR bump of ``version`` (pre-release and build parts dropped): records gone, nothing else changed."""
    from reddit_amazon.schema import SEMVER

    match = SEMVER.fullmatch(version)
    if match is None:
        raise SchemaError(f"the folder's version {version!r} is not semver: give the new one with --version")
    return f"{match.group(1)}.{int(match.group(2)) + 1}.0"


def semver_precedence(version: str) -> tuple:
    """A sort key of the semver ``version`` by SemVer 2.0 precedence: MAJOR, MINOR, PATCH as numbers; a pre-release
    below its release, compared identifier by identifier (numbers as numbers, below words); build metadata ignored."""
    core, _, pre_release = version.split("+", 1)[0].partition("-")
    identifiers = tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in pre_release.split(".")) \
        if pre_release else ()
    return (*map(int, core.split(".")), not pre_release, identifiers)


def remove_from_folder(folder: str | os.PathLike, requests: RemovalRequests, *, version: str | None = None,
                       salt: str | None = None) -> FolderRemoval:
    """Drop the records ``requests`` ask for from the dataset folder ``folder``, rewriting it atomically under its
    writer lock, as version ``version`` (default: the next MINOR). A folder that does not match its manifest is
    refused (its damage would be published under a new fingerprint), and so is a ``salt`` other than the one its
    build recorded the check of (see :func:`checked_salt`); nothing is written when no record matches."""
    from reddit_amazon.dataset_folder import rewrite_dataset
    from reddit_amazon.threads import Pseudonymizer

    salt = (salt or "").strip()  # as the Reddit stage keeps it: a salt read from a file may end in a newline
    pseudonymize = Pseudonymizer(salt) if salt else None
    requests.with_pseudonyms(pseudonymize)  # u/<name> without a salt: refused before the folder is locked
    outcome: list[FolderRemoval] = []

    def rewrite(folder: Path, scratch: Path):
        contents, removal, new_version, warning = _contents_without(folder, requests, pseudonymize, version, scratch)
        outcome.append(FolderRemoval(removal, new_version, None, warning))
        return contents if removal.records_dropped else None

    manifest = rewrite_dataset(folder, rewrite)
    outcome[0].manifest = manifest
    return outcome[0]


def _contents_without(folder: Path, requests: RemovalRequests, pseudonymize: Any | None, version: str | None,
                      scratch: Path):
    from reddit_amazon.assemble import report_of_given_candidates, table1_stats
    from reddit_amazon.dataset_folder import (SOURCE_COPY_DIR, DatasetContents, read_folder_records, read_manifest,
                                              verify)
    from reddit_amazon.schema import SEMVER

    manifest = read_manifest(folder)
    if problems := verify(folder):
        raise SchemaError(f"{folder} does not match its manifest, so nothing was removed:\n  " + "\n  ".join(problems)
                          + f"\n(`reddit-amazon verify {folder}` lists the same); restore, rebuild or re-import it")
    pseudonymize, warning = checked_salt(folder, manifest, pseudonymize, requests.by_user_name)
    requests = requests.with_pseudonyms(pseudonymize)
    new_version = version or next_version(str(manifest["version"]))
    if not SEMVER.fullmatch(new_version):
        raise SchemaError(f"--version {new_version!r} is not semver (MAJOR.MINOR.PATCH)")
    if new_version == manifest["version"]:
        raise SchemaError(f"--version {new_version} is the folder's version: records removed make a new version "
                          "(its fingerprint differs; a version already published under other content is refused)")
    if SEMVER.fullmatch(str(manifest["version"])) and \
            semver_precedence(new_version) <= semver_precedence(str(manifest["version"])):
        raise SchemaError(f"--version {new_version} is not above the folder's version {manifest['version']}: records "
                          "removed make a later version (an earlier one may be published already, under other "
                          "content, and users pick the newest to get the removals)")
    splits, items = read_folder_records(folder, scratch)
    removal = drop_requested(splits, requests)
    written = {"name", "version", "fingerprint", "shards", "schema_package_version", "candidate_sets",
               "candidate_columns", "counts"}  # what write_dataset records anew
    metadata = {key: value for key, value in manifest.items() if key not in written}
    if "stats" in metadata:  # the card's Table 1, of the records kept
        metadata["stats"] = table1_stats(removal.kept, items)
    candidates = (metadata.get("build_reports") or {}).get("candidates")
    if candidates:  # the recall bounding HR@1, over the records kept (as a build with --removals computes it)
        recall = report_of_given_candidates(removal.kept, list(candidates.get("recall", {}))).recall
        metadata["build_reports"] = {**metadata["build_reports"], "candidates": {**candidates, "recall": recall}}
    entry = removal.record(requests, pseudonymize, applied="remove", from_version=manifest["version"],
                           from_fingerprint=manifest["fingerprint"])
    metadata["removals"] = [*metadata.get("removals", []), entry]
    # lavic_source/ holds the release's item metadata files (no conversation text), which export-lavic writes back
    # as they were: kept, with their sha256 in the manifest.
    copies = sorted(p for p in (folder / SOURCE_COPY_DIR).iterdir() if not p.name.startswith(".")) \
        if (folder / SOURCE_COPY_DIR).is_dir() else []
    contents = DatasetContents(conversations=removal.kept, items=items, version=new_version,
                               candidate_sets=list(manifest.get("candidate_sets", [])), metadata=metadata,
                               source_files=copies)
    return contents, removal, new_version, warning


def checked_salt(folder: Path, manifest: Mapping[str, Any], pseudonymize: Any | None, by_user_name: bool
                 ) -> tuple[Any | None, str | None]:
    """``pseudonymize`` (a :class:`~reddit_amazon.threads.Pseudonymizer`, or None: no salt) where its salt is the
    one the folder's build recorded the check of (``build.salt_check``), and a warning line where that is unknown.

    A wrong salt turns every ``u/<name>`` into a pseudonym no record has: it would report the user's records as
    none, and honour nothing. So with such requests it is refused, nothing changed; without them it only keys the
    manifest's ``requests_digest``, which is then left out (keyed with a wrong salt, it proves nothing to whoever
    holds the build's). A manifest without the check (written before builds recorded one, or imported: an import
    has no pseudonyms) leaves a wrong salt as it was, with a warning."""
    if pseudonymize is None:
        return None, None
    build = manifest.get("build")
    recorded = build.get("salt_check") if isinstance(build, Mapping) else None
    if recorded is None:
        return pseudonymize, (f"{folder}: its manifest records no salt check (written before builds recorded one, or "
                              "imported), so the salt cannot be checked: with another salt than the build's, u/<name> "
                              "requests match no record" if by_user_name else None)
    if pseudonymize.salt_check() == recorded:
        return pseudonymize, None
    if by_user_name:
        raise SchemaError(f"{folder}: the salt given is not the one its pseudonyms were made with (the manifest's "
                          "build.salt_check differs), so its u/<name> requests would match no record; nothing was "
                          "removed. Give the build's salt with --salt or REDDIT_AMAZON_SALT (a build without --salt "
                          "keeps it in <workdir>/reddit/salt), or the pseudonyms themselves (u_...)")
    return None, (f"{folder}: the salt given is not the one its pseudonyms were made with (the manifest's "
                  "build.salt_check differs): no u/<name> request needs it, and the manifest records no "
                  "requests_digest")


# --------------------------------------------------------------------------------------------
# What a Hub repo still serves after a push
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EarlierRevisions:
    """What a Hub repo serves besides the version a push just committed to ``branch`` and tagged ``tag``: every
    other tag and branch (an earlier version, or one that still holds records a later removal dropped), and
    ``history``: the branch held data files before the commit, so its earlier commits hold an earlier version."""

    repo_id: str
    branch: str
    tag: str
    tags: tuple[str, ...]
    branches: tuple[str, ...]
    history: bool

    @classmethod
    def of(cls, repo_id: str, refs: Any, *, branch: str, tag: str, history: bool) -> EarlierRevisions:
        """From ``refs``, the repo's :class:`huggingface_hub.GitRefs` as they were before the push's tag."""
        tags = sorted((ref.name for ref in refs.tags if ref.name != tag), key=_tag_order)
        return cls(repo_id, branch, tag, tuple(tags), tuple(sorted(ref.name for ref in refs.branches
                                                                   if ref.name != branch)), history)

    def notice(self) -> str | None:
        """What a maintainer honouring removal requests must still do on the Hub; None where nothing earlier is
        served. Nothing is deleted for them: deleting tags, branches and history is theirs to decide."""
        if not (self.tags or self.branches or self.history):
            return None
        repo, quoted = self.repo_id, f'"{self.repo_id}"'
        served = []
        if self.tags:
            served.append(f"  tags {', '.join(self.tags)}: load_dataset({quoted}, ..., revision=\"{self.tags[0]}\") "
                          "loads such a version")
        if self.branches:
            served.append(f"  branches {', '.join(self.branches)}")
        if self.history:
            served.append(f"  the history of {self.branch}: each earlier commit, loaded by its id (revision=<commit>)")
        steps = []
        if self.tags:
            steps.append(f"delete those tags: api.delete_tag({quoted}, tag=..., repo_type=\"dataset\"), or "
                         f"`hf repos tag delete {repo} TAG --repo-type dataset`")
        if self.branches:
            steps.append(f"delete those branches (api.delete_branch({quoted}, branch=..., repo_type=\"dataset\")), or "
                         "push this version to each and squash its history as below")
        if self.history:
            steps.append(f"squash {self.branch}'s history into one commit: api.super_squash_history({quoted}, "
                         f"branch=\"{self.branch}\", repo_type=\"dataset\")")
            steps.append(f"{self.tag} still names the commit before the squash, whose history holds them: delete it "
                         f"and tag the squashed commit: api.delete_tag({quoted}, tag=\"{self.tag}\", "
                         f"repo_type=\"dataset\"); api.create_tag({quoted}, tag=\"{self.tag}\", "
                         f"revision=\"{self.branch}\", repo_type=\"dataset\")")
        return "\n".join([
            f"{repo}: this version honours removal requests, but these revisions of the repo may still serve the "
            "records dropped (this push deleted nothing):", *served,
            "To withdraw them (api = huggingface_hub.HfApi(), with a write token):",
            *(f"  {number}. {step}" for number, step in enumerate(steps, start=1)),
            "Deleting a tag deletes only its name: its commit stays in the branch's history, loadable by its id, "
            "until that history is squashed. Copies already downloaded (clones, caches, mirrors) are out of reach. "
            "See docs/dataset.md, \"Removal requests\"."])


def _tag_order(tag: str) -> tuple:
    """``vX.Y.Z`` tags by SemVer precedence (v1.10.0 after v1.9.0), then any other tag by name."""
    from reddit_amazon.schema import SEMVER

    version = tag.removeprefix("v")
    return (0, semver_precedence(version), "") if SEMVER.fullmatch(version) else (1, (), tag)
