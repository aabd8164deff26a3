"""ASIN extraction from Reddit texts, the byte prefilter, and short-link resolution over loopback HTTP."""

from __future__ import annotations

import json
import logging
import random
import re
import sys
import threading
import time

import pytest
from werkzeug import Response

from reddit_amazon import dumps
from reddit_amazon.linking import (
    STOREFRONT_TLDS,
    LinkPrefilter,
    ShortLinkResolution,
    ShortLinkResolver,
    extract_asins,
    extract_short_links,
    linked_asins,
)
from trickling_server import trickling_server  # tests/: a server answering a byte at a time
from refusing_proxy import refusing_proxy  # tests/: a proxy answering 407 to everything


def may_contain_link(line: bytes) -> bool:
    """The prefilter on one raw dump line."""
    return bool(LinkPrefilter()(line, 0, len(line)))

POSITIVE = [
    ("https://www.amazon.com/dp/B00NN2Y04E", ["B00NN2Y04E"]),
    ("http://amazon.com/gp/product/B07XJ8C8F5/ref=ox_sc_act_title_1?smid=ATVPDKIKX0DER&psc=1", ["B07XJ8C8F5"]),
    ("https://smile.amazon.com/Some-Product-Slug/dp/B01N5IB20Q/ref=sr_1_3?keywords=x", ["B01N5IB20Q"]),
    ("https://www.amazon.co.uk/gp/aw/d/B004NMYR96/ref=mp_s_a_1_1", ["B004NMYR96"]),
    ("https://www.amazon.ca/o/ASIN/B00AGG3MZ8/", ["B00AGG3MZ8"]),
    ("http://www.amazon.de/exec/obidos/ASIN/3453146972/", ["3453146972"]),
    ("https://www.amazon.com/exec/obidos/tg/detail/-/0262033844", ["0262033844"]),
    ("https://www.amazon.com.au/product-reviews/B0CK2JRNX5/ref=cm_cr_dp", ["B0CK2JRNX5"]),
    ("https://m.amazon.in/dp/b07s5j3krx?psc=1", ["B07S5J3KRX"]),  # lower-case ASIN in a mobile link
    ("https://www.amazon.co.jp/gp/product/B08G475DFX", ["B08G475DFX"]),
    ("https://www.amazon.com.mx/dp/B09L87ZZPQ.", ["B09L87ZZPQ"]),  # trailing punctuation
    ("[the mask](http://www.amazon.com/Collagen-Facial-Mask/dp/B005KE1IH0/)", ["B005KE1IH0"]),
    ("[https://www.amazon.com/dp/B000A3V2BI](https://www.amazon.com/dp/B000A3V2BI)", ["B000A3V2BI"]),
    (r"[link](https://www.amazon.com/Van\_Der\_Hagen/dp/B07C1VRYN1/ref=sr\_1\_3)", ["B07C1VRYN1"]),
    (r"https://www.amazon.com/dp\/B07C1VRYN2\)", ["B07C1VRYN2"]),
    ("https%3A%2F%2Fwww.amazon.com%2Fdp%2FB0080M092E%2F", ["B0080M092E"]),  # URL-encoded
    ("https://www.amazon.com/NeuEve-NeuEve%C2%AE-Suppository/dp/B00NN2Y04E", ["B00NN2Y04E"]),
    ("https://www.amazon.com/gp/product/B08YZ5PSQW?psc=1&amp;ref=ppx", ["B08YZ5PSQW"]),  # HTML entity
    ("Amazon.com/dp/B08F82Z1XL, or AMAZON.COM/DP/B08F82Z1XM!", ["B08F82Z1XL", "B08F82Z1XM"]),
    ("amzn.com/B0057D86QA and amzn.com/dp/B0057D86QB", ["B0057D86QA", "B0057D86QB"]),
    (
        "first https://www.amazon.com/dp/B00000000A then www.amazon.com/dp/B00000000B and again "
        "https://www.amazon.com/x/dp/B00000000A/",
        ["B00000000A", "B00000000B"],
    ),
    ("(https://www.amazon.com/dp/B01KLNNHDM)", ["B01KLNNHDM"]),
    ("<https://www.amazon.com/dp/B01KLNNHDN>", ["B01KLNNHDN"]),
    ("https://www.amazon.com/gp/offer-listing/B002UKSZUU/ref=dp_olp", ["B002UKSZUU"]),
    # pasted with only a comma between, in Markdown italics, after a letter of a script without spaces
    ("amazon.com/dp/B000NL0T1G,https://amazon.com/dp/B00AGG3MZ8", ["B000NL0T1G", "B00AGG3MZ8"]),
    ("_amazon.com/dp/B000NL0T1G_", ["B000NL0T1G"]),
    ("これamazon.co.jp/dp/B000NL0T1G", ["B000NL0T1G"]),
    ("https://www.amazon.com/Neutrogena,-Hydro/dp/B00NR1YQHM?k=a,b", ["B00NR1YQHM"]),
    ("http://www.amzn.com/B09L87ZZPQ", ["B09L87ZZPQ"]),
    ("check it out...amazon.com/dp/B09L87ZZPQ and…www.amazon.com/dp/B09L87ZZPR", ["B09L87ZZPQ", "B09L87ZZPR"]),
    # an apostrophe in a slug, as typed or as an HTML entity; a closing quote still ends the link
    ("https://www.amazon.com/Levi's-505/dp/B09L87ZZPQ", ["B09L87ZZPQ"]),
    ("https://www.amazon.com/Levi&#x27;s-505/dp/B09L87ZZPQ and https://www.amazon.com/L&#39;Oreal/dp/B09L87ZZPR",
     ["B09L87ZZPQ", "B09L87ZZPR"]),
    ("'https://amazon.com/s?k=jeans','https://amazon.com/dp/B09L87ZZPQ'", ["B09L87ZZPQ"]),
    ("https://www.amazon.com/gp/product/glance/B00NN2Y04E", ["B00NN2Y04E"]),
    ("https://www.amazon.com/dp/product/B00NN2Y04E/ref=x", ["B00NN2Y04E"]),
    ("amzn.com/b0057d86qa", ["B0057D86QA"]),  # lower case, as amazon links are
    # Reddit stores "<" and ">" as entities: undecoded, the first link would run on and swallow the second
    ("&lt;https://www.amazon.com/dp/B000000001&gt;&lt;https://www.amazon.com/dp/B000000002&gt;",
     ["B000000001", "B000000002"]),
]

