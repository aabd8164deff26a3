"""Catalog: metadata files, child -> parent ASIN from reviews, domain mapping, joining conversations."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from reddit_amazon.catalog import (
    DEFAULT_DOMAIN_MAP,
    META_FILE_PATTERN,
    NO_GT_ITEM_IN_CATALOG,
    NO_GT_ITEM_IN_DOMAINS,
    OUTSIDE_DOMAINS,
    PARENT_WITHOUT_METADATA,
    UNKNOWN_ASIN,
    CatalogError,
    HubSource,
    check_catalog_sources,
    expand_sources,
    image_urls,
    join_conversations,
    load_catalog,
    parse_domain_map,
    parse_hub_spec,
    read_parent_map,
    why_domain_is_empty,
)
from reddit_amazon.schema import Conversation, Turn


def meta(parent: str, category: str, title: str = "A thing", **extra) -> dict:
    return {
        "parent_asin": parent,
        "main_category": category,
        "title": title,
        "store": "Acme",
        "features": ["soft", "blue"],
        "description": ["First paragraph.", "Second."],
        "details": {"Color": "Blue", "Brand": "Acme"},
        "categories": ["Home & Kitchen", "Bedding"],
        "images": [
            {"thumb": "https://x/t1.jpg", "large": "https://x/l1.jpg", "hi_res": None, "variant": "PT01"},
            {"thumb": "https://x/t0.jpg", "large": "https://x/l0.jpg", "hi_res": "https://x/h0.jpg", "variant": "MAIN"},
        ],
        **extra,
    }


def write_jsonl(path: Path, rows: list, gz: bool = False, raw_lines: list[str] = ()) -> Path:
    text = "".join(json.dumps(r) + "\n" for r in rows) + "".join(line + "\n" for line in raw_lines)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def conversation(example_id: str, gt: list[str], context: list[str] = ()) -> Conversation:
    return Conversation(example_id=example_id, domain="", thread_id="t" + example_id, subreddit="s",
                        created_utc=1, turns=[Turn(kind="submission", text="need a thing")],
                        context_items=list(context), gt_text="try this", gt_items=list(gt))


def test_domain_map_default_inline_and_file(tmp_path):
    assert parse_domain_map(None) == DEFAULT_DOMAIN_MAP
    assert parse_domain_map("Premium Beauty=beauty; All Beauty=beauty") == {"Premium Beauty": "beauty",
                                                                            "All Beauty": "beauty"}
    path = tmp_path / "map.json"
    path.write_text(json.dumps({"Amazon Home": "home"}))
    assert parse_domain_map(str(path)) == {"Amazon Home": "home"}
    with pytest.raises(CatalogError, match="garden"):
        parse_domain_map("Garden=garden")
    with pytest.raises(CatalogError, match="not 'Main Category=domain'"):
        parse_domain_map("nonsense")
    with pytest.raises(CatalogError, match="separate pairs with ';'"):  # a comma would drop beauty silently
        parse_domain_map("All Beauty=beauty,AMAZON FASHION=fashion")
    assert parse_domain_map("Arts, Crafts & Sewing=home") == {"Arts, Crafts & Sewing": "home"}


def test_image_urls_main_first_largest_size_both_layouts():
    record = meta("B000000001", "Amazon Home")
    assert image_urls(record["images"]) == ["https://x/h0.jpg", "https://x/l1.jpg"]
    columnar = {"hi_res": [None, "https://x/h0.jpg"], "large": ["https://x/l1.jpg", "https://x/l0.jpg"],
                "thumb": ["https://x/t1.jpg", "https://x/t0.jpg"], "variant": ["PT01", "MAIN"]}
    assert image_urls(columnar) == ["https://x/h0.jpg", "https://x/l1.jpg"]
    assert image_urls([{"hiRes": "https://x/a.jpg", "variant": "MAIN"}]) == ["https://x/a.jpg"]
    assert image_urls(None) == [] and image_urls([{"variant": "MAIN"}]) == []


def test_parent_map_keeps_only_wanted_and_reports_bad_lines(tmp_path):
    reviews = write_jsonl(tmp_path / "Home.jsonl.gz", [
        {"asin": "C000000001", "parent_asin": "P000000001", "text": 'says "asin": "C000000009"'},
        {"asin": "C000000002", "parent_asin": "P000000002"},
        {"asin": "C000000001", "parent_asin": "P000000009"},  # conflicting second parent
    ], gz=True, raw_lines=['{"asin": "C000000003", "parent_asin": ', '{"asin": "C000000004"}'])
    result = read_parent_map([str(reviews)], wanted={"C000000001", "C000000004", "C000000009"})
    assert result.parents == {"C000000001": "P000000001"}
    assert result.conflicts == {"C000000001": 1}
    assert result.report.lines == 5
    assert result.report.bad_lines == 2
    assert f"{reviews}:4: not JSON" in result.report.examples[0]
    assert f"{reviews}:5: review row without a valid asin and parent_asin" in result.report.examples[1]


def test_load_catalog_and_join(tmp_path):
    write_jsonl(tmp_path / "meta_Home.jsonl", [
        meta("P000000001", "Amazon Home", "Quilt"),
        meta("P000000002", "All Beauty", "Lipstick"),
        meta("P000000003", "Amazon Home", "Lamp"),
        meta("P000000004", "Books", "Novel"),
        meta("P000000001", "Amazon Home", "Duplicate quilt"),
    ], raw_lines=["{broken", '{"parent_asin": 12}'])
    reviews = write_jsonl(tmp_path / "Home.jsonl", [
        {"asin": "C000000001", "parent_asin": "P000000001"},
        {"asin": "C000000002", "parent_asin": "P000000002"},
        {"asin": "C000000007", "parent_asin": "P000000007"},  # parent missing from metadata
    ])
    records = [
        conversation("1", ["C000000001"], context=["P000000003", "C000000099"]),  # child -> parent
        conversation("2", ["C000000099"]),  # unknown ASIN
        conversation("3", ["C000000007"]),  # parent without metadata
        conversation("4", ["P000000004"]),  # outside the three domains
        conversation("5", ["C000000002", "P000000001", "P000000003"]),  # beauty 1, home 2 -> home
        conversation("6", ["C000000002", "P000000001"]),  # tie -> first gt item's domain
    ]
    wanted = {a for r in records for a in [*r.gt_items, *r.context_items]}
    catalog, report = load_catalog(expand_sources([tmp_path], META_FILE_PATTERN), [str(reviews)], wanted,
                                   DEFAULT_DOMAIN_MAP)
    assert report.meta["bad_lines"] == 2 and report.duplicate_metadata_rows == 1
    assert report.main_categories == {"Amazon Home": 2, "All Beauty": 1, "Books": 1}
    assert catalog.resolve("C000000099") == (None, UNKNOWN_ASIN)
    assert catalog.resolve("C000000007") == (None, PARENT_WITHOUT_METADATA)
    assert catalog.resolve("P000000004") == (None, OUTSIDE_DOMAINS)
    item, reason = catalog.resolve("C000000001")
    assert reason == "" and item.item_id == item.parent_asin == "P000000001" and item.title == "Quilt"
    assert item.description == "First paragraph.\nSecond." and json.loads(item.details)["Color"] == "Blue"
    assert item.image_urls[0] == "https://x/h0.jpg"

    result = join_conversations(records, catalog)
    by_id = {c.example_id: c for c in result.conversations}
    assert sorted(by_id) == ["1", "5", "6"]
    assert by_id["1"].domain == "home" and by_id["1"].gt_items == ["P000000001"]
    assert by_id["1"].context_items == ["P000000003"]
    assert by_id["5"].domain == "home" and by_id["5"].gt_items == ["P000000001", "P000000003"]
    assert by_id["6"].domain == "beauty" and by_id["6"].gt_items == ["P000000002"]
    assert result.dropped == {NO_GT_ITEM_IN_CATALOG: 2, NO_GT_ITEM_IN_DOMAINS: 1}
    assert result.gt_links["other_domain"] == 2 and result.gt_links[UNKNOWN_ASIN] == 1
    assert result.context_links[UNKNOWN_ASIN] == 1
    assert set(result.items) == {"P000000001", "P000000002", "P000000003"}
    assert result.items["P000000002"].domain == "beauty"
    assert result.child_to_parent == 2


def test_unreadable_sources_name_the_file(tmp_path):
    with pytest.raises(CatalogError, match="no such file"):
        expand_sources([tmp_path / "missing.jsonl"], META_FILE_PATTERN)
    broken = tmp_path / "meta_x.jsonl.gz"
    broken.write_bytes(gzip.compress(b'{"parent_asin": "P000000001"}\n' * 50)[:30])
    with pytest.raises(CatalogError, match="meta_x.jsonl.gz: cannot read it to the end: .*truncated"):
        load_catalog([str(broken)], [], {"P000000001"}, DEFAULT_DOMAIN_MAP)


def test_zstd_and_byte_order_marked_files_are_read_whatever_their_names(tmp_path):
    import zstandard

    text = "\ufeff" + "".join(json.dumps(meta(f"P00000000{i}", "All Beauty")) + "\n" for i in range(3))
    compressed = zstandard.ZstdCompressor().compress(text.encode())
    (tmp_path / "meta_All_Beauty.jsonl.zst").write_bytes(compressed)
    (tmp_path / "meta_bom.jsonl").write_text(text, encoding="utf-8")
    (tmp_path / "meta_truncated.jsonl").write_bytes(compressed[:-10])  # a plain name, zstd inside
    sources = expand_sources([tmp_path / "meta_All_Beauty.jsonl.zst", tmp_path / "meta_bom.jsonl"], META_FILE_PATTERN)
    catalog, report = load_catalog(sources, [], {f"P00000000{i}" for i in range(3)}, DEFAULT_DOMAIN_MAP)
    assert sorted(catalog.metadata) == ["P000000000", "P000000001", "P000000002"] and report.meta["bad_lines"] == 0
    with pytest.raises(CatalogError, match="meta_truncated.jsonl: cannot read it to the end: .*truncated"):
        load_catalog([str(tmp_path / "meta_truncated.jsonl")], [], {"P000000000"}, DEFAULT_DOMAIN_MAP)


def test_hub_source_through_datasets_with_a_local_dataset(tmp_path):
    folder = tmp_path / "amazon-2023"
    folder.mkdir()
    hub_row = meta("P000000001", "AMAZON FASHION", "Boots")
    hub_row["images"] = {"hi_res": ["https://x/h.jpg"], "large": ["https://x/l.jpg"], "thumb": ["https://x/t.jpg"],
                         "variant": ["MAIN"]}
    hub_row["details"] = json.dumps(hub_row["details"])
    write_jsonl(folder / "meta.jsonl", [hub_row])
    (folder / "README.md").write_text(
        "---\nconfigs:\n- config_name: raw_meta_Amazon_Fashion\n  data_files:\n  - split: full\n"
        "    path: meta.jsonl\n---\n")
    spec = f"hub:{folder}:raw_meta_Amazon_Fashion"
    catalog, report = load_catalog([spec], [], {"P000000001"}, DEFAULT_DOMAIN_MAP)
    item, _ = catalog.resolve("P000000001")
    assert item.domain == "fashion" and item.image_urls == ["https://x/h.jpg"]
    assert json.loads(item.details)["Brand"] == "Acme"
    with pytest.raises(CatalogError, match="is not hub:<repo>:"):
        load_catalog(["hub:only-repo"], [], set(), DEFAULT_DOMAIN_MAP)


def test_deeply_nested_details_text_does_not_stop_the_catalog(tmp_path):
    row = meta("P000000001", "AMAZON FASHION", "Boots")
    row["details"] = "[" * 100_000  # a details string (the Hub copy's form) nested past the parser's recursion limit
    write_jsonl(tmp_path / "meta_Amazon_Fashion.jsonl", [row])
    catalog, _ = load_catalog([str(tmp_path / "meta_Amazon_Fashion.jsonl")], [], {"P000000001"}, DEFAULT_DOMAIN_MAP)
    item, reason = catalog.resolve("P000000001")
    assert reason == "" and item.title == "Boots"

def test_hub_files_of_a_repo_folder_and_upstream_config_names(tmp_path):
    assert parse_hub_spec("hub:McAuley-Lab/Amazon-Reviews-2023:raw_meta_All_Beauty") == HubSource(
        repo="McAuley-Lab/Amazon-Reviews-2023", file="raw/meta_categories/meta_All_Beauty.jsonl")
    assert parse_hub_spec("hub:McAuley-Lab/Amazon-Reviews-2023:raw_review_Amazon_Fashion").file == \
        "raw/review_categories/Amazon_Fashion.jsonl"
    assert parse_hub_spec("hub:me/other:raw_meta_All_Beauty:train") == HubSource(
        repo="me/other", config="raw_meta_All_Beauty", split="train")
    repo = tmp_path / "repo"
    (repo / "raw" / "meta_categories").mkdir(parents=True)
    (repo / "raw" / "review_categories").mkdir(parents=True)
    write_jsonl(repo / "raw" / "meta_categories" / "meta_Home.jsonl", [meta("P000000001", "Amazon Home")],
                raw_lines=["not json"])
    write_jsonl(repo / "raw" / "review_categories" / "Home.jsonl",
                [{"asin": "C000000001", "parent_asin": "P000000001"}])
    catalog, report = load_catalog([f"hub:{repo}:raw/meta_categories/meta_Home.jsonl"],
                                   [f"hub:{repo}:raw/review_categories/Home.jsonl"], {"C000000001"},
                                   DEFAULT_DOMAIN_MAP)
    assert catalog.resolve("C000000001")[0].item_id == "P000000001"
    assert report.meta["bad_lines"] == 1 and "meta_Home.jsonl:2" in report.meta["bad_line_examples"][0]
    with pytest.raises(CatalogError, match="cannot download"):  # tests run with HF_HUB_OFFLINE=1
        load_catalog(["hub:McAuley-Lab/Amazon-Reviews-2023:raw_meta_All_Beauty"], [], {"P000000001"},
                     DEFAULT_DOMAIN_MAP)


def test_a_compressed_hub_file_is_read_as_a_file_like_a_local_one(tmp_path):
    """`hub:<repo>:<path>` names any file of a repo (docs/build.md): a compressed JSONL there is read as a local
    one is (.gz, .zst, .xz, .bz2), not taken for the name of a `datasets` config."""
    import bz2
    import lzma

    import zstandard

    assert parse_hub_spec("hub:me/amazon:raw/meta_Home.jsonl.zst") == HubSource(repo="me/amazon",
                                                                                file="raw/meta_Home.jsonl.zst")
    repo = tmp_path / "repo"
    repo.mkdir()
    meta_text = json.dumps(meta("P000000001", "Amazon Home")) + "\n"
    review_text = json.dumps({"asin": "C000000001", "parent_asin": "P000000001"}) + "\n"
    (repo / "meta_Home.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(meta_text.encode()))
    (repo / "Home.jsonl.xz").write_bytes(lzma.compress(review_text.encode()))
    (repo / "Other.jsonl.bz2").write_bytes(bz2.compress(review_text.encode()))
    catalog, _ = load_catalog([f"hub:{repo}:meta_Home.jsonl.zst"],
                              [f"hub:{repo}:Home.jsonl.xz", f"hub:{repo}:Other.jsonl.bz2"], {"C000000001"},
                              DEFAULT_DOMAIN_MAP)
    assert catalog.resolve("C000000001")[0].item_id == "P000000001"


def test_a_parent_in_two_metadata_sources_takes_the_row_of_the_first_source_given(tmp_path):
    """Two metadata rows of one parent (two category files, two editions): the first --meta source given wins,
    as docs/build.md says; the flags' order is part of the build command the manifest records."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    write_jsonl(tmp_path / "a" / "meta_All_Beauty.jsonl", [meta("B000000001", "All Beauty", title="Old title")])
    write_jsonl(tmp_path / "b" / "meta_All_Beauty.jsonl", [meta("B000000001", "All Beauty", title="New title")])
    reviews = write_jsonl(tmp_path / "All_Beauty.jsonl", [{"asin": "B000000001", "parent_asin": "B000000001"}])
    titles = []
    for folders in ([tmp_path / "a", tmp_path / "b"], [tmp_path / "b", tmp_path / "a"]):
        metas = expand_sources(folders, META_FILE_PATTERN)
        catalog, report = load_catalog(metas, [str(reviews)], {"B000000001"}, DEFAULT_DOMAIN_MAP)
        titles.append(catalog.resolve("B000000001")[0].title)
        assert report.duplicate_metadata_rows == 1
    assert titles == ["Old title", "New title"]


