"""Streaming reader (and writer) for Reddit dump files: pushshift / Arctic Shift ``.zst`` and plain NDJSON.

The dumps are NDJSON compressed as a zstd *stream* with a window of up to 2 GiB, so the decoder
is created with ``max_window_size=2**31`` (default decoders refuse these files). Reading is in
bytes and constant-memory: decompressed chunks are split on ``b"\\n"`` (a multi-byte character
split between two chunks is rejoined before anything is decoded), the last line is read even
without a trailing newline, and a truncated or corrupt file raises :class:`DumpReadError` naming
the file and byte offset after everything before the damage has been yielded.

The fast path, :func:`iter_selected_lines`, looks at whole chunks with C-speed searches and only
cuts out the lines around a match, so a scan costs little more than decompression.
"""

from __future__ import annotations

import bisect
import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy
import orjson

from reddit_amazon.files import open_atomic, printable_path

#: The largest window the dumps use (``zstd --long=31``).
MAX_WINDOW_SIZE = 2**31
#: Compressed bytes read per step. A decompressed chunk is 4x that (1 MiB): small enough to stay in
#: the CPU cache while the prefilter's passes go over it (1 MiB measured fastest, 4 MiB ~25% slower).
READ_SIZE = 1 << 18
#: The longest line kept whole. Dump and Amazon lines are at most a few MiB; a longer one (a damaged or hostile
#: file: a few KiB of zstd hold a GiB without a newline) is cut here and counted as malformed, as too long.
MAX_LINE_BYTES = 64 << 20

ZST_SUFFIXES = (".zst", ".zstd")
PLAIN_SUFFIXES = (".jsonl", ".ndjson")
#: Older Pushshift dumps (``RC_2005-12.bz2``, ``RC_2017-12.xz``) and gzipped exports.
OTHER_COMPRESSED_SUFFIXES = (".xz", ".bz2", ".gz")
DUMP_SUFFIXES = ZST_SUFFIXES + PLAIN_SUFFIXES + OTHER_COMPRESSED_SUFFIXES

_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_ZSTD_SKIPPABLE_TAIL = b"\x2a\x4d\x18"  # bytes 1-3 of a skippable frame's magic 0x184D2A5?
#: How a file of another compression starts (the format comes from the bytes, not the name: a
#: download cache keeps files as extension-less blobs behind symlinks).
_OTHER_MAGIC = {"xz": b"\xfd7zXZ\x00", "bz2": b"BZh", "gzip": b"\x1f\x8b"}
UTF8_BOM = b"\xef\xbb\xbf"


class DumpReadError(Exception):
    """A dump file is truncated or corrupt. Lines before the damage have been read."""

    def __init__(self, path: Path, compressed_offset: int, reason: str, frame_offset: int,
                 decompressed_read: int | None = None):
        self.path = Path(path)
        self.compressed_offset = compressed_offset  # where the damage was noticed
        self.frame_offset = frame_offset  # the damage is in the frame (or stream) starting here, or later
        self.reason = reason
        #: The message without the path (reports list it under the path already).
        read = (f"{decompressed_read:,} decompressed bytes before it were read" if decompressed_read
                else "nothing before it was read")
        self.detail = (f"{reason} at compressed byte {compressed_offset:,} (the damage is in the compressed frame "
                       f"starting at byte {frame_offset:,} or later; {read})")
        super().__init__(f"{path}: {self.detail}")


def is_dump_file(path: Path) -> bool:
    return path.name.lower().endswith(DUMP_SUFFIXES)


def compression_of(head: bytes, path: Path) -> str:
    """``"zstd"``, ``"xz"``, ``"bz2"``, ``"gzip"`` or ``"plain"`` for a file starting with ``head``.

    A file named ``.zst`` that does not start like zstd is still read as zstd, so that it is
    reported as damaged instead of being scanned as text.
    """
    if len(head) >= 4 and _could_start_a_frame(head[:4]):
        return "zstd"
    for kind, magic in _OTHER_MAGIC.items():
        if head.startswith(magic):
            return kind
    return "zstd" if path.name.lower().endswith(ZST_SUFFIXES) else "plain"


#: Why a folder met in the search of an input folder is not searched (``None``: it is), from the folder and the
#: names of its entries: the caller knows which folders hold its own output rather than dumps.
FolderFilter = Callable[[Path, frozenset[str]], str | None]


@dataclass(frozen=True)
class LeftOutFolder:
    """A folder under an input folder that the search of dumps did not read, though it holds files named like dumps."""

    folder: Path
    why: str
    dump_named_files: int  # files in it (at any depth) named like dumps, none of them read

    def line(self) -> str:
        return f"left out {self.dump_named_files} file(s) named like dumps in {printable_path(self.folder)}: {self.why}"


@dataclass(frozen=True)
class DumpSearch:
    files: list[Path]  # resolved and sorted
    left_out: list[LeftOutFolder]


