"""Options shared by several commands, as stacked click decorators."""

from __future__ import annotations

import functools

import click

from bigcos.cluster import ClusterOptions


def overwrite_option(f):
    return click.option("--overwrite", is_flag=True,
                        help="Replace an existing output directory.")(f)


def dask_options(f):
    """Add --scheduler/--workers/--threads-per-worker/--memory-limit/--spill-dir and pass
    a single ``cluster: ClusterOptions`` argument to the command instead."""

    @click.option("--scheduler", envvar="DASK_SCHEDULER_ADDRESS", default=None,
                  help="Address of an existing Dask scheduler (default: $DASK_SCHEDULER_ADDRESS, "
                       "else a LocalCluster is started).")
    @click.option("--workers", "n_workers", type=click.IntRange(min=1), default=None,
                  help="LocalCluster worker processes (default: one per core).")
    @click.option("--threads-per-worker", type=click.IntRange(min=1), default=1, show_default=True)
    @click.option("--memory-limit", default="auto", show_default=True,
                  help="Memory limit per LocalCluster worker, e.g. '4GiB'.")
    @click.option("--spill-dir", type=click.Path(file_okay=False), default=None,
                  help="Where LocalCluster workers spill to disk.")
    @functools.wraps(f)
    def wrapper(*args, scheduler, n_workers, threads_per_worker, memory_limit, spill_dir,
                **kwargs):
        cluster = ClusterOptions(scheduler=scheduler or None, n_workers=n_workers,
                                 threads_per_worker=threads_per_worker,
                                 memory_limit=memory_limit, local_directory=spill_dir)
        return f(*args, cluster=cluster, **kwargs)

    return wrapper


def matrix_interactions(*directories) -> int:
    """Training interactions of the matrices in ``directories`` (matrix or model directories:
    a model's manifest names its matrix), for :func:`bigcos.cluster.job_client`; a directory
    without these manifests counts 0 (the command itself then reports what is missing)."""
    from pathlib import Path

    from bigcos import io
    from bigcos.errors import UserError

    total = 0
    for d in directories:
        try:
            manifest = io.read_manifest(d)
            if "matrix_dir" in manifest:
                manifest = io.read_manifest(Path(manifest["matrix_dir"]))
            total += int(manifest["counts"]["train_nnz"])
        except (UserError, KeyError, TypeError, ValueError):
            continue
    return total
