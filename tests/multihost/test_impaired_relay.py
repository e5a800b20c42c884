"""impaired_relay.py on loopback (no root needed): it adds its delay each way, its emulated losses
hold a direction back, and it keeps the bytes whole and in order through both."""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from echo_server import echo_server
from processes import Proc

RELAY = Path(__file__).parent / "impaired_relay.py"


@pytest.fixture
def echo_port() -> Iterator[int]:
    with echo_server() as port:
        yield port


def start_relay(echo_port: int, delay_ms: float, loss_percent: float) -> tuple[Proc, int]:
    args = [sys.executable, str(RELAY), "127.0.0.1:0", f"127.0.0.1:{echo_port}",
            "--delay-ms", f"{delay_ms:g}", "--loss-percent", f"{loss_percent:g}", "--seed", "1"]  # fmt: skip
    relay = Proc("relay", args)
    line = relay.wait_for("relaying 127.0.0.1:", timeout=30)
    return relay, int(line.split()[1].rsplit(":", 1)[1])


def ping_ms(conn: socket.socket) -> float:
    started = time.perf_counter()
    conn.sendall(b"x")
    assert conn.recv(1) == b"x"
    return (time.perf_counter() - started) * 1000


def test_each_way_is_late_by_the_delay(echo_port: int) -> None:
    relay, port = start_relay(echo_port, delay_ms=25, loss_percent=0)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            times = [ping_ms(conn) for _ in range(5)]
        assert min(times) >= 50, times
        relay.popen.terminate()
        assert relay.wait_for("relayed ", timeout=10).startswith("relayed 1 connections, 10 chunks, 0 stalls")
    finally:
        relay.kill()


def test_a_lost_segment_holds_its_direction_for_a_retransmission_timeout(echo_port: int) -> None:
    relay, port = start_relay(echo_port, delay_ms=5, loss_percent=100)  # every chunk "loses" one
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            assert ping_ms(conn) >= 2 * (5 + 200)
    finally:
        relay.kill()


def test_bytes_arrive_whole_and_in_order_through_delays_and_stalls(echo_port: int) -> None:
    relay, port = start_relay(echo_port, delay_ms=2, loss_percent=0.5)
    sent = b"".join(i.to_bytes(4, "big") for i in range(250_000))  # 1 MB, every offset distinct
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
            threading.Thread(target=conn.sendall, args=(sent,), daemon=True).start()
            got = bytearray()
            while len(got) < len(sent) and (data := conn.recv(1 << 16)):
                got += data
        assert bytes(got) == sent
        relay.popen.terminate()
        stalls = int(relay.wait_for("relayed ", timeout=10).split()[5])
        assert stalls > 0, "0.5 % loss on 1 MB both ways (about 700 segments each) stalled nothing"
    finally:
        relay.kill()
