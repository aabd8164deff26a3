"""Image download + validation against a loopback server: good, truncated, huge, bomb, non-image."""

from __future__ import annotations

import io
import json
import re
import sys
import time
from collections import Counter

import numpy
import pytest
from PIL import Image
from werkzeug import Request, Response

from reddit_amazon.images import (
    ImageOptions,
    ImageRejected,
    ImageStore,
    failure_reasons,
    fetch_images,
    to_jpeg,
)
from trickling_server import trickling_server  # tests/: a server answering a byte at a time


def jpeg(size=(64, 48), color=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="JPEG")
    return buffer.getvalue()


def png_rgba() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGBA", (20, 10), (0, 0, 255, 128)).save(buffer, format="PNG")
    return buffer.getvalue()


def bomb_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("1", (4000, 4000)).save(buffer, format="PNG")  # ~2 KB file, 16 M pixels
    return buffer.getvalue()


# The image hosts of these tests are loopback servers: allowed here, refused by default (see the private_host tests).
OPTIONS = ImageOptions(concurrency=4, timeout_s=0.5, max_attempts=3, backoff_initial_s=0.01, backoff_max_s=0.02,
                       max_bytes=200_000, max_pixels=1_000_000, allow_private_hosts=True)


class ImageHost:
    def __init__(self):
        self.hits: Counter = Counter()
        noise = Image.effect_noise((600, 600), 100).convert("RGB")
        buffer = io.BytesIO()
        noise.save(buffer, format="JPEG", quality=100)
        self.huge = buffer.getvalue()
        assert len(self.huge) > OPTIONS.max_bytes

    def __call__(self, request: Request) -> Response:
        name = request.path.strip("/")
        self.hits[name] += 1
        good = jpeg()
        if name == "good.jpg":
            return Response(good, content_type="image/jpeg")
        if name == "alpha.png":
            return Response(png_rgba(), content_type="image/png")
        if name == "truncated.jpg":
            return Response(good[: len(good) // 2], content_type="image/jpeg")
        if name == "huge.jpg":
            return Response(self.huge, content_type="image/jpeg")
        if name == "huge-chunked.jpg":  # no Content-Length: the limit is enforced while streaming
            return Response(iter([self.huge[i:i + 4096] for i in range(0, len(self.huge), 4096)]),
                            content_type="image/jpeg")
        if name == "bomb.png":
            return Response(bomb_png(), content_type="image/png")
        if name == "page.html":
            return Response("<html>captcha</html>", content_type="text/html")
        if name == "lying.jpg":
            return Response(b"<html>not really</html>", content_type="image/jpeg")
        if name == "flaky.jpg":
            return Response("busy", status=503) if self.hits[name] <= 2 else Response(good, content_type="image/jpeg")
        if name == "slow.jpg":  # the first answer comes after the client's timeout
            if self.hits[name] == 1:
                time.sleep(1.5)
            return Response(good, content_type="image/jpeg")
        if name == "throttled.jpg":
            return Response("slow", status=429) if self.hits[name] == 1 else Response(good, content_type="image/jpeg")
        if name == "down.jpg":
            return Response("down", status=500)
        return Response("not found", status=404)


@pytest.fixture
def httpserver(threaded_httpserver):
    return threaded_httpserver


@pytest.fixture
def host(httpserver):
    handler = ImageHost()
    httpserver.expect_request("").respond_with_handler(handler)
    return handler


def test_to_jpeg_guards():
    assert to_jpeg(jpeg(), "image/jpeg", OPTIONS) == jpeg()  # JPEG bytes are kept as they are
    converted = to_jpeg(png_rgba(), "image/png", OPTIONS)
    assert Image.open(io.BytesIO(converted)).format == "JPEG"
    grey16 = io.BytesIO()
    Image.fromarray(numpy.full((8, 8), 32768, dtype=numpy.uint16)).save(grey16, format="PNG")  # 16-bit grey
    assert Image.open(io.BytesIO(to_jpeg(grey16.getvalue(), "image/png", OPTIONS))).getpixel((0, 0)) == (128, 128, 128)
    for data, content_type, reason in [
        (jpeg(), "text/html; charset=utf-8", "not_an_image"),
        (jpeg()[:300], None, "undecodable"),
        (b"hello", "image/jpeg", "undecodable"),
        (bomb_png(), "image/png", "too_many_pixels"),
        (b"\xff" * (OPTIONS.max_bytes + 1), "image/jpeg", "too_large"),
    ]:
        with pytest.raises(ImageRejected) as raised:
            to_jpeg(data, content_type, OPTIONS)
        assert raised.value.reason == reason


@pytest.mark.filterwarnings("error::ResourceWarning", "error::pytest.PytestUnraisableExceptionWarning")
def test_fetch_records_every_failure_and_resumes(httpserver, host, tmp_path):
    names = ["good.jpg", "alpha.png", "truncated.jpg", "huge.jpg", "huge-chunked.jpg", "bomb.png", "page.html",
             "lying.jpg", "flaky.jpg", "throttled.jpg", "slow.jpg", "down.jpg", "gone.jpg"]
    items = [(f"B{index:09d}", [httpserver.url_for(name), httpserver.url_for("good.jpg")])
             for index, name in enumerate(names)]
    items.append(("B999999999", []))
    store = ImageStore(tmp_path / "images")
    outcomes = fetch_images(items, store, OPTIONS)
    by_name = dict(zip([*names, "none"], [outcomes[asin] for asin, _ in items], strict=True))
    for name in ("good.jpg", "alpha.png", "flaky.jpg", "throttled.jpg", "slow.jpg"):
        assert by_name[name].path is not None and by_name[name].downloaded, name
        with Image.open(by_name[name].path) as image:
            assert image.format == "JPEG"
    expected = {"truncated.jpg": "undecodable", "huge.jpg": "too_large", "huge-chunked.jpg": "too_large",
                "bomb.png": "too_many_pixels", "page.html": "not_an_image", "lying.jpg": "undecodable",
                "down.jpg": "download_failed", "gone.jpg": "http_error", "none": "no_image_url"}
    for name, reason in expected.items():
        assert by_name[name].path is None and by_name[name].error.startswith(reason), (name, by_name[name])
    assert host.hits["down.jpg"] == OPTIONS.max_attempts and host.hits["gone.jpg"] == 1
    assert host.hits["slow.jpg"] == 2
    assert failure_reasons(outcomes)["too_large"] == 2
    recorded = json.loads((tmp_path / "images" / "failures.json").read_text())
    assert recorded["B000000011"]["permanent"] is False and recorded["B000000002"]["permanent"] is True

    before = Counter(host.hits)
    again = fetch_images(items, ImageStore(tmp_path / "images"), OPTIONS)
    assert {a: o.path for a, o in again.items()} == {a: o.path for a, o in outcomes.items()}
    new_hits = host.hits - before
    assert new_hits == Counter({"down.jpg": OPTIONS.max_attempts})  # only the transient failure is retried
    assert not any(o.downloaded for o in again.values())


def test_a_new_image_url_in_the_metadata_is_fetched_again(httpserver, host, tmp_path):
    first = fetch_images([("B000000001", [httpserver.url_for("good.jpg")])], ImageStore(tmp_path / "images"), OPTIONS)
    changed = fetch_images([("B000000001", [httpserver.url_for("alpha.png")])], ImageStore(tmp_path / "images"),
                           OPTIONS)
    assert first["B000000001"].downloaded and changed["B000000001"].downloaded  # not the stale good.jpg
    assert host.hits["alpha.png"] == 1
    same = fetch_images([("B000000001", [httpserver.url_for("alpha.png")])], ImageStore(tmp_path / "images"), OPTIONS)
    assert same["B000000001"].path is not None and not same["B000000001"].downloaded
    gone = fetch_images([("B000000001", [])], ImageStore(tmp_path / "images"), OPTIONS)
    assert gone["B000000001"].path is None and gone["B000000001"].error.startswith("no_image_url")


def test_interrupted_fetch_keeps_what_it_has(httpserver, host, tmp_path):
    items = [(f"B00000000{i}", [httpserver.url_for("good.jpg")]) for i in range(6)]
    items.append(("B000000009", [httpserver.url_for("gone.jpg")]))

    def interrupt_after_two(done, total):
        for count, future in enumerate(done):
            if count == 2:
                raise KeyboardInterrupt
            yield future

    store = ImageStore(tmp_path / "images")
    with pytest.raises(KeyboardInterrupt):
        fetch_images(items, store, ImageOptions(**{**OPTIONS.__dict__, "concurrency": 1}),
                     progress=interrupt_after_two)
    stored = sorted(p.name for p in (tmp_path / "images").glob("*.jpg"))
    assert 2 <= len(stored) < len(items)
    assert not list((tmp_path / "images").glob(".*"))  # no half-written files
    outcomes = fetch_images(items, ImageStore(tmp_path / "images"), OPTIONS)
    assert sum(o.path is not None for o in outcomes.values()) == 6
    assert sum(o.downloaded for o in outcomes.values()) == 6 - len(stored)


def test_a_trickling_host_times_out_and_a_redirect_loop_is_permanent(threaded_httpserver, tmp_path):
    """The timeout bounds each read; a body arriving a byte at a time must still end (it is retried next
    run), and a redirect loop is recorded once instead of being fetched again on every run."""
    def trickle():
        for _ in range(100):
            yield b"x"
            time.sleep(0.2)

    threaded_httpserver.expect_request("/trickle.jpg").respond_with_handler(
        lambda request: Response(trickle(), content_type="image/jpeg"))
    threaded_httpserver.expect_request("/loop.jpg").respond_with_handler(
        lambda request: Response("", status=302, headers={"Location": threaded_httpserver.url_for("/loop.jpg")}))
    options = ImageOptions(**{**OPTIONS.__dict__, "max_attempts": 1})
    started = time.monotonic()
    outcomes = fetch_images([("B000000001", [threaded_httpserver.url_for("/trickle.jpg")]),
                             ("B000000002", [threaded_httpserver.url_for("/loop.jpg")])],
                            ImageStore(tmp_path / "images"), options)
    assert time.monotonic() - started < 10  # the trickle alone would take 20 s
    assert "body still arriving" in outcomes["B000000001"].error
    assert outcomes["B000000002"].error.startswith("redirect_loop")
    recorded = json.loads((tmp_path / "images" / "failures.json").read_text())
    assert recorded["B000000001"]["permanent"] is False and recorded["B000000002"]["permanent"] is True



def test_a_body_without_length_cut_by_the_deadline_is_transient_not_undecodable():
    """Without Content-Length or chunking a body ends when its socket closes: shutting it at the
    deadline must not pass half an image on (it would be recorded as permanently undecodable)."""
    from reddit_amazon.http_session import RequestsInFlight, guarded_session
    from reddit_amazon.images import _download, _TransientHTTP

    head = b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nConnection: close\r\n\r\n"
    server = trickling_server([head, *(jpeg()[start:start + 50] or b"x" for start in range(0, 2000, 50))], 0.2)
    started = time.monotonic()
    # The downloads' own session: its connections hand their socket to the deadline, which shuts it at 1.5 s
    # (a plain requests.Session would read on until the host closes, 8 s on).
    with pytest.raises(_TransientHTTP, match="body still arriving"):
        _download(guarded_session("test", allow_private_hosts=True), f"http://127.0.0.1:{server.getsockname()[1]}/x.jpg",
                  ImageOptions(timeout_s=0.5), RequestsInFlight())
    assert time.monotonic() - started < 5  # cut at the deadline, not at the end of the body
    server.close()


def test_ctrl_c_cuts_a_trickling_download_and_the_next_run_fetches_it(threaded_httpserver, tmp_path):
    """Ctrl-C (or SIGTERM) waited for each download in flight to end, up to 3 x timeout_s (a minute by default,
    twice a Slurm job's grace before SIGKILL) for a host sending a byte at a time. It is cut at once now, recorded
    as a transient failure, and fetched by the next run."""
    threaded_httpserver.expect_request("/gone.jpg").respond_with_data("no", status=404)
    threaded_httpserver.expect_request("/slow.jpg").respond_with_data(jpeg(), content_type="image/jpeg")
    head = b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\n"
    trickling = trickling_server([bytes([byte]) for byte in head], 0.5)  # headers for ~20 s
    slow_url = f"http://127.0.0.1:{trickling.getsockname()[1]}/slow.jpg"
    items = [("B000000001", [threaded_httpserver.url_for("gone.jpg")]), ("B000000002", [slow_url])]

    def ctrl_c_once_the_404_is_in(done, total):
        for _ in done:
            raise KeyboardInterrupt
        yield

    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        fetch_images(items, ImageStore(tmp_path / "images"), ImageOptions(**{**OPTIONS.__dict__, "timeout_s": 10}),
                     progress=ctrl_c_once_the_404_is_in)
    assert time.monotonic() - started < 5  # not 20 s (the headers), nor 30 s (3 x timeout_s)
    trickling.close()
    failure = ImageStore(tmp_path / "images").failures["B000000002"]
    assert not failure["permanent"] and "cut: the run was interrupted" in failure["error"]
    items[1] = ("B000000002", [slow_url.replace(slow_url.rsplit("/", 1)[0], threaded_httpserver.url_for("").rstrip("/"))])
    again = fetch_images(items, ImageStore(tmp_path / "images"), OPTIONS)
    assert again["B000000002"].downloaded and again["B000000001"].error.startswith("http_error")


def png(image: Image.Image, **save) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **save)
    return buffer.getvalue()


def test_an_image_jpeg_cannot_hold_is_a_failure_not_a_crash(httpserver, monkeypatch, tmp_path):
    wide = png(Image.new("RGB", (70_000, 1)))  # 70,000 pixels: under the pixel limit, over JPEG's 65,500 a side
    with pytest.raises(ImageRejected) as raised:
        to_jpeg(wide, "image/png", OPTIONS)
    assert raised.value.reason == "too_long_side"

    import reddit_amazon.images

    def broken(data, content_type, options):
        raise RuntimeError("a case nobody foresaw")

    monkeypatch.setattr(reddit_amazon.images, "to_jpeg", broken)
    httpserver.expect_request("/x.jpg").respond_with_data(jpeg(), content_type="image/jpeg")
    outcomes = fetch_images([("B000000001", [httpserver.url_for("/x.jpg")])], ImageStore(tmp_path / "images"), OPTIONS)
    assert outcomes["B000000001"].error.startswith("unexpected_error: RuntimeError")
    recorded = json.loads((tmp_path / "images" / "failures.json").read_text())
    assert recorded["B000000001"]["permanent"] is False  # tried again once the cause is fixed


def test_formats_that_decode_while_opening_are_refused():
    """Pillow's ICO plugin decodes an embedded PNG inside Image.open, before the pixel limit is checked."""
    import struct

    inner = png(Image.new("1", (2000, 2000)))  # 4 M pixels > OPTIONS.max_pixels, behind a 256x256 directory entry
    ico = struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(inner), 22) + inner
    with pytest.raises(ImageRejected) as raised:
        to_jpeg(ico, "image/x-icon", OPTIONS)
    assert raised.value.reason == "undecodable" and "not a JPEG, PNG" in str(raised.value)


