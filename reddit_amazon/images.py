"""Download and validate each item's main image into an on-disk store ``<store>/<asin>.jpg``.

Every image is really decoded with Pillow behind three guards (declared content type, a byte
limit enforced while streaming, a pixel limit checked from the header before decoding) and kept
as JPEG (other formats are converted). Failures are recorded per item in ``failures.json`` next
to the images and never stop the build; an item without a usable image keeps its gap
(``Item.image_error``). The store is resumable: images already there are not downloaded again,
permanent failures (4xx, an invalid URL, not an image, too large, undecodable) are not retried, transient
ones (timeouts, 408, 429, 5xx after the retries) are retried by the next run, and so is a proxy's 407 (the
machine's proxy settings, not the item, are at fault; not retried within the run, where it would answer the
same). A URL, or a redirect, to a host that is not at a public address is refused (``private_host``;
:mod:`reddit_amazon.http_session`) unless ``ImageOptions.allow_private_hosts``; it is retried by the next run,
which may allow it.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import threading
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reddit_amazon import __version__
from reddit_amazon.files import DamagedFileError, naming, read_json, remove_abandoned_temp_files, write_atomic
from reddit_amazon.http_session import (
    PrivateHostRefused,
    ProxyAuthRequired,
    RequestsInFlight,
    check_proxies,
    guarded_session,
    proxy_refused_tunnel,
)
from reddit_amazon.openai_endpoint import retry_after
from reddit_amazon.redaction import redact_secrets

if TYPE_CHECKING:
    import tenacity

log = logging.getLogger(__name__)

FAILURES_FILE = "failures.json"
SOURCES_FILE = "sources.json"
SOURCES_JOURNAL = "sources.journal"  # one JSON line per image stored or failure met since the last save (survives a kill)
STORE_LOCK = "store.lock"  # held while the journal is appended to or folded into sources.json
NO_IMAGE_URL = "no_image_url"
#: What product images come as. Only these are parsed at all: some other formats (ICO, ...) decode their
#: content while opening, before the pixel limit can be checked.
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")
JPEG_MAX_SIDE = 65_500  # the longest side Pillow's JPEG encoder writes
MAX_PIXELS = 40_000_000  # far above Amazon's hi_res images, far below a decompression bomb
#: Pixels of a greyscale image scaled at a time by :func:`eight_bit_greyscale` (its scratch stays ~16 MB).
GREYSCALE_BLOCK_PIXELS = 1 << 20


@dataclass
class ImageOptions:
    concurrency: int = 8
    timeout_s: float = 20.0
    max_attempts: int = 4
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 10.0
    max_bytes: int = 10 * 2**20
    max_pixels: int = MAX_PIXELS
    max_retry_after_s: float = 60.0  # the longest Retry-After waited out before the next attempt
    jpeg_quality: int = 92
    user_agent: str = f"reddit-amazon/{__version__} (dataset builder)"
    #: Whether image hosts may be at loopback, private, link-local ... addresses (a URL or redirect to them is
    #: refused otherwise: the metadata file must not reach the build machine's own network).
    allow_private_hosts: bool = False


class ImageRejected(ValueError):
    """The bytes are not a usable image (a permanent failure). ``reason`` is a short code, ``str()`` the detail."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(frozen=True)
class ImageOutcome:
    path: Path | None  # the stored JPEG, or None
    error: str = ""  # "<reason>: <detail>" when path is None
    downloaded: bool = False


def _require_image_type(content_type: str | None) -> None:
    if content_type and not content_type.lower().startswith("image/"):
        raise ImageRejected("not_an_image", f"content type {content_type}")


def to_jpeg(data: bytes, content_type: str | None, options: ImageOptions) -> bytes:
    """Validated JPEG bytes of ``data``, or :class:`ImageRejected`."""
    _require_image_type(content_type)
    if len(data) > options.max_bytes:
        raise ImageRejected("too_large", f"{len(data)} bytes > {options.max_bytes}")
    image = _decode(data, options)
    if image.format == "JPEG":
        return data
    try:
        buffer = io.BytesIO()
        _on_white(eight_bit_greyscale(image)).save(buffer, format="JPEG", quality=options.jpeg_quality)
    except (OSError, ValueError) as error:
        raise ImageRejected("unencodable", str(error) or type(error).__name__) from error
    return buffer.getvalue()