def search_dump_files(inputs: Iterable[str | os.PathLike], leave_out: FolderFilter | None = None) -> DumpSearch:
    """The dump files named by ``inputs``: files, or folders searched recursively, where ``leave_out`` decides per
    folder (the input folders too) whether to search it, from the listing the search makes anyway; a file named
    in ``inputs`` is always taken. Symlinked folders are not followed.

    Raises ``FileNotFoundError`` naming the input when one does not exist or a folder holds no
    dump file, so a typo fails before any work starts.
    """
    files: list[Path] = []
    left_out: list[LeftOutFolder] = []
    for given in map(Path, inputs):
        if given.is_dir():
            left_before = len(left_out)
            found = sorted(_dump_files_under(given.resolve(), leave_out, left_out))
            if not found:
                why = "".join(f"; {folder.line()}" for folder in left_out[left_before:])
                raise FileNotFoundError(f"{given}: no dump files ({', '.join(DUMP_SUFFIXES)}) inside{why}")
            files.extend(found)
        elif given.exists():  # a named pipe too: the readers stream it (the Reddit stage, reading twice, refuses it)
            files.append(given.resolve())
        else:
            raise FileNotFoundError(f"{given}: no such dump file or folder")
    if not files:
        raise FileNotFoundError("no dump files given")
    # overlapping inputs (a folder and one inside it) meet a left-out folder more than once
    return DumpSearch(sorted(dict.fromkeys(files)), list(dict.fromkeys(left_out)))


def _dump_files_under(root: Path, leave_out: FolderFilter | None, left_out: list[LeftOutFolder]) -> Iterator[Path]:
    """The dump files under the resolved folder ``root``, resolved. One listing per folder (``os.scandir``: whether
    an entry is a file, a folder or a link comes with it), so no stat per file, and only a link is resolved (a path
    under a resolved folder that is no link is resolved already); ``leave_out`` sees a folder's entry names, so it
    costs a look-up only where a name suggests one."""
    folders = [root]
    while folders:
        folder = folders.pop()
        entries = _listing(folder)
        why = leave_out(folder, frozenset(entry.name for entry in entries)) if leave_out else None
        if why is not None:
            if dump_named := sum(1 for _ in _dump_files_under(folder, None, [])):  # else leaving it out changes nothing
                left_out.append(LeftOutFolder(folder, why, dump_named))
            continue
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                folders.append(Path(entry.path))
            elif is_dump_file(Path(entry.name)) and (file := _file_of(entry)) is not None:
                yield file


def _file_of(entry: os.DirEntry) -> Path | None:
    """The file ``entry`` is, or the one it links to, resolved; ``None`` for anything else. A link is asked through
    :meth:`Path.is_file`, as the rglob-based search did: a link in a loop or through a file is no file, where
    ``DirEntry.is_file`` raises ``OSError`` and ends the search."""
    if entry.is_symlink():
        path = Path(entry.path)
        return path.resolve() if path.is_file() else None
    return Path(entry.path) if entry.is_file(follow_symlinks=False) else None


