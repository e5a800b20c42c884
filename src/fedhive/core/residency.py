"""Hand back the memory pages of a big buffer as soon as a pass over it is done with them.

Why: a 100 MB update read through a memory map of its claim-check file becomes resident, page by
page, as the coordinator hashes, checks and folds it; at the end of each pass all 100 MB count
against the process although every byte is in the page cache anyway. Dropping the pages behind
each chunk (``madvise(MADV_DONTNEED)``) keeps the resident part of an update to a chunk: for a
file mapping a later read just maps the cached page again. The same call on an accumulator that
is being turned into its result frees the accumulator as the result grows.

Only whole pages inside the given range are dropped, so neighbouring memory is never touched.
On systems without ``madvise`` (not Linux) these are no-ops: memory is then as before.
"""

from __future__ import annotations

import ctypes
import mmap
import sys
from collections.abc import Iterator
from typing import TypeVar

import numpy as np

_PAGE = mmap.PAGESIZE
_MADV_DONTNEED = 4  # Linux; not exposed by ctypes, and mmap.MADV_DONTNEED only works on mmap objects
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
if _libc is not None:
    _libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    _libc.madvise.restype = ctypes.c_int

RELEASE_MIN_BYTES = 8 * 1024 * 1024  # below this, the syscalls cost more than the memory is worth

B = TypeVar("B", np.ndarray, memoryview)


def file_mapped(buffer: object) -> bool:
    """True if ``buffer`` (an array, a memoryview) ends in an ``mmap``: only then may its pages be
    dropped and read again. Dropping pages of ordinary memory would zero it."""
    seen = 0
    b: object | None = buffer
    while b is not None and seen < 32:
        if isinstance(b, mmap.mmap):
            return True
        b = b.obj if isinstance(b, memoryview) else getattr(b, "base", None)
        seen += 1
    return False


def address_of(buffer: np.ndarray | memoryview) -> int:
    arr = buffer if isinstance(buffer, np.ndarray) else np.frombuffer(buffer, np.uint8)
    return int(arr.ctypes.data)


def drop_pages(address: int, nbytes: int) -> None:
    """Give back the whole pages inside ``[address, address + nbytes)``."""
    if _libc is None or nbytes <= 0:
        return
    start = -(-address // _PAGE) * _PAGE
    stop = (address + nbytes) // _PAGE * _PAGE
    if stop > start:
        _libc.madvise(start, stop - start, _MADV_DONTNEED)  # advice: a failure only costs memory


def read_once(flat: B, chunk: int) -> Iterator[B]:
    """``flat`` (a 1-d array or a byte view) in chunks of ``chunk`` items, in order. If it is a
    memory map of at least ``RELEASE_MIN_BYTES``, each chunk's pages are given back once the caller
    asks for the next: one pass over a claim-checked update keeps a chunk of it resident, not all."""
    release = flat.nbytes >= RELEASE_MIN_BYTES and file_mapped(flat)
    base = address_of(flat) if release else 0
    for start in range(0, len(flat), chunk):
        part = flat[start : start + chunk]
        yield part
        if release:
            drop_pages(base + start * flat.itemsize, part.nbytes)
