"""Dataset card: statistics equal what `datasets.load_dataset` counts, valid Hub YAML, no placeholders."""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import datasets
import pytest
from click.testing import CliRunner
from datasets.info import DatasetInfosDict
from datasets.utils.metadata import MetadataConfigs
from huggingface_hub import DatasetCard, DatasetCardData
from PIL import Image

from reddit_amazon.cli import cli
from reddit_amazon.dataset_folder import DatasetContents, card_data, read_manifest, refresh_card, write_dataset
from reddit_amazon.schema import DOMAINS, ITEM_FEATURES, SPLITS, Conversation, Item, Turn, conversation_features

PLACEHOLDER = re.compile(r"\$\{?[A-Za-z_]\w*\}?|\{\{|\}\}|TODO|TBD|FIXME|More Information Needed|\bNone\b|\bnan\b")


def markdown_table_after(text: str, heading: str, first_header: str) -> list[dict[str, str]]:
    """Rows (as dicts) of the first table whose first header is ``first_header`` after ``heading``."""
    lines = text[text.index(heading):].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    headers = _cells(lines[start])
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(headers, _cells(line))))
    return rows


def _cells(line: str) -> list[str]:
    """A table line's cells; an escaped pipe (`\\|`) is part of its cell."""
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip().removeprefix("|").removesuffix("|"))]


def number(cell: str) -> int:
    return int(cell.replace(",", ""))


def loaded_statistics(folder: Path) -> dict[str, dict[str, int]]:
    """Table-1 numbers and split sizes counted independently through `datasets.load_dataset`."""
    stats = {}
    configs = datasets.get_dataset_config_names(str(folder))
    for domain in DOMAINS:
        splits = datasets.load_dataset(str(folder), domain) if domain in configs else {}
        entry = {split: len(splits[split]) if split in splits else 0 for split in SPLITS}
        entry["conversations"] = sum(entry[s] for s in SPLITS)
        entry["turns"] = sum(len(row["turns"]) for split in splits.values() for row in split)
        entry["pairs_test"] = sum(len(row["gt_items"]) for row in splits["test"]) if "test" in splits else 0
        items = datasets.load_dataset(str(folder), "items")
        if domain in items:
            catalog = items[domain].cast_column("image", datasets.Image(decode=False))
            entry["items"] = len(set(catalog["item_id"]))
            entry["images"] = sum(1 for image in catalog["image"] if image is not None and image["bytes"])
        else:
            entry["items"] = entry["images"] = 0
        stats[domain] = entry
    return stats


def assert_card_matches_loaded_dataset(card: str, folder: Path) -> None:
    expected = loaded_statistics(folder)
    table_1 = {row["Dataset"].lower(): row for row in markdown_table_after(card, "## Statistics", "Dataset")}
    splits = {row["Domain"]: row for row in markdown_table_after(card, "### Splits", "Domain")}
    pairs = {row["Domain"]: row for row in markdown_table_after(card, "Evaluation examples", "Domain")}
    for domain in DOMAINS:
        want = expected[domain]
        got = table_1[domain]
        assert (number(got["# Conv."]), number(got["# Turns"]), number(got["# Items"]), number(got["# Images"])) == (
            want["conversations"], want["turns"], want["items"], want["images"]), domain
        assert [number(splits[domain][s]) for s in SPLITS] == [want[s] for s in SPLITS], domain
        assert number(pairs[domain]["test"]) == want["pairs_test"], domain
    assert number(table_1["total"]["# Conv."]) == sum(expected[d]["conversations"] for d in DOMAINS)


def assert_valid_hub_yaml(readme: Path, candidate_sets: list[str]) -> None:
    card = DatasetCard.load(readme)
    as_dict = card.data.to_dict()
    assert DatasetCardData(**as_dict).to_dict() == as_dict  # round trip through the Hub's card data class
    assert as_dict["license"] == "other" and as_dict["license_name"]
    assert as_dict["language"] == ["en"] and as_dict["task_categories"]
    assert as_dict["size_categories"][0] in {"n<1K", "1K<n<10K", "10K<n<100K", "100K<n<1M", "1M<n<10M"}
    configs = MetadataConfigs.from_dataset_card_data(card.data)  # what `datasets` itself parses and checks
    assert configs.get_default_config_name() in configs
    infos = DatasetInfosDict.from_dataset_card_data(card.data)
    assert infos["items"].features == ITEM_FEATURES
    domain = next(d for d in DOMAINS if d in infos)
    assert infos[domain].features == conversation_features(candidate_sets)


def assert_no_placeholders(text: str) -> None:
    found = PLACEHOLDER.findall(text)
    assert not found, f"placeholder-like text in the card: {found[:5]}"


# ---------------------------------------------------------------------------------------------
# The bundled sample
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sample_copy(tmp_path_factory) -> Path:
    from reddit_amazon.sample import sample_dataset_path

    try:
        source = sample_dataset_path()
    except FileNotFoundError:
        pytest.skip("the bundled sample dataset is not built")
    folder = tmp_path_factory.mktemp("sample") / "reddit-amazon"
    shutil.copytree(source, folder)
    (folder / "README.md").unlink()
    result = CliRunner().invoke(cli, ["card", str(folder)])
    assert result.exit_code == 0, result.output
    return folder


def test_sample_card_statistics_equal_the_loaded_dataset(sample_copy):
    assert_card_matches_loaded_dataset((sample_copy / "README.md").read_text(encoding="utf-8"), sample_copy)


def test_sample_card_yaml_validates_and_has_no_placeholders(sample_copy):
    columns = datasets.load_dataset(str(sample_copy), "fashion", split="test").column_names
    assert_valid_hub_yaml(sample_copy / "README.md", [c[len("candidates_"):] for c in columns
                                                      if c.startswith("candidates_")])
    text = (sample_copy / "README.md").read_text(encoding="utf-8")
    assert_no_placeholders(text)
    manifest = read_manifest(sample_copy)
    assert manifest["fingerprint"] in text and manifest["build"]["command"] in text  # the sample is a real build
    for heading in ["## Load", "## Statistics", "## Fields", "## Build", "## Datasheet", "### Motivation",
                    "### Composition", "### Collection process", "### Preprocessing", "### Uses",
                    "### Distribution", "### Maintenance", "## Citation"]:
        assert f"\n{heading}" in text, heading


