"""Claim checks through presigned URLs: how a node without store credentials reads a payload it
was sent and writes the one it answers with (docs/networked.md, "Claim checks").

Blocking (HTTP): callers run these in a worker thread. A URL is a capability (whoever holds it
may use it until it expires), so it never appears in an error or a log line; only its host does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from fedhive.errors import StorageError

if TYPE_CHECKING:
    import httpx

CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 120.0  # per read of the body, not for the whole transfer


def download(url: str, *, max_bytes: int) -> bytes:
    """The object's bytes, in this process's own memory (the caller checks their digest on this
    very copy); ``StorageError`` when it is missing, refused, or larger than ``max_bytes``."""
    import httpx  # here: every node imports this module, few ever fetch by URL (httpx costs 80 ms)

    buf = bytearray()
    try:
        with httpx.stream("GET", url, timeout=_timeout()) as response:
            _check(response, "read")
            for chunk in response.iter_bytes():
                buf += chunk
                if len(buf) > max_bytes:
                    raise StorageError(f"claim-checked payload at {_host(url)} is over {max_bytes} bytes")
    except httpx.HTTPError as exc:
        raise StorageError(f"cannot read a claim-checked payload from {_host(url)}: {type(exc).__name__}") from None
    return bytes(buf)


def upload(url: str, parts: Sequence[bytes | memoryview]) -> None:
    """PUT the concatenation of ``parts`` to a presigned URL (one request: S3 needs its length)."""
    import httpx

    data = b"".join(parts)
    try:
        response = httpx.put(url, content=data, timeout=_timeout())
    except httpx.HTTPError as exc:
        raise StorageError(f"cannot write a claim-checked payload to {_host(url)}: {type(exc).__name__}") from None
    _check(response, "write")


def _timeout() -> httpx.Timeout:
    import httpx

    return httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)


def _check(response: httpx.Response, what: str) -> None:
    if response.status_code >= 300:
        raise StorageError(
            f"the store at {_host(str(response.url))} refused to {what} a claim-checked payload "
            f"(HTTP {response.status_code}; a presigned URL opens one object, until it expires)"
        )


def _host(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"