def _listing(folder: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as entries:
            return list(entries)
    except PermissionError:  # skipped, as Path.rglob skips a folder it may not list
        return []


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


@dataclass
class ReadProgress:
    """Counters a reader updates while it runs (shown by progress bars, saved in the funnel)."""

    compressed_bytes: int = 0
    uncompressed_bytes: int = 0
    lines: int = 0
    #: The UTF-8 BOM that :func:`iter_chunks` dropped (0 or 3 bytes): byte offsets count it, as ``tail -c`` does.
    bom_bytes: int = 0


class _FrameWalker:
    """Follows zstd frame and block headers as compressed bytes go by.

    python-zstandard's stream reader is the fastest way to decompress (about twice the speed of a
    ``decompressobj``) but ends silently when a file stops inside a frame. This walker reads only
    the few header bytes (frame header, 3-byte block headers, checksum) to know, at the end,
    whether the last frame was complete, and where each frame started.
    """

    _SKIPPABLE = 0x184D2A50
    _MAGIC = 0xFD2FB528

    def __init__(self) -> None:
        self.position = 0  # compressed bytes seen
        self.boundary = 0  # where the next header starts
        self.expect = "frame"  # the kind of that header: frame, block or checksum
        self.has_checksum = False
        #: The starts of the frames that an error may still name: the last one before the latest read and those in it
        #: (damage is always found in the latest read). All of them would grow with the number of frames: a file of
        #: millions of empty 13-byte frames.
        self.frame_starts: list[int] = []
        self.error = ""
        self._pending = b""

    def feed(self, data: bytes) -> None:
        self._forget_frames_before(min(self.position, self.boundary))
        base = self.position
        self.position += len(data)
        if self._pending:
            base -= len(self._pending)
            data = self._pending + data
            self._pending = b""
        while not self.error:
            local = self.boundary - base
            if local >= len(data):
                return
            size = self._header(data, local)
            if size is None:
                self._pending = data[local:]
                return

    def _header(self, data: bytes, local: int) -> int | None:
        """Parse the header at ``data[local:]``; advance ``boundary``. ``None``: needs more bytes."""
        available = len(data) - local
        if self.expect == "block":
            if available < 3:
                return None
            value = int.from_bytes(data[local : local + 3], "little")
            block_type = (value >> 1) & 3
            if block_type == 3:
                self.error = "reserved zstd block type"
                return 0
            self.boundary += 3 + (1 if block_type == 1 else value >> 3)
            if value & 1:
                self.expect = "checksum" if self.has_checksum else "frame"
            return 3
        if self.expect == "checksum":
            self.boundary += 4
            self.expect = "frame"
            return 4
        self._frame_starts_here()  # also for a header still cut: a file ending in it names this frame
        if available < 8:
            if not _could_start_a_frame(data[local : local + 4]):
                self.error = "not a zstd frame"  # known now: the decompressor must not get these bytes
                return 0
            return None
        magic = int.from_bytes(data[local : local + 4], "little")
        if magic & 0xFFFFFFF0 == self._SKIPPABLE:
            self.boundary += 8 + int.from_bytes(data[local + 4 : local + 8], "little")
            return 8
        if magic != self._MAGIC:
            self.error = "not a zstd frame"
            return 0
        descriptor = data[local + 4]
        single_segment = (descriptor >> 5) & 1
        content_size_bytes = (1 if single_segment else 0, 2, 4, 8)[descriptor >> 6]
        header = 5 + (0 if single_segment else 1) + (0, 1, 2, 4)[descriptor & 3] + content_size_bytes
        if available < header:
            return None
        # Headers the decoder refuses are stopped here, so it never gets them: an error inside its read would lose
        # the output of the frames before (and name the wrong frame).
        if descriptor & 0x08:
            self.error = "broken zstd frame header (its reserved bit is set)"
            return 0
        window = _window_size(data[local : local + header], single_segment, content_size_bytes)
        if window > MAX_WINDOW_SIZE:
            self.error = (f"a zstd frame whose window is {window:,} bytes ({window / 2**30:,.4g} GiB), more than the "
                          f"{MAX_WINDOW_SIZE:,} (2 GiB, zstd --long=31) of the dumps that the reader allows")
            return 0
        self.has_checksum = bool((descriptor >> 2) & 1)
        self.boundary += header
        self.expect = "block"
        return header

    def _forget_frames_before(self, offset: int) -> None:
        """Drop the frame starts before the last one at or before ``offset``."""
        last_needed = bisect.bisect_right(self.frame_starts, offset) - 1
        if last_needed > 0:
            del self.frame_starts[:last_needed]

    def _frame_starts_here(self) -> None:
        if not self.frame_starts or self.frame_starts[-1] != self.boundary:  # once, however often a cut header is read
            self.frame_starts.append(self.boundary)

    @property
    def complete(self) -> bool:
        return not self.error and self.expect == "frame" and self.boundary == self.position

    def frame_start_before(self, offset: int) -> int:
        return max((start for start in self.frame_starts if start <= offset), default=0)


def _window_size(header: bytes, single_segment: int, content_size_bytes: int) -> int:
    """The decoding window a zstd frame ``header`` declares (RFC 8878, 3.1.1.1): its content size for a
    single-segment frame, else the window descriptor's ``2**(10 + exponent) * (1 + mantissa / 8)``."""
    if single_segment:
        size = int.from_bytes(header[len(header) - content_size_bytes :], "little")
        return size + 256 if content_size_bytes == 2 else size
    exponent, mantissa = header[5] >> 3, header[5] & 7
    base = 1 << (10 + exponent)
    return base + (base >> 3) * mantissa


def _could_start_a_frame(head: bytes) -> bool:
    """Whether ``head`` (up to 4 bytes) can begin a zstd or skippable frame's magic number (with 4
    bytes: whether it is one)."""
    if _ZSTD_MAGIC.startswith(head):
        return True
    return head[:1] == b"" or (head[0] & 0xF0 == 0x50 and _ZSTD_SKIPPABLE_TAIL.startswith(head[1:]))


class _CountedFile:
    """A binary file whose reads add to the progress counter and to its own position (no tell(): pipes)."""

    def __init__(self, raw: BinaryIO, progress: ReadProgress):
        self.raw = raw
        self.progress = progress
        self.position = 0

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.position += len(data)
        self.progress.compressed_bytes += len(data)
        return data

    def readable(self) -> bool:
        return True


class _WalkedFile(_CountedFile):
    """A binary file whose reads also feed a :class:`_FrameWalker`, and stop at the damage it finds."""

    def __init__(self, raw: BinaryIO, walker: _FrameWalker, progress: ReadProgress):
        super().__init__(raw, progress)
        self.walker = walker
        self.last_read = 0

    def read(self, size: int = -1) -> bytes:
        if self.walker.error:  # the decompressor has had every byte before the damage
            return b""
        start = self.walker.position
        data = super().read(size)
        self.walker.feed(data)
        if self.walker.error:
            # Hand over only the bytes before the bad header: the decompressor then finishes every
            # complete frame before it normally (an error inside its read would lose that output).
            data = data[: max(0, self.walker.boundary - start)]
        self.last_read = len(data)
        return data


def iter_chunks(path: Path, progress: ReadProgress | None = None, read_size: int = READ_SIZE) -> Iterator[bytes]:
    """Decompressed bytes of ``path`` in chunks, frame after frame, without a leading UTF-8 BOM (its size is
    recorded in ``progress.bom_bytes`` before the first chunk is yielded).

    The compression (zstd, xz, bz2, gzip or none) is recognised from the first bytes. Raises
    :class:`DumpReadError` at the first corrupt frame, after the last readable bytes when the
    file ends inside a frame, or when a zstd file holds no frame at all (an empty file).
    """
    path = Path(path)
    progress = progress if progress is not None else ReadProgress()
    with open(path, "rb") as raw:
        head = raw.peek(8)[:8]
        compression = compression_of(head, path)
        if compression == "zstd" and not _could_start_a_frame(head[:4]) and _starts_like_json(raw.peek(64)):
            raise DumpReadError(path, 0, JSON_UNDER_A_ZSTD_NAME, 0)
        if compression == "zstd":
            chunks = _zstd_chunks(path, raw, read_size, progress)
        elif compression == "plain":
            chunks = _plain_chunks(raw, read_size, progress)
        else:
            chunks = _stdlib_chunks(path, raw, compression, read_size, progress)
        head = next(chunks, b"")
        first = head.removeprefix(UTF8_BOM)
        progress.bom_bytes = len(head) - len(first)
        if first:
            yield first
        yield from chunks


#: Why a file named ``.zst`` that holds plain JSON Lines is not read (a download decompressed in place, a file
#: renamed by hand): damaged like any other file under a zstd name that is no zstd, but the remedy is a rename.
JSON_UNDER_A_ZSTD_NAME = ("not a zstd frame (the file holds uncompressed JSON text under a zstd name: rename it "
                          ".jsonl to read it)")


def _starts_like_json(head: bytes) -> bool:
    return head.removeprefix(UTF8_BOM).lstrip()[:1] in (b"{", b"[")


def _plain_chunks(raw: BinaryIO, read_size: int, progress: ReadProgress) -> Iterator[bytes]:
    while block := raw.read(read_size * 4):
        progress.compressed_bytes += len(block)
        progress.uncompressed_bytes += len(block)
        yield block


def _stdlib_chunks(path: Path, raw: BinaryIO, compression: str, read_size: int,
                   progress: ReadProgress) -> Iterator[bytes]:
    """xz, bz2 and gzip files (multi-stream too) with the standard library's decoders."""
    import bz2
    import gzip
    import lzma
    import zlib

    openers: dict[str, Callable[..., Any]] = {"xz": lzma.open, "bz2": bz2.open, "gzip": gzip.open}
    opener = openers[compression]
    counted = _CountedFile(raw, progress)  # counts instead of tell(): a named pipe cannot tell
    with opener(counted, "rb") as decoded:
        while True:
            position = counted.position
            try:
                chunk = decoded.read1(read_size * 4)  # one decoder call: an error loses no earlier output
            except (EOFError, OSError, lzma.LZMAError, zlib.error) as error:
                reason = "file ends inside a compressed stream (truncated)" if isinstance(error, EOFError) \
                    else f"corrupt {compression} data ({error})"
                raise DumpReadError(path, counted.position, reason, position) from None
            if not chunk:
                return
            progress.uncompressed_bytes += len(chunk)
            yield chunk


def _zstd_chunks(path: Path, raw: BinaryIO, read_size: int, progress: ReadProgress) -> Iterator[bytes]:
    import zstandard

    walker = _FrameWalker()
    source = _WalkedFile(raw, walker, progress)
    decompressor = _IDLE_DECOMPRESSORS.pop() if _IDLE_DECOMPRESSORS else None
    decompressor = decompressor or zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW_SIZE)
    try:
        yield from _decompressed(path, decompressor, source, walker, read_size, progress)
    finally:
        _IDLE_DECOMPRESSORS.append(decompressor)


