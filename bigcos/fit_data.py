"""What a closed-form fit reads of its matrix: the whole CSR in memory, or its shards on workers.

:func:`load_fit_data` returns a :class:`FitData`: the counts, the item ids, the validation
users (m <= ``Selection.max_users`` rows), the column sums of the fit rows
(:class:`bigcos.column_remedies.ColumnSums`: column remedy, colsum, ||X~||_F^2), the input
of the SVD, and :meth:`FitData.write_users`, which computes P = X~ V_k and writes every
model's user embeddings X~ A = P dMat(a).

Two implementations give the same bits on the same matrix directory:

- :class:`InMemoryFit` loads the matrix (:func:`bigcos.matrix.load_matrix`), as fits always
  did; with several shards its sums and SVD row blocks follow the shards.
- :class:`ShardedFit` never stacks the matrix. Tasks load one shard each, where they run:
  a scan (fit-row and eligible-row counts per shard), the validation rows' CSR, the
  segments' column sums and row blocks (:func:`bigcos.shard_gram.summarize`), the SVD passes
  (:class:`bigcos.shard_gram.ShardGramOperator`), and the projection, which writes one user
  part per shard and model (:func:`bigcos.user_parts.write_part`) straight into the output.
  This process receives per-shard counts, (p,) sums, p x l pass results, (k,) column norms
  and the validation rows: never X, an n x k array or an n-length array.

Validation rows are drawn from counts alone (:func:`bigcos.evaluation.draw_positions`:
positions among the eligible rows in row order), so both paths pick the same rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from bigcos import io, storage
from bigcos.column_remedies import ColumnSums, Preprocessing, column_sums, scale_rows
from bigcos.dask_tasks import shared
from bigcos.errors import UserError
from bigcos.evaluation import draw_positions, hide_items, validation_split
from bigcos.gram import row_block, segment_blocks
from bigcos.projection import column_sq_norms, project_block, project_rows, projection_operands
from bigcos.shard_gram import FitShard, fit_candidates, read_user_rows, summarize
from bigcos.shards import MatrixShards, Shard
from bigcos.user_parts import write_part

# (model directory, kept (k,) bool, a (k,)): what the projection writes for one model
Target = tuple[Path | storage.StorePath, np.ndarray, np.ndarray]


@dataclass
class FitData:
    """The fit's view of a matrix (see the module docstring).

    ``val``: (rows (m,), fold_in CSR (m, p), held_out CSR (m, p)) or None; ``svd_input``: the
    fit rows as a CSR (with ``row_blocks``) or a :class:`bigcos.shard_gram.ShardedRows`;
    ``dtype``: of the row-scaled data.
    """

    n_users: int
    n_items: int
    train_nnz: int
    item_ids: pa.Array
    n_fit: int
    val: tuple[np.ndarray, sp.csr_matrix, sp.csr_matrix] | None
    sums: ColumnSums
    svd_input: object
    row_blocks: list[tuple[int, int]] | None
    dtype: np.dtype

    def write_users(self, targets: list[Target], V: np.ndarray, col_center, col_scale,
                    svd, client=None) -> np.ndarray:
        """Write every target's user embeddings (P[:, kept] * a[kept]); return ||X~ v_i||^2
        over the fit rows, (k,) float64."""
        raise NotImplementedError


@dataclass
class InMemoryFit(FitData):
    """A fit of the whole matrix held in this process."""

    train: sp.csr_matrix = None
    user_ids: pa.Array = None
    fit_rows: np.ndarray = None
    segments: list[tuple[int, int, int]] = None  # (shard start row, a, b): fit rows [a, b)

    def write_users(self, targets, V, col_center, col_scale, svd, client=None):
        P = project_rows(self.train, V, col_center, col_scale, svd.block_rows,
                         dtype=np.dtype(svd.dtype), client=client)
        p_sq = [column_sq_norms(P[start:], self.fit_rows[a:b] - start)
                for start, a, b in self.segments]
        for target, kept, a in targets:
            users = P[:, kept]  # a copy, scaled in place: one (n, k) array per model
            users *= a[kept].astype(users.dtype)
            write_part(target, 0, 1, self.user_ids, users)
        return _add_in_order(p_sq)


def _add_in_order(parts: list[np.ndarray]) -> np.ndarray:
    out = parts[0]
    for part in parts[1:]:
        out = out + part
    return out


def load_in_memory(matrix_dir, preprocessing: Preprocessing, selection, svd) -> InMemoryFit:
    """:class:`InMemoryFit` of a matrix directory (memory: the matrix, twice with the row
    remedy)."""
    from bigcos.matrix import load_matrix

    data = load_matrix(matrix_dir)
    fit_rows, val = data.fit_rows, None
    dtype = np.result_type(data.train.dtype, svd.dtype)
    if selection is not None:  # validation users: drawn from the fit rows, not fit on
        val = validation_split(data.train, fit_rows, selection.fraction, selection.holdout,
                               selection.seed, getattr(selection, "rows", None),
                               max_rows=selection.max_users)
        fit_rows = np.setdiff1d(fit_rows, val[0])
    # the row remedy scales every row (fitted and folded in) by its own count^-gamma
    train = scale_rows(data.train, preprocessing.rows(data.train), dtype)
    X_fit = train if len(fit_rows) == train.shape[0] else train[fit_rows]
    starts = [s.start for s in MatrixShards(matrix_dir).shards]
    cuts = np.searchsorted(fit_rows, [*starts, data.train.shape[0]])
    segments = [(start, int(a), int(b))
                for start, a, b in zip(starts, cuts[:-1], cuts[1:], strict=True)]
    sums = ColumnSums.combine([column_sums(row_block(X_fit, a, b, X_fit.dtype))
                               for _, a, b in segments])
    row_blocks = segment_blocks(X_fit, [(a, b) for _, a, b in segments], svd.block_rows)
    return InMemoryFit(data.train.shape[0], data.train.shape[1], int(data.train.nnz),
                       data.item_ids, len(fit_rows), val, sums, X_fit, row_blocks, dtype,
                       train=train, user_ids=data.user_ids, fit_rows=fit_rows,
                       segments=segments)


# --------------------------------------------------------------------------- sharded
def _scan(shard: Shard, users_file: str) -> tuple[int, int]:
    """(fit candidates, candidates with >= 2 items) of one shard."""
    counts = np.diff(shard.load("train").indptr)
    candidates = fit_candidates(shard, users_file)
    return int(candidates.sum()), int((candidates & (counts >= 2)).sum())


def _validation_rows(shard: Shard, users_file: str, positions: np.ndarray
                     ) -> tuple[np.ndarray, sp.csr_matrix]:
    """The shard's validation rows (local indices) at ``positions`` among its eligible rows,
    and their train rows (CSR (m_s, p))."""
    train = shard.load("train")
    eligible = np.flatnonzero(fit_candidates(shard, users_file)
                              & (np.diff(train.indptr) >= 2))
    rows = eligible[positions]
    return rows, train[rows].tocsr()


def _project_shard(fs: FitShard, W: np.ndarray, offset, targets: list[Target],
                   n_shards: int) -> np.ndarray:
    """P_s = X~_s V for every row of the shard; write each target's part; return the (k,)
    squared column norms of P_s over the shard's fit rows."""
    P = project_block(fs.scaled(), W, offset)
    p_sq = column_sq_norms(P, np.flatnonzero(fs.fit_mask()))
    ids = read_user_rows(fs.users_file, fs.shard.start, fs.shard.stop,
                         ["user_id"]).column("user_id").combine_chunks()
    for target, kept, a in targets:
        users = P[:, kept]
        users *= a[kept].astype(users.dtype)
        write_part(target, fs.shard.index, n_shards, ids, users)
    return p_sq