# ---------------------------------------------------------------------------------------------
# Folders we control: built, imported, edge cases
# ---------------------------------------------------------------------------------------------


def jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buffer, format="JPEG")
    return buffer.getvalue()


def conversation(example_id: str, domain: str, thread: str, gt: list[str], *, turns: int = 2, text: str = "hello",
                 author: str = "a1b2c3", sbert: list[str] | None = None) -> Conversation:
    context = [Turn("submission", f"need a {domain} thing {text}", author, 1_650_000_000, thread)]
    context += [Turn("comment", f"reply {i}", author if i % 2 else "", 1_650_000_100 + i, f"c{i}")
                for i in range(turns - 1)]
    return Conversation(example_id=example_id, domain=domain, thread_id=thread, subreddit="sub",
                        created_utc=1_650_000_500, turns=context, context_items=[],
                        gt_text=f"get {' '.join(gt)}", gt_items=gt, gt_comment_id=f"g{example_id}",
                        candidates={"sbert": sbert} if sbert is not None else {})


ASINS = [f"B0000000{i:02d}" for i in range(20)]


def controlled_contents(metadata: dict) -> DatasetContents:
    beauty = {
        "train": [
            conversation("r1", "beauty", "t1", [ASINS[0], ASINS[1]], turns=3, sbert=[ASINS[0], *ASINS[2:11]]),
            conversation("r2", "beauty", "t2", [ASINS[2]], turns=1, text="mail me at jo.doe@example.com",
                         sbert=ASINS[3:13]),
        ],
        "validation": [conversation("r3", "beauty", "t3", [ASINS[3]], text="ask u/someone_else or call 555-123-4567")],
        "test": [conversation("r4", "beauty", "t1", [ASINS[4], ASINS[5]], turns=4)],  # t1 also in train
    }
    fashion = {"test": [conversation("r5", "fashion", "t9", [ASINS[10]])]}
    items = {
        "beauty": [Item(a, "beauty", title=f"item {a}", image=jpeg() if i % 2 == 0 else None,
                        image_urls=[f"https://img.example/{a}.jpg"] * (i % 3), image_description="red" if i < 2 else "")
                   for i, a in enumerate(ASINS[:6])],
        "fashion": [Item(ASINS[10], "fashion", title="a dress", image=jpeg())],
    }
    return DatasetContents(conversations={"beauty": beauty, "fashion": fashion}, items=items, version="2.0.0",
                           candidate_sets=["sbert"], metadata=metadata)


BUILD = {
    "command": "reddit-amazon build --inputs dumps/ --meta meta/ --seed 7",
    "options": {"seed": 7, "domain_map": None, "llm_model": "gpt-3.5-turbo", "openai_api_key": "sk-live",
                "retrievers": ["sbert"], "reddit": {"salt": "pepper-secret-123", "workers": 2}},
    "inputs": [{"path": "dumps/RC_2023-01.zst", "bytes": 123456, "sha256": "ab" * 32},
               {"path": "meta/meta_All_Beauty.jsonl", "bytes": 789, "sha256": "cd" * 32}],
    "package_versions": {"datasets": "5.2.0", "reddit-amazon": "0.1.0"},
    "started_utc": "2026-11-26T01:00:00Z",
    "finished_utc": "2026-11-26T02:30:00Z",
    "seed": 7,
}
FUNNEL = [
    {"stage": "prefilter", "kept": 900, "dropped": {"no_amazon_link": 99100}},
    {"stage": "relevance", "kept": 40, "dropped": {"no": 800, "uncertain": 60}},
    {"stage": "assemble", "kept": 5, "dropped": {}},
]


#: What the build records for controlled_contents() (see the Table-1 test below).
STATS = {"beauty": {"conversations": 4, "turns": 10, "items": 6, "images": 3},
         "fashion": {"conversations": 1, "turns": 2, "items": 1, "images": 1}}


@pytest.fixture
def built(tmp_path) -> Path:
    folder = tmp_path / "built"
    write_dataset(folder, controlled_contents({"build": BUILD, "funnel": FUNNEL, "stats": STATS}))
    return folder


def test_controlled_card_counts_turns_pairs_images_and_shared_threads(built):
    card = (built / "README.md").read_text(encoding="utf-8")
    assert_card_matches_loaded_dataset(card, built)
    beauty = {row["Dataset"]: row for row in markdown_table_after(card, "## Statistics", "Dataset")}["Beauty"]
    # turns (context turns, as the paper counts them): 3 + 1 + 2 + 4; images: ASINs 0, 2, 4; URLs: 0+1+2+0+1+2
    assert [beauty[k] for k in ["# Conv.", "# Turns", "# Items", "# Images", "# Image URLs"]] == [
        "4", "10", "6", "3", "6"]
    assert "1 thread ids appear in more than one split (beauty 1)" in card
    coverage = {(row["column"], row["domain"]): row for row in
                markdown_table_after(card, "### Candidate sets", "column")}
    # r1: 1 of 2 gt in candidates; r2: 0 of 1 -> 1/3 over the 2 records that have candidates
    assert coverage[("`candidates_sbert`", "beauty")]["gt in candidates"] == "0.3333"
    assert coverage[("`candidates_sbert`", "beauty")]["records with candidates"] == "2"
    assert "2 of 7 items have an `image_description`" in card


def test_recorded_statistics_are_checked_against_the_shards(built, tmp_path):
    assert "These equal the statistics the build recorded in `manifest.json`." in (built / "README.md").read_text()
    wrong = {**STATS, "fashion": {**STATS["fashion"], "turns": 4}}
    folder = tmp_path / "wrong"
    write_dataset(folder, controlled_contents({"stats": wrong}))
    card = (folder / "README.md").read_text(encoding="utf-8")
    assert "**The statistics in `manifest.json` differ from the shards** (fashion turns: manifest 4, shards 2)" in card


