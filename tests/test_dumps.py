"""Dump reading: long-window zstd streams, line splitting, damage, field quirks."""

from __future__ import annotations

import os
import random
import re

import orjson
import pytest
import zstandard

from reddit_amazon.dumps import (
    DumpReadError,
    LinePlace,
    LineProblems,
    ReadProgress,
    _FrameWalker,
    bare_id,
    iter_chunks,
    iter_lines,
    iter_selected_lines,
    parse_created_utc,
    parse_line,
    search_dump_files,
    text_state,
    write_zst_ndjson,
)


def _records(n: int) -> list[dict]:
    return [{"id": f"c{i}", "body": f"comment number {i} — ünïcödé ✓ 😀", "created_utc": i} for i in range(n)]


def _all_lines(path, read_size=1 << 20) -> list[bytes]:
    return list(iter_lines(iter_chunks(path, read_size=read_size)))


def test_fixture_is_a_long_window_stream_that_default_decoders_refuse(tmp_path):
    path = write_zst_ndjson(tmp_path / "RC_2020-01.zst", _records(3000), frames=3)
    raw = path.read_bytes()
    params = zstandard.get_frame_parameters(raw)
    assert params.window_size == 2**31
    assert params.content_size == zstandard.CONTENTSIZE_UNKNOWN
    with pytest.raises(zstandard.ZstdError, match="too much memory"):
        zstandard.ZstdDecompressor().decompressobj().decompress(raw)
    lines = _all_lines(path)
    assert [orjson.loads(line) for line in lines] == _records(3000)


@pytest.mark.parametrize("read_size", [7, 64, 1 << 20])
def test_frames_chunks_and_multibyte_characters_split_across_chunks(tmp_path, read_size):
    records = _records(500)
    path = write_zst_ndjson(tmp_path / "a.zst", records, frames=4)
    # Tiny compressed reads give tiny decompressed chunks: many UTF-8 sequences are cut in two.
    lines = _all_lines(path, read_size=read_size)
    assert [orjson.loads(line)["body"] for line in lines] == [r["body"] for r in records]


def test_last_line_without_trailing_newline_is_read(tmp_path):
    path = write_zst_ndjson(tmp_path / "a.zst", _records(10), frames=2, trailing_newline=False)
    assert len(_all_lines(path)) == 10
    plain = tmp_path / "b.jsonl"
    plain.write_bytes(b'{"id":"x"}\n{"id":"y"}')
    progress = ReadProgress()
    assert list(iter_lines(iter_chunks(plain), progress)) == [b'{"id":"x"}', b'{"id":"y"}']
    assert progress.lines == 2


def test_truncated_file_raises_with_offset_after_yielding_what_was_readable(tmp_path):
    path = write_zst_ndjson(tmp_path / "RC_2020-02.zst", _records(4000), frames=4)
    truncated = tmp_path / "RC_trunc.zst"
    truncated.write_bytes(path.read_bytes()[: int(path.stat().st_size * 0.6)])
    got = []
    with pytest.raises(DumpReadError) as caught:
        for line in iter_lines(iter_chunks(truncated, read_size=4096)):
            got.append(orjson.loads(line))
    error = caught.value
    assert error.path == truncated and "RC_trunc.zst" in str(error) and "truncated" in str(error)
    assert error.compressed_offset == truncated.stat().st_size
    assert 0 < error.frame_offset < error.compressed_offset
    assert len(got) >= 2000  # two complete frames and part of the third
    assert got == _records(4000)[: len(got)]


@pytest.mark.parametrize("cut", [1, 3, 4, 5])
def test_a_file_cut_in_its_last_block_or_checksum_is_truncated(tmp_path, cut):
    path = write_zst_ndjson(tmp_path / "a.zst", _records(100), frames=2)
    truncated = tmp_path / "cut.zst"
    truncated.write_bytes(path.read_bytes()[:-cut])
    with pytest.raises(DumpReadError, match="truncated"):
        list(iter_lines(iter_chunks(truncated, read_size=256)))