def _decode(data: bytes, options: ImageOptions) -> Any:
    from PIL import Image

    try:
        # No warning filter here: catch_warnings is not thread-safe. The pixel check below comes before any
        # decoding, and Pillow's own bomb limit (a warning, then an error) lies above the default max_pixels.
        image = Image.open(io.BytesIO(data), formats=FORMATS)
        width, height = _within_pixels(image, options.max_pixels)
        if max(width, height) > JPEG_MAX_SIDE:
            raise ImageRejected("too_long_side", f"{width}x{height}: a JPEG side holds at most {JPEG_MAX_SIDE} px")
        image.load()
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageRejected("too_many_pixels", str(error)) from error
    except Image.UnidentifiedImageError as error:
        raise ImageRejected("undecodable", f"not a {', '.join(FORMATS)} image") from error
    except (OSError, SyntaxError, ValueError) as error:  # Pillow's ways of saying "not decodable"
        raise ImageRejected("undecodable", str(error) or type(error).__name__) from error
    return image


def _on_white(image: Any) -> Any:
    """RGB, with any transparency (an alpha channel, or a PNG's tRNS colour) composited onto white."""
    from PIL import Image

    if image.mode in ("RGBA", "LA", "La", "PA", "RGBa", "P") or "transparency" in image.info:
        if image.mode == "La":
            image = image.convert("LA")  # Pillow converts premultiplied grey to LA only
        image = image.convert("RGBA")
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image, mask=image.getchannel("A"))
        return background
    return image.convert("RGB")


def image_digest(data: bytes) -> str:
    """An image's content hash (sha256, 32 hex digits): the one that names ``benchmark``'s image files and keys
    ``lavic-ref``'s embedding reuse, so both agree on when an image is the same. Changing it orphans cached files."""
    return hashlib.sha256(data).hexdigest()[:32]


