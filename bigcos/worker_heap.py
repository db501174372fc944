"""Worker processes keep reusing their malloc heap instead of mapping fresh pages per array.

``distributed``'s nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536`` (its config
``distributed.nanny.pre-spawn-environ``) so that freed memory goes back to the OS. Setting any
such variable also turns off glibc's dynamic mmap threshold, which otherwise rises to 32 MiB:
every array above 128 KiB is then a fresh ``mmap``, page-faulted in and unmapped again. For
bigcos's tile loops that is most of the work: the p = 50,000, k = 128 item-item pair tasks
took 23.7 s instead of 14.2 s in one thread (7.9 s of it system time instead of 1.2 s).
:class:`HeapReuse` sets both thresholds where glibc's dynamic rule would take them at its
ceiling, in every worker (present and future, e.g. one restarted after a kill): arrays up to
32 MiB come from the heap, and the heap's free top is returned to the OS once above 64 MiB.
Arrays above 32 MiB are mapped as before; a worker keeps at most 64 MiB more than Dask's
setting would, and the peak memory of a task is still a sum of blocks bounded by the block
sizes.
"""

from __future__ import annotations

import ctypes

from distributed.diagnostics.plugin import WorkerPlugin

MMAP_THRESHOLD = 32 * 2**20  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit, its largest allowed
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD  # glibc's own rule when it raises the mmap threshold
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)


def reuse_heap() -> bool:
    """Set this process's glibc mmap and trim thresholds to :data:`MMAP_THRESHOLD` and
    :data:`TRIM_THRESHOLD`; False where the C library is not glibc (nothing is changed there)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
                    and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    except (OSError, AttributeError):
        return False


class HeapReuse(WorkerPlugin):
    """Worker plugin: :func:`reuse_heap` in each worker when it starts or joins."""

    name = "bigcos-heap-reuse"

    def setup(self, worker) -> None:
        reuse_heap()