def test_retry_after_is_waited_out_and_408_is_transient(httpserver, tmp_path):
    hits: dict[str, list[float]] = {"throttled.jpg": [], "capped.jpg": [], "408.jpg": []}

    def handler(request: Request) -> Response:
        name = request.path.strip("/")
        hits[name].append(time.monotonic())
        if len(hits[name]) == 1:
            retry = {"throttled.jpg": "0.6", "capped.jpg": "3600"}.get(name)
            return Response("wait", status=408 if retry is None else 429,
                            headers={"Retry-After": retry} if retry else {})
        return Response(jpeg(), content_type="image/jpeg")

    httpserver.expect_request("").respond_with_handler(handler)
    outcomes = fetch_images([("B000000001", [httpserver.url_for("throttled.jpg")]),
                             ("B000000002", [httpserver.url_for("408.jpg")])], ImageStore(tmp_path / "images"), OPTIONS)
    assert hits["throttled.jpg"][1] - hits["throttled.jpg"][0] >= 0.55  # the backoff alone is 0.02 s at most
    assert all(o.downloaded for o in outcomes.values()), outcomes
    assert len(hits["408.jpg"]) == 2
    started = time.monotonic()
    capped = fetch_images([("B000000003", [httpserver.url_for("capped.jpg")])], ImageStore(tmp_path / "images"),
                          ImageOptions(**{**OPTIONS.__dict__, "max_retry_after_s": 0.3}))
    assert capped["B000000003"].downloaded and time.monotonic() - started < 2  # not the hour asked for
    assert hits["capped.jpg"][1] - hits["capped.jpg"][0] >= 0.25


