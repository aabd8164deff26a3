"""A minimal SOCKS5 proxy on loopback (RFC 1928: no authentication, CONNECT only), for the tests of requests made
through one. Every connection goes on to one upstream address whatever it asks for, so the names a test asks for
need not resolve; what each asked for is recorded."""

from __future__ import annotations

import socket
import struct
import threading

_NO_AUTHENTICATION = b"\x05\x00"
_SUCCEEDED = b"\x05\x00\x00\x01" + socket.inet_aton("127.0.0.1") + struct.pack("!H", 0)


class SocksProxy:
    def __init__(self, upstream: tuple[str, int]):
        self.upstream = upstream
        self.requested: list[tuple[str, int]] = []  # (host as the client sent it, port) of each CONNECT
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def close(self) -> None:
        self._server.close()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:  # closed
                return
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        with client:
            _, methods = _read(client, 2)
            _read(client, methods)
            client.sendall(_NO_AUTHENTICATION)
            _, command, _, address_type = _read(client, 4)
            if address_type == 1:
                host = socket.inet_ntop(socket.AF_INET, _read(client, 4))
            elif address_type == 4:
                host = socket.inet_ntop(socket.AF_INET6, _read(client, 16))
            else:  # 3: a name, for the proxy to resolve
                host = _read(client, _read(client, 1)[0]).decode()
            port = struct.unpack("!H", _read(client, 2))[0]
            assert command == 1, "CONNECT only"
            self.requested.append((host, port))
            with socket.create_connection(self.upstream) as upstream:
                client.sendall(_SUCCEEDED)
                back = threading.Thread(target=_relay, args=(upstream, client), daemon=True)
                back.start()
                _relay(client, upstream)
                back.join()


def _read(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the client closed the connection mid-handshake")
        data += chunk
    return data


def _relay(source: socket.socket, target: socket.socket) -> None:
    try:
        while chunk := source.recv(65536):
            target.sendall(chunk)
        target.shutdown(socket.SHUT_WR)
    except OSError:  # the other side is gone
        pass
