"""A whole report: load the inputs, compute every table, write tables, page and manifest."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from bigcos import io
from bigcos.reports import schema
from bigcos.reports.evaluation import heldout
from bigcos.reports.inputs import (
    ItemInfo,
    NeighborLists,
    item_popularity,
    read_item_info,
    read_neighbor_lists,
)
from bigcos.reports.options import Options
from bigcos.reports.page import render_html
from bigcos.reports.tables import agreement, d_family, d_sensitivity, ground_truth, popularity_rows


@dataclass
class Report:
    """Everything a report holds in memory: its tables and what the page needs.

    Attributes
    ----------
    tables : dict of str to pyarrow.Table
        Keyed by table name (:data:`bigcos.reports.schema.TABLES`).
    lists : list of NeighborLists
    models : dict
        Model name -> :class:`bigcos.models.Model`.
    info : ItemInfo
    popularity : numpy.ndarray
        (n_items,) users per item in the fitted rows.
    item_ids : pyarrow.Array
    options : Options
    """

    tables: dict[str, pa.Table]
    lists: list[NeighborLists]
    models: dict[str, Any]
    info: ItemInfo
    popularity: np.ndarray
    item_ids: pa.Array
    options: Options


def build_report(data, models: dict[str, Any], lists: list[NeighborLists], info: ItemInfo,
                 opts: Options, timings: io.Timings | None = None) -> Report:
    """Compute every table of a report.

    Parameters
    ----------
    data : bigcos.matrix.Interactions
    models : dict
        Model name -> :class:`bigcos.models.Model`.
    lists : list of NeighborLists
    info : ItemInfo
    opts : Options
    timings : bigcos.io.Timings, optional
        Collects the time of each step.

    Returns
    -------
    Report
    """
    timings = timings or io.Timings()
    popularity = item_popularity(data.fit_matrix)
    id_type = data.item_ids.type
    with timings("agreement"):
        agree = agreement(lists, opts, data.item_ids)
        per_item = (pa.concat_tables(agree.per_item) if agree.per_item
                    else schema.table_schema("agreement_per_item", id_type).empty_table())
        families = {name: d_family(m.manifest, name) for name, m in models.items()}
        for nl in lists:
            families.setdefault(nl.model, d_family({}, nl.model))
    with timings("ground_truth"):
        truth = ground_truth(lists, models, info, popularity, opts)
    with timings("heldout"):
        held = heldout(models, data)
    with timings("popularity"):
        pop = popularity_rows(lists, models, popularity, opts)
    make = schema.make_table
    tables = {
        "agreement": make("agreement", agree.rows),
        "agreement_per_item": per_item,
        "d_sensitivity": make("d_sensitivity", d_sensitivity(agree.rows, families)),
        "ground_truth": make("ground_truth", truth),
        "heldout": make("heldout", held),
        "popularity": make("popularity", pop),
    }
    return Report(tables, lists, models, info, popularity, data.item_ids, opts)


def write_report(out: str | Path, matrix_dir: str | Path, model_dirs: Iterable[str | Path],
                 neighbors_dir: str | Path, items: str | Path | None = None,
                 options: Options | None = None, overwrite: bool = False) -> Report:
    """Load the inputs, compute the report and write tables, page and manifest atomically.

    Parameters
    ----------
    out : str or Path
        Report directory to write (atomically; see :func:`bigcos.io.atomic_output_dir`).
    matrix_dir : str or Path
        Written by :func:`bigcos.ingest`; its test part feeds the heldout table.
    model_dirs : iterable of str or Path
        Model directories (:func:`bigcos.fit`, :func:`bigcos.fit_als`).
    neighbors_dir : str or Path
        Neighbour dataset (:func:`bigcos.neighbors`).
    items : str or Path, optional
        Item table (labels, titles); default: the one recorded by ``bigcos ingest --items``.
    options : Options, optional
    overwrite : bool
        Replace an existing ``out``.

    Returns
    -------
    Report
    """
    from bigcos.matrix import load_matrix
    from bigcos.models import load_model

    opts = options or Options()
    model_dirs = list(model_dirs)
    timings = io.Timings()
    with timings("load"):
        data = load_matrix(matrix_dir)
        models = {}
        for d in model_dirs:
            model = load_model(d)
            models[model.name] = model
        items = items or io.read_manifest(matrix_dir).get("inputs", {}).get("items")
        info = read_item_info(items, data.item_ids, opts.labels)
        lists = read_neighbor_lists(neighbors_dir, data.user_ids, data.item_ids, opts.depth)
    report = build_report(data, models, lists, info, opts, timings)
    with io.atomic_output_dir(out, overwrite=overwrite) as tmp:
        schema.write_tables(tmp, report.tables)
        with timings("page"):
            (tmp / "report.html").write_text(render_html(report))
        io.write_manifest(
            tmp, "report", parameters=opts.__dict__, timings=timings,
            inputs={"matrix": str(Path(matrix_dir).resolve()),
                    "models": [str(Path(d).resolve()) for d in model_dirs],
                    "neighbors": str(Path(neighbors_dir).resolve()),
                    "items": str(items) if items else None},
            schema={"version": schema.SCHEMA_VERSION,
                    "tables": {n: [f.name for f in t.schema] for n, t in report.tables.items()}},
            counts={n: t.num_rows for n, t in report.tables.items()})
    return report
