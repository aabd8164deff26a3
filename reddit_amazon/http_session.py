"""``requests`` sessions for hosts that input data names: image URLs from a metadata file (which may be someone
else's copy), Amazon short links found in Reddit texts.

Two guards a plain ``requests.Session`` lacks:

* :class:`Deadline`: the whole of a request ends after a set time, not only each read. The session's connections
  hand their socket to the deadline in force on their thread before reading a response; at the deadline it is
  shut, which ends a blocked read (a host or proxy sending a byte every few seconds).
* public addresses only, unless ``allow_private_hosts``: the address each new connection reached is checked right
  after connecting, before anything (a TLS handshake included) is sent, so neither a URL, nor a redirect, nor a
  name that resolves to a public address when looked up and to a private one when connected to (DNS rebinding)
  reaches loopback, private, link-local (169.254.169.254: cloud metadata), shared, multicast or reserved
  addresses. Behind a proxy (``http_proxy`` / ``https_proxy`` / ``all_proxy``, a SOCKS one too) the proxy resolves
  the name (or, with ``socks5://``, is given the address the client resolved) and connects: the guard sees only the
  proxy, which is the user's own choice, and checks nothing.

A SOCKS proxy needs PySocks, which is not a dependency: :func:`check_proxies` says so before any request, instead
of every request failing as requests' "invalid URL".
"""

from __future__ import annotations

import functools
import importlib.util
import ipaddress
import re
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, final
from urllib.parse import urlsplit

from reddit_amazon.redaction import URL_USERINFO

_current = threading.local()  # .deadline: the Deadline of the request this thread is making


class PrivateHostRefused(Exception):
    """A host reached at an address that is not public. Not an ``OSError``: urllib3 and requests pass it on as it
    is, neither wrapped into a connection error nor retried."""

    reason = "private_host"

    def __init__(self, host: str, address: str):
        # The address stays out of the text: it becomes the item's image_error, which a published dataset shows,
        # and a name's private address is the build network's own (its internal DNS).
        super().__init__(f"{self.reason}: {host} is not at a public address")
        self.host, self.address = host, address


class ProxyUnsupported(ValueError):
    """The environment sends requests through a SOCKS proxy and PySocks, which requests needs for one, is not
    installed: the setting's problem, not any URL's."""


class ProxyAuthRequired(Exception):
    """A proxy's 407: it wants credentials the environment's proxy variables do not give. The machine's proxy
    settings, not the URL, are at fault: nothing is recorded for good, and asking again in the run answers the
    same."""

    reason = "proxy_auth_required"

    def __init__(self) -> None:
        super().__init__(f"{self.reason}: HTTP 407, the proxy asks for credentials (give them in HTTP_PROXY / "
                         "HTTPS_PROXY as http://user:password@host:port)")


#: How http.client words a proxy's 407 to the CONNECT of an https:// URL, which requests raises as a ProxyError:
#: the answer never becomes a response.
_TUNNEL_REFUSED_407 = re.compile(r"Tunnel connection failed: 407\b")


def proxy_refused_tunnel(error: BaseException) -> bool:
    """Whether ``error`` (a failed request) is a proxy's 407 to the CONNECT of an https:// URL."""
    import requests

    return isinstance(error, requests.exceptions.ProxyError) and bool(_TUNNEL_REFUSED_407.search(str(error)))


