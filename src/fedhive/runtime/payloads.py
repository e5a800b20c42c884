"""Turning a received message's payload into validated ``Params``."""

from __future__ import annotations

import threading

from fedhive.core import codec
from fedhive.core.bodies import compression_claimed
from fedhive.core.compression import decode_update
from fedhive.core.envelope import Deferred, Message
from fedhive.core.params import Params, ParamSpec, check_against_spec
from fedhive.errors import PayloadError

OFFLOAD_BYTES = 1024 * 1024  # payloads above this are validated in a worker thread


def payload_size(message: Message) -> int:
    p = message.payload
    if p is None:
        return 0
    return p.nbytes if isinstance(p, Params | memoryview | Deferred) else len(p)


def payload_params(
    message: Message,
    expected: ParamSpec,
    *,
    max_bytes: int,
    what: str,
    compression: str = "none",
    base: Params | None = None,
) -> Params:
    """Decode (if bytes) and check names, shapes, dtypes, size and finiteness against ``expected``.

    An update of a session with ``compression`` is decompressed onto ``base`` (core.compression)."""
    p = message.payload
    if p is None:
        raise PayloadError(f"{what} carries no parameters")
    shareable = not isinstance(p, Deferred)
    if isinstance(p, Deferred):  # fetched only now, so a queue of updates holds no model bytes
        if p.nbytes > max_bytes:
            raise PayloadError(f"{what} of {p.nbytes} bytes exceeds the limit of {max_bytes} bytes")
        p = p.load()
    claimed = compression_claimed(message)
    if compression != "none" or claimed is not None:
        return decode_update(
            p, claimed=claimed, session=compression, expected=expected, base=base, max_bytes=max_bytes, what=what
        )
    if isinstance(p, Params):
        if p.nbytes > max_bytes:
            raise PayloadError(f"{what} of {p.nbytes} bytes exceeds the limit of {max_bytes} bytes")
        check_against_spec(p, expected, what=what)
        return p
    if shareable and isinstance(p, memoryview) and p.nbytes > OFFLOAD_BYTES:
        return _LAST_SHARED.decode(p, expected, max_bytes=max_bytes, what=what)
    return codec.decode(p, expected=expected, max_bytes=max_bytes, what=what)


class _LastDecoded:
    """The last big fetched payload decoded and checked, by identity of the fetched object.

    Why: the virtual clients of one process get the very same fetched global model
    (``wire_codec._fetch_shared``), and checking 100 MB for finiteness once per client cost a
    tenth of their round. One slot: it never holds more than the model of the round at hand.
    Deferred payloads (a coordinator's updates, each different) never come here."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._slot: tuple[memoryview, ParamSpec, Params] | None = None

    def decode(self, p: memoryview, expected: ParamSpec, *, max_bytes: int, what: str) -> Params:
        with self._lock:
            slot = self._slot
        if slot is not None and slot[0] is p and slot[1] == expected and p.nbytes <= max_bytes:
            return slot[2]
        params = codec.decode(p, expected=expected, max_bytes=max_bytes, what=what)
        with self._lock:
            self._slot = (p, expected, params)
        return params


_LAST_SHARED = _LastDecoded()
