"""Amazon product links in Reddit texts: ASIN extraction, the byte-level prefilter, short links.

:func:`extract_asins` reads the product links a Reddit body or title contains, as Reddit stores
them: markdown links, escaped underscores (``\\_``), HTML entities (``&amp;``), URL-encoded
links, every Amazon storefront and the mobile / ``smile.`` hosts. Pages that are not one product
(search, stores, wishlists, the image CDN) give nothing.

Short links (``amzn.to``, ``a.co``, ``amzn.eu``, ...) hide the ASIN behind a redirect. They are
listed by :func:`extract_short_links` and resolved only on request by :class:`ShortLinkResolver`,
which reads the first redirect's ``Location`` (never the product page), keeps at most a few
requests per host in flight, retries with backoff, gives each link a deadline and caches every
final answer on disk.
"""

from __future__ import annotations

import html
import logging
import re
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import final
from urllib.parse import urlsplit

import numpy

from reddit_amazon.dumps import BlockScratch
from reddit_amazon.http_session import (
    ProxyAuthRequired,
    RequestsInFlight,
    check_proxies,
    guarded_session,
    proxy_refused_tunnel,
)
from reddit_amazon.sqlite_cache import CacheFile, GoesOnWithoutTheFile

log = logging.getLogger(__name__)


class LinkPrefilter:
    """Where an Amazon link may start in a raw (not lower-cased) chunk of dump lines.

    Every dump line holding an Amazon product link contains "amazon." or "amzn." in some case
    (JSON may put escaped backslashes before the dot); short links may also be "a.co/" (JSON may
    write "a.co\\/"). The scan calls this on whole decompressed chunks before any JSON parsing.
    It is numpy over the chunk's bytes: the rare "z" (either case) is found in one vectorised pass
    (:meth:`~reddit_amazon.dumps.BlockScratch.find`), and only the bytes around each "z" are looked
    at afterwards. The "a.co/" pass starts from every ".", so it runs only when short links are
    resolved (without resolution an a.co link cannot give an ASIN).
    """

    def __init__(self, *, short_links: bool = True):
        self.short_links = short_links
        self._scratch = BlockScratch()

    def __call__(self, chunk: bytes, start: int, end: int) -> list[int]:
        """Positions in ``chunk[start:end]`` where "amazon" / "amzn" / "a.co" may start, in order."""
        data = numpy.frombuffer(chunk, dtype=numpy.uint8)[start:end]
        positions = self._amazon_or_amzn(data)
        if self.short_links:
            positions = numpy.union1d(positions, self._a_co(data))
        return (positions + start).tolist()

    def _amazon_or_amzn(self, data: numpy.ndarray) -> numpy.ndarray:
        size = len(data)
        z = self._scratch.find(data, _LOWER["z"], ascii_case=True)
        z = z[(z >= 2) & (z + 2 < size)]  # "amzn." has two bytes before its "z", two after
        before = _folded(data, z - 1)
        amzn = z[before == _LOWER["m"]]
        amzn = amzn[(_folded(data, amzn - 2) == _LOWER["a"]) & (_folded(data, amzn + 1) == _LOWER["n"])]
        amazon = z[before == _LOWER["a"]]
        amazon = amazon[(amazon >= 3) & (amazon + 3 < size)]
        amazon = amazon[
            (_folded(data, amazon - 2) == _LOWER["m"])
            & (_folded(data, amazon - 3) == _LOWER["a"])
            & (_folded(data, amazon + 1) == _LOWER["o"])
            & (_folded(data, amazon + 2) == _LOWER["n"])
        ]
        starts = numpy.concatenate((amzn - 2, amazon - 3))
        after_n = numpy.concatenate((amzn + 2, amazon + 3)).tolist()
        has_dot = [_dot_after_escaped_backslashes(data, position) for position in after_n]
        return numpy.sort(starts[numpy.array(has_dot, dtype=bool)])

    def _a_co(self, data: numpy.ndarray) -> numpy.ndarray:
        size = len(data)
        dots = self._scratch.find(data, _DOT)
        dots = dots[(dots >= 1) & (dots + 3 < size)]  # "a.co/": one byte before the dot, three after
        dots = dots[
            (_folded(data, dots - 1) == _LOWER["a"])
            & (_folded(data, dots + 1) == _LOWER["c"])
            & (_folded(data, dots + 2) == _LOWER["o"])
        ]
        after = data[dots + 3]
        escaped = dots[after == _BACKSLASH]
        escaped = escaped[escaped + 4 < size]
        escaped = escaped[data[escaped + 4] == _SLASH]
        return numpy.sort(numpy.concatenate((dots[after == _SLASH], escaped))) - 1