#: Decompressors no stream is using. Reusing one keeps its window buffer mapped: a fresh one
#: page-faults through up to 2 GiB of window again, which costs as much as the decompression.
_IDLE_DECOMPRESSORS: list[Any] = []


def _decompressed(
    path: Path, decompressor: Any, source: _WalkedFile, walker: _FrameWalker, read_size: int, progress: ReadProgress
) -> Iterator[bytes]:
    import zstandard

    reader = decompressor.stream_reader(source, read_size=read_size, read_across_frames=True)
    yielded = 0
    while True:
        try:
            chunk = reader.read(read_size * 4)
        except zstandard.ZstdError as error:
            # The failed read lost what it had decoded before the bad block (up to a whole read): decode
            # again up to the damage. A second pass over the file, only for a damaged one; a pipe cannot
            # be reread.
            for chunk in _decoded_until_damage(path, decompressor, yielded) if path.is_file() else ():
                yielded += len(chunk)
                progress.uncompressed_bytes += len(chunk)
                yield chunk
            if walker.error:  # the walker knows exactly where the frames stop making sense
                raise DumpReadError(path, walker.boundary, f"{walker.error} ({error})",
                                    walker.frame_start_before(walker.boundary), yielded) from None
            damaged_from = walker.position - source.last_read
            raise DumpReadError(path, walker.position, f"corrupt zstd data ({error})",
                                walker.frame_start_before(damaged_from), yielded) from None
        if not chunk:
            break
        yielded += len(chunk)
        progress.uncompressed_bytes += len(chunk)
        yield chunk
    if walker.error:
        raise DumpReadError(path, walker.boundary, walker.error, walker.frame_start_before(walker.boundary), yielded)
    if walker.position == 0:  # the walker is "complete" before any frame; `zstd -d` calls this a cut
        raise DumpReadError(path, 0, "empty file (no zstd frame)", 0)
    if not walker.complete:
        raise DumpReadError(
            path,
            walker.position,
            "file ends inside a zstd frame (truncated)",
            walker.frame_start_before(walker.position),
            yielded,
        )


