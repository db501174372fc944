"""What a report reads: neighbour lists as index arrays, item labels and titles, popularity."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import scipy.sparse as sp

from bigcos import io, metrics, storage
from bigcos.dask_tasks import run_tasks, task
from bigcos.errors import UserError
from bigcos.neighbor_lists import KINDS
from bigcos.shards import MatrixShards, Shard


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
                        max_rank: int | None = None, max_user_queries: int | None = None,
                        seed: int = 0) -> list[NeighborLists]:
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
    max_user_queries : int, optional
        For the user-user and user-item kinds, read only the lists of one seeded sample of
        at most this many of the kind's queries (the sample of
        :func:`bigcos.reports.tables.sample_queries` with ``seed``, so agreement is unchanged):
        memory then holds the queries' indices (rank 1 rows, 8 bytes per query) and the
        sampled lists, never every user's list. None: every list.
    seed : int

    Returns
    -------
    list of NeighborLists
        Sorted by (kind, model, metric).
    """
    root = io.require_dir(directory, "neighbour dataset", io.DATASET_MANIFEST)
    vocab = {"item": item_ids, "user": user_ids}
    out: list[NeighborLists] = []
    leaves: dict[str, list] = {}
    for leaf in sorted(root.glob("kind=*/model=*/metric=*")):
        if not leaf.is_dir():
            continue
        kind, model, metric = (part.split("=", 1)[1] for part in leaf.parts[-3:])
        if kind not in KINDS:
            raise UserError(f"{leaf}: unknown kind '{kind}' (expected one of {', '.join(KINDS)})")
        files = sorted(leaf.glob("*.parquet"))  # Paths, or StorePaths of a store
        if not files:
            continue
        leaves.setdefault(kind, []).append((leaf, model, metric, files))
    for kind, of_kind in leaves.items():
        query_side, neighbor_side = kind.split("-")
        only = None
        if query_side == "user" and max_user_queries is not None:
            only = _sampled_queries(of_kind, vocab[query_side], max_user_queries, seed)
        for leaf, model, metric, files in of_kind:
            table = pa.concat_tables(_read_ranks(f, max_rank, only) for f in files)
            out.append(lists_from_table(table, kind, model, metric, vocab[query_side],
                                        vocab[neighbor_side], str(leaf)))
    if not out:
        raise UserError(f"{root}: no kind=*/model=*/metric=* partitions with Parquet files")
    return out


def _sampled_queries(leaves: list, vocabulary: pa.Array, max_queries: int, seed: int
                     ) -> pa.Array | None:
    """The ids of one seeded sample of at most ``max_queries`` of the queries of ``leaves``
    (the union over configurations, from their rank-1 rows), or None when all are kept."""
    index = [_indices_of(pa.concat_tables(_read_ranks(f, 1, columns=["query_id"])
                                          for f in files).column("query_id").combine_chunks(),
                         vocabulary, str(leaf))
             for leaf, _, _, files in leaves]
    union = np.unique(np.concatenate(index))
    if union.size <= max_queries:
        return None
    keep = np.sort(np.random.default_rng(seed).choice(union, max_queries, replace=False))
    return vocabulary.take(pa.array(keep))


