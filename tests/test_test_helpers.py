"""The helpers other tests lean on: a process's output lines (``Proc``) and a cuttable proxy (``TcpProxy``)."""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Iterator

import pytest

from echo_server import echo_server
from processes import Proc
from tcp_proxy import TcpProxy


def test_wait_for_fails_at_once_with_the_exit_code_when_the_process_has_exited() -> None:
    proc = Proc("quitter", [sys.executable, "-c", "print('started'); raise SystemExit('gave up')"])
    began = time.monotonic()
    with pytest.raises(pytest.fail.Exception, match="quitter exited with code 1 without a line with 'ready'") as info:
        proc.wait_for("ready", timeout=120)
    assert time.monotonic() - began < 60  # not the timeout
    assert "started" in str(info.value) and "gave up" in str(info.value)  # its last lines


def test_wait_for_returns_the_line() -> None:
    proc = Proc("talker", [sys.executable, "-c", "print('a'); print('ready at 5')"])
    assert proc.wait_for("ready", timeout=60) == "ready at 5"
    assert proc.finish(60) == 0


@pytest.fixture
def echo_port() -> Iterator[int]:
    with echo_server() as port:
        yield port


def round_trip(port: int) -> socket.socket:
    conn = socket.create_connection(("127.0.0.1", port), timeout=10)
    conn.sendall(b"ping")
    assert conn.recv(1024) == b"ping"
    return conn


def test_the_proxy_forwards_cuts_refuses_and_comes_back_on_the_same_port(echo_port: int) -> None:
    with TcpProxy("127.0.0.1", echo_port) as proxy:
        assert proxy.url_for("amqp://u:p@broker:5672/vh?x=1") == f"amqp://u:p@127.0.0.1:{proxy.port}/vh?x=1"
        conn = round_trip(proxy.port)
        proxy.cut()
        with pytest.raises(OSError):  # reset, or (if the reset came first) a closed connection
            conn.sendall(b"after the cut")
            if conn.recv(1024) == b"":
                raise ConnectionResetError("closed")
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
        proxy.restore()
        round_trip(proxy.port).close()
        proxy.wait_accepted(2, timeout=10)
        assert proxy.accepted == 2