@dataclass
class ShardedFit(FitData):
    """A fit whose matrix stays in its shard files, read by the tasks that use them."""

    shards: list[FitShard] = None

    def write_users(self, targets, V, col_center, col_scale, svd, client=None):
        import dask

        W, offset = projection_operands(V, col_center, col_scale, np.dtype(svd.dtype))
        W_task = shared(W, client)
        tasks = [dask.delayed(_project_shard, pure=False)(fs, W_task, offset, targets,
                                                          len(self.shards))
                 for fs in self.shards]
        return _add_in_order(list(dask.compute(*tasks, scheduler=client or "threads")))


def load_sharded(matrix_dir, preprocessing: Preprocessing, selection, svd,
                 client=None) -> ShardedFit:
    """:class:`ShardedFit` of a matrix directory: three small passes over the shards (scan,
    validation rows, sums and row blocks), on ``client`` (None: threads here)."""
    import dask

    matrix = MatrixShards(matrix_dir)
    n, p = matrix.shape
    users_file = str(matrix.directory / "users.parquet")
    item_ids = io.read_table(matrix.directory / "items.parquet",
                             columns=["item_id"]).column("item_id").combine_chunks()
    dtype = np.result_type(np.float32, svd.dtype)  # shards hold float32
    scheduler = client or "threads"
    scans = dask.compute(*[dask.delayed(_scan, pure=False)(s, users_file)
                           for s in matrix.shards], scheduler=scheduler)
    n_candidates = sum(c for c, _ in scans)
    local = [np.zeros(0, np.int64) for _ in matrix.shards]
    val = None
    if selection is not None:
        rng = np.random.default_rng(selection.seed)
        positions = draw_positions(rng, n_candidates, sum(e for _, e in scans),
                                   selection.fraction, selection.max_users)
        edges = np.concatenate([[0], np.cumsum([e for _, e in scans])])
        cuts = np.searchsorted(positions, edges)
        todo = [i for i in range(len(scans)) if cuts[i + 1] > cuts[i]]
        found = dask.compute(*[dask.delayed(_validation_rows, pure=False)(
            matrix.shards[i], users_file, positions[cuts[i]:cuts[i + 1]] - edges[i])
            for i in todo], scheduler=scheduler)
        for i, (rows, _) in zip(todo, found, strict=True):
            local[i] = rows
        rows = np.concatenate([np.zeros(0, np.int64)] + [
            matrix.shards[i].start + r for i, (r, _) in zip(todo, found, strict=True)])
        sub = (sp.vstack([s for _, s in found], format="csr") if found
               else sp.csr_matrix((0, p), dtype=np.float32))
        val = (rows.astype(np.int64), *hide_items(sub, selection.holdout, rng))
    fit_shards = [FitShard(s, users_file, tuple(int(r) for r in local[i]), preprocessing,
                           np.dtype(dtype).name) for i, s in enumerate(matrix.shards)]
    rows_info = summarize(fit_shards, p, svd.block_rows, client)
    return ShardedFit(n, p, matrix.nnz["train"], item_ids, rows_info.shape[0], val,
                      rows_info.sums, rows_info, None, np.dtype(dtype), shards=fit_shards)


def load_fit_data(matrix_dir, preprocessing: Preprocessing, selection, svd,
                  in_memory: bool | None = None, client=None) -> FitData:
    """The matrix as a fit reads it.

    Parameters
    ----------
    matrix_dir : Path or StorePath
    preprocessing : Preprocessing
    selection : bigcos.validation.Selection or None
        Draws the validation rows (None: none).
    svd : bigcos.models.SVDOptions
        ``dtype``, ``block_rows`` and ``exact`` matter here.
    in_memory : bool, optional
        True: load the whole matrix (:class:`InMemoryFit`); False: work from the shards
        (:class:`ShardedFit`); None: from the shards when there are several and ``svd.exact``
        is off.
    client : distributed.Client, optional
        Where the sharded passes run (None: threads in this process).

    Returns
    -------
    FitData
    """
    if in_memory is None:
        in_memory = len(MatrixShards(matrix_dir).shards) == 1 or svd.exact
    if in_memory:
        return load_in_memory(matrix_dir, preprocessing, selection, svd)
    if svd.exact:
        raise UserError("in_memory: the exact SVD (exact=True) needs the matrix in memory; "
                        "pass in_memory=True or None")
    return load_sharded(matrix_dir, preprocessing, selection, svd, client)
