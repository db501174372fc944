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


def dask_options(f=None, *, memory_flag: str = "--memory-limit"):
    """Add --scheduler/--workers/--threads-per-worker/--memory-limit/--spill-dir/
    --dashboard-address/--tls-ca-file/--tls-cert/--tls-key (defaults and help from
    :class:`~bigcos.cluster.ClusterOptions`) and pass a single ``cluster: ClusterOptions``
    argument to the command instead. The names of the fields the user set (flag or
    environment) are kept in ``ctx.meta[CLUSTER_GIVEN]``. ``memory_flag`` renames the
    workers' memory limit for a command with a --memory-limit of its own
    (``@dask_options(memory_flag="--worker-memory-limit")``)."""
    if f is None:
        return functools.partial(dask_options, memory_flag=memory_flag)

    def option(flag: str, param: str, help_name: str | None = None, **kwargs):
        field = help_name or param  # the ClusterOptions field behind the parameter
        return click.option(flag, param, help=help_of(ClusterOptions, field),
                            default=default_of(ClusterOptions, field),
                            show_default=default_of(ClusterOptions, field) is not None, **kwargs)

    pem = click.Path(exists=True, dir_okay=False)
    names = ("scheduler", "workers", "threads_per_worker", "memory_limit", "spill_dir",
             "dashboard_address", "tls_ca_file", "tls_cert", "tls_key")
    # the click parameter of each field (the renamed memory limit gets a name of its own)
    params = {name: name for name in names}
    if memory_flag != "--memory-limit":
        params["memory_limit"] = "cluster_memory_limit"

    @option("--scheduler", "scheduler", envvar="DASK_SCHEDULER_ADDRESS")
    @option("--workers", "workers", type=click.IntRange(min=1))
    @option("--threads-per-worker", "threads_per_worker", type=click.IntRange(min=1))
    @option(memory_flag, params["memory_limit"], help_name="memory_limit")
    @option("--spill-dir", "spill_dir", type=click.Path(file_okay=False))
    @option("--dashboard-address", "dashboard_address")
    @option("--tls-ca-file", "tls_ca_file", type=pem)
    @option("--tls-cert", "tls_cert", type=pem)
    @option("--tls-key", "tls_key", type=pem)
    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        from click.core import ParameterSource

        ctx = click.get_current_context()
        ctx.meta[CLUSTER_GIVEN] = {
            name for name, param in params.items()
            if ctx.get_parameter_source(param) in (ParameterSource.COMMANDLINE,
                                                   ParameterSource.ENVIRONMENT)}
        values = {name: kwargs.pop(param) for name, param in params.items()}
        values["scheduler"] = values["scheduler"] or None
        return f(*args, cluster=ClusterOptions(**values), **kwargs)

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