def rgb_image(data: bytes, max_pixels: int = MAX_PIXELS) -> Any:
    """An embedded image (a dataset's: maybe someone else's) as an RGB PIL image, 16-bit and float greyscale
    scaled to 8 bits. An image of more than ``max_pixels`` is refused (:class:`ImageRejected`) before it is
    decoded: a few KB of PNG can unpack to GBs, and Pillow's own limit lies at 179M pixels."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        _within_pixels(image, max_pixels)
        return eight_bit_greyscale(image).convert("RGB")


def _within_pixels(image: Any, max_pixels: int) -> tuple[int, int]:
    """The size of an opened, not yet decoded ``image``; :class:`ImageRejected` when it holds over ``max_pixels``."""
    width, height = image.size
    if width * height > max_pixels:
        raise ImageRejected("too_many_pixels", f"{width}x{height} > {max_pixels} pixels")
    return width, height


def eight_bit_greyscale(image: Any) -> Any:
    """16-bit, 32-bit and float greyscale as 8-bit "L" (Pillow's own convert clips them to white).

    Scaled a block of rows at a time, integers in integers: a float64 copy of a whole image and the copies its
    arithmetic makes took ~0.9 GB for one 40-megapixel 16-bit PNG (77 KB of download), per download in flight."""
    if image.mode not in ("I", "I;16", "I;16B", "I;16L", "F"):
        return image
    import numpy
    from PIL import Image

    values = numpy.asarray(image)
    if image.mode == "F":
        factor = 255.0 if values.size and values.max() <= 1 else 1.0

        def scaled(block: Any) -> Any:
            return numpy.rint(numpy.clip(block.astype(numpy.float64) * factor, 0, 255))
    else:
        # round(v / 257) is (v + 128) // 257 for an integer v: v / 257 never ends in .5 (257 is odd)
        divide = image.mode.startswith("I;16") or bool(values.size and values.max() > 255)

        def scaled(block: Any) -> Any:
            block = numpy.clip(block.astype(numpy.int64), 0, None)
            return numpy.minimum((block + 128) // 257 if divide else block, 255)
    out = numpy.empty(values.shape, dtype=numpy.uint8)
    rows = max(1, GREYSCALE_BLOCK_PIXELS // max(1, values.shape[1] if values.ndim == 2 else 1))
    for start in range(0, len(values), rows):
        out[start:start + rows] = scaled(values[start:start + rows])
    return Image.fromarray(out, "L")


class ImageStore:
    """``<folder>/<asin>.jpg``, the URL each image came from (``sources.json``, {asin: url}) and
    ``failures.json`` ({asin: {"error", "permanent", "url"}}), plus the lines ``sources.journal`` gained since the
    last save.

    Each URL is appended to the journal right after its image is written, so a killed run cannot leave an
    image whose URL is lost or out of date: an image without a recorded URL is not counted as stored. Each
    failure is appended too, so a killed run's permanent failures are not fetched again."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._stored: set[str] = set()  # images this instance put
        journal_sources, journal_failures = self._read_journal()
        self.failures: dict[str, dict] = {**self._read_failures(), **journal_failures}
        self.sources: dict[str, str] = {**self._read_sources(), **journal_sources}

    def _read_sources(self) -> dict[str, str]:
        """A damaged one is a :class:`~reddit_amazon.files.DamagedFileError`, not dropped: without it every image
        it records would be fetched again, which is the user's choice."""
        path = self.folder / SOURCES_FILE
        if not path.is_file():
            return {}
        return read_json(path, remedy="delete it to have the store's images fetched again")

    def _read_failures(self) -> dict[str, dict]:
        """Only a record of what failed: an unreadable one is dropped (its items are tried again), not fatal."""
        path = self.folder / FAILURES_FILE
        try:
            return read_json(path, remedy="the failures it recorded will be retried") if path.is_file() else {}
        except DamagedFileError as error:
            log.warning("%s", error)
            return {}

    def _read_journal(self) -> tuple[dict[str, str], dict[str, dict]]:
        """``({asin: url} of the images stored, {asin: failure} of the failures met)`` since the last save."""
        path = self.folder / SOURCES_JOURNAL
        sources, failures = {}, {}
        for number, line in enumerate(path.read_bytes().splitlines() if path.is_file() else [], 1):
            try:
                entry = json.loads(line)
                if "failure" in entry:
                    failure = entry["failure"]
                    if not (isinstance(failure, dict) and {"error", "permanent", "url"} <= failure.keys()):
                        raise KeyError("failure")
                    failures[entry["asin"]] = failure
                else:
                    sources[entry["asin"]] = entry["url"]
            except (json.JSONDecodeError, UnicodeDecodeError, TypeError, KeyError):
                # A line cut by a crash: its image (and that of a line glued to it) has no URL, so it is fetched again.
                log.warning("%s, line %d: not an image's source or failure, skipped", path, number)
        return sources, failures

    def path(self, asin: str) -> Path:
        return self.folder / f"{asin}.jpg"

    def has(self, asin: str, url: str) -> bool:
        """Whether the image of ``asin`` at ``url`` is stored. An image from another URL is not (the metadata
        changed), nor one without a recorded URL (a run killed between writing it and recording its URL)."""
        return self.path(asin).is_file() and self.sources.get(asin) == url

    def put(self, asin: str, jpeg: bytes, url: str) -> Path:
        target = self.path(asin)
        write_atomic(target, jpeg)
        line = json.dumps({"asin": asin, "url": url}).encode() + b"\n"
        with self._lock, self._shared():
            self._append(line)  # after the image: a kill in between leaves an image without (a current) URL
            self.failures.pop(asin, None)
            self._stored.add(asin)
            self.sources[asin] = url
        return target

    @contextmanager
    def _shared(self) -> Iterator[None]:
        """Exclusive among the processes using this store (two builds may share one): a save folds in the
        journal lines of them all and deletes none another has appended meanwhile."""
        with open(self.folder / STORE_LOCK, "ab") as handle:
            try:
                import fcntl
                fcntl.flock(handle, fcntl.LOCK_EX)
            except (ImportError, OSError):  # no flock here (Windows, some network file systems): unguarded
                pass
            yield

    def _append(self, line: bytes) -> None:
        """Append ``line`` whole or not at all, and name the journal when it cannot be. A full disk cuts a write
        short without an error: the cut line was kept, and the next line (after the disk freed up) glued to it,
        losing both. A write that fails is taken back; a line cut earlier (a crash) is ended before this one."""
        path = self.folder / SOURCES_JOURNAL
        with naming(path):
            descriptor = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
            try:
                end = os.fstat(descriptor).st_size  # no other writer: _shared() holds the store's lock
                if end and not _ends_a_line(descriptor, end):
                    line = b"\n" + line
                try:
                    written = 0
                    while written < len(line):  # one write unless the disk fills: a kill leaves no cut line
                        written += os.write(descriptor, line[written:])
                except BaseException:
                    os.ftruncate(descriptor, end)
                    raise
            finally:
                os.close(descriptor)

    def remove_abandoned_writes(self) -> None:
        """Delete the half-written images that runs of this host killed mid-write left under hidden temporary names;
        a concurrent build's write in progress is kept (its process is alive)."""
        removed = remove_abandoned_temp_files(self.folder)
        if removed:
            log.info("%s: removed %d temporary file(s) left by killed runs", self.folder, len(removed))

    def to_fetch(self, asin: str, urls: Sequence[str]) -> bool:
        """Whether :func:`fetch_images` would download the main image of ``asin`` (``--dry-run`` counts them):
        it has a URL, is not stored from it, and that URL is not recorded as permanently failing."""
        failure = self.failures.get(asin)
        return bool(urls) and not self.has(asin, urls[0]) and not (
            failure and failure["permanent"] and failure["url"] == urls[0])

    def record_failure(self, asin: str, url: str, error: str, permanent: bool) -> None:
        failure = {"error": error, "permanent": permanent, "url": url}
        line = json.dumps({"asin": asin, "failure": failure}).encode() + b"\n"
        with self._lock, self._shared():
            self._append(line)  # a killed run's permanent failures are not fetched again
            self.failures[asin] = failure

    def save(self) -> None:
        """Write what was learnt (failures, and where each image came from: the journal is folded in)."""
        with self._lock, self._shared():
            # What other processes recorded since this one started wins over what it read then (its own
            # puts are in the journal); entries only this process knows (seeded ones) are kept.
            journal_sources, journal_failures = self._read_journal()
            self.sources = {**self.sources, **self._read_sources(), **journal_sources}
            self.failures = {**self._read_failures(), **journal_failures, **self.failures}
            for asin in self._stored:
                self.failures.pop(asin, None)
            # A failure of a URL whose image was stored since (by a run killed before its save) is over.
            self.failures = {asin: failure for asin, failure in self.failures.items()
                             if not self.has(asin, failure["url"])}
            failures = json.dumps(self.failures, indent=1, sort_keys=True)
            sources = json.dumps(self.sources, indent=1, sort_keys=True)
            write_atomic(self.folder / FAILURES_FILE, failures.encode())
            write_atomic(self.folder / SOURCES_FILE, sources.encode())
            (self.folder / SOURCES_JOURNAL).unlink(missing_ok=True)


def _ends_a_line(descriptor: int, size: int) -> bool:
    """Whether the file of ``descriptor``, ``size`` bytes long, ends in a newline (os.pread is not on Windows)."""
    os.lseek(descriptor, size - 1, os.SEEK_SET)
    return os.read(descriptor, 1) == b"\n"


class _TransientHTTP(Exception):
    """408 / 429 / 5xx, or a response cut short: worth another attempt (after the ``Retry-After`` it asks for)."""

    def __init__(self, message: str, response: Any = None):
        super().__init__(message)
        self.response = response  # read by retry_after


def _download(session, url: str, options: ImageOptions, in_flight: RequestsInFlight) -> tuple[bytes, str | None]:
    import requests

    # The timeout bounds each read, so a host sending a byte a second (of its headers or body) would hold a
    # worker for hours: the whole response gets a deadline, after which its socket is shut (ending a blocked read).
    # A run stopping shuts it at once.
    with in_flight.request(options.timeout_s * 3) as deadline:

        def cut_short(what: str) -> _TransientHTTP:
            if in_flight.stopped.is_set():
                return _TransientHTTP("cut: the run was interrupted")
            return _TransientHTTP(f"{what} still arriving after {deadline.seconds:g} s")

        try:
            response = session.get(url, stream=True, timeout=options.timeout_s)
        except requests.TooManyRedirects as error:  # a redirect loop stays a loop: not worth another run
            raise ImageRejected("redirect_loop", str(error)) from error
        except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                requests.exceptions.InvalidSchema, requests.exceptions.URLRequired) as error:
            if isinstance(error, requests.exceptions.InvalidProxyURL):
                raise  # the environment's fault, not the item's
            raise ImageRejected("invalid_url", str(error)) from error
        except requests.exceptions.ConnectionError as error:
            if deadline.expired.is_set():
                raise cut_short("headers") from error
            if proxy_refused_tunnel(error):
                raise ProxyAuthRequired() from error
            raise
        with response:  # its socket is the deadline's: the session's connection handed it over
            if deadline.expired.is_set():  # the headers were cut short
                raise cut_short("headers")
            if response.status_code in (408, 429) or response.status_code >= 500:
                raise _TransientHTTP(f"HTTP {response.status_code}", response)
            if response.status_code == 407:
                raise ProxyAuthRequired()
            if response.status_code != 200:
                raise ImageRejected("http_error", f"HTTP {response.status_code}")
            declared = response.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > options.max_bytes:
                raise ImageRejected("too_large", f"Content-Length {declared} > {options.max_bytes}")
            content_type = response.headers.get("Content-Type")
            _require_image_type(content_type)  # before the body is read
            chunks, size = [], 0
            try:
                for chunk in response.iter_content(chunk_size=1 << 16):
                    size += len(chunk)
                    if size > options.max_bytes:
                        raise ImageRejected("too_large", f"more than {options.max_bytes} bytes")
                    chunks.append(chunk)
            except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError) as error:
                if not deadline.expired.is_set():
                    raise _TransientHTTP(f"incomplete body ({error})") from error  # connection closed before the end
            if deadline.expired.is_set():  # shut at the deadline: an error, or (a body without a length) an early "end"
                raise cut_short("body")
    return b"".join(chunks), content_type


