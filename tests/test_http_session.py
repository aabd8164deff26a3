"""reddit_amazon.http_session.Deadline on its own: which socket it shuts, and when (the image downloads and short
links that use it are tested in test_images.py and test_linking.py)."""

from __future__ import annotations

import socket
import time

import pytest

from reddit_amazon.http_session import Deadline, guarded_session
from trickling_server import trickling_server  # tests/: a server answering a byte at a time


def is_shut(peer: socket.socket, wait_s: float = 0.5) -> bool:
    """Whether the other end of ``peer``'s connection was shut (it reads an end of file within ``wait_s``)."""
    peer.settimeout(wait_s)
    try:
        return peer.recv(1) == b""
    except TimeoutError:
        return False


@pytest.fixture
def connection():
    ours, theirs = socket.socketpair()
    yield ours, theirs
    ours.close()
    theirs.close()


def test_a_socket_handed_over_after_the_deadline_is_shut_at_once(connection):
    """The deadline may pass before the response's socket is handed over (a slow connect or TLS handshake):
    the read must not then wait for the per-read timeout alone."""
    ours, theirs = connection
    with Deadline(0.01) as deadline:
        assert deadline.expired.wait(10), "the deadline never passed"
        deadline.watch(ours)
        assert is_shut(theirs)


def test_a_socket_the_deadline_does_not_know_leaves_the_one_it_knows_watched(connection):
    """``watch(None)`` (a connection without a socket to hand over) keeps the socket already handed over."""
    ours, theirs = connection
    with Deadline(60) as deadline:
        deadline.watch(ours)
        deadline.watch(None)
        assert not is_shut(theirs, wait_s=0.1)
        deadline.expire()  # what its timer does once the time is up
    assert is_shut(theirs)


def test_a_deadline_that_ended_in_time_never_shuts_its_socket_later(connection):
    """A connection goes back to the session's pool after its response: a deadline already over must not shut it
    under the next request."""
    ours, theirs = connection
    with Deadline(0.2) as deadline:
        deadline.watch(ours)
    time.sleep(0.4)
    assert not deadline.expired.is_set() and not is_shut(theirs)


def test_a_request_after_a_passed_deadline_is_not_cut_by_it():
    """Once its ``with`` block ends, a deadline (passed or not) watches no request of its thread."""
    server = trickling_server([b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n", b"ok"], 0.2)
    session = guarded_session("test", allow_private_hosts=True)
    with Deadline(0.01) as deadline:
        assert deadline.expired.wait(10), "the deadline never passed"
    response = session.get(f"http://127.0.0.1:{server.getsockname()[1]}/", timeout=5)
    assert response.status_code == 200 and response.content == b"ok"
    server.close()


def test_a_request_within_a_deadline_is_cut_at_it():
    import requests

    server = trickling_server([b"HTTP/1.1 200 OK\r\n", *[b"X"] * 30, b": y\r\nContent-Length: 0\r\n\r\n"], 0.1)
    session = guarded_session("test", allow_private_hosts=True)
    started = time.monotonic()
    with Deadline(0.3) as deadline:
        try:  # an error, or headers that "ended" early: the deadline tells
            session.get(f"http://127.0.0.1:{server.getsockname()[1]}/", timeout=5)
        except requests.RequestException:
            pass
    assert deadline.expired.is_set() and time.monotonic() - started < 2  # the headers alone take 3 s
    server.close()
