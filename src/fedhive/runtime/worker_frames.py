"""Frames between a simulation and its worker processes: a JSON header and optional bytes.

A frame is ``<u32 header length><u32 blob length>``, the header (a JSON object) and the blob. The
blob carries a client's ``ctx.state`` (safetensors bytes); model parameters never travel in frames
but through shared buffers (``runtime.shared_params``). Plain JSON rather than multiprocessing's
pickled messages, although both ends are one simulation's own processes and nothing crosses a
trust boundary: fedhive never unpickles, and JSON keeps every value explicit (metrics are floats,
written with ``repr`` and read back to the same bits).

The worker side reads and writes a blocking socket; the simulation side uses asyncio streams, so
its event loop never waits on a worker.
"""

from __future__ import annotations

import array
import asyncio
import json
import socket
import struct
from typing import Any

from fedhive.errors import FedhiveError

_HEAD = struct.Struct("<II")
MAX_HEADER = 16 * 1024 * 1024  # a frame's JSON: a session's settings at most
MAX_BLOB = 1 << 31  # a client's state


class FrameError(FedhiveError):
    """A malformed frame, or the other end went away mid-frame."""


def encode(header: dict[str, Any], blob: bytes = b"") -> bytes:
    text = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
    return _HEAD.pack(len(text), len(blob)) + text + blob


def _decode(body: bytes) -> dict[str, Any]:
    try:
        header = json.loads(body)
    except ValueError as exc:
        raise FrameError(f"malformed frame: {exc}") from None
    if not isinstance(header, dict):
        raise FrameError("malformed frame: its header is not an object")
    return header


def _sizes(head: bytes) -> tuple[int, int]:
    size, blob = _HEAD.unpack(head)
    if size > MAX_HEADER or blob > MAX_BLOB:
        raise FrameError(f"frame too large ({size} + {blob} bytes)")
    return size, blob


async def read_frame(reader: asyncio.StreamReader) -> tuple[dict[str, Any], bytes] | None:
    """The next frame, or None when the other end closed between frames."""
    try:
        head = await reader.readexactly(_HEAD.size)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise FrameError("the worker closed its socket mid-frame") from None
    size, blob = _sizes(head)
    try:
        body = await reader.readexactly(size)
        data = await reader.readexactly(blob) if blob else b""
    except asyncio.IncompleteReadError:
        raise FrameError("the worker closed its socket mid-frame") from None
    return _decode(body), data


class BlockingChannel:
    """The worker's end: blocking reads and writes of whole frames. Reads are unbuffered (exactly
    a frame's bytes), so that file descriptors sent with a later frame are not read past."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def read(self) -> tuple[dict[str, Any], bytes] | None:
        head = self._exactly(_HEAD.size, at_start=True)
        if head is None:
            return None
        return self._rest(head)

    def read_with_fds(self, most: int) -> tuple[dict[str, Any], list[int]]:
        """A frame sent with ``send_with_fds``: the descriptors come with its first bytes."""
        first, fds, _flags, _addr = socket.recv_fds(self.sock, _HEAD.size, most)
        if not first:
            raise FrameError("the simulation closed its socket before sending the shared buffers")
        head = first + (self._exactly(_HEAD.size - len(first)) or b"")
        header, _blob = self._rest(head)
        return header, list(fds)

    def write(self, header: dict[str, Any], blob: bytes = b"") -> None:
        self.sock.sendall(encode(header, blob))

    def _rest(self, head: bytes) -> tuple[dict[str, Any], bytes]:
        size, blob = _sizes(head)
        body = self._exactly(size) or b""
        data = (self._exactly(blob) or b"") if blob else b""
        return _decode(body), data

    def _exactly(self, n: int, *, at_start: bool = False) -> bytes | None:
        buf = bytearray(n)
        view, got = memoryview(buf), 0
        while got < n:
            k = self.sock.recv_into(view[got:])
            if k == 0:
                if at_start and got == 0:
                    return None
                raise FrameError("the simulation closed its socket mid-frame")
            got += k
        return bytes(buf)


def send_with_fds(sock: socket.socket, header: dict[str, Any], fds: list[int]) -> None:
    """One small frame with file descriptors attached, on a blocking socket (before asyncio owns it)."""
    data = encode(header)
    sent = sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
    if sent != len(data):
        sock.sendall(data[sent:])