def fetch_images(items: Sequence[tuple[str, list[str]]], store: ImageStore, options: ImageOptions, *,
                 progress: Callable[[Iterable, int], Iterable] | None = None) -> dict[str, ImageOutcome]:
    """Make sure each ``(asin, urls)`` has its main image (``urls[0]``) in ``store``, or a recorded reason."""
    store.remove_abandoned_writes()
    outcomes, todo = _known_outcomes(items, store)
    check_proxies(url for _, url in todo)  # before any download: a proxy that cannot be used fails them all
    # Stopped on the way out (Ctrl-C, SIGTERM): the downloads in flight are cut, a wait before a retry ends at once.
    in_flight = RequestsInFlight()
    fetch_one = _image_fetcher(store, options, in_flight)
    pool = ThreadPoolExecutor(max_workers=max(1, options.concurrency))
    try:
        futures = {pool.submit(fetch_one, asin, url): asin for asin, url in todo}
        done = as_completed(futures)
        for future in (progress(done, len(futures)) if progress and futures else done):
            outcomes[futures[future]] = future.result()
    finally:
        # Downloads running or waiting to retry end at once (a transient failure, retried by the next run); none
        # is started. Once all is done this changes nothing.
        in_flight.stop()
        try:
            pool.shutdown(wait=True, cancel_futures=True)
        finally:
            # An interrupted run keeps what it learnt, also when a second Ctrl-C ends the wait for the workers:
            # images they store later reach the journal.
            store.save()
    return outcomes