NEGATIVE = [
    "https://www.amazon.com/s?k=razor+blades&ref=nb_sb_noss",
    "https://www.amazon.com/stores/Merkur/page/6C5E0B0A-0000-4A7E-9E3D",
    "https://www.amazon.com/hz/wishlist/ls/2ABCDEFGHIJKL?ref_=wl_share",
    "https://images-na.ssl-images-amazon.com/images/I/81B8dJ9cNlL._SL1500_.jpg",
    "https://m.media-amazon.com/images/I/71ABCDEFGHI.jpg",
    "https://ecx.images-amazon.com/images/I/51B00ABCDEFG.jpg",
    "https://www.amazon.com/b?node=1234567890",
    "https://www.amazon.com/gp/registry/wishlist/3ABCDEFGHIJKL",
    "https://notamazon.com/dp/B00NN2Y04E",
    "https://www.amazon.company.example/dp/B00NN2Y04E",
    "I bought it on Amazon. The dp/B00NN2Y04E code is on the box.",
    "https://www.amazon.com/dp/B00NN2Y04EXTRA",  # 11+ characters is no ASIN
    "https://www.ebay.com/itm/B00NN2Y04E",
    "https://www.amazon.com/dp/bestseller",  # ten letters, no digit: a word, not an ASIN
    "https://x-amazon.com/dp/B00NN2Y04E",
    "https://amazon.net/dp/B09L87ZZPQ",  # not a storefront
    "amazon.xyz/dp/B09L87ZZPQ",
    "https://x.amzn.com/B09L87ZZPQ",
    "https://example.amazon.com.example/dp/B09L87ZZPQ",
    "",
]


@pytest.mark.parametrize(("text", "expected"), POSITIVE)
def test_extract_asins_link_forms(text, expected):
    assert extract_asins(text) == expected


@pytest.mark.parametrize("text", NEGATIVE)
def test_extract_asins_ignores_non_product_pages(text):
    assert extract_asins(text) == []


def test_prefilter_passes_every_positive_and_short_link():
    for text, _ in POSITIVE:
        raw = json.dumps({"body": text}).encode()
        assert may_contain_link(raw), text
    for text in ["amzn.to/3xYz", "https://a.co/d/abc123", "see amzn.eu/d/7Kq", "AMZN.TO/abc"]:
        assert may_contain_link(json.dumps({"body": text}).encode())
    assert may_contain_link(b'{"body":"https:\\/\\/a.co\\/d\\/abc"}')  # JSON with escaped slashes
    assert not may_contain_link(b'{"body":"I got mine on Amazon prime day"}')


def _reference_positions(chunk: bytes, start: int, end: int, short_links: bool) -> list[int]:
    """The prefilter's contract, written the slow obvious way: regexes over a lower-cased copy."""
    lowered = chunk.lower()
    found = {m.start() for m in re.finditer(rb"(?=(?:amazon|amzn)(?:\\\\)*\.)", lowered[start:end])}
    if short_links:
        found |= {m.start() for m in re.finditer(rb"(?=a\.co\\?/)", lowered[start:end])}
    return sorted(position + start for position in found)


