"""The vectorised thread-key finder of the second pass, held to the regexes it replaces."""

from __future__ import annotations

import random

import orjson
import pytest

from reddit_amazon import dumps
from reddit_amazon.thread_lines import MAX_ID_CHARS, THREAD_KEY_PATTERNS, ThreadLineFinder, id_number


def _reference(chunk: bytes, start: int, end: int, wanted: set[bytes]) -> set[int]:
    return {m.start() for p in THREAD_KEY_PATTERNS for m in p.finditer(chunk, start, end) if m.group(1) in wanted}


def _random_lines(rng: random.Random, wanted: list[str]) -> bytes:
    lines = []
    for _ in range(rng.randint(0, 30)):
        thread = rng.choice(wanted) if rng.random() < 0.3 else "".join(rng.choices("abcdefghijklmnopqrstuvwxyz0123456789",
                                                                                k=rng.randint(1, 14)))
        prefix = rng.choice(["t3_", ""])
        kind = rng.random()
        if kind < 0.5:
            record = {"id": f"c{rng.randint(0, 999)}", "body": rng.choice(["hi", 'say "id":"x"', "link_id: abc"]),
                      "link_id": prefix + thread, "parent_id": "t3_" + thread,
                      "all_awardings": [{"id": "award_" + thread}]}
        elif kind < 0.8:
            record = {"id": prefix + thread, "title": "t", "selftext": "s", "media": {"id": thread.upper()}}
        else:
            record = {"subreddit_id": "t5_" + thread, "author_flair_template_id": thread}
        text = orjson.dumps(record)
        if rng.random() < 0.3:
            text = text.replace(b'":"', b'": "')  # pretty dumps put a space after the colon
        lines.append(text)
    return b"\n".join(lines)


@pytest.mark.parametrize("block", [None, 1, 2, 7])
@pytest.mark.parametrize("seed", range(5))
def test_finder_reports_every_wanted_line_and_only_few_others(seed, block, monkeypatch):
    if block:  # tiny search blocks: keys cut at every block edge are still found
        monkeypatch.setattr(dumps, "SEARCH_BLOCK", block)
    rng = random.Random(seed)
    wanted = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz0123456789", k=rng.randint(1, MAX_ID_CHARS)))
              for _ in range(20)]
    finder = ThreadLineFinder(w.encode() for w in wanted)
    assert finder.vectorised
    for _ in range(100):
        chunk = _random_lines(rng, wanted)
        start = rng.randint(0, len(chunk))
        end = rng.randint(start, len(chunk))
        expected = _reference(chunk, start, end, set(finder.wanted))
        got = finder(chunk, start, end)
        assert got == sorted(got) and all(start <= p < end for p in got)
        assert expected <= set(got), (chunk[start:end], expected - set(got))
        # Extra reports (the caller checks each line exactly) are few and always at an id key.
        extra = set(got) - expected
        assert all(chunk[p:p + 4] == b'"id"' or chunk[p:p + 9] == b'"link_id"' for p in extra)
        assert len(extra) <= max(2, len(got) // 2), [chunk[p:p + 40] for p in extra]


def test_ids_that_are_not_short_base36_fall_back_to_the_regexes():
    assert id_number(b"ABC") == id_number(b"abc") != id_number(b"abd")
    assert len({id_number(i) for i in (b"a", b"0a", b"a0", b"10", b"z" * MAX_ID_CHARS)}) == 5
    assert id_number(b"") is None and id_number(b"a" * (MAX_ID_CHARS + 1)) is None and id_number(b"a_1") is None
    assert id_number(b"+abc") is None and id_number(b" abc") is None
    long_id = b"a" * (MAX_ID_CHARS + 1)
    finder = ThreadLineFinder([b"abc", long_id])
    assert not finder.vectorised
    chunk = b'{"link_id":"t3_' + long_id + b'"}\n{"link_id":"t3_abc"}\n{"link_id":"t3_xyz"}'
    assert finder(chunk, 0, len(chunk)) == [1, len(long_id) + 19]


def test_a_value_cut_at_the_range_end_is_not_misread():
    finder = ThreadLineFinder([b"abc"])
    chunk = b'{"link_id":"abc"}\n{"link_id":"ab'
    assert finder(chunk, 0, len(chunk)) == [1]
    assert finder(chunk, 0, 13) == []  # the closing quote lies outside the range
