"""Download and validate each item's main image into an on-disk store ``<store>/<asin>.jpg``.

Every image is really decoded with Pillow behind three guards (declared content type, a byte
limit enforced while streaming, a pixel limit checked from the header before decoding) and kept
as JPEG (other formats are converted). Failures are recorded per item in ``failures.json`` next
to the images and never stop the build; an item without a usable image keeps its gap
(``Item.image_error``). The store is resumable: images already there are not downloaded again,
permanent failures (4xx, not an image, too large, undecodable) are not retried, transient ones
(timeouts, 429, 5xx after the retries) are retried by the next run.
"""

from __future__ import annotations

import io
import json
import threading
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reddit_amazon import __version__
from reddit_amazon.files import write_atomic

FAILURES_FILE = "failures.json"
SOURCES_FILE = "sources.json"
NO_IMAGE_URL = "no_image_url"


@dataclass
class ImageOptions:
    concurrency: int = 8
    timeout_s: float = 20.0
    max_attempts: int = 4
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 10.0
    max_bytes: int = 10 * 2**20
    max_pixels: int = 40_000_000  # far above Amazon's hi_res images, far below a decompression bomb
    jpeg_quality: int = 92
    user_agent: str = f"reddit-amazon/{__version__} (dataset builder)"


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
    from PIL import Image

    _require_image_type(content_type)
    if len(data) > options.max_bytes:
        raise ImageRejected("too_large", f"{len(data)} bytes > {options.max_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > options.max_pixels:
                raise ImageRejected("too_many_pixels", f"{width}x{height} > {options.max_pixels} pixels")
            image.load()
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageRejected("too_many_pixels", str(error)) from error
    except (OSError, SyntaxError, ValueError) as error:  # Pillow's ways of saying "not decodable"
        raise ImageRejected("undecodable", str(error) or type(error).__name__) from error
    if image.format == "JPEG":
        return data
    if image.mode in ("RGBA", "LA", "P"):
        image = image.convert("RGBA")
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image, mask=image.getchannel("A"))
        image = background
    elif image.mode != "RGB":
        image = eight_bit_greyscale(image).convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=options.jpeg_quality)
    return buffer.getvalue()


def eight_bit_greyscale(image: Any) -> Any:
    """16-bit, 32-bit and float greyscale as 8-bit "L" (Pillow's own convert clips them to white)."""
    if image.mode not in ("I", "I;16", "I;16B", "I;16L", "F"):
        return image
    import numpy
    from PIL import Image

    values = numpy.asarray(image, dtype=numpy.float64)
    if image.mode == "F":
        values = values * 255 if values.size and values.max() <= 1 else values
    elif image.mode.startswith("I;16") or (values.size and values.max() > 255):
        values = values / 257  # 0..65535 -> 0..255
    return Image.fromarray(values.clip(0, 255).round().astype(numpy.uint8), "L")


