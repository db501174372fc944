"""A whole report: load the inputs, compute every table, write tables, page and manifest."""

from __future__ import annotations

import datetime
import os
import posixpath
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from bigcos import io, storage
from bigcos.reports import schema
from bigcos.reports.comparisons import comparisons
from bigcos.reports.evaluation import heldout_rows, heldout_scores
from bigcos.reports.inputs import (
    ItemInfo,
    MatrixSummary,
    NeighborLists,
    check_model_matches,
    example_indices,
    item_popularity,
    matrix_summary,
    read_item_info,
    read_neighbor_lists,
)
from bigcos.reports.model_params import ModelParams, model_params
from bigcos.reports.options import Options
from bigcos.reports.page import render_html
from bigcos.reports.scoring import SCORING
from bigcos.reports.tables import agreement, d_sensitivity, ground_truth, popularity_rows


@dataclass
class Report:
    """Everything a report holds in memory: its tables and what the page needs.

    Attributes
    ----------
    tables : dict of str to pyarrow.Table
        Keyed by table name (:data:`bigcos.reports.schema.TABLES`).
    lists : list of NeighborLists
    models : dict
        Model name -> :class:`bigcos.model_info.ModelInfo` (from :func:`write_report`: items,
        no user embeddings) or :class:`bigcos.models.Model`.
    info : ItemInfo
    popularity : numpy.ndarray
        (n_items,) users per item in the fitted rows.
    item_ids : pyarrow.Array
    options : Options
        With ``dataset`` filled in.
    params : dict
        Model name -> :class:`ModelParams` (every model with embeddings or neighbour lists).
    context : dict
        What the page header says besides the options: ``date``, ``version``, ``split``
        (the matrix's ingest parameters), ``neighbors_n``, ``items`` (the item table);
        filled in by :func:`build_report`: ``scoring`` (model -> what its held-out dot ranks
        by, a key of :data:`bigcos.reports.scoring.SCORING`) and ``warnings`` (model -> its
        manifest's warnings).
    """

    tables: dict[str, pa.Table]
    lists: list[NeighborLists]
    models: dict[str, Any]
    info: ItemInfo
    popularity: np.ndarray
    item_ids: pa.Array
    options: Options
    params: dict[str, ModelParams] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)


