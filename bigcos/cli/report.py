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
              help="Item table with `cluster` (simulator) or `genres`, and `title`/`name` "
                   "(default: the one recorded by `bigcos ingest --items`).")
@click.option("--labels", "label_column", default=None,
              help="Item column with ground-truth labels: integer/string (one per item) or a "
                   "list (e.g. genres, tags). Default: cluster, else genres.")
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
@click.option("--example", "examples", multiple=True,
              help="Item id whose neighbour lists the page shows (repeatable; default: the "
                   "most popular items).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the random baseline and the AUC pairs.")
@overwrite_option
def report(matrix_dir, model_dirs, neighbors_dir, items_table, label_column, out, depth, rbo_p,
           n_bins, auc_pairs, examples, seed, overwrite):
    """Compare neighbour lists and rankings of several models under cosine and dot.

    Writes OUT/agreement.parquet, agreement_per_item.parquet, d_sensitivity.parquet,
    ground_truth.parquet, heldout.parquet, popularity.parquet (schema in bigcos.reports),
    report.html (self-contained) and manifest.json.

    Example:

        bigcos report --matrix out/matrix --model out/models/obj1-symmetric \\
            --model out/models/obj2 --neighbors out/neighbors --out out/report --example 1
    """
    from bigcos.reports import Options, write_report

    options = Options(depth=depth, rbo_p=rbo_p, n_bins=n_bins, auc_pairs=auc_pairs, seed=seed,
                      examples=tuple(examples), labels=label_column)
    result = write_report(out, matrix_dir, model_dirs, neighbors_dir, items_table, options,
                          overwrite=overwrite)
    counts = ", ".join(f"{name} {t.num_rows:,}" for name, t in result.tables.items())
    click.echo(f"wrote {out}: {counts} rows; open {out}/report.html")
