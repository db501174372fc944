"""``bigcos ingest``: an interaction log (Parquet) to a matrix directory."""

from __future__ import annotations

import click

from bigcos.cli.common import dask_options, overwrite_option
from bigcos.io import open_dataset, read_manifest
from bigcos.matrix import IngestOptions, streams
from bigcos.matrix import ingest as ingest_log
from bigcos.options import defaults, help_of

_D = defaults(IngestOptions)  # the one source of ingest's defaults and help


def _h(name: str) -> str:
    return help_of(IngestOptions, name)


@click.command()
@click.argument("log", type=click.Path(path_type=str))
@click.option("--out", required=True, type=click.Path(path_type=str),
              help="Matrix directory to write (created atomically).")
@click.option("--user-col", default=_D["user_col"], show_default=True, help=_h("user_col"))
@click.option("--item-col", default=_D["item_col"], show_default=True, help=_h("item_col"))
@click.option("--value-col", default=_D["value_col"], show_default=True, help=_h("value_col"))
@click.option("--time-col", default=_D["time_col"], show_default=True, help=_h("time_col"))
@click.option("--duplicates", type=click.Choice(["sum", "max", "last"]),
              default=_D["duplicates"], show_default=True, help=_h("duplicates"))
@click.option("--threshold", type=float, default=_D["threshold"], help=_h("threshold"))
@click.option("--min-user", type=click.IntRange(min=1), default=_D["min_user"],
              show_default=True, help=_h("min_user"))
@click.option("--min-item", type=click.IntRange(min=1), default=_D["min_item"],
              show_default=True, help=_h("min_item"))
@click.option("--split", type=click.Choice(["none", "random", "time", "users"]),
              default=_D["split"], show_default=True, help=_h("split"))
@click.option("--test-fraction", type=click.FloatRange(0, 1, max_open=True),
              default=_D["test_fraction"], show_default=True, help=_h("test_fraction"))
@click.option("--heldout-users", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              default=_D["heldout_users"], show_default=True, help=_h("heldout_users"))
@click.option("--seed", type=int, default=_D["seed"], show_default=True, help=_h("seed"))
@click.option("--shard-nnz", type=click.IntRange(min=1), default=_D["shard_nnz"],
              show_default=True, help=_h("shard_nnz"))
@click.option("--memory-limit", default=_D["memory_limit"], metavar="SIZE",
              help=_h("memory_limit"))
@click.option("--streaming", type=click.Choice(["auto", "on", "off"]), default=_D["streaming"],
              show_default=True, help=_h("streaming"))
@click.option("--items", "items_table", type=click.Path(path_type=str), default=None,
              help="Item metadata Parquet (titles, genres) to record for reports and `similar`.")
@overwrite_option
@dask_options(memory_flag="--worker-memory-limit")
def ingest(log, out, user_col, item_col, value_col, time_col, duplicates, threshold, min_user,
           min_item, split, test_fraction, heldout_users, seed, shard_nnz, memory_limit,
           streaming, items_table, overwrite, cluster):
    """Load the interaction log LOG (a Parquet file or a directory of Parquet files, hive
    partitions included) into CSR matrices with id vocabularies.

    Writes the train (and, with a split, test) matrices as row-range shards of whole users
    (one shard: OUT/train.npz, test.npz; several: OUT/shards/train-00000.npz ...),
    users.parquet, items.parquet and manifest.json (its "shards" section lists each shard's
    rows and non-zeros). Ids may be integers or strings; rows and columns follow their sorted
    order. A log whose in-memory build would exceed --memory-limit is streamed through spill
    files in OUT, with the same result; its partition and shard tasks run on a Dask cluster
    (--scheduler, whose workers must see LOG and OUT; --workers; or a LocalCluster above 20M
    rows; --worker-memory-limit is the workers' limit), else on threads here.

    \b
    Example:
      bigcos ingest data/ml-latest-small/interactions.parquet --out out/matrix \\
          --threshold 4 --split users --items data/ml-latest-small/items.parquet
      bigcos ingest big-log/ --out out/big --memory-limit 4GiB
      bigcos ingest /shared/log/ --out /shared/big --memory-limit 4GiB \\
          --scheduler tcp://scheduler:8786
    """
    options = IngestOptions(user_col=user_col, item_col=item_col, value_col=value_col or None,
                            time_col=time_col or None, duplicates=duplicates,
                            threshold=threshold, min_user=min_user, min_item=min_item,
                            split=split, test_fraction=test_fraction,
                            heldout_users=heldout_users, seed=seed, shard_nnz=shard_nnz,
                            memory_limit=memory_limit, streaming=streaming)
    from bigcos.cluster import job_client, wants_cluster

    if not streams(log, options):
        if wants_cluster(cluster, 0):
            click.echo("the log fits --memory-limit: built in memory in this process, not on "
                       "the cluster (--streaming on builds it there)")
        ingest_log(log, out, options, overwrite=overwrite, items=items_table)
    else:
        with job_client(cluster, open_dataset(log).count_rows()) as client:
            ingest_log(log, out, options, overwrite=overwrite, items=items_table,
                       client=client)
    manifest = read_manifest(out)
    counts, n_shards = manifest["counts"], len(manifest["shards"]["files"])
    test = f", test nnz {counts['test_nnz']:,}" if split != "none" else ""
    click.echo(f"wrote {out}: {counts['users']:,} users x {counts['items']:,} items, train nnz "
               f"{counts['train_nnz']:,}{test}, {n_shards} shard{'s' * (n_shards > 1)}")
