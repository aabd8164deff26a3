import hashlib
import io
import json
import os
import re
import socket
import stat
import subprocess
import sys

import datasets
import pyarrow.parquet as pq
import pytest
from PIL import Image

from reddit_amazon.dataset_folder import (
    MANIFEST,
    DatasetContents,
    check_output_folder,
    configs_of,
    fingerprint,
    load,
    read_manifest,
    refresh_card,
    write_dataset,
)
from reddit_amazon.schema import DOMAINS, SPLITS, Conversation, Item, SchemaError, Turn


def jpeg(color) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), color).save(buffer, format="JPEG")
    return buffer.getvalue()


def contents(n: int = 3) -> DatasetContents:
    conversations = {
        domain: {
            split: [
                Conversation(
                    example_id=f"{domain}-{split}-{i}", domain=domain, thread_id=f"t{i}", subreddit="sub",
                    created_utc=1_600_000_000 + i,
                    turns=[Turn("submission", f"need a {domain} thing {i} ", author="a1", created_utc=1, id=f"t{i}")],
                    context_items=[], gt_text="https://amazon.com/dp/B000000001", gt_items=["B000000001"],
                    gt_comment_id=f"c{i}",
                    candidates={"sbert": [f"B00000000{k}" for k in range(10)], "bm25": [f"B00000000{k}" for k in range(10)]},
                )
                for i in range(n)
            ]
            for split in SPLITS
        }
        for domain in DOMAINS
    }
    items = {
        domain: [Item(item_id=f"B00000000{k}", domain=domain, title=f"thing {k}",
                      image=jpeg((20 * k, 0, 0)) if k % 2 else None, image_error="" if k % 2 else "404")
                 for k in range(10)]
        for domain in DOMAINS
    }
    return DatasetContents(conversations, items, version="1.2.3", candidate_sets=["sbert", "bm25"])


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder")
    manifest = write_dataset(root / "reddit-amazon", contents())
    return root, manifest


def test_load_by_name_from_parent_and_by_absolute_path(built, monkeypatch):
    root, _ = built
    monkeypatch.chdir(root)
    fashion = datasets.load_dataset("reddit-amazon", "fashion")
    assert set(fashion) == set(SPLITS)
    assert fashion["test"][0]["example_id"] == "fashion-test-0"
    home = datasets.load_dataset(str(root / "reddit-amazon"), "home", split="validation")
    assert home.num_rows == 3
    assert home.features["candidates_bm25"] == datasets.List(datasets.Value("string"))
    assert datasets.load_dataset(str(root / "reddit-amazon"))["train"][0]["domain"] == "fashion"  # default config


def test_items_config_embeds_images(built, tmp_path, monkeypatch):
    root, _ = built
    monkeypatch.chdir(tmp_path)  # images must not depend on the working directory
    items = datasets.load_dataset(str(root / "reddit-amazon"), "items")
    assert set(items) == set(DOMAINS)
    row = items["beauty"][1]
    assert row["image"].size == (16, 16)
    assert items["beauty"][0]["image"] is None and items["beauty"][0]["image_error"] == "404"


@pytest.mark.parametrize("streaming", [False, True])
def test_items_read_back_keep_their_embedded_image_bytes(streaming):
    """`iter_items` over a split as `load` gives it (images decoded to PIL) yields the shard's JPEG bytes, not a
    re-encoding: saved again, a JPEG loses pixels, and a folder read and written back would degrade each time."""
    from reddit_amazon.dataset_folder import iter_items
    from reddit_amazon.sample import sample_dataset_path

    shard = pq.read_table(sample_dataset_path() / "data" / "items" / "fashion-00000-of-00001.parquet")
    stored = {row["item_id"]: row["image"] and row["image"]["bytes"] for row in shard.to_pylist()}
    read = {item.item_id: item.image for item in iter_items(load("items", split="fashion", streaming=streaming),
                                                            "sample items/fashion")}
    assert read == stored and sum(image is not None for image in read.values()) > 1


def test_the_record_readers_are_typed_as_the_iterators_they_return():
    """The package ships py.typed: typed ``Iterable``, a caller's ``next(iter_conversations(...))`` failed its type
    check ("No overload variant of next") although the generators support it."""
    import typing
    from collections.abc import Iterator

    from reddit_amazon.dataset_folder import iter_conversations, iter_items

    assert typing.get_type_hints(iter_conversations)["return"] == Iterator[Conversation]
    assert typing.get_type_hints(iter_items)["return"] == Iterator[Item]
    first = next(iter_conversations(load("fashion", split="test"), "sample fashion/test"))
    assert isinstance(first, Conversation)


def test_the_card_declares_the_split_sizes_datasets_measures(built):
    root, _ = built
    folder = str(root / "reddit-amazon")
    declared = datasets.load_dataset_builder(folder, "home").info
    loaded = datasets.load_dataset(folder, "home")
    for split in SPLITS:
        assert declared.splits[split].num_bytes == loaded[split].info.splits[split].num_bytes > 0
    assert declared.dataset_size == sum(declared.splits[split].num_bytes for split in SPLITS)
    assert declared.download_size == sum(p.stat().st_size for p in (root / "reddit-amazon" / "data" / "home").iterdir())
    items = datasets.load_dataset(folder, "items")
    assert datasets.load_dataset_builder(folder, "items").info.splits["beauty"].num_bytes == \
        items["beauty"].info.splits["beauty"].num_bytes


def test_manifest_version_fingerprint_and_card(built):
    root, manifest = built
    folder = root / "reddit-amazon"
    assert read_manifest(folder) == manifest
    assert manifest["version"] == "1.2.3"
    assert manifest["fingerprint"] == fingerprint(folder)
    assert manifest["counts"]["beauty"] == {"train": 3, "validation": 3, "test": 3}
    readme = (folder / "README.md").read_text()
    assert readme.startswith("---\n") and "config_name: items" in readme and manifest["fingerprint"] in readme
    assert not any(name.startswith(".") for name in os.listdir(root))  # no temp folders left


def test_rewrite_is_byte_identical_and_atomic(built, tmp_path):
    root, manifest = built
    second = write_dataset(tmp_path / "reddit-amazon", contents())
    assert second["fingerprint"] == manifest["fingerprint"]
    # An invalid record late in the write (after other shards were written) leaves the previous folder untouched.
    broken = contents()
    broken.items["home"][0].image = "not bytes"
    with pytest.raises(SchemaError, match="items/home"):
        write_dataset(tmp_path / "reddit-amazon", broken)
    assert read_manifest(tmp_path / "reddit-amazon")["fingerprint"] == manifest["fingerprint"]
    assert sorted(os.listdir(tmp_path)) == ["reddit-amazon"]


