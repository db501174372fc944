"""The report tables' schemas: column names and Arrow types, versioned, and reading them back.

Every table is one zstd Parquet file whose schema metadata holds ``bigcos.schema`` =
``{"table": name, "version": SCHEMA_VERSION}``; the same version is in the report's
``manifest.json``. Column definitions are in :mod:`bigcos.reports` and the README.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa

from bigcos import io, storage
from bigcos.errors import UserError

SCHEMA_VERSION = 5
HELDOUT_KS = (20, 50, 100)  # Recall@K1, Recall@K2, NDCG@K3 of the heldout table

_F64 = pa.float64()
_STR = pa.string()
_DICT = pa.dictionary(pa.int32(), pa.string())  # string column stored once per distinct value
_I64 = pa.int64()
_I32 = pa.int32()
_I8 = pa.int8()
_DATASET = ("dataset", _STR)


def heldout_measures(ks: tuple[int, int, int] = HELDOUT_KS) -> list[str]:
    """Names of the held-out measures for cut-offs ``ks`` = (Recall K, Recall K, NDCG K)."""
    return [f"recall_at_{ks[0]}", f"recall_at_{ks[1]}", f"ndcg_at_{ks[2]}"]


def heldout_fields(ks: tuple[int, int, int] = HELDOUT_KS) -> list[tuple[str, pa.DataType]]:
    """Columns of the heldout table for cut-offs ``ks``: each measure, then its interval."""
    measures = [(f"{m}{end}", _F64) for m in heldout_measures(ks) for end in ("", "_lo", "_hi")]
    return [_DATASET, ("model", _STR), ("metric", _STR), ("protocol", _STR), ("n_users", _I64),
            ("n_test_users", _I64), *measures, ("level", _F64), ("lam", _F64),
            ("lam_source", _STR), ("scoring", _STR)]


# column name -> type; None = the dataset's item id type (int64 or string)
TABLES: dict[str, list[tuple[str, pa.DataType | None]]] = {
    "models": [_DATASET, ("model", _STR), ("directory", _STR), ("model_type", _STR),
               ("objective", _I8), ("k", _I32), ("dims", _I32), ("lam", _F64),
               ("scaling", _STR), ("project_back", pa.bool_()), ("remedy", _STR),
               ("remedy_beta", _F64), ("lam_source", _STR), ("description", _STR)],
    "agreement": [_DATASET, ("kind", _STR), ("model_a", _STR), ("metric_a", _STR),
                  ("model_b", _STR), ("metric_b", _STR), ("n_queries", _I64), ("depth", _I32),
                  ("rbo_p", _F64), ("jaccard_mean", _F64), ("jaccard_p10", _F64),
                  ("jaccard_median", _F64), ("jaccard_p90", _F64), ("rbo_mean", _F64),
                  ("rbo_p10", _F64), ("rbo_median", _F64), ("rbo_p90", _F64),
                  ("jaccard_lo", _F64), ("jaccard_hi", _F64), ("rbo_lo", _F64),
                  ("rbo_hi", _F64), ("level", _F64)],
    "agreement_per_item": [("dataset", _DICT), ("query_id", None), ("model_a", _DICT),
                           ("metric_a", _DICT), ("model_b", _DICT), ("metric_b", _DICT),
                           ("jaccard", _F64), ("rbo", _F64)],
    "d_sensitivity": [_DATASET, ("kind", _STR), ("objective", _I8), ("k", _I32), ("lam", _F64),
                      ("remedy", _STR), ("remedy_beta", _F64), ("metric", _STR),
                      ("models", pa.list_(_STR)), ("n_models", _I32), ("n_pairs", _I32),
                      ("jaccard_mean", _F64), ("jaccard_min", _F64), ("rbo_mean", _F64),
                      ("rbo_min", _F64), ("n_queries", _I64), ("jaccard_lo", _F64),
                      ("jaccard_hi", _F64), ("rbo_lo", _F64), ("rbo_hi", _F64),
                      ("level", _F64)],
    "ground_truth": [_DATASET, ("model", _STR), ("metric", _STR), ("label_source", _STR),
                     ("n_unlabelled_items", _I64), ("depth", _I32), ("n_queries", _I64),
                     ("precision", _F64), ("baseline_precision", _F64), ("lift", _F64),
                     ("auc", _F64), ("n_auc_pairs", _I64), ("precision_lo", _F64),
                     ("precision_hi", _F64), ("baseline_lo", _F64), ("baseline_hi", _F64),
                     ("above_baseline_lo", _F64), ("above_baseline_hi", _F64),
                     ("level", _F64)],
    "heldout": heldout_fields(),
    "comparisons": [_DATASET, ("comparison", _STR), ("measure", _STR), ("model_a", _STR),
                    ("metric_a", _STR), ("model_b", _STR), ("metric_b", _STR),
                    ("estimate", _F64), ("lo", _F64), ("hi", _F64), ("level", _F64),
                    ("n_users", _I64), ("verdict", _STR), ("verdict_holm", _STR),
                    ("n_comparisons", _I32), ("identical_by_construction", pa.bool_())],
    "lambda_path": [_DATASET, ("model", _STR), ("objective", _I8), ("metric", _STR),
                    ("lam", _F64), ("recall", _F64), ("ndcg", _F64), ("dims_kept", _I32),
                    ("n_users", _I64), ("chosen", pa.bool_()), ("measure", _STR)],
    "popularity": [_DATASET, ("model", _STR), ("metric", _STR),
                   ("norm_popularity_spearman", _F64), ("n_queries", _I64),
                   ("log_ratio_mean", _F64), ("log_ratio_median", _F64),
                   ("frac_more_popular", _F64)],
}


def table_schema(name: str, item_id_type: pa.DataType = _I64,
                 fields: list[tuple[str, pa.DataType | None]] | None = None) -> pa.Schema:
    """The documented Arrow schema of report table ``name``.

    Parameters
    ----------
    name : str
        A key of :data:`TABLES`.
    item_id_type : pyarrow.DataType
        Type of item-id columns (the matrix's item vocabulary type).
    fields : list of (column, type), optional
        Columns to use instead of ``TABLES[name]`` (e.g. :func:`heldout_fields` of other K).

    Returns
    -------
    pyarrow.Schema
        With ``bigcos.schema`` metadata naming the table and :data:`SCHEMA_VERSION`.
    """
    fields = TABLES[name] if fields is None else fields
    meta = {"bigcos.schema": json.dumps({"table": name, "version": SCHEMA_VERSION})}
    return pa.schema([pa.field(col, typ if typ is not None else item_id_type)
                      for col, typ in fields], metadata=meta)


def make_table(name: str, rows: list[dict[str, Any]], schema: pa.Schema | None = None,
               dataset: str | None = None) -> pa.Table:
    """Rows (dicts keyed by column) as a table of the documented schema of ``name``.

    ``dataset``, when given, fills the ``dataset`` column of every row.
    """
    if dataset is not None:
        rows = [{"dataset": dataset, **r} for r in rows]
    return pa.Table.from_pylist(rows, schema=schema or table_schema(name))


def write_tables(directory: Path, tables: dict[str, pa.Table]) -> None:
    """Write each table as ``directory/<name>.parquet`` (zstd, schema metadata included)."""
    for name, table in tables.items():
        io.write_table(directory / f"{name}.parquet", table)


def read_report_table(directory: str | Path, name: str) -> pa.Table:
    """Read one table of a report directory and check its schema version.

    Parameters
    ----------
    directory : str or Path
        A directory written by :func:`bigcos.reports.write_report`.
    name : str
        Table name, e.g. ``"agreement"``.

    Returns
    -------
    pyarrow.Table

    Raises
    ------
    UserError
        When the file is missing or was written with another schema version.
    """
    path = storage.as_path(directory) / f"{name}.parquet"
    if not path.exists():
        raise UserError(f"{path}: no such report table")
    table = io.read_table(path)
    meta = json.loads((table.schema.metadata or {}).get(b"bigcos.schema", b"{}"))
    if meta.get("version") != SCHEMA_VERSION:
        raise UserError(f"{path}: schema version {meta.get('version')} is not {SCHEMA_VERSION}")
    return table
