"""What the tests' loopback Hub servers answer alike, whichever repo type they stand in for (no network)."""

from __future__ import annotations

import base64
import json

from werkzeug import Request, Response


def preupload_answer(request: Request) -> Response:
    """Every file of a ``preupload`` request uploaded in the commit itself ("regular"), none ignored."""
    files = request.get_json()["files"]
    return Response(json.dumps({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                          for f in files]}), content_type="application/json")


def apply_commit(request: Request, files: dict[str, bytes]) -> None:
    """The added and deleted files of a ``commit`` request (its NDJSON lines) applied to ``files``."""
    for line in request.get_data().splitlines():
        item = json.loads(line)
        if item["key"] == "file":
            files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
        if item["key"] == "deletedFile":
            del files[item["value"]["path"]]


def create_branch(branches: dict[str, dict[str, bytes]], branch: str) -> Response:
    """A ``branch/NAME`` request: the branch made from main's files as they are now, or the Hub's 409 where it is
    there already."""
    if branch in branches:
        return Response(json.dumps({"error": "Reference already exists"}), status=409, content_type="application/json")
    branches[branch] = dict(branches["main"])
    return Response("{}", content_type="application/json")


def revision_not_found(revision: str) -> Response:
    """The Hub's answer to listing or committing to a branch that does not exist."""
    return Response(json.dumps({"error": f"Invalid rev id: {revision}"}), status=404, content_type="application/json",
                    headers={"X-Error-Code": "RevisionNotFound"})


def revision_answer(kind: str, revision: str, request: Request,
                    branches: dict[str, dict[str, bytes]]) -> Response | None:
    """What a Hub answers alike to ``.../KIND/REVISION`` of any repo type: a branch made, a revision not found, a
    preupload, a file listing; ``None`` for the rest (a commit, a tag: the caller's own)."""
    if kind == "branch":
        return create_branch(branches, revision)
    if revision not in branches:
        return revision_not_found(revision)
    if kind == "preupload":
        return preupload_answer(request)
    if kind == "tree":
        return Response(json.dumps([{"type": "file", "path": path, "oid": "0" * 40, "size": len(data)}
                                    for path, data in branches[revision].items()]), content_type="application/json")
    return None
