"""``bigcos neighbors`` (every list, to Parquet) and ``bigcos similar`` (one entity, on screen)."""

from __future__ import annotations

import click

from bigcos.cli.common import dask_options, overwrite_option
from bigcos.errors import UserError
from bigcos.jobspec import NeighborsConfig
from bigcos.options import default_of, help_of


def _split_optional(ctx, param, value):
    return tuple(dict.fromkeys(v.strip() for chunk in value for v in chunk.split(",")
                               if v.strip()))


def _split(ctx, param, value):
    items = _split_optional(ctx, param, value)
    if not items:
        raise click.BadParameter("give at least one value")
    return items


def _bytes(ctx, param, value):
    if value is None:
        return None
    from dask.utils import parse_bytes

    try:
        return parse_bytes(value)
    except ValueError:
        raise click.BadParameter(f"'{value}' is not a size like 4GiB or 500MB") from None


@click.command()
@click.argument("model_dirs", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--out", required=True, type=click.Path(path_type=str),
              help="Neighbour dataset directory to write (created atomically).")
@click.option("--kind", "kinds", multiple=True,
              default=(",".join(default_of(NeighborsConfig, "kinds")),), callback=_split,
              show_default=True, help=help_of(NeighborsConfig, "kinds")
              + " Comma-separated or repeated.")
@click.option("--metric", "metrics", multiple=True,
              default=(",".join(default_of(NeighborsConfig, "metrics")),), callback=_split,
              show_default=True, help=help_of(NeighborsConfig, "metrics"))
@click.option("-N", "n", type=click.IntRange(min=1), default=default_of(NeighborsConfig, "n"),
              show_default=True, help=help_of(NeighborsConfig, "n"))
@click.option("--include-train", is_flag=True,
              help="user-item: keep the user's training items (excluded by default).")
@click.option("--memory-budget", callback=_bytes,
              default=default_of(NeighborsConfig, "memory_budget"), show_default=True,
              help=help_of(NeighborsConfig, "memory_budget"))
@click.option("--max-queries", type=click.IntRange(min=1), default=None,
              help=help_of(NeighborsConfig, "max_queries"))
@click.option("--full-model", "full_models", multiple=True, callback=_split_optional,
              help=help_of(NeighborsConfig, "full_models") + " Repeat or comma-separate.")
@click.option("--seed", type=int, default=default_of(NeighborsConfig, "seed"),
              show_default=True, help=help_of(NeighborsConfig, "seed"))
@click.option("--query-block", type=click.IntRange(min=1), default=None,
              help="Queries per tile (overrides --memory-budget).")
@click.option("--candidate-block", type=click.IntRange(min=1), default=None,
              help="Candidates per tile (overrides --memory-budget).")
@overwrite_option
@dask_options
def neighbors(model_dirs, out, kinds, metrics, n, include_train, memory_budget, max_queries,
              full_models, seed, query_block, candidate_block, overwrite, cluster):
    """Exact top-N neighbours of every item and/or user of each MODEL_DIR, by cosine and by
    dot product, written as one Parquet dataset partitioned by kind, model and metric
    (columns query_id, rank, neighbor_id, score; ties go to the smaller index).

    Tiles run as Dask tasks: on threads in this process for small models, else (or with
    --workers) on a LocalCluster (one process per core, one BLAS thread each), or on
    --scheduler; workers write their partitions into OUT directly.

    Read it with pandas (pd.read_parquet(OUT)),
    DuckDB (read_parquet('OUT/**/*.parquet', hive_partitioning=true)) or Polars
    (pl.read_parquet('OUT/**/*.parquet', hive_partitioning=True)).

    \b
    Example:
      bigcos neighbors out/models/obj1-symmetric out/models/obj2 \\
          --kind item-item,user-item --metric cos,dot -N 100 --out out/neighbors
    """
    from click.core import ParameterSource

    from bigcos.blocked_topn import Blocking
    from bigcos.cli.common import matrix_interactions
    from bigcos.cluster import job_client
    from bigcos.neighbor_lists import check_request
    from bigcos.neighbor_lists import neighbors as run_neighbors

    blocking = None
    if query_block or candidate_block:
        source = click.get_current_context().get_parameter_source("memory_budget")
        if source == ParameterSource.COMMANDLINE:
            raise UserError("--memory-budget: give it or --query-block/--candidate-block, "
                            "not both")
        memory_budget = None
        default = Blocking()
        blocking = Blocking(query_block or default.query_block,
                            candidate_block or default.candidate_block)
    # fail fast (output exists, unknown kind or metric, missing model, budget too small)
    # before a cluster starts: starting one costs seconds
    check_request(model_dirs, out, kinds=kinds, metrics=metrics, n=n, blocking=blocking,
                  memory_budget=memory_budget, overwrite=overwrite)
    with job_client(cluster, matrix_interactions(*model_dirs)) as client:
        manifest = run_neighbors(model_dirs, out, kinds=kinds, metrics=metrics, n=n,
                                 exclude_train=not include_train, blocking=blocking,
                                 memory_budget=memory_budget, max_queries=max_queries,
                                 full_models=full_models, seed=seed, overwrite=overwrite,
                                 client=client)
    total = sum(v for c in manifest["counts"].values() for k, v in c.items()
                if k.startswith("rows_"))
    click.echo(f"wrote {out}: {total} rows in {manifest['timings_s']['total']:.1f} s")
    short = [f"{key} {c['n_used']}" for key, c in manifest["counts"].items() if c["n_used"] < n]
    if short:
        click.echo(f"N used (fewer candidates than -N {n}): {', '.join(short)}")