@pytest.mark.parametrize("garbage", [b"this is not zstd at all", b"junk\n", b"\x00"])
def test_trailing_garbage_is_reported_after_every_line_before_it(tmp_path, garbage):
    path = write_zst_ndjson(tmp_path / "a.zst", _records(100), frames=4)
    path.write_bytes(path.read_bytes() + garbage)
    got = []
    with pytest.raises(DumpReadError) as caught:
        got.extend(iter_lines(iter_chunks(path)))
    assert len(got) == 100  # the decompressor never sees the garbage, so it loses no output to it
    assert caught.value.compressed_offset == caught.value.frame_offset == path.stat().st_size - len(garbage)


@pytest.mark.parametrize("cut_header", [b"\x28\xb5\x2f", b"\x28\xb5\x2f\xfd\x04", b"\x28\xb5\x2f\xfd\xe0\x01\x02\x03\x04"])
def test_a_file_ending_in_a_cut_frame_header_names_that_frame(tmp_path, cut_header):
    """The truncation is in the frame whose header is cut, not in the last whole frame (it named that one)."""
    path = write_zst_ndjson(tmp_path / "a.zst", _records(100), frames=4)
    whole = path.stat().st_size
    path.write_bytes(path.read_bytes() + cut_header)
    got = []
    with pytest.raises(DumpReadError, match="truncated") as caught:
        got.extend(iter_lines(iter_chunks(path)))
    assert len(got) == 100 and caught.value.frame_offset == whole


def test_a_broken_frame_header_keeps_the_frames_before_it(tmp_path):
    path = write_zst_ndjson(tmp_path / "a.zst", _records(4000), frames=4)
    data = bytearray(path.read_bytes())
    walker = _FrameWalker()
    walker.feed(bytes(data))
    third = walker.frame_starts[2]
    data[third : third + 4] = bytes(4)
    path.write_bytes(bytes(data))
    got = []
    with pytest.raises(DumpReadError, match="not a zstd frame") as caught:
        got.extend(orjson.loads(line) for line in iter_lines(iter_chunks(path)))
    assert got == _records(4000)[:2000] and caught.value.frame_offset == third


def _single_segment_frame(content_size: int) -> bytes:
    """A frame header declaring ``content_size`` (8-byte field, single segment: the window is the content size),
    then one raw 1-byte block."""
    return b"\x28\xb5\x2f\xfd\xe0" + content_size.to_bytes(8, "little") + (0b1001).to_bytes(3, "little") + b"x"


@pytest.mark.parametrize(("declared", "reason"), [
    (lambda header: header[:5] + b"\xb0" + header[6:], "window is 4,294,967,296 bytes"),  # window descriptor: 2**32
    (lambda header: header[:5] + b"\xa9" + header[6:], r"window is 2,415,919,104 bytes \(2.25 GiB\)"),  # 2**31 * (1 + 1/8)
    (lambda header: _single_segment_frame(2**31 + 1), "window is 2,147,483,649 bytes"),  # one byte over: named in bytes
    (lambda header: header[:4] + bytes([header[4] | 0x08]) + header[5:], "reserved bit"),
])
def test_a_frame_header_the_decoder_refuses_keeps_the_frames_before_it(tmp_path, declared, reason):
    """A frame declaring a window above the dumps' 2 GiB (the decoder's "Frame requires too much memory"), or
    a reserved header bit: every line of the frames before is read, and the error names that frame.
    The decoder used to get the header and fail inside a read that held the earlier frames' output too."""
    path = write_zst_ndjson(tmp_path / "a.zst", _records(4), frames=2)
    data = path.read_bytes()
    walker = _FrameWalker()
    walker.feed(data)
    second = walker.frame_starts[1]
    assert data[second + 5] == 0xA8  # the writer's window: 2**31, which the reader takes
    path.write_bytes(data[:second] + declared(data[second:]))
    with pytest.raises(zstandard.ZstdError):  # the decoder itself refuses the frame, so the walker may too
        zstandard.ZstdDecompressor(max_window_size=2**31).decompressobj().decompress(path.read_bytes()[second:])
    got = []
    with pytest.raises(DumpReadError, match=reason) as caught:
        got.extend(orjson.loads(line) for line in iter_lines(iter_chunks(path)))
    assert got == _records(4)[:2]
    assert caught.value.frame_offset == caught.value.compressed_offset == second


