"""Removal requests (`reddit-amazon remove`, `build --removals`): exactly the records asked for go, from everywhere in
the folder, and every other record keeps its split and content."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from core_install import import_extra  # tests/

from reddit_amazon import dataset_folder
from reddit_amazon.build import SAMPLE_SALT
from reddit_amazon.cli import cli
from reddit_amazon.dataset_folder import read_manifest, verify
from reddit_amazon.sample import sample_dataset_path
from reddit_amazon.threads import Pseudonymizer

BM25 = ["--retrievers", "bm25"]


def remove(folder: Path, requests: Path, *args: str, env: dict | None = None):
    return CliRunner().invoke(cli, ["remove", str(folder), "--requests", str(requests), *args], env=env)


def records(folder: Path) -> dict[str, tuple[str, str, dict]]:
    """example_id -> (domain, split, row) of every conversation record in the folder."""
    found = {}
    for shard in sorted((folder / "data").glob("*/*.parquet")):
        if shard.parent.name == "items":
            continue
        for row in pq.read_table(shard).to_pylist():
            found[row["example_id"]] = (shard.parent.name, shard.name.split("-")[0], row)
    return found


def folder_text(folder: Path) -> str:
    """Everything the folder holds as text: each Parquet row (images aside) as JSON, every other file as it is."""
    parts = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if path.suffix == ".parquet":
            rows = pq.read_table(path).to_pylist()
            parts += [json.dumps({k: v for k, v in row.items() if k != "image"}, ensure_ascii=False) for row in rows]
        else:
            parts.append(path.read_bytes().decode("utf-8", errors="replace"))
    return "\n".join(parts)


def file_digests(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def sample_copy(tmp_path) -> Path:
    folder = tmp_path / "ds"
    shutil.copytree(sample_dataset_path(), folder)
    return folder


def _requests(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "removals.txt"
    path.write_text("# removal requests\n\n" + "\n".join(lines) + "\n", encoding="utf-8")
    return path


BEFORE = records(sample_dataset_path())
RECORD = "0i4tya8"  # a record of the bundled sample (beauty/test)
CONTEXT_COMMENT = "u8153hq"  # a context turn of record 0cb09fr
THREAD = BEFORE["0cb09fr"][2]["thread_id"]
AUTHOR = Pseudonymizer(SAMPLE_SALT)("user_705771")  # the sample's salt is public: its authors are invented


def _with_turn(predicate) -> set[str]:
    return {eid for eid, (_, _, row) in BEFORE.items() if any(predicate(turn) for turn in row["turns"])}


#: Each request form, the line asking, and the records it asks for in the bundled sample, worked out from its rows.
FORMS = {
    "thread": (THREAD, {eid for eid, (_, _, row) in BEFORE.items() if row["thread_id"] == THREAD}),
    "thread_t3": ("t3_" + THREAD, {eid for eid, (_, _, row) in BEFORE.items() if row["thread_id"] == THREAD}),
    "context_comment": (f"t1_{CONTEXT_COMMENT}", _with_turn(lambda turn: turn["id"] == CONTEXT_COMMENT)),
    "bare_comment_id": (CONTEXT_COMMENT, _with_turn(lambda turn: turn["id"] == CONTEXT_COMMENT)),
    "recommending_comment": (f"t1_{RECORD}", {RECORD} | _with_turn(lambda turn: turn["id"] == RECORD)),
    "example_id": (RECORD, {RECORD} | _with_turn(lambda turn: turn["id"] == RECORD)),
    "author": (AUTHOR, _with_turn(lambda turn: turn["author"] == AUTHOR)),
    "username": ("u/User_705771", _with_turn(lambda turn: turn["author"] == AUTHOR)),
}


def _texts(rows) -> set[str]:
    return {text for row in rows for text in [row["gt_text"], *(t["text"] for t in row["turns"])]}


@pytest.mark.parametrize("form", FORMS)
def test_each_request_form_removes_exactly_its_records_and_nothing_else_moves(form, sample_copy, tmp_path):
    line, expected = FORMS[form]
    assert expected  # the sample has records of each form
    # their texts, but those that records not asked for hold too (a submission another record quotes, a short reply)
    removed_texts = _texts(BEFORE[eid][2] for eid in expected) - _texts(
        row for eid, (_, _, row) in BEFORE.items() if eid not in expected)
    assert removed_texts
    result = remove(sample_copy, _requests(tmp_path, line, "t1_zzzzzzz  # matches nothing"),
                    *(["--salt", SAMPLE_SALT] if form == "username" else []))
    assert result.exit_code == 0, result.output
    assert f"2 request(s), 1 matching no record; {len(expected)} record(s) dropped" in result.output
    after = records(sample_copy)
    assert set(BEFORE) - set(after) == expected
    assert all(after[eid] == BEFORE[eid] for eid in after)  # same domain, split and row
    assert verify(sample_copy) == []
    text = folder_text(sample_copy)
    assert not [t for t in removed_texts if t in text]  # nowhere: shards, card, manifest
    manifest = read_manifest(sample_copy)
    assert manifest["version"] == "1.1.0"
    [entry] = manifest["removals"]
    assert entry["requests"] == 2 and entry["unmatched_requests"] == 1
    assert sum(n for splits in entry["records_dropped"].values() for n in splits.values()) == len(expected)
    assert entry["from_fingerprint"] == read_manifest(sample_dataset_path())["fingerprint"]
    assert line.split("_")[-1].split("/")[-1].lower() not in json.dumps(manifest).lower()  # not the ids
    assert manifest["stats"]["beauty"]["conversations"] == sum(manifest["counts"]["beauty"].values())


def test_a_bad_line_or_a_missing_salt_is_named_and_changes_nothing(sample_copy, tmp_path):
    before = file_digests(sample_copy)
    result = remove(sample_copy, _requests(tmp_path, "t1_abc", "t2_someone"))
    assert result.exit_code == 1
    assert f"{tmp_path / 'removals.txt'}:4: 't2_someone' is no removal request" in result.output
    result = remove(sample_copy, _requests(tmp_path, "u/someone"), env={"REDDIT_AMAZON_SALT": None})
    assert result.exit_code == 1 and "removals.txt:3: u/someone needs the salt" in result.output
    result = remove(sample_copy, _requests(tmp_path, "0i4tya8"), "--version", "1.0.1")
    assert result.exit_code == 1 and "is the folder's version" in result.output
    assert file_digests(sample_copy) == before


def test_no_match_leaves_the_folder_as_it_is(sample_copy, tmp_path):
    before = file_digests(sample_copy)
    result = remove(sample_copy, _requests(tmp_path, "t1_zzzzzzz", "u_0000000000000000"))
    assert result.exit_code == 0, result.output
    assert "2 request(s), 2 matching no record; 0 record(s) dropped" in result.output
    assert "unchanged" in result.output
    assert file_digests(sample_copy) == before


def test_a_remove_that_fails_while_writing_leaves_the_old_folder(sample_copy, tmp_path, monkeypatch):
    before = file_digests(sample_copy)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(dataset_folder, "write_readme", disk_full)  # the card is written last
    result = remove(sample_copy, _requests(tmp_path, "0i4tya8"))
    assert result.exit_code == 1 and "No space left on device" in result.output
    assert file_digests(sample_copy) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "removals.txt"]  # no temporary folder, no lock


#: A `remove` that stops for good once it writes the new folder's card (written last), touching argv[1] first.
_REMOVE_STALLED_AT_THE_CARD = """
import sys, time
from pathlib import Path
from reddit_amazon import dataset_folder
from reddit_amazon.cli import cli