@pytest.mark.parametrize("block", [None, 1, 3, 8])
def test_prefilter_positions_match_a_plain_regex_reference(block, monkeypatch):
    if block:  # tiny search blocks: a word cut at every block edge is still found
        monkeypatch.setattr(dumps, "SEARCH_BLOCK", block)
    rng = random.Random(7)
    pieces = [b"amazon.", b"AMAZON.COM", b"Amazon.co.uk", b"aMaZoN.de", b"amzn.to", b"AMZN.", b"amazon\\\\.com",
              b"amzn\\.", b"a.co/", b"A.CO\\/", b"amazon", b"amazon prime", b"amazin.", b"mazon.", b"zon.", b"amzn",
              b"az.", b"a.co", b"z", b"Z", b"\\", b".", b"\n", b" ", b"words ", b"horizon. ", b"\xc3\xa9"]
    for trial in range(300):
        chunk = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 40)))
        start = rng.randint(0, len(chunk))
        end = rng.randint(start, len(chunk))
        for short_links in (False, True):
            got = LinkPrefilter(short_links=short_links)(chunk, start, end)
            assert got == _reference_positions(chunk, start, end, short_links), (chunk, start, end)


def test_prefilter_reuses_its_scratch_arrays_across_chunk_sizes():
    prefilter = LinkPrefilter()
    assert prefilter(b"x" * 100 + b"amazon.com", 0, 110) == [100]
    assert prefilter(b"amzn.to", 0, 7) == [0]  # a smaller chunk after a larger one
    assert prefilter(b"", 0, 0) == []


def test_extract_short_links():
    text = (
        "see https://amzn.to/3xYzAbC and [this](https://a.co/d/8fGhIjK), amzn.eu/d/Q1w2E3 or "
        "AMZN.TO/3xYzAbC; not via.co/abc nor data.com/x"
    )
    # The upper-case repeat is the same link (hosts are case-insensitive, paths are not).
    assert extract_short_links(text) == [
        "https://amzn.to/3xYzAbC",
        "https://a.co/d/8fGhIjK",
        "https://amzn.eu/d/Q1w2E3",
    ]
    assert extract_short_links("https://www.amazon.com/dp/B00NN2Y04E") == []
    assert extract_short_links("got it here...amzn.to/3xYzAbC, not x.amzn.to/9") == ["https://amzn.to/3xYzAbC"]


def test_release_recall(lavic_release):
    """Every gt item of the authors' release is among the ASINs extracted from its gt text."""
    total = found = 0
    misses = []
    for path in sorted(lavic_release.glob("*/valid.jsonl")):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            asins = extract_asins(record["gt"])
            for item in record["gt_items"]:
                total += 1
                if item in asins:
                    found += 1
                else:
                    misses.append((path.parent.name, item, record["gt"][:200]))
    assert total > 2000
    assert not misses, misses[:5]


# --------------------------------------------------------------------------------------------
# Short-link resolution against a loopback server
# --------------------------------------------------------------------------------------------


@pytest.fixture
def resolver_factory(httpserver, tmp_path):
    created = []

    def make(**kwargs):
        endpoint = httpserver.url_for("").rstrip("/")
        options = {
            "endpoints": {"amzn.to": endpoint, "a.co": endpoint},
            "backoff_s": 0.01,
            "timeout_s": 5,
        }
        options.update(kwargs)
        resolver = ShortLinkResolver(tmp_path / "cache.sqlite", **options)
        created.append(resolver)
        return resolver

    yield make
    for resolver in created:
        resolver.close()


def test_resolves_first_redirect_and_caches(httpserver, resolver_factory):
    httpserver.expect_request("/3xYz").respond_with_response(
        Response(status=301, headers={"Location": "https://www.amazon.com/dp/B00NN2Y04E?tag=x"})
    )
    httpserver.expect_request("/d/gone").respond_with_response(Response("not found", status=404))
    resolver = resolver_factory()
    results = resolver.resolve_all(["https://amzn.to/3xYz", "https://a.co/d/gone"], progress=False)
    assert results["https://amzn.to/3xYz"].asins == ("B00NN2Y04E",)
    assert results["https://amzn.to/3xYz"].resolved
    assert not results["https://a.co/d/gone"].resolved
    assert len(httpserver.log) == 2
    # A second resolver on the same cache file contacts nobody.
    again = resolver_factory().resolve_all(["https://amzn.to/3xYz", "https://a.co/d/gone"], progress=False)
    assert again == results
    assert len(httpserver.log) == 2


def test_retries_transient_errors_with_backoff(httpserver, resolver_factory):
    httpserver.expect_ordered_request("/flaky").respond_with_response(Response("busy", status=503))
    httpserver.expect_ordered_request("/flaky").respond_with_response(Response("slow down", status=429))
    httpserver.expect_ordered_request("/flaky").respond_with_response(
        Response(status=302, headers={"Location": "https://www.amazon.co.uk/gp/product/B07XJ8C8F5"})
    )
    result = resolver_factory(attempts=4).resolve("https://amzn.to/flaky")
    assert result.asins == ("B07XJ8C8F5",)
    assert len(httpserver.log) == 3


def test_unreachable_links_are_reported_not_cached(httpserver, resolver_factory):
    httpserver.expect_request("/down").respond_with_response(Response("busy", status=503))
    resolver = resolver_factory(attempts=2)
    result = resolver.resolve("https://amzn.to/down")
    assert not result.resolved and "HTTP 503" in result.error
    assert resolver.cache.get("https://amzn.to/down") is None


