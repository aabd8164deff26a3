"""A loopback server that answers slowly: the deadline tests of image downloads and short links."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterable


def trickling_server(pieces: Iterable[bytes], pause_s: float):
    """A loopback server that answers one request with ``pieces``, ``pause_s`` apart (a slow host or proxy)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()

    def serve():
        connection, _ = server.accept()
        connection.recv(4096)
        try:
            for piece in pieces:
                connection.sendall(piece)
                time.sleep(pause_s)
        except OSError:  # the client shut the socket at its deadline
            pass
        connection.close()

    threading.Thread(target=serve, daemon=True).start()
    return server