def test_item_images_given_as_files_are_read_when_written(built, tmp_path):
    """A build hands images over as files (bounded memory); the folder is the same as with bytes."""
    _, manifest = built
    from_files = contents()
    for domain_items in from_files.items.values():
        for item in domain_items:
            if item.image is not None:
                path = tmp_path / "store" / domain_items[0].domain / f"{item.item_id}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(item.image)
                item.image = path
    assert write_dataset(tmp_path / "reddit-amazon", from_files)["fingerprint"] == manifest["fingerprint"]


def test_version_must_be_semver(tmp_path):
    bad = contents()
    bad.version = "v1"
    with pytest.raises(SchemaError, match="not semver"):
        write_dataset(tmp_path / "reddit-amazon", bad)


def test_an_item_given_twice_in_a_domain_is_refused(tmp_path):
    """The items config is keyed by item_id: a repeated row would be counted twice by the card."""
    data = contents(1)
    data.items["home"].append(data.items["home"][0])
    with pytest.raises(SchemaError, match="items/home: item B000000000 is given more than once"):
        write_dataset(tmp_path / "ds", data)
    assert not (tmp_path / "ds").exists()


def test_content_change_changes_fingerprint(tmp_path):
    changed = contents()
    changed.conversations["beauty"]["train"][0].gt_text += "!"
    assert write_dataset(tmp_path / "a", changed)["fingerprint"] != write_dataset(tmp_path / "b", contents())["fingerprint"]


def test_a_dataset_with_some_splits_only_loads(tmp_path):
    partial = contents()
    partial.conversations = {"home": {"validation": partial.conversations["home"]["validation"]}}
    partial.items = {"home": partial.items["home"]}
    write_dataset(tmp_path / "reddit-amazon", partial)
    assert datasets.get_dataset_config_names(str(tmp_path / "reddit-amazon")) == ["home", "items"]
    assert list(datasets.load_dataset(str(tmp_path / "reddit-amazon"), "home")) == ["validation"]
    manifest = json.loads((tmp_path / "reddit-amazon" / "manifest.json").read_text())
    assert manifest["counts"]["home"] == {"train": 0, "validation": 3, "test": 0}


def test_a_missing_folder_never_loads_a_cached_copy(built, tmp_path, monkeypatch):
    from reddit_amazon.dataset_folder import load

    root, _ = built
    monkeypatch.chdir(root)
    assert load("home", "reddit-amazon", split="test").num_rows == 3  # now cached under that name
    monkeypatch.chdir(tmp_path)  # no reddit-amazon folder here
    for missing in ("reddit-amazon", "./reddit-amazon", tmp_path / "reddit-amazon"):
        with pytest.raises(FileNotFoundError, match="does not exist"):
            load("home", missing)


def test_push_to_hub_uploads_the_folder_with_a_card_for_the_repo_and_tags_the_version(built, httpserver, tmp_path,
                                                                                       monkeypatch):
    """A loopback server answering the Hub API routes that `push_to_hub` uses (no network)."""
    from huggingface_hub import constants
    from loopback_hub import apply_commit, preupload_answer

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the "Hub" is on loopback

    from werkzeug import Request, Response

    from reddit_amazon.dataset_folder import push_to_hub

    root, manifest = built
    # The repo as an earlier version left it: a shard this one does not have (another shard count), a user's file.
    stale, license_file = "data/home/test-00000-of-00002.parquet", "LICENSE"
    seen: dict[str, object] = {"files": {stale: b"old", license_file: b"mine"}, "tags": [], "auth": set(),
                               "commits": 0}

    def hub(request: Request) -> Response:
        seen["auth"].add(request.headers.get("authorization"))
        path = request.path
        if path == "/api/repos/create":
            body = request.get_json()
            assert body["type"] == "dataset" and body["name"] == "reddit-amazon"
            return Response(json.dumps({"url": httpserver.url_for("/datasets/me/reddit-amazon")}),
                            content_type="application/json")
        if path == "/api/validate-yaml":
            return Response("{}", content_type="application/json")
        if path == "/api/datasets/me/reddit-amazon/preupload/main":
            return preupload_answer(request)
        if path == "/api/datasets/me/reddit-amazon/commit/main":
            seen["commits"] += 1
            apply_commit(request, seen["files"])
            commit_url = httpserver.url_for("/datasets/me/reddit-amazon/commit/" + "a" * 40)
            return Response(json.dumps({"commitUrl": commit_url, "commitOid": "a" * 40}),
                            content_type="application/json")
        if path == "/api/datasets/me/reddit-amazon/tag/main":
            seen["tags"].append(request.get_json()["tag"])
            seen["tagged_manifest"] = seen["files"][MANIFEST]
            return Response("{}", content_type="application/json")
        if path == "/api/datasets/me/reddit-amazon/tree/main":
            return Response(json.dumps([{"type": "file", "path": name, "oid": "0" * 40, "size": len(data)}
                                        for name, data in seen["files"].items()]), content_type="application/json")
        if path == "/api/datasets/me/reddit-amazon/refs":
            tags = [{"name": tag, "ref": f"refs/tags/{tag}", "targetCommit": "a" * 40} for tag in seen["tags"]]
            return Response(json.dumps({"branches": [], "converts": [], "tags": tags}), content_type="application/json")
        if path == "/datasets/me/reddit-amazon/resolve/v1.2.3/manifest.json":
            data = seen["tagged_manifest"]
            return Response(data, content_type="application/json", headers={  # (a HEAD answer gets no body)
                "X-Repo-Commit": "a" * 40, "ETag": f'"{hashlib.sha1(data).hexdigest()}"'})
        return Response(f"unexpected {request.method} {path}", status=404)

    httpserver.expect_request(re.compile(".*")).respond_with_handler(hub)
    endpoint = httpserver.url_for("").rstrip("/")
    folder = root / "reddit-amazon"
    local_readme = (folder / "README.md").read_text(encoding="utf-8")
    push_to_hub(root / "reddit-amazon", "me/reddit-amazon", token="hf_test_token", endpoint=endpoint)
    push_to_hub(root / "reddit-amazon", "me/reddit-amazon", token="hf_test_token", endpoint=endpoint)  # same: fine
    changed = contents()
    changed.conversations["home"]["test"][0].gt_text += "!"
    write_dataset(tmp_path / "changed" / "reddit-amazon", changed)
    with pytest.raises(ValueError, match="1.2.3 is already published with other content"):
        push_to_hub(tmp_path / "changed" / "reddit-amazon", "me/reddit-amazon", token="hf_test_token",
                    endpoint=endpoint)

    local = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert local.pop("README.md").decode("utf-8") == local_readme  # the local copy's card is left as it was
    hub_readme = seen["files"]["README.md"].decode("utf-8")
    # The Hub's card loads the repo, not the local folder's name; nothing else differs (the YAML neither).
    assert 'load_dataset("reddit-amazon", "fashion")' in local_readme
    assert 'load_dataset("me/reddit-amazon", "fashion")' in hub_readme
    assert "benchmark run --model sbert --dataset me/reddit-amazon " in hub_readme
    assert hub_readme == (local_readme.replace('"reddit-amazon"', '"me/reddit-amazon"')
                          .replace("--dataset reddit-amazon ", "--dataset me/reddit-amazon ")
                          .replace("`reddit-amazon` is this folder", "`me/reddit-amazon` is this folder"))
    assert seen["files"].pop(license_file) == b"mine"  # not the dataset's: kept
    assert {path: data for path, data in seen["files"].items() if path != "README.md"} == local  # the manifest
    # and every shard, byte for byte; the stale shard gone
    assert seen["commits"] == 2  # one commit per push: the card and the data never disagree on the Hub
    assert seen["tags"] == ["v1.2.3", "v1.2.3"]  # the second push: the same content under the same tag
    assert seen["auth"] == {"Bearer hf_test_token"}
    # What arrived is a loadable dataset repo: the same configs from the same files.
    copy = tmp_path / "hub-copy" / "reddit-amazon"
    for relative, data in seen["files"].items():
        (copy / relative).parent.mkdir(parents=True, exist_ok=True)
        (copy / relative).write_bytes(data)
    assert datasets.load_dataset(str(copy), "beauty", split="test").num_rows == 3