def test_build_record_funnel_and_checksums_are_rendered(built):
    card = (built / "README.md").read_text(encoding="utf-8")
    assert BUILD["command"] in card
    for entry in BUILD["inputs"]:
        assert entry["sha256"] in card and entry["path"] in card
    funnel = markdown_table_after(card, "### Funnel", "stage")
    assert [(r["stage"], r["kept"], r["dropped"]) for r in funnel] == [
        ("prefilter", "900", "99,100"), ("relevance", "40", "860"), ("assemble", "5", "0")]
    assert funnel[1]["dropped by reason"] == "no: 800, uncertain: 60"
    assert "`datasets` | 5.2.0" not in card and "| datasets | 5.2.0 |" in card
    assert_no_placeholders(card)
    assert_valid_hub_yaml(built / "README.md", ["sbert"])


def test_the_catalog_joins_linked_asin_drops_are_rendered(tmp_path):
    """The funnel counts records: a record that keeps one gt item stays, so the ASINs dropped from it (unknown,
    outside the domains) are only in `build_reports.catalog`, which the datasheet points to in the Build section."""
    catalog_report = {"gt_links": {"resolved": 355, "asin_not_in_reviews_or_metadata": 20,
                                   "main_category_outside_domains": 9, "other_domain": 0, "a_new_reason": 2},
                      "context_links": {"resolved": 31, "parent_asin_without_metadata": 4}}
    folder = tmp_path / "with-report"
    write_dataset(folder, controlled_contents({"build": BUILD, "funnel": FUNNEL,
                                               "build_reports": {"catalog": catalog_report}}))
    card = (folder / "README.md").read_text(encoding="utf-8")
    rows = markdown_table_after(card, "### Linked ASINs", "outcome")
    assert [(r["outcome"], r["gt ASINs"], r["context ASINs"]) for r in rows] == [
        ("`resolved`", "355", "31"), ("`asin_not_in_reviews_or_metadata`", "20", "0"),
        ("`parent_asin_without_metadata`", "0", "4"), ("`main_category_outside_domains`", "9", "0"),
        ("`other_domain`", "0", "0"), ("`a_new_reason`", "2", "0")]
    assert rows[1]["meaning"].startswith("dropped:") and rows[-1]["meaning"] == "—"
    assert card.index("### Funnel") < card.index("### Linked ASINs") < card.index("## Version and fingerprint")
    assert_no_placeholders(card)

    without = (tmp_path / "no-report")
    write_dataset(without, controlled_contents({"build": BUILD, "funnel": FUNNEL}))
    assert "The build recorded no per-ASIN outcome of the catalog join" in (without / "README.md").read_text()
    imported = tmp_path / "imported"
    write_dataset(imported, controlled_contents({"source": "LaViC authors' release", "text_repair": False}))
    text = (imported / "README.md").read_text(encoding="utf-8")
    assert "Linked ASINs" not in text and "catalog join" not in text  # an import has no such report


def test_the_sample_card_shows_the_gt_links_its_build_dropped(sample_copy):
    report = read_manifest(sample_copy)["build_reports"]["catalog"]
    rows = {r["outcome"].strip("`"): r for r in
            markdown_table_after((sample_copy / "README.md").read_text(encoding="utf-8"), "### Linked ASINs", "outcome")}
    assert {outcome: number(row["gt ASINs"]) for outcome, row in rows.items()} == {
        outcome: report["gt_links"].get(outcome, 0) for outcome in rows}
    assert (number(rows["asin_not_in_reviews_or_metadata"]["gt ASINs"]),
            number(rows["main_category_outside_domains"]["gt ASINs"])) == (20, 9)


def test_secrets_in_build_options_never_reach_the_card(built):
    card = (built / "README.md").read_text(encoding="utf-8")
    assert "pepper-secret-123" not in card and "sk-live" not in card
    assert "| `reddit.salt` | (not shown) |" in card and "| `openai_api_key` | (not shown) |" in card
    assert "| `domain_map` | not set |" in card
    assert "| `reddit.workers` | `2` |" in card and '| `retrievers` | `["sbert"]` |' in card
    assert "`manifest.json` records the salt" in card  # the datasheet warns: the manifest itself is published


def test_build_options_named_like_any_secret_are_withheld_and_benign_ones_shown(tmp_path):
    """The card withheld options whose names held salt, key, token, secret or password, anywhere: ``hf_auth``,
    ``passphrase``, ``proxy_pwd`` or ``credentials`` were printed, and ``llm_max_tokens`` or ``keywords`` hidden.
    It shares the redaction's vocabulary now, with the salt added."""
    options = {**BUILD["options"], "hf_auth": "AUTH-SECRET-1", "passphrase": "PHRASE-SECRET-2",
               "proxy_pwd": "PWD-SECRET-3", "credentials": "CRED-SECRET-4", "llm_max_tokens": 512,
               "keywords": ["lamp"]}
    folder = tmp_path / "options"
    write_dataset(folder, controlled_contents({"build": {**BUILD, "options": options}}))
    result = CliRunner().invoke(cli, ["card", str(folder)])
    card = (folder / "README.md").read_text(encoding="utf-8")
    assert result.exit_code == 0, result.output
    assert "SECRET" not in card
    for name in ("hf_auth", "passphrase", "proxy_pwd", "credentials", "reddit.salt", "openai_api_key"):
        assert f"| `{name}` | (not shown) |" in card, name
    assert "| `llm_max_tokens` | `512` |" in card and '| `keywords` | `["lamp"]` |' in card


def test_a_redacted_salt_is_not_reported_as_recorded(tmp_path):
    build = {**BUILD, "options": {"reddit": {"salt": "<redacted>"}, "no_filter": True, "images": False}}
    folder = tmp_path / "redacted"
    write_dataset(folder, controlled_contents({"build": build}))
    card = (folder / "README.md").read_text(encoding="utf-8")
    assert "| `reddit.salt` | (not recorded) |" in card
    assert "The salt is not recorded in this copy" in card
    assert "relevance filter was skipped (`no_filter`)" in card and "Images were not downloaded" in card
    assert "No build funnel exists for this dataset: the build recorded none." in card