def _read_ranks(path: Path, max_rank: int | None, only: pa.Array | None = None,
                columns: list[str] | None = None) -> pa.Table:
    """query_id, rank, neighbor_id (or ``columns``) of one neighbour file, ranks <= max_rank
    when given, queries in ``only`` when given."""
    columns = columns or ["query_id", "rank", "neighbor_id"]
    fs, where = storage.filesystem_and_path(path)
    filters = [] if max_rank is None else [("rank", "<=", max_rank)]
    if only is not None:
        filters.append(("query_id", "in", only.to_pylist()))
    try:
        return pq.read_table(where, columns=columns, filesystem=fs, filters=filters or None)
    except (pa.ArrowInvalid, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: cannot be read as a neighbour file ({first})") from None


LABEL_COLUMNS = ("cluster", "genres")  # default label columns, first present wins
TITLE_COLUMNS = ("title", "name")      # default title columns, first present wins


@dataclass(frozen=True)
class ItemInfo:
    """Item metadata aligned with the matrix columns.

    Attributes
    ----------
    labels : scipy.sparse.csr_matrix or None
        Boolean (n_items, n_labels) label sets, or None without labels.
    label_source : str or None
        The item column the labels came from (``cluster``, ``genres``, ``tags``, ...).
    titles : numpy.ndarray
        (n_items,) object array of display names (the item id when there is none).
    single_label : bool
        At most one label per item (clusters, categories).
    label_text : numpy.ndarray or None
        (n_items,) object array: each item's labels as text ("" when unlabelled).
    title_source : str or None
        The item column the titles came from; None: titles are the item ids.
    """

    labels: sp.csr_matrix | None
    label_source: str | None
    titles: np.ndarray
    single_label: bool = False
    label_text: np.ndarray | None = None
    title_source: str | None = None

    @property
    def n_unlabelled(self) -> int:
        """Items of the matrix without any label (all of them when there are no labels)."""
        if self.labels is None:
            return len(self.titles)
        return int((np.diff(self.labels.indptr) == 0).sum())


def _pick_column(table: pa.Table, path, chosen: str | None, defaults: tuple[str, ...],
                 parameter: str) -> str | None:
    """The column to use: ``chosen`` (must exist), else the first of ``defaults`` present."""
    if chosen is None:
        return next((c for c in defaults if c in table.column_names), None)
    if chosen not in table.column_names:
        raise UserError(f"{path}: {parameter} '{chosen}' is not a column "
                        f"(columns: {', '.join(table.column_names)})")
    return chosen


def read_item_info(path: str | Path | None, item_ids: pa.Array, label_col: str | None = None,
                   title_col: str | None = None) -> ItemInfo:
    """Labels and titles from an item table keyed by ``item_id``, aligned with ``item_ids``.

    Parameters
    ----------
    path : str or Path or None
        Parquet item table with an ``item_id`` column; None: no labels, ids as titles.
    item_ids : pyarrow.Array
        The matrix's item vocabulary.
    label_col : str, optional
        Column of ground-truth labels (default: the first of :data:`LABEL_COLUMNS` present):
        an integer or string column gives one label per item, a list column a set of labels.
    title_col : str, optional
        Column of display names (default: the first of :data:`TITLE_COLUMNS` present).

    Returns
    -------
    ItemInfo
        Items absent from the table, or with a null title, are shown by id and unlabelled.
    """
    ids_text = np.array([str(v) for v in item_ids.to_pylist()], dtype=object)
    if path is None:
        for parameter, chosen in (("label_col", label_col), ("title_col", title_col)):
            if chosen:
                raise UserError(f"{parameter} '{chosen}': no item table (give items, or "
                                f"record one with `bigcos ingest --items`)")
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
    title_source = _pick_column(table, path, title_col, TITLE_COLUMNS, "title_col")
    if title_source is not None:
        values = np.array(table.column(title_source).to_pylist(), dtype=object)[row]
        known = present & np.array([v is not None for v in values], dtype=bool)
        titles = np.where(known, values.astype(str), ids_text)
    label_source = _pick_column(table, path, label_col, LABEL_COLUMNS, "label_col")
    if label_source is None:
        return ItemInfo(None, None, titles, title_source=title_source)
    column = table.column(label_source).combine_chunks()
    values = column.to_pylist()
    aligned = [values[r] if ok else None for r, ok in zip(row, present, strict=True)]
    single = not (pa.types.is_list(column.type) or pa.types.is_large_list(column.type))
    sets = [([v] if v is not None else []) if single else list(v or []) for v in aligned]
    text = np.array(["|".join(str(x) for x in s) for s in sets], dtype=object)
    return ItemInfo(metrics.label_sets(sets), label_source, titles, single_label=single,
                    label_text=text, title_source=title_source)


def single_labels(sets: sp.csr_matrix) -> np.ndarray:
    """The first label of each row of a label-set matrix, -1 for none: (n_items,) int64."""
    out = np.full(sets.shape[0], -1, dtype=np.int64)
    has = np.diff(sets.indptr) > 0
    out[has] = sets.indices[sets.indptr[:-1][has]]
    return out


def item_popularity(train: sp.csr_matrix) -> np.ndarray:
    """Number of distinct users per item in ``train``: (n_items,) int64."""
    return np.bincount(train.indices, minlength=train.shape[1]).astype(np.int64)


def example_indices(examples: tuple[str, ...], item_ids: pa.Array, matrix: str) -> np.ndarray:
    """Matrix column indices of the example item ids (compared as text): (len(examples),).

    Raises a one-line UserError for an id that is not a column of the matrix (never in the
    log, or dropped by the ingest filters such as ``min_item``).
    """
    where = {str(v): i for i, v in enumerate(item_ids.to_pylist())}
    for e in examples:
        if e not in where:
            raise UserError(f"example item {e}: not in the matrix {matrix} ({len(where):,} "
                            f"items; an item can be missing from the log or dropped by "
                            f"ingest filters such as min_item)")
    return np.array([where[e] for e in examples], dtype=np.int64)


def check_model_matches(model, data, matrix: str, directory: str) -> None:
    """UserError (one line) unless ``model`` was fit on this matrix (same user and item ids).

    Parameters
    ----------
    model : bigcos.models.Model
    data : bigcos.matrix.Interactions
    matrix, directory : str
        The matrix and model directories, for the message.
    """
    for side, mine, theirs in (("item", data.item_ids, model.item_ids),
                               ("user", data.user_ids, model.user_ids)):
        if len(mine) != len(theirs) or mine.type != theirs.type or not mine.equals(theirs):
            raise UserError(f"{directory}: model '{model.name}' was fit on another matrix "
                            f"({model.matrix_dir or 'unknown'}): its {len(theirs):,} {side} ids "
                            f"differ from the {len(mine):,} of {matrix}")


# --------------------------------------------------------------------------- matrix by shards
@dataclass(frozen=True)
class RowBlock:
    """Rows [start, stop) of a matrix, as one held-out task reads them: a train/test shard
    loaded by path where the task runs (``shard``, heldout flags from ``users_file``), or
    matrices in memory (``train``, ``test``, ``heldout``) for an in-process run."""

    start: int
    stop: int
    shard: Shard | None = None
    users_file: str | None = None
    train: sp.csr_matrix | None = None
    test: sp.csr_matrix | None = None
    heldout: np.ndarray | None = None

    def load(self, test: bool = True
             ) -> tuple[sp.csr_matrix, sp.csr_matrix | None, np.ndarray | None]:
        """(train rows, test rows (None unless ``test``), heldout flags of the rows or None).
        Memory: the shard's CSR (12 bytes per non-zero) and the users file's flags."""
        if self.shard is None:
            return self.train, self.test if test else None, self.heldout
        heldout = None
        if self.users_file is not None:
            fs, where = storage.filesystem_and_path(self.users_file)
            column = pq.read_table(where, columns=["heldout"], filesystem=fs).column("heldout")
            heldout = column.to_numpy().astype(bool)[self.start:self.stop]
        return (self.shard.load("train"), self.shard.load("test") if test else None,
                heldout)


def row_blocks(data, train_only: bool = False) -> list[RowBlock] | None:
    """The row blocks of ``data`` (an Interactions: one block in memory; a matrix directory:
    one per shard), None without a test part unless ``train_only``."""
    if hasattr(data, "train"):
        if data.test is None and not train_only:
            return None
        return [RowBlock(0, data.train.shape[0], train=data.train, test=data.test,
                         heldout=data.heldout_users)]
    matrix = MatrixShards(data)
    if not matrix.has_test and not train_only:
        return None
    users_file = matrix.directory / "users.parquet"
    fs, where = storage.filesystem_and_path(users_file)
    has_flags = "heldout" in pq.read_schema(where, filesystem=fs).names
    return [RowBlock(s.start, s.stop, shard=s, users_file=str(users_file) if has_flags else None)
            for s in matrix.shards]


@dataclass(frozen=True)
class MatrixSummary:
    """What a report needs of a matrix directory, without its matrices in this process.

    Attributes
    ----------
    directory : Path
        The matrix directory (its shards are read by tasks, :func:`row_blocks`).
    user_ids, item_ids : pyarrow.Array
        The vocabularies (row and column order): n and p ids.
    popularity : numpy.ndarray
        (p,) int64 users per item in the fitted rows (:func:`item_popularity` of
        ``fit_matrix``), summed over shards.
    """

    directory: Any
    user_ids: pa.Array
    item_ids: pa.Array
    popularity: np.ndarray


def _shard_popularity(block: RowBlock, n_items: int) -> np.ndarray:
    train, _, heldout = block.load(test=False)
    if heldout is not None and heldout.any():
        train = train[np.flatnonzero(~heldout)]
    return np.bincount(train.indices, minlength=n_items).astype(np.int64)


def matrix_summary(matrix_dir: str | Path, client=None) -> MatrixSummary:
    """Ids and item popularity of a matrix directory: one Dask task per train shard on
    ``client`` (None: threads here), each returning p counts. Memory here: n + p ids and
    p counts per shard."""
    matrix = MatrixShards(matrix_dir)
    d = matrix.directory
    users = io.read_table(d / "users.parquet").column("user_id").combine_chunks()
    items = io.read_table(d / "items.parquet").column("item_id").combine_chunks()
    blocks = row_blocks(matrix_dir, train_only=True)
    counts = run_tasks([task(_shard_popularity)(b, len(items)) for b in blocks], client)
    popularity = np.sum(counts, axis=0, dtype=np.int64) if counts else np.zeros(len(items),
                                                                               np.int64)
    return MatrixSummary(d, users, items, popularity)
