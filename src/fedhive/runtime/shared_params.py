"""Model-sized buffers that a simulation shares with its worker processes, without pickle or copies.

A simulation with worker processes (``runtime.worker_pool``) writes each round's global model once
into a shared buffer that every worker maps, and each worker writes a client's update into one of
a few update slots that the parent folds straight from. A buffer is an anonymous file (Linux's
``memfd_create``; elsewhere an unlinked temporary file) that the parent hands each worker as a file
descriptor over their socket (``SCM_RIGHTS``): nothing has a name, so nothing outlives the
processes that map it, whatever way they end (a killed parent included).

``ParamLayout`` places a model's tensors in a buffer (each at a 64-byte aligned offset, in spec
order); ``views`` gives the arrays over a buffer, which no one copies.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import tempfile
from dataclasses import dataclass

import numpy as np

from fedhive.core.params import Params, ParamSpec

_ALIGN = 64  # a cache line: every tensor starts on its own, as numpy's own allocations do


@dataclass(frozen=True)
class ParamLayout:
    spec: ParamSpec
    offsets: tuple[int, ...]
    nbytes: int  # of one buffer: the model's bytes plus alignment

    @classmethod
    def of(cls, spec: ParamSpec) -> ParamLayout:
        offsets, at = [], 0
        for t in spec.tensors:
            offsets.append(at)
            at += -(-t.nbytes // _ALIGN) * _ALIGN
        return cls(spec, tuple(offsets), max(at, _ALIGN))

    def views(self, buffer: mmap.mmap, index: int = 0, *, writeable: bool = True) -> Params:
        """The model's arrays in buffer slot ``index`` (slots of ``nbytes`` each, back to back)."""
        base = index * self.nbytes
        arrays = {}
        for t, offset in zip(self.spec.tensors, self.offsets, strict=True):
            count = int(np.prod(t.shape, dtype=np.int64))
            arr = np.frombuffer(buffer, dtype=t.dtype, count=count, offset=base + offset).reshape(t.shape)
            if not writeable:
                arr.flags.writeable = False
            arrays[t.name] = arr
        return Params(arrays)

    def write(self, buffer: mmap.mmap, params: Params, index: int = 0) -> None:
        """Copy ``params`` (of this layout's spec: checked by the caller) into slot ``index``."""
        for name, target in self.views(buffer, index).items():
            np.copyto(target, params[name], casting="no")


class SharedBuffer:
    """``slots`` buffers of ``slot_bytes`` in one anonymous file, mapped here; ``fd`` goes to workers."""

    def __init__(self, slot_bytes: int, slots: int = 1, *, name: str = "fedhive-params") -> None:
        size = max(1, slot_bytes * slots)
        if hasattr(os, "memfd_create"):
            self.fd = os.memfd_create(name, os.MFD_CLOEXEC)
        else:  # macOS and other Unixes: a temporary file, unlinked at once (its descriptor is ours)
            self.fd, path = tempfile.mkstemp(prefix=name)
            os.unlink(path)
        os.ftruncate(self.fd, size)
        self.size = size
        self.map = mmap.mmap(self.fd, size)

    def close(self) -> None:
        with contextlib.suppress(BufferError):  # arrays over it still alive: the mapping goes with them
            self.map.close()
        os.close(self.fd)


def map_fd(fd: int, size: int) -> mmap.mmap:
    """A worker's mapping of a buffer its parent sent; the descriptor is not needed afterwards."""
    try:
        return mmap.mmap(fd, size)
    finally:
        os.close(fd)