_LOWER = {letter: ord(letter) for letter in "zmanoc"}
_DOT, _BACKSLASH, _SLASH = ord("."), ord("\\"), ord("/")


def _folded(data: numpy.ndarray, positions: numpy.ndarray) -> numpy.ndarray:
    """The bytes at ``positions``, ASCII letters lower-cased (``| 0x20`` maps no other byte onto one)."""
    return data[positions] | 0x20


def _dot_after_escaped_backslashes(data: numpy.ndarray, position: int) -> bool:
    """``data[position:]`` is "." after zero or more escaped backslashes (``\\\\`` in JSON)."""
    size = len(data)
    while position + 1 < size and data[position] == _BACKSLASH and data[position + 1] == _BACKSLASH:
        position += 2
    return position < size and data[position] == _DOT


# A character a URL may hold in a text: whitespace, brackets, quotes and the like end it.
_URL_CHARACTER = r"[^\s()\[\]<>\"'|{}^`]"
# After the host, an apostrophe inside a word ("/Levi's-505/dp/…", also written "&#x27;") is part of
# the path; one before a space or punctuation closes a quoted link.
_PATH_APOSTROPHE = r"'(?=[\w/-])"
_PATH_CHARACTER = rf"(?:{_URL_CHARACTER}|{_PATH_APOSTROPHE})"
# Where a host may start: not after a letter, digit, "-" or "@" ("images-amazon.com",
# "notamazon.com", "user@amazon.com"), nor after a "." that follows a hostname label
# ("x.amzn.com" is another host). "_" (Markdown italics: "_amazon.com/dp/..._"), a letter of a
# script written without spaces and an ellipsis ("check it out...amazon.com/dp/…") may come before.
_HOST_START = r"(?<![a-z0-9@-])(?<![a-z0-9_@-]\.)"
#: The TLDs of Amazon's retail storefronts: the SP-API marketplaces (amazon.com, .ca, .com.mx,
#: .com.br, .ie, .es, .co.uk, .fr, .com.be, .nl, .de, .it, .se, .co.za, .pl, .eg, .com.tr, .sa, .ae,
#: .in, .sg, .com.au, .co.jp) and China's amazon.cn. Any other "amazon.<tld>" is not Amazon's shop.
STOREFRONT_TLDS: tuple[str, ...] = (
    "com", "ca", "com.mx", "com.br", "ie", "es", "co.uk", "fr", "com.be", "nl", "de", "it", "se", "co.za",
    "pl", "eg", "com.tr", "sa", "ae", "in", "sg", "com.au", "co.jp", "cn",
)
_STOREFRONT_TLD = "|".join(re.escape(tld) for tld in sorted(STOREFRONT_TLDS, key=len, reverse=True))
# A host whose last labels are "amazon.<storefront TLD>" (amazon.com, www.amazon.co.uk,
# smile.amazon.de, m.amazon.in, ...). The host must end after the TLD (and an optional port):
# "amazon.com.evil.example", "amazon.co.xyz" and "amazon.com@evil.example" are other hosts. The
# rest of the URL may hold balanced parentheses ("/Foo-(Pack-of-2)/dp/…"); an unbalanced ")"
# closes a markdown link.
_AMAZON_URL = re.compile(
    rf"{_HOST_START}(?:[a-z0-9-]+\.)*amazon\.(?:{_STOREFRONT_TLD})"
    r"(?::\d{1,5})?(?![\w@:-]|\.[\w-])"
    # Runs of plain characters are taken at once: one alternation per character cost 20% more time.
    rf"(?P<rest>(?:\({_PATH_CHARACTER}*\)|\(|{_URL_CHARACTER}+|{_PATH_APOSTROPHE})*)",
    re.IGNORECASE,
)
# amzn.com/<ASIN> and amzn.com/dp/<ASIN> (www. or not) carry the ASIN without a redirect.
_AMZN_COM_URL = re.compile(
    rf"{_HOST_START}(?:www\.)?amzn\.com/(?:dp/)?(?P<asin>[a-z0-9]{{10}})(?![a-z0-9])", re.IGNORECASE
)