def test_a_proxy_asking_for_credentials_fails_no_item_for_good(httpserver, tmp_path):
    """A proxy's 407 (it wants credentials, for an http:// image URL it forwards) was stored as the item's permanent
    ``http_error``: every image of the run was then never fetched again, though only the proxy settings were wrong."""
    answers = [Response("credentials, please", status=407, headers={"Proxy-Authenticate": 'Basic realm="p"'})]
    httpserver.expect_request("/a.jpg").respond_with_handler(
        lambda request: answers.pop(0) if answers else Response(jpeg(), content_type="image/jpeg"))
    items = [("B000000001", [httpserver.url_for("a.jpg")])]
    first = fetch_images(items, ImageStore(tmp_path / "images"), OPTIONS)
    assert first["B000000001"].error.startswith("proxy_auth_required: HTTP 407"), first
    assert "HTTP_PROXY" in first["B000000001"].error
    assert len(httpserver.log) == 1  # asking again gives the same answer: not retried in the run
    assert not ImageStore(tmp_path / "images").failures["B000000001"]["permanent"]
    again = fetch_images(items, ImageStore(tmp_path / "images"), OPTIONS)  # the proxy settings put right
    assert again["B000000001"].downloaded


def test_a_proxy_refusing_to_tunnel_without_credentials_fails_no_item_and_is_not_asked_again(tmp_path, monkeypatch):
    """An https:// image URL (every Amazon image's) goes through the proxy as a CONNECT tunnel: its 407 reaches
    requests as a ProxyError, not as a response, so it was retried in the run (every image, max_attempts times) and
    recorded as download_failed, never as the proxy_auth_required the docs name."""
    from refusing_proxy import refusing_proxy  # tests/

    port, asked = refusing_proxy()
    for name in ("no_proxy", "NO_PROXY", "all_proxy", "ALL_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("https_proxy", f"http://127.0.0.1:{port}")
    outcomes = fetch_images([("B000000001", ["https://images.example.invalid/a.jpg"])],
                            ImageStore(tmp_path / "images"), OPTIONS)
    assert outcomes["B000000001"].error.startswith("proxy_auth_required: HTTP 407"), outcomes
    assert len(asked) == 1 and asked[0].startswith(b"CONNECT images.example.invalid:443 "), asked  # once in the run
    assert not ImageStore(tmp_path / "images").failures["B000000001"]["permanent"]  # retried by the next run


def test_an_interrupted_fetch_does_not_wait_out_a_retry_after(threaded_httpserver, tmp_path):
    """Ctrl-C (or SIGTERM) while a worker waits out a host's Retry-After once took up to a minute per attempt
    left: the wait now ends at once, no further request is sent (tenacity would attempt once more after its
    sleep), and the item is a transient failure that the next run tries again."""
    import threading

    hits: list[str] = []
    throttled = threading.Event()  # its 429 is answered: the throttled item waits out the Retry-After from then on

    def handler(request: Request) -> Response:
        hits.append(request.path)
        if "slow" in request.path:
            assert throttled.wait(20), "the throttled item was never asked for"
            time.sleep(0.5)  # for its worker to read the 429 and start waiting out the Retry-After
            return Response(jpeg(), content_type="image/jpeg")
        throttled.set()  # not on the response's close: in one full run werkzeug closed it at the retry, 60 s on
        return Response("later", status=429, headers={"Retry-After": "60"})

    threaded_httpserver.expect_request("").respond_with_handler(handler)
    items = [("B000000001", [threaded_httpserver.url_for("slow.jpg")]),
             ("B000000002", [threaded_httpserver.url_for("throttled.jpg")])]

    def interrupt_at_first(done, total):
        for _ in done:
            raise KeyboardInterrupt
        yield

    store = ImageStore(tmp_path / "images")
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        fetch_images(items, store, ImageOptions(**{**OPTIONS.__dict__, "max_retry_after_s": 60, "timeout_s": 30}),
                     progress=interrupt_at_first)  # the slow download is not cut while it waits for the throttled
    assert time.monotonic() - started < 5 and hits.count("/throttled.jpg") == 1
    assert not ImageStore(tmp_path / "images").failures["B000000002"]["permanent"]


def test_a_second_ctrl_c_while_downloads_finish_still_saves_what_the_run_learnt(threaded_httpserver, tmp_path,
                                                                                 monkeypatch):
    """A second Ctrl-C while the workers end (a download that cannot be cut: a host not yet connected) once
    skipped the save: the run's failures were lost and its 404s fetched again by the next run."""
    import concurrent.futures
    import threading

    held = threading.Event()

    def handler(request: Request) -> Response:
        if "gone" in request.path:
            return Response("no", status=404)
        held.wait(10)
        return Response(jpeg(), content_type="image/jpeg")

    threaded_httpserver.expect_request("").respond_with_handler(handler)
    items = [("B000000001", [threaded_httpserver.url_for("gone.jpg")]),
             ("B000000002", [threaded_httpserver.url_for("held.jpg")])]

    def first_ctrl_c(done, total):  # once the 404 is in: the other download is still held
        for _ in done:
            raise KeyboardInterrupt
        yield

    shutdown = concurrent.futures.ThreadPoolExecutor.shutdown

    def second_ctrl_c_while_waiting(pool, wait=True, *, cancel_futures=False):
        shutdown(pool, wait=False, cancel_futures=cancel_futures)
        raise KeyboardInterrupt

    monkeypatch.setattr(concurrent.futures.ThreadPoolExecutor, "shutdown", second_ctrl_c_while_waiting)
    with pytest.raises(KeyboardInterrupt):
        fetch_images(items, ImageStore(tmp_path / "images"), ImageOptions(**{**OPTIONS.__dict__, "timeout_s": 5}),
                     progress=first_ctrl_c)
    held.set()
    saved = json.loads((tmp_path / "images" / "failures.json").read_text())
    assert saved["B000000001"]["permanent"] and saved["B000000001"]["error"].startswith("http_error: HTTP 404")


def test_an_image_whose_source_was_not_recorded_is_fetched_again(httpserver, tmp_path):
    """A run killed (kill -9: no save) after storing images must not leave them counted as from any URL."""
    folder = tmp_path / "images"
    store = ImageStore(folder)
    store.put("B000000001", jpeg(), "http://host/a.jpg")  # no save(): as if the run were killed here
    (folder / "B000000002.jpg").write_bytes(jpeg())  # killed between writing an image and recording its URL
    with (folder / "sources.journal").open("ab") as journal:
        journal.write(b'{"asin": "B000000003", "ur')  # a line cut by a crash
    again = ImageStore(folder)
    assert again.has("B000000001", "http://host/a.jpg") and not again.has("B000000001", "http://host/b.jpg")
    assert not again.has("B000000002", "http://host/a.jpg")
    again.put("B000000004", jpeg(), "http://host/d.jpg")
    again.save()
    assert not (folder / "sources.journal").exists()
    assert json.loads((folder / "sources.json").read_text()) == {"B000000001": "http://host/a.jpg",
                                                                 "B000000004": "http://host/d.jpg"}
    assert ImageStore(folder).has("B000000004", "http://host/d.jpg")  # sources.json alone (older stores) still counts

    httpserver.expect_request("/b.jpg").respond_with_data(jpeg(color=(0, 0, 255)), content_type="image/jpeg")
    outcomes = fetch_images([("B000000002", [httpserver.url_for("/b.jpg")])], ImageStore(folder), OPTIONS)
    assert outcomes["B000000002"].downloaded


def test_a_killed_runs_permanent_failures_are_not_fetched_again(httpserver, tmp_path, monkeypatch):
    """Failures were kept in memory until the save at the end of the run: after a kill -9 (or a Slurm SIGKILL at
    the end of its grace) every 404 of the run was fetched again. They reach the journal as they happen now."""
    httpserver.expect_request("/gone.jpg").respond_with_data("no", status=404)
    httpserver.expect_request("/bomb.png").respond_with_data(bomb_png(), content_type="image/png")
    items = [("B000000001", [httpserver.url_for("gone.jpg")]), ("B000000002", [httpserver.url_for("bomb.png")])]
    with monkeypatch.context() as killed:
        killed.setattr(ImageStore, "save", lambda store: None)  # the run is killed before its save
        first = fetch_images(items, ImageStore(tmp_path / "images"), OPTIONS)
    assert not (tmp_path / "images" / "failures.json").exists()
    sent = len(httpserver.log)
    again = fetch_images(items, ImageStore(tmp_path / "images"), OPTIONS)
    assert len(httpserver.log) == sent == 2
    assert again == first and again["B000000002"].error.startswith("too_many_pixels")
    assert json.loads((tmp_path / "images" / "failures.json").read_text())["B000000001"]["permanent"]
    assert not (tmp_path / "images" / "sources.journal").exists()


def test_a_failure_whose_image_a_killed_run_stored_is_dropped_at_the_next_save(tmp_path):
    """A run interrupted while an image downloaded records a transient failure; the next run stores the image and
    is killed before its save. The run after that found the image stored, did not fetch it, and kept its stale
    failure in failures.json for good (a build left undisturbed records none)."""
    folder = tmp_path / "images"
    interrupted = ImageStore(folder)
    interrupted.record_failure("B000000001", "http://host/a.jpg", "download_failed: cut", permanent=False)
    interrupted.record_failure("B000000002", "http://host/new.jpg", "http_error: HTTP 404", permanent=True)
    interrupted.save()
    killed = ImageStore(folder)
    killed.put("B000000001", jpeg(), "http://host/a.jpg")  # no save(): killed
    killed.put("B000000002", jpeg(), "http://host/old.jpg")  # an image from another URL than the failing one
    ImageStore(folder).save()
    assert json.loads((folder / "failures.json").read_text()) == {
        "B000000002": {"error": "http_error: HTTP 404", "permanent": True, "url": "http://host/new.jpg"}}


def test_a_line_after_one_a_crash_cut_is_read_back_before_any_save(tmp_path):
    """The next line was glued to a cut one: both unreadable, so an image stored after the crash was fetched again
    by the run after a second crash (or a full disk at its save)."""
    folder = tmp_path / "images"
    ImageStore(folder).put("B000000001", jpeg(), "http://host/a.jpg")
    with (folder / "sources.journal").open("ab") as journal:
        journal.write(b'{"asin": "B000000003", "ur')
    ImageStore(folder).put("B000000004", jpeg(), "http://host/d.jpg")  # no save(): killed again
    again = ImageStore(folder)
    assert again.has("B000000001", "http://host/a.jpg") and again.has("B000000004", "http://host/d.jpg")


def test_a_full_disk_cutting_a_journal_line_takes_it_back_and_names_the_journal(tmp_path, file_size_limit):
    """A full disk cut the journal's write short without an error: put() returned, the cut line stayed, and the
    next put failed with '[Errno 27] File too large' naming no file. The first failing put now names the journal
    and leaves it as it was, and a put after the disk frees up is read back."""
    import errno

    folder = tmp_path / "images"
    store = ImageStore(folder)
    store.put("B000000001", jpeg(), "http://host/a.jpg")
    journal = folder / "sources.journal"
    before = journal.read_bytes()
    with file_size_limit(len(before) + 20), pytest.raises(OSError) as caught:
        store.put("B000000002", b"x", "http://host/b.jpg")
    assert caught.value.errno == errno.EFBIG and caught.value.filename == str(journal), caught.value
    assert journal.read_bytes() == before
    assert not store.has("B000000002", "http://host/b.jpg")
    store.put("B000000003", jpeg(), "http://host/c.jpg")  # the disk freed up; no save(): killed
    again = ImageStore(folder)
    assert again.has("B000000001", "http://host/a.jpg") and again.has("B000000003", "http://host/c.jpg")
    assert not again.has("B000000002", "http://host/b.jpg")  # its image has no recorded URL: fetched again


@pytest.mark.parametrize("through_a_proxy", [False, True])
def test_trickling_headers_are_cut_at_the_deadline(tmp_path, monkeypatch, through_a_proxy):
    """The deadline runs from before the request: a host sending its headers a byte at a time is cut too, and
    so is a proxy doing it (the loopback server plays the proxy: the image host's name is never resolved). A
    proxy is reached at a loopback address without --allow-private-image-hosts: it resolves the names itself."""
    server = trickling_server([b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\n", *[b"X"] * 30,
                                b": y\r\nContent-Length: 0\r\n\r\n"], 0.1)
    options = ImageOptions(**{**OPTIONS.__dict__, "timeout_s": 0.3, "max_attempts": 1,
                              "allow_private_hosts": not through_a_proxy})
    address = f"http://127.0.0.1:{server.getsockname()[1]}"
    for name in ("no_proxy", "NO_PROXY", "http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    if through_a_proxy:
        monkeypatch.setenv("http_proxy", address)
    url = "http://images.example.invalid/x.jpg" if through_a_proxy else f"{address}/x.jpg"
    started = time.monotonic()
    outcomes = fetch_images([("B000000001", [url])], ImageStore(tmp_path / "images"), options)
    assert time.monotonic() - started < 2  # the headers alone take 3 s
    assert "headers still arriving after 0.9 s" in outcomes["B000000001"].error
    server.close()


def test_a_loopback_image_host_is_refused_unless_allowed(httpserver, host, tmp_path):
    """A metadata file may name any URL: by default none at a loopback (or other non-public) address is
    asked, by IP or by a name resolving to one (localhost); the item keeps a gap, counted by its reason,
    and is tried again by a run that allows them."""
    guarded = ImageOptions(**{**OPTIONS.__dict__, "allow_private_hosts": False})
    port = httpserver.port
    items = [("B000000001", [f"http://127.0.0.1:{port}/good.jpg"]),
             ("B000000002", [f"http://localhost:{port}/good.jpg"]), ("B000000003", [])]
    outcomes = fetch_images(items, ImageStore(tmp_path / "images"), guarded)
    assert not host.hits  # nothing was sent
    for asin, name in (("B000000001", "127.0.0.1"), ("B000000002", "localhost")):
        assert outcomes[asin].path is None
        assert outcomes[asin].error.startswith(f"private_host: {name} is not at a public address"), outcomes[asin].error
        assert "--allow-private-image-hosts" in outcomes[asin].error
    assert failure_reasons(outcomes) == {"private_host": 2, "no_image_url": 1}
    recorded = json.loads((tmp_path / "images" / "failures.json").read_text())
    assert {recorded[asin]["permanent"] for asin in ("B000000001", "B000000002")} == {False}

    allowed = fetch_images(items, ImageStore(tmp_path / "images"), OPTIONS)
    assert allowed["B000000001"].downloaded and allowed["B000000002"].downloaded
    assert host.hits["good.jpg"] == 2


@pytest.fixture
def public_name(monkeypatch):
    """``images.example.com`` as a public host: the fake network resolves it to a loopback server, whose
    connections report a public peer address (the names and addresses the OS would give; the guard is not
    touched)."""
    import socket

    ports: set[int] = set()
    resolve, peer_of = socket.getaddrinfo, socket.socket.getpeername

    def getaddrinfo(name, port, *args, **kwargs):
        return resolve("127.0.0.1" if name == "images.example.com" else name, port, *args, **kwargs)

    def getpeername(sock):
        address = peer_of(sock)
        return ("93.184.215.14", address[1]) if address[1] in ports else address

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket.socket, "getpeername", getpeername)
    return ports


def test_a_redirect_to_a_private_address_is_refused_unless_allowed(httpserver, host, public_name, tmp_path):
    from pytest_httpserver import HTTPServer

    public = HTTPServer()  # images.example.com: redirects to the loopback image host
    public.start()
    public_name.add(public.port)
    target = f"http://127.0.0.1:{httpserver.port}/good.jpg"
    public.expect_request("/moved.jpg").respond_with_data("", status=302, headers={"Location": target})
    public.expect_request("/good.jpg").respond_with_data(jpeg(), content_type="image/jpeg")
    guarded = ImageOptions(**{**OPTIONS.__dict__, "allow_private_hosts": False})
    items = [("B000000001", [f"http://images.example.com:{public.port}/moved.jpg"]),
             ("B000000002", [f"http://images.example.com:{public.port}/good.jpg"])]
    try:
        outcomes = fetch_images(items, ImageStore(tmp_path / "images"), guarded)
        assert outcomes["B000000001"].error.startswith("private_host: 127.0.0.1 is not at a public address")
        assert outcomes["B000000002"].downloaded  # a public host is asked
        assert not host.hits  # the redirect's target was never sent a request
        allowed = fetch_images(items, ImageStore(tmp_path / "images"), OPTIONS)
        assert allowed["B000000001"].downloaded and host.hits["good.jpg"] == 1
    finally:
        public.stop()


def test_a_name_resolving_to_a_private_address_is_refused(public_name, tmp_path, monkeypatch):
    """The address checked is the one connected to, found by the connection's own lookup (no earlier lookup
    that DNS rebinding could answer differently); it is dropped before a byte is sent."""
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    guarded = ImageOptions(**{**OPTIONS.__dict__, "allow_private_hosts": False})
    outcomes = fetch_images([("B000000001", [f"http://images.example.com:{server.getsockname()[1]}/x.jpg"])],
                            ImageStore(tmp_path / "images"), guarded)  # its port is not one public_name fakes
    error = outcomes["B000000001"].error
    assert error.startswith("private_host: images.example.com is not at a public address") and "127.0.0.1" not in error
    server.settimeout(0.5)
    connection, _ = server.accept()  # connected, then dropped before a byte was sent
    connection.settimeout(0.5)
    assert connection.recv(100) == b""
    connection.close()
    server.close()


@pytest.mark.parametrize("address, public", [
    ("93.184.215.14", True), ("2606:2800:21f:cb07:6820:80da:af6b:8b2c", True), ("::ffff:93.184.215.14", True),
    ("64:ff9b::5db8:d70e", True), ("127.0.0.1", False), ("10.0.0.7", False), ("172.16.0.1", False),
    ("192.168.1.1", False), ("169.254.169.254", False), ("100.64.0.1", False), ("0.0.0.0", False),
    ("224.0.0.1", False), ("239.255.255.250", False), ("255.255.255.255", False), ("240.0.0.1", False),
    ("::1", False), ("::", False), ("fc00::1", False), ("fd12:3456::1", False), ("fe80::1", False),
    ("fec0::1", False), ("ff02::1", False), ("ff0e::1", False), ("::ffff:127.0.0.1", False),
    ("::ffff:169.254.169.254", False), ("64:ff9b::a00:1", False), ("2002:a00:1::1", False), ("2001:db8::1", False),
    ("::127.0.0.1", False), ("192.0.0.8", False), ("192.0.0.171", False), ("::ffff:192.0.0.8", False),
    ("192.0.0.9", True), ("192.0.0.10", True),
])
def test_which_addresses_are_public(address, public):
    from reddit_amazon.http_session import is_public_address

    assert is_public_address(address) is public


def test_an_invalid_url_is_a_permanent_failure(tmp_path):
    urls = ["//127.0.0.1/x.jpg", "ftp://127.0.0.1/x.jpg", "data:image/png;base64,iVBORw0KGgo=",
            "http://127.0.0.1:99999/x.jpg", "http:///x.jpg", "http://[::1/x.jpg"]
    items = [(f"B00000000{i}", [url]) for i, url in enumerate(urls)]
    outcomes = fetch_images(items, ImageStore(tmp_path / "images"), OPTIONS)
    assert all(o.error.startswith("invalid_url") for o in outcomes.values()), outcomes
    recorded = json.loads((tmp_path / "images" / "failures.json").read_text())
    assert all(failure["permanent"] for failure in recorded.values())


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "LA", "P", "PA", "RGBa", "La"])
def test_transparent_pixels_become_white_in_every_mode(mode, monkeypatch):
    import reddit_amazon.images

    clear = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    if mode in ("RGB", "L"):  # transparency as a tRNS colour, without an alpha channel
        data = png(Image.new(mode, (4, 4)), transparency=(0, 0, 0) if mode == "RGB" else 0)
    elif mode in ("RGBA", "LA", "P"):
        data = png(clear.convert(mode))
    else:  # modes no file opens as: handed to the conversion as decoded
        image = Image.new("PA", (4, 4), (0, 0)) if mode == "PA" else clear.convert(mode.upper()).convert(mode)
        monkeypatch.setattr(reddit_amazon.images, "_decode", lambda data, options: image)
        data = b"decoded above"
    result = Image.open(io.BytesIO(to_jpeg(data, "image/png", OPTIONS)))
    assert min(result.convert("RGB").getpixel((0, 0))) >= 250, mode