# library parameter -> flag of `bigcos similar`, for the library's one-line errors
_SIMILAR_FLAGS = {"item": "--item", "item_id": "--item-id", "user_id": "--user-id",
                  "items": "--items", "title_col": "--title-col", "n": "-N",
                  "metrics": "--metric"}


@click.command()
@click.argument("model_dir", type=click.Path(path_type=str))
@click.option("--item", "title", default=None, help="Title of the query item (items table).")
@click.option("--item-id", default=None, help="Id of the query item.")
@click.option("--user-id", default=None,
              help="Id of a user: shows the items recommended to them (user-item).")
@click.option("-N", "n", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--metric", "metrics", multiple=True, default=("cos,dot",), callback=_split,
              show_default=True, help="cos and/or dot.")
@click.option("--items", "items_path", type=click.Path(path_type=str), default=None,
              help="Item metadata Parquet with item_id and, optionally, titles (default: the "
                   "one recorded by `bigcos ingest --items` for the model's matrix).")
@click.option("--title-col", default=None,
              help="Column of titles in the items table (default: title, else name; "
                   "without one, items are shown by id).")
@click.option("--include-train", is_flag=True,
              help="--user-id: keep the user's training items.")
def similar(model_dir, title, item_id, user_id, n, metrics, items_path, title_col,
            include_train):
    """Show the N nearest items of one item (by title or id) or the top-N items of one user,
    by cosine and by dot product, with titles where the items table has them.

    Runs in this process (no Dask). The same table from Python: bigcos.similar(MODEL_DIR, ...).

    \b
    Example:
      bigcos similar out/models/obj1-symmetric --item "Toy Story (1995)" -N 10
    """
    from bigcos.similar_items import similar as find_similar

    if sum(x is not None for x in (title, item_id, user_id)) != 1:
        raise UserError("similar: give exactly one of --item, --item-id, --user-id")
    try:
        table = find_similar(model_dir, item=title, item_id=item_id, user_id=user_id, n=n,
                             metrics=metrics, items=items_path, title_col=title_col,
                             include_train=include_train)
    except UserError as exc:
        parameter, _, rest = str(exc).partition(": ")
        if parameter in _SIMILAR_FLAGS:
            raise UserError(f"{_SIMILAR_FLAGS[parameter]}: {rest}") from None
        raise
    meta = table.schema.metadata
    click.echo(f"{meta[b'model'].decode()}: nearest to {meta[b'query'].decode()}")
    rows = table.to_pydict()
    for metric in metrics:
        click.echo(f"\n{metric}")
        for m, rank, score, label in zip(rows["metric"], rows["rank"], rows["score"],
                                         rows["title"], strict=True):
            if m == metric:
                click.echo(f"{rank:>4}  {score:>9.4f}  {label}")
