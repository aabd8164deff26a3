"""`reddit-amazon push DATASET_DIR REPO_ID`: a folder built or imported earlier published to a loopback Hub (no
network), a damaged one refused with nothing sent, a new branch made before the commit to it."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import socket
from pathlib import Path

import pytest
from click.testing import CliRunner
from loopback_hub import apply_commit, revision_answer
from werkzeug import Request, Response

from reddit_amazon.cli import cli
from reddit_amazon.dataset_folder import MANIFEST, read_manifest
from reddit_amazon.sample import sample_dataset_path

REPO = "me/reddit-amazon"
ROUTE = re.compile(rf"/api/datasets/{REPO}/(preupload|commit|tree|tag|branch)/([^/]+)")


def loopback_dataset_hub(httpserver, seen: dict) -> None:
    """The Hub API routes a dataset push uses, for ``REPO``: ``seen["branches"]`` holds each branch's files (main
    as a new repo's: .gitattributes), ``seen["calls"]`` each request as ``(route, revision)``, ``seen["tags"]`` each
    tag and the branch it was made on. With ``seen["cut_at_commit"]`` the connection is closed at the commit;
    ``seen["on_call"]`` is called with each route's kind before it is answered."""
    seen.setdefault("branches", {"main": {".gitattributes": b"*.parquet filter=lfs\n"}})
    seen.setdefault("calls", [])
    seen.setdefault("tags", [])

    def hub(request: Request) -> Response:
        seen.setdefault("auth", set()).add(request.headers.get("authorization"))
        if request.path == "/api/repos/create":
            assert request.get_json()["type"] == "dataset"
            seen["private"] = request.get_json().get("private")
            return Response(json.dumps({"url": httpserver.url_for(f"/datasets/{REPO}")}),
                            content_type="application/json")
        if request.path == "/api/validate-yaml":
            return Response("{}", content_type="application/json")
        if tagged := re.fullmatch(rf"/datasets/{REPO}/resolve/([^/]+)/{MANIFEST}", request.path):
            data = seen["tagged_manifests"][tagged.group(1)]
            return Response(data, content_type="application/json", headers={  # (a HEAD answer gets no body)
                "X-Repo-Commit": "a" * 40, "ETag": f'"{hashlib.sha1(data).hexdigest()}"'})
        if request.path == f"/api/datasets/{REPO}/refs":
            tags = [{"name": tag, "ref": f"refs/tags/{tag}", "targetCommit": "a" * 40} for tag, _ in seen["tags"]]
            branches = [{"name": name, "ref": f"refs/heads/{name}", "targetCommit": "a" * 40}
                        for name in seen["branches"]]
            return Response(json.dumps({"branches": branches, "converts": [], "tags": tags}),
                            content_type="application/json")
        route = ROUTE.fullmatch(request.path)
        if route is None:
            return Response(f"unexpected {request.method} {request.path}", status=404)
        kind, revision = route.groups()
        seen["calls"].append((kind, revision))
        if on_call := seen.get("on_call"):  # what else happens while the push waits for this answer
            on_call(kind)
        branches = seen["branches"]
        if (answer := revision_answer(kind, revision, request, branches)) is not None:
            return answer
        if kind == "tag":
            seen["tags"].append((request.get_json()["tag"], revision))
            seen.setdefault("tagged_manifests", {})[request.get_json()["tag"]] = branches[revision][MANIFEST]
            return Response("{}", content_type="application/json")
        if seen.get("cut_at_commit"):  # the connection closed, nothing answered (shut: see test_lavic's hub)
            request.environ["werkzeug.socket"].shutdown(socket.SHUT_RDWR)
            raise ConnectionResetError("the line went dead")
        apply_commit(request, branches[revision])
        return Response(json.dumps({"commitUrl": httpserver.url_for(f"/datasets/{REPO}/commit/" + "a" * 40),
                                    "commitOid": "a" * 40}), content_type="application/json")

    httpserver.expect_request(re.compile(".*")).respond_with_handler(hub)


@pytest.fixture
def hub(httpserver, monkeypatch, tmp_path) -> dict:
    """What the loopback Hub saw; it is the endpoint, online, with a Hugging Face cache of the test's own (its
    commits all have one id), and HF_TOKEN is set."""
    from huggingface_hub import constants

    seen: dict = {}
    loopback_dataset_hub(httpserver, seen)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the "Hub" is on loopback
    endpoint = httpserver.url_for("").rstrip("/")
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)  # as HF_ENDPOINT sets both when huggingface_hub is imported
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setenv("HF_TOKEN", "hf_secret_test_token")
    return seen