# Path segments after which a product's ASIN follows. A slug may come before ("/Some-Name/dp/…").
_PRODUCT_PATH = re.compile(
    r"/(?:dp(?:/product)?|gp/product(?:/glance)?|gp/aw/d|gp/offer-listing|o/ASIN|exec/obidos/ASIN"
    r"|exec/obidos/tg/detail/-|product-reviews|gp/product-reviews|dp/aw/d)"
    r"/(?P<asin>[a-z0-9]{10})(?![a-z0-9])",
    re.IGNORECASE,
)

SHORT_LINK_HOSTS: tuple[str, ...] = ("amzn.to", "a.co", "amzn.eu", "amzn.asia", "amzn.in", "amzn.com.au")
_SHORT_LINK = re.compile(
    rf"{_HOST_START}(?:https?://)?(?P<host>{'|'.join(map(re.escape, SHORT_LINK_HOSTS))})"
    r"/(?P<path>(?:d/)?[A-Za-z0-9_-]+)",
    re.IGNORECASE,
)

# Reddit escapes markdown characters in stored bodies ("dp\_B0…", "\(", "\/"). A whole run of
# backslashes is matched at once and kept unless an escapable character follows: a pattern that
# requires that character after "\\+" backtracks through the run at each of its positions.
_BACKSLASH_RUN = re.compile(r"\\+(?P<escaped>[_*~()\[\]/#.\-])?")

# Only the characters that delimit a link wrapped in another one ("?q=https%3A%2F%2Fwww.amazon…")
# are decoded: a decoded space, quote or parenthesis in a slug ("/Men%27s-Shoe/dp/…") would end
# the URL before its "/dp/".
_PERCENT_DELIMITER = re.compile(r"%(?:3A|2F|3F|3D|26|25)", re.IGNORECASE)


def _unescape_markdown(match: re.Match[str]) -> str:
    return match["escaped"] or match[0]


def _decode_delimiter(match: re.Match[str]) -> str:
    return chr(int(match[0][1:], 16))


def _normalise(text: str) -> str:
    text = html.unescape(text) if "&" in text else text
    text = _BACKSLASH_RUN.sub(_unescape_markdown, text) if "\\" in text else text
    if "%" in text:
        # Twice: links pasted from redirects are often encoded twice ("%252F").
        text = _PERCENT_DELIMITER.sub(_decode_delimiter, _PERCENT_DELIMITER.sub(_decode_delimiter, text))
    return text


def _asin_of(path: str) -> str | None:
    match = _PRODUCT_PATH.search(path)
    if not match:
        return None
    asin = match["asin"].upper()
    return asin if any(character.isdigit() for character in asin) else None  # not "/dp/bestseller"


# Links pasted with only a comma between them: the first URL would swallow the second.
_COMMA_BEFORE_LINK = re.compile(r",(?=(?:https?://)?(?:[a-z0-9-]+\.)*(?:amazon|amzn)\.)", re.IGNORECASE)


def _asins_at(text: str) -> list[tuple[int, str]]:
    """(position, ASIN) of each product link in an already normalised text."""
    if "," in text:
        text = _COMMA_BEFORE_LINK.sub(" ", text)  # same length: positions stay
    found = []
    for match in _AMAZON_URL.finditer(text):
        asin = _asin_of(match["rest"])
        if asin:
            found.append((match.start(), asin))
    found.extend((match.start(), match["asin"].upper()) for match in _AMZN_COM_URL.finditer(text))
    return found


def _short_links_at(text: str) -> list[tuple[int, str]]:
    return [(m.start(), f"https://{m['host'].lower()}/{m['path']}") for m in _SHORT_LINK.finditer(text)]


def _mentions_amazon(text: str) -> bool:
    lowered = text.lower()
    return "amazon" in lowered or "amzn" in lowered or "a.co/" in lowered


def extract_asins(text: str) -> list[str]:
    """ASINs of the Amazon product links in ``text``: unique, in order of appearance.

    >>> extract_asins("[this](https://www.amazon.com/x/dp/B00NN2Y04E/ref=sr_1) and amazon.co.uk/gp/product/b07xj8c8f5.")
    ['B00NN2Y04E', 'B07XJ8C8F5']
    """
    if not text or not _mentions_amazon(text):
        return []
    return list(dict.fromkeys(asin for _, asin in sorted(_asins_at(_normalise(text)))))