def _known_outcomes(items: Sequence[tuple[str, list[str]]],
                    store: ImageStore) -> tuple[dict[str, ImageOutcome], list[tuple[str, str]]]:
    """The outcomes known without a download (no URL, already stored, failed for good at this URL), and the
    ``(asin, url)`` left to download."""
    outcomes: dict[str, ImageOutcome] = {}
    todo: list[tuple[str, str]] = []
    for asin, urls in items:
        failure = store.failures.get(asin)
        if not urls:
            outcomes[asin] = ImageOutcome(path=None, error=f"{NO_IMAGE_URL}: the metadata lists no image")
        elif store.has(asin, urls[0]):
            outcomes[asin] = ImageOutcome(path=store.path(asin))
        elif failure and failure["permanent"] and failure["url"] == urls[0]:
            # recorded by an older version, maybe unredacted
            outcomes[asin] = ImageOutcome(path=None, error=redact_secrets(failure["error"]))
        else:
            todo.append((asin, urls[0]))
    return outcomes, todo


#: The longest failure text recorded: the item's ``image_error`` is a reason, not a log.
_MAX_FAILURE_CHARS = 300


def _quoted(error: BaseException) -> str:
    """An exception's text as a failure may quote it (``failures.json``, the item's ``image_error``, which a
    published dataset shows): requests quotes the URL it fetched, or was redirected to, and a signed URL's
    ``X-Amz-Signature``, ``Signature`` / ``Policy``, ``sig`` or ``token`` grants access to the image; a proxy's
    ``user:password@`` and the environment's keys are redacted with them. Redacted before any cut: a cut could
    keep part of a secret that the redaction no longer recognises."""
    return redact_secrets(str(error))


