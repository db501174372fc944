"""Comparison reports: Parquet tables with a versioned schema, and a self-contained HTML page.

A report answers "can I trust cosine similarity on my embeddings?" for one matrix, several
models (model directories, ``bigcos.load_model``) and their neighbour lists (a neighbour dataset,
``kind=/model=/metric=`` hive partitions). A *configuration* is one (model, metric) pair, metric
in {cos, dot}. Lists are cut at ``depth`` N (default 10). Definitions of every metric are in
:mod:`bigcos.metrics`; model names are the models' ``model_name`` (the neighbour partitions'
``model=``), explained in the ``models`` table and the page's legend.

Output directory (written atomically, with ``manifest.json``)::

    models.parquet              one row per model: its parameters as columns, a description
    agreement.parquet           one row per kind and ordered pair of configurations (both orders)
    agreement_per_item.parquet  one row per item-item query and pair, canonical order a < b
    d_sensitivity.parquet       one row per kind, D-family and metric
    ground_truth.parquet        one row per item-item configuration (needs item labels)
    heldout.parquet             one row per configuration (needs a test matrix), each measure
                                with its bootstrap interval over a seeded sample of test
                                users, lam and lam_source
    comparisons.parquet         one row per stated comparison and measure: paired difference,
                                interval, verdict and Holm-adjusted verdict
    lambda_path.parquet         the models' validation paths (λ chosen on validation users)
    popularity.parquet          one row per configuration with item-item lists
    report.html                 the page: header, legend, plots (inline PNG), example lists

Schema version 4 (:data:`SCHEMA_VERSION`; column names and Arrow types in
:data:`bigcos.reports.schema.TABLES`, also stored in each file's Parquet metadata under
``bigcos.schema`` and in the manifest; every column is described in the README). Every table
starts with ``dataset``. Parameters are columns (``objective``, ``k``, ``lam``, ``scaling``,
``remedy``, ``remedy_beta``), never packed into strings.

Modules (imports go down the list)::

    schema        table schemas, versioned; write_tables, read_report_table
    options       Options
    inputs        neighbour lists as index arrays, item labels and titles, popularity, checks
    model_params  each model's parameters, D-family and legend sentence
    tables        agreement, D-sensitivity, ground truth, popularity; pair scores
    scoring       what a held-out dot ranks by: the model's prediction of X in X's scale
    evaluation    held-out ranking by dot and cosine, per user, with intervals
    comparisons   the stated paired comparisons and their verdicts
    plots         matplotlib object-API figures (never pyplot), the shared similarity heatmap
    page          the HTML page
    build         Report, build_report, write_report
"""

from bigcos.reports.build import Report, build_report, read_lambda_paths, write_report
from bigcos.reports.comparisons import comparisons, stated_comparisons
from bigcos.reports.evaluation import HeldOutScores, heldout, heldout_rows, heldout_scores
from bigcos.reports.inputs import (
    ItemInfo,
    NeighborLists,
    item_popularity,
    lists_from_table,
    read_item_info,
    read_neighbor_lists,
    single_labels,
)
from bigcos.reports.model_params import DFamily, ModelParams, d_family, model_params
from bigcos.reports.options import Options
from bigcos.reports.page import render_html
from bigcos.reports.schema import (
    SCHEMA_VERSION,
    TABLES,
    read_report_table,
    table_schema,
    write_tables,
)
from bigcos.reports.scoring import SCORING, dot_factors, dot_scoring
from bigcos.reports.tables import (
    agreement,
    cosine_matrix,
    d_sensitivity,
    ground_truth,
    pair_scores,
    popularity_rows,
)

__all__ = [
    "SCHEMA_VERSION", "SCORING", "TABLES", "DFamily", "HeldOutScores", "ItemInfo",
    "ModelParams", "NeighborLists", "Options", "Report", "agreement", "build_report",
    "comparisons", "cosine_matrix", "d_family", "d_sensitivity", "dot_factors", "dot_scoring",
    "ground_truth", "heldout", "heldout_rows", "heldout_scores", "item_popularity",
    "lists_from_table", "model_params", "pair_scores", "popularity_rows", "read_item_info",
    "read_lambda_paths", "read_neighbor_lists", "read_report_table", "render_html",
    "single_labels", "stated_comparisons", "table_schema", "write_report", "write_tables",
]