def extract_short_links(text: str) -> list[str]:
    """Amazon short links in ``text`` as ``https://host/path`` (host lower-cased), unique, in order."""
    if not text or not _mentions_amazon(text):
        return []
    return list(dict.fromkeys(url for _, url in _short_links_at(_normalise(text))))


def linked_asins(text: str, resolved_short_links: Mapping[str, Iterable[str]]) -> list[str]:
    """ASINs of the product links and of the resolved short links in ``text``, in order of appearance."""
    if not text or not _mentions_amazon(text):
        return []
    text = _normalise(text)
    found = _asins_at(text)
    for position, url in _short_links_at(text):
        found.extend((position, asin) for asin in resolved_short_links.get(url, ()))
    found.sort(key=lambda pair: pair[0])  # stable: a short link's ASINs keep their order
    return list(dict.fromkeys(asin for _, asin in found))


# --------------------------------------------------------------------------------------------
# Short-link resolution
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShortLinkResolution:
    url: str
    location: str  # the redirect target ("" when none)
    asins: tuple[str, ...]
    error: str  # "" when resolved; why not otherwise

    @property
    def resolved(self) -> bool:
        return not self.error

    @property
    def unreachable(self) -> bool:
        """No final answer came (connection errors, timeouts, 408 / 429 / 5xx after the retries, the link's
        deadline, a proxy's 407, or an answer that is neither a redirect nor "not found", such as a 403 block): a later
        run asks again."""
        return self.error.startswith(UNREACHABLE)


UNREACHABLE = "unreachable"
#: The time one short link may take, retries and every hop of a chain included (``deadline_s``).
DEFAULT_DEADLINE_S = 60.0
#: Answers that say for good that a short link leads nowhere.
NOT_FOUND_STATUSES = (404, 410)


def _report_proxy_auth_required(resolutions: Iterable[ShortLinkResolution]) -> None:
    """One warning for the links a proxy's 407 left unresolved: the same answer for each, and not one a link's error
    in ``unresolved_short_links.txt`` (a list of links) shows. A warning of the package's logger, as its other
    warnings: on stderr (the bar is closed by now), and in the run log of a build or ``reddit-stage``."""
    refused = sum(r.error.startswith(f"{UNREACHABLE}: {ProxyAuthRequired.reason}") for r in resolutions)
    if refused:
        log.warning("%d short link(s) left for the next run: %s", refused, ProxyAuthRequired())


class _TransientError(Exception):
    """A failure worth retrying: connection error, timeout, 408, 429 or 5xx."""


class _DeadlinePassed(Exception):
    """The link's deadline passed before a final answer (a host trickling its headers, slow retries or hops)."""


class _Stopped(Exception):
    """The run is stopping (Ctrl-C, SIGTERM): the link's request was cut, or not sent. Not cached."""


@final
class _LinkClock:
    """The time a short link has left. Its requests, the waits before retries and every hop count; the wait for
    a free slot of a host does not (that is other links' time: a slow host would fail every link queued behind)."""

    def __init__(self, seconds: float, stopped: threading.Event):
        self.seconds = seconds
        self._ends = time.monotonic() + seconds
        self._stopped = stopped

    def left(self) -> float:
        return self._ends - time.monotonic()

    def sleep(self, seconds: float) -> None:
        """Sleep ``seconds``, or until the deadline or the run stopping, when one comes first."""
        self._stopped.wait(max(0.0, min(seconds, self.left())))

    @contextmanager
    def stopped(self) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self._ends += time.monotonic() - started


class _UnusableAnswer(Exception):
    """An answer that is neither a redirect nor "not found": 401 / 403 from a block, a 200 page, another 4xx.

    Not retried now (a block rarely lifts within seconds) and not cached, so a later run asks again.
    """


class ShortLinkCacheError(OSError):
    """The short-link cache file cannot be opened, read or written (its path is in the message)."""


