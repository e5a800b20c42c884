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

import numpy as np

_PAGE = mmap.PAGESIZE
_MADV_DONTNEED = 4  # Linux; not exposed by ctypes, and mmap.MADV_DONTNEED only works on mmap objects
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
if _libc is not None:
    _libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    _libc.madvise.restype = ctypes.c_int

RELEASE_MIN_BYTES = 8 * 1024 * 1024  # below this, the syscalls cost more than the memory is worth


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