def test_the_largest_window_the_dumps_use_is_taken(tmp_path):
    """2**31 exactly, as a window descriptor (the writer's) and as a single segment's content size: the
    walker's limit is the decoder's, not one byte lower."""
    walker = _FrameWalker()
    walker.feed(_single_segment_frame(2**31))
    assert not walker.error and walker.complete
    path = write_zst_ndjson(tmp_path / "two.zst", _records(4), frames=2)
    whole, byte_by_byte = _FrameWalker(), _FrameWalker()  # a header cut between reads is read once it is whole
    whole.feed(path.read_bytes())
    for byte in path.read_bytes():
        byte_by_byte.feed(bytes([byte]))
    assert byte_by_byte.frame_starts[-1] == whole.frame_starts[-1] and byte_by_byte.complete and not byte_by_byte.error
    path = write_zst_ndjson(tmp_path / "a.zst", _records(3))
    assert [orjson.loads(line) for line in _all_lines(path)] == _records(3)


def test_a_file_of_many_tiny_frames_is_read_in_bounded_memory(tmp_path):
    """100,000 empty frames (9 bytes each, 0.9 MB; a GB of them is 110 million), then garbage: the walker keeps
    only the frame starts an error may still name (it kept every one: ~36 bytes of list and int per frame,
    175 MB of RSS for a 65 MB file of 5 million), and still names the right frame."""
    empty = zstandard.ZstdCompressor().compress(b"")
    first = write_zst_ndjson(tmp_path / "first.zst", _records(3)).read_bytes()
    path = tmp_path / "tiny_frames.zst"
    path.write_bytes(first + empty * 100_000 + write_zst_ndjson(tmp_path / "last.zst", _records(2)).read_bytes()
                     + b"junk")
    walker = _FrameWalker()
    data = path.read_bytes()
    for start in range(0, len(data), 1 << 12):
        walker.feed(data[start : start + (1 << 12)])
        assert len(walker.frame_starts) <= (1 << 12) // len(empty) + 2  # a 4 KiB read's frames, and the one before
    last = len(first) + len(empty) * 100_000
    assert walker.error == "not a zstd frame" and walker.frame_start_before(walker.boundary) == len(data) - 4
    assert walker.frame_start_before(len(data) - 5) == last
    for read_size in (1 << 12, 1 << 20):
        got = []
        with pytest.raises(DumpReadError, match="not a zstd frame") as caught:
            got.extend(orjson.loads(line) for line in iter_lines(iter_chunks(path, read_size=read_size)))
        assert got == _records(3) + _records(2) and caught.value.frame_offset == len(data) - 4