class ShortLinkCache:
    """SQLite file mapping short link -> redirect target. Only definitive answers are stored. While another
    process holds the file, a lookup is a miss (the link is asked) and an answer is not stored
    (:class:`GoesOnWithoutTheFile`)."""

    #: What earlier versions stored for any answer without a redirect, a block page included.
    _NOT_FINAL = "no redirect"

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._file = CacheFile(self.path, "the short-link cache", unavailable=ShortLinkCacheError,
                               damaged=ShortLinkCacheError, loss="its links are then resolved again")
        self._shared = GoesOnWithoutTheFile(self._file, "CREATE TABLE IF NOT EXISTS short_links "
                                            "(url TEXT PRIMARY KEY, location TEXT NOT NULL, error TEXT NOT NULL)")
        self._db = self._shared.connect(owner=self, check_same_thread=False)

    def get(self, url: str) -> ShortLinkResolution | None:
        with self._lock:
            row = self._shared.read(self._db, lambda: self._db.execute(
                "SELECT location, error FROM short_links WHERE url = ?", (url,)).fetchone(), None)
        if row is None or row[1] == self._NOT_FINAL:
            return None
        return ShortLinkResolution(url, row[0], tuple(extract_asins(row[0])), row[1])

    def put(self, resolution: ShortLinkResolution) -> None:
        with self._lock:
            self._shared.write(self._db, lambda: self._db.execute(
                "INSERT OR REPLACE INTO short_links VALUES (?, ?, ?)",
                (resolution.url, resolution.location, resolution.error)))

    def close(self) -> None:
        with self._lock:  # not while a worker left running by a second Ctrl-C is writing
            self._db.close()