#: Decompressed bytes :func:`_decoded_until_damage` reads at a time past what was yielded already: a read that fails
#: loses its output, so at most this much before the damage is lost.
DAMAGE_SEARCH_READ = 1 << 12


def _decoded_until_damage(path: Path, decompressor: Any, skip: int) -> Iterator[bytes]:
    """The decompressed bytes of ``path`` after the first ``skip``, up to its first corrupt block.

    The first ``skip`` bytes decoded before, so they are passed over in large reads; after them, reads
    of :data:`DAMAGE_SEARCH_READ` bytes, since a read that fails loses its output. ``decompressor`` is reused: no
    second window.
    """
    import zstandard

    with open(path, "rb") as raw, decompressor.stream_reader(raw, read_across_frames=True) as reader:
        try:
            while skip:
                passed = len(reader.read(min(skip, 1 << 22)))
                if not passed:
                    return
                skip -= passed
            while chunk := reader.read(DAMAGE_SEARCH_READ):
                yield chunk
        except zstandard.ZstdError:
            return


PositionFinder = Callable[[bytes, int, int], Iterable[int]]


class LinePlace:
    """Where the line that :func:`iter_selected_lines` yielded last lies in the decompressed text.

    ``offset`` is its first byte (from 0; ``zstd -dc FILE | tail -c +$((offset + 1))`` starts there) and
    ``length`` its size without the newline, the bytes past :data:`MAX_LINE_BYTES` included when it was cut.
    :attr:`line_number` counts lines from 1, empty ones included, as ``sed -n`` does; it is counted only
    when asked (for the rare bad line), so the scan pays a few assignments per selected line.
    """

    __slots__ = ("offset", "length", "_chunk", "_start", "_lines_before")

    def __init__(self) -> None:
        self._at(b"", 0, 0, 0, 0)

    def _at(self, chunk: bytes, start: int, lines_before: int, offset: int, length: int) -> None:
        self._chunk = chunk  # the line's chunk, or b"" for a line begun in an earlier chunk
        self._start = start
        self._lines_before = lines_before  # newlines before the chunk
        self.offset = offset
        self.length = length

    @property
    def line_number(self) -> int:
        return self._lines_before + self._chunk.count(b"\n", 0, self._start) + 1

    @property
    def cut(self) -> bool:
        """Whether the line is longer than :data:`MAX_LINE_BYTES` (only its first bytes were yielded)."""
        return self.length > MAX_LINE_BYTES

    def describe(self) -> str:
        return place_text(self.line_number, self.offset)


def place_text(line: int, byte: int) -> str:
    """Where a line of a dump is, as reports say it: ``line 161 (byte 35,568)``."""
    return f"line {line:,} (byte {byte:,})"