@pytest.mark.parametrize("compression", ["xz", "bz2", "gzip"])
def test_older_pushshift_compressions_are_read_and_their_truncation_reported(tmp_path, compression):
    import bz2
    import gzip
    import lzma

    compress = {"xz": lzma.compress, "bz2": bz2.compress, "gzip": gzip.compress}[compression]
    records = _records(3000)
    body = b"".join(orjson.dumps(record) + b"\n" for record in records)
    path = tmp_path / f"RC_2017-12.{ {'gzip': 'gz'}.get(compression, compression) }"
    path.write_bytes(compress(body[: len(body) // 2]) + compress(body[len(body) // 2 :]))  # two streams
    assert [orjson.loads(line) for line in _all_lines(path)] == records
    truncated = tmp_path / "cut"  # no suffix: recognised from its first bytes
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size * 3 // 4])
    got = []
    with pytest.raises(DumpReadError, match="truncated|corrupt") as caught:
        got.extend(orjson.loads(line) for line in iter_lines(iter_chunks(truncated, read_size=4096)))
    assert 1500 <= len(got) < 3000 and got == records[: len(got)] and caught.value.path == truncated


def test_format_comes_from_the_bytes_and_a_bom_is_dropped(tmp_path):
    """Download caches keep dumps as extension-less blobs behind symlinks; names may be upper case."""
    zst = write_zst_ndjson(tmp_path / "blob", _records(50), frames=2)
    link = tmp_path / "RC_2020-01.zst"
    link.symlink_to(zst)
    upper = tmp_path / "RS_2020-01.ZST"
    upper.write_bytes(zst.read_bytes())
    for path in (zst, link, upper):
        assert len(_all_lines(path)) == 50
    assert search_dump_files([tmp_path]).files == sorted([link.resolve(), upper])  # the blob has no dump suffix
    bom = tmp_path / "c.jsonl"
    bom.write_bytes(b'\xef\xbb\xbf{"id":"x"}\n{"id":"y"}\n')
    assert [orjson.loads(line) for line in _all_lines(bom)] == [{"id": "x"}, {"id": "y"}]
    not_zstd = tmp_path / "RC_2020-02.zst"  # named zstd but holding something else: damaged, not text
    not_zstd.write_bytes(b"<html>502 Bad Gateway</html>")
    with pytest.raises(DumpReadError, match="not a zstd frame"):
        _all_lines(not_zstd)


@pytest.mark.parametrize("name", ["RC_2020-03.zst", "RS_2020-03.ZSTD"])
def test_an_empty_zstd_file_is_damaged_not_an_empty_month(tmp_path, name):
    """A 0-byte .zst is a failed download: `zstd -d` says "unexpected end of file"."""
    empty = tmp_path / name
    empty.write_bytes(b"")
    with pytest.raises(DumpReadError, match=r"empty file \(no zstd frame\)") as caught:
        list(iter_chunks(empty))
    assert caught.value.compressed_offset == caught.value.frame_offset == 0 and caught.value.path == empty


@pytest.mark.parametrize("name", ["empty.jsonl", "empty.ndjson", "blob"])
def test_an_empty_plain_file_has_no_lines(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"")
    progress = ReadProgress()
    assert list(iter_lines(iter_chunks(path), progress)) == [] and progress.lines == 0


def test_corrupt_frame_names_file_and_offset(tmp_path):
    path = write_zst_ndjson(tmp_path / "a.zst", _records(4000), frames=4)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(64)
    corrupt = tmp_path / "corrupt.zst"
    corrupt.write_bytes(bytes(data))
    with pytest.raises(DumpReadError) as caught:
        list(iter_lines(iter_chunks(corrupt, read_size=1024)))
    assert "corrupt.zst" in str(caught.value) and "corrupt zstd data" in str(caught.value)
    assert caught.value.frame_offset <= middle < caught.value.compressed_offset + 1024


def test_a_corrupt_block_keeps_the_lines_before_it(tmp_path):
    path = write_zst_ndjson(tmp_path / "a.zst", _records(4000), frames=4)
    data = bytearray(path.read_bytes())
    third_frame = [m.start() for m in re.finditer(re.escape(b"\x28\xb5\x2f\xfd"), bytes(data))][2]
    damage = third_frame + 200
    data[damage : damage + 64] = bytes(64)
    corrupt = tmp_path / "corrupt.zst"
    corrupt.write_bytes(bytes(data))
    chunks = []
    with pytest.raises(DumpReadError, match="corrupt zstd data") as caught:
        for chunk in iter_chunks(corrupt):  # one read holds the whole file
            chunks.append(chunk)
    lines = list(iter_lines(chunks))
    assert [orjson.loads(line) for line in lines[:2000]] == _records(2000)  # the two frames before the damage
    reported = int(re.search(r"([\d,]+) decompressed bytes before it", str(caught.value))[1].replace(",", ""))
    assert reported == sum(map(len, chunks))


def _brute_force(data: bytes, needle: bytes) -> list[bytes]:
    return [line for line in data.split(b"\n") if needle in line]


@pytest.mark.parametrize("seed", range(4))
def test_selected_lines_match_a_brute_force_split(tmp_path, seed):
    rng = random.Random(seed)
    lines = []
    for i in range(3000):
        text = "".join(rng.choice("ab xyz\u00e9") for _ in range(rng.randint(0, 60)))
        if rng.random() < 0.05:
            text += " NEEDLE "
        lines.append(orjson.dumps({"i": i, "t": text}))
    trailing = seed % 2 == 0
    path = write_zst_ndjson(tmp_path / "a.zst", lines, frames=3, trailing_newline=trailing)

    def positions(chunk, start, end):
        index = chunk.find(b"NEEDLE", start, end)
        while index >= 0:
            yield index
            index = chunk.find(b"NEEDLE", index + 1, end)

    progress = ReadProgress()
    chunks = iter_chunks(path, progress, read_size=rng.choice([50, 333, 4096]))
    got = list(iter_selected_lines(chunks, positions, progress))
    assert got == _brute_force(b"\n".join(lines), b"NEEDLE")
    assert progress.lines == 3000


@pytest.mark.parametrize("block", [1, 5, 64, 1 << 17])
def test_block_searches_agree_with_bytes_methods_at_every_block_edge(block, monkeypatch):
    import numpy

    import reddit_amazon.dumps as dumps

    monkeypatch.setattr(dumps, "SEARCH_BLOCK", block)
    rng = random.Random(block)
    scratch = dumps.BlockScratch()
    for size in [0, 1, 4, 5, 63, 64, 65, 200, 1000]:  # sizes around the block, reusing the same arrays
        data = bytes(rng.choice(b"zZ\nab.") for _ in range(size))
        array = numpy.frombuffer(data, dtype=numpy.uint8)
        assert scratch.count(array, ord("\n")) == data.count(b"\n")
        assert scratch.find(array, ord(".")).tolist() == [m.start() for m in re.finditer(rb"\.", data)]
        assert scratch.find(array, ord("z"), ascii_case=True).tolist() == [m.start() for m in re.finditer(rb"[zZ]", data)]


def test_parse_line_counts_problems():
    problems = LineProblems()
    assert parse_line(b'{"id": "a"}', problems) == {"id": "a"}
    assert parse_line(b"{not json", problems) is None
    assert parse_line(b'{"body": "\xff\xfe"}', problems) is None
    assert parse_line(b"[1, 2]", problems) is None
    assert (problems.malformed_json, problems.invalid_utf8, problems.not_an_object) == (1, 1, 1)
    assert len(problems.examples) == 3


def test_a_line_without_end_is_cut_at_the_limit_in_bounded_memory(monkeypatch):
    import reddit_amazon.dumps as dumps

    monkeypatch.setattr(dumps, "MAX_LINE_BYTES", 1000)
    chunks = [b'{"a": 1}\n{"body": "NEEDLE ', *[b"x" * 300] * 50, b'"}\n{"b": 2}\n{"c": NEEDLE ' + b"y" * 5000]

    lines = list(iter_lines(iter(chunks)))
    assert [len(line) for line in lines] == [8, 1000, 8, 1000]  # the long ones cut; their neighbours intact

    def needles(chunk, start, end):
        index = chunk.find(b"NEEDLE", start, end)
        return [] if index < 0 else [index]

    progress = ReadProgress()
    selected = list(iter_selected_lines(iter(chunks), needles, progress))
    assert [len(line) for line in selected] == [1000, 1000] and progress.lines == 4
    assert parse_line(selected[0], LineProblems()) is None  # counted as malformed downstream

def _needles(chunk, start, end):
    return [m.start() for m in re.finditer(rb"NEEDLE", chunk[:end]) if m.start() >= start]


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 7, 16, 1000])
def test_selected_lines_are_placed_as_sed_and_tail_count(chunk_size):
    """Line numbers count from 1 with empty lines (``sed -n``), offsets from 0 in the decompressed text, for lines
    inside a chunk, across chunks, and the last one without a newline."""
    text = b'{"a": 1}\n\n{"b": NEEDLE}\n{"c": 3}\n{"d": "NEEDLE NEEDLE"}\n\n\n{"e": NEEDLE'
    lines = text.split(b"\n")
    starts = [sum(len(line) + 1 for line in lines[:index]) for index in range(len(lines))]
    expected = [(line, index + 1, starts[index]) for index, line in enumerate(lines) if b"NEEDLE" in line]
    chunks = [text[i : i + chunk_size] for i in range(0, len(text), chunk_size)]
    place = LinePlace()
    found = [(line, place.line_number, place.offset)
             for line in iter_selected_lines(iter(chunks), _needles, ReadProgress(), place)]
    assert found == expected == [(lines[2], 3, 10), (lines[4], 5, 33), (lines[7], 8, 58)]


def test_bad_lines_are_placed_in_the_report_without_their_text():
    problems = LineProblems()
    place = LinePlace()
    chunks = [b'{"ok": "NEEDLE"}\n{"broken NEEDLE\n[1, "NEEDLE"]\n{"x": "\xff NEEDLE"}\n']
    for line in iter_selected_lines(iter(chunks), _needles, ReadProgress(), place):
        parse_line(line, problems, place)
    assert [(bad["line"], bad["byte"], bad["problem"]) for bad in problems.first_bad_lines] == [
        (2, 17, "malformed_json"), (3, 33, "not_an_object"), (4, 47, "invalid_utf8")]
    assert problems.first_bad_lines[1]["why"] == "a JSON array, not an object"
    assert "NEEDLE" not in repr(problems.first_bad_lines)  # publishable: no dump text
    assert problems.examples[0].startswith("malformed_json at line 2 (byte 17): {\"broken NEEDLE")
    for _ in range(10):
        problems.add("missing_fields", b"{}", place)
    assert len(problems.first_bad_lines) == len(problems.examples) == 5  # bounded


def test_a_text_cut_inside_an_emoji_is_kept():
    problems = LineProblems()
    record = parse_line(b'{"body": "cut \\ud83d here, whole \\ud83d\\ude00", "id": "a"}', problems)
    assert record == {"body": "cut \ufffd here, whole \U0001F600", "id": "a"}
    assert problems.lone_surrogates_replaced == 1 and problems.malformed_json == 0
    assert orjson.loads(orjson.dumps(record)) == record  # writable downstream
    assert parse_line(b'{"body": "\\ud83d", broken', problems) is None and problems.malformed_json == 1


def test_a_deeply_nested_line_with_a_cut_emoji_is_counted_not_fatal():
    # orjson stops at the lone surrogate; the fallback parser must not crash on the nesting that follows
    problems = LineProblems()
    line = b'{"body": "\\ud83d amazon.com/dp/B000000001", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert parse_line(line, problems) is None
    assert problems.malformed_json == 1

def test_field_quirks():
    assert bare_id("t3_abc12") == "abc12" and bare_id("t1_x9") == "x9" and bare_id("abc12") == "abc12"
    assert bare_id("t5_2qh1i") == "2qh1i" and bare_id(None) == "" and bare_id("tea_x") == "tea_x"
    assert parse_created_utc(1600000000) == 1600000000
    assert parse_created_utc("1600000000") == 1600000000
    assert parse_created_utc("1600000000.0") == 1600000000
    assert parse_created_utc(1600000000.7) == 1600000000
    assert parse_created_utc(None) is None and parse_created_utc("soon") is None and parse_created_utc(True) is None
    # out of range: would overflow the int64 column (one such line used to abort the whole stage)
    assert [parse_created_utc(v) for v in (1e20, "inf", "nan", float("nan"), -1e300, -5, 10**30)] == [None] * 7
    assert [text_state(t) for t in ["[deleted]", " [removed] ", "", None, "[deleted by user]", "ok [deleted]"]] == [
        "deleted",
        "removed",
        "empty",
        "empty",
        "deleted",
        "ok",
    ]


def test_plain_ndjson_is_read_and_bad_lines_are_skipped(tmp_path):
    path = tmp_path / "x.ndjson"
    path.write_bytes(b'{"id":"a"}\n\n{oops\n{"id":"b"}\n')
    problems = LineProblems()
    records = [parse_line(line, problems) for line in _all_lines(path)]
    assert [r["id"] for r in records if r is not None] == ["a", "b"]
    assert problems.malformed_json == 1


@pytest.mark.parametrize("trailing_newline", [True, False])
def test_streamed_writer_cuts_frames_by_size(tmp_path, trailing_newline):
    records = _records(2000)
    path = write_zst_ndjson(tmp_path / "a.zst", (r for r in records), frame_bytes=20_000,
                            trailing_newline=trailing_newline)  # a generator: no length to count
    walker = _FrameWalker()
    walker.feed(path.read_bytes())
    payload = sum(len(orjson.dumps(r)) + 1 for r in records)
    assert walker.complete and len(walker.frame_starts) == -(-payload // 20_000)  # each frame ends past 20,000 B
    assert [orjson.loads(line) for line in _all_lines(path)] == records
    text = b"".join(iter_chunks(path))
    assert text.endswith(b"\n") == trailing_newline and text.count(b"\n") == len(records) - (not trailing_newline)


def test_writer_never_leaves_a_partial_file(tmp_path):
    def records():
        yield {"id": "a"}
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        write_zst_ndjson(tmp_path / "a.zst", records())
    assert not (tmp_path / "a.zst").exists()
    assert not any(re.fullmatch(r"a\.zst", p.name) for p in tmp_path.iterdir())
    assert not list(tmp_path.iterdir())  # no temporary file either


def test_skippable_frames_are_followed(tmp_path):
    import struct

    path = write_zst_ndjson(tmp_path / "a.zst", _records(10), frames=2)
    skippable = struct.pack("<II", 0x184D2A50, 5) + b"hello"
    path.write_bytes(skippable + path.read_bytes() + skippable)
    assert len(_all_lines(path, read_size=7)) == 10
    path.write_bytes(path.read_bytes()[:-2])  # cut inside the trailing skippable frame
    with pytest.raises(DumpReadError, match="truncated"):
        _all_lines(path)


def test_a_gzip_dump_arriving_through_a_named_pipe_is_read(tmp_path):
    """A download still being written can be read as it comes: no seeking, not even tell()."""
    import gzip
    import os
    import threading

    fifo = tmp_path / "RC_2017-12.gz"
    os.mkfifo(fifo)
    body = b"".join(orjson.dumps(record) + b"\n" for record in _records(2000))
    writer = threading.Thread(target=lambda: fifo.write_bytes(gzip.compress(body)), daemon=True)
    writer.start()
    progress = ReadProgress()
    assert [orjson.loads(line) for line in iter_lines(iter_chunks(fifo, progress))] == _records(2000)
    assert 0 < progress.compressed_bytes < len(body)


@pytest.mark.parametrize("compressed", [False, True])
def test_a_bad_line_after_a_bom_is_placed_from_the_files_first_byte(tmp_path, compressed):
    """The BOM is dropped before lines are split, but ``tail -c +$((byte + 1))`` counts it: so does ``byte``."""
    text = b'\xef\xbb\xbf{"a": 1}\n{"broken NEEDLE\n{"c": "NEEDLE"}\n[1, "NEEDLE"]'
    path = tmp_path / "bom.jsonl"
    path.write_bytes(text)
    if compressed:
        path = write_zst_ndjson(tmp_path / "bom.zst", [line for line in text.split(b"\n")], trailing_newline=False)
    progress = ReadProgress()
    problems = LineProblems()
    place = LinePlace()
    for line in iter_selected_lines(iter_chunks(path, progress, read_size=4), _needles, progress, place):
        parse_line(line, problems, place)
    placed = [(bad["line"], bad["byte"]) for bad in problems.first_bad_lines]
    assert placed == [(2, 12), (4, 44)]
    for line_number, byte in placed:
        assert text[byte:].split(b"\n")[0] == text.split(b"\n")[line_number - 1]  # what `tail -c +{byte + 1}` shows


def test_searching_a_folder_of_many_dumps_stats_per_folder_not_per_file(tmp_path, monkeypatch):
    """The search listed folders with Path.rglob and asked each entry is_file(): one stat per file, on a shared file
    system holding thousands of monthly dumps and their neighbours. The listing says which entries are files; the
    folder filter sees each folder's names once."""
    for month in range(40):
        folder = tmp_path / f"batch-{month:02d}"
        folder.mkdir()
        for index in range(50):
            (folder / f"RC_{month:02d}-{index:02d}.zst").touch()
            (folder / f"notes-{index:02d}.txt").touch()
    seen_by_filter = []

    def leave_out(folder, names):
        seen_by_filter.append(folder)
        return "skipped" if folder.name == "batch-07" else None

    stats = []
    real_stat = os.stat
    monkeypatch.setattr(os, "stat", lambda *args, **kwargs: stats.append(args[0]) or real_stat(*args, **kwargs))
    search = search_dump_files([tmp_path], leave_out)
    monkeypatch.undo()
    assert len(search.files) == 39 * 50 and all(p.name.startswith("RC_") for p in search.files)
    assert [(f.folder.name, f.dump_named_files) for f in search.left_out] == [("batch-07", 50)]
    assert sorted(seen_by_filter) == sorted([tmp_path, *tmp_path.iterdir()])
    assert len(stats) < 10, stats[:20]


def test_a_link_that_leads_to_no_file_is_passed_over_like_a_broken_one(tmp_path):
    """A link in a loop, or through a file, named like a dump stopped the search with OSError ("Too many levels of
    symbolic links"); the rglob-based search took it for no file, as it does a broken link."""
    (tmp_path / "RC_2020-01.zst").touch()
    (tmp_path / "blob").touch()
    (tmp_path / "loop.jsonl").symlink_to(tmp_path / "loop.jsonl")
    (tmp_path / "through-a-file.zst").symlink_to(tmp_path / "blob" / "x")
    (tmp_path / "broken.zst").symlink_to(tmp_path / "nowhere")
    (tmp_path / "link.zst").symlink_to(tmp_path / "blob")
    assert search_dump_files([tmp_path]).files == sorted(p.resolve() for p in (tmp_path / "RC_2020-01.zst",
                                                                               tmp_path / "blob"))


def test_a_folder_left_out_under_inputs_that_overlap_is_named_once(tmp_path):
    """`reddit-stage dumps dumps/2020` (or a folder named twice) read each dump once but warned twice about a work
    folder under both."""
    (tmp_path / "2020" / "old-work").mkdir(parents=True)
    (tmp_path / "2020" / "RC_2020-01.zst").touch()
    (tmp_path / "2020" / "old-work" / "part.jsonl").touch()
    search = search_dump_files([tmp_path, tmp_path / "2020", tmp_path],
                               lambda folder, names: "a work folder" if folder.name == "old-work" else None)
    assert search.files == [(tmp_path / "2020" / "RC_2020-01.zst").resolve()]
    assert [(f.folder.name, f.dump_named_files) for f in search.left_out] == [("old-work", 1)]


def test_a_left_out_folder_without_files_named_like_dumps_is_not_named(tmp_path):
    """`build --inputs .` beside the dataset folder it wrote (parquet shards only) warned "left out 0 file(s) named
    like dumps in reddit-amazon": leaving out a folder that holds nothing the search would read changes nothing."""
    (tmp_path / "RC_2020-01.zst").touch()
    for folder, name in (("reddit-amazon", "data/beauty/test-00000.parquet"), ("old-work", "reddit/part.jsonl")):
        (tmp_path / folder / name).parent.mkdir(parents=True)
        (tmp_path / folder / name).touch()
    search = search_dump_files([tmp_path], lambda folder, names: "ours" if folder != tmp_path else None)
    assert search.files == [(tmp_path / "RC_2020-01.zst").resolve()]
    assert [(f.folder.name, f.dump_named_files) for f in search.left_out] == [("old-work", 1)]


def test_json_lines_under_a_zstd_name_are_damaged_with_the_rename_that_reads_them(tmp_path):
    """An NDJSON file named .zst (decompressed in place, renamed by hand) was "not a zstd frame at compressed byte 0",
    the message of any junk: it now says what the file holds and what to do; other junk keeps the plain message."""
    records = [{"id": "a", "body": "x"}, {"id": "b", "body": "y"}]
    text = b"".join(orjson.dumps(r) + b"\n" for r in records)
    for name, content in [("RC_2023-01.zst", text), ("RS_2023-01.ZSTD", b"\xef\xbb\xbf\n" + text),
                          ("arctic.zst", orjson.dumps(records))]:
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(DumpReadError) as caught:
            _all_lines(path)
        assert caught.value.detail.startswith(
            "not a zstd frame (the file holds uncompressed JSON text under a zstd name: rename it .jsonl to read it) "
            "at compressed byte 0"), caught.value.detail
        renamed = path.rename(tmp_path / (name.split(".")[0] + ".jsonl"))
        assert b"".join(_all_lines(renamed)).count(b'"id"') == 2
    junk = tmp_path / "RC_2020-02.zst"
    junk.write_bytes(b"<html>502 Bad Gateway</html>")
    with pytest.raises(DumpReadError) as caught:
        _all_lines(junk)
    assert caught.value.detail.startswith("not a zstd frame at compressed byte 0")