class ShortLinkResolver:
    """Resolve short links to ASINs through the first redirect, with a disk cache.

    ``endpoints`` maps a short-link host to the base URL actually contacted (a proxy, or a
    loopback server in tests); other hosts are contacted at ``https://<host>``. ``timeout_s`` bounds each
    read; ``deadline_s`` the whole of a link (see :class:`_LinkClock`): a link still without a final answer
    then is unreachable ("deadline"), not cached, and asked again by a later run.
    """

    def __init__(
        self,
        cache_path: Path,
        *,
        per_host_concurrency: int = 2,
        timeout_s: float = 10.0,
        attempts: int = 4,
        backoff_s: float = 1.0,
        max_hops: int = 3,
        deadline_s: float = DEFAULT_DEADLINE_S,
        endpoints: Mapping[str, str] | None = None,
        user_agent: str = "reddit-amazon (dataset build; resolves short links once)",
    ):
        self.cache = ShortLinkCache(cache_path)
        self.per_host_concurrency = per_host_concurrency
        self.timeout_s = timeout_s
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.max_hops = max_hops
        self.deadline_s = deadline_s
        self.endpoints = {k.lower(): v.rstrip("/") for k, v in (endpoints or {}).items()}
        self.user_agent = user_agent
        self._host_slots: dict[str, threading.Semaphore] = {}
        self._slots_lock = threading.Lock()
        self._local = threading.local()
        self._in_flight = RequestsInFlight()

    def resolve_all(self, urls: Iterable[str], *, progress: bool = True) -> dict[str, ShortLinkResolution]:
        """Resolve every url (cached answers first); the result has one entry per url."""
        from tqdm import tqdm

        from reddit_amazon.progress import bar_options

        urls = list(dict.fromkeys(urls))
        results: dict[str, ShortLinkResolution] = {}
        pending = []
        for url in urls:
            cached = self.cache.get(url)
            if cached is not None:
                results[url] = cached
            else:
                pending.append(url)
        if pending:
            check_proxies(map(self._target, pending))  # before any request: a proxy that cannot be used fails them all
            hosts = {urlsplit(u).hostname for u in pending}
            workers = max(1, min(len(pending), self.per_host_concurrency * len(hosts)))
            with ThreadPoolExecutor(workers) as pool, tqdm(
                total=len(pending), desc="short links", unit="link", **bar_options(progress)
            ) as bar:
                try:
                    for resolution in pool.map(self._fetch, pending):
                        results[resolution.url] = resolution
                        bar.update()
                except BaseException:
                    # Ctrl-C, SIGTERM: the links in flight are cut at once (not cached: the next run asks them),
                    # instead of leaving the pool only once each has answered or reached its deadline (a minute).
                    self._in_flight.stop()
                    raise
            _report_proxy_auth_required(results.values())
        return results

    def resolve(self, url: str) -> ShortLinkResolution:
        """The cached answer for ``url``, or a fresh one (cached when final)."""
        cached = self.cache.get(url)
        return cached if cached is not None else self._fetch(url)

    def _fetch(self, url: str) -> ShortLinkResolution:
        current = url
        clock = _LinkClock(self.deadline_s, self._in_flight.stopped)
        try:
            for _ in range(self.max_hops):
                location = self._first_redirect(current, clock)
                if not location:
                    resolution = ShortLinkResolution(url, "", (), "not found")
                    break
                asins = extract_asins(location)
                next_short_links = extract_short_links(location)
                if asins or not next_short_links:
                    error = "" if asins else "redirect is not a product page"
                    resolution = ShortLinkResolution(url, location, tuple(asins), error)
                    break
                current = next_short_links[0]
            else:
                too_many = f"more than {self.max_hops} redirects between short links"
                resolution = ShortLinkResolution(url, "", (), too_many)
        except _DeadlinePassed:  # not cached either
            return ShortLinkResolution(url, "", (), f"{UNREACHABLE}: deadline: no final answer within "
                                                    f"{self.deadline_s:g} s")
        except (_TransientError, _UnusableAnswer, _Stopped, ProxyAuthRequired) as error:
            # Not cached: a later run tries again.
            return ShortLinkResolution(url, "", (), f"{UNREACHABLE}: {error}")
        self.cache.put(resolution)
        return resolution

    def _slot(self, host: str) -> threading.Semaphore:
        with self._slots_lock:
            return self._host_slots.setdefault(host, threading.Semaphore(self.per_host_concurrency))

    def _session(self):
        session = getattr(self._local, "session", None)
        if session is None:
            # Its connections hand their socket to the Deadline of each request. The hosts are the short-link
            # services or the endpoints the caller configured (never a host a text names): any address goes.
            session = self._local.session = guarded_session(self.user_agent, allow_private_hosts=True)
        return session

    def _first_redirect(self, url: str, clock: _LinkClock) -> str:
        """The ``Location`` of ``url``'s redirect; "" when the link is not found (404 / 410)."""
        from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

        host = (urlsplit(url).hostname or "").lower()
        target = self._target(url)
        retrying = Retrying(
            stop=stop_after_attempt(self.attempts),
            wait=wait_exponential(multiplier=self.backoff_s, max=30),
            retry=retry_if_exception_type(_TransientError),
            sleep=clock.sleep,
            reraise=True,
        )
        slot = self._slot(host)
        with clock.stopped():
            slot.acquire()
        try:
            return retrying(self._request_location, target, clock)
        finally:
            slot.release()

    def _target(self, url: str) -> str:
        """Where ``url`` is asked: its host (over https), or the endpoint configured for that host."""
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        return self.endpoints.get(host, f"https://{host}") + parts.path

    def _request_location(self, target: str, clock: _LinkClock) -> str:
        import requests

        left = clock.left()
        if self._in_flight.stopped.is_set():
            raise _Stopped("interrupted")
        if left <= 0:
            raise _DeadlinePassed
        # The timeout bounds each read (and the connect): a host sending its headers a byte at a time would
        # hold the link for hours, so at the deadline the socket is shut, ending a blocked read.
        with self._in_flight.request(left) as deadline:
            try:
                response = self._session().get(target, allow_redirects=False, timeout=min(self.timeout_s, left),
                                               stream=True)
            except requests.RequestException as error:
                if self._in_flight.stopped.is_set():
                    raise _Stopped("interrupted") from None
                if deadline.expired.is_set():
                    raise _DeadlinePassed from None
                if proxy_refused_tunnel(error):  # the answer to every link: not worth a retry in this run
                    raise ProxyAuthRequired() from None
                raise _TransientError(type(error).__name__) from None
            try:
                if deadline.expired.is_set():  # headers cut short (an end of file ends them without an error)
                    raise _Stopped("interrupted") if self._in_flight.stopped.is_set() else _DeadlinePassed
                status = response.status_code
                if status == 407:
                    raise ProxyAuthRequired()
                if status in (408, 429) or status >= 500:
                    retry_after = response.headers.get("Retry-After", "")
                    if retry_after.isdigit():
                        clock.sleep(min(int(retry_after), 30))
                    raise _TransientError(f"HTTP {status}")
                location = response.headers.get("Location", "") if response.is_redirect else ""
                if location:
                    return location
                if status in NOT_FOUND_STATUSES:
                    return ""
                raise _UnusableAnswer(f"HTTP {status} without a redirect")
            finally:
                response.close()

    def close(self) -> None:
        self.cache.close()