def iter_selected_lines(
    chunks: Iterable[bytes], find_positions: PositionFinder, progress: ReadProgress, place: LinePlace | None = None
) -> Iterator[bytes]:
    """The lines (without ``\\n``) in which ``find_positions(chunk, start, end)`` reports a position.

    ``find_positions`` is called on whole chunks with the byte range of complete lines it may
    search, so a selective search runs at C speed; only matched lines are cut out. Lines are
    counted in ``progress.lines``; the last line counts and is searched even without a newline.
    ``place``, when given, tells where each yielded line is (while it is the latest one), its offset counted from
    the file's first decompressed byte: a BOM that :func:`iter_chunks` dropped (``progress.bom_bytes``) included.
    """
    place = place if place is not None else LinePlace()
    carry = _Carry()
    carry_start = 0  # where the carried line starts
    offset = 0  # where the chunk starts
    newlines = 0  # before the chunk
    scratch = BlockScratch()
    for chunk in chunks:
        if not offset:  # the first chunk has come: a dropped BOM is known now (once per chunk, not per line)
            offset = progress.bom_bytes
        last_newline = chunk.rfind(b"\n")
        if last_newline < 0:
            if not carry:
                carry_start = offset
            carry.add(chunk)
            offset += len(chunk)
            continue
        first_newline = chunk.find(b"\n")
        found = scratch.count(numpy.frombuffer(chunk, dtype=numpy.uint8), 10)
        progress.lines += found
        head_start = carry_start if carry else offset
        head_length = carry.length + first_newline
        head = carry.take(chunk[:first_newline])
        if head and any(True for _ in find_positions(head, 0, len(head))):
            place._at(b"", 0, newlines, head_start, head_length)
            yield head
        start = first_newline + 1
        end = last_newline
        line_end_seen = -1
        for position in sorted(find_positions(chunk, start, end)):
            if position <= line_end_seen:
                continue
            line_start = chunk.rfind(b"\n", start - 1, position) + 1
            line_end_seen = chunk.find(b"\n", position)
            place._at(chunk, line_start, newlines, offset + line_start, line_end_seen - line_start)
            yield chunk[line_start:line_end_seen]
        carry_start = offset + last_newline + 1
        carry.add(chunk[last_newline + 1 :])
        offset += len(chunk)
        newlines += found
    if carry:
        length = carry.length
        last = carry.take()
        progress.lines += 1
        if any(True for _ in find_positions(last, 0, len(last))):
            place._at(b"", 0, newlines, carry_start, length)
            yield last