def check_proxies(urls: Iterable[str]) -> None:
    """Raise :class:`ProxyUnsupported` if the proxy the environment sets for any of ``urls`` (``all_proxy``,
    ``https_proxy``, ``http_proxy``; ``no_proxy`` respected, as requests reads them) is a SOCKS proxy and PySocks is
    not installed. Without it each request would fail at once as an invalid URL."""
    if importlib.util.find_spec("socks") is not None:
        return
    from requests.utils import get_environ_proxies, select_proxy

    seen: set[tuple[str, str]] = set()
    for url in urls:
        try:
            parts = urlsplit(url)
        except ValueError:  # not a URL: its own download fails, and says so
            continue
        origin = (parts.scheme.lower(), (parts.hostname or "").lower())
        if origin in seen:
            continue
        seen.add(origin)
        proxy = select_proxy(url, get_environ_proxies(url))
        if proxy and proxy.lower().startswith("socks"):
            raise ProxyUnsupported(
                f"the environment sends requests for {parts.scheme}://{parts.hostname} through the SOCKS proxy "
                f"{URL_USERINFO.sub('', proxy)}, and SOCKS support is not installed: install PySocks "
                f"(pip install 'requests[socks]') or unset the proxy (all_proxy / https_proxy / http_proxy)")


_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # IPv4 addresses reached through a NAT64 gateway
# IANA's IETF protocol assignments: none globally reachable but the two anycast services. Pythons released before
# the CVE-2024-4032 fix (3.11.7 and 3.12.1, for two) count the rest of the block, 192.0.0.8 for one, as global.
_IETF_PROTOCOL_ASSIGNMENTS = ipaddress.ip_network("192.0.0.0/24")
_GLOBAL_IETF_ANYCAST = frozenset(map(ipaddress.IPv4Address, ("192.0.0.9", "192.0.0.10")))  # PCP, TURN


def is_public_address(address: str) -> bool:
    """Whether ``address`` is globally routable: not loopback, private, link-local, shared (100.64/10), multicast,
    reserved or unspecified, nor an IPv6 address carrying such an IPv4 one (mapped, NAT64, 6to4).

    Python 3.11's ``is_global`` alone counts multicast, ``::ffff:127.0.0.1``-like forms and the deprecated
    site-local fec0::/10 as global, and older patch releases part of 192.0.0.0/24, so those are checked here."""
    ip = ipaddress.ip_address(address)
    if ip.version == 6:
        embedded = ip.ipv4_mapped or ip.sixtofour or (
            ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF) if ip in _NAT64 else None)
        if embedded is not None:
            return is_public_address(str(embedded))
        if ip.is_site_local:
            return False
    elif ip in _IETF_PROTOCOL_ASSIGNMENTS and ip not in _GLOBAL_IETF_ANYCAST:
        return False
    return ip.is_global and not ip.is_multicast and not ip.is_reserved


