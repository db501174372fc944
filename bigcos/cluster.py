"""The one place that creates or connects a Dask client.

Library functions in bigcos build lazy Dask graphs (or take a client); the command that owns
the run opens a client here. By default that is a ``LocalCluster`` of worker processes with one
BLAS thread each (``distributed``'s nanny sets ``OMP_NUM_THREADS=1`` and friends for workers, so
workers × BLAS threads never oversubscribe the cores). ``scheduler`` connects to an existing
cluster instead (``DASK_SCHEDULER_ADDRESS`` is the default), and bigcos launches nothing there.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

from bigcos.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusterOptions:
    """How to obtain workers. Only changes speed and memory, never results."""

    scheduler: str | None = None  # address of an existing scheduler; None: start a LocalCluster
    n_workers: int | None = None  # LocalCluster workers (default: one per core)
    threads_per_worker: int = 1
    memory_limit: str = "auto"
    local_directory: str | None = None  # spill directory
    processes: bool = True


@contextlib.contextmanager
def dask_client(options: ClusterOptions | None = None) -> Iterator[object]:
    """Yield a ``distributed.Client``; close it (and any cluster it started) afterwards."""
    from distributed import Client, LocalCluster

    options = options or ClusterOptions()
    if options.scheduler:
        try:
            client = Client(options.scheduler, timeout="10s")
        except (OSError, TimeoutError) as exc:
            raise UserError(f"cannot reach Dask scheduler at {options.scheduler}: {exc}") from None
        with client:
            log.info("connected to %s (dashboard: %s)", options.scheduler, client.dashboard_link)
            yield client
        return
    n_workers = options.n_workers or os.cpu_count() or 1
    cluster = LocalCluster(
        n_workers=n_workers,
        threads_per_worker=options.threads_per_worker,
        processes=options.processes,
        memory_limit=options.memory_limit,
        local_directory=options.local_directory,
        dashboard_address=":0",
    )
    with cluster, Client(cluster) as client:
        log.info("LocalCluster with %d workers (dashboard: %s)", n_workers, client.dashboard_link)
        yield client
