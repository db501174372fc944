"""``bigcos audit``: is cosine similarity of your own embeddings about similarity?"""

from __future__ import annotations

import click

from bigcos.cli.common import dask_options, overwrite_option
from bigcos.embedding_audit.run import AuditOptions
from bigcos.options import default_of, help_of

_PATH = click.Path(path_type=str)


def _option(flag: str, name: str, **kwargs):
    """A flag whose default and help come from :class:`AuditOptions`."""
    return click.option(flag, name, type=click.IntRange(min=1), show_default=True,
                        default=default_of(AuditOptions, name),
                        help=help_of(AuditOptions, name), **kwargs)


@click.command()
@click.argument("embeddings", type=_PATH)
@click.option("--out", required=True, type=_PATH, help="Report directory to write (atomically).")
@click.option("--users", type=_PATH, default=None,
              help="User embeddings (Parquet user_id + embedding, or .npy); not needed for an "
                   "implicit .npz or a model directory, which hold both.")
@click.option("--matrix", "matrix_dir", type=_PATH, default=None,
              help="Matrix directory (bigcos ingest): popularity, training items, and with a "
                   "test split the held-out cosine-vs-dot comparison.")
@click.option("--items", "items_table", type=_PATH, default=None,
              help="Item table with item_id, title/name and labels (cluster or genres); default: "
                   "the one recorded by `bigcos ingest --items`.")
@click.option("--item-ids", type=_PATH, default=None,
              help="Parquet/CSV with the item ids of a .npy file's rows.")
@click.option("--user-ids", type=_PATH, default=None,
              help="Parquet/CSV with the user ids of a .npy file's rows.")
@click.option("--labels", "label_column", default=None,
              help="Item-table column of labels (default: cluster, else genres).")
@_option("--depth", "depth")
@click.option("--queries", "item_queries", type=click.IntRange(min=1),
              default=default_of(AuditOptions, "item_queries"), show_default=True,
              help="Seeded sample of item queries and of users, each ranked against ALL items "
                   "(intervals are bootstrap intervals over the sample).")
@click.option("--random-members", type=click.IntRange(min=0),
              default=default_of(AuditOptions, "random_members"), show_default=True,
              help=help_of(AuditOptions, "random_members"))
@_option("--heldout-users", "heldout_users")
@_option("--resamples", "n_resamples")
@_option("--shard-rows", "shard_rows")
@click.option("--example", "examples", multiple=True,
              help="Item id whose lists the page shows (repeatable; default: most popular).")
@click.option("--seed", type=int, default=0, show_default=True)
@overwrite_option
@dask_options
def audit(embeddings, out, users, matrix_dir, items_table, item_ids, user_ids, label_column,
          depth, item_queries, random_members, heldout_users, n_resamples, shard_rows, examples,
          seed, overwrite, cluster):
    """Audit the cosine similarity of a factor model's embeddings.

    EMBEDDINGS: item embeddings (Parquet item_id + embedding, .npy with --item-ids or
    --matrix), a model saved by implicit's model.save (.npz: ALS, BPR, LMF) or a bigcos model
    directory. Builds the model's dot-equivalent family (same scores, other rescalings D) and
    writes OUT/verdicts.parquet, agreement, dimensions, members, heldout, popularity, labels,
    examples (.parquet, schema in bigcos.embedding_audit), report.html and manifest.json.

    User embeddings are read in shards (Parquet row groups, --shard-rows rows of a .npy) by
    Dask tasks, and lists are Dask tasks over query groups: on threads in this process for a
    small matrix, else (or with --workers) on a LocalCluster, or on --scheduler.

    \b
    Example:
      bigcos audit als.npz --matrix out/matrix --out out/audit-als
    """
    from bigcos import storage
    from bigcos.cli.common import matrix_interactions
    from bigcos.cluster import job_client
    from bigcos.embedding_audit import audit as run_audit
    from bigcos.errors import UserError

    try:
        options = AuditOptions(depth=depth, item_queries=item_queries, user_queries=item_queries,
                               random_members=random_members, heldout_users=heldout_users,
                               n_resamples=n_resamples, shard_rows=shard_rows,
                               examples=tuple(examples), labels=label_column, seed=seed)
    except UserError as exc:
        raise click.BadParameter(str(exc)) from None
    if storage.as_path(out).exists() and not overwrite:  # before a cluster starts
        raise UserError(f"{out}: output already exists (pass --overwrite to replace it)")
    size = matrix_interactions(matrix_dir) if matrix_dir else 0
    with job_client(cluster, size) as client:
        result = run_audit(embeddings, out, users=users, matrix=matrix_dir, items=items_table,
                           item_ids=item_ids, user_ids=user_ids, options=options,
                           overwrite=overwrite, client=client)
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    for row in result.tables["verdicts"].to_pylist():
        click.echo(f"{row['question']} ({row['kind']}): {row['verdict']}")
    click.echo(f"wrote {out}; open {out}/report.html")