def test_a_metadata_line_over_the_length_limit_is_reported_as_too_long(tmp_path):
    """A 65 MiB line (a damaged file: zstd packs it into a few KiB) is cut at 64 MiB and reported as too long, by
    file and line, not as unexplained bad JSON; the lines around it are read."""
    from reddit_amazon.dumps import write_zst_ndjson

    huge = json.dumps(meta("P000000001", "All Beauty", title="x" * (65 << 20))).encode()
    path = write_zst_ndjson(tmp_path / "meta_All_Beauty.jsonl.zst",
                            [meta("P000000000", "All Beauty"), huge, meta("P000000002", "All Beauty")])
    catalog, report = load_catalog([str(path)], [], {f"P00000000{i}" for i in range(3)}, DEFAULT_DOMAIN_MAP)
    assert sorted(catalog.metadata) == ["P000000000", "P000000002"]
    assert report.meta["bad_lines"] == 1
    assert report.meta["bad_line_examples"] == [f"{path}:2: line longer than 64 MiB ({len(huge):,} bytes); not parsed"]


def test_catalog_files_of_the_wrong_kind_are_refused_naming_the_file_and_the_flag_to_use(tmp_path):
    """A review file given as --meta used to be read as metadata (its rows have a parent_asin and no main_category:
    every item dropped as outside the domains), a metadata file given as --reviews or Amazon's 2018 / 2014 files
    had every row skipped as a bad line: a dataset with quietly empty domains."""
    review_rows = [{"rating": 5.0, "title": "Nice", "text": "Works.", "asin": "C000000001",
                    "parent_asin": "P000000001", "user_id": "U1", "verified_purchase": True}]
    reviews = write_jsonl(tmp_path / "All_Beauty.jsonl.gz", review_rows, gz=True)
    metadata = write_jsonl(tmp_path / "meta_All_Beauty.jsonl", [meta("P000000001", "All Beauty")])
    meta_2018 = write_jsonl(tmp_path / "meta_Beauty_2018.jsonl", [
        {"asin": "P000000001", "title": "Lipstick", "main_cat": "All Beauty", "category": ["Beauty"],
         "imageURLHighRes": ["https://x/h.jpg"], "also_buy": []}])
    meta_2014 = tmp_path / "meta_Beauty_2014.jsonl"
    meta_2014.write_text(repr({"asin": "P000000001", "imUrl": "https://x/l.jpg", "salesRank": {"Beauty": 3},
                               "categories": [["Beauty"]]}) + "\n")
    reviews_2018 = write_jsonl(tmp_path / "Beauty_5.jsonl", [
        {"reviewerID": "A1", "asin": "P000000001", "overall": 5.0, "reviewText": "Works."}])
    reddit = write_jsonl(tmp_path / "RC_2023-01.jsonl", [
        {"id": "c1", "subreddit": "beauty", "link_id": "t3_s1", "parent_id": "t3_s1", "body": "try this"}])
    for meta_sources, review_sources, message in [
        ([reviews], [], f"{reviews} (given with --meta) looks like an Amazon Reviews 2023 REVIEW file "
                        "(fields asin, parent_asin, rating, text, user_id, verified_purchase): give it with --reviews"),
        ([metadata], [metadata], f"{metadata} (given with --reviews) looks like an Amazon Reviews 2023 METADATA "
                                 "file (fields parent_asin, main_category, features, details): give it with --meta"),
        ([meta_2018], [reviews], f"{meta_2018} (given with --meta) looks like Amazon metadata of 2018 or 2014 "
                                 "(McAuley UCSD), without parent_asin (fields asin, main_cat, imageURLHighRes"),
        ([meta_2014], [reviews], f"{meta_2014} (given with --meta) looks like Amazon metadata of 2018 or 2014 "
                                 "(McAuley UCSD), without parent_asin, in Python-literal lines"),
        ([metadata], [reviews_2018], f"{reviews_2018} (given with --reviews) looks like an Amazon review file of "
                                     "2018 or 2014"),
        ([reddit], [reviews], f"{reddit} (given with --meta) looks like a Reddit dump (fields subreddit, link_id, "
                              "parent_id, body): give it with --inputs"),
    ]:
        with pytest.raises(CatalogError) as refused:
            check_catalog_sources([str(p) for p in meta_sources], [str(p) for p in review_sources])
        assert message in str(refused.value)
        with pytest.raises(CatalogError) as refused_when_read:  # callers of load_catalog, Hub files
            load_catalog([str(p) for p in meta_sources], [str(p) for p in review_sources], {"C000000001"},
                         DEFAULT_DOMAIN_MAP)
        assert message in str(refused_when_read.value)
    check_catalog_sources([str(metadata)], [str(reviews)])  # the right flags
    catalog, _ = load_catalog([str(metadata)], [str(reviews)], {"C000000001"}, DEFAULT_DOMAIN_MAP)
    assert catalog.resolve("C000000001")[0].item_id == "P000000001"


