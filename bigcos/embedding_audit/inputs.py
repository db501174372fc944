"""Read the embeddings to audit, and align them with a matrix directory and an item table.

Accepted embedding files (one function per format; the suffix decides):

- a model directory of ``bigcos fit`` (``items.parquet`` and ``users.parquet``);
- Parquet with an id column (``item_id`` / ``user_id``) and ``embedding``, a fixed-size list
  of floats (the model directories' schema, :func:`bigcos.io.read_embeddings`);
- ``.npy`` (m x k) with ids from a Parquet/CSV file with one id column (``item_ids`` /
  ``user_ids``), else from the matrix (rows = its columns/rows), else row numbers;
- ``.npz`` saved by implicit's ``model.save(path)`` (ALS, BPR, LMF of implicit 0.7.x:
  ``item_factors``, ``user_factors`` and the hyper-parameters as 0-d arrays), read with numpy.
  Rows follow the matrix the model was fit on (take ids from ``matrix``).

Item embeddings are read whole (p x k float32). User embeddings are never read here: they
become :class:`~bigcos.embedding_audit.shards.UserShards` (Parquet row groups, or ranges of a
``.npy``; an implicit ``.npz`` is copied to ``scratch/users.npy``), which the audit reduces and
samples on Dask workers; their NaN/inf and zero rows are counted by
:func:`bigcos.embedding_audit.shards.scan`.

Problems are :class:`UserError` (one line, naming the file) when nothing sensible can be done
(dimension mismatch, ids that do not match the rows, duplicated ids) and counted warnings when
the audit can go on: rows with NaN/inf are dropped, all-zero rows kept (no cosine: scored 0),
ids missing from the matrix or the item table are counted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import scipy.sparse as sp

from bigcos import io, metrics
from bigcos.embedding_audit import shards
from bigcos.embedding_audit.shards import TINY_NORM, UserShards
from bigcos.errors import UserError

# implicit 0.7.x: keys that tell its saved models apart (besides the two factor arrays)
_IMPLICIT_KINDS = (("alpha", "implicit-als"), ("neg_prop", "implicit-lmf"),
                   ("verify_negative_samples", "implicit-bpr"))


@dataclass
class Embeddings:
    """Item (p x k) float32 embeddings with their ids, and the user embeddings in shards.

    ``source``: the format read ("parquet", "npy", "bigcos-model", "implicit-als", ...);
    ``params``: hyper-parameters stored with the model (implicit, bigcos manifests).
    """

    item_ids: pa.Array
    items: np.ndarray
    users: UserShards | None = None
    source: str = "parquet"
    params: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def _read_id_file(path: str | os.PathLike, role: str) -> pa.Array:
    p = Path(path)
    if p.suffix.lower() == ".csv":
        try:
            table = pcsv.read_csv(p)
        except (pa.ArrowInvalid, OSError) as exc:
            raise UserError(f"{p}: cannot be read as CSV ({str(exc).splitlines()[0]})") from None
    else:
        table = io.read_table(p)
    column = f"{role}_id"
    if column not in table.column_names and table.num_columns != 1:
        raise UserError(f"{p}: needs a '{column}' column (or exactly one column)")
    name = column if column in table.column_names else table.column_names[0]
    return table.column(name).combine_chunks()


def _implicit(path: Path) -> tuple[np.ndarray, np.ndarray, str, dict]:
    try:
        saved = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot be read as a .npz file ({exc})") from None
    for key in ("item_factors", "user_factors"):
        if key not in saved.files:
            raise UserError(f"{path}: '{key}' not found (not a model saved by implicit's save)")
    kind = next((name for key, name in _IMPLICIT_KINDS if key in saved.files), "implicit")
    params = {k: saved[k].item() for k in saved.files if saved[k].ndim == 0}
    return saved["item_factors"], saved["user_factors"], kind, params


def _matrix_ids(rows: int, matrix_ids: pa.Array | None, path: Path, what: str) -> pa.Array:
    if matrix_ids is None:
        return pa.array(np.arange(rows, dtype=np.int64))
    if len(matrix_ids) != rows:
        raise UserError(f"{path}: {rows:,} {what} rows but the matrix has {len(matrix_ids):,} "
                        f"{what}s (fit on another matrix? pass the ids file)")
    return matrix_ids


def read_one(path: str | os.PathLike, role: str, ids: str | os.PathLike | None = None,
             matrix_ids: pa.Array | None = None) -> tuple[pa.Array, np.ndarray, str]:
    """(ids, float32 array, format) of one Parquet or ``.npy`` embedding file of ``role``
    ("item" or "user")."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{p}: no such file")
    if p.suffix.lower() == ".npy":
        try:
            array = np.load(p, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise UserError(f"{p}: cannot be read as .npy ({exc})") from None
        if array.ndim != 2:
            raise UserError(f"{p}: expected a 2-d array (rows x dimensions), got shape "
                            f"{array.shape}")
        if ids is None:
            return _matrix_ids(len(array), matrix_ids, p, role), array, "npy"
        id_array = _read_id_file(ids, role)
        if len(id_array) != len(array):
            raise UserError(f"{ids}: {len(id_array):,} ids for {len(array):,} rows of {p}")
        return id_array, array, "npy"
    id_array, array = io.read_embeddings(p, f"{role}_id", finite=False)
    return id_array, array, "parquet"


def _user_shards(path: str | os.PathLike, ids: str | os.PathLike | None,
                 matrix_ids: pa.Array | None, shard_rows: int) -> UserShards:
    p = Path(path)
    if not p.exists():
        raise UserError(f"{p}: no such file")
    if p.suffix.lower() == ".npy":
        try:
            shape = shards.load_npy(p).shape
        except (OSError, ValueError) as exc:
            raise UserError(f"{p}: cannot be read as .npy ({exc})") from None
        if len(shape) != 2:
            raise UserError(f"{p}: expected a 2-d array (rows x dimensions), got shape {shape}")
        if ids is None:
            id_array = _matrix_ids(shape[0], matrix_ids, p, "user")
        else:
            id_array = _read_id_file(ids, "user")
            if len(id_array) != shape[0]:
                raise UserError(f"{ids}: {len(id_array):,} ids for {shape[0]:,} rows of {p}")
        return UserShards(shards.npy_shards(p, shard_rows), id_array, shape[1])
    found, id_array, dims = shards.parquet_shards(p)
    return UserShards(found, id_array, dims)


def read_embeddings(items: str | os.PathLike, users: str | os.PathLike | None = None, *,
                    item_ids: str | os.PathLike | None = None,
                    user_ids: str | os.PathLike | None = None,
                    matrix=None, scratch: Path, shard_rows: int = shards.SHARD_ROWS
                    ) -> Embeddings:
    """Read the item embeddings; open the user embeddings as shards (module docstring).

    ``matrix``: an :class:`bigcos.matrix.Interactions` (or None) giving ids to id-less rows;
    ``scratch``: a directory the workers can read (an implicit model's users go there);
    ``shard_rows``: rows per shard of a ``.npy`` (Parquet files keep their row groups).
    """
    path = Path(items)
    m_items = matrix.item_ids if matrix is not None else None
    m_users = matrix.user_ids if matrix is not None else None
    if path.is_dir():
        if users is not None:
            raise UserError(f"users: {path} is a model directory and holds user embeddings")
        io.require_dir(path, "model", "items.parquet")
        ids, array = io.read_embeddings(path / "items.parquet", "item_id", finite=False)
        params = io.read_manifest(path).get("parameters", {})
        out = Embeddings(ids, array, _user_shards(path / "users.parquet", None, None,
                                                  shard_rows), "bigcos-model", params)
    elif path.suffix.lower() == ".npz":
        if users is not None:
            raise UserError(f"users: {path} is an implicit model and holds user factors")
        item_f, user_f, kind, params = _implicit(path)
        np.save(scratch / "users.npy", np.asarray(user_f, np.float32))
        out = Embeddings(_matrix_ids(len(item_f), m_items, path, "item"), item_f,
                         UserShards(shards.npy_shards(scratch / "users.npy", shard_rows),
                                    _matrix_ids(len(user_f), m_users, path, "user"),
                                    user_f.shape[1]), kind, params)
    else:
        ids, array, kind = read_one(path, "item", item_ids, m_items)
        out = Embeddings(ids, array, source=kind)
        if users is not None:
            out.users = _user_shards(users, user_ids, m_users, shard_rows)
    return _checked(out, path, users)


def _checked(emb: Embeddings, path: Path, users_path) -> Embeddings:
    emb.items, emb.item_ids = _clean(emb.items, emb.item_ids, path, "item", emb.warnings)
    if emb.users is not None:
        where = users_path or path
        if emb.users.dims != emb.items.shape[1]:
            raise UserError(f"{where}: user embeddings have {emb.users.dims} dimensions, "
                            f"item embeddings {emb.items.shape[1]}")
        if not len(emb.users.ids):
            raise UserError(f"{where}: no user embeddings")
        if pc.count_distinct(emb.users.ids).as_py() != len(emb.users.ids):
            raise UserError(f"{where}: user ids are not unique")
    return emb


def _clean(array: np.ndarray, ids: pa.Array, path, role: str, warnings: list[str]):
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise UserError(f"{path}: no {role} embeddings (shape {array.shape})")
    if array.dtype.kind not in "fiu":
        raise UserError(f"{path}: {role} embeddings must be numbers, got dtype {array.dtype}")
    if pc.count_distinct(ids).as_py() != len(ids):
        raise UserError(f"{path}: {role} ids are not unique")
    array = np.asarray(array, np.float32)
    finite = np.ones(len(array), bool)
    finite[io.nonfinite_rows(array)] = False
    if not finite.all():
        warnings.append(f"{(~finite).sum():,} {role} rows with NaN or inf dropped")
        array, ids = array[finite], ids.filter(pa.array(finite))
    norms = shards.row_norms(array)
    tiny = (norms > 0) & (norms < TINY_NORM * norms.max(initial=0.0))
    if tiny.any():  # e.g. denormal rows of items a model never saw: 1 / norm overflows
        warnings.append(f"{tiny.sum():,} {role} rows with norm below {TINY_NORM:g} of the "
                        "largest set to zero")
        array = array.copy()  # not the caller's array
        array[tiny] = 0.0
    zero = int((norms[~tiny] == 0).sum() + tiny.sum())
    if zero:
        warnings.append(f"{zero:,} {role} rows are all zero (no cosine: scored 0)")
    return np.ascontiguousarray(array), ids


# --------------------------------------------------------------------------- the matrix
@dataclass
class Aligned:
    """The matrix seen through the embeddings' rows.

    popularity (p,): training users per embedded item (0 when absent from the matrix);
    train / test: CSR (n_emb_users x p) of training / held-out interactions of embedded users
    on embedded items (None without user embeddings or without a test split).
    """

    popularity: np.ndarray
    train: sp.csr_matrix | None
    test: sp.csr_matrix | None


def _positions(ids: pa.Array, vocabulary: pa.Array) -> np.ndarray:
    """Row of each vocabulary id in ``ids`` (-1 when absent)."""
    try:
        found = pc.index_in(vocabulary, value_set=ids)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        raise UserError(f"embedding ids of type {ids.type} cannot be matched to matrix ids of "
                        f"type {vocabulary.type}") from None
    return found.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)


