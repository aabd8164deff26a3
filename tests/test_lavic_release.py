"""Importer/exporter of the authors' release: on the real release when present, on crafted files always."""

import json
import os
from pathlib import Path

import datasets
import pytest
from core_install import import_extra  # tests/
from click.testing import CliRunner

from reddit_amazon.cli import cli
from reddit_amazon.dataset_folder import fingerprint, read_manifest
from reddit_amazon.lavic_release import export_release, import_release
from reddit_amazon.schema import SchemaError, parse_context

RELEASE_COUNTS = {"beauty": 758, "fashion": 797, "home": 368}
FOLDERS = {"beauty": "all_beauty", "fashion": "amazon_fashion", "home": "amazon_home"}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def imported(tmp_path_factory, request):
    release = request.getfixturevalue("lavic_release")
    out = tmp_path_factory.mktemp("imported") / "reddit-amazon"
    report = import_release(release, out)
    return release, out, report


def test_real_release_every_record_and_gt_item_arrives(imported):
    release, out, report = imported
    for domain, expected in RELEASE_COUNTS.items():
        assert report.records[domain] == {"validation": expected}
        loaded = datasets.load_dataset(str(out), domain, split="validation")
        assert loaded.num_rows == expected
        source = read_jsonl(release / FOLDERS[domain] / "valid.jsonl")
        assert [row["gt_items"] for row in loaded] == [r["gt_items"] for r in source]
        assert [row["candidates_sbert"] for row in loaded] == [r["candidates_st"] for r in source]
        assert [row["candidates_openai_large"] for row in loaded] == [r["candidates_gpt_large"] for r in source]
        assert [row["context"] for row in loaded] == [r["context"] for r in source]
        items = {row["item_id"] for row in datasets.load_dataset(str(out), "items", split=domain)}
        assert {a for r in source for a in r["gt_items"] + r["candidates_st"] + r["candidates_gpt_large"]} <= items
    manifest = read_manifest(out)
    assert manifest["text_repair"] is False and manifest["candidate_sets"] == ["sbert", "openai_large"]


def test_real_release_round_trip_is_byte_exact(imported, tmp_path):
    release, out, _ = imported
    export_release(out, tmp_path)
    for folder in FOLDERS.values():
        assert (tmp_path / folder / "valid.jsonl").read_bytes() == (release / folder / "valid.jsonl").read_bytes()
    assert (tmp_path / "item2meta_valid.jsonl").read_bytes() == (release / "item2meta_valid.jsonl").read_bytes()


def test_real_release_mojibake_is_counted_and_repairable(imported, tmp_path):
    release, _, report = imported
    total = sum(RELEASE_COUNTS.values())
    assert 0.10 < report.mojibake_records / total < 0.16  # "about 13%"
    repaired = import_release(release, tmp_path / "clean", repair_text=True)
    assert repaired.repaired_records == report.mojibake_records
    assert read_manifest(tmp_path / "clean")["text_repair"] is True
    texts = [row["gt_text"] for row in datasets.load_dataset(str(tmp_path / "clean"), "beauty", split="validation")]
    assert not any("\u00e2\u0080" in text for text in texts)
    assert any("I\u2019d respond" in text for text in texts)  # "I\u00e2\u0080\u0099d" in the release


def test_real_release_candidate_recall_is_recorded_as_a_build_records_it(imported):
    """The share of validation (record, gt item) pairs whose gt is among the release's 10 candidates bounds HR@1
    (19-41% for candidates_st): the manifest must record it, counted here straight from the release files."""
    release, out, _ = imported
    recorded = read_manifest(out)["build_reports"]["candidates"]
    assert recorded["computed"] == ["sbert", "openai_large"] and recorded["skipped_domains"] == {}
    for theirs, ours in {"candidates_st": "sbert", "candidates_gpt_large": "openai_large"}.items():
        for domain, folder in FOLDERS.items():
            rows = read_jsonl(release / folder / "valid.jsonl")
            pairs = [gt in row[theirs] for row in rows for gt in row["gt_items"]]
            assert recorded["recall"][ours][domain] == round(sum(pairs) / len(pairs), 4)
    assert all(0.19 <= r <= 0.42 for r in recorded["recall"]["sbert"].values())
    assert all(0.38 <= r <= 0.65 for r in recorded["recall"]["openai_large"].values())