def _image_fetcher(store: ImageStore, options: ImageOptions,
                   in_flight: RequestsInFlight) -> Callable[[str, str], ImageOutcome]:
    """``fetch_one(asin, url)`` for the download threads: each thread with a session of its own, transient failures
    retried until ``in_flight`` is stopped (which also cuts the downloads running), the image stored or its failure
    recorded."""
    import requests

    local = threading.local()

    def session() -> requests.Session:
        if not hasattr(local, "session"):
            local.session = guarded_session(options.user_agent,
                                            allow_private_hosts=options.allow_private_hosts)
        return local.session

    stopping = in_flight.stopped
    retrying = _retrying(options, stopping)

    def attempt(url: str) -> tuple[bytes, str | None]:
        if stopping.is_set():  # woken from a wait before a retry on the way out: no new request
            raise _TransientHTTP("not retried: the run was interrupted")
        return _download(session(), url, options, in_flight)

    def failed(asin: str, url: str, message: str, permanent: bool) -> ImageOutcome:
        error = message[:_MAX_FAILURE_CHARS]
        store.record_failure(asin, url, error, permanent=permanent)
        return ImageOutcome(path=None, error=error)

    def fetch_one(asin: str, url: str) -> ImageOutcome:
        try:
            data, content_type = retrying(attempt, url)
            jpeg = to_jpeg(data, content_type, options)
        except ImageRejected as error:
            return failed(asin, url, _quoted(error), permanent=True)
        except PrivateHostRefused as error:  # not permanent: a run with allow_private_hosts fetches it
            return failed(asin, url, f"{error} (--allow-private-image-hosts allows it)", permanent=False)
        except ProxyAuthRequired as error:  # not permanent: a run with the proxy's credentials fetches it
            return failed(asin, url, str(error), permanent=False)
        except (_TransientHTTP, requests.RequestException) as error:
            attempts = retrying.statistics.get("attempt_number", options.max_attempts)
            message = f"download_failed: {type(error).__name__} after {attempts} attempt(s) ({_quoted(error)})"
            return failed(asin, url, message, permanent=False)
        except Exception as error:  # a case nothing above foresaw fails this item (retried next run), not the build
            trace = "".join(traceback.format_exception(error)).rstrip("\n")  # a bug: its traceback
            log.error("%s", redact_secrets(f"image of {asin} ({url}): {trace}"))
            return failed(asin, url, f"unexpected_error: {type(error).__name__}: {_quoted(error)}", permanent=False)
        # Outside the try: a store that cannot be written (a full disk) stops the run instead of failing every item.
        return ImageOutcome(path=store.put(asin, jpeg, url), downloaded=True)

    return fetch_one


def _retrying(options: ImageOptions, stopping: threading.Event) -> tenacity.Retrying:
    """A ``tenacity.Retrying`` of connection errors, timeouts and transient HTTP answers: random exponential backoff,
    longer where the server asks (Retry-After, capped), ``max_attempts`` in all; no more once ``stopping`` is set."""
    import requests
    import tenacity

    backoff = tenacity.wait_random_exponential(multiplier=options.backoff_initial_s, max=options.backoff_max_s)

    def wait(state: tenacity.RetryCallState) -> float:
        asked = retry_after(state.outcome.exception() if state.outcome else None)
        return backoff(state) if asked is None else max(backoff(state), min(asked, options.max_retry_after_s))

    return tenacity.Retrying(
        retry=tenacity.retry_if_exception_type((_TransientHTTP, requests.ConnectionError, requests.Timeout)),
        wait=wait,
        stop=tenacity.stop_after_attempt(options.max_attempts) | tenacity.stop_when_event_set(stopping),
        sleep=tenacity.sleep_using_event(stopping),
        reraise=True,
    )


def failure_reasons(outcomes: dict[str, ImageOutcome]) -> Counter:
    """``{"http_error": 3, "undecodable": 1, ...}``: the short code before the colon."""
    return Counter(o.error.split(":", 1)[0] for o in outcomes.values() if o.path is None)