@final
class Deadline:
    """Shuts the socket of the request made in its ``with`` block once ``seconds`` have passed. The socket is
    handed over by :func:`guarded_session`'s connections (:meth:`watch`) before the headers are read, for each
    request a redirect leads to as well; the body is read from the same socket."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.expired = threading.Event()  # set before the socket is shut: a response that "ended" was cut short
        self._socket: Any = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self.expire)
        self._timer.daemon = True

    def __enter__(self) -> Deadline:
        _current.deadline = self
        self._timer.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._timer.cancel()
        _current.deadline = None

    def watch(self, sock: Any) -> None:
        with self._lock:
            self._socket = sock or self._socket
            expired = self.expired.is_set()
        if expired:
            _shut(sock)

    def expire(self) -> None:
        """Shut the socket now (or, when none is handed over yet, as soon as it is)."""
        with self._lock:
            self.expired.set()
            sock = self._socket
        _shut(sock)


class RequestsInFlight:
    """The :class:`Deadline` of each request a pool of workers has in flight, so that a run stopping (Ctrl-C,
    SIGTERM) cuts them at once instead of waiting for each to answer or reach its deadline (a minute for an
    image; a Slurm job has ~30 s between SIGTERM and SIGKILL). A cut request ends as at its deadline
    (``deadline.expired`` is set); :attr:`stopped` tells the two apart."""

    def __init__(self) -> None:
        self.stopped = threading.Event()
        self._lock = threading.Lock()
        self._deadlines: set[Deadline] = set()

    @contextmanager
    def request(self, seconds: float) -> Iterator[Deadline]:
        """A :class:`Deadline` of ``seconds`` for the request made in the block, cut by :meth:`stop`."""
        with Deadline(seconds) as deadline:
            with self._lock:
                self._deadlines.add(deadline)
                stopped = self.stopped.is_set()
            if stopped:  # stopped before the request began: it ends before anything is sent
                deadline.expire()
            try:
                yield deadline
            finally:
                with self._lock:
                    self._deadlines.discard(deadline)

    def stop(self) -> None:
        """Cut every request in flight and the ones begun from now on."""
        with self._lock:
            self.stopped.set()
            deadlines = list(self._deadlines)
        for deadline in deadlines:
            deadline.expire()


def guarded_session(user_agent: str, *, allow_private_hosts: bool = False) -> Any:
    """A ``requests.Session`` whose connections hand their socket to the thread's :class:`Deadline` before reading
    a response and, unless ``allow_private_hosts``, raise :class:`PrivateHostRefused` for a host not at a public
    address."""
    import requests

    new = requests.Session()
    new.headers["User-Agent"] = user_agent
    adapter = _adapter_class(allow_private_hosts)()
    new.mount("http://", adapter)
    new.mount("https://", adapter)
    return new


@functools.cache
def _adapter_class(allow_private_hosts: bool) -> type:
    from requests.adapters import HTTPAdapter
    from urllib3 import HTTPConnectionPool, HTTPSConnectionPool
    from urllib3.connection import HTTPConnection

    # The guard hooks urllib3's private HTTPConnection._new_conn (the socket, before TLS and the request): a
    # release without it must fail here, not silently connect anywhere.
    if not allow_private_hosts and not callable(getattr(HTTPConnection, "_new_conn", None)):
        raise RuntimeError(f"this urllib3 has no HTTPConnection._new_conn: the private-address guard cannot work "
                           f"({HTTPConnection.__module__})")

    @functools.cache
    def guarded(pool_class: type[HTTPConnectionPool], *, through_proxy: bool = False) -> type:
        base: Any = pool_class.ConnectionCls  # the pool's own connection class, known only when called

        class Connection(base):
            def _new_conn(self) -> Any:
                sock = super()._new_conn()
                # through a proxy (an HTTP one sets self.proxy; a SOCKS one's pools connect to it): its address
                if not allow_private_hosts and self.proxy is None and not through_proxy:
                    _refuse_private_peer(sock, self.host)
                return sock

            def getresponse(self, *args: Any, **kwargs: Any) -> Any:
                deadline = getattr(_current, "deadline", None)
                if deadline is not None:
                    deadline.watch(self.sock)
                return super().getresponse(*args, **kwargs)

        return type(pool_class.__name__, (pool_class,), {"ConnectionCls": Connection})

    pools = {"http": guarded(HTTPConnectionPool), "https": guarded(HTTPSConnectionPool)}

    class Adapter(HTTPAdapter):
        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = pools

        def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:  # behind a proxy: the same watch
            manager = super().proxy_manager_for(proxy, **kwargs)
            if proxy.lower().startswith("socks"):  # its own pools (its class's) connect through the proxy: kept
                manager.pool_classes_by_scheme = {scheme: guarded(pool_class, through_proxy=True)
                                                  for scheme, pool_class in type(manager).pool_classes_by_scheme.items()}
            else:
                manager.pool_classes_by_scheme = pools
            return manager

    return Adapter


def _refuse_private_peer(sock: Any, host: str) -> None:
    """:class:`PrivateHostRefused` (the socket closed) when ``sock`` is connected to an address that is not public."""
    try:
        address = sock.getpeername()[0]
    except OSError:  # not connected after all
        sock.close()
        raise
    if not is_public_address(address):
        sock.close()
        raise PrivateHostRefused(host, address)


def _shut(sock: Any) -> None:
    import socket

    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:  # already closed
            pass