@pytest.mark.parametrize(
    "answer",
    [Response("blocked", status=403), Response("log in", status=401), Response("<html>robot check</html>"),
     Response("teapot", status=418), Response(status=301)],  # the last: a redirect without a Location
)
def test_answers_without_a_redirect_are_unreachable_not_cached(httpserver, resolver_factory, answer):
    httpserver.expect_request("/blocked").respond_with_response(answer)
    resolver = resolver_factory()
    result = resolver.resolve("https://amzn.to/blocked")
    assert result.unreachable and f"HTTP {answer.status_code}" in result.error
    assert len(httpserver.log) == 1  # a block is not hammered with retries
    assert resolver.cache.get("https://amzn.to/blocked") is None
    resolver_factory().resolve_all(["https://amzn.to/blocked"], progress=False)
    assert len(httpserver.log) == 2  # a later run asks again


def test_408_is_retried_and_410_is_final(httpserver, resolver_factory):
    httpserver.expect_ordered_request("/slow").respond_with_response(Response("timeout", status=408))
    httpserver.expect_ordered_request("/slow").respond_with_response(
        Response(status=302, headers={"Location": "https://www.amazon.com/dp/B07XJ8C8F5"})
    )
    httpserver.expect_ordered_request("/gone").respond_with_response(Response("gone", status=410))
    resolver = resolver_factory()
    assert resolver.resolve("https://amzn.to/slow").asins == ("B07XJ8C8F5",)
    gone = resolver.resolve("https://amzn.to/gone")
    assert not gone.resolved and not gone.unreachable
    assert resolver.cache.get("https://amzn.to/gone") == gone
    assert len(httpserver.log) == 3


def test_a_block_page_cached_by_an_earlier_version_is_asked_again(httpserver, resolver_factory):
    httpserver.expect_request("/3xYz").respond_with_response(
        Response(status=301, headers={"Location": "https://www.amazon.com/dp/B00NN2Y04E"})
    )
    resolver = resolver_factory()
    resolver.cache.put(ShortLinkResolution("https://amzn.to/3xYz", "", (), "no redirect"))
    assert resolver.resolve("https://amzn.to/3xYz").asins == ("B00NN2Y04E",)
    assert len(httpserver.log) == 1


def test_follows_short_link_chains_and_reports_non_product_targets(httpserver, resolver_factory):
    endpoint = httpserver.url_for("").rstrip("/")
    httpserver.expect_request("/hop").respond_with_response(
        Response(status=301, headers={"Location": "https://a.co/d/target"})
    )
    httpserver.expect_request("/d/target").respond_with_response(
        Response(status=301, headers={"Location": "https://www.amazon.com/Some-Slug/dp/B01N5IB20Q/"})
    )
    httpserver.expect_request("/store").respond_with_response(
        Response(status=301, headers={"Location": "https://www.amazon.com/stores/Merkur/page/1"})
    )
    resolver = resolver_factory(endpoints={"amzn.to": endpoint, "a.co": endpoint})
    assert resolver.resolve("https://amzn.to/hop").asins == ("B01N5IB20Q",)
    store = resolver.resolve("https://amzn.to/store")
    assert store.asins == () and store.error == "redirect is not a product page"


def test_per_host_concurrency_is_bounded(tmp_path, threaded_httpserver):
    in_flight = 0
    peak = 0
    lock = threading.Lock()

    def slow_redirect(request):
        nonlocal in_flight, peak
        with lock:
            in_flight += 1
            peak = max(peak, in_flight)
        time.sleep(0.05)
        with lock:
            in_flight -= 1
        return Response(status=301, headers={"Location": f"https://www.amazon.com/dp/B0000000{request.path[-2:]}"})

    for i in range(12):
        threaded_httpserver.expect_request(f"/s{i:02d}").respond_with_handler(slow_redirect)
    endpoint = threaded_httpserver.url_for("").rstrip("/")
    resolver = ShortLinkResolver(tmp_path / "c.sqlite", per_host_concurrency=2, endpoints={"amzn.to": endpoint})
    results = resolver.resolve_all([f"https://amzn.to/s{i:02d}" for i in range(12)], progress=False)
    resolver.close()
    assert all(r.resolved for r in results.values())
    assert results["https://amzn.to/s07"].asins == ("B000000007",)
    assert peak == 2


@pytest.mark.parametrize("first, trickled", [(b"HTTP/1.1 301 Moved Permanently\r\nX-Pad: ", b"x"),
                                             (b"HTTP/1.1 3", b"0")])  # the headers, or the status line itself