def stall(*args, **kwargs):
    Path(sys.argv[1]).touch()
    time.sleep(600)

dataset_folder.write_readme = stall
cli(["remove", sys.argv[2], "--requests", sys.argv[3]])
"""


@pytest.mark.parametrize("second", ["t1_zzzzzzz", RECORD], ids=["matching_nothing", "matching"])
def test_a_remove_cleans_what_a_remove_killed_with_kill_9_left(second, sample_copy, tmp_path):
    """A remove killed (kill -9) while writing left its lock and two folders beside the dataset folder: the scratch
    holding the item images it read, and the new folder half written. A later remove that matched nothing returned
    before anything removed them; they stayed for good."""
    before = file_digests(sample_copy)
    stalled = tmp_path / "stalled"
    child = subprocess.Popen([sys.executable, "-c", _REMOVE_STALLED_AT_THE_CARD, str(stalled), str(sample_copy),
                              str(_requests(tmp_path, RECORD))], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while not stalled.exists():
            assert time.time() < deadline and child.poll() is None
            time.sleep(0.05)
    finally:
        child.kill()
        child.wait()
    left = sorted(p.name.split("-")[0] for p in tmp_path.iterdir() if p.name.startswith(".ds."))
    assert left == [".ds.lock", ".ds.tmp", ".ds.tmp"] and file_digests(sample_copy) == before
    result = remove(sample_copy, _requests(tmp_path, second))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "removals.txt", "stalled"]
    assert (file_digests(sample_copy) == before) == (second != RECORD) and verify(sample_copy) == []


def test_a_damaged_folder_is_refused(sample_copy, tmp_path):
    shard = next((sample_copy / "data" / "home").glob("test-*.parquet"))
    shard.write_bytes(shard.read_bytes() + b"x")
    before = file_digests(sample_copy)
    result = remove(sample_copy, _requests(tmp_path, "0i4tya8"))
    assert result.exit_code == 1 and "does not match its manifest, so nothing was removed" in result.output
    assert file_digests(sample_copy) == before


def test_the_result_runs_in_the_benchmark(sample_copy, tmp_path):
    from benchmark.runner import RunConfig, run

    assert remove(sample_copy, _requests(tmp_path, "0i4tya8")).exit_code == 0
    manifest = read_manifest(sample_copy)
    results = run(RunConfig(model="random", dataset=str(sample_copy), candidates="sbert", bootstrap_samples=0),
                  tmp_path / "run", progress=False)
    assert results["dataset"]["fingerprint"] == manifest["fingerprint"]
    assert results["counts"]["all"]["records"] == sum(manifest["counts"][d]["test"] for d in ("beauty", "fashion",
                                                                                              "home"))


def test_build_with_removals_gives_the_records_of_build_then_remove(tmp_path):
    import_extra("bm25s")
    requests = _requests(tmp_path, RECORD, f"t1_{CONTEXT_COMMENT}", "u/user_705771")
    work = tmp_path / "work"
    runner = CliRunner()
    full = runner.invoke(cli, ["build", "--out", str(tmp_path / "full"), "--workdir", str(work), *BM25])
    assert full.exit_code == 0, full.output
    honoured = runner.invoke(cli, ["build", "--out", str(tmp_path / "honoured"), "--workdir", str(work), *BM25,
                                   "--removals", str(requests)])
    assert honoured.exit_code == 0, honoured.output
    dropped = len(BEFORE) - len(records(tmp_path / "honoured"))
    assert f"removal requests: {dropped} record(s) dropped; 3 request(s), 0 matching no record" in honoured.output
    assert remove(tmp_path / "full", requests, "--salt", SAMPLE_SALT).exit_code == 0
    assert records(tmp_path / "honoured") == records(tmp_path / "full")
    assert len(records(tmp_path / "full")) < len(BEFORE)
    manifest = read_manifest(tmp_path / "honoured")
    assert manifest["removals"][0]["requests_digest"] == read_manifest(tmp_path / "full")["removals"][0][
        "requests_digest"]
    assert f"--removals {requests}" in manifest["build"]["command"]
    assert manifest["stats"] == read_manifest(tmp_path / "full")["stats"]
    assert verify(tmp_path / "honoured") == []


def test_build_refuses_a_bad_request_file_before_any_stage(tmp_path):
    result = CliRunner().invoke(cli, ["build", "--out", str(tmp_path / "ds"), "--workdir", str(tmp_path / "work"),
                                      "--retrievers", "none", "--removals", str(_requests(tmp_path, "nope!"))])
    assert result.exit_code == 1 and "--removals: " in result.output and "removals.txt:3" in result.output
    assert not (tmp_path / "work" / "reddit").exists()


def test_an_imported_copy_loses_the_removed_texts_everywhere(lavic_release, tmp_path):
    from reddit_amazon.lavic_release import export_release, import_release

    import_release(lavic_release, tmp_path / "imported")
    before = records(tmp_path / "imported")
    gone = "lavic-home-validation-000001"
    thread = before[gone][2]["thread_id"]
    quoting = {eid for eid, (_, _, row) in before.items() if row["thread_id"] == thread
               and any(t["kind"] == "comment" and t["text"] == before[gone][2]["gt_text"] for t in row["turns"])}
    result = remove(tmp_path / "imported", _requests(tmp_path, gone))
    assert result.exit_code == 0, result.output
    after = records(tmp_path / "imported")
    assert set(before) - set(after) == {gone} | quoting
    assert all(after[eid] == before[eid] for eid in after)
    assert before[gone][2]["gt_text"] not in folder_text(tmp_path / "imported")  # lavic_source/ included
    assert verify(tmp_path / "imported") == []
    written = export_release(tmp_path / "imported", tmp_path / "export")
    assert written["home"]["validation"] == sum(1 for d, s, _ in after.values() if (d, s) == ("home", "validation"))


def _conversation(example_id: str, thread: str, turns: list[tuple[str, str]], gt_text: str, ids: bool = True):
    from reddit_amazon.schema import Conversation, Turn

    return Conversation(example_id=example_id, domain="home", thread_id=thread, subreddit="", created_utc=None,
                        turns=[Turn(kind="submission" if i == 0 else "comment", text=text, id=turn_id if ids else "")
                               for i, (turn_id, text) in enumerate(turns)],
                        context_items=[], gt_text=gt_text, gt_items=["B000000001"],
                        gt_comment_id=example_id if ids else "")


@pytest.mark.parametrize("ids", [True, False], ids=["built", "imported"])
def test_a_removed_recommendation_takes_the_replies_quoting_it(ids):
    """A reply below a removed comment holds it as a context turn: by id in a build, by text (same thread) in an
    imported copy, whose turns have no ids. The same text in another thread is someone else's and stays."""
    from reddit_amazon.removals import RemovalRequests, drop_requested, parse_request

    first = _conversation("c1", "s1", [("s1", "what lamp?")], "this lamp", ids)
    reply = _conversation("c2", "s1", [("s1", "what lamp?"), ("c1", "this lamp")], "or this one", ids)
    sibling = _conversation("c3", "s1", [("s1", "what lamp?")], "a third", ids)
    elsewhere = _conversation("c4", "s2", [("s2", "a lamp?"), ("x1", "this lamp")], "same", ids)
    splits = {"home": {"train": [first, sibling], "test": [reply, elsewhere]}}
    removal = drop_requested(splits, RemovalRequests((parse_request("c1", "f:1"),)))
    assert [r.example_id for r in removal.kept["home"]["train"]] == ["c3"]
    assert [r.example_id for r in removal.kept["home"]["test"]] == ["c4"]
    assert removal.dropped["home"] == {"train": 1, "validation": 0, "test": 1} and removal.unmatched == 0