def test_a_16_bit_greyscale_image_is_scaled_without_a_float_copy_of_it():
    """A 16-bit PNG of zeros is a few KB of download: its conversion held a float64 copy of the whole image and
    of each step (25 bytes a pixel, 0.9 GB for one 40-megapixel image, per download in flight); the pixels come
    out as before (value / 257, rounded)."""
    import tracemalloc

    from reddit_amazon.images import eight_bit_greyscale

    values = numpy.arange(4096 * 4096, dtype=numpy.uint32).reshape(4096, 4096) % 65536
    image = Image.open(io.BytesIO(png(Image.fromarray(values.astype(numpy.uint16)))))
    image.load()
    assert image.mode == "I;16"
    tracemalloc.start()
    try:
        scaled = eight_bit_greyscale(image)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * values.size, f"{peak / values.size:.1f} bytes a pixel"
    assert (numpy.asarray(scaled) == numpy.rint(values / 257)).all()


def test_workers_leave_the_warning_filters_alone(monkeypatch):
    """catch_warnings is not thread-safe: from worker threads it leaked a global "error" filter."""
    import warnings

    calls = []

    def spy(original):
        return lambda *args, **kwargs: calls.append(original.__name__) or original(*args, **kwargs)

    before = list(warnings.filters)
    for name in ("catch_warnings", "simplefilter", "filterwarnings"):
        monkeypatch.setattr(warnings, name, spy(getattr(warnings, name)))
    try:
        assert Image.open(io.BytesIO(to_jpeg(png_rgba(), "image/png", OPTIONS))).format == "JPEG"
        with pytest.raises(ImageRejected, match="too_many_pixels"):
            to_jpeg(bomb_png(), "image/png", OPTIONS)
    finally:
        monkeypatch.undo()
    assert calls == [] and warnings.filters == before