def test_a_host_trickling_its_answer_is_cut_at_the_links_deadline(resolver_factory, first, trickled):
    """The timeout bounds each read: a host sending its headers a byte every 0.2 s held the link (and its
    worker) for as long as it liked. At the deadline the link is unresolved, not cached, asked again next run;
    an answer cut inside its status line (an error, not an early end) is the deadline too, not a failed read."""
    server = trickling_server([first, *[trickled] * 30,
                               b"\r\nLocation: https://www.amazon.com/dp/B00NN2Y04E\r\n\r\n"], 0.2)
    endpoint = f"http://127.0.0.1:{server.getsockname()[1]}"
    resolver = resolver_factory(endpoints={"amzn.to": endpoint}, deadline_s=1.0, attempts=1)
    started = time.monotonic()
    result = resolver.resolve("https://amzn.to/trickle")
    assert time.monotonic() - started < 3  # the answer alone takes 6 s
    assert result.unreachable and result.error == "unreachable: deadline: no final answer within 1 s"
    assert resolver.cache.get("https://amzn.to/trickle") is None
    server.close()


@pytest.mark.parametrize("answer, backoff_s", [(Response("busy", status=503, headers={"Retry-After": "5"}), 0.01),
                                               (Response("busy", status=503), 5.0)])
def test_waits_before_a_retry_end_at_the_links_deadline(httpserver, resolver_factory, answer, backoff_s):
    """A Retry-After or a backoff longer than the time left ends at the deadline, and nothing is asked after it."""
    httpserver.expect_request("/busy").respond_with_response(answer)
    resolver = resolver_factory(deadline_s=1.0, attempts=5, backoff_s=backoff_s)
    started = time.monotonic()
    result = resolver.resolve("https://amzn.to/busy")
    assert time.monotonic() - started < 2.5
    assert result.error == "unreachable: deadline: no final answer within 1 s"
    assert len(httpserver.log) == 1


@pytest.mark.skipif(sys.platform != "linux", reason="Linux drops a connect to a full listen queue; others refuse it")
def test_a_connection_that_hangs_is_cut_at_the_links_deadline(resolver_factory):
    """The deadline shuts a socket once a response is awaited; before that (a host that never accepts) the
    connect timeout is what is left of the link's time, not the per-read timeout."""
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    address = ("127.0.0.1", server.getsockname()[1])
    queued = []
    for _ in range(3):  # fill the listen queue: a further connect gets no answer to its SYN
        client = socket.socket()
        client.setblocking(False)
        client.connect_ex(address)
        queued.append(client)
    resolver = resolver_factory(endpoints={"amzn.to": f"http://{address[0]}:{address[1]}"}, deadline_s=1.0,
                                timeout_s=10)
    started = time.monotonic()
    result = resolver.resolve("https://amzn.to/hangs")
    assert time.monotonic() - started < 3
    assert result.error == "unreachable: deadline: no final answer within 1 s"
    for client in (*queued, server):
        client.close()


def test_a_later_hop_gets_only_what_is_left_of_the_links_deadline(httpserver, resolver_factory):
    """A hop after a slow one is cut when the link's time is up, not a whole deadline after it began."""
    server = trickling_server([b"HTTP/1.1 301 Moved Permanently\r\nX-Pad: ", *[b"x"] * 60,
                               b"\r\nLocation: https://www.amazon.com/dp/B00NN2Y04E\r\n\r\n"], 0.05)

    def slow_hop(request):
        time.sleep(0.8)
        return Response(status=301, headers={"Location": "https://a.co/d/second"})

    httpserver.expect_request("/first").respond_with_handler(slow_hop)
    resolver = resolver_factory(endpoints={"amzn.to": httpserver.url_for("").rstrip("/"),
                                           "a.co": f"http://127.0.0.1:{server.getsockname()[1]}"}, deadline_s=1.0)
    started = time.monotonic()
    result = resolver.resolve("https://amzn.to/first")
    assert time.monotonic() - started < 1.5  # the second hop alone trickles for 3 s
    assert result.error == "unreachable: deadline: no final answer within 1 s"
    server.close()


def test_a_slow_chain_of_short_links_is_cut_at_the_links_deadline(threaded_httpserver, tmp_path):
    """Each hop answering within its timeout, retries included, still has one deadline for the whole link."""
    def slow_hop(request):
        time.sleep(0.6)
        number = int(request.path[-1])
        target = "https://www.amazon.com/dp/B00NN2Y04E" if number == 3 else f"https://amzn.to/hop{number + 1}"
        return Response(status=301, headers={"Location": target})

    threaded_httpserver.expect_request(re.compile("/hop[1-3]")).respond_with_handler(slow_hop)
    endpoint = threaded_httpserver.url_for("").rstrip("/")
    resolver = ShortLinkResolver(tmp_path / "c.sqlite", endpoints={"amzn.to": endpoint}, deadline_s=1.0)
    started = time.monotonic()
    cut = resolver.resolve("https://amzn.to/hop1")
    assert time.monotonic() - started < 1.5  # the chain takes 1.8 s
    assert cut.error == "unreachable: deadline: no final answer within 1 s"
    assert resolver.cache.get("https://amzn.to/hop1") is None
    resolver.deadline_s = 5
    assert resolver.resolve("https://amzn.to/hop1").asins == ("B00NN2Y04E",)  # within its deadline: resolved
    resolver.close()