class ImageStore:
    """``<folder>/<asin>.jpg``, ``sources.json`` ({asin: the URL its image came from}) and ``failures.json``
    ({asin: {"error", "permanent", "url"}})."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.failures: dict[str, dict] = self._read(FAILURES_FILE)
        self.sources: dict[str, str] = self._read(SOURCES_FILE)

    def _read(self, name: str) -> dict:
        path = self.folder / name
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}

    def path(self, asin: str) -> Path:
        return self.folder / f"{asin}.jpg"

    def has(self, asin: str, url: str) -> bool:
        """Whether the image of ``asin`` at ``url`` is stored. An image from another URL is not (the metadata
        changed); one stored without its URL (by a version that did not record it) counts as from any URL."""
        return self.path(asin).is_file() and self.sources.get(asin, url) == url

    def put(self, asin: str, jpeg: bytes, url: str) -> Path:
        target = self.path(asin)
        write_atomic(target, jpeg)
        with self._lock:
            self.failures.pop(asin, None)
            self.sources[asin] = url
        return target

    def record_failure(self, asin: str, url: str, error: str, permanent: bool) -> None:
        with self._lock:
            self.failures[asin] = {"error": error, "permanent": permanent, "url": url}

    def save(self) -> None:
        """Write what was learnt (failures, and where each image came from)."""
        with self._lock:
            failures = json.dumps(self.failures, indent=1, sort_keys=True)
            sources = json.dumps(self.sources, indent=1, sort_keys=True)
        write_atomic(self.folder / FAILURES_FILE, failures.encode())
        write_atomic(self.folder / SOURCES_FILE, sources.encode())


class _TransientHTTP(Exception):
    """429 / 5xx: worth another attempt."""


def _download(session, url: str, options: ImageOptions) -> tuple[bytes, str | None]:
    import requests

    try:
        response = session.get(url, stream=True, timeout=options.timeout_s)
    except requests.TooManyRedirects as error:  # a redirect loop stays a loop: not worth another run
        raise ImageRejected("redirect_loop", str(error)) from error
    with response:
        if response.status_code == 429 or response.status_code >= 500:
            raise _TransientHTTP(f"HTTP {response.status_code}")
        if response.status_code != 200:
            raise ImageRejected("http_error", f"HTTP {response.status_code}")
        declared = response.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > options.max_bytes:
            raise ImageRejected("too_large", f"Content-Length {declared} > {options.max_bytes}")
        content_type = response.headers.get("Content-Type")
        _require_image_type(content_type)  # before the body is read
        chunks, size = [], 0
        # The timeout bounds each read, so a host sending a byte a second would hold a worker for hours:
        # the whole body gets a deadline, after which its socket is shut (which ends a blocked read).
        limit = options.timeout_s * 3
        cut = threading.Event()  # set before the socket is shut: a body that "ended" then was cut short
        watchdog = threading.Timer(limit, _shut, [_socket_of(response), cut])
        watchdog.daemon = True
        watchdog.start()
        try:
            for chunk in response.iter_content(chunk_size=1 << 16):
                size += len(chunk)
                if size > options.max_bytes:
                    raise ImageRejected("too_large", f"more than {options.max_bytes} bytes")
                chunks.append(chunk)
        except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError) as error:
            if not cut.is_set():
                raise _TransientHTTP(f"incomplete body ({error})") from error  # connection closed before the end
        finally:
            watchdog.cancel()
        if cut.is_set():  # shut by the watchdog: an error, or (a body without a length) an early "end"
            raise _TransientHTTP(f"body still arriving after {limit:.0f} s")
    return b"".join(chunks), content_type


def _socket_of(response: Any) -> Any:
    """The socket a streamed response reads from (private attributes of http.client and urllib3: None
    if a release moves them, and then only the per-read timeout applies)."""
    try:
        return response.raw._fp.fp.raw._sock
    except AttributeError:
        return getattr(getattr(response.raw, "connection", None), "sock", None)


def _shut(sock: Any, cut: threading.Event) -> None:
    import socket

    cut.set()
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:  # already closed
            pass


def fetch_images(items: Sequence[tuple[str, list[str]]], store: ImageStore, options: ImageOptions, *,
                 progress: Callable[[Iterable, int], Iterable] | None = None) -> dict[str, ImageOutcome]:
    """Make sure each ``(asin, urls)`` has its main image (``urls[0]``) in ``store``, or a recorded reason."""
    import requests
    import tenacity

    outcomes: dict[str, ImageOutcome] = {}
    todo: list[tuple[str, str]] = []
    for asin, urls in items:
        failure = store.failures.get(asin)
        if not urls:
            outcomes[asin] = ImageOutcome(path=None, error=f"{NO_IMAGE_URL}: the metadata lists no image")
        elif store.has(asin, urls[0]):
            outcomes[asin] = ImageOutcome(path=store.path(asin))
        elif failure and failure["permanent"] and failure["url"] == urls[0]:
            outcomes[asin] = ImageOutcome(path=None, error=failure["error"])
        else:
            todo.append((asin, urls[0]))

    local = threading.local()

    def session() -> requests.Session:
        if not hasattr(local, "session"):
            local.session = requests.Session()
            local.session.headers["User-Agent"] = options.user_agent
        return local.session

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception_type((_TransientHTTP, requests.ConnectionError, requests.Timeout)),
        wait=tenacity.wait_random_exponential(multiplier=options.backoff_initial_s, max=options.backoff_max_s),
        stop=tenacity.stop_after_attempt(options.max_attempts),
        reraise=True,
    )

    def fetch_one(asin: str, url: str) -> ImageOutcome:
        try:
            data, content_type = retrying(_download, session(), url, options)
            path = store.put(asin, to_jpeg(data, content_type, options), url)
            return ImageOutcome(path=path, downloaded=True)
        except ImageRejected as error:
            store.record_failure(asin, url, str(error), permanent=True)
            return ImageOutcome(path=None, error=str(error))
        except (_TransientHTTP, requests.RequestException) as error:
            attempts = retrying.statistics.get("attempt_number", options.max_attempts)
            message = f"download_failed: {type(error).__name__} after {attempts} attempt(s) ({error})"
            store.record_failure(asin, url, message[:300], permanent=False)
            return ImageOutcome(path=None, error=message[:300])

    pool = ThreadPoolExecutor(max_workers=max(1, options.concurrency))
    try:
        futures = {pool.submit(fetch_one, asin, url): asin for asin, url in todo}
        done = as_completed(futures)
        for future in (progress(done, len(futures)) if progress and futures else done):
            outcomes[futures[future]] = future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # on Ctrl-C: finish running downloads, start no more
        store.save()  # an interrupted run keeps what it learnt
    return outcomes


def failure_reasons(outcomes: dict[str, ImageOutcome]) -> Counter:
    """``{"http_error": 3, "undecodable": 1, ...}``: the short code before the colon."""
    return Counter(o.error.split(":", 1)[0] for o in outcomes.values() if o.path is None)
