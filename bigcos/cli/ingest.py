"""``bigcos ingest``: an interaction log (Parquet) to a matrix directory."""

from __future__ import annotations

import click

from bigcos.cli.common import overwrite_option
from bigcos.matrix import IngestOptions
from bigcos.matrix import ingest as ingest_log


@click.command()
@click.argument("log", type=click.Path(path_type=str))
@click.option("--out", required=True, type=click.Path(path_type=str),
              help="Matrix directory to write (created atomically).")
@click.option("--user-col", default="user_id", show_default=True, help="Column of user ids.")
@click.option("--item-col", default="item_id", show_default=True, help="Column of item ids.")
@click.option("--value-col", default="value", show_default=True,
              help="Column of interaction strengths; if absent every row counts 1.")
@click.option("--time-col", default="timestamp", show_default=True,
              help="Column of timestamps (needed by --split time and --duplicates last).")
@click.option("--duplicates", type=click.Choice(["sum", "max", "last"]), default="sum",
              show_default=True, help="How repeated (user, item) rows combine; 'last' by time.")
@click.option("--threshold", type=float, default=None,
              help="Binarise: keep value >= THRESHOLD as 1, drop the rest (e.g. 4 for ratings).")
@click.option("--min-user", type=click.IntRange(min=1), default=1, show_default=True,
              help="Minimum interactions per user (iterated with --min-item until stable).")
@click.option("--min-item", type=click.IntRange(min=1), default=1, show_default=True,
              help="Minimum interactions per item.")
@click.option("--split", type=click.Choice(["none", "random", "time", "users"]), default="none",
              show_default=True,
              help="Held-out protocol: random per-user fraction, global time cut-off, or "
                   "held-out users (strong generalisation).")
@click.option("--test-fraction", type=click.FloatRange(0, 1, max_open=True), default=0.2,
              show_default=True, help="Fraction of interactions held out (per user for "
                                      "random/users, overall for time).")
@click.option("--heldout-users", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              default=0.2, show_default=True, help="Fraction of users held out (--split users).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the split.")
@click.option("--items", "items_table", type=click.Path(path_type=str), default=None,
              help="Item metadata Parquet (titles, genres) to record for reports and `similar`.")
@overwrite_option
def ingest(log, out, user_col, item_col, value_col, time_col, duplicates, threshold, min_user,
           min_item, split, test_fraction, heldout_users, seed, items_table, overwrite):
    """Load the interaction log LOG (a Parquet file or a directory of Parquet files, hive
    partitions included) into CSR matrices with id vocabularies.

    Writes OUT/train.npz (and test.npz with a split), users.parquet, items.parquet and
    manifest.json. Ids may be integers or strings; rows and columns follow their sorted order.

    \b
    Example:
      bigcos ingest data/ml-latest-small/interactions.parquet --out out/matrix \\
          --threshold 4 --split users --items data/ml-latest-small/items.parquet
    """
    options = IngestOptions(user_col=user_col, item_col=item_col, value_col=value_col or None,
                            time_col=time_col or None, duplicates=duplicates,
                            threshold=threshold, min_user=min_user, min_item=min_item,
                            split=split, test_fraction=test_fraction,
                            heldout_users=heldout_users, seed=seed)
    data = ingest_log(log, out, options, overwrite=overwrite, items=items_table)
    n, p = data.shape
    test = f", test nnz {data.test.nnz:,}" if data.test is not None else ""
    click.echo(f"wrote {out}: {n:,} users x {p:,} items, train nnz {data.train.nnz:,}{test}")