def test_ctrl_c_cuts_the_links_in_flight_and_keeps_the_answers_got(threaded_httpserver, tmp_path):
    """Ctrl-C (or SIGTERM) left resolve_all only once each link in flight had answered or reached its deadline
    (60 s by default; a Slurm job has ~30 s before SIGKILL), and a second Ctrl-C then closed the cache under the
    links still running, losing their answers. The links in flight are cut at once now: the answers got are
    cached, a cut link is not, and the next run asks only it."""
    import os
    import signal
    from collections import Counter

    asked: Counter = Counter()
    released = threading.Event()

    def answer(request):
        asked[request.path] += 1
        if request.path == "/held1":
            released.wait(20)
        return Response(status=301, headers={"Location": "https://www.amazon.com/dp/B00NN2Y04E"})

    threaded_httpserver.expect_request(re.compile("/(fast|held)1")).respond_with_handler(answer)
    endpoint = threaded_httpserver.url_for("").rstrip("/")
    urls = ["https://amzn.to/fast1", "https://amzn.to/held1"]
    resolver = ShortLinkResolver(tmp_path / "c.sqlite", endpoints={"amzn.to": endpoint})

    def ctrl_c_once_held1_is_asked():
        while not asked["/held1"]:
            time.sleep(0.02)
        time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=ctrl_c_once_held1_is_asked, daemon=True).start()
    started = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            resolver.resolve_all(urls, progress=False)
        assert time.monotonic() - started < 5  # not the 20 s held1 takes
    finally:
        released.set()
        resolver.close()
    resolver = ShortLinkResolver(tmp_path / "c.sqlite", endpoints={"amzn.to": endpoint})
    assert resolver.cache.get("https://amzn.to/fast1").asins == ("B00NN2Y04E",)
    assert resolver.cache.get("https://amzn.to/held1") is None
    assert {url: r.asins for url, r in resolver.resolve_all(urls, progress=False).items()} == dict.fromkeys(
        urls, ("B00NN2Y04E",))
    assert asked == {"/fast1": 1, "/held1": 2}
    resolver.close()


def test_waiting_for_a_free_slot_of_the_host_does_not_count_against_a_link(threaded_httpserver, tmp_path):
    """A link queued behind a slow one of the same host must not run out of time before it is even asked."""
    asked = threading.Event()

    def slow(request):
        asked.set()
        time.sleep(1.5)
        return Response(status=301, headers={"Location": "https://www.amazon.com/dp/B07XJ8C8F5"})

    threaded_httpserver.expect_request("/slow").respond_with_handler(slow)
    threaded_httpserver.expect_request("/fast").respond_with_response(
        Response(status=301, headers={"Location": "https://www.amazon.com/dp/B00NN2Y04E"}))
    endpoint = threaded_httpserver.url_for("").rstrip("/")
    resolver = ShortLinkResolver(tmp_path / "c.sqlite", per_host_concurrency=1, deadline_s=1.0,
                                 endpoints={"amzn.to": endpoint})
    results = {}
    first = threading.Thread(target=lambda: results.update(slow=resolver.resolve("https://amzn.to/slow")))
    first.start()
    assert asked.wait(5)
    results["fast"] = resolver.resolve("https://amzn.to/fast")  # waits ~1 s for the host's only slot
    first.join()
    resolver.close()
    assert results["slow"].error.startswith("unreachable: deadline")
    assert results["fast"].asins == ("B00NN2Y04E",)


# --------------------------------------------------------------------------------------------
# Regressions: backslash runs, percent-encoded slugs, look-alike hosts
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("extract", [extract_asins, extract_short_links])
def test_long_backslash_runs_take_linear_time(extract):
    # A run of backslashes not followed by an escapable character once cost quadratic time.
    text = "\\" * 200_000 + " amazon.com/dp/B07XJ8C8F5 amzn.to/3xYz"
    started = time.perf_counter()
    found = extract(text)
    assert time.perf_counter() - started < 5
    assert found == (["B07XJ8C8F5"] if extract is extract_asins else ["https://amzn.to/3xYz"])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"amazon.com\/dp\/B07XJ8C8F5", ["B07XJ8C8F5"]),
        (r"amazon.com/Van\\\_Der/dp\\/B07XJ8C8F5\\\\.", ["B07XJ8C8F5"]),  # runs before escapable characters
        ("\\\\\\ amazon.com/dp/B07XJ8C8F5 \\\\", ["B07XJ8C8F5"]),  # runs before other characters stay
    ],
)
def test_markdown_escapes_of_any_length(text, expected):
    assert extract_asins(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "https://www.amazon.com/Some%20Thing/dp/B07XJ8C8F5",
        "https://www.amazon.com/Lodge-12%22-Skillet/dp/B07XJ8C8F5/ref=sr_1_1",
        "https://www.amazon.com/Men%27s-Shoe/dp/B07XJ8C8F5?th=1",
        "https://www.amazon.com/Foo-%28Pack-of-2%29/dp/B07XJ8C8F5",
        "https://www.amazon.com/Foo-(Pack-of-2)/dp/B07XJ8C8F5",
        "[two](https://www.amazon.com/Foo-(Pack-of-2)/dp/B07XJ8C8F5)",
        r"[two](https://www.amazon.com/Foo-\(Pack-of-2\)/dp/B07XJ8C8F5)",
        "https://www.google.com/url?q=https%3A%2F%2Fwww.amazon.com%2FSome%2520Thing%2Fdp%2FB07XJ8C8F5&sa=D",
        "https://www.google.com/url?q=https%253A%252F%252Fwww.amazon.com%252Fdp%252FB07XJ8C8F5",  # encoded twice
        "https://out.reddit.com/t3_abc?url=https%3a%2f%2fwww.amazon.com%2fdp%2fb07xj8c8f5%3fpsc%3d1&token=x",
    ],
)
def test_percent_encoded_slugs_and_wrapped_links(text):
    assert extract_asins(text) == ["B07XJ8C8F5"]


