"""How long a TLS handshake with a server takes from here: at least one round trip on the wire.

    python tls_probe.py HOST PORT CA_FILE TRIES

Prints one line, ``handshake ms: T1 T2 ...``. The test runs it inside a lab host's namespace to check
that the link's added latency is really there: the fastest of a few handshakes is not slowed by a
busy machine the way one alone may be, and cannot be faster than the round trip.
"""

from __future__ import annotations

import socket
import ssl
import sys
import time


def handshake_ms(host: str, port: int, context: ssl.SSLContext) -> float:
    with socket.create_connection((host, port), timeout=30) as raw:
        started = time.perf_counter()  # after connect: the relay, if any, accepted before relaying
        with context.wrap_socket(raw, server_hostname=host):
            return (time.perf_counter() - started) * 1000


def main() -> int:
    host, port, ca_file, tries = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    context = ssl.create_default_context(cafile=ca_file)
    times = [handshake_ms(host, port, context) for _ in range(tries)]
    print("handshake ms: " + " ".join(f"{t:.1f}" for t in times), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