def imported_folder(tmp_path: Path) -> Path:
    from reddit_amazon.lavic_release import import_release
    from tests.test_lavic_release import release_line, write_release

    src = write_release(tmp_path / "src", [release_line(), release_line(gt_items=["B0776Y43K3"])])
    import_release(src, tmp_path / "imported")
    return tmp_path / "imported"


def files_of(folder: Path) -> dict[str, bytes]:
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


@pytest.mark.parametrize("made_by", ["sample", "import-lavic"])
def test_push_publishes_a_folder_built_or_imported_earlier_and_tags_its_version(hub, tmp_path, made_by):
    folder = sample_dataset_path() if made_by == "sample" else imported_folder(tmp_path)
    local = files_of(folder)
    result = CliRunner().invoke(cli, ["push", str(folder), REPO])
    assert result.exit_code == 0, result.output
    assert "hf_secret_test_token" not in result.output and result.output.startswith(f"pushed {folder} to {REPO}: ")
    assert hub["auth"] - {None} == {"Bearer hf_secret_test_token"}
    main = hub["branches"]["main"]
    assert main.pop(".gitattributes") == b"*.parquet filter=lfs\n"  # the repo's own file: kept
    readme = main.pop("README.md").decode("utf-8")
    assert f'load_dataset("{REPO}", ' in readme  # the card rendered for the repo ...
    assert files_of(folder)["README.md"] == local.pop("README.md")  # ... the local one left as it was
    assert main == local  # the manifest and every shard (an import's lavic_source/ too), byte for byte
    assert [kind for kind, _ in hub["calls"]].count("commit") == 1 and "branch" not in dict(hub["calls"])
    assert hub["tags"] == [(f"v{read_manifest(folder)['version']}", "main")]


def test_push_revision_makes_the_branch_from_main_then_commits_and_tags_there(hub, tmp_path):
    """The Hub answers 404 to listing or committing to a branch not there yet: the branch is made first."""
    folder = sample_dataset_path()
    result = CliRunner().invoke(cli, ["push", str(folder), REPO, "--revision", "candidate"])
    assert result.exit_code == 0, result.output
    assert hub["calls"][0] == ("branch", "candidate")
    assert {revision for _, revision in hub["calls"]} == {"candidate"}  # main is neither listed nor changed
    assert hub["branches"]["main"] == {".gitattributes": b"*.parquet filter=lfs\n"}
    assert hub["branches"]["candidate"][MANIFEST] == (folder / MANIFEST).read_bytes()
    assert hub["branches"]["candidate"][".gitattributes"] == b"*.parquet filter=lfs\n"  # made from main
    assert hub["tags"] == [(f"v{read_manifest(folder)['version']}", "candidate")]
    # Again: the branch is there, the version tagged with this content (its manifest read at the tag).
    again = CliRunner().invoke(cli, ["push", str(folder), REPO, "--revision", "candidate"])
    assert again.exit_code == 0, again.output
    assert [kind for kind, _ in hub["calls"]].count("commit") == 2


def damage_a_shard(folder: Path) -> None:
    shard = sorted((folder / "data").rglob("*.parquet"))[0]
    shard.write_bytes(shard.read_bytes()[:-100])


@pytest.mark.parametrize("damage", [damage_a_shard, lambda folder: (folder / "README.md").write_text("# mine\n")])
def test_a_folder_that_differs_from_its_manifest_is_refused_with_nothing_sent(hub, httpserver, tmp_path, damage):
    folder = tmp_path / "reddit-amazon"
    shutil.copytree(sample_dataset_path(), folder)
    damage(folder)
    result = CliRunner().invoke(cli, ["push", str(folder), REPO])
    assert result.exit_code == 1 and result.exc_info[0] is SystemExit, result.output  # not a traceback
    error = result.output.strip()
    assert error.startswith(f"Error: {folder} does not match its manifest, nothing was pushed: ") and "\n" not in error
    assert "rewrites it" in error if damage is not damage_a_shard else "a shard was changed" in error
    assert httpserver.log == []