def _remap(x: sp.csr_matrix, rows: np.ndarray, cols: np.ndarray, shape) -> sp.csr_matrix:
    coo = x.tocoo()
    r, c = rows[coo.row], cols[coo.col]
    keep = (r >= 0) & (c >= 0)
    out = sp.csr_matrix((np.ones(int(keep.sum()), np.float32), (r[keep], c[keep])), shape=shape)
    out.sum_duplicates()
    return out


def align(emb: Embeddings, matrix) -> Aligned:
    """Map the matrix's rows and columns onto the embeddings' rows; warn about what is missing.
    The users' shards must have been scanned (:func:`bigcos.embedding_audit.shards.scan`)."""
    col_to_item = _positions(emb.item_ids, matrix.item_ids)
    p = len(emb.items)
    missing_items = int((col_to_item < 0).sum())
    if missing_items == len(col_to_item):
        raise UserError("no item id of the embeddings is in the matrix (ids of another dataset?)")
    if missing_items:
        emb.warnings.append(f"{missing_items:,} matrix items have no embedding (left out)")
    extra = p - (len(col_to_item) - missing_items)
    if extra:
        emb.warnings.append(f"{extra:,} embedded items are not in the matrix (popularity 0)")
    counts = np.diff(matrix.train.tocsc().indptr)
    popularity = np.zeros(p, np.int64)
    popularity[col_to_item[col_to_item >= 0]] = counts[col_to_item >= 0]
    if emb.users is None:
        return Aligned(popularity, None, None)
    row_to_user = _positions(emb.users.ids, matrix.user_ids)
    shape = (len(emb.users), p)
    train = _remap(matrix.train, row_to_user, col_to_item, shape)
    test = None
    if matrix.test is not None and matrix.test.nnz:
        test_users = np.diff(matrix.test.indptr) > 0
        lost = int((test_users & (row_to_user < 0)).sum())
        if lost:
            emb.warnings.append(f"{lost:,} held-out users have no user embedding (skipped)")
        test = _remap(matrix.test, row_to_user, col_to_item, shape)
    return Aligned(popularity, train, test)