def test_an_unreadable_store_file_is_named_with_what_to_do(tmp_path, caplog):
    from reddit_amazon.files import DamagedFileError

    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "failures.json").write_text('{"B000000001": {"error"')
    with caplog.at_level("WARNING"):
        store = ImageStore(folder)  # only a record of failures: dropped, so they are retried
    assert store.failures == {}
    assert f"{folder / 'failures.json'}: damaged, not valid JSON" in caplog.text
    assert "the failures it recorded will be retried" in caplog.text
    (folder / "sources.json").write_text("[1, 2]")
    with pytest.raises(DamagedFileError, match=re.escape(f"{folder / 'sources.json'}: damaged, not a JSON object; "
                                                         "delete it to have the store's images fetched again")):
        ImageStore(folder)


def test_two_builds_sharing_a_store_keep_each_others_images(tmp_path):
    """Two builds (one per domain) fetch into one --image-store at once: whichever saves last must not drop
    the images the other recorded, nor a save delete journal lines the other appended meanwhile."""
    folder = tmp_path / "images"
    first, second = ImageStore(folder), ImageStore(folder)  # both started before either saved
    first.put("B000000001", jpeg(), "http://host/a.jpg")
    first.record_failure("B000000003", "http://host/c.jpg", "http_error: HTTP 404", permanent=True)
    second.put("B000000002", jpeg(), "http://host/b.jpg")
    first.save()  # the first build ends while the second still runs
    second.put("B000000004", jpeg(), "http://host/d.jpg")
    second.save()
    again = ImageStore(folder)
    assert all(again.has(asin, f"http://host/{name}.jpg")
               for asin, name in [("B000000001", "a"), ("B000000002", "b"), ("B000000004", "d")])
    assert again.failures["B000000003"]["permanent"]