def test_push_without_a_token_or_losing_the_connection_is_one_error_line(hub, httpserver, tmp_path, monkeypatch):
    from huggingface_hub import constants

    folder = sample_dataset_path()
    hub["cut_at_commit"] = True
    cut = CliRunner().invoke(cli, ["push", str(folder), REPO])
    assert cut.exit_code == 1 and cut.exc_info[0] is SystemExit, cut.output
    error = cut.output.strip()
    assert error.startswith("Error: ConnectionError: the connection to") and "push again" in error, error
    assert "\n" not in error and "hf_secret_test_token" not in error

    httpserver.clear_log()
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))  # no stored login either
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-tokens"))
    import reddit_amazon.dataset_folder as dataset_folder

    checked = []  # the token is asked for first: checking a full build's shards takes minutes
    monkeypatch.setattr(dataset_folder, "verify", lambda folder: checked.append(folder) or [])
    refused = CliRunner().invoke(cli, ["push", str(folder), REPO])
    assert refused.exit_code == 1 and refused.output == ("Error: pushing needs a Hugging Face token with write access: "
                                                         "set HF_TOKEN or run `hf auth login`\n"), refused.output
    assert httpserver.log == [] and checked == []


def test_push_refuses_a_folder_that_is_no_dataset(tmp_path):
    (tmp_path / "notes").mkdir()
    result = CliRunner().invoke(cli, ["push", str(tmp_path / "notes"), REPO])
    assert result.exit_code == 1 and result.output == f"Error: {tmp_path / 'notes'} is not a reddit-amazon dataset " \
                                                      f"folder (no {MANIFEST})\n"


def test_build_push_to_hub_publishes_what_push_publishes(hub, tmp_path):
    """docs/build.md's `build ... --out reddit-amazon --push-to-hub me/reddit-amazon`, on the bundled sample: the same
    commit and tag as `reddit-amazon push` of the folder it wrote (one code path)."""
    out = tmp_path / "reddit-amazon"
    result = CliRunner().invoke(cli, ["build", "--out", str(out), "--workdir", str(tmp_path / "work"),
                                      "--retrievers", "none", "--quiet", "--push-to-hub", REPO])
    assert result.exit_code == 0, result.output
    assert f"pushed to https://huggingface.co/datasets/{REPO}" in " ".join(result.output.split())
    main = dict(hub["branches"]["main"])
    assert main[MANIFEST] == (out / MANIFEST).read_bytes()
    assert hub["tags"] == [(f"v{read_manifest(out)['version']}", "main")]
    again = CliRunner().invoke(cli, ["push", str(out), REPO])  # the same content: the same files, tag kept
    assert again.exit_code == 0, again.output
    assert hub["branches"]["main"] == main and [tag for tag, _ in hub["tags"]] == [hub["tags"][0][0]] * 2


def test_an_import_into_the_folder_a_push_is_publishing_is_refused_and_the_push_sends_what_it_checked(hub, tmp_path):
    """push checked the folder against its manifest, then read its files only as it committed them: an import-lavic
    (or build) into the folder meanwhile swapped in another dataset, and its files went up under the checked
    folder's version tag, never checked. The push now holds the folder's writer lock to its end."""
    import subprocess
    import sys

    from tests.test_lavic_release import release_line, write_release

    folder = imported_folder(tmp_path)
    checked = files_of(folder)
    other = write_release(tmp_path / "other", [release_line(gt_items=["B0776Y43K3"])])
    second: list[subprocess.CompletedProcess] = []

    def import_while_pushing(kind: str) -> None:
        if kind == "tree" and not second:  # the push has checked the folder and lists the repo, nothing sent yet
            second.append(subprocess.run([sys.executable, "-m", "reddit_amazon.cli", "import-lavic", str(other),
                                          "--out", str(folder)], capture_output=True, text=True))

    hub["on_call"] = import_while_pushing
    result = CliRunner().invoke(cli, ["push", str(folder), REPO])
    assert result.exit_code == 0, result.output
    assert second[0].returncode == 1 and "Traceback" not in second[0].stderr, second[0].stderr
    assert second[0].stderr.strip().splitlines()[-1] == (
        f"Error: FolderBusyError: another dataset writer or push is writing this folder (it holds "
        f"{tmp_path / '.imported.lock'}); wait for it to end or choose another folder: {folder}")
    main = hub["branches"]["main"]
    assert main[MANIFEST] == checked[MANIFEST] and {path: main[path] for path in checked if path != "README.md"} == {
        path: data for path, data in checked.items() if path != "README.md"}
    assert files_of(folder) == checked


