"""A TCP proxy a test owns, to cut a service off from the processes that use it.

Tests that need "the broker went away" put this proxy between the fedhive processes and the
machine's shared RabbitMQ, and cut the proxy instead of stopping the broker (other jobs use it):

    with TcpProxy("127.0.0.1", 5672) as proxy:
        url = proxy.url_for("amqp://guest:guest@127.0.0.1:5672/")
        ...
        proxy.cut()      # every connection is reset, new ones are refused
        proxy.restore()  # connections are accepted again (on the same port)

Each connection is two threads copying bytes, one per direction: a handful of connections in a
test, so threads are simpler than an event loop shared with the code under test.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable
from types import TracebackType
from urllib.parse import urlsplit, urlunsplit

_CHUNK = 1 << 16
# SO_LINGER on, 0 s: close() sends a RST, as a crashed peer or a dropped link would look.
_RESET_ON_CLOSE = struct.pack("ii", 1, 0)


class TcpProxy:
    """Forwards connections made to ``127.0.0.1:port`` (a free port) to ``target_host:target_port``."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.accepted = 0  # connections accepted so far: a reconnect shows as one more
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._links: set[socket.socket] = set()
        self._lock = threading.Condition()
        self._closed = False

    def start(self) -> TcpProxy:
        self.restore()
        return self

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *_exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def url_for(self, url: str) -> str:
        """``url`` (amqp://user:pass@host:port/vhost?query) with its host and port replaced by the proxy's."""
        parts = urlsplit(url)
        userinfo, at, _ = parts.netloc.rpartition("@")
        return urlunsplit(parts._replace(netloc=f"{userinfo}{at}127.0.0.1:{self.port}"))

    # -- cutting and restoring ------------------------------------------------------------------
    def restore(self) -> None:
        """Listen (again, on the same port once it has one) and forward what connects."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the proxy is closed")
            if self._listener is not None:
                return
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # rebind past TIME_WAIT
            listener.bind(("127.0.0.1", self.port))
            listener.listen(32)
            self.port = listener.getsockname()[1]
            self._listener = listener
            self._acceptor = threading.Thread(target=self._accept, args=(listener,), daemon=True)
            self._acceptor.start()

    def cut(self) -> None:
        """Reset every open connection and refuse new ones until ``restore``."""
        with self._lock:
            listener, self._listener = self._listener, None
            links, self._links = self._links, set()
        if listener is not None:
            # shutdown wakes the thread blocked in accept(); close alone does not on Linux.
            _quietly(listener.shutdown, socket.SHUT_RDWR)
            listener.close()
        if self._acceptor is not None:
            self._acceptor.join(5)
        for s in links:
            _quietly(s.setsockopt, socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
            _quietly(s.shutdown, socket.SHUT_RD)  # wakes the copying thread blocked in recv(), sends nothing
            s.close()

    def close(self) -> None:
        self.cut()
        with self._lock:
            self._closed = True

    def wait_accepted(self, count: int, timeout: float) -> None:
        """Wait until ``count`` connections in all have been accepted; AssertionError after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self.accepted < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"only {self.accepted} of {count} connections came within {timeout} s")
                self._lock.wait(left)

    # -- forwarding -----------------------------------------------------------------------------
    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                downstream, _ = listener.accept()
            except OSError:
                return  # cut: the listener was shut down
            try:
                upstream = socket.create_connection(self.target, timeout=10)
                upstream.settimeout(None)
            except OSError:
                downstream.close()  # the service itself is down: the caller sees a dropped connection
                continue
            with self._lock:
                if self._listener is not listener:  # cut while we connected
                    downstream.close()
                    upstream.close()
                    return
                self._links.update((downstream, upstream))
                self.accepted += 1
                self._lock.notify_all()
            for src, dst in ((downstream, upstream), (upstream, downstream)):
                threading.Thread(target=self._copy, args=(src, dst), daemon=True).start()

    def _copy(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(_CHUNK):
                dst.sendall(data)
        except OSError:
            pass  # cut, or the other side went away
        # One side ended: end both, as a direct connection would.
        with self._lock:
            self._links.discard(src)
            self._links.discard(dst)
        for s in (src, dst):
            _quietly(s.shutdown, socket.SHUT_RDWR)
            s.close()


def _quietly(call: Callable[..., object], *args: object) -> None:
    with contextlib.suppress(OSError):
        call(*args)