def test_datasheet_measures_personal_data_patterns_and_authors(built):
    card = (built / "README.md").read_text(encoding="utf-8")
    # texts = context turns (3+1+2+4+2 = 12) + recommending comments (5)
    assert "1 of 17 texts mention a Reddit username (`u/…`), 1 contain an e-mail-address-like string and 1 a " \
           "phone-number-like string" in card
    # authored turns: submissions (5) + odd-numbered replies (r1: 1, r4: 1) = 7 of 12
    assert "(7 of 12 context turns, 1 distinct pseudonyms)" in card
    assert "date from 2022-04-15 to 2022-04-15 (UTC)" in card
    assert "embeds the main image of 4 of 7 items" in card
    assert "The 3 items without an embedded image give the reason in `image_error`." in card
    # beauty's items 0 and 3 and the fashion item list no image URL: the card said "every item keeps its URLs"
    assert "every item keeps its URLs" not in card
    assert "items keep the URLs their metadata lists (`image_urls`, 6 URLs; 3 items list none)." in card


def test_imported_dataset_says_no_funnel_exists(tmp_path):
    folder = tmp_path / "imported"
    source = "LaViC authors' release (data/), imported with `reddit-amazon import-lavic`"
    write_dataset(folder, controlled_contents({"source": source, "text_repair": False}))
    card = (folder / "README.md").read_text(encoding="utf-8")
    assert f"This dataset comes from {source}, not from `reddit-amazon build`" in card
    assert "No build funnel exists for this dataset: it was not built from dumps." in card
    assert "importer's text repair was off" in card
    assert "--out runs/sbert --split" in card or "--out runs/sbert`" in card
    assert "Splits are made per domain by thread" not in card and re.search(r"This copy has the [a-z, ]+ splits? of its source", card)
    assert_no_placeholders(card)


def test_dataset_without_authors_images_or_times_says_so(tmp_path):
    record = Conversation("x1", "home", "", "sub", None, [Turn("submission", "need a lamp", "")], [], "B000000001",
                          ["B000000001"])
    folder = tmp_path / "bare"
    catalog = {"home": [Item("B000000001", "home")]}
    write_dataset(folder, DatasetContents({"home": {"test": [record]}}, catalog, "0.0.1"))
    card = (folder / "README.md").read_text(encoding="utf-8")
    assert "No turn carries an author" in card
    assert "their time span is not known" in card
    assert "this copy has no images: none of its 1 items embeds one or has an image URL" in card
    assert "No candidate set was computed for this copy" in card  # no candidates: nothing to score with
    assert "This copy has the test split of its source, as given there" in card
    assert "thread separation between splits cannot be checked" in card
    assert "manifest has no build record, so no build command or input checksums exist" in card
    assert_no_placeholders(card)
    assert_card_matches_loaded_dataset(card, folder)


def test_a_card_killed_mid_write_leaves_no_temporary_file_once_run_again(built):
    """``reddit-amazon card`` killed while writing README.md leaves its hidden temporary in the dataset folder;
    running it again removes it, so only the folder's own files remain."""
    from tests.test_lavic_release import abandoned_temporary

    files = sorted(path for path in built.rglob("*") if path.is_file())
    abandoned_temporary(built / "README.md")
    result = CliRunner().invoke(cli, ["card", str(built)])
    assert result.exit_code == 0, result.output
    assert sorted(path for path in built.rglob("*") if path.is_file()) == files


def test_refresh_card_rerenders_after_a_manifest_edit(built):
    manifest = json.loads((built / "manifest.json").read_text())
    manifest["funnel"][0]["kept"] = 901
    (built / "manifest.json").write_text(json.dumps(manifest))
    refresh_card(built)
    rows = markdown_table_after((built / "README.md").read_text(encoding="utf-8"), "### Funnel", "stage")
    assert rows[0]["kept"] == "901"


