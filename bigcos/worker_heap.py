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

from distributed.diagnostics.plugin import WorkerPlugin

from bigcos.memory import MAX_MMAP_THRESHOLD, reuse_heap_within


class HeapReuse(WorkerPlugin):
    """Worker plugin: glibc's mmap threshold at its ceiling (32 MiB) and the trim threshold at
    twice that (:func:`bigcos.memory.reuse_heap_within`), in each worker when it starts or
    joins; nothing where the C library is not glibc."""

    name = "bigcos-heap-reuse"

    def setup(self, worker) -> None:
        reuse_heap_within(64 * MAX_MMAP_THRESHOLD)