class _Carry:
    """The start of a line that goes on in the next chunk: its pieces are joined once (a long line costs
    linear time, not quadratic) and only its first :data:`MAX_LINE_BYTES` are kept (bounded memory)."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._size = 0
        self.length = 0  # of the line so far, the bytes not kept included

    def __bool__(self) -> bool:
        return bool(self._parts)

    def add(self, data: bytes) -> None:
        self.length += len(data)
        room = MAX_LINE_BYTES - self._size
        if data and room > 0:
            self._parts.append(data[:room])
            self._size += min(len(data), room)

    def take(self, tail: bytes = b"") -> bytes:
        """The line so far with ``tail`` appended (both cut at the limit, then a :class:`CutLine`); the carry is
        empty afterwards."""
        if not self._parts:
            self.length = 0
            return tail[:MAX_LINE_BYTES]
        self.add(tail)
        line = b"".join(self._parts)
        if self.length > MAX_LINE_BYTES:
            line = CutLine(line, self.length)
        self._parts, self._size, self.length = [], 0, 0
        return line


class CutLine(bytes):
    """The first :data:`MAX_LINE_BYTES` of a longer line, which is ``length`` bytes long (without its newline)."""

    length: int

    def __new__(cls, kept: bytes, length: int) -> CutLine:
        line = super().__new__(cls, kept)
        line.length = length
        return line


def too_long_reason(length: int) -> str:
    """Why a line of ``length`` bytes, cut at :data:`MAX_LINE_BYTES`, is not parsed (the Reddit and Amazon readers
    both say it so)."""
    return f"line longer than {_size_text(MAX_LINE_BYTES)} ({length:,} bytes); not parsed"


def _size_text(size: int) -> str:
    return f"{size >> 20} MiB" if size % (1 << 20) == 0 else f"{size:,} bytes"


#: Bytes of a chunk that a vectorised search compares at a time. Its scratch arrays then stay in the
#: core's own cache: with arrays as large as a 1 MiB chunk, two scans on a 2-core VM slowed each other
#: by ~12% (the shared cache), with 128 KiB blocks by 1-4%, and one scan alone ran ~6% faster.
SEARCH_BLOCK = 1 << 17


class BlockScratch:
    """Vectorised byte searches over a chunk, a block of :data:`SEARCH_BLOCK` bytes at a time.

    Each block is compared into arrays kept between calls (a fresh multi-MB numpy array costs more
    in page faults than a vectorised pass over it). ``scratch("mask", size, bool)`` gives the first
    ``size`` items of the array of that name, for searches of one's own over blocks.
    """

    def __init__(self) -> None:
        self._arrays: dict[str, numpy.ndarray] = {}

    def __call__(self, name: str, size: int, dtype: Any) -> numpy.ndarray:
        array = self._arrays.get(name)
        if array is None or len(array) < size:
            array = self._arrays[name] = numpy.empty(size, dtype=dtype)
        return array[:size]

    def find(self, data: numpy.ndarray, byte: int, *, ascii_case: bool = False) -> numpy.ndarray:
        """Positions of ``byte`` in ``data``, in order; with ``ascii_case`` a lower-case ASCII letter's
        upper case matches too (bytes are compared ``| 0x20``, which maps no other byte onto a letter)."""
        found = [numpy.zeros(0, dtype=numpy.intp)]
        for start in range(0, len(data), SEARCH_BLOCK):
            block = data[start : start + SEARCH_BLOCK]
            if ascii_case:
                block = numpy.bitwise_or(block, 0x20, out=self("folded", len(block), numpy.uint8))
            hits = numpy.flatnonzero(numpy.equal(block, byte, out=self("mask", len(block), bool)))
            if len(hits):
                found.append(hits + start)
        return numpy.concatenate(found)

    def count(self, data: numpy.ndarray, byte: int) -> int:
        """How many times ``byte`` occurs in ``data`` (about 3x faster than ``bytes.count``)."""
        return sum(
            int(numpy.count_nonzero(numpy.equal(block, byte, out=self("mask", len(block), bool))))
            for block in (data[start : start + SEARCH_BLOCK] for start in range(0, len(data), SEARCH_BLOCK))
        )


def iter_lines(chunks: Iterable[bytes], progress: ReadProgress | None = None, *,
               keep_empty: bool = False) -> Iterator[bytes]:
    """Every non-empty line (without ``\\n``) of a chunk stream; with ``keep_empty`` every line, so that
    callers can number them. A line longer than :data:`MAX_LINE_BYTES` comes as a :class:`CutLine`."""
    progress = progress if progress is not None else ReadProgress()
    carry = _Carry()
    for chunk in chunks:
        lines = chunk.split(b"\n")
        if len(lines) == 1:
            carry.add(chunk)
            continue
        lines[0] = carry.take(lines[0])
        carry.add(lines.pop())
        progress.lines += len(lines)
        yield from lines if keep_empty else (line for line in lines if line)
    if carry:
        progress.lines += 1
        yield carry.take()


# --------------------------------------------------------------------------------------------
# Records: the fields as the dumps actually have them
# --------------------------------------------------------------------------------------------


#: How many bad lines a file's report places (line number, byte offset, reason) and quotes.
BAD_LINES_REPORTED = 5


@dataclass
class LineProblems:
    """Lines that could not be used, counted per file and reported, never fatal.

    ``first_bad_lines`` places the first few (line number, byte offset, problem, why) without their text, so
    it may be published; ``examples`` quote their start (dump text, names included: for the private work folder).
    """

    malformed_json: int = 0
    invalid_utf8: int = 0
    missing_fields: int = 0
    not_an_object: int = 0
    lone_surrogates_replaced: int = 0  # kept, with U+FFFD in place of half an emoji
    examples: list[str] = field(default_factory=list)  # a few, for the report
    first_bad_lines: list[dict[str, Any]] = field(default_factory=list)

    def add(self, reason: str, line: bytes, place: LinePlace | None = None, why: str = "") -> None:
        setattr(self, reason, getattr(self, reason) + 1)
        if len(self.examples) < BAD_LINES_REPORTED:
            where = f" at {place.describe()}" if place is not None else ""
            self.examples.append(f"{reason}{where}: {line[:120].decode('utf-8', 'replace')}")
        if place is not None and len(self.first_bad_lines) < BAD_LINES_REPORTED:
            self.first_bad_lines.append({"line": place.line_number, "byte": place.offset, "problem": reason,
                                         "why": why})

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_line(line: bytes, problems: LineProblems, place: LinePlace | None = None) -> dict[str, Any] | None:
    """The JSON object of one dump line, or ``None`` (counted in ``problems``, at ``place`` when given).

    Dumps hold texts cut in the middle of an emoji: a lone ``\\ud83d`` escape is valid JSON that
    orjson refuses. Such a line is read with the standard parser and the lone half replaced by
    U+FFFD (counted in ``lone_surrogates_replaced``), so the record is kept. A line cut at
    :data:`MAX_LINE_BYTES` (``place.cut``) is malformed without being parsed: the reason says it was too long.
    """
    if place is not None and place.cut:
        problems.add("malformed_json", line, place, too_long_reason(place.length))
        return None
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError as error:
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as not_utf8:
            problems.add("invalid_utf8", line, place, str(not_utf8))
            return None
        record = _parse_with_lone_surrogates(text) if "surrogate" in str(error) else None
        if record is None:
            problems.add("malformed_json", line, place, f"{error.msg} (column {error.colno:,} of the line)")
            return None
        problems.lone_surrogates_replaced += 1
    if not isinstance(record, dict):
        problems.add("not_an_object", line, place, f"a JSON {json_type(record)}, not an object")
        return None
    return record


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type: ``"string"``, ``"number"``, ``"array"``, ..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    names: dict[type, str] = {str: "string", list: "array", dict: "object"}
    return names.get(type(value), type(value).__name__)


def _parse_with_lone_surrogates(text: str) -> Any:
    try:
        return _without_lone_surrogates(json.loads(text))
    except (ValueError, RecursionError):  # the standard parser recurses: a deeply nested line is malformed here
        return None


def _without_lone_surrogates(value: Any) -> Any:
    if isinstance(value, str):
        # Through UTF-16, surrogate pairs stay joined; only a lone half fails and becomes U+FFFD.
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, dict):
        return {_without_lone_surrogates(k): _without_lone_surrogates(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_lone_surrogates(v) for v in value]
    return value


def bare_id(value: Any) -> str:
    """``"t3_abc"`` / ``"abc"`` -> ``"abc"``; anything else -> ``""``."""
    if not isinstance(value, str):
        return ""
    return value[3:] if len(value) > 3 and value[0] == "t" and value[2] == "_" and value[1] in "1235" else value


def parse_created_utc(value: Any) -> int | None:
    """``created_utc`` as the dumps store it: int, float or a string of either. ``None`` when it is
    not a number of seconds between 1970 and the year 36812 (2**40 s; NaN, inf, 1e20 ...)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, (int, float)) and 0 <= value < MAX_CREATED_UTC:  # False for NaN
        return int(value)
    return None


