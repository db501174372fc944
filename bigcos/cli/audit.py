"""``bigcos audit``: is cosine similarity of your own embeddings about similarity?"""

from __future__ import annotations

import click

from bigcos.cli.common import overwrite_option

_PATH = click.Path(path_type=str)


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
@click.option("--depth", type=click.IntRange(min=1), default=10, show_default=True,
              help="N of Jaccard@N and label precision@N.")
@click.option("--queries", "item_queries", type=click.IntRange(min=1), default=2000,
              show_default=True, help="Sampled item queries (and users) for the lists.")
@click.option("--random-members", type=click.IntRange(min=0), default=3, show_default=True,
              help="Family members with seeded random log-uniform D.")
@click.option("--resamples", "n_resamples", type=click.IntRange(min=1), default=1000,
              show_default=True, help="Bootstrap resamples of every interval.")
@click.option("--example", "examples", multiple=True,
              help="Item id whose lists the page shows (repeatable; default: most popular).")
@click.option("--seed", type=int, default=0, show_default=True)
@overwrite_option
def audit(embeddings, out, users, matrix_dir, items_table, item_ids, user_ids, label_column,
          depth, item_queries, random_members, n_resamples, examples, seed, overwrite):
    """Audit the cosine similarity of a factor model's embeddings.

    EMBEDDINGS: item embeddings (Parquet item_id + embedding, .npy with --item-ids or
    --matrix), a model saved by implicit's model.save (.npz: ALS, BPR, LMF) or a bigcos model
    directory. Builds the model's dot-equivalent family (same scores, other rescalings D) and
    writes OUT/verdicts.parquet, agreement, dimensions, members, heldout, popularity, labels,
    examples (.parquet, schema in bigcos.embedding_audit), report.html and manifest.json.

    \b
    Example:
      bigcos audit als.npz --matrix out/matrix --out out/audit-als
    """
    from bigcos.embedding_audit import AuditOptions
    from bigcos.embedding_audit import audit as run_audit
    from bigcos.errors import UserError

    try:
        options = AuditOptions(depth=depth, item_queries=item_queries, user_queries=item_queries,
                               random_members=random_members, n_resamples=n_resamples,
                               examples=tuple(examples), labels=label_column, seed=seed)
    except UserError as exc:
        raise click.BadParameter(str(exc)) from None
    result = run_audit(embeddings, out, users=users, matrix=matrix_dir, items=items_table,
                       item_ids=item_ids, user_ids=user_ids, options=options,
                       overwrite=overwrite)
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    for row in result.tables["verdicts"].to_pylist():
        click.echo(f"{row['question']} ({row['kind']}): {row['verdict']}")
    click.echo(f"wrote {out}; open {out}/report.html")