PROXY_VARIABLES = ("no_proxy", "NO_PROXY", "http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy",
                   "ALL_PROXY")


@pytest.fixture
def socks_proxy_without_pysocks(monkeypatch):
    """The environment sends everything through a SOCKS proxy, and PySocks (an optional dependency of requests; the
    test extra installs it) is not installed: an import of it fails, as where it is missing."""
    monkeypatch.setitem(sys.modules, "socks", None)
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("all_proxy", "socks5://proxyuser:hunter2@127.0.0.1:1080")


def test_a_socks_proxy_without_pysocks_stops_the_downloads_before_they_start(socks_proxy_without_pysocks, httpserver,
                                                                              host, monkeypatch, tmp_path):
    """Not every item failing for good as "invalid_url: Missing dependencies for SOCKS support." (the environment's
    fault, never retried): one error naming what to install, before any request, with nothing recorded."""
    from reddit_amazon.http_session import ProxyUnsupported

    store = ImageStore(tmp_path / "images")
    items = [("B000000001", [httpserver.url_for("/good.jpg")]), ("B000000002", [httpserver.url_for("/good.jpg")])]
    with pytest.raises(ProxyUnsupported, match=r"through the SOCKS proxy socks5://127\.0\.0\.1:1080, and SOCKS "
                                               r"support is not installed: install PySocks") as raised:
        fetch_images(items, store, OPTIONS)
    assert "hunter2" not in str(raised.value)
    assert store.failures == {} and not (tmp_path / "images" / "failures.json").exists() and not host.hits
    monkeypatch.setenv("no_proxy", "localhost")  # the proxy is not used for this host: downloads as before
    outcomes = fetch_images(items, store, OPTIONS)
    assert all(outcome.downloaded for outcome in outcomes.values())