def test_a_catalog_file_whose_first_line_tells_nothing_is_read_as_before(tmp_path):
    """Only a first line that shows another kind of file refuses a source: a bad first line is skipped and counted."""
    metadata = write_jsonl(tmp_path / "meta_x.jsonl", [meta("P000000001", "All Beauty")])
    metadata.write_text('{"broken\n{"parent_asin": "P000000009"}\n' + metadata.read_text())
    check_catalog_sources([str(metadata)], [])
    catalog, report = load_catalog([str(metadata)], [], {"P000000001"}, DEFAULT_DOMAIN_MAP)
    assert report.meta["bad_lines"] == 1 and catalog.resolve("P000000001")[0].domain == "beauty"


def test_a_first_line_of_python_literal_garbage_tells_nothing_either(tmp_path):
    """A first line like a 2014 row but with a key Python cannot hash escaped the kind check as a TypeError (a
    traceback ending the build) instead of being a bad line, skipped and counted."""
    metadata = write_jsonl(tmp_path / "meta_x.jsonl", [meta("P000000001", "All Beauty")])
    metadata.write_text("{'title': 'x', [1]: 2}\n" + metadata.read_text())
    check_catalog_sources([str(metadata)], [])
    catalog, report = load_catalog([str(metadata)], [], {"P000000001"}, DEFAULT_DOMAIN_MAP)
    assert report.meta["bad_lines"] == 1 and catalog.resolve("P000000001")[0].domain == "beauty"