def test_card_command_refuses_a_folder_whose_shards_disagree_with_its_manifest(built):
    """Its YAML would declare splits and sizes the files do not have, which `datasets` refuses to load."""
    card, original = (built / "README.md").read_text(encoding="utf-8"), (built / "manifest.json").read_text()
    manifest = json.loads(original)
    manifest["counts"]["beauty"]["train"] = 999
    (built / "manifest.json").write_text(json.dumps(manifest))
    result = CliRunner().invoke(cli, ["card", str(built)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "does not match its manifest" in result.output and "beauty/train" in result.output

    (built / "manifest.json").write_text(original)
    next((built / "data" / "beauty").glob("validation-*.parquet")).unlink()
    result = CliRunner().invoke(cli, ["card", str(built)])
    assert result.exit_code == 1 and "fingerprint" in result.output
    assert (built / "README.md").read_text(encoding="utf-8") == card


def test_candidate_coverage_gives_recall_and_the_highest_reachable_hr1(tmp_path):
    """Two gt items among one record's candidates count twice in recall but once in max HR@1: the record
    is run once and gives one answer."""
    records = [conversation("r1", "home", "t1", [ASINS[0], ASINS[1]], sbert=ASINS[0:10]),
               conversation("r2", "home", "t2", [ASINS[2]], sbert=ASINS[1:11]),
               conversation("r3", "home", "t3", [ASINS[15]], sbert=ASINS[1:11])]
    items = {"home": [Item(a, "home", title=a) for a in ASINS]}
    write_dataset(tmp_path / "f", DatasetContents({"home": {"train": records}}, items, "1.0.0"))
    card = (tmp_path / "f" / "README.md").read_text(encoding="utf-8")
    row = {r["domain"]: r for r in markdown_table_after(card, "### Candidate sets", "column")}["home"]
    assert (row["gt in candidates"], row["max HR@1"]) == ("0.7500", "0.5000")


def test_a_repeated_gt_asin_is_two_pairs_both_hit_by_one_answer_and_the_card_says_so(tmp_path):
    """The authors' release lists some gt ASINs twice (49 records): the harness scores them as two pairs, both
    hit by one answer, so max HR@1 counts both; the card's wording must not say a record can hit only one."""
    from benchmark.metrics import score

    repeated = conversation("r1", "home", "t1", [ASINS[0], ASINS[0]], sbert=ASINS[0:10])
    other = conversation("r2", "home", "t2", [ASINS[15]], sbert=ASINS[0:10])
    items = {"home": [Item(a, "home", title=a) for a in ASINS]}
    write_dataset(tmp_path / "f", DatasetContents({"home": {"train": [repeated, other]}}, items, "1.0.0"))
    card = (tmp_path / "f" / "README.md").read_text(encoding="utf-8")
    row = {r["domain"]: r for r in markdown_table_after(card, "### Candidate sets", "column")}["home"]
    outcomes = [score(ASINS[0], repeated.gt_items, ASINS[0:10]), score(ASINS[0], other.gt_items, ASINS[0:10])]
    best_hr1 = sum(o.hits for o in outcomes) / sum(o.pairs for o in outcomes)
    assert (row["gt in candidates"], row["max HR@1"]) == ("0.6667", f"{best_hr1:.4f}") == ("0.6667", "0.6667")
    assert "can hit only one." not in card
    assert "several distinct gt items among its candidates it can hit only one, while a gt ASIN the record lists " \
           "twice is two pairs, both hit, as `benchmark run` counts them" in card


def test_card_command_refuses_a_folder_without_manifest(tmp_path):
    result = CliRunner().invoke(cli, ["card", str(tmp_path)])
    assert result.exit_code != 0 and "no manifest.json" in result.output
    help_text = CliRunner().invoke(cli, ["card", "--help"]).output
    assert "Examples:" in help_text and "reddit-amazon card" in help_text


def test_the_fields_table_of_an_import_says_what_the_import_holds(tmp_path):
    """The release has no Reddit ids, authors, subreddits or times: an imported copy's card must not call its
    thread_id a Reddit submission id or its authors salted hashes. What it says instead is checked on the rows."""
    import hashlib

    from reddit_amazon.lavic_release import import_release
    from tests.test_lavic_release import release_line, write_release

    src = write_release(tmp_path / "src", [release_line(), release_line(gt_items=["B0776Y43K3"])])
    folder = tmp_path / "imported"
    import_release(src, folder)
    card = (folder / "README.md").read_text(encoding="utf-8")
    fields = {row["field"].strip("`"): row["meaning"] for row in markdown_table_after(card, "## Fields", "field")}
    item_fields = {row["field"].strip("`"): row["meaning"]
                   for row in markdown_table_after(card, "`items` config:", "field")}
    assert "Reddit submission id" not in fields["thread_id"] and "salted hash" not in fields["turns"]
    assert fields["thread_id"].startswith("`lavic-` and 16 hex digits of the sha1 of the submission text")
    assert "`id` and `author` are empty and `created_utc` null" in fields["turns"]
    assert fields["example_id"].startswith("`lavic-<domain>-<split>-<line>`")
    assert fields["subreddit"].startswith("empty") and fields["gt_comment_id"].startswith("empty")
    assert fields["created_utc"].startswith("null")
    assert item_fields["store"].startswith("empty") and item_fields["image"].startswith("null")
    for index, row in enumerate(datasets.load_dataset(str(folder), "home", split="validation"), start=1):
        assert row["example_id"] == f"lavic-home-validation-{index:06d}"
        assert row["thread_id"] == "lavic-" + hashlib.sha1(row["turns"][0]["text"].encode()).hexdigest()[:16]
        assert (row["subreddit"], row["created_utc"], row["gt_comment_id"]) == ("", None, "")
        assert all((t["id"], t["author"], t["created_utc"]) == ("", "", None) for t in row["turns"])
    items = datasets.load_dataset(str(folder), "items", split="home")
    assert all(item["store"] == "" and item["details"] == "" and item["image"] is None for item in items)

    built = tmp_path / "built"  # a build's card keeps the build's meanings
    write_dataset(built, controlled_contents({"build": BUILD}))
    built_fields = {row["field"].strip("`"): row["meaning"]
                    for row in markdown_table_after((built / "README.md").read_text(), "## Fields", "field")}
    assert built_fields["thread_id"].startswith("Reddit submission id") and "salted hash" in built_fields["turns"]


def test_card_of_the_imported_authors_release_matches_the_loaded_dataset(lavic_release, tmp_path):
    from reddit_amazon.lavic_release import import_release

    folder = tmp_path / "release"
    import_release(lavic_release, folder)
    card = (folder / "README.md").read_text(encoding="utf-8")
    assert_card_matches_loaded_dataset(card, folder)
    assert "No turn carries an author" in card and "No build funnel exists" in card
    assert "found mojibake (UTF-8 read as Latin-1, e.g. `donâ\\x80\\x99t`) in 279 records, kept as in the source" in card
    assert re.search(r"and 1[\d,]+ items \(0 with Amazon metadata, 0 with an embedded image\)", card)
    assert_no_placeholders(card)


@pytest.mark.parametrize(("pattern", "matching", "not_matching"), [
    ("USERNAME_MENTION", ["thanks u/some_user!", "ask /u/Name-123", "u/abc"], ["menu/item", "see r/fashion", "u/ab"]),
    ("EMAIL_ADDRESS", ["write to jo.doe+x@mail.example.org", "a@b.co"], ["@someone on twitter", "x@y"]),
    ("PHONE_NUMBER", ["call (555) 123-4567", "+1 555.123.4567 now", "555-123-4567"],
     ["ISBN 0316769177", "B0ABC12345", "order 123-4567", "sizes 555-123-45678"]),
])
def test_personal_data_patterns(pattern, matching, not_matching):
    import pyarrow as pa
    import pyarrow.compute as pc

    from cards import datasheet

    regex = getattr(datasheet, pattern)
    assert pc.match_substring_regex(pa.array(matching), regex).to_pylist() == [True] * len(matching)
    assert pc.match_substring_regex(pa.array(not_matching), regex).to_pylist() == [False] * len(not_matching)


def test_the_sample_card_says_the_sample_is_synthetic(sample_copy):
    """The bundled sample is generated (invented users, drawn images, pre-recorded LLM answers): its card must
    not present it as Reddit and Amazon data filtered by gpt-3.5-turbo with downloaded images."""
    text = (sample_copy / "README.md").read_text(encoding="utf-8")
    summary = text[text.index("# Reddit-Amazon"):text.index("## Load")]
    assert "synthetic sample, not Reddit or Amazon data" in summary
    collection = text[text.index("### Collection process"):text.index("### Preprocessing")]
    assert "synthetic sample" in collection and "0 LLM calls and 0 image downloads" in collection
    assert "Main images were downloaded" not in collection and "An LLM (`gpt-3.5-turbo`)" not in collection
    assert "a pseudonym cannot be recomputed from a username" not in text  # the sample's salt is public


@pytest.mark.parametrize("computed", [["bm25"], []])
def test_the_cards_scoring_command_runs_on_a_copy_without_sbert_candidates(computed, tmp_path, monkeypatch):
    """A build with `--retrievers bm25` (or none) has no sbert candidates: the card must not print a
    `benchmark run` command that fails with "candidate set 'sbert' was not computed"."""
    import shlex

    from benchmark.cli import cli as benchmark_cli

    record = conversation("r1", "home", "t1", [ASINS[0]])
    if computed:
        record.candidates = {"bm25": ASINS[:10]}
    catalog = {"home": [Item(a, "home", title=f"lamp {a}") for a in ASINS[:10]]}
    folder = tmp_path / "reddit-amazon"
    write_dataset(folder, DatasetContents({"home": {"test": [record]}}, catalog, "0.0.1", candidate_sets=computed))
    card = (folder / "README.md").read_text(encoding="utf-8")
    shown = re.search(r"Score a recommender with `([^`]+)`", card)
    if not computed:
        assert shown is None and "No candidate set was computed for this copy" in card
        return
    args = shlex.split(shown.group(1))
    assert args[:2] == ["benchmark", "run"] and "--candidates" in args
    monkeypatch.chdir(tmp_path)
    args[args.index("--model") + 1] = "random"  # same dataset, split and candidate set; no model download
    result = CliRunner().invoke(benchmark_cli, args[1:])
    assert result.exit_code == 0, result.output


def test_the_summary_does_not_claim_metadata_or_images_a_copy_lacks(tmp_path):
    """The authors' release carries ASINs only (no item metadata, no images): the card's first paragraph
    must not say the conversations are aligned with Amazon metadata and images."""
    record = conversation("r1", "home", "t1", [ASINS[0]], sbert=ASINS[:10])
    catalog = {"home": [Item(a, "home") for a in ASINS[:10]] + [Item(ASINS[10], "home", title="a lamp")]}
    folder = tmp_path / "reddit-amazon"
    write_dataset(folder, DatasetContents({"home": {"test": [record]}}, catalog, "0.0.1", candidate_sets=["sbert"]))
    card = (folder / "README.md").read_text(encoding="utf-8")
    summary = card[card.index("# Reddit-Amazon"):card.index("## Load")]
    assert "aligned with the products' Amazon Reviews 2023 metadata and images" not in summary
    assert "11 products" in summary and "1 of them with Amazon Reviews 2023 metadata (a title) and 0 with an embedded image" in summary


def test_a_redacted_secret_in_the_build_command_is_explained():
    from cards.dataset_card import _build

    manifest = {"build": {"command": "reddit-amazon build --inputs d --salt '<redacted>'", "seed": 0}}
    assert "`<redacted>` stands for a secret" in _build(manifest)
    assert "stands for a secret" not in _build({"build": {"command": "reddit-amazon build --inputs d", "seed": 0}})


def test_a_hostile_source_name_is_shown_as_text(tmp_path):
    folder = tmp_path / "imported"
    write_dataset(folder, controlled_contents({"source": "release (<img src=x onerror=alert(1)>/)", "text_repair": False}))
    card = (folder / "README.md").read_text(encoding="utf-8")
    assert "<img" not in card and card.count("&lt;img src=x onerror=alert(1)&gt;") >= 3


def test_hostile_manifest_values_are_shown_as_text_on_their_own_line(built):
    """A folder from the Hub, or a hand-edited manifest, may hold HTML and line breaks anywhere: in its name (the
    card's heading), version, build times, funnel stages and package versions none may start a block or a tag."""
    tag = "<img src=x onerror=alert(1)>"
    _card_with_manifest_values(built, tag, name=f"x)\n\n{tag}\n\n## Injected", version="2.0.0")
    card = (built / "README.md").read_text(encoding="utf-8")
    assert "<img" not in card and "\n## Injected" not in card
    assert "# Reddit-Amazon (x)  &lt;img src=x onerror=alert(1)&gt;  ## Injected 2.0.0)" in card
    assert markdown_table_after(card, "### Funnel", "stage")[0]["stage"] == "&lt;img src=x onerror=alert(1)&gt;"


#: Outside text holding every kind of inline Markdown: a link, an image, emphasis, a backtick that would open a code
#: span, a strikethrough, an autolink (CommonMark's, and GitHub's bare URL, www. and e-mail ones), a backslash escape.
HOSTILE_MARKDOWN = ("[click](http://evil.example) ![x](http://tracker.example/p.gif) *bold* __strong__ _em_ a ` lone "
                    "backtick ~~gone~~ <http://auto.example> https://bare.example www.auto.example me@auto.example \\*")


def markdown_structure(markdown: str) -> list[str]:
    """What ``markdown`` renders to, text left out: blocks, links, images, emphasis, code spans, inline HTML."""
    from markdown_it import MarkdownIt

    kinds = []
    for token in MarkdownIt("commonmark").enable(["table", "strikethrough"]).parse(markdown):
        kinds.append(token.type)
        kinds += [child.type for child in token.children or [] if child.type not in ("text", "text_special")]
    return kinds


def rendered_headings(markdown: str) -> list[str]:
    """The text of each heading of ``markdown`` as a reader sees it."""
    from markdown_it import MarkdownIt

    tokens = MarkdownIt("commonmark").enable(["table", "strikethrough"]).parse(markdown)
    return ["".join(child.content for child in inline.children) for opening, inline in zip(tokens, tokens[1:])
            if opening.type == "heading_open"]


def assert_shown_as_text(hostile: str, benign: str) -> None:
    """``hostile`` renders as ``benign`` does (no link, image, emphasis or code more), and no text of it holds a
    URL or e-mail address as written: GitHub's renderer links those too (its autolinks; an escaped character
    splits the text, as markdown-it's text_special tokens show)."""
    from markdown_it import MarkdownIt

    hostile, benign = (card.split("\n---\n", 1)[1] if card.startswith("---\n") else card  # not the YAML header
                       for card in (hostile, benign))
    assert markdown_structure(hostile) == markdown_structure(benign)
    html = MarkdownIt("commonmark").enable(["table", "strikethrough"]).render(hostile)
    assert "evil.example" in html and 'href="http://evil' not in html and "<img" not in html
    unjoined = MarkdownIt("commonmark").enable(["table", "strikethrough"]).disable("text_join").parse(hostile)
    texts = [child.content for token in unjoined for child in token.children or [] if child.type == "text"]
    assert [text for text in texts if "example" in text and re.search(r"://|www\.|@", text, re.IGNORECASE)] == []


@pytest.mark.parametrize("text, shown", [
    ("`reddit-amazon import-lavic` then `reddit-amazon build`", "`reddit-amazon import-lavic` then `reddit-amazon build`"),
    ("``[a](http://evil.example)`", "\\`\\`\\[a\\](http\\://evil.example)\\`"),  # `` is closed by `` only
])
def test_prose_keeps_each_code_span_and_escapes_backticks_that_open_none(text, shown):
    from markdown_it import MarkdownIt

    from cards.markdown import prose

    assert prose(text) == shown
    assert "<a " not in MarkdownIt("commonmark").render(prose(text))


def test_hostile_markdown_in_manifest_values_is_shown_as_text(built, tmp_path):
    """The name and version (the card's heading), build times, funnel stages, drop reasons and package versions
    of a manifest show Markdown as the text it is: a hostile copy's card links, embeds and emphasises nothing."""
    benign = tmp_path / "benign"
    shutil.copytree(built, benign)
    manifest = _card_with_manifest_values(built, HOSTILE_MARKDOWN)
    _card_with_manifest_values(benign, "plain")
    card = (built / "README.md").read_text(encoding="utf-8")
    assert_shown_as_text(card, (benign / "README.md").read_text(encoding="utf-8"))
    assert rendered_headings(card)[0] == f"Reddit-Amazon ({HOSTILE_MARKDOWN} {manifest['version']})"
    assert markdown_table_after(card, "### Funnel", "stage")[0]["stage"].count("\\[") == 2
    datasheet = card.split("## Datasheet", 1)[1]
    assert "\\[click\\]" in datasheet  # started / finished and the stages in sentences (the version is code)


def _card_with_manifest_values(folder, value: str, *, name: str | None = None, version: str | None = None) -> dict:
    """The folder's card rendered again from a manifest whose name, version, build times, package versions and
    funnel stages all read ``value`` (the name and version unless given); the manifest returned."""
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["name"], manifest["version"] = name or value, version or value
    manifest["build"]["started_utc"] = manifest["build"]["finished_utc"] = value
    manifest["build"]["package_versions"] = {value: value}
    manifest["funnel"][0]["stage"] = value
    manifest["funnel"][1]["dropped"] = {value: 1}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    refresh_card(folder)
    return manifest


def test_the_items_table_says_what_an_items_domain_is(built):
    """The items table gave an item's `domain` the conversations' meaning ("a conversation takes the domain of the
    item it recommends"): an item's domain is where its `main_category` maps."""
    card = (built / "README.md").read_text(encoding="utf-8")
    conversation = {row["field"].strip("`"): row["meaning"] for row in markdown_table_after(card, "## Fields", "field")}
    item = {row["field"].strip("`"): row["meaning"] for row in markdown_table_after(card, "`items` config:", "field")}
    assert "a conversation takes the domain" in conversation["domain"]
    assert "a conversation" not in item["domain"] and "`main_category`" in item["domain"]


def test_a_sample_built_without_filter_or_images_says_so(tmp_path):
    """The sample's datasheet once said "an unrecorded number of LLM calls / image downloads" and "Images were
    decoded with Pillow" for a build with --no-filter --no-images, whose manifest records both stages skipped."""
    build = {**BUILD, "options": {"sample": True, "no_filter": True, "images": False,
                                  "reddit": {"salt": "<redacted>"}}}
    reports = {"relevance": {"skipped": True}, "images": {"skipped": True}}
    folder = tmp_path / "sample-nf"
    write_dataset(folder, controlled_contents({"build": build, "build_reports": reports}))
    card = (folder / "README.md").read_text(encoding="utf-8")
    assert "unrecorded number" not in card and "decoded with Pillow" not in card
    assert "with no LLM calls (the relevance filter was skipped: `no_filter`) and no image downloads" in card
    assert_no_placeholders(card)


def test_a_sample_card_counts_the_http_requests_a_build_retried(tmp_path):
    build = {**BUILD, "options": {"sample": True, "images": False, "reddit": {"salt": "<redacted>"}}}
    for requests, expected in ((7, "with 5 LLM calls (7 HTTP requests, retries included) and no image downloads"),
                               (5, "with 5 LLM calls and no image downloads")):
        reports = {"relevance": {"calls_made": 5, "http_requests_sent": requests}, "images": {"skipped": True}}
        folder = tmp_path / f"sample-{requests}"
        write_dataset(folder, controlled_contents({"build": build, "build_reports": reports}))
        assert expected in (folder / "README.md").read_text(encoding="utf-8")


def test_the_summary_names_only_the_domains_the_copy_has(tmp_path):
    """A build with --domain-map 'All Beauty=beauty;AMAZON FASHION=fashion' has no home records and no home config,
    yet its card once opened with "in three visually oriented domains (beauty, fashion, home)"."""
    folder = tmp_path / "two-domains"
    write_dataset(folder, controlled_contents({"build": BUILD}))  # beauty and fashion records only
    card = (folder / "README.md").read_text(encoding="utf-8")
    assert "in three visually oriented domains" not in card
    assert "in 2 of the paper's three visually oriented domains (beauty, fashion; this copy has no home records)" \
        in card


def test_the_cards_loading_example_loads_this_folder_whatever_its_name(tmp_path, monkeypatch):
    """`import-lavic --out my-import` (or `build --out NAME`): the card's `load_dataset(...)` and `benchmark run`
    examples name this folder, not the manifest's default name, which from the parent loads another folder
    (here a decoy named reddit-amazon) or nothing."""
    import shlex

    from benchmark.cli import cli as benchmark_cli

    catalog = {"home": [Item(a, "home", title=f"lamp {a}") for a in ASINS[:10]]}

    def record(example_id):
        made = conversation(example_id, "home", example_id, [ASINS[0]])
        made.candidates = {"sbert": ASINS[:10]}
        return made

    write_dataset(tmp_path / "reddit-amazon", DatasetContents({"home": {"test": [record("decoy")]}}, catalog,
                                                              "0.0.1", candidate_sets=["sbert"]))
    folder = tmp_path / "my-import"
    write_dataset(folder, DatasetContents({"home": {"test": [record("r1"), record("r2")]}}, catalog, "0.0.1",
                                          candidate_sets=["sbert"]))
    for card in [(folder / "README.md").read_text(encoding="utf-8"),
                 (refresh_card(folder), (folder / "README.md").read_text(encoding="utf-8"))[1]]:
        name = json.loads(re.search(r'home = load_dataset\(("[^"]*"), "home"\)', card).group(1))
        monkeypatch.chdir(tmp_path)
        assert datasets.load_dataset(name, "home", split="test")["example_id"] == ["r1", "r2"]
        args = shlex.split(re.search(r"Score a recommender with `([^`]+)`", card).group(1))
        assert args[args.index("--dataset") + 1] == "my-import"
        args[args.index("--model") + 1] = "random"
        shutil.rmtree(tmp_path / "runs", ignore_errors=True)
        result = CliRunner().invoke(benchmark_cli, args[1:])
        assert result.exit_code == 0, result.output
        assert json.loads((tmp_path / "runs" / "sbert" / "results.json").read_text())["metrics"]["vr"]["all"][
            "denominator"] == 2


def test_the_card_does_not_claim_split_sizes_or_image_urls_it_does_not_have(built):
    """Splits go by whole threads, so a domain's counts need not be the nearest to 8:1:1 (here beauty is 2/1/1,
    the nearest being 3/1/0), and the paper never says it split by thread; # Image URLs counts the URLs of every
    item, not only of those with an embedded image (beauty: 3 embedded images, 6 URLs)."""
    card = (built / "README.md").read_text(encoding="utf-8")
    assert "nearest those shares" not in card and "as the paper does" not in card
    assert "as near those shares as whole threads allow" in card
    table_1 = {row["Dataset"]: row for row in markdown_table_after(card, "## Statistics", "Dataset")}
    assert (number(table_1["Beauty"]["# Images"]), number(table_1["Beauty"]["# Image URLs"])) == (3, 6)
    assert "all image URLs of those items" not in card and "all image URLs of the domain's items" in card


@pytest.mark.parametrize(("records", "category"), [
    (244, "n<1K"), (999, "n<1K"), (1_000, "1K<n<10K"), (19_412, "10K<n<100K"), (9_999_999, "1M<n<10M"),
    (10_000_000, "10M<n<100M"), (2_500_000_000, "1B<n<10B"), (10**12, "n>1T"),
])
def test_the_size_category_is_the_hubs_label_for_the_record_count(records, category):
    """Every label comes from the Hub's vocabulary (``DatasetCardData``'s ``size_categories``): 10 million
    records or more are not "1M<n<10M"."""
    manifest = {"counts": {"beauty": {"train": records}, "items": {"beauty": 5}}, "version": "1.0.0",
                "fingerprint": "0" * 64}
    data_files = {"beauty": {"train": ["data/beauty/train-00000-of-00001.parquet"]},
                  "items": {"beauty": ["data/items/beauty-00000-of-00001.parquet"]}}
    data = card_data(manifest, data_files, conversation_features([]))
    assert data.size_categories == [category]
    assert category in DatasetCardData.__doc__


def test_the_card_shows_absolute_paths_of_the_build_machine_by_their_name(tmp_path):
    """The build records paths as given: an absolute one (`--inputs /home/alice/dumps`, `--out`, `--workdir`, the
    input files) reached the card's command, options and inputs table, published with the dataset."""
    import shlex

    home = tmp_path / "home" / "alice"
    build = {**BUILD,
             "command": shlex.join(["reddit-amazon", "build", "--inputs", f"{home}/dumps", "--meta", "meta/",
                                    "--reviews", "hub:McAuley-Lab/Amazon-Reviews-2023:raw_review_All_Beauty",
                                    "--out", f"{home}/ra v2", "--workdir", f"{home}/ra v2.work", "--seed", "7"]),
             "options": {**BUILD["options"], "inputs": [f"{home}/dumps"], "meta": ["meta/"], "out": f"{home}/ra v2",
                         "workdir": f"{home}/ra v2.work", "llm_cache": "~/cache/answers.sqlite",
                         "llm_model": f"{home}/models/qwen"},  # a model served from a local folder
             "inputs": [{"path": f"{home}/dumps/RC_2023-01.zst", "bytes": 123456, "sha256": "ab" * 32},
                        {"path": "meta/meta_All_Beauty.jsonl", "bytes": 789, "sha256": "cd" * 32}]}
    folder = tmp_path / "absolute"
    write_dataset(folder, controlled_contents({"build": build}))
    result = CliRunner().invoke(cli, ["card", str(folder)])
    assert result.exit_code == 0, result.output
    card = (folder / "README.md").read_text(encoding="utf-8")
    assert str(tmp_path) not in card and "~/cache" not in card
    command = card.split("Command:", 1)[1].split("```bash\n", 1)[1].split("\n", 1)[0]
    assert shlex.split(command) == ["reddit-amazon", "build", "--inputs", "dumps", "--meta", "meta/", "--reviews",
                                    "hub:McAuley-Lab/Amazon-Reviews-2023:raw_review_All_Beauty", "--out", "ra v2",
                                    "--workdir", "ra v2.work", "--seed", "7"]
    options = {row["option"]: row["value"] for row in markdown_table_after(card, "Options", "option")}
    assert (options["`inputs`"], options["`meta`"], options["`out`"], options["`llm_cache`"]) == (
        '`["dumps"]`', '`["meta/"]`', "`ra v2`", "`answers.sqlite`")
    inputs = [row["path"] for row in markdown_table_after(card, "Inputs:", "path")]
    assert inputs == ["`RC_2023-01.zst`", "`meta/meta_All_Beauty.jsonl`"]
    assert "An LLM (`qwen`) asked with the paper's Table 9 prompt" in card
    assert "An absolute path of the build machine is shown by its last component" in card