@pytest.mark.parametrize("scheme, url", [
    ("socks5h", "http://images.example.invalid/good.jpg"),  # the proxy resolves the name
    ("socks5", "http://192.0.2.1/good.jpg"),  # the client does (an address no direct connection reaches)
])
def test_images_go_through_a_socks_proxy(scheme, url, httpserver, host, monkeypatch, tmp_path):
    """The guarded session keeps requests' SOCKS connections (it replaces the pools of every proxy manager): the
    request goes to the proxy, not straight to the host. The proxy is reached at a loopback address without
    --allow-private-image-hosts, as an HTTP proxy is: it connects to the host itself."""
    pytest.importorskip("socks", reason="PySocks (the test extra) is not installed")
    from socks_server import SocksProxy  # tests/

    proxy = SocksProxy(("127.0.0.1", httpserver.port))
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("all_proxy", f"{scheme}://127.0.0.1:{proxy.port}")
    guarded = ImageOptions(**{**OPTIONS.__dict__, "allow_private_hosts": False, "max_attempts": 1})
    outcomes = fetch_images([("B000000001", [url])], ImageStore(tmp_path / "images"), guarded)
    proxy.close()
    assert outcomes["B000000001"].downloaded, outcomes["B000000001"].error
    assert proxy.requested == [(url.split("/")[2], 80)] and host.hits["good.jpg"] == 1


