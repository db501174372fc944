"""This process's memory: the machine's size, the current RSS, and handing freed memory back.

Used by the out-of-core ingest (:mod:`bigcos.streamed_ingest`) to size its batches, partitions
and shards from a memory limit, and to keep the RSS of one step from carrying into the next.
"""

from __future__ import annotations

import os

MEMORY_FRACTION = 0.5  # default memory limit: this share of the machine's memory


def machine_memory() -> int:
    """Physical memory of this machine in bytes."""
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def default_limit() -> int:
    """The default memory limit: ``MEMORY_FRACTION`` of :func:`machine_memory`, in bytes."""
    return int(MEMORY_FRACTION * machine_memory())


def rss_bytes() -> int:
    """Resident set size of this process in bytes."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _glibc():
    """glibc, with a fixed 1 MiB mmap threshold: large numpy arrays then come from mmap and
    return to the system when freed (glibc's adaptive threshold would keep them in heaps).
    None when the C library is not glibc."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        return libc
    except (OSError, AttributeError):
        return None


_LIBC: list = []  # [glibc or None] once tuned
MAX_MMAP_THRESHOLD = 32 << 20


def reuse_heap_within(budget: int) -> None:
    """Let arrays up to ``budget / 64`` bytes (1 to 32 MiB) be reused from glibc's heap, and
    keep up to twice that free there until :func:`release_memory`: a record batch's columns
    are then not mapped and page-faulted afresh for every batch (with the 1 MiB threshold,
    about 40% of the streamed ingest's CPU time went to the kernel), while larger arrays
    still return to the system when freed. The RSS stays within ``budget`` (the batches,
    partitions and shards are sized from it). For the rest of the process; nothing where the
    C library is not glibc."""
    release_memory()  # tunes glibc first
    if _LIBC[0] is not None:
        threshold = int(min(max(budget // 64, 1 << 20), MAX_MMAP_THRESHOLD))
        _LIBC[0].mallopt(-3, threshold)  # M_MMAP_THRESHOLD
        _LIBC[0].mallopt(-1, 2 * threshold)  # M_TRIM_THRESHOLD


def release_memory() -> None:
    """Hand freed memory back to the system (arrow's pool, glibc's heaps). The first call also
    fixes glibc's mmap threshold (see :func:`_glibc`) for the rest of the process."""
    import pyarrow as pa

    if not _LIBC:
        _LIBC.append(_glibc())
    pa.default_memory_pool().release_unused()
    if _LIBC[0] is not None:
        _LIBC[0].malloc_trim(0)