def test_markdown_link_parenthesis_is_not_part_of_the_url():
    text = "[a](https://www.amazon.com/dp/B07XJ8C8F5)(https://www.amazon.com/dp/B00NN2Y04E)"
    assert extract_asins(text) == ["B07XJ8C8F5", "B00NN2Y04E"]


@pytest.mark.parametrize(
    "text",
    [
        "https://amazon.com.evil.example/dp/B07XJ8C8F5",
        "https://www.amazon.de.phish.io/gp/product/B07XJ8C8F5",
        "https://amazon.co.xyz/dp/B07XJ8C8F5",
        "https://amazon.com.xyz/dp/B07XJ8C8F5",
        "https://www.amazon.com@evil.example/dp/B07XJ8C8F5",
        "https://www.amazon.com:80@evil.example/dp/B07XJ8C8F5",
    ],
)
def test_hosts_that_only_begin_like_a_storefront_are_not_amazon(text):
    assert extract_asins(text) == []


@pytest.mark.parametrize(
    "host",
    ["amazon.com.au", "amazon.co.uk", "amazon.com.mx", "amazon.com.br", "amazon.com.tr", "amazon.com.be",
     "www.amazon.co.jp", "amazon.com:443", "AMAZON.CO.UK:8080"],
)
def test_storefront_hosts_and_ports(host):
    assert extract_asins(f"see https://{host}/dp/B07XJ8C8F5, thanks") == ["B07XJ8C8F5"]


@pytest.mark.parametrize("tld", STOREFRONT_TLDS)
def test_every_storefront_tld(tld):
    assert extract_asins(f"https://www.amazon.{tld}/dp/B07XJ8C8F5") == ["B07XJ8C8F5"]


@pytest.mark.parametrize("tld", ["net", "org", "xyz", "co", "tv", "com.co", "co.in", "com.xx", "co.xx"])
def test_other_tlds_are_not_storefronts(tld):
    assert extract_asins(f"https://www.amazon.{tld}/dp/B07XJ8C8F5") == []


def test_asins_come_in_order_of_appearance_whatever_the_link_form():
    text = ("first amzn.com/B0ZZZZZZZ9 then https://www.amazon.com/dp/B0AAAAAAA1 and amzn.to/abc "
            "and amzn.com/dp/B0MMMMMMM5")
    assert extract_asins(text) == ["B0ZZZZZZZ9", "B0AAAAAAA1", "B0MMMMMMM5"]
    # a resolved short link's ASINs sit where the short link is
    assert linked_asins(text, {"https://amzn.to/abc": ["B0BBBBBBB2"]}) == \
        ["B0ZZZZZZZ9", "B0AAAAAAA1", "B0BBBBBBB2", "B0MMMMMMM5"]


