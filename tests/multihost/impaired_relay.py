"""A TCP relay that makes one host's link slow and lossy where the kernel has no ``tc netem``.

    python impaired_relay.py LISTEN_HOST:PORT TARGET_HOST:PORT --delay-ms 25 --loss-percent 1 --seed 0

Every byte read from one side is written to the other ``delay_ms`` later, in order, each way (so a
round trip through the relay takes at least ``2 * delay_ms`` more than without it).

Loss is emulated, not done: a relay cannot drop a segment (each leg is its own TCP connection, which
would resend it), so it imposes what a lost segment costs the connection instead. A segment lost
with nothing behind it to trigger a fast retransmit is resent after a retransmission timeout (at
least 200 ms on Linux), and everything sent after it waits behind it: so each chunk read, with the
probability that at least one of its segments (``MSS`` bytes each) would be lost, holds its
direction for a pause of 200 to 400 ms, and the chunks behind it wait too. A seeded generator per
connection and direction makes a run's pauses repeatable. (Losses in a long burst are often repaired
after one round trip by fast retransmit: this errs on the side of the worse case.)

Prints ``relaying LISTEN -> TARGET`` once it listens, ``connection N from ADDR`` for each
connection, and on SIGTERM a last line ``relayed ... stalls ...`` with what it did. Standard library
only: it runs as a process of its own inside a network namespace of the multi-host lab.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import random
import signal
import socket
import sys
import threading
import time
from collections import deque
from types import FrameType

MSS = 1448  # bytes of payload per segment on a 1500-byte Ethernet link (with TCP timestamps)
STALL_S = (0.2, 0.4)  # what a lost segment costs: Linux's minimum RTO, up to twice that
_CHUNK = 1 << 16
_END = b""  # queued after a side's last byte: close both sides once it is due


class Direction:
    """One way of one connection: a reader that stamps each chunk with when it may leave, and a
    writer that sends it then. Release times never decrease, so a pause holds back what follows."""

    def __init__(self, relay: ImpairedRelay, src: socket.socket, dst: socket.socket, seed: int) -> None:
        self.relay, self.src, self.dst = relay, src, dst
        self.rng = random.Random(seed)
        self.queue: deque[tuple[float, bytes]] = deque()
        self.ready = threading.Condition()
        self.last_release = 0.0

    def start(self) -> None:
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._write, daemon=True).start()

    def _read(self) -> None:
        data = _END
        try:
            while data := self.src.recv(_CHUNK):
                self._push(data)
        except OSError:
            pass  # reset, or the relay is closing
        self._push(_END)

    def _push(self, data: bytes) -> None:
        release = max(time.monotonic() + self.relay.delay_s, self.last_release)
        if data and self.rng.random() < self.relay.chunk_loss(len(data)):
            release += self.rng.uniform(*STALL_S)
            self.relay.count("stalls")
        self.last_release = release
        if data:
            self.relay.count("chunks")
        with self.ready:
            self.queue.append((release, data))
            self.ready.notify()

    def _write(self) -> None:
        try:
            while True:
                with self.ready:
                    while not self.queue:
                        self.ready.wait()
                    release, data = self.queue.popleft()
                # A sleep here is the emulated wire's delay, not a wait on another thread.
                time.sleep(max(0.0, release - time.monotonic()))
                if not data:  # _END
                    break
                self.dst.sendall(data)
        except OSError:
            pass
        # One side ended (or failed): end both, as one connection end to end would.
        for s in (self.src, self.dst):
            _quietly_shutdown(s)
            s.close()


class ImpairedRelay:
    def __init__(self, listen: tuple[str, int], target: tuple[str, int], delay_ms: float, loss_percent: float,
                 seed: int) -> None:  # fmt: skip
        self.target = target
        self.delay_s = delay_ms / 1000
        self.loss = loss_percent / 100
        self.seed = seed
        self.counts = {"connections": 0, "chunks": 0, "stalls": 0}
        self._lock = threading.Lock()
        self.listener = socket.create_server(listen, reuse_port=False)
        self.address = self.listener.getsockname()[:2]

    def chunk_loss(self, size: int) -> float:
        """The chance that at least one of the segments carrying ``size`` bytes is lost."""
        return 1 - (1 - self.loss) ** math.ceil(size / MSS)

    def count(self, what: str) -> None:
        with self._lock:
            self.counts[what] += 1

    def serve(self) -> None:
        while True:
            try:
                downstream, peer = self.listener.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection(self.target, timeout=10)
                upstream.settimeout(None)
            except OSError as exc:
                print(f"cannot reach {self.target[0]}:{self.target[1]}: {exc}", flush=True)
                downstream.close()
                continue
            self.count("connections")
            n = self.counts["connections"]
            print(f"connection {n} from {peer[0]}:{peer[1]}", flush=True)
            for s in (downstream, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # the delay is ours, not Nagle's
            Direction(self, downstream, upstream, seed=self.seed * 1000 + 2 * n).start()
            Direction(self, upstream, downstream, seed=self.seed * 1000 + 2 * n + 1).start()

    def summary(self) -> str:
        c = self.counts
        return (f"relayed {c['connections']} connections, {c['chunks']} chunks, {c['stalls']} stalls "
                f"(delay {self.delay_s * 1000:g} ms each way, loss {self.loss * 100:g} %)")  # fmt: skip


def _quietly_shutdown(s: socket.socket) -> None:
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RDWR)


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"not HOST:PORT: {text!r}")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("listen", type=_address)
    parser.add_argument("target", type=_address)
    parser.add_argument("--delay-ms", type=float, default=25.0, help="added each way (default 25)")
    parser.add_argument("--loss-percent", type=float, default=1.0, help="per segment, emulated (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        relay = ImpairedRelay(args.listen, args.target, args.delay_ms, args.loss_percent, args.seed)
    except OSError as exc:
        print(f"cannot listen on {args.listen[0]}:{args.listen[1]}: {exc}", file=sys.stderr)
        return 1

    def stop(_signum: int, _frame: FrameType | None) -> None:
        print(relay.summary(), flush=True)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    print(f"relaying {relay.address[0]}:{relay.address[1]} -> {args.target[0]}:{args.target[1]}", flush=True)
    relay.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
