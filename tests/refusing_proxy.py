"""A loopback HTTP proxy that answers 407 Proxy Authentication Required to every request, a CONNECT tunnel
(an https:// URL's) included, for the tests of what a user sees when the proxy wants credentials."""

from __future__ import annotations

import socket
import threading

_PROXY_AUTHENTICATION_REQUIRED = (b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                                  b'Proxy-Authenticate: Basic realm="p"\r\nContent-Length: 0\r\n\r\n')


def refusing_proxy() -> tuple[int, list[bytes]]:
    """Start the proxy: its port, and the request line of each request it refused (filled as they come)."""
    proxy = socket.socket()
    proxy.bind(("127.0.0.1", 0))
    proxy.listen()
    asked: list[bytes] = []

    def refuse_each():
        while True:
            connection, _ = proxy.accept()
            asked.append(connection.recv(4096).split(b"\r\n")[0])
            connection.sendall(_PROXY_AUTHENTICATION_REQUIRED)
            connection.close()

    threading.Thread(target=refuse_each, daemon=True).start()
    return proxy.getsockname()[1], asked