def test_short_links_resolve_through_a_socks_proxy(resolver_factory, httpserver, monkeypatch):
    """all_proxy=socks5h://... with PySocks installed: the link is asked through the proxy (the session keeps the
    proxy manager's SOCKS connections; plain ones cannot take their options and raised a TypeError that stopped
    the stage)."""
    pytest.importorskip("socks", reason="PySocks (the test extra) is not installed")
    from socks_server import SocksProxy  # tests/

    proxy = SocksProxy(("127.0.0.1", httpserver.port))
    for name in ("no_proxy", "NO_PROXY", "all_proxy", "ALL_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("all_proxy", f"socks5h://127.0.0.1:{proxy.port}")
    httpserver.expect_request("/socks1").respond_with_response(
        Response(status=301, headers={"Location": "https://www.amazon.com/dp/B00NN2Y04E"}))
    resolution = resolver_factory(attempts=1).resolve("https://amzn.to/socks1")
    proxy.close()
    assert resolution.asins == ("B00NN2Y04E",), resolution
    assert proxy.requested == [("localhost", httpserver.port)]


def test_a_socks_proxy_without_pysocks_stops_resolution_before_it_starts(resolver_factory, httpserver, monkeypatch):
    """Every link would fail at once (requests' "Missing dependencies for SOCKS support"), be retried to the end and
    be listed unresolved: one error naming what to install instead, before any request."""
    from reddit_amazon.http_session import ProxyUnsupported

    monkeypatch.setitem(sys.modules, "socks", None)  # as where PySocks is not installed: an import of it fails
    for name in ("no_proxy", "NO_PROXY", "all_proxy", "ALL_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ALL_PROXY", "socks5h://127.0.0.1:1080")
    with pytest.raises(ProxyUnsupported, match="install PySocks"):
        resolver_factory().resolve_all(["https://amzn.to/abc"], progress=False)
    assert not httpserver.log


@pytest.mark.parametrize("link", ["http", "https"])
def test_a_proxy_asking_for_credentials_is_named_once_and_its_links_asked_by_the_next_run(
        link, httpserver, tmp_path, monkeypatch, caplog):
    """A proxy's 407 left each short link "unreachable: HTTP 407 without a redirect", or, for an https:// link (its
    CONNECT refused), "unreachable: ProxyError" after every retry (7 s of backoff a link), and the build said only
    how many links were unresolved: nothing named the proxy settings to fix."""
    for name in ("no_proxy", "NO_PROXY", "all_proxy", "ALL_PROXY", "http_proxy", "HTTP_PROXY", "https_proxy",
                 "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    if link == "http":  # an endpoint asked over http://: the proxy forwards the request and answers it itself
        answers = [Response("credentials, please", status=407, headers={"Proxy-Authenticate": 'Basic realm="p"'})]
        httpserver.expect_request("/d/abc1234").respond_with_handler(
            lambda request: answers.pop(0) if answers else
            Response(status=301, headers={"Location": "https://www.amazon.com/dp/B00NN2Y04E"}))
        monkeypatch.setenv("HTTP_PROXY", f"http://someone:s3cret@127.0.0.1:{httpserver.port}")
        endpoints = {"a.co": "http://short-links.example.invalid"}
        asked = httpserver.log
    else:  # https://a.co itself, through the proxy's CONNECT tunnel
        port, asked = refusing_proxy()
        monkeypatch.setenv("HTTPS_PROXY", f"http://someone:s3cret@127.0.0.1:{port}")
        endpoints = {}
    resolver = ShortLinkResolver(tmp_path / "cache.sqlite", endpoints=endpoints, attempts=4, backoff_s=0.01)
    resolution = resolver.resolve_all(["https://a.co/d/abc1234"], progress=False)["https://a.co/d/abc1234"]
    assert resolution.unreachable and resolution.error == (
        "unreachable: proxy_auth_required: HTTP 407, the proxy asks for credentials (give them in HTTP_PROXY / "
        "HTTPS_PROXY as http://user:password@host:port)")
    told = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
    proxy_auth_required = resolution.error.removeprefix("unreachable: ")
    assert told == [f"1 short link(s) left for the next run: {proxy_auth_required}"]
    assert "s3cret" not in "".join(told)
    assert len(asked) == 1  # the same answer for every try: not retried in the run
    assert resolver.cache.get("https://a.co/d/abc1234") is None  # nothing kept: the next run asks again
    resolver.close()
    again = ShortLinkResolver(tmp_path / "cache.sqlite", endpoints=endpoints, attempts=4, backoff_s=0.01)
    resolved_later = again.resolve_all(["https://a.co/d/abc1234"], progress=False)["https://a.co/d/abc1234"]
    again.close()
    assert len(asked) == 2
    if link == "http":  # the proxy let through this time
        assert resolved_later.asins == ("B00NN2Y04E",)


def test_the_proxy_asking_for_credentials_is_named_in_the_run_log_too(tmp_path, monkeypatch):
    """The line naming the proxy's 407 went to stderr by tqdm.write alone, so the run log of a `build` or
    `reddit-stage` (docs/build.md: every line the run printed on stderr but the bars) lacked the one line that says
    what to fix; it is a warning of the package's logger now, which the run log takes in."""
    from reddit_amazon.run_log import open_run_log

    for name in ("no_proxy", "NO_PROXY", "all_proxy", "ALL_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.delenv(name, raising=False)
    port, _asked = refusing_proxy()
    monkeypatch.setenv("HTTPS_PROXY", f"http://someone:s3cret-proxy@127.0.0.1:{port}")
    with open_run_log(tmp_path / "work", "reddit-stage", "reddit-amazon reddit-stage") as log:
        resolver = ShortLinkResolver(tmp_path / "cache.sqlite", attempts=1, backoff_s=0.01)
        resolver.resolve_all(["https://a.co/d/abc1234"], progress=False)
        resolver.close()
    text = log.path.read_text(encoding="utf-8")
    assert "1 short link(s) left for the next run: proxy_auth_required: HTTP 407" in text, text
    assert "s3cret-proxy" not in text