def test_the_bundled_sample_inside_the_package_is_refused(tmp_path):
    """`remove "$(reddit-amazon sample-path)"` rewrote the package's own sample (which the benchmark, the docs and
    every test read), as `build --out` and `import-lavic --out` refuse to."""
    before = file_digests(sample_dataset_path())
    result = remove(sample_dataset_path(), _requests(tmp_path, "t1_zzzzzzz"))  # matches nothing, should it run
    assert result.exit_code == 2 and "is inside the installed reddit_amazon package" in result.output
    assert file_digests(sample_dataset_path()) == before


@pytest.mark.parametrize("version", ["0.9.0", "1.0.0", "1.0.1-rc.1", "1.0.1+rebuild"])
def test_a_version_below_the_folders_is_refused(version, sample_copy, tmp_path):
    """The sample is 1.0.1: a removal published as 0.9.0 (or 1.0.0, an earlier release's tag) would sort below the
    version that still holds the records, and users taking the newest would get those back."""
    before = file_digests(sample_copy)
    result = remove(sample_copy, _requests(tmp_path, RECORD), "--version", version)
    assert result.exit_code == 1 and f"--version {version} is not above the folder's version 1.0.1" in result.output
    assert file_digests(sample_copy) == before


def test_semver_precedence_orders_as_semver_does():
    from reddit_amazon.removals import semver_precedence

    ordered = ["1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta", "1.0.0-beta.2", "1.0.0-beta.11",
               "1.0.0-rc.1", "1.0.0", "1.0.1", "1.2.0", "1.10.0", "2.0.0"]  # the example of semver.org, section 11
    assert sorted(reversed(ordered), key=semver_precedence) == ordered
    assert semver_precedence("1.0.1+a") == semver_precedence("1.0.1+b") == semver_precedence("1.0.1")
    assert semver_precedence("2.0.0-rc.1") > semver_precedence("1.0.1")


