"""What a report reads: neighbour lists as index arrays, item labels and titles, popularity."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import scipy.sparse as sp

from bigcos import io, metrics
from bigcos.errors import UserError
from bigcos.neighbor_lists import KINDS


@dataclass(frozen=True)
class NeighborLists:
    """One configuration's neighbour lists as matrix indices.

    Attributes
    ----------
    kind, model, metric : str
        The configuration (``item-item``/``user-item``/``user-user``, model name, cos/dot).
    queries : numpy.ndarray
        (m,) int64 row/column indices of the queries, ascending.
    neighbors : numpy.ndarray
        (m, N) int64 indices of neighbours, rank 1 first, -1 where a list is shorter than N.
    """

    kind: str
    model: str
    metric: str
    queries: np.ndarray
    neighbors: np.ndarray

    @property
    def label(self) -> str:
        """``model/metric``, the configuration's name on the page."""
        return f"{self.model}/{self.metric}"


def _indices_of(ids: pa.Array, vocabulary: pa.Array, what: str) -> np.ndarray:
    """Positions of ``ids`` in ``vocabulary`` (int64); UserError if any id is unknown."""
    if ids.type != vocabulary.type:
        try:
            ids = ids.cast(vocabulary.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise UserError(f"{what}: ids of type {ids.type} do not match the matrix's "
                            f"{vocabulary.type}") from None
    index = pc.index_in(ids, value_set=vocabulary)
    if index.null_count:
        bad = ids.filter(pc.is_null(index))[0]
        raise UserError(f"{what}: id {bad} is not in the matrix ({index.null_count} unknown ids)")
    return index.to_numpy(zero_copy_only=False).astype(np.int64)


def lists_from_table(table: pa.Table, kind: str, model: str, metric: str,
                     query_ids: pa.Array, neighbor_ids: pa.Array, what: str) -> NeighborLists:
    """Turn rows (query_id, rank, neighbor_id) into the (m, N) index array of one configuration.

    Parameters
    ----------
    table : pyarrow.Table
        Columns ``query_id``, ``rank`` (1-based), ``neighbor_id``.
    kind, model, metric : str
        The configuration the rows belong to.
    query_ids, neighbor_ids : pyarrow.Array
        Vocabularies (matrix order) of the query side and the neighbour side.
    what : str
        Name of the source for error messages.

    Returns
    -------
    NeighborLists
        N = the largest rank present; shorter lists padded with -1.
    """
    q = _indices_of(table.column("query_id").combine_chunks(), query_ids, what)
    nb = _indices_of(table.column("neighbor_id").combine_chunks(), neighbor_ids, what)
    rank = table.column("rank").to_numpy().astype(np.int64)
    if rank.size and rank.min() < 1:
        raise UserError(f"{what}: column 'rank' must start at 1, found {rank.min()}")
    queries, row = np.unique(q, return_inverse=True)
    depth = int(rank.max()) if rank.size else 0
    neighbors = np.full((queries.size, depth), metrics.PAD, dtype=np.int64)
    neighbors[row, rank - 1] = nb
    return NeighborLists(kind, model, metric, queries, neighbors)


def read_neighbor_lists(directory: str | Path, user_ids: pa.Array, item_ids: pa.Array,
                        max_rank: int | None = None) -> list[NeighborLists]:
    """Every configuration of a neighbour dataset (``kind=*/model=*/metric=*/part-*.parquet``).

    Parameters
    ----------
    directory : str or Path
        Written by :func:`bigcos.neighbors`.
    user_ids, item_ids : pyarrow.Array
        The matrix's vocabularies (row and column order).
    max_rank : int, optional
        Keep ranks 1..max_rank only: memory then scales with the report depth, not with the N
        the lists were computed at (8 bytes per query and rank).

    Returns
    -------
    list of NeighborLists
        Sorted by (kind, model, metric).
    """
    root = io.require_dir(directory, "neighbour dataset", io.DATASET_MANIFEST)
    vocab = {"item": item_ids, "user": user_ids}
    out = []
    for leaf in sorted(root.glob("kind=*/model=*/metric=*")):
        if not leaf.is_dir():
            continue
        kind, model, metric = (part.split("=", 1)[1] for part in leaf.parts[-3:])
        if kind not in KINDS:
            raise UserError(f"{leaf}: unknown kind '{kind}' (expected one of {', '.join(KINDS)})")
        files = sorted(leaf.glob("*.parquet"))
        if not files:
            continue
        table = pa.concat_tables(_read_ranks(f, max_rank) for f in files)
        query_side, neighbor_side = kind.split("-")
        out.append(lists_from_table(table, kind, model, metric, vocab[query_side],
                                    vocab[neighbor_side], str(leaf)))
    if not out:
        raise UserError(f"{root}: no kind=*/model=*/metric=* partitions with Parquet files")
    return out


def _read_ranks(path: Path, max_rank: int | None) -> pa.Table:
    """query_id, rank, neighbor_id of one neighbour file, ranks <= max_rank when given."""
    columns = ["query_id", "rank", "neighbor_id"]
    try:
        return pq.read_table(path, columns=columns,
                             filters=None if max_rank is None else [("rank", "<=", max_rank)])
    except (pa.ArrowInvalid, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: cannot be read as a neighbour file ({first})") from None


@dataclass(frozen=True)
class ItemInfo:
    """Item metadata aligned with the matrix columns.

    Attributes
    ----------
    labels : scipy.sparse.csr_matrix or None
        Boolean (n_items, n_labels) label sets, or None without labels.
    label_source : str or None
        The item column the labels came from.
    titles : numpy.ndarray
        (n_items,) object array of display names (the id when there is none).
    single_label : bool
        At most one label per item (clusters, categories).
    """

    labels: sp.csr_matrix | None
    label_source: str | None
    titles: np.ndarray
    single_label: bool = False


def read_item_info(path: str | Path | None, item_ids: pa.Array,
                   label_column: str | None = None) -> ItemInfo:
    """Labels and titles from an item table keyed by ``item_id``, aligned with ``item_ids``.

    Parameters
    ----------
    path : str or Path or None
        Parquet item table with an ``item_id`` column; None: no labels, ids as titles.
    item_ids : pyarrow.Array
        The matrix's item vocabulary.
    label_column : str, optional
        Column of ground-truth labels (default ``cluster``, else ``genres``): an integer or
        string column gives one label per item, a list column a set of labels.

    Returns
    -------
    ItemInfo
        Titles from ``title`` or ``name``; items absent from the table are unlabelled.
    """
    ids_text = np.array([str(v) for v in item_ids.to_pylist()], dtype=object)
    if path is None:
        if label_column:
            raise UserError(f"--labels {label_column}: no item table (pass --items)")
        return ItemInfo(None, None, ids_text)
    table = io.read_table(path)
    if "item_id" not in table.column_names:
        raise UserError(f"{path}: column 'item_id' not found")
    ids = table.column("item_id").combine_chunks()
    if ids.type != item_ids.type:
        ids = ids.cast(item_ids.type)
    index = pc.index_in(item_ids, value_set=ids)
    present = index.is_valid().to_numpy(zero_copy_only=False)
    row = pc.fill_null(index, 0).to_numpy().astype(np.int64)
    titles = ids_text.copy()
    for col in ("title", "name"):
        if col in table.column_names:
            values = np.array(table.column(col).to_pylist(), dtype=object)
            titles = np.where(present, values[row], ids_text)
            break
    if label_column is None:
        label_column = next((c for c in ("cluster", "genres") if c in table.column_names), None)
        if label_column is None:
            return ItemInfo(None, None, titles)
    if label_column not in table.column_names:
        raise UserError(f"{path}: label column '{label_column}' not found "
                        f"(columns: {', '.join(table.column_names)})")
    column = table.column(label_column).combine_chunks()
    values = column.to_pylist()
    aligned = [values[r] if ok else None for r, ok in zip(row, present, strict=True)]
    if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        return ItemInfo(metrics.label_sets(aligned), label_column, titles)
    sets = metrics.label_sets([[v] if v is not None else [] for v in aligned])
    titles = np.array([f"{t} [{label_column} {v}]" if v is not None else t
                       for t, v in zip(titles, aligned, strict=True)], dtype=object)
    return ItemInfo(sets, label_column, titles, single_label=True)


def single_labels(sets: sp.csr_matrix) -> np.ndarray:
    """The first label of each row of a label-set matrix, -1 for none: (n_items,) int64."""
    out = np.full(sets.shape[0], -1, dtype=np.int64)
    has = np.diff(sets.indptr) > 0
    out[has] = sets.indices[sets.indptr[:-1][has]]
    return out


def item_popularity(train: sp.csr_matrix) -> np.ndarray:
    """Number of distinct users per item in ``train``: (n_items,) int64."""
    return np.bincount(train.indices, minlength=train.shape[1]).astype(np.int64)