def removed_version(tmp_path: Path) -> Path:
    """A copy of the bundled sample (1.0.1) with one record removed: version 1.1.0, with a `removals` entry."""
    folder = tmp_path / "reddit-amazon"
    shutil.copytree(sample_dataset_path(), folder)
    (tmp_path / "removals.txt").write_text("0i4tya8\n", encoding="utf-8")
    result = CliRunner().invoke(cli, ["remove", str(folder), "--requests", str(tmp_path / "removals.txt")])
    assert result.exit_code == 0 and read_manifest(folder)["version"] == "1.1.0", result.output
    return folder


def test_pushing_a_version_with_removals_names_what_the_repo_still_serves_and_deletes_nothing(hub, httpserver,
                                                                                             tmp_path):
    """After pushing a version that honours removal requests, the repo's tag of the earlier version and the history
    of its branch still served the removed records to anyone pinning them, and push said nothing. It now names them
    and what to do, on stderr, as the command runs for the user (a subprocess: pytest's log capture would take a
    warning the terminal shows)."""
    import os
    import subprocess
    import sys

    first = CliRunner().invoke(cli, ["push", str(sample_dataset_path()), REPO])
    assert first.exit_code == 0, first.output
    folder = removed_version(tmp_path)
    env = {**os.environ, "HF_ENDPOINT": httpserver.url_for("").rstrip("/"), "HF_HUB_OFFLINE": "0",
           "HF_HUB_CACHE": str(tmp_path / "hub-cache"), "HF_TOKEN": "hf_secret_test_token"}
    pushed = subprocess.run([sys.executable, "-m", "reddit_amazon.cli", "push", str(folder), REPO],
                            capture_output=True, text=True, env=env, timeout=120)
    assert pushed.returncode == 0, pushed.stderr
    assert pushed.stdout.startswith(f"pushed {folder} to {REPO}: ")
    notice = pushed.stderr
    assert notice.startswith(f"{REPO}: this version honours removal requests, but these revisions of the repo may "
                             "still serve the records dropped (this push deleted nothing):\n"), notice
    assert "  tags v1.0.1: " in notice and "  the history of main: " in notice and "branches" not in notice
    assert f'1. delete those tags: api.delete_tag("{REPO}", tag=..., repo_type="dataset")' in notice
    assert f'2. squash main\'s history into one commit: api.super_squash_history("{REPO}", branch="main", ' in notice
    assert '3. v1.1.0 still names the commit before the squash' in notice
    assert "Deleting a tag deletes only its name: its commit stays in the branch's history" in notice
    assert "hf_secret_test_token" not in notice
    assert [tag for tag, _ in hub["tags"]] == ["v1.0.1", "v1.1.0"]
    assert not [request.path for request, _ in httpserver.log if request.method == "DELETE"]  # nothing deleted


def test_pushing_removals_to_a_branch_names_the_other_branches_and_no_notice_without_earlier_versions(hub, tmp_path,
                                                                                                      caplog):
    """A push to a branch names the repo's other branches (main holds an earlier version); a version without
    removals, or one pushed to a new repo, says nothing."""
    folder = removed_version(tmp_path)
    first = CliRunner().invoke(cli, ["push", str(folder), REPO])  # a new repo: nothing earlier is served
    assert first.exit_code == 0, first.output
    assert not [r for r in caplog.records if r.name.startswith("reddit_amazon")]
    plain = CliRunner().invoke(cli, ["push", str(sample_dataset_path()), REPO, "--revision", "older"])
    assert plain.exit_code == 0, plain.output  # no removals: nothing to say about the tag v1.1.0
    assert not [r for r in caplog.records if r.name.startswith("reddit_amazon")]
    again = CliRunner().invoke(cli, ["push", str(folder), REPO, "--revision", "candidate"])
    assert again.exit_code == 0, again.output
    [record] = [r for r in caplog.records if r.name.startswith("reddit_amazon")]
    notice = record.getMessage()
    assert "  tags v1.0.1: " in notice and "  branches main, older\n" in notice  # not v1.1.0, pushed again
    assert "  the history of candidate: " in notice and 'branch="candidate"' in notice