def test_a_higher_version_is_taken(sample_copy, tmp_path):
    result = remove(sample_copy, _requests(tmp_path, RECORD), "--version", "1.0.2")
    assert result.exit_code == 0, result.output
    assert read_manifest(sample_copy)["version"] == "1.0.2"


def test_a_request_file_saved_on_windows_with_ids_in_upper_case_is_read_as_written(sample_copy, tmp_path):
    """A BOM (Notepad's UTF-8), CRLF line ends, trailing blanks and ids in upper case name what the lower-case
    lines name: the BOM made line 1 'no removal request', and T1_/upper-case ids were refused."""
    from reddit_amazon.removals import read_requests

    windows = tmp_path / "windows.txt"
    windows.write_bytes(b"\xef\xbb\xbf" + f"T1_{CONTEXT_COMMENT.upper()}  \r\n{RECORD.upper()}\t\r\n"
                        "U/USER_705771\r\n".encode())
    plain = _requests(tmp_path, f"t1_{CONTEXT_COMMENT}", RECORD, "u/user_705771")
    assert read_requests(windows) == read_requests(plain)
    result = remove(sample_copy, windows, "--salt", SAMPLE_SALT)
    assert result.exit_code == 0, result.output
    assert "3 request(s), 0 matching no record" in result.output
    expected = FORMS["context_comment"][1] | FORMS["example_id"][1] | FORMS["username"][1]
    assert set(BEFORE) - set(records(sample_copy)) == expected


