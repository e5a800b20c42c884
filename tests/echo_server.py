"""A TCP echo server on a free loopback port, for tests of what stands between two ends (the
cuttable ``TcpProxy``, the impaired relay of the multihost test)."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def echo_server() -> Iterator[int]:
    """Its port; one thread per connection, each sending back what it reads."""
    server = socket.create_server(("127.0.0.1", 0))

    def echo(conn: socket.socket) -> None:
        with conn, contextlib.suppress(ConnectionResetError):  # a cut proxy resets this side too
            while data := conn.recv(1 << 16):
                conn.sendall(data)

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=echo, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield server.getsockname()[1]
    finally:
        with contextlib.suppress(OSError):
            server.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        server.close()