# --------------------------------------------------------------------------- the item table
@dataclass
class ItemInfo:
    """Titles (p,) object array (the id when unknown) and label sets (CSR p x labels) or None."""

    titles: np.ndarray
    labels: sp.csr_matrix | None
    label_column: str | None


def read_items(path: str | os.PathLike | None, item_ids: pa.Array,
               label_column: str | None = None) -> ItemInfo:
    """Titles and labels of the embedded items from an item table keyed by ``item_id``.

    Titles: ``title`` or ``name``; labels: ``label_column``, else ``cluster``, else ``genres``
    (one label per item, or a list of labels per item).
    """
    ids_text = np.array([str(i) for i in item_ids.to_pylist()], dtype=object)
    if path is None:
        return ItemInfo(ids_text, None, None)
    table = io.read_table(path) if Path(path).suffix.lower() != ".csv" else pcsv.read_csv(path)
    if "item_id" not in table.column_names:
        raise UserError(f"{path}: column 'item_id' not found")
    row = _positions(table.column("item_id").combine_chunks(), item_ids)
    present = row >= 0
    titles = ids_text
    for col in ("title", "name"):
        if col in table.column_names:
            values = np.array(table.column(col).to_pylist(), dtype=object)
            titles = np.where(present, values[np.maximum(row, 0)], ids_text)
            break
    if label_column is None:
        label_column = next((c for c in ("cluster", "genres") if c in table.column_names), None)
        if label_column is None:
            return ItemInfo(titles, None, None)
    elif label_column not in table.column_names:
        raise UserError(f"{path}: label column '{label_column}' not found")
    values = table.column(label_column).to_pylist()
    per_item = [values[r] if r >= 0 else None for r in row]
    per_item = [v if isinstance(v, list) or v is None else [v] for v in per_item]
    return ItemInfo(titles, metrics.label_sets(per_item), label_column)