def test_never_replaces_what_is_not_a_dataset(tmp_path, monkeypatch):
    """Writing replaces the whole folder: anything that is not a previous dataset is refused, untouched."""
    precious = tmp_path / "mydocs"
    precious.mkdir()
    (precious / "thesis.txt").write_text("years of work")
    with pytest.raises(FileExistsError, match="other content"):
        write_dataset(precious, contents())
    assert (precious / "thesis.txt").read_text() == "years of work"
    (tmp_path / "notes.txt").write_text("notes")
    with pytest.raises(FileExistsError, match="is a file"):
        write_dataset(tmp_path / "notes.txt", contents())
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    for out in ("", "..", "."):  # the current folder or one above it
        with pytest.raises(FileExistsError, match="(holds|is) the current folder"):
            write_dataset(out, contents())
    with pytest.raises(FileExistsError, match="holds"):
        check_output_folder(tmp_path / "new", keep=[tmp_path / "new" / "work"])
    assert (precious / "thesis.txt").read_text() == "years of work"
    (tmp_path / "empty").mkdir()
    write_dataset(tmp_path / "empty", contents())  # an empty folder, then a dataset folder, may be replaced
    write_dataset(tmp_path / "empty", contents())
    assert read_manifest(tmp_path / "empty")["version"] == "1.2.3"
    # A web app has a manifest.json too; and a dataset folder someone added files to is not only a dataset.
    webapp = tmp_path / "webapp"
    (webapp / "src").mkdir(parents=True)
    (webapp / "manifest.json").write_text('{"name": "my-pwa"}')
    (webapp / "src" / "app.js").write_text("precious")
    (tmp_path / "empty" / "my-notes.txt").write_text("mine")
    for folder in (webapp, tmp_path / "empty"):
        with pytest.raises(FileExistsError, match="not a reddit-amazon dataset"):
            write_dataset(folder, contents())
    assert (webapp / "src" / "app.js").read_text() == "precious"
    assert (tmp_path / "empty" / "my-notes.txt").read_text() == "mine"