def test_the_card_says_how_many_records_this_version_dropped_on_request(sample_copy, tmp_path):
    """The card (what a Hub visitor reads) said only that requests may be made, not that this version honours any."""
    assert remove(sample_copy, _requests(tmp_path, f"t1_{CONTEXT_COMMENT}")).exit_code == 0
    card = (sample_copy / "README.md").read_text(encoding="utf-8")
    dropped = len(FORMS["context_comment"][1])
    assert (f"This copy honours removal requests: {dropped} record(s) dropped by 1 `remove` run(s) since version "
            "`1.0.1`") in card
    assert CONTEXT_COMMENT not in card
    assert "honours removal requests" not in (sample_dataset_path() / "README.md").read_text(encoding="utf-8")
    from cards.datasheet import _removals_honoured

    built = {"removals": [{"applied": "build", "records_dropped": {"home": {"train": 2, "test": 1}}},
                          {"applied": "remove", "from_version": "1.0.0", "records_dropped": {"beauty": {"test": 1}}}]}
    assert "4 record(s) dropped by its build (`--removals`) and 1 `remove` run(s) since version `1.0.0`" in \
        _removals_honoured(built)


def _requests_found_by_hashing(manifest: dict, ids: set[str]) -> list[str]:
    """What hashing each candidate id, in each normalised form, finds the manifest's removal entries to hold."""
    recorded = {value for entry in manifest["removals"] for key, value in entry.items() if key.startswith("requests_")}
    return [f"{kind}:{i}" for i in ids for kind in ("comment", "submission", "reddit_id", "record", "author")
            if hashlib.sha256(f"{kind}:{i}\n".encode()).hexdigest() in recorded]


@pytest.mark.parametrize("salt", [None, SAMPLE_SALT], ids=["no_salt", "salt"])  # the digest needs the build's salt
def test_the_manifest_does_not_name_the_request_to_whoever_hashes_the_previous_versions_ids(salt, sample_copy,
                                                                                             tmp_path):
    """The manifest held the plain sha256 of the normalised request list: hashing each id and pseudonym of the
    previous version (public, under its tag) found the request 0i4tya8 among 786 ids at once."""
    ids = {value for _, _, row in BEFORE.values()
           for value in (row["example_id"], row["thread_id"], row["gt_comment_id"],
                         *(t["id"] for t in row["turns"]), *(t["author"] for t in row["turns"]))}
    result = remove(sample_copy, _requests(tmp_path, RECORD), *(["--salt", salt] if salt else []),
                    env={"REDDIT_AMAZON_SALT": None})
    assert result.exit_code == 0, result.output
    manifest = read_manifest(sample_copy)
    assert _requests_found_by_hashing(manifest, ids) == []
    [entry] = manifest["removals"]
    assert ("requests_digest" in entry) == bool(salt)


