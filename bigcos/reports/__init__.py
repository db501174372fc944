"""Comparison reports: Parquet tables with a versioned schema, and a self-contained HTML page.

A report answers "can I trust cosine similarity on my embeddings?" for one matrix, several
models (model directories, ``bigcos.load_model``) and their neighbour lists (a neighbour dataset,
``kind=/model=/metric=`` hive partitions). A *configuration* is one (model, metric) pair, metric
in {cos, dot}. Lists are cut at ``depth`` N (default 10). Definitions of every metric are in
:mod:`bigcos.metrics`.

Output directory (written atomically, with ``manifest.json``)::

    agreement.parquet           one row per kind and unordered pair of configurations
    agreement_per_item.parquet  one row per item-item query and pair of configurations
    d_sensitivity.parquet       one row per kind, D-family and metric
    ground_truth.parquet        one row per item-item configuration (needs item labels)
    heldout.parquet             one row per user-item configuration (needs a test matrix)
    popularity.parquet          one row per configuration with item-item lists
    report.html                 the page: plots (inline PNG) and example neighbour lists

Schema, version 1 (``SCHEMA_VERSION``, :mod:`bigcos.reports.schema`; also stored in each
file's Parquet metadata under ``bigcos.schema`` as JSON ``{"table": ..., "version": ...}``
and in the manifest):

agreement
    kind string, model_a string, metric_a string, model_b string, metric_b string,
    n_queries int64 (queries present in both), depth int32 (N), rbo_p float64,
    jaccard_mean, jaccard_p10, jaccard_median, jaccard_p90,
    rbo_mean, rbo_p10, rbo_median, rbo_p90 float64
agreement_per_item
    query_id (the dataset's item id type: int64 or string), model_a, metric_a, model_b,
    metric_b dictionary<int32, string> (pandas: categorical), jaccard float64, rbo float64
d_sensitivity
    kind string, family string (models differing only in the rescaling D), metric string,
    n_models int32, n_pairs int32, jaccard_mean, jaccard_min, rbo_mean, rbo_min float64
    (mean / smallest over pairs of models of the per-pair mean over queries)
ground_truth
    model string, metric string, label_source string (the item column: "cluster", "genres",
    ...), depth int32,
    n_queries int64, precision float64 (label precision@N: share of neighbours with >= 1 label
    in common with the query), baseline_precision float64 (same, for popularity-matched
    random neighbours), lift float64 (precision / baseline), auc float64 (within- vs
    between-label similarity of random item pairs under this metric), n_auc_pairs int64
heldout
    model string, metric string, protocol string ("strong": held-out users, "weak": held-out
    interactions of training users), n_users int64, recall_at_20, recall_at_50,
    ndcg_at_100 float64 (user-item ranking of all items minus the user's training items)
popularity
    model string, metric string, norm_popularity_spearman float64 (item embedding norm vs
    number of training users, same for both metrics of a model), n_queries int64,
    log_ratio_mean, log_ratio_median float64 (per query: mean over its item-item neighbours of
    log10((1 + pop_neighbour) / (1 + pop_query))), frac_more_popular float64 (share of
    neighbours more popular than their query)

Modules (imports go down the list)::

    schema    table schemas, versioned; write_tables, read_report_table
    options   Options
    inputs    neighbour lists as index arrays, item labels and titles, popularity
    tables    agreement, D-sensitivity, ground truth, popularity; pair scores
    evaluation  held-out ranking by dot and cosine
    plots     matplotlib object-API figures (never pyplot), the shared similarity heatmap
    page      the HTML page
    build     Report, build_report, write_report
"""

from bigcos.reports.build import Report, build_report, write_report
from bigcos.reports.evaluation import heldout
from bigcos.reports.inputs import (
    ItemInfo,
    NeighborLists,
    item_popularity,
    lists_from_table,
    read_item_info,
    read_neighbor_lists,
    single_labels,
)
from bigcos.reports.options import Options
from bigcos.reports.page import render_html
from bigcos.reports.schema import (
    SCHEMA_VERSION,
    TABLES,
    read_report_table,
    table_schema,
    write_tables,
)
from bigcos.reports.tables import (
    agreement,
    cosine_matrix,
    d_family,
    d_sensitivity,
    ground_truth,
    pair_scores,
    popularity_rows,
)

__all__ = [
    "SCHEMA_VERSION", "TABLES", "ItemInfo", "NeighborLists", "Options", "Report", "agreement",
    "build_report", "cosine_matrix", "d_family", "d_sensitivity", "ground_truth", "heldout",
    "item_popularity", "lists_from_table", "pair_scores", "popularity_rows", "read_item_info",
    "read_neighbor_lists", "read_report_table", "render_html", "single_labels", "table_schema",
    "write_report", "write_tables",
]
