"""Model directories: the on-disk form of every fitted model (closed form or ALS).

    items.parquet     item_id (original type), embedding (fixed_size_list<float32>[k])
    users.parquet     user_id (original type), embedding (fixed_size_list<float32>[k]); or
    users/part-*.parquet  the same, one part per matrix shard (:mod:`bigcos.user_parts`)
    spectrum.parquet  closed form only: dim, sigma, g, d, a, b, kept, residual per SVD dimension
    columns.parquet   column remedy only: item_id, col_center (mu), col_scale (s) per item, so
                      X~ = (X - 1 mu^T) diag(s) can be mapped back to X's own scale
    manifest.json     parameters, counts, losses, SVD section, timings, versions

Rows follow the matrix's order (row j of items.parquet is column j of the matrix). Embeddings with
NaN or inf are refused on write and on read (see :func:`bigcos.io.write_embeddings`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from bigcos import io
from bigcos.closed_form import Solution
from bigcos.errors import UserError
from bigcos.user_parts import read_all_users, write_part

ITEMS, USERS, DIMENSIONS = "items.parquet", "users.parquet", "spectrum.parquet"
COLUMNS = "columns.parquet"


@dataclass
class Model:
    """A fitted model read back by :func:`load_model`.

    ``item_embeddings`` (p, k) float32, row j = ``item_ids[j]`` (matrix column order);
    ``user_embeddings`` (n, k) float32, row i = ``user_ids[i]`` (matrix row order);
    ``dimensions``: the spectrum table (sigma, g, d, a, b, kept per SVD dimension) or None (ALS);
    ``columns``: the column remedy's table (:func:`columns_table`) or None (no column remedy).
    """

    name: str
    item_ids: pa.Array
    item_embeddings: np.ndarray
    user_ids: pa.Array
    user_embeddings: np.ndarray
    manifest: dict
    matrix_dir: Path | None
    dimensions: pa.Table | None = field(default=None, repr=False)
    columns: pa.Table | None = field(default=None, repr=False)


def load_model(directory: str | os.PathLike) -> Model:
    """Read a model directory written by ``bigcos fit`` (or :func:`write_model`).

    Parameters
    ----------
    directory : str or path

    Returns
    -------
    Model
        Memory: (n + p) k 4 bytes of embeddings.

    Raises
    ------
    UserError
        When the directory is not a model directory, the item and user embeddings differ in
        dimension, or an embedding holds NaN or inf (naming the file).
    """
    from bigcos.model_info import load_model_info  # (it imports this module's file names)

    info = load_model_info(directory)
    items = info.item_embeddings
    user_ids, users = read_all_users(info.directory)
    if items.shape[1] != users.shape[1]:
        raise UserError(f"{info.directory}: item embeddings have {items.shape[1]} dimensions, "
                        f"user embeddings {users.shape[1]}")
    return Model(info.name, info.item_ids, items, user_ids, users, info.manifest,
                 info.matrix_dir, info.dimensions, info.columns)


def dimensions_table(solution: Solution, residuals: np.ndarray | None = None) -> pa.Table:
    """One row per SVD dimension of a closed-form model: dim, sigma, g, d, a, b, kept[, residual].

    Parameters
    ----------
    solution : Solution
        Vectors of shape (k,).
    residuals : ndarray, shape (k,), optional
        The SVD's residual per singular triplet.

    Returns
    -------
    pyarrow.Table with k rows
    """
    sol = solution
    cols = {"dim": pa.array(np.arange(len(sol.sigma), dtype=np.int32)),
            "sigma": sol.sigma, "g": sol.g, "d": sol.d, "a": sol.a, "b": sol.b,
            "kept": pa.array(sol.kept)}
    if residuals is not None:
        cols["residual"] = np.asarray(residuals, np.float64)
    return pa.table(cols)


def columns_table(item_ids: pa.Array, col_center: np.ndarray | None,
                  col_scale: np.ndarray | None) -> pa.Table:
    """One row per item of a column remedy X~ = (X - 1 mu^T) diag(s): item_id, mu, s.

    Parameters
    ----------
    item_ids : pyarrow.Array, shape (p,)
    col_center : ndarray, shape (p,), or None
        mu (None: 0, e.g. the popularity remedy).
    col_scale : ndarray, shape (p,), or None
        s (None: 1).

    Returns
    -------
    pyarrow.Table with p rows: item_id, col_center, col_scale (float64)
    """
    p = len(item_ids)
    center = np.zeros(p) if col_center is None else np.asarray(col_center, np.float64)
    scale = np.ones(p) if col_scale is None else np.asarray(col_scale, np.float64)
    return pa.table({"item_id": item_ids, "col_center": center, "col_scale": scale})


def write_model(directory: Path, item_ids: pa.Array, items: np.ndarray, user_ids: pa.Array,
                users: np.ndarray, dimensions: pa.Table | None = None) -> None:
    """Write the embedding files of a model into an existing ``directory`` (no manifest).

    Parameters
    ----------
    directory : Path
    item_ids : pyarrow.Array, shape (p,)
    items : ndarray, shape (p, k)
    user_ids : pyarrow.Array, shape (n,)
    users : ndarray, shape (n, k)
    dimensions : pyarrow.Table, optional
        :func:`dimensions_table` of a closed-form model.
    """
    io.write_embeddings(directory / ITEMS, item_ids, items, "item_id")
    write_part(directory, 0, 1, user_ids, users)
    if dimensions is not None:
        io.write_table(directory / DIMENSIONS, dimensions)


def check_out(out: str | os.PathLike, overwrite: bool) -> None:
    """Fail before any work when ``out`` exists and may not be replaced.

    Parameters
    ----------
    out : str or path
        The output directory of a fit.
    overwrite : bool
        Whether an existing ``out`` may be replaced.
    """
    if io.output_exists(out) and not overwrite:
        raise UserError(f"{out}: output already exists (pass --overwrite to replace it)")
