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
