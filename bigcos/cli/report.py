"""``bigcos report``: agreement, ground truth, held-out and popularity tables plus a page."""

from __future__ import annotations

import click

from bigcos.cli.common import overwrite_option


@click.command()
@click.option("--matrix", "matrix_dir", required=True, type=click.Path(path_type=str),
              help="Matrix directory (bigcos ingest); its test part gives the held-out table.")
@click.option("--model", "model_dirs", required=True, multiple=True,
              type=click.Path(path_type=str), help="Model directory (bigcos fit); repeatable.")
@click.option("--neighbors", "neighbors_dir", required=True, type=click.Path(path_type=str),
              help="Neighbour dataset (kind=/model=/metric= partitions).")
@click.option("--items", "items_table", type=click.Path(path_type=str), default=None,
              help="Item table keyed by item_id, with labels and titles "
                   "(default: the one recorded by `bigcos ingest --items`).")
@click.option("--label-col", default=None,
              help="Item column with ground-truth labels: integer/string (one per item) or a "
                   "list (e.g. genres, tags). Default: cluster, else genres.")
@click.option("--labels", "labels_deprecated", default=None,
              help="Deprecated alias of --label-col (removed in the next version).")
@click.option("--title-col", default=None,
              help="Item column with display names. Default: title, else name, else the id.")
@click.option("--dataset", default=None,
              help="Data set name for the tables' `dataset` column and the page "
                   "[default: the name of the matrix directory's parent].")
@click.option("--job", default=None, help="Job name shown on the page.")
@click.option("--out", required=True, type=click.Path(path_type=str),
              help="Report directory to write (created atomically).")
@click.option("--depth", type=click.IntRange(min=1), default=10, show_default=True,
              help="N of Jaccard@N, RBO and label precision@N (lists are cut there).")
@click.option("--rbo-p", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.9,
              show_default=True, help="Persistence p of rank-biased overlap.")
@click.option("--bins", "n_bins", type=click.IntRange(min=1), default=10, show_default=True,
              help="Popularity bins of the popularity-matched random baseline.")
@click.option("--auc-pairs", type=click.IntRange(min=1), default=200_000, show_default=True,
              help="Random item pairs for the within/between-label AUC.")
@click.option("--max-queries", type=click.IntRange(min=1), default=5000, show_default=True,
              help="Agreement and D-sensitivity on a seeded sample of at most this many "
                   "queries per kind (intervals account for it).")
@click.option("--max-heldout-users", type=click.IntRange(min=1), default=100_000,
              show_default=True,
              help="Held-out table and comparisons on a seeded sample of at most this many "
                   "test users (intervals account for it).")
@click.option("--example", "examples", multiple=True,
              help="Item id whose neighbour lists the page shows (repeatable; default: the "
                   "most popular items).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the random baseline, the AUC pairs and the samples.")
@overwrite_option
def report(matrix_dir, model_dirs, neighbors_dir, items_table, label_col, labels_deprecated,
           title_col, dataset, job, out, depth, rbo_p, n_bins, auc_pairs, max_queries,
           max_heldout_users, examples, seed, overwrite):
    """Compare neighbour lists and rankings of several models under cosine and dot.

    Writes OUT/models.parquet, agreement.parquet, agreement_per_item.parquet,
    d_sensitivity.parquet, ground_truth.parquet, heldout.parquet, popularity.parquet (schema
    in the README and bigcos.reports), report.html (self-contained) and manifest.json.

    \b
    Example:
      bigcos report --matrix out/matrix --model out/models/obj1-symmetric \\
          --model out/models/obj2 --neighbors out/neighbors --out out/report \\
          --example 1
    """
    from bigcos.reports import Options, write_report

    if labels_deprecated is not None:
        click.echo("warning: --labels is deprecated, use --label-col", err=True)
        if label_col is not None and label_col != labels_deprecated:
            raise click.UsageError("--labels and --label-col disagree; give --label-col only")
        label_col = labels_deprecated
    options = Options(depth=depth, rbo_p=rbo_p, n_bins=n_bins, auc_pairs=auc_pairs, seed=seed,
                      max_queries=max_queries, max_heldout_users=max_heldout_users,
                      examples=tuple(examples), label_col=label_col, title_col=title_col,
                      dataset=dataset, job=job)
    result = write_report(out, matrix_dir, model_dirs, neighbors_dir, items_table, options,
                          overwrite=overwrite)
    counts = ", ".join(f"{name} {t.num_rows:,}" for name, t in result.tables.items())
    click.echo(f"wrote {out}: {counts} rows; open {out}/report.html")
