import pytest

from reddit_amazon.schema import (
    DOMAINS,
    Conversation,
    Item,
    SchemaError,
    Turn,
    conversation_features,
    parse_context,
    render_context,
    validate_conversation_row,
    validate_item_row,
)


def make_conversation(**overrides) -> Conversation:
    values = dict(
        example_id="x1",
        domain="fashion",
        thread_id="abc",
        subreddit="femalefashionadvice",
        created_utc=1_650_000_000,
        turns=[Turn("submission", "Looking for boots ", author="u1", created_utc=1, id="abc"),
               Turn("comment", "What colour?", author="u2", created_utc=2, id="c1")],
        context_items=[],
        gt_text="Try https://www.amazon.com/dp/B00TEST001",
        gt_items=["B00TEST001"],
        gt_comment_id="c2",
        candidates={"sbert": [f"B00TEST{i:03d}" for i in range(10)]},
    )
    values.update(overrides)
    return Conversation(**values)


def test_row_round_trip_and_context_rendering():
    record = make_conversation()
    row = record.to_row()
    assert row["context"] == "<submission>Looking for boots </submission>\n<comment>What colour?</comment>\n"
    assert row["candidates_openai_large"] == []  # declared, not computed
    assert Conversation.from_row(row) == record
    assert set(row) == set(conversation_features())


def test_parse_context_is_exact_inverse():
    context = "<submission>T body\n\nmore</submission>\n<comment>a</comment>\n<comment></comment>\n"
    turns = parse_context(context)
    assert [t.kind for t in turns] == ["submission", "comment", "comment"]
    assert render_context(turns) == context
    assert parse_context("<submission>only</submission>\n")[0].text == "only"


@pytest.mark.parametrize("context", ["no tags", "<comment>x</comment>\n", "<submission>x</submission>",
                                     "<submission>x</submission>\n<comment>y</comment>"])
def test_parse_context_rejects_malformed(context):
    with pytest.raises(SchemaError):
        parse_context(context)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda r: r.pop("gt_items"), "missing field(s) gt_items"),
        (lambda r: r.update(gt_items=["b00lower01"]), "not an ASIN"),
        (lambda r: r.update(gt_items=["B00SHORT"]), "not an ASIN"),
        (lambda r: r.update(gt_items=[]), "gt_items is empty"),
        (lambda r: r.update(created_utc="1650000000"), "must be int64"),
        (lambda r: r.update(domain="books"), "domain 'books'"),
        (lambda r: r.update(candidates_sbert=["B00TEST001"] * 10), "got 10, repeating B00TEST001"),
        (lambda r: r.update(candidates_sbert=["B00TEST001"]), "10 distinct"),
        (lambda r: r.update(context="<submission>other</submission>\n"), "render_context"),
        (lambda r: r["turns"].reverse(), "start with the submission"),
        (lambda r: r["turns"][1].pop("author"), "turns[1]: missing field(s) author"),
        (lambda r: r.update(context_items=["B00short"]), "context_items"),
        (lambda r: r["turns"][1].update(kind="submission"), "turns[1].kind 'submission'"),
    ],
)
def test_invalid_records_name_their_source(mutate, message):
    row = make_conversation().to_row()
    mutate(row)
    with pytest.raises(SchemaError) as error:
        validate_conversation_row(row, where="data.jsonl:7")
    assert str(error.value).startswith("data.jsonl:7")
    assert message in str(error.value)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda r: r["turns"][1].update(text=7), "data.jsonl:7: turns[1].text must be string, got int 7"),
        (lambda r: r["turns"][0].update(created_utc=True), "data.jsonl:7: turns[0].created_utc must be int64, got bool"),
        (lambda r: r.update(gt_items=["B00TEST001", None]), "data.jsonl:7: gt_items[1] must be string, got NoneType"),
        (lambda r: r.update(candidates_sbert="B00TEST001"), "data.jsonl:7: candidates_sbert must be a list, got str"),
        (lambda r: r["turns"].__setitem__(1, "hi"), "data.jsonl:7: turns[1]: expected a JSON object, got str"),
        (lambda r: r.update(example_id=None), "data.jsonl:7: example_id must be string, got NoneType None"),
    ],
)
def test_type_errors_name_the_exact_path(mutate, message):
    row = make_conversation().to_row()
    mutate(row)
    with pytest.raises(SchemaError) as error:
        validate_conversation_row(row, where="data.jsonl:7")
    assert str(error.value).startswith(message)


def test_validating_many_rows_builds_the_features_once(monkeypatch):
    """A build validates every conversation about three times: building `datasets.Features` for each row took
    more time than checking the row (~60 us of ~100 us a row at 30,000 rows)."""
    from reddit_amazon import schema

    built = []
    real = schema.conversation_features
    monkeypatch.setattr(schema, "conversation_features", lambda sets=(): built.append(tuple(sets)) or real(sets))
    rows = [make_conversation(example_id=f"x{i}", candidates={"sbert": [], "bm25": [f"B00TEST{j:03d}" for j in range(10)]})
            .to_row() for i in range(50)]
    for row in rows:
        validate_conversation_row(row, where="x")
    assert len(built) <= 1


def test_intermediate_records_may_lack_a_domain_only_when_allowed():
    row = make_conversation(domain="").to_row()
    validate_conversation_row(row, require_domain=False)
    with pytest.raises(SchemaError):
        validate_conversation_row(row)


def test_item_validation_and_round_trip():
    item = Item(item_id="B00TEST001", domain="home", parent_asin="B00TEST000", title="Lamp", image=b"\xff\xd8jpeg")
    row = item.to_row()
    assert row["image"] == {"bytes": b"\xff\xd8jpeg", "path": "B00TEST001.jpg"}
    assert Item.from_row(row) == item
    bad = dict(row, item_id="nope")
    with pytest.raises(SchemaError, match="items.jsonl:3: item_id"):
        validate_item_row(bad, where="items.jsonl:3")
    with pytest.raises(SchemaError, match="must be a list"):
        validate_item_row(dict(row, features="soft"), where="x")


def test_domains_are_the_papers():
    assert DOMAINS == ("beauty", "fashion", "home")


def test_item_features_follow_the_item_dataclass():
    import dataclasses

    from reddit_amazon.schema import ITEM_FEATURES

    assert list(ITEM_FEATURES) == [f.name for f in dataclasses.fields(Item)]


def test_importing_the_schema_stays_light():
    import subprocess
    import sys

    code = "import sys, reddit_amazon.schema; print('datasets' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_a_malformed_context_is_refused_at_once_whatever_its_length():
    """The old regular expression backtracked exponentially: 28 comments took minutes, 40 would take days."""
    import time

    for tail in ("tail", "<comment>no newline</comment>"):
        context = "<submission>t</submission>\n" + "<comment>c</comment>\n" * 40 + tail
        started = time.monotonic()
        with pytest.raises(SchemaError, match="context is not"):
            parse_context(context)
        assert time.monotonic() - started < 5