def build_report(data, models: dict[str, Any], lists: list[NeighborLists], info: ItemInfo,
                 opts: Options, timings: io.Timings | None = None,
                 model_dirs: dict[str, str] | None = None,
                 context: dict[str, Any] | None = None,
                 lambda_path: list[dict[str, Any]] | None = None, client=None) -> Report:
    """Compute every table of a report.

    Parameters
    ----------
    data : bigcos.matrix.Interactions or MatrixSummary
        In memory, or a matrix directory's summary (its shards read by tasks).
    models : dict
        Model name -> :class:`bigcos.models.Model`, or :class:`bigcos.model_info.ModelInfo`
        (user parts read by the held-out tasks).
    lists : list of NeighborLists
    info : ItemInfo
    opts : Options
        ``dataset`` fills every table's ``dataset`` column ("" when None).
    timings : bigcos.io.Timings, optional
        Collects the time of each step.
    model_dirs : dict, optional
        Model name -> directory (relative to the report directory), for the ``models`` table.
    context : dict, optional
        Header facts for the page (see :class:`Report`).
    lambda_path : list of dict, optional
        The models' validation paths (:func:`read_lambda_paths`), for the lambda_path table.
    client : distributed.Client, optional
        Where the held-out tasks run (:func:`bigcos.reports.heldout_scores`); None: threads
        in this process.

    Returns
    -------
    Report
    """
    timings = timings or io.Timings()
    dataset = opts.dataset or ""
    summary = isinstance(data, MatrixSummary)
    popularity = data.popularity if summary else item_popularity(data.fit_matrix)
    params = {name: model_params(name, m.manifest, m.item_embeddings.shape[1],
                                 (model_dirs or {}).get(name)) for name, m in models.items()}
    for nl in lists:
        if nl.model not in params:
            params[nl.model] = model_params(nl.model, {}, 0)
    families = {name: p.family for name, p in params.items()}
    with timings("agreement"):
        agree = agreement(lists, opts, data.item_ids, dataset, families)
        per_item = (pa.concat_tables(agree.per_item) if agree.per_item
                    else schema.table_schema("agreement_per_item", data.item_ids.type)
                    .empty_table())
        sensitivity = d_sensitivity(agree.rows, families, agree.per_query, opts)
    with timings("ground_truth"):
        truth = ground_truth(lists, models, info, popularity, opts)
    with timings("heldout"):
        scores = heldout_scores(models, data.directory if summary else data,
                                max_users=opts.max_heldout_users, seed=opts.seed,
                                client=client)
        held = heldout_rows(scores, {n: (p.lam, p.lam_source) for n, p in params.items()},
                            opts)
    with timings("comparisons"):
        compared = comparisons(scores, params, opts)
    with timings("popularity"):
        pop = popularity_rows(lists, models, popularity, opts)

    def make(name: str, rows: list[dict[str, Any]]) -> pa.Table:
        return schema.make_table(name, rows, dataset=dataset)

    tables = {
        "models": make("models", [asdict(params[n]) for n in sorted(params)]),
        "agreement": make("agreement", agree.rows),
        "agreement_per_item": per_item,
        "d_sensitivity": make("d_sensitivity", sensitivity),
        "ground_truth": make("ground_truth", truth),
        "heldout": make("heldout", held),
        "comparisons": make("comparisons", compared),
        "lambda_path": make("lambda_path", lambda_path or []),
        "popularity": make("popularity", pop),
    }
    context = dict(context or {})
    context["scoring"] = scores.dot_scoring if scores is not None else {}
    context["warnings"] = {name: list(m.manifest.get("warnings", [])) for name, m in
                           models.items() if m.manifest.get("warnings")}
    return Report(tables, lists, models, info, popularity, data.item_ids, opts, params,
                  context)


def read_lambda_paths(model_dirs: Iterable[str | Path],
                      manifests: dict[str, dict] | None = None) -> list[dict[str, Any]]:
    """The validation paths (``lambda_path.parquet``, written by :func:`bigcos.fit` when λ is
    chosen on validation users) of the given model directories, each (model, λ, metric) once.

    Parameters
    ----------
    model_dirs : iterable of str or Path
    manifests : dict, optional
        Directory -> manifest; its ``parameters.validation_measure`` fills ``measure``
        (default ``recall``).

    Returns
    -------
    list of dict
        Rows of the ``lambda_path`` table, sorted by model, metric and λ.
    """
    rows: dict[tuple, dict[str, Any]] = {}
    for d in model_dirs:
        f = storage.as_path(d) / "lambda_path.parquet"
        if not f.exists():
            continue
        params = ((manifests or {}).get(str(d)) or io.read_manifest(d)).get("parameters", {})
        measure = params.get("validation_measure", "recall")
        for r in io.read_table(f).to_pylist():
            row = {c: r.get(c) for c in ("model", "objective", "metric", "lam", "recall",
                                         "ndcg", "dims_kept", "n_users", "chosen")}
            rows[(row["model"], row["metric"], row["lam"])] = row | {"measure": measure}
    return [rows[k] for k in sorted(rows, key=lambda k: (k[0], k[1], k[2]))]


def _relative(path: str | Path, start: str | Path) -> str:
    """``path`` relative to ``start`` (both local, or both in one store)."""
    path, start = storage.resolve(path), storage.resolve(start)
    if isinstance(path, storage.StorePath) and isinstance(start, storage.StorePath):
        return posixpath.relpath("/" + path.path, "/" + start.path)
    return os.path.relpath(str(path), str(start))