def test_why_a_domain_is_empty_names_the_domain_map_entry_no_product_has_and_the_likeliest_one_meant():
    mistyped = {"All Beauty": "beauty", "Amazon Fashion": "fashion", "Amazon Home": "home"}
    seen = {"All Beauty": 40, "AMAZON FASHION": 45, "Books": 1}
    assert why_domain_is_empty("fashion", mistyped, seen) == (
        "no linked product has main_category 'Amazon Fashion' (the domain map's name for it); the linked products' "
        "main categories outside the map are 'AMAZON FASHION' (45), 'Books' (1): did you mean 'AMAZON FASHION'? "
        "(--domain-map)")
    assert why_domain_is_empty("home", DEFAULT_DOMAIN_MAP, {"All Beauty": 3, "Books": 1}).endswith(
        "outside the map are 'Books' (1): do the --meta files hold the metadata of this domain's products?")
    assert "no linked product has metadata in the --meta files" in why_domain_is_empty("home", DEFAULT_DOMAIN_MAP, {})
    assert why_domain_is_empty("fashion", {"All Beauty": "beauty"}, seen) == (
        "the domain map maps no main_category to it (--domain-map)")
    assert why_domain_is_empty("beauty", mistyped, seen) == (
        "the funnel above says which stage dropped its conversations")
