"""Options shared by several commands, as stacked click decorators."""

from __future__ import annotations

import functools

import click

from bigcos.cluster import ClusterOptions
from bigcos.errors import UserError
from bigcos.options import default_of, help_of


def overwrite_option(f):
    return click.option("--overwrite", is_flag=True,
                        help="Replace an existing output directory.")(f)


CLUSTER_GIVEN = "bigcos.cluster_given"  # ctx.meta key: ClusterOptions fields set by the user


def dask_options(f):
    """Add --scheduler/--workers/--threads-per-worker/--memory-limit/--spill-dir (defaults and
    help from :class:`~bigcos.cluster.ClusterOptions`) and pass a single
    ``cluster: ClusterOptions`` argument to the command instead. The names of the fields the
    user set (flag or environment) are kept in ``ctx.meta[CLUSTER_GIVEN]``."""

    def option(flag: str, name: str, **kwargs):
        return click.option(flag, name, help=help_of(ClusterOptions, name),
                            default=default_of(ClusterOptions, name),
                            show_default=default_of(ClusterOptions, name) is not None, **kwargs)

    @option("--scheduler", "scheduler", envvar="DASK_SCHEDULER_ADDRESS")
    @option("--workers", "workers", type=click.IntRange(min=1))
    @option("--threads-per-worker", "threads_per_worker", type=click.IntRange(min=1))
    @option("--memory-limit", "memory_limit")
    @option("--spill-dir", "spill_dir", type=click.Path(file_okay=False))
    @functools.wraps(f)
    def wrapper(*args, scheduler, workers, threads_per_worker, memory_limit, spill_dir,
                **kwargs):
        from click.core import ParameterSource

        ctx = click.get_current_context()
        ctx.meta[CLUSTER_GIVEN] = {
            name for name in ("scheduler", "workers", "threads_per_worker", "memory_limit",
                              "spill_dir")
            if ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE,
                                                  ParameterSource.ENVIRONMENT)}
        cluster = ClusterOptions(scheduler=scheduler or None, workers=workers,
                                 threads_per_worker=threads_per_worker,
                                 memory_limit=memory_limit, spill_dir=spill_dir)
        return f(*args, cluster=cluster, **kwargs)

    return wrapper


def matrix_interactions(*directories) -> int:
    """Training interactions of the matrices in ``directories`` (matrix or model directories:
    a model's manifest names its matrix), for :func:`bigcos.cluster.job_client`; a directory
    without these manifests counts 0 (the command itself then reports what is missing)."""
    from bigcos import io
    from bigcos.errors import UserError

    total = 0
    for d in directories:
        try:
            manifest = io.read_manifest(d)
            if "matrix_dir" in manifest:
                manifest = io.read_manifest(manifest["matrix_dir"])
            total += int(manifest["counts"]["train_nnz"])
        except (UserError, KeyError, TypeError, ValueError):
            continue
    return total


def parse_lams(values: tuple[str, ...]) -> dict[int, float | None]:
    """``--lam X`` (every objective) or ``--lam OBJ:X`` (objective OBJ) -> {objective: lam};
    an objective not given keeps None: its λ is chosen on validation users."""
    lams: dict[int, float | None] = {1: None, 2: None}
    for text in values:
        target, _, number = text.rpartition(":")
        try:
            lam = float(number)
        except ValueError:
            raise UserError(f"--lam '{text}': expected a number or OBJECTIVE:NUMBER") from None
        if target == "":
            lams = {1: lam, 2: lam}
        elif target in ("1", "2"):
            lams[int(target)] = lam
        else:
            raise UserError(f"--lam '{text}': objective must be 1 or 2")
    return lams