# --------------------------------------------------------------------------------------------
# The salt of u/<name> requests
# --------------------------------------------------------------------------------------------

#: The salt of the module's build, given as a maintainer gives it (in the environment); never to be seen anywhere.
BUILD_SALT = "the build's salt, kept secret"
WRONG_SALT = "another build's salt"
USER_LINE = "u/user_705771"  # an author of the sample inputs (invented)


@pytest.fixture(scope="module")
def salted_build(tmp_path_factory) -> Path:
    """The sample inputs built with BUILD_SALT: its manifest records the salt's check."""
    import_extra("bm25s")
    root = tmp_path_factory.mktemp("salted")
    result = CliRunner().invoke(cli, ["build", "--out", str(root / "ds"), "--workdir", str(root / "work"), *BM25],
                                env={"REDDIT_AMAZON_SALT": BUILD_SALT})
    assert result.exit_code == 0, result.output
    assert BUILD_SALT not in result.output
    holding = [p.relative_to(root).as_posix() for p in sorted(root.rglob("*")) if p.is_file()
               and BUILD_SALT.encode() in p.read_bytes()]
    assert holding == ["work/reddit/salt"]  # where the build keeps it; not its logs, manifest or card
    return root / "ds"


@pytest.fixture
def salted_copy(salted_build, tmp_path) -> Path:
    folder = tmp_path / "salted"
    shutil.copytree(salted_build, folder)
    return folder


def _by_author(folder: Path, salt: str) -> set[str]:
    author = Pseudonymizer(salt)(USER_LINE[2:])
    return {eid for eid, (_, _, row) in records(folder).items() if any(t["author"] == author for t in row["turns"])}


def _secrets_shown(text: str) -> list[str]:
    return [salt for salt in (BUILD_SALT, WRONG_SALT) if salt in text]


@pytest.mark.parametrize("how", ["option", "environment"])
def test_a_wrong_salt_is_refused_for_user_names_and_changes_nothing(how, salted_copy, tmp_path):
    """A wrong salt hashed u/<name> into a pseudonym no record has: `remove` said "0 record(s) dropped", exit 0,
    as if the user had no records, and their removal request went silently unhonoured."""
    assert _by_author(salted_copy, BUILD_SALT)  # the user has records
    before = file_digests(salted_copy)
    args, env = (["--salt", WRONG_SALT], {"REDDIT_AMAZON_SALT": None}) if how == "option" else \
        ([], {"REDDIT_AMAZON_SALT": WRONG_SALT})
    result = remove(salted_copy, _requests(tmp_path, USER_LINE, RECORD), *args, env=env)
    assert result.exit_code == 1, result.output
    assert "the salt given is not the one its pseudonyms were made with" in result.output
    assert "--salt or REDDIT_AMAZON_SALT" in result.output and "record(s) dropped" not in result.output
    assert file_digests(salted_copy) == before  # not even the record asked for by id: the file is one request
    assert not _secrets_shown(result.output)


def test_the_builds_salt_removes_the_users_records_and_is_written_nowhere(salted_copy, tmp_path):
    """The salt as a file holding it gives it (`REDDIT_AMAZON_SALT="$(cat salt)"` keeps no newline, an env file
    does): the build strips it, so `remove` does too; unstripped, its pseudonyms matched nothing."""
    expected = _by_author(salted_copy, BUILD_SALT)
    manifest = read_manifest(salted_copy)
    assert manifest["build"]["salt_check"] == Pseudonymizer(BUILD_SALT).salt_check() != \
        Pseudonymizer(WRONG_SALT).salt_check()
    result = remove(salted_copy, _requests(tmp_path, USER_LINE), env={"REDDIT_AMAZON_SALT": f"{BUILD_SALT}\n"})
    assert result.exit_code == 0, result.output
    assert f"1 request(s), 0 matching no record; {len(expected)} record(s) dropped" in result.output
    assert "warning" not in result.output
    assert not expected & set(records(salted_copy))
    manifest = read_manifest(salted_copy)
    assert manifest["build"]["salt_check"] == Pseudonymizer(BUILD_SALT).salt_check()  # the next remove checks it
    assert "requests_digest" in manifest["removals"][0]
    assert not _secrets_shown(result.output + "\n" + folder_text(salted_copy))
    assert verify(salted_copy) == []
    # the next version is checked as well
    result = remove(salted_copy, _requests(tmp_path, "u/someone_else"), "--salt", WRONG_SALT)
    assert result.exit_code == 1 and "not the one its pseudonyms were made with" in result.output