def test_a_next_fetch_removes_what_a_killed_write_left_and_keeps_a_concurrent_write(tmp_path):
    """A run killed while writing an image left its hidden temporary file in the store for good (the store may be
    shared: a temporary file there may be another build's write in progress, so none was removed)."""
    import os
    import socket
    import subprocess

    from reddit_amazon.files import atomic_path

    folder = tmp_path / "images"
    store = ImageStore(folder)
    store.put("B000000001", jpeg(), "http://host/a.jpg")
    store.save()
    killed_mid_write = ("import os, signal, sys; from pathlib import Path; from reddit_amazon.files import atomic_path\n"
                        "with atomic_path(Path(sys.argv[1])) as tmp:\n"
                        "    tmp.write_bytes(b'half an image')\n"
                        "    os.kill(os.getpid(), signal.SIGKILL)\n")
    killed = subprocess.Popen([sys.executable, "-c", killed_mid_write, str(store.path("B000000005"))])
    assert killed.wait() == -9
    (left,) = [path for path in folder.iterdir() if path.name.startswith(".B000000005.jpg.")]
    other_host = folder / f".B000000006.jpg.tmp-elsewhere-{killed.pid}-abcd1234"  # cannot be checked from here
    other_host.write_bytes(b"")
    before = sorted(path.name for path in folder.iterdir())
    with atomic_path(store.path("B000000002")) as writing:  # a concurrent build's write in progress
        writing.write_bytes(jpeg())
        assert fetch_images([], ImageStore(folder), ImageOptions()) == {}
        assert writing.exists()
    after = sorted(path.name for path in folder.iterdir())
    assert sorted([*after, left.name]) == sorted([*before, "B000000002.jpg"])
    assert socket.gethostname() in left.name and other_host.exists() and os.path.getsize(store.path("B000000002"))


def test_the_image_digest_is_pinned_and_names_benchmark_image_files(monkeypatch, tmp_path):
    """The digest names benchmark's image files and keys lavic-ref's embedding reuse (see test_lavic.py): a change
    to it orphans every cached file, and were it computed twice the two could silently disagree."""
    from benchmark.protocol import Candidate
    from reddit_amazon.images import image_digest

    data = b"\xff\xd8\xff fake jpeg"
    assert image_digest(data) == "9a44b46ca3566ef3e0573cfc90389f28"
    monkeypatch.setenv("REDDIT_AMAZON_IMAGE_DIR", str(tmp_path))
    assert Candidate(item_id="B1", title="t", image_bytes=data).image_path.name == f"B1-{image_digest(data)}.jpg"


SIGNATURE = "Zq81xSIGNATUREvalue0123"
REDIRECT_SIGNATURE = "Zq81xREDIRECTsignature456"


def signed(url: str, signature: str = SIGNATURE) -> str:
    """``url`` signed as S3 (SigV4), CloudFront and Azure SAS sign theirs."""
    return (f"{url}?X-Amz-Credential=AKIA{signature}&X-Amz-Signature={signature}&Policy=P{signature}"
            f"&Signature={signature}&Key-Pair-Id=K{signature}&sig={signature}&token={signature}")


def closed_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_signed_urls_signature_reaches_no_failure_text(httpserver, tmp_path, caplog, capfd):
    """requests quotes the URL it fetched, or was redirected to, in its errors: a signed URL's signature must not
    reach the item's image_error (published), failures.json or stderr. The item's own URL stays as it is in
    the store's records (the metadata's data, the key of what was fetched)."""
    unreachable = f"http://127.0.0.1:{closed_port()}"
    httpserver.expect_request("/forbidden.jpg").respond_with_data("signature does not match", status=403)
    httpserver.expect_request("/moved.jpg").respond_with_response(
        Response(status=302, headers={"Location": signed(f"{unreachable}/target.jpg", REDIRECT_SIGNATURE)}))
    urls = {"B000000001": signed(httpserver.url_for("/forbidden.jpg")),
            "B000000002": signed(f"{unreachable}/x.jpg"),  # refused: ConnectionError quotes the path and query
            "B000000003": signed(httpserver.url_for("/moved.jpg")),  # to a signed URL refused in turn
            "B000000004": signed("htp://images.invalid/x.jpg")}  # invalid_url quotes the whole URL
    outcomes = fetch_images([(asin, [url]) for asin, url in urls.items()], ImageStore(tmp_path / "images"), OPTIONS)
    assert [outcomes[asin].error.split(":")[0] for asin in urls] == \
        ["http_error", "download_failed", "download_failed", "invalid_url"]
    assert "Max retries exceeded with url: /x.jpg?X-Amz-Credential=<redacted>&X-Amz-Signature=<redacted>" \
        in outcomes["B000000002"].error
    failures = json.loads((tmp_path / "images" / "failures.json").read_text())
    assert {asin: failure["url"] for asin, failure in failures.items()} == urls
    texts = [o.error for o in outcomes.values()] + [f["error"] for f in failures.values()] + list(capfd.readouterr())
    texts += [record.getMessage() for record in caplog.records if record.name.startswith("reddit_amazon")]
    assert not [text for text in texts if SIGNATURE in text or REDIRECT_SIGNATURE in text], texts


def test_a_failure_an_earlier_run_recorded_with_a_signature_is_published_without_it(tmp_path):
    url = signed("http://127.0.0.1:9/x.jpg")
    store = ImageStore(tmp_path / "images")
    store.record_failure("B000000001", url, f"invalid_url: No connection adapters were found for '{url}'",
                         permanent=True)
    store.save()
    outcome = fetch_images([("B000000001", [url])], ImageStore(tmp_path / "images"), OPTIONS)["B000000001"]
    assert outcome.error.startswith("invalid_url: No connection adapters were found for 'http://127.0.0.1:9/x.jpg?")
    assert SIGNATURE not in outcome.error


def test_an_unexpected_error_quoting_a_signed_url_is_logged_and_recorded_without_its_signature(
        httpserver, tmp_path, monkeypatch, caplog):
    import reddit_amazon.images as images

    httpserver.expect_request("/good.jpg").respond_with_data(jpeg(), content_type="image/jpeg")
    url = signed(httpserver.url_for("/good.jpg"))

    def broken(data, content_type, options):
        raise RuntimeError(f"could not convert the image of {url}")

    monkeypatch.setattr(images, "to_jpeg", broken)
    outcome = fetch_images([("B000000001", [url])], ImageStore(tmp_path / "images"), OPTIONS)["B000000001"]
    assert outcome.error.startswith("unexpected_error: RuntimeError: could not convert")
    logged = "\n".join(record.getMessage() for record in caplog.records if record.name == "reddit_amazon.images")
    assert "image of B000000001" in logged and "Traceback" in logged  # the bug's traceback is still shown
    failures = (tmp_path / "images" / "failures.json").read_text()
    assert SIGNATURE not in outcome.error and SIGNATURE not in logged
    assert SIGNATURE not in json.loads(failures)["B000000001"]["error"]