def test_a_rewrite_keeps_the_hidden_entries_of_the_folder(tmp_path):
    """A dataset folder that is a git clone of its Hub repo keeps its history when it is rebuilt."""
    folder = tmp_path / "reddit-amazon"
    write_dataset(folder, contents())
    (folder / ".git" / "objects").mkdir(parents=True)
    (folder / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (folder / ".gitattributes").write_text("*.parquet filter=lfs\n")
    write_dataset(folder, contents(2))
    assert (folder / ".git" / "HEAD").read_text() == "ref: refs/heads/main\n"
    assert (folder / ".gitattributes").read_text() == "*.parquet filter=lfs\n"
    assert read_manifest(folder)["counts"]["beauty"]["train"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reddit-amazon"]


def test_load_expands_a_home_relative_path(built, tmp_path, monkeypatch):
    root, _ = built
    monkeypatch.setenv("HOME", str(root))
    assert configs_of("~/reddit-amazon") == ["beauty", "fashion", "home", "items"]
    assert load("home", "~/reddit-amazon", split="test").num_rows == 3


def test_verify_names_a_malformed_manifest_count_instead_of_crashing(tmp_path):
    from click.testing import CliRunner

    from reddit_amazon.cli import cli

    folder = tmp_path / "reddit-amazon"
    write_dataset(folder, contents())
    manifest = read_manifest(folder)
    manifest["counts"] = 5
    (folder / MANIFEST).write_text(json.dumps(manifest))
    result = CliRunner().invoke(cli, ["verify", str(folder)])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert "counts are not {config: {split: rows}}" in result.output


def test_folders_left_by_a_killed_write_are_removed_by_the_next(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    abandoned = [tmp_path / f".reddit-amazon.tmp-{host}-{dead.pid}-x1y2", tmp_path / f".reddit-amazon.old-{host}-{dead.pid}-0"]
    alive = tmp_path / f".reddit-amazon.tmp-{host}-{os.getpid()}-abcd"  # a write still running
    other_host = tmp_path / f".reddit-amazon.tmp-elsewhere-{dead.pid}-abcd"  # cannot be checked from here
    for folder in [*abandoned, alive, other_host]:
        (folder / "data").mkdir(parents=True)
    write_dataset(tmp_path / "reddit-amazon", contents())
    assert sorted(os.listdir(tmp_path)) == sorted([alive.name, other_host.name, "reddit-amazon"])


def test_a_folder_rewritten_in_place_loads_its_new_rows(tmp_path):
    """`datasets` caches a folder by name and README YAML: same-size new content must not load the old rows."""
    folder = tmp_path / "rewritten" / "reddit-amazon"
    write_dataset(folder, contents())
    before = datasets.load_dataset(str(folder), "fashion", split="train")["gt_text"]
    changed = contents()
    for record in changed.conversations["fashion"]["train"]:
        record.gt_text = record.gt_text[::-1]  # same bytes, same sizes, other content
    write_dataset(folder, changed)
    assert datasets.load_dataset(str(folder), "fashion", split="train")["gt_text"] == [t[::-1] for t in before]


def test_shards_and_manifest_copied_in_beside_an_old_card_are_refused_not_served_from_the_cache(tmp_path):
    """`datasets` keys its cache on the README's YAML: data/ and manifest.json of other content copied into a folder
    whose card stayed (same counts) loaded the rows cached for the card, and verify said the folder matched."""
    import shutil

    from click.testing import CliRunner

    from reddit_amazon.cli import cli

    folder, newer = tmp_path / "reddit-amazon", tmp_path / "newer" / "reddit-amazon"
    old_fingerprint = write_dataset(folder, contents())["fingerprint"]
    before = load("fashion", folder, split="train")["gt_text"]
    changed = contents()
    for record in changed.conversations["fashion"]["train"]:
        record.gt_text = record.gt_text[::-1]
    new_fingerprint = write_dataset(newer, changed)["fingerprint"]
    shutil.rmtree(folder / "data")
    shutil.copytree(newer / "data", folder / "data")
    shutil.copyfile(newer / MANIFEST, folder / MANIFEST)

    result = CliRunner().invoke(cli, ["verify", str(folder)])
    assert result.exit_code == 1, result.output
    assert (f"README.md: the dataset_info of beauty, fashion, home, items is for content fingerprint "
            f"{old_fingerprint[:12]}, the manifest says {new_fingerprint[:12]}") in result.output
    with pytest.raises(SchemaError, match="its README.md was written for other data"):
        load("fashion", folder, split="train")
    assert CliRunner().invoke(cli, ["card", str(folder)]).exit_code == 0
    assert CliRunner().invoke(cli, ["verify", str(folder)]).exit_code == 0
    assert load("fashion", folder, split="train")["gt_text"] == [text[::-1] for text in before]


def test_verify_finds_a_card_that_declares_other_split_sizes(tmp_path):
    """`datasets` refuses a split whose rows differ from the card's `dataset_info`: verify said the folder matched."""
    from reddit_amazon.dataset_folder import verify

    folder = tmp_path / "reddit-amazon"
    write_dataset(folder, contents())
    readme = folder / "README.md"
    text = readme.read_text()
    home = text.index("- config_name: home\n  features:")
    readme.write_text(text[:home] + text[home:].replace("num_examples: 3", "num_examples: 4", 1))
    assert verify(folder) == ["README.md: the home config's dataset_info declares the splits {'train': 4, "
                              "'validation': 3, 'test': 3}, the manifest counts {'train': 3, 'validation': 3, 'test': 3}: "
                              f"`datasets` refuses to load it; `reddit-amazon card {folder}` rewrites it"]


def test_verify_names_a_card_whose_yaml_does_not_parse(tmp_path):
    """A hand-edited README.md whose YAML header does not parse is a problem verify names, as for any other
    unreadable card; it was a yaml ScannerError traceback out of `reddit-amazon verify`."""
    from click.testing import CliRunner

    from reddit_amazon.cli import cli
    from reddit_amazon.dataset_folder import verify

    folder = tmp_path / "reddit-amazon"
    write_dataset(folder, contents())
    readme = folder / "README.md"
    readme.write_text(readme.read_text().replace("---\n", "---\nbroken: [unclosed\n", 1))
    problems = verify(folder)
    assert len(problems) == 1 and problems[0].startswith("README.md: no readable configs"), problems
    result = CliRunner().invoke(cli, ["verify", str(folder)])
    assert result.exit_code == 1 and "README.md: no readable configs" in result.output, result.output


def test_pre_release_versions_are_written(tmp_path):
    pre = contents()
    pre.version = "1.1.0-rc.1+build.7"
    assert write_dataset(tmp_path / "reddit-amazon", pre)["version"] == "1.1.0-rc.1+build.7"
    assert datasets.load_dataset(str(tmp_path / "reddit-amazon"), "home", split="test").num_rows == 3


def test_verify_finds_an_edited_or_lost_shard(tmp_path):
    from click.testing import CliRunner

    from reddit_amazon.cli import cli

    folder = tmp_path / "reddit-amazon"
    write_dataset(folder, contents())
    assert CliRunner().invoke(cli, ["verify", str(folder)]).exit_code == 0
    shard = next((folder / "data" / "home").glob("test-*.parquet"))
    table = pq.read_table(shard)
    pq.write_table(table.slice(0, 2), shard)  # a row lost
    result = CliRunner().invoke(cli, ["verify", str(folder)])
    assert result.exit_code == 1 and "fingerprint" in result.output
    assert "home/test: 2 rows in the shards, 3 in the manifest" in result.output


def test_verify_names_the_shards_that_changed(tmp_path):
    """verify said only that the fingerprint differed: with hundreds of shards, not which one broke it."""
    from reddit_amazon.dataset_folder import verify

    folder = tmp_path / "reddit-amazon"
    manifest = write_dataset(folder, contents())
    assert set(manifest["shards"]) == {p.relative_to(folder).as_posix() for p in folder.rglob("*.parquet")}
    edited, lost = folder / "data/home/test-00000-of-00001.parquet", folder / "data/items/home-00000-of-00001.parquet"
    pq.write_table(pq.read_table(edited).slice(0, 2), edited)
    lost.rename(folder / "data/items/home-00000-of-00002.parquet")
    problems = verify(folder)
    assert "data/home/test-00000-of-00001.parquet: sha256 " in "\n".join(problems)
    assert [p.split(":")[0] for p in problems if p.startswith("data/")] == [
        "data/home/test-00000-of-00001.parquet", "data/items/home-00000-of-00001.parquet",
        "data/items/home-00000-of-00002.parquet"]
    assert "data/items/home-00000-of-00001.parquet: missing, the manifest records it" in problems
    assert "data/items/home-00000-of-00002.parquet: not a shard the manifest records (added)" in problems


@pytest.mark.parametrize("fields", [["name"], ["version"], ["fingerprint"], ["counts"],
                                    ["name", "version", "fingerprint", "counts"]])
def test_verify_names_each_required_field_the_manifest_lacks(tmp_path, fields):
    """A manifest without the fingerprint, the rows per split or the version said the folder 'matches its manifest'
    (no fingerprint: 'the manifest says None', blaming the shards and the card); each missing field is a problem.
    Without its name too: verify passed a folder whose card `reddit-amazon card` then could not write."""
    from click.testing import CliRunner

    from reddit_amazon.cli import cli

    folder = tmp_path / "reddit-amazon"
    manifest = write_dataset(folder, contents())
    for field in fields:
        del manifest[field]
    (folder / MANIFEST).write_text(json.dumps(manifest))
    result = CliRunner().invoke(cli, ["verify", str(folder)])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert result.output == f"Error: {folder} does not match its manifest:\n" + "".join(
        f"  manifest.json: the field {field!r} is missing (restore the manifest, or rebuild or re-import the folder)\n"
        for field in fields)


def test_load_of_a_manifest_without_a_fingerprint_names_the_field_not_the_data_files(tmp_path):
    """load, `benchmark run` and push_to_hub said "its data files changed since it was written" of a folder whose
    shards are as written and whose manifest lacks its fingerprint: the manifest's missing field is the problem."""
    from benchmark.data import DatasetError, resolve_dataset
    from reddit_amazon.dataset_folder import push_to_hub
    from reddit_amazon.hub_push import PushRefused

    folder = tmp_path / "reddit-amazon"
    manifest = write_dataset(folder, contents())
    del manifest["fingerprint"]
    (folder / MANIFEST).write_text(json.dumps(manifest))
    missing = re.escape(f"{folder / MANIFEST}: the field 'fingerprint' is missing (restore the manifest, or rebuild "
                        "or re-import the folder)")
    for attempt, error in ((lambda: load("home", folder, split="test"), SchemaError),
                           (lambda: resolve_dataset(folder), DatasetError)):
        with pytest.raises(error, match=missing):
            attempt()
    with pytest.raises(PushRefused, match=re.escape(f"nothing was pushed: {MANIFEST}: the field 'fingerprint' is "
                                                    "missing (restore the manifest")):  # as verify names it
        push_to_hub(folder, "me/data", token="hf_x", endpoint="http://127.0.0.1:9")


@pytest.mark.parametrize("field", ["shards", "stats", "build", "source_copies"])
def test_verify_takes_a_manifest_without_a_field_only_some_writers_recorded(tmp_path, field):
    """shards: folders of layout 1.0.0 (checked by their fingerprint); stats and build: imports; source_copies: builds."""
    from reddit_amazon.dataset_folder import verify

    folder = tmp_path / "reddit-amazon"
    written = contents()
    written.metadata = {"stats": {}, "build": {}, "source_copies": {}}
    manifest = write_dataset(folder, written)
    del manifest[field]
    (folder / MANIFEST).write_text(json.dumps(manifest))
    assert verify(folder) == []


def test_a_manifest_without_shard_hashes_still_verifies(tmp_path):
    """Folders written before the manifest recorded each shard's sha256: the fingerprint alone is checked."""
    from reddit_amazon.dataset_folder import verify

    folder = tmp_path / "reddit-amazon"
    manifest = write_dataset(folder, contents())
    del manifest["shards"]
    (folder / MANIFEST).write_text(json.dumps(manifest))
    assert verify(folder) == []
    shard = folder / "data/home/test-00000-of-00001.parquet"
    pq.write_table(pq.read_table(shard).slice(0, 2), shard)
    problems = verify(folder)
    assert "fingerprint" in problems[0] and not any(p.startswith("data/") for p in problems)


def test_verify_finds_a_card_that_loads_another_split_and_card_repairs_it(tmp_path):
    """The README's configs decide what `datasets` loads: one pointing a split at another's shard must not pass."""
    from click.testing import CliRunner

    from reddit_amazon.cli import cli

    folder = tmp_path / "reddit-amazon"
    write_dataset(folder, contents())
    readme = folder / "README.md"
    test, validation = "data/home/test-00000-of-00001.parquet", "data/home/validation-00000-of-00001.parquet"
    readme.write_text(readme.read_text().replace(test, "@").replace(validation, test).replace("@", validation))
    assert datasets.load_dataset(str(folder), "home", split="validation")[0]["example_id"].startswith("home-test")
    result = CliRunner().invoke(cli, ["verify", str(folder)])
    assert result.exit_code == 1 and "README.md: home/validation loads" in result.output, result.output
    assert CliRunner().invoke(cli, ["card", str(folder)]).exit_code == 0
    assert CliRunner().invoke(cli, ["verify", str(folder)]).exit_code == 0


def test_verify_takes_a_card_whose_patterns_load_exactly_the_shards(tmp_path):
    """`datasets` reads a card's paths as glob patterns (push_to_hub writes `data/train-*`) and with `./`: such a
    card loads exactly the folder's shards, yet verify called it damaged; a pattern matching another split's
    shard still fails."""
    from reddit_amazon.dataset_folder import verify

    folder = tmp_path / "reddit-amazon"
    write_dataset(folder, contents())
    readme = folder / "README.md"
    text = readme.read_text()
    readme.write_text(text.replace("data/home/test-00000-of-00001.parquet", "data/home/test-*")
                      .replace("data/home/train-00000-of-00001.parquet", "./data/home/train-00000-of-00001.parquet"))
    assert datasets.load_dataset(str(folder), "home", split="test").num_rows == 3
    assert verify(folder) == []
    readme.write_text(text.replace("data/home/test-00000-of-00001.parquet", "data/home/*-00000-of-00001.parquet"))
    assert any("home/test loads" in problem for problem in verify(folder))


def test_a_dataset_without_records_is_written(tmp_path):
    """A build whose filters keep nothing still ends with a valid (empty) folder, not a traceback."""
    empty = DatasetContents({domain: {split: [] for split in SPLITS} for domain in DOMAINS},
                            {domain: [] for domain in DOMAINS}, version="1.0.0")
    manifest = write_dataset(tmp_path / "reddit-amazon", empty)
    assert all(n == 0 for splits in manifest["counts"].values() for n in splits.values())
    assert read_manifest(tmp_path / "reddit-amazon")["fingerprint"] == manifest["fingerprint"]
    card = (tmp_path / "reddit-amazon" / "README.md").read_text()
    refresh_card(tmp_path / "reddit-amazon")  # `reddit-amazon card` agrees with the build: nothing to refuse
    assert (tmp_path / "reddit-amazon" / "README.md").read_text() == card


def test_a_folder_changed_by_hand_is_refused_by_load_benchmark_and_push_and_verify_names_what(tmp_path):
    """`datasets` would serve the rows cached before the change, and the recorded fingerprint would be false."""
    from click.testing import CliRunner

    from benchmark.data import DatasetError, resolve_dataset
    from reddit_amazon.cli import cli
    from reddit_amazon.dataset_folder import load, push_to_hub
    from reddit_amazon.hub_push import PushRefused

    folder = tmp_path / "hand-edited"
    write_dataset(folder, contents())
    assert len(load("home", folder, split="test")) == 3
    shard = next((folder / "data" / "home").glob("test-*.parquet"))
    pq.write_table(pq.read_table(shard).slice(0, 2), shard)
    for attempt, error in ((lambda: load("home", folder, split="test"), SchemaError),
                           (lambda: resolve_dataset(folder), DatasetError)):
        with pytest.raises(error, match="changed since it was written"):
            attempt()
    with pytest.raises(PushRefused, match="does not match its manifest, nothing was pushed: .* home/test: 2 rows in "
                                          "the shards, 3 in the manifest"):  # what verify names
        push_to_hub(folder, "me/data", token="hf_x", endpoint="http://127.0.0.1:9")
    shard.write_bytes(shard.read_bytes()[:100])
    result = CliRunner().invoke(cli, ["verify", str(folder)])
    assert result.exit_code == 1 and "data/home/test-00000-of-00001.parquet: not a readable Parquet file" in result.output
    (folder / "manifest.json").write_text("{")
    result = CliRunner().invoke(cli, ["verify", str(folder)])
    assert result.exit_code == 1 and "manifest.json: not valid JSON" in result.output


def test_the_current_folder_is_never_an_output_folder(tmp_path, monkeypatch):
    from reddit_amazon.dataset_folder import check_output_folder

    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileExistsError, match=r"is the current folder, which writing the dataset there would delete"):
        check_output_folder(".")
    with pytest.raises(FileExistsError, match=r"holds the current folder"):
        check_output_folder("..")
    assert check_output_folder("out") == tmp_path / "out"


def test_atomic_writes_follow_symlinks_and_write_into_pipes(tmp_path):
    """`benchmark report --markdown latest.md` with latest.md a symlink replaced the link by a file (the target
    kept its old text); `--html` naming a named pipe or a device (/dev/full as root) replaced the node itself."""
    import threading

    from reddit_amazon.files import write_atomic

    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "real.md").write_text("old")
    (tmp_path / "latest.md").symlink_to(tmp_path / "site" / "real.md")
    write_atomic(tmp_path / "latest.md", b"new")
    assert (tmp_path / "latest.md").is_symlink() and (tmp_path / "site" / "real.md").read_text() == "new"

    pipe = tmp_path / "pipe.html"
    os.mkfifo(pipe)
    got = []
    reader = threading.Thread(target=lambda: got.append(pipe.read_bytes()))
    reader.start()
    write_atomic(pipe, b"<html>")
    reader.join(timeout=10)
    assert got == [b"<html>"] and stat.S_ISFIFO(pipe.lstat().st_mode)


def test_the_one_jsonl_writer_writes_compact_lines_or_leaves_the_file_as_it_was(tmp_path):
    """The build's stage files, predictions.jsonl and candidates.jsonl are written by this one function (they had
    two copies): the bytes are pinned, as readers and the stages' resume compare them."""
    from reddit_amazon.files import write_jsonl_atomic

    target = tmp_path / "rows.jsonl"
    write_jsonl_atomic(target, ({"id": i, "text": "café"} for i in range(2)))  # any iterable, a generator too
    assert target.read_bytes() == b'{"id":0,"text":"caf\xc3\xa9"}\n{"id":1,"text":"caf\xc3\xa9"}\n'
    with pytest.raises(TypeError):  # orjson.JSONEncodeError
        write_jsonl_atomic(target, [{"id": 2}, {"id": object()}])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.jsonl"]
    assert target.read_bytes().count(b"\n") == 2


def test_a_full_disk_names_the_dataset_folder(tmp_path, monkeypatch):
    import errno

    import reddit_amazon.dataset_folder as dataset_folder

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(dataset_folder, "_write_into", full)
    with pytest.raises(OSError, match="No space left on device") as caught:
        write_dataset(tmp_path / "ds", contents())
    assert caught.value.filename == str(tmp_path / "ds") and str(tmp_path / "ds") in str(caught.value)
    assert not any(tmp_path.iterdir())  # nothing half-written left behind


def test_shards_go_straight_to_arrow_and_are_the_files_datasets_wrote(tmp_path, monkeypatch):
    """`Dataset.from_list` peaked at ~5x a shard (an inferred table, then a cast): 2,000 items with Amazon-sized
    images (~150 KB) took ~1.4 GB to write one shard. The files must stay byte for byte what it wrote."""
    with monkeypatch.context() as patched:
        patched.setattr(datasets.Dataset, "from_list", classmethod(lambda *a, **k: pytest.fail("from_list")))
        write_dataset(tmp_path / "direct", contents())
    shards = sorted((tmp_path / "direct" / "data").rglob("*.parquet"))
    assert any("items" in shard.parts for shard in shards)
    for shard in shards:
        table = pq.read_table(shard)
        through_datasets = datasets.Dataset.from_list(table.to_pylist(),
                                                      features=datasets.Features.from_arrow_schema(table.schema))
        pq.write_table(through_datasets.data.table, tmp_path / "reference.parquet")
        assert (tmp_path / "reference.parquet").read_bytes() == shard.read_bytes(), shard


def test_raw_parquet_readers_see_the_columns_in_the_schema_order(built):
    """The items shards had `image` last: `datasets` reorders to the card's features, but pyarrow, pandas, polars
    or duckdb showed another column order than the card and the schema document."""
    from reddit_amazon.schema import ITEM_FEATURES, conversation_features

    root, _ = built
    data = root / "reddit-amazon" / "data"
    item_shards, conversation_shards = sorted((data / "items").glob("*.parquet")), sorted(data.glob("[!i]*/*.parquet"))
    assert item_shards and conversation_shards  # shards moved elsewhere would leave nothing checked
    for shard in item_shards:
        assert pq.read_schema(shard).names == list(ITEM_FEATURES), shard
        assert list(pq.read_table(shard).to_pandas().columns) == list(ITEM_FEATURES), shard
    for shard in conversation_shards:
        assert pq.read_schema(shard).names == list(conversation_features(["bm25"])), shard


def test_the_fingerprint_covers_every_shard_and_where_it_lies(tmp_path):
    folder = tmp_path / "ds"
    original = write_dataset(folder, contents())["fingerprint"]
    shards = sorted((folder / "data").rglob("*.parquet"))
    for shard in shards:  # any shard's rows
        data = shard.read_bytes()
        table = pq.read_table(shard)
        pq.write_table(table.slice(0, table.num_rows - 1), shard)
        assert fingerprint(folder) != original, shard
        shard.write_bytes(data)
    assert fingerprint(folder) == original
    # validation rows moved into train (the shard keeps its place in the sorted listing) is other data
    moved = folder / "data" / "home" / "validation-00000-of-00001.parquet"
    moved.rename(folder / "data" / "home" / "train-00001-of-00002.parquet")
    assert fingerprint(folder) != original


_KILLED_WHILE_SWAPPING = """
import os, signal, sys
from pathlib import Path
import reddit_amazon.dataset_folder as dataset_folder
from reddit_amazon.files import sibling_prefix
from benchmark.synthetic import make_synthetic_dataset

def replace_dir(new, target):  # kill -9 arriving in the middle of the folder swap
    if sys.argv[2] == "between_renames":
        target.rename(target.with_name(sibling_prefix(target, "old") + "0"))
    os.kill(os.getpid(), signal.SIGKILL)

def write_readme(folder, *args):  # kill -9 while the new folder is written, a temporary file in it
    (folder / ".README.md.k1ll3d00").write_text("half")
    os.kill(os.getpid(), signal.SIGKILL)

dataset_folder.replace_dir = replace_dir
if sys.argv[2] == "while_writing":
    dataset_folder.write_readme = write_readme
make_synthetic_dataset(sys.argv[1], records_per_domain=3)
"""


@pytest.mark.parametrize("when", ["while_writing", "before_the_renames", "between_renames"])
def test_a_rewrite_killed_while_swapping_folders_keeps_the_hidden_entries(tmp_path, when):
    """kill -9 while the new folder replaces the old one, then a rerun: the Hub clone's .git, which the killed run
    had moved into its new folder, was deleted with that abandoned folder by the rerun. A folder killed while
    being written gives back none of its own temporary files."""
    from benchmark.synthetic import make_synthetic_dataset

    folder = tmp_path / "reddit-amazon"
    make_synthetic_dataset(folder, records_per_domain=3)
    (folder / ".git").mkdir()
    (folder / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    killed = subprocess.run([sys.executable, "-c", _KILLED_WHILE_SWAPPING, str(folder), when], capture_output=True,
                            text=True, timeout=120)
    assert killed.returncode == -9, killed.stderr
    make_synthetic_dataset(folder, records_per_domain=3)  # the rerun
    assert (folder / ".git" / "HEAD").read_text() == "ref: refs/heads/main\n"
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == [".git"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reddit-amazon"]
    from reddit_amazon.dataset_folder import verify

    assert not verify(folder)


def test_on_windows_no_process_is_probed_with_signal_0(tmp_path, monkeypatch):
    """Whether the writer of an abandoned sibling still runs was asked with os.kill(pid, 0): on Windows that sends
    Ctrl-C (CTRL_C_EVENT is 0) to the console process group pid, or fails with an OSError that stopped the rerun.
    There the sibling is left alone instead."""
    from reddit_amazon import files

    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    target = tmp_path / "reddit-amazon"
    target.mkdir()
    abandoned = tmp_path / f".reddit-amazon.tmp-{socket.gethostname()}-{ended.pid}-x"
    abandoned.mkdir()
    signalled = []
    monkeypatch.setattr(files.sys, "platform", "win32")
    monkeypatch.setattr(files.os, "kill", lambda pid, signum: signalled.append((pid, signum)))
    assert files.remove_abandoned_siblings(target, finished_marker="README.md") == []
    assert signalled == [] and abandoned.is_dir()


def test_an_interrupt_between_the_swaps_renames_keeps_the_folder_and_its_git(tmp_path, monkeypatch):
    """Ctrl-C, or SIGTERM as run_cli raises it, after the old folder went aside and before the new one took its
    place: the new folder, holding the Hub clone's .git by then, was deleted and the old one left hidden."""
    import pathlib

    from benchmark.synthetic import make_synthetic_dataset

    folder = tmp_path / "reddit-amazon"
    make_synthetic_dataset(folder, records_per_domain=3)
    (folder / ".git").mkdir()
    (folder / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    rename = pathlib.Path.rename

    def interrupted(self, target):
        if pathlib.Path(target) == folder and self.name.startswith(".reddit-amazon.tmp-"):
            raise KeyboardInterrupt
        return rename(self, target)

    monkeypatch.setattr(pathlib.Path, "rename", interrupted)
    with pytest.raises(KeyboardInterrupt):
        make_synthetic_dataset(folder, records_per_domain=3)
    monkeypatch.undo()
    assert (folder / ".git" / "HEAD").read_text() == "ref: refs/heads/main\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reddit-amazon"]
    from reddit_amazon.dataset_folder import verify

    assert not verify(folder)


def test_a_second_writer_of_a_folder_being_written_is_refused(tmp_path, monkeypatch, short_lock_wait):
    """Two builds or imports writing one --out at once swapped the folder under each other: the second to swap
    deleted the folder the first had just put in place, with the .git the first had carried into it."""
    import threading

    from reddit_amazon import dataset_folder
    from reddit_amazon.dataset_folder import verify
    from reddit_amazon.files import FolderBusyError

    folder = tmp_path / "reddit-amazon"
    write_dataset(folder, contents(2))
    (folder / ".git").mkdir()
    (folder / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    swap, second = dataset_folder.replace_dir, []
    second_at_its_swap, first_swapped = threading.Event(), threading.Event()

    def write_second():
        try:
            second.append(write_dataset(folder, contents(4)))
        except FolderBusyError as error:
            second.append(error)
        finally:
            second_at_its_swap.set()

    def swap_in_turn(new, target):  # the first writer has carried .git away: the second starts, then both swap
        if threading.current_thread() is threading.main_thread():
            second_writer.start()
            second_at_its_swap.wait(30)
            swap(new, target)
            first_swapped.set()
        else:
            second_at_its_swap.set()
            first_swapped.wait(30)
            swap(new, target)

    second_writer = threading.Thread(target=write_second)
    monkeypatch.setattr(dataset_folder, "replace_dir", swap_in_turn)
    first = write_dataset(folder, contents(3))
    second_writer.join(30)
    assert str(second[0]) == (f"another dataset writer or push is writing this folder (it holds "
                              f"{tmp_path / '.reddit-amazon.lock'}); wait for it to end or choose another folder: "
                              f"{folder}")
    assert read_manifest(folder)["fingerprint"] == first["fingerprint"] and verify(folder) == []
    assert (folder / ".git" / "HEAD").read_text() == "ref: refs/heads/main\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reddit-amazon"]  # no lock file or folder left beside


def test_a_second_writer_of_a_new_folder_is_told_it_is_a_folder(tmp_path, short_lock_wait):
    """A first build or import writing a new --out has not put the folder in place yet: the second writer was told
    "another dataset writer is writing this file ... choose another file"."""
    from reddit_amazon.files import FolderBusyError, file_lock

    folder = tmp_path / "new-out"
    with file_lock(folder, "dataset writer"), pytest.raises(FolderBusyError) as busy:  # the first writer
        write_dataset(folder, contents(2))
    assert str(busy.value) == (f"another dataset writer or push is writing this folder (it holds "
                               f"{tmp_path / '.new-out.lock'}); wait for it to end or choose another folder: {folder}")


def test_a_folder_or_file_name_near_the_length_limit_is_written(tmp_path):
    """A name the filesystem takes (255 bytes) is written: the hidden temporary beside it must not be longer."""
    from reddit_amazon.files import remove_abandoned_siblings, sibling_prefix, write_atomic

    out = tmp_path / ("n" * 240)
    write_dataset(out, contents(1))
    assert (out / MANIFEST).is_file() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    write_dataset(out, contents(1))  # replacing it goes through an "old" sibling of the same kind
    write_atomic(tmp_path / ("f" * 250), b"x")
    assert (tmp_path / ("f" * 250)).read_bytes() == b"x"
    abandoned = tmp_path / (sibling_prefix(out, "tmp").replace(str(os.getpid()), "999999999") + "x")
    abandoned.mkdir()  # left by a killed process: still recognised
    assert remove_abandoned_siblings(out, finished_marker="README.md") == [abandoned]


@pytest.mark.parametrize("umask", [0o027, 0o002])
def test_the_dataset_folder_has_the_mode_the_umask_gives_like_its_subfolders(tmp_path, umask):
    """umask 027 keeps the folder from others, umask 002 lets the group write it: as mkdir would."""
    previous = os.umask(umask)
    try:
        write_dataset(tmp_path / "ds", contents(1))
    finally:
        os.umask(previous)
    modes = {stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "ds", tmp_path / "ds" / "data")}
    assert modes == {0o777 & ~umask}


@pytest.mark.parametrize("umask", [0o027, 0o002])
def test_an_atomic_write_takes_the_umask_of_the_moment_not_the_one_at_import(tmp_path, umask):
    """A library user who sets the umask after importing the toolkit gets files as ``open()`` would make them."""
    from reddit_amazon.files import current_umask, write_atomic

    previous = os.umask(umask)
    try:
        assert current_umask() == umask
        assert os.umask(umask) == umask  # reading it left it as it was
        write_atomic(tmp_path / "f", b"x")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == 0o666 & ~umask


def test_items_shards_are_written_in_small_row_groups(tmp_path, monkeypatch):
    """An items shard was one row group of 2,000 images (160 MB with 83 KB images): a reader holds a row group at
    once (datasets' streaming, the Hub viewer, the card's sizes), and writing it peaked at ~5x its images."""
    import reddit_amazon.dataset_folder as dataset_folder
    from reddit_amazon.dataset_folder import verify

    monkeypatch.setattr(dataset_folder, "ITEM_SHARD_ROWS", 7)
    monkeypatch.setattr(dataset_folder, "ITEM_ROW_GROUP_ROWS", 3)
    folder = tmp_path / "ds"
    write_dataset(folder, contents())
    shards = sorted((folder / "data" / "items").glob("home-*.parquet"))
    groups = [[pq.ParquetFile(s).metadata.row_group(g).num_rows for g in range(pq.ParquetFile(s).num_row_groups)]
              for s in shards]
    assert groups == [[3, 3, 1], [3]]
    conversation_shards = sorted((folder / "data").glob("[!i]*/*.parquet"))
    assert conversation_shards
    for shard in conversation_shards:  # conversations: one group per shard
        assert pq.ParquetFile(shard).num_row_groups == 1
    home = datasets.load_dataset(str(folder), "items", split="home")
    assert home["item_id"] == [f"B00000000{k}" for k in range(10)]
    assert [row["image"] is not None for row in home] == [k % 2 == 1 for k in range(10)]
    assert verify(folder) == []


def test_a_file_that_cannot_grow_is_named_and_the_old_one_kept(tmp_path, file_size_limit):
    """A full disk in a stage's JSONL, a results file or a card said "[Errno 28] No space left on device" and no
    path: the atomic writes name the file they were writing, whether the write, the flush or the close failed."""
    import errno

    from reddit_amazon.files import open_atomic, write_atomic

    target = tmp_path / "rows.jsonl"
    target.write_bytes(b"old\n")
    with file_size_limit(1000):
        for data in (b"x" * 1100, b"x" * 20000):  # fails as the close flushes the buffer, and in the write
            with pytest.raises(OSError) as caught:
                write_atomic(target, data)
            assert caught.value.errno == errno.EFBIG and caught.value.filename == str(target), caught.value
        with pytest.raises(OSError) as caught, open_atomic(target) as out:
            for _ in range(100):
                out.write(b"y" * 100)
        assert caught.value.filename == str(target), caught.value
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.jsonl"] and target.read_bytes() == b"old\n"


def test_an_oserror_of_other_code_in_an_atomic_write_is_not_the_files(tmp_path):
    """Only the file's own operations are named: a reader or network call failing inside the block is not."""
    import errno

    from reddit_amazon.files import open_atomic

    with pytest.raises(OSError) as caught, open_atomic(tmp_path / "out.jsonl") as out:
        out.write(b"row\n")
        raise OSError(errno.ECONNREFUSED, "Connection refused")
    assert caught.value.filename is None and not any(tmp_path.iterdir())


def test_a_full_datasets_cache_is_named_not_a_dataset_generation_error(tmp_path, monkeypatch, file_size_limit):
    """`datasets` turns a full disk in its cache into "DatasetGenerationError: An error occurred while generating
    the dataset", which reads as a broken dataset folder; the load now says which folder is full and how to move it."""
    import errno

    from reddit_amazon.dataset_folder import load

    write_dataset(tmp_path / "ds", contents())
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    with file_size_limit(2000), pytest.raises(OSError) as caught:
        load("items", tmp_path / "ds", split="home")
    assert caught.value.errno == errno.EFBIG and caught.value.filename == str(tmp_path / "cache")
    assert "HF_DATASETS_CACHE" in str(caught.value)
    assert len(load("items", tmp_path / "ds", split="home")) > 0  # with room, the same load works


@pytest.mark.parametrize("field", ["version", "counts", "name"])
def test_a_manifest_lacking_a_field_is_an_error_naming_the_file(tmp_path, field):
    """The commands made every KeyError 'Error: a required field is missing: 'version'', naming no file; a manifest's
    missing field is now a SchemaError naming manifest.json, and a KeyError elsewhere (a bug) keeps its traceback."""
    from click.testing import CliRunner

    from reddit_amazon.cli import cli

    folder = tmp_path / "reddit-amazon"
    write_dataset(folder, contents())
    manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    del manifest[field]
    (folder / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    result = CliRunner().invoke(cli, ["card", str(folder)])
    assert result.exit_code == 1 and result.output == (
        f"Error: SchemaError: {folder / MANIFEST}: the field {field!r} is missing (restore the manifest, or rebuild or "
        "re-import the folder)\n"), result.output


def test_a_key_error_of_a_bug_keeps_its_traceback():
    from reddit_amazon.cli import input_errors

    with pytest.raises(KeyError, match="'x'"), input_errors():
        {}["x"]