def write_report(out: str | Path, matrix_dir: str | Path, model_dirs: Iterable[str | Path],
                 neighbors_dir: str | Path, items: str | Path | None = None,
                 options: Options | None = None, overwrite: bool = False,
                 client=None) -> Report:
    """Load the inputs, compute the report and write tables, page and manifest atomically.

    Parameters
    ----------
    out : str or Path
        Report directory to write (atomically; see :func:`bigcos.io.atomic_output_dir`).
    matrix_dir : str or Path
        Written by :func:`bigcos.ingest`; its test part feeds the heldout table.
    model_dirs : iterable of str or Path
        Model directories (:func:`bigcos.fit`, :func:`bigcos.fit_als`) fit on this matrix.
    neighbors_dir : str or Path
        Neighbour dataset (:func:`bigcos.neighbors`).
    items : str or Path, optional
        Item table (labels, titles); default: the one recorded by ``bigcos ingest --items``.
    options : Options, optional
        ``dataset`` defaults to the name of ``matrix_dir``'s parent directory.
    overwrite : bool
        Replace an existing ``out``.
    client : distributed.Client, optional
        Where the per-shard tasks run (item popularity, held-out ranking); None: threads in
        this process. This process reads the ids, item embeddings and the neighbour lists at
        the report depth, never the matrices nor the n x k user embeddings.

    Returns
    -------
    Report

    Raises
    ------
    UserError
        Before any computation, for an example item that is not in the matrix or a model fit
        on another matrix.
    """
    from bigcos import __version__
    from bigcos.model_info import load_model_info

    opts = options or Options()
    if opts.dataset is None:
        opts = replace(opts, dataset=storage.resolve(matrix_dir).parent.name)
    model_dirs = list(model_dirs)
    timings = io.Timings()
    with timings("load"):
        data = matrix_summary(matrix_dir, client)
        example_indices(opts.examples, data.item_ids, str(matrix_dir))
        models, dirs = {}, {}
        for d in model_dirs:
            model = load_model_info(d)
            check_model_matches(model, data, str(matrix_dir), str(d))
            models[model.name] = model
            # relative to the report, so tables are byte-identical wherever a run is written
            dirs[model.name] = _relative(d, out)
        matrix_manifest = io.read_manifest(matrix_dir)
        items = items or matrix_manifest.get("inputs", {}).get("items")
        info = read_item_info(items, data.item_ids, opts.label_col, opts.title_col)
        lists = read_neighbor_lists(neighbors_dir, data.user_ids, data.item_ids, opts.depth,
                                    opts.max_queries, opts.seed)
    context = {"date": datetime.date.today().isoformat(), "version": __version__,
               "split": matrix_manifest.get("parameters", {}),
               "neighbors_n": io.read_manifest(neighbors_dir).get("parameters", {}).get("n"),
               "items": str(items) if items else None}
    report = build_report(data, models, lists, info, opts, timings, dirs, context,
                          read_lambda_paths(model_dirs), client)
    with io.atomic_output_dir(out, overwrite=overwrite) as tmp:
        schema.write_tables(tmp, report.tables)
        with timings("page"):
            (tmp / "report.html").write_text(render_html(report))
        io.write_manifest(
            tmp, "report", parameters=opts.__dict__, timings=timings,
            inputs={"matrix": str(storage.resolve(matrix_dir)),
                    "models": [str(storage.resolve(d)) for d in model_dirs],
                    "neighbors": str(storage.resolve(neighbors_dir)),
                    "items": str(items) if items else None},
            warnings=report.context.get("warnings", {}),
            scoring={name: SCORING[key] for name, key in
                     report.context.get("scoring", {}).items()},
            schema={"version": schema.SCHEMA_VERSION,
                    "tables": {n: [f.name for f in t.schema] for n, t in report.tables.items()}},
            counts={n: t.num_rows for n, t in report.tables.items()})
    return report