def write_release(root: Path, lines: list[str], domain_folder: str = "amazon_home") -> Path:
    (root / domain_folder).mkdir(parents=True)
    (root / domain_folder / "valid.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def release_line(**overrides) -> str:
    record = {
        "context": "<submission>Lamp ideas? </submission>\n<comment>What style?</comment>\n",
        "context_items": [], "gt": "https://www.amazon.com/dp/B0776Y43KM", "gt_items": ["B0776Y43KM"],
        "candidates_gpt_large": [f"B0776Y43K{i}" for i in range(10)],
        "candidates_st": [f"B0776Y43L{i}" for i in range(10)],
    }
    record.update(overrides)
    return json.dumps(record)


@pytest.mark.parametrize(
    "bad, message",
    [
        ("{not json", "not valid JSON"),
        (release_line(gt_items=["B0776"]), "not an ASIN"),
        (release_line(context="plain text"), "context is not"),
        (json.dumps({"context": "x"}), "missing field(s)"),
        (release_line(gt_items="B0776Y43KM"), "gt_items must be lists of ASINs"),
        (release_line(candidates_st=None), "candidates_st must be lists of ASINs"),
        (release_line(candidates_st=[]), "candidates_st is empty"),  # export could not write it back
        (release_line(candidates_gpt_large=["B0776Y43KM"] * 10),  # named as in the release file
         "candidates_gpt_large must hold 10 distinct ASINs (or none), got 10, repeating B0776Y43KM"),
        (release_line(context="<submission>t</submission>\n" + "<comment>c</comment>\n" * 40 + "tail"),
         "context is not"),  # at once: the old pattern backtracked for days on this
    ],
)
def test_bad_release_lines_fail_with_file_and_line(tmp_path, bad, message):
    src = write_release(tmp_path / "src", [release_line(), bad])
    with pytest.raises(SchemaError) as error:
        import_release(src, tmp_path / "out")
    assert "valid.jsonl:2: " in str(error.value) and message in str(error.value)
    assert not (tmp_path / "out").exists()


def test_files_outside_the_release_layout_are_named_not_skipped_silently(tmp_path):
    src = write_release(tmp_path / "src", [release_line()])
    write_release(src, [release_line()], domain_folder="Amazon_Fashion")  # Amazon's spelling of the folder
    (src / "amazon_home" / "dev.jsonl").write_text(release_line() + "\n", encoding="utf-8")
    (src / "README.md").write_text("not data")
    result = CliRunner().invoke(cli, ["import-lavic", str(src), "--out", str(tmp_path / "ds")])
    assert result.exit_code == 0, result.output
    assert "home/validation: 1 records" in result.output
    assert "2 file(s) outside the release layout were NOT imported: Amazon_Fashion/valid.jsonl, amazon_home/dev.jsonl" \
        in result.output


def test_crafted_release_joins_metadata_and_cli_round_trip(tmp_path):
    src = write_release(tmp_path / "src", [release_line(), release_line(gt_items=["B0776Y43K3", "B0776Y43L1"])])
    (src / "item2meta_valid.jsonl").write_text(
        json.dumps({"title": "Desk chair", "image_name": "B0776Y43KM_6.jpg", "image": "https://m.media-amazon.com/a.jpg",
                    "image_description_llava_cleaned": "A black chair."}) + "\n"
        + json.dumps({"title": "Desk chair", "image_name": "B0776Y43KM_2.jpg", "image": "https://m.media-amazon.com/b.jpg",
                      "image_description_llava_cleaned": "Side view."}) + "\n",
        encoding="utf-8",
    )
    runner = CliRunner()
    result = runner.invoke(cli, ["import-lavic", str(src), "--out", str(tmp_path / "ds")])
    assert result.exit_code == 0, result.output
    assert "home/validation: 2 records, 3 (record, gt item) pairs" in result.output
    items = datasets.load_dataset(str(tmp_path / "ds"), "items", split="home").to_list()
    chair = next(item for item in items if item["item_id"] == "B0776Y43KM")
    assert chair["title"] == "Desk chair"
    assert chair["image_urls"] == ["https://m.media-amazon.com/b.jpg", "https://m.media-amazon.com/a.jpg"]
    assert chair["image_description"] == "Side view."
    result = runner.invoke(cli, ["export-lavic", str(tmp_path / "ds"), "--out", str(tmp_path / "back")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "back" / "amazon_home" / "valid.jsonl").read_text() == (src / "amazon_home" / "valid.jsonl").read_text()
    assert not (tmp_path / "back" / "all_beauty").exists()


def test_imported_turns_match_the_release_context(imported):
    release, out, _ = imported
    for domain, folder in FOLDERS.items():
        loaded = datasets.load_dataset(str(out), domain, split="validation")
        for row, record in zip(loaded, read_jsonl(release / folder / "valid.jsonl"), strict=True):
            assert [t["text"] for t in row["turns"]] == [t.text for t in parse_context(record["context"])]
            assert row["gt_text"] == record["gt"]


def test_import_never_deletes_its_source_and_export_leaves_no_partial_file(tmp_path):
    dataset = tmp_path / "ds"
    src = write_release(dataset / "release", [release_line()])  # the release kept inside the output folder
    refused = CliRunner().invoke(cli, ["import-lavic", str(src), "--out", str(dataset)])
    assert refused.exit_code == 1 and "which writing the dataset there would delete" in " ".join(refused.output.split())
    assert (src / "amazon_home" / "valid.jsonl").is_file()
    assert "Traceback" not in refused.output
    from reddit_amazon.sample import sample_dataset_path

    failed = CliRunner().invoke(cli, ["export-lavic", str(sample_dataset_path()), "--out", str(tmp_path / "e")])
    assert failed.exit_code == 1 and "Traceback" not in failed.output  # the sample has no openai_large candidates
    assert "--retrievers sbert,openai-emb" in " ".join(failed.output.split())
    assert not list((tmp_path / "e").rglob("*"))  # refused before anything was written


def _tree(folder: Path) -> dict[str, bytes]:
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*"))
            if path.is_file()}



def test_the_authors_item2meta_train_layout_keeps_image_urls_and_descriptions(tmp_path):
    """item2meta_train.json maps each ASIN to its Amazon metadata plus ``image_descriptions_llava_cleaned``, keyed by
    image name, as the authors' knowledge_distillation.py reads it; image k is ``images[k]['large']``, as their
    crawl_images.py names it ``ASIN_k.jpg``, and their prompt_tuning.py shows image 0."""
    src = write_release(tmp_path / "src", [release_line()])
    (src / "item2meta_train.json").write_text(json.dumps({"B0776Y43KM": {
        "title": "Desk chair", "categories": ["Home"],
        "images": [{"thumb": "https://m.media-amazon.com/0s.jpg", "large": "https://m.media-amazon.com/0.jpg",
                    "variant": "MAIN"},
                   {"large": "https://m.media-amazon.com/1.jpg", "variant": "PT01"}],
        "image_descriptions_llava_cleaned": {"B0776Y43KM_1.jpg": "Side view.", "B0776Y43KM_0.jpg": "A black chair."},
    }}), encoding="utf-8")
    report = import_release(src, tmp_path / "ds")
    assert report.items_with_metadata == {"home": 1}
    items = datasets.load_dataset(str(tmp_path / "ds"), "items", split="home").to_list()
    chair = next(item for item in items if item["item_id"] == "B0776Y43KM")
    assert chair["title"] == "Desk chair"
    assert chair["image_urls"] == ["https://m.media-amazon.com/0.jpg", "https://m.media-amazon.com/1.jpg"]
    assert chair["image_description"] == "A black chair."

def test_an_image_in_both_metadata_files_is_one_image_of_its_item(tmp_path):
    """An item of item2meta_valid.jsonl that item2meta_train.json also holds (an export of a build writes the
    validation split's gt items to both) listed image 0 twice: its URL came twice into image_urls."""
    src = write_release(tmp_path / "src", [release_line()])
    (src / "item2meta_valid.jsonl").write_text(json.dumps({
        "title": "Desk chair", "image_name": "B0776Y43KM_0.jpg", "image": "https://m.media-amazon.com/0.jpg",
        "image_description_llava_cleaned": ""}) + "\n", encoding="utf-8")
    (src / "item2meta_train.json").write_text(json.dumps({"B0776Y43KM": {
        "title": "Desk chair",
        "images": [{"large": "https://m.media-amazon.com/0.jpg"}, {"large": "https://m.media-amazon.com/1.jpg"}],
        "image_descriptions_llava_cleaned": {"B0776Y43KM_0.jpg": "A black chair."},
    }}), encoding="utf-8")
    import_release(src, tmp_path / "ds")
    items = datasets.load_dataset(str(tmp_path / "ds"), "items", split="home").to_list()
    chair = next(item for item in items if item["item_id"] == "B0776Y43KM")
    assert chair["image_urls"] == ["https://m.media-amazon.com/0.jpg", "https://m.media-amazon.com/1.jpg"]
    assert chair["image_description"] == "A black chair."  # the valid row had none: the train file's fills it


def test_export_refuses_a_folder_it_would_mix_its_files_into(tmp_path):
    """The release files go into --out beside what is there: a dataset folder (the one exported included), a folder
    inside one, a folder of the user's files or a file are refused unchanged; an earlier export is rewritten."""
    src = write_release(tmp_path / "src", [release_line()])
    runner = CliRunner()
    dataset = tmp_path / "ds"
    assert runner.invoke(cli, ["import-lavic", str(src), "--out", str(dataset)]).exit_code == 0
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    (tmp_path / "a file").write_text("mine")
    for out, message in [(dataset, "is a reddit-amazon dataset folder"),
                         (dataset / "lavic_source" / "x", f"is inside {dataset}, which is a reddit-amazon dataset"),
                         (user, "is a folder with other content (notes.txt), not a LaViC release"),
                         (tmp_path / "a file", "is a file; the release output must be a folder")]:
        before = _tree(tmp_path)
        result = runner.invoke(cli, ["export-lavic", str(dataset), "--out", str(out)])
        assert result.exit_code == 1 and "Traceback" not in result.output, result.output
        assert message in " ".join(result.output.split())
        assert _tree(tmp_path) == before
        assert not (dataset / "lavic_source" / "x").exists()
    for _ in range(2):  # a new folder, then the same export again over it
        result = runner.invoke(cli, ["export-lavic", str(dataset), "--out", str(tmp_path / "back")])
        assert result.exit_code == 0, result.output
    assert sorted(_tree(tmp_path / "back")) == ["amazon_home/valid.jsonl"]  # as the release: no metadata files
    assert (tmp_path / "back" / "amazon_home" / "valid.jsonl").read_bytes() == \
        (src / "amazon_home" / "valid.jsonl").read_bytes()


def described_dataset(out: Path) -> dict[str, dict]:
    """A built folder whose items have image URLs and image descriptions (home: a validation and a test record);
    returns its items' title, image_urls and image_description by ASIN."""
    from reddit_amazon.dataset_folder import DatasetContents, write_dataset
    from reddit_amazon.schema import Conversation, Item, Turn

    def record(split: str, gt: str) -> Conversation:
        return Conversation(example_id=f"home-{split}", domain="home", thread_id=f"t-{split}", subreddit="r",
                            created_utc=1, turns=[Turn(kind="submission", text="A lamp?")], context_items=[],
                            gt_text=f"https://www.amazon.com/dp/{gt}", gt_items=[gt],
                            candidates={"sbert": [f"B0776Y43L{i}" for i in range(10)],
                                        "openai_large": [f"B0776Y43K{i}" for i in range(10)]})

    items = [Item(item_id=f"B0776Y43{kind}{i}", domain="home", title=f"Lamp {kind}{i}",
                  image_urls=[f"https://m.media-amazon.com/{kind}{i}-{k}.jpg" for k in range(i % 3)],
                  image_description=f"A lamp, seen as {kind}{i}." if i % 2 else "")
             for kind in "KL" for i in range(10)]
    write_dataset(out, DatasetContents(
        conversations={"home": {"validation": [record("validation", "B0776Y43K1")],
                                "test": [record("test", "B0776Y43L2")]}},
        items={"home": items}, version="0.0.0", candidate_sets=["sbert", "openai_large"], metadata={}))
    return {item.item_id: {"title": item.title, "image_urls": item.image_urls,
                           "image_description": item.image_description} for item in items}


def test_an_exported_build_keeps_its_item_metadata_through_a_reimport(tmp_path):
    """A built folder has no release metadata files to copy: every item goes to item2meta_train.json (with every
    image URL and its description), the validation split's gt items to item2meta_valid.jsonl, and an import of the
    export gives each item its title, image URLs and description back."""
    built = described_dataset(tmp_path / "ds")
    export_release(tmp_path / "ds", tmp_path / "release")
    assert sorted(_tree(tmp_path / "release")) == ["amazon_home/test.jsonl", "amazon_home/valid.jsonl",
                                                   "item2meta_train.json", "item2meta_valid.jsonl"]
    train = json.loads((tmp_path / "release" / "item2meta_train.json").read_text(encoding="utf-8"))
    assert train["B0776Y43K1"] == {"title": "Lamp K1", "images": [{"large": "https://m.media-amazon.com/K1-0.jpg"}],
                                   "image_descriptions_llava_cleaned": {"B0776Y43K1_0.jpg": "A lamp, seen as K1."}}
    assert read_jsonl(tmp_path / "release" / "item2meta_valid.jsonl") == [{
        "title": "Lamp K1", "image_name": "B0776Y43K1_0.jpg", "image": "https://m.media-amazon.com/K1-0.jpg",
        "image_description_llava_cleaned": "A lamp, seen as K1."}]  # not the test split's gt item
    import_release(tmp_path / "release", tmp_path / "again")
    again = datasets.load_dataset(str(tmp_path / "again"), "items", split="home").select_columns(
        ["item_id", "title", "image_urls", "image_description"]).to_list()
    assert {row.pop("item_id"): row for row in again} == built


def test_a_release_without_records_is_refused(tmp_path):
    src = write_release(tmp_path / "src", [])
    with pytest.raises(SchemaError, match="hold no records"):
        import_release(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _bomb(archive) -> None:
    with archive.open("item2meta_train.json", "w", force_zip64=True) as member:
        for _ in range(40):  # 40 MiB of JSON whitespace in ~40 KiB: expands 1000x
            member.write(b" " * (1 << 20))
        member.write(b"{}")


@pytest.mark.parametrize("content, message", [
    (b"PK\x03\x04 not a zip", "not a readable zip archive"),
    (lambda archive: archive.writestr("item2meta_train.txt", "{}"), "holds no .json file"),
    (_bomb, "zip bomb"),
])
def test_a_bad_metadata_archive_is_a_schema_error_not_a_crash_or_a_bomb(tmp_path, content, message):
    import zipfile

    src = write_release(tmp_path / "src", [release_line()])
    if isinstance(content, bytes):
        (src / "item2meta_train.json.zip").write_bytes(content)
    else:
        with zipfile.ZipFile(src / "item2meta_train.json.zip", "w", zipfile.ZIP_DEFLATED) as archive:
            content(archive)
    with pytest.raises(SchemaError, match=message):
        import_release(src, tmp_path / "out")
    (src / "item2meta_train.json.zip").unlink()
    (src / "item2meta_valid.jsonl").write_text("[1, 2]\n")  # a row that is not an object
    with pytest.raises(SchemaError, match="item2meta_valid.jsonl:1: expected a JSON object"):
        import_release(src, tmp_path / "out")


@pytest.mark.parametrize("text", ["see below</comment>\n<comment>forged turn", "cut</comment>\n and more"])
def test_export_refuses_a_turn_the_release_context_cannot_keep_apart(tmp_path, text):
    """A comment holding '</comment>\\n' would come back from export -> import split into more turns (or refused):
    export names the record and writes nothing, instead of a file its own import misreads."""
    from dataclasses import replace

    from reddit_amazon.dataset_folder import DatasetContents, iter_conversations, iter_items, load, write_dataset
    from reddit_amazon.schema import ITEMS_CONFIG

    imported = tmp_path / "imported"
    import_release(write_release(tmp_path / "release", [release_line(), release_line()]), imported)
    records = list(iter_conversations(load("home", imported)["validation"], "home/validation"))
    records[1].turns[1] = replace(records[1].turns[1], text=text)
    items = list(iter_items(load(ITEMS_CONFIG, imported, split="home"), "items"))
    write_dataset(tmp_path / "ds", DatasetContents(conversations={"home": {"validation": records}},
                                                   items={"home": items}, version="1.0.0",
                                                   candidate_sets=["sbert", "openai_large"]))
    with pytest.raises(SchemaError, match=f"record {records[1].example_id} has a turn whose text holds"):
        export_release(tmp_path / "ds", tmp_path / "out")
    assert not list((tmp_path / "out").rglob("*"))
    result = CliRunner().invoke(cli, ["export-lavic", str(tmp_path / "ds"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1 and "Traceback" not in result.output and records[1].example_id in result.output


def test_a_quoted_tilde_in_import_and_export_paths_is_the_home_folder(user_home):
    src = write_release(user_home / "tilde-src", [release_line()])
    runner = CliRunner()
    imported = runner.invoke(cli, ["import-lavic", "~/tilde-src", "--out", "~/tilde-import"])
    assert imported.exit_code == 0, imported.output
    exported = runner.invoke(cli, ["export-lavic", "~/tilde-import", "--out=~/tilde-export"])
    assert exported.exit_code == 0, exported.output
    assert (user_home / "tilde-export" / "amazon_home" / "valid.jsonl").read_text() == \
        (src / "amazon_home" / "valid.jsonl").read_text()
    assert not any(Path.cwd().iterdir())


def test_verify_and_export_catch_a_changed_or_lost_release_file_copy(tmp_path):
    """lavic_source/ goes back verbatim into export-lavic: an edit to it must not pass verify or reach the export."""
    from reddit_amazon.dataset_folder import verify

    src = write_release(tmp_path / "src", [release_line()])
    meta = json.dumps({"title": "Lamp", "image_name": "B0776Y43KM_0.jpg", "image": "https://m.media-amazon.com/a.jpg",
                       "image_description_llava_cleaned": "A lamp."}) + "\n"
    (src / "item2meta_valid.jsonl").write_text(meta * 3, encoding="utf-8")
    import_release(src, tmp_path / "ds")
    assert verify(tmp_path / "ds") == []
    copy = tmp_path / "ds" / "lavic_source" / "item2meta_valid.jsonl"
    copy.write_text(meta[:40], encoding="utf-8")  # truncated by hand
    assert any("lavic_source/item2meta_valid.jsonl" in problem for problem in verify(tmp_path / "ds"))
    with pytest.raises(SchemaError, match="changed since the import"):
        export_release(tmp_path / "ds", tmp_path / "back")
    assert not list((tmp_path / "back").rglob("*"))
    copy.unlink()
    assert any("missing" in problem for problem in verify(tmp_path / "ds"))


def test_a_full_disk_while_exporting_leaves_no_truncated_metadata_copy(tmp_path, file_size_limit):
    """The release's metadata file went back with shutil.copyfile, straight to its final name: a full disk (or a
    kill) left a truncated item2meta_valid.jsonl there, and over an earlier export cut that one short."""
    import errno

    src = write_release(tmp_path / "src", [release_line()])
    meta = json.dumps({"title": "Lamp", "image_name": "B0776Y43KM_0.jpg", "image": "https://m.media-amazon.com/a.jpg",
                       "image_description_llava_cleaned": "A lamp."}) + "\n"
    (src / "item2meta_valid.jsonl").write_text(meta * 200, encoding="utf-8")  # 30 KB; the records file 0.5 KB
    import_release(src, tmp_path / "ds")
    for out in (tmp_path / "new", tmp_path / "earlier"):
        if out.name == "earlier":
            export_release(tmp_path / "ds", out)
        with file_size_limit(5000), pytest.raises(OSError) as caught:
            export_release(tmp_path / "ds", out)
        copies = [path.name for path in out.iterdir() if "item2meta" in path.name]
        if out.name == "new":
            assert copies == []
        else:
            assert copies == ["item2meta_valid.jsonl"]
            assert (out / "item2meta_valid.jsonl").read_bytes() == (src / "item2meta_valid.jsonl").read_bytes()
        assert caught.value.errno == errno.EFBIG and caught.value.filename == str(out / "item2meta_valid.jsonl")


def test_an_import_records_its_candidate_recall_per_set_and_domain_over_all_splits(tmp_path):
    """Counted by hand: home has 5 (record, gt item) pairs over two splits, of which the gpt_large lists hold 3
    and the st lists 1; beauty's one pair is among its st list only. The card shows the same shares."""
    src = write_release(tmp_path / "src", [
        release_line(),  # B0776Y43KM: in neither list
        release_line(gt_items=["B0776Y43K3", "B0776Y43L1"]),  # one in each list
        release_line(gt_items=["B0776Y43K5"]),  # gpt_large
    ])
    (src / "amazon_home" / "train.jsonl").write_text(release_line(gt_items=["B0776Y43K0"]) + "\n", encoding="utf-8")
    write_release(src, [release_line(gt_items=["B0776Y43L7"])], domain_folder="all_beauty")
    import_release(src, tmp_path / "ds")
    manifest = read_manifest(tmp_path / "ds")
    assert manifest["build_reports"]["candidates"] == {
        "computed": ["sbert", "openai_large"],
        "recall": {"sbert": {"beauty": 1.0, "home": 0.2}, "openai_large": {"beauty": 0.0, "home": 0.6}},
        "skipped_domains": {},
    }
    assert manifest["fingerprint"] == fingerprint(tmp_path / "ds")  # the manifest's reports are not the data's
    card = (tmp_path / "ds" / "README.md").read_text(encoding="utf-8")
    assert "| `candidates_sbert` | home | 4 | 4 | 0.2000 |" in card
    assert "| `candidates_openai_large` | home | 4 | 4 | 0.6000 |" in card
    export_release(tmp_path / "ds", tmp_path / "back")
    for folder, name in [("amazon_home", "valid.jsonl"), ("amazon_home", "train.jsonl"), ("all_beauty", "valid.jsonl")]:
        assert (tmp_path / "back" / folder / name).read_bytes() == (src / folder / name).read_bytes()


def abandoned_temporary(target: Path) -> Path:
    """The hidden temporary file a writer of ``target`` killed mid-write (kill -9) leaves beside it."""
    from reddit_amazon.files import sibling_prefix

    leftover = target.parent / (sibling_prefix(target, "tmp").replace(str(os.getpid()), "999999999") + "k1ll3d00")
    leftover.write_bytes(b'{"half": ')
    return leftover


def test_an_export_killed_mid_write_leaves_no_temporary_file_once_run_again(tmp_path):
    """What an export killed while writing a file left (its hidden temporary) is gone after the export is run again;
    only the release files remain."""
    import_release(write_release(tmp_path / "src", [release_line()]), tmp_path / "ds")
    export_release(tmp_path / "ds", tmp_path / "out")
    before = _tree(tmp_path / "out")
    abandoned_temporary(tmp_path / "out" / "amazon_home" / "valid.jsonl")
    abandoned_temporary(tmp_path / "out" / "item2meta_valid.jsonl")
    export_release(tmp_path / "ds", tmp_path / "out")
    assert _tree(tmp_path / "out") == before


def test_an_export_over_an_earlier_one_keeps_none_of_its_files_and_a_killed_one_is_no_release(tmp_path, monkeypatch):
    """An export wrote its files over an earlier export's, file by file: a home-only export over a beauty + home one
    kept the old beauty file, and an export killed after its first file left a folder of two exports' files, which
    import-lavic took as one release."""
    import reddit_amazon.lavic_release as lavic_release
    from reddit_amazon.schema import SchemaError

    both = write_release(tmp_path / "both", [release_line()])
    write_release(both, [release_line(gt_items=["B0776Y43L1"])], domain_folder="all_beauty")
    import_release(both, tmp_path / "ds-both")
    import_release(write_release(tmp_path / "home", [release_line()]), tmp_path / "ds-home")
    export_release(tmp_path / "ds-home", tmp_path / "home-alone")
    export_release(tmp_path / "ds-both", tmp_path / "out")
    assert (tmp_path / "out" / "all_beauty" / "valid.jsonl").is_file()
    export_release(tmp_path / "ds-home", tmp_path / "out")
    assert _tree(tmp_path / "out") == _tree(tmp_path / "home-alone")  # nothing of the beauty + home export is left

    export_release(tmp_path / "ds-both", tmp_path / "out")
    record = lavic_release.release_record

    def killed_at_home(conversation):
        if conversation.domain == "home":
            raise KeyboardInterrupt  # a kill once beauty is written
        return record(conversation)

    monkeypatch.setattr(lavic_release, "release_record", killed_at_home)
    with pytest.raises(KeyboardInterrupt):
        export_release(tmp_path / "ds-home", tmp_path / "out")
    with pytest.raises(SchemaError, match="did not finish"):
        import_release(tmp_path / "out", tmp_path / "reimported")
    monkeypatch.setattr(lavic_release, "release_record", record)
    export_release(tmp_path / "ds-home", tmp_path / "out")  # run again: one export's files, a release again
    assert _tree(tmp_path / "out") == _tree(tmp_path / "home-alone")
    import_release(tmp_path / "out", tmp_path / "reimported")


def test_a_second_export_into_a_folder_being_exported_is_refused_and_the_first_one_is_whole(tmp_path):
    """Two export-lavic into one --out at once took no lock: the second deleted the beauty file the first had written
    (not its own) and removed .export-unfinished, so the first then failed on the mark with a bare FileNotFoundError
    and left a folder of the second's files that import-lavic took as a finished release."""
    import subprocess
    import sys
    import time

    both = write_release(tmp_path / "both", [release_line()])
    write_release(both, [release_line(gt_items=["B0776Y43L1"])], domain_folder="all_beauty")
    import_release(both, tmp_path / "ds-both")
    import_release(write_release(tmp_path / "home", [release_line()]), tmp_path / "ds-home")
    export_release(tmp_path / "ds-both", tmp_path / "both-alone")
    out, started, go_on = tmp_path / "out", tmp_path / "started", tmp_path / "go-on"
    # The first export, held once it has written beauty (as a slow disk or a large domain would hold it).
    first = subprocess.Popen([sys.executable, "-c", f"""
import pathlib, time
import reddit_amazon.lavic_release as lavic_release
record = lavic_release.release_record
def held_at_home(conversation):
    if conversation.domain == "home":
        pathlib.Path({str(started)!r}).touch()
        while not pathlib.Path({str(go_on)!r}).exists():
            time.sleep(0.05)
    return record(conversation)
lavic_release.release_record = held_at_home
lavic_release.export_release({str(tmp_path / "ds-both")!r}, {str(out)!r})
"""], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not started.exists():
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.05)
        second = subprocess.run([sys.executable, "-m", "reddit_amazon.cli", "export-lavic", str(tmp_path / "ds-home"),
                                 "--out", str(out)], capture_output=True, text=True)
    finally:
        go_on.touch()
        outputs = first.communicate(timeout=60)
    assert first.returncode == 0, outputs
    lock = tmp_path / ".out.lock"
    assert second.returncode == 1 and "Traceback" not in second.stderr, second.stderr
    assert second.stderr.strip().splitlines()[-1] == (
        f"Error: FolderBusyError: another export-lavic is writing this folder (it holds {lock}); wait for it to end or "
        f"choose another folder: {out}")
    assert _tree(out) == _tree(tmp_path / "both-alone") and not lock.exists()
    import_release(out, tmp_path / "reimported")


def _hashed_embeddings(request):
    """An OpenAI-compatible /v1/embeddings answer: a hashed bag of words per input text."""
    import hashlib
    import re

    from werkzeug import Response

    body = json.loads(request.data)
    vectors = []
    for text in body["input"]:
        vector = [0.0] * 64
        for word in re.findall(r"[a-z]+", text.lower()):
            vector[int(hashlib.md5(word.encode()).hexdigest(), 16) % 64] += 1.0
        vectors.append(vector)
    return Response(json.dumps({"object": "list", "model": body["model"],
                                "data": [{"object": "embedding", "index": i, "embedding": v}
                                         for i, v in enumerate(vectors)],
                                "usage": {"prompt_tokens": 1, "total_tokens": 1}}), content_type="application/json")


def test_a_built_sample_exports_the_authors_item_files_and_imports_back(httpserver, tmp_path):
    """A build's export wrote every item to item2meta_valid.jsonl (the authors' held-out distillation set) and no
    item2meta_train.json, the file their crawler, distillation and prompt tuning read titles and images from."""
    import_extra("sentence_transformers")
    httpserver.expect_request("/v1/embeddings", method="POST").respond_with_handler(_hashed_embeddings)
    runner = CliRunner()
    built = runner.invoke(cli, ["build", "--out", str(tmp_path / "built"), "--workdir", str(tmp_path / "work"),
                                "--retrievers", "sbert,openai-emb", "--embedding-base-url", httpserver.url_for("/v1")],
                          env={"OPENAI_API_KEY": "sk-test"})
    assert built.exit_code == 0, built.output
    exported = runner.invoke(cli, ["export-lavic", str(tmp_path / "built"), "--out", str(tmp_path / "release")])
    assert exported.exit_code == 0, exported.output
    release = tmp_path / "release"
    items = {domain: {row["item_id"]: row for row in datasets.load_dataset(
        str(tmp_path / "built"), "items", split=domain).select_columns(
        ["item_id", "title", "image_urls", "image_description"])} for domain in FOLDERS}
    every_item = {asin: row for rows in items.values() for asin, row in rows.items()}

    train = json.loads((release / "item2meta_train.json").read_text(encoding="utf-8"))
    assert set(train) == set(every_item)
    for asin, entry in train.items():
        assert entry["title"] == every_item[asin]["title"]
        assert [image["large"] for image in entry["images"]] == every_item[asin]["image_urls"]
        description = every_item[asin]["image_description"]
        assert entry["image_descriptions_llava_cleaned"] == ({f"{asin}_0.jpg": description} if description else {})
    assert any(entry["images"] for entry in train.values())  # a build has no image descriptions (no stage makes them)

    gt_items = list(dict.fromkeys(asin for domain in FOLDERS for row in datasets.load_dataset(
        str(tmp_path / "built"), domain, split="validation") for asin in row["gt_items"]))
    valid = read_jsonl(release / "item2meta_valid.jsonl")
    assert gt_items and [row["image_name"] for row in valid] == [f"{asin}_0.jpg" for asin in gt_items]
    assert all(row["image"] == (every_item[row["image_name"][:10]]["image_urls"] or [""])[0] for row in valid)

    imported = runner.invoke(cli, ["import-lavic", str(release), "--out", str(tmp_path / "again")])
    assert imported.exit_code == 0, imported.output
    for domain, built_items in items.items():
        again = datasets.load_dataset(str(tmp_path / "again"), "items", split=domain).select_columns(
            ["item_id", "title", "image_urls", "image_description"]).to_list()
        assert again
        for row in again:
            assert row == built_items[row["item_id"]]


def test_item2meta_train_json_is_covered_by_the_export_marker_and_the_stale_file_cleanup(tmp_path, monkeypatch):
    """item2meta_train.json, which only an export of a build writes: an export of an import over it deletes it, a kill
    between it and item2meta_valid.jsonl leaves a folder import-lavic refuses, and its abandoned temporary goes."""
    import reddit_amazon.lavic_release as lavic_release

    described_dataset(tmp_path / "built")
    import_release(write_release(tmp_path / "src", [release_line()]), tmp_path / "imported")
    export_release(tmp_path / "imported", tmp_path / "imported-alone")
    export_release(tmp_path / "built", tmp_path / "built-alone")
    export_release(tmp_path / "built", tmp_path / "out")
    export_release(tmp_path / "imported", tmp_path / "out")
    assert _tree(tmp_path / "out") == _tree(tmp_path / "imported-alone")  # item2meta_train.json is gone

    def killed(*args):
        raise KeyboardInterrupt  # a kill once item2meta_train.json is written

    monkeypatch.setattr(lavic_release, "_write_item2meta_valid", killed)
    with pytest.raises(KeyboardInterrupt):
        export_release(tmp_path / "built", tmp_path / "out")
    assert (tmp_path / "out" / "item2meta_train.json").is_file()
    with pytest.raises(SchemaError, match="did not finish"):
        import_release(tmp_path / "out", tmp_path / "reimported")
    monkeypatch.undo()
    abandoned_temporary(tmp_path / "out" / "item2meta_train.json")
    export_release(tmp_path / "built", tmp_path / "out")
    assert _tree(tmp_path / "out") == _tree(tmp_path / "built-alone")