MAX_CREATED_UTC = 2**40

_DELETED_MARKERS = {"[deleted]", "[deleted by user]"}
_REMOVED_MARKERS = {"[removed]", "[removed by reddit]", "[ removed by reddit ]", "[removed by moderator]"}


def text_state(text: Any) -> str:
    """``"deleted"``, ``"removed"``, ``"empty"`` or ``"ok"`` for a body / selftext / title."""
    if not isinstance(text, str) or not text.strip():
        return "empty"
    marker = text.strip().lower()
    if marker in _DELETED_MARKERS:
        return "deleted"
    if marker in _REMOVED_MARKERS:
        return "removed"
    return "ok"


def real_author(author: Any) -> str:
    """The author name, or ``""`` when deleted / missing."""
    if not isinstance(author, str) or author in ("[deleted]", "[removed]", ""):
        return ""
    return author


# --------------------------------------------------------------------------------------------
# Writing: streamed, long-window zstd, as the dumps are made
# --------------------------------------------------------------------------------------------


def write_zst_ndjson(
    path: Path,
    records: Iterable[dict[str, Any] | bytes],
    *,
    frames: int = 1,
    frame_bytes: int | None = None,
    trailing_newline: bool = True,
    long_distance_matching: bool = False,
) -> Path:
    """Write ``records`` as NDJSON in a zstd *stream* with a ``2**31`` window, at level 3.

    Each record is a dict (serialised with orjson) or raw bytes (written as one line, verbatim,
    to make malformed fixtures). ``frames`` > 1 splits the lines evenly over that many zstd
    frames, as multi-part dumps are (the lines are held in memory to count them); ``frame_bytes``
    instead starts a new frame after that many uncompressed bytes and streams the records, for
    files of any size. The frames never record their content size, so a reader needs the long
    window exactly as for the real dumps. ``long_distance_matching`` is what ``zstd --long``
    adds (better ratio, ~0.1 s more per frame); the window is recorded either way. Written
    atomically (:func:`reddit_amazon.files.open_atomic`).
    """
    import zstandard

    path = Path(path)
    lines = (r if isinstance(r, bytes) else orjson.dumps(r) for r in records)
    if frame_bytes is None:
        listed = list(lines)
        per_frame = max(1, -(-len(listed) // max(1, frames)))
        groups: Iterable[Iterable[tuple[bytes, bool]]] = [
            [(line, index == len(listed) - 1) for index, line in enumerate(listed[start : start + per_frame], start)]
            for start in range(0, max(len(listed), 1), per_frame)
        ]
    else:
        groups = _frames_of(lines, frame_bytes)
    params = zstandard.ZstdCompressionParameters.from_level(
        3, window_log=31, enable_ldm=long_distance_matching, write_checksum=True
    )
    with open_atomic(path) as out:
        for group in groups:
            writer = zstandard.ZstdCompressor(compression_params=params).stream_writer(out, closefd=False)
            _write_lines(writer, group, trailing_newline)
            writer.flush(zstandard.FLUSH_FRAME)
    return path


class _LastLine:
    """Marks the very last line of a file, so it can go without a trailing newline."""

    def __init__(self, lines: Iterator[bytes]):
        self._lines = lines
        self._next = next(lines, None)

    def __bool__(self) -> bool:
        return self._next is not None

    def take(self) -> tuple[bytes, bool]:
        """The next line and whether it is the last; only while ``self`` is true (a line is left)."""
        line, self._next = self._next, next(self._lines, None)
        assert line is not None
        return line, self._next is None


def _frames_of(lines: Iterator[bytes], frame_bytes: int) -> Iterator[Iterator[tuple[bytes, bool]]]:
    pending = _LastLine(lines)

    def frame() -> Iterator[tuple[bytes, bool]]:
        size = 0
        while pending and size < frame_bytes:
            line, is_last = pending.take()
            size += len(line) + 1
            yield line, is_last

    yield frame()  # an empty input still gives one (empty) frame
    while pending:
        yield frame()


def _write_lines(writer: Any, group: Iterable[tuple[bytes, bool]], trailing_newline: bool) -> None:
    """(line, is the file's last) pairs into one frame, in 64 KiB writes (the header never learns the size)."""
    buffer = bytearray()
    for line, is_last in group:
        buffer += line
        if trailing_newline or not is_last:
            buffer += b"\n"
        if len(buffer) >= 1 << 16:
            writer.write(bytes(buffer))
            buffer.clear()
    if buffer:
        writer.write(bytes(buffer))