def test_requests_without_user_names_need_no_salt_and_a_wrong_one_keys_no_digest(salted_build, tmp_path):
    """Without u/<name> lines the salt only keys requests_digest: none is needed, and a wrong one is not refused,
    but a digest keyed with it (which proves nothing to whoever holds the build's salt) is not recorded."""
    for salt, digest in ((None, False), (WRONG_SALT, False), (BUILD_SALT, True)):
        folder = tmp_path / f"copy-{digest}-{salt is None}"
        shutil.copytree(salted_build, folder)
        result = remove(folder, _requests(tmp_path, RECORD), *(["--salt", salt] if salt else []),
                        env={"REDDIT_AMAZON_SALT": None})
        assert result.exit_code == 0, result.output
        assert RECORD not in records(folder)
        assert ("warning" in result.output) == (salt == WRONG_SALT), result.output
        [entry] = read_manifest(folder)["removals"]
        assert ("requests_digest" in entry) == digest
        assert not _secrets_shown(result.output + "\n" + folder_text(folder))


def test_a_manifest_without_the_salt_check_warns_that_the_salt_cannot_be_checked(sample_copy, tmp_path):
    """A folder built before the check was recorded has none in its manifest: its u/<name> requests are honoured as
    before, with one line saying a wrong salt cannot be told from a user without records."""
    manifest = json.loads((sample_copy / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["build"].pop("salt_check") == Pseudonymizer(SAMPLE_SALT).salt_check()
    (sample_copy / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    _, expected = FORMS["username"]
    result = remove(sample_copy, _requests(tmp_path, USER_LINE), "--salt", SAMPLE_SALT)
    assert result.exit_code == 0, result.output
    [warning] = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert "the salt cannot be checked" in warning and SAMPLE_SALT not in warning
    assert not expected & set(records(sample_copy))
    assert verify(sample_copy) == []
    result = remove(sample_copy, _requests(tmp_path, RECORD), "--salt", SAMPLE_SALT)  # no u/<name>: nothing to say
    assert result.exit_code == 0 and "warning" not in result.output, result.output


def test_a_reddit_stage_run_beside_the_build_does_not_change_the_salt_it_checks_and_removes_by(tmp_path,
                                                                                               monkeypatch):
    """The build read <workdir>/reddit/salt at its last stage, hours after it had read the Reddit stage's
    conversations and given back that stage's lock: a `reddit-amazon reddit-stage --salt OTHER` on the same workdir
    in between (it needs only that lock) made `--removals` hash u/<name> with the other salt (the user's records
    kept, "matching no record") and the manifest record the other salt's check (a later `remove` with the build's
    salt refused). The salt is read with the conversations, under the lock."""
    import_extra("bm25s")
    from reddit_amazon import build
    from reddit_amazon.pipeline import reddit_stage_lock

    relevance_stage = build.relevance_stage

    def relevance_while_another_stage_runs(options, *args, **kwargs):
        with reddit_stage_lock(options.workdir):  # as `reddit-amazon reddit-stage --salt` takes it, then the salt
            (options.workdir / "reddit" / "salt").write_text(WRONG_SALT, encoding="utf-8")
        return relevance_stage(options, *args, **kwargs)

    monkeypatch.setattr(build, "relevance_stage", relevance_while_another_stage_runs)
    requests = _requests(tmp_path, USER_LINE)
    result = CliRunner().invoke(cli, ["build", "--out", str(tmp_path / "ds"), "--workdir", str(tmp_path / "work"),
                                      "--removals", str(requests), *BM25], env={"REDDIT_AMAZON_SALT": BUILD_SALT})
    assert result.exit_code == 0, result.output
    manifest = read_manifest(tmp_path / "ds")
    assert manifest["build"]["salt_check"] == Pseudonymizer(BUILD_SALT).salt_check()
    [entry] = manifest["removals"]
    assert entry["unmatched_requests"] == 0 and sum(n for s in entry["records_dropped"].values() for n in s.values())
    author = Pseudonymizer(BUILD_SALT)(USER_LINE[2:])
    assert not any(t["author"] == author for _, _, row in records(tmp_path / "ds").values() for t in row["turns"])
