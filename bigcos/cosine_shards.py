"""The rows of the cosine-trained fit (:mod:`bigcos.cosine_fit`) in memory or in shards.

:func:`cosine_rows` gives what :func:`bigcos.cosine_fit.fit_cosine` reads of its matrix:
the validation rows, ||X||_F^2 of the training rows, the SVD input, a ``terms(A, Q, gram_q)``
pass for the loss and gradient, and :meth:`CosineRows.write_users` (every user's
tau^(1/2) N(x_u A)).

In memory (:class:`InMemoryRows`) the training rows are one float64 CSR, as before; from the
shards (:class:`ShardedCosineRows`) every pass is one task per shard on the shard's training
rows, loaded where the task runs (:class:`bigcos.shard_gram.FitShard`) and persisted on the
workers for the whole optimisation; user embeddings are written one part per shard by the
workers. Both sum the same block terms in the same order, with blocks that never cross a
shard, so both give the same bits on the same matrix directory (a one-shard matrix: the
blocks of before).
"""

from __future__ import annotations

import types
import uuid
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from bigcos import cosine_model
from bigcos.dask_tasks import shared
from bigcos.fit_data import load_in_memory, load_sharded
from bigcos.gram import default_block_count, row_block, row_bounds, segment_blocks
from bigcos.shard_gram import FitShard, read_user_rows
from bigcos.user_parts import write_part

PROJECT_ROWS = 1 << 16  # rows of X per product when embedding users


def embed_rows(X: sp.csr_matrix, A: np.ndarray) -> np.ndarray:
    """N(X A) (n, k) float64, PROJECT_ROWS rows at a time (row i depends on row i alone)."""
    parts = [cosine_model.normalize_rows(np.asarray(X[s:s + PROJECT_ROWS] @ A, np.float64))[0]
             for s in range(0, X.shape[0], PROJECT_ROWS)]
    return np.vstack(parts) if parts else np.zeros((0, A.shape[1]))


def _sq_norm(X: sp.csr_matrix) -> float:
    """||X||_F^2 in float64, summed as scipy sums one CSR."""
    X = X.astype(np.float64)
    return float(X.multiply(X).sum())


def _segment_terms(seg: sp.csr_matrix, block_rows, A, Q, gram_q) -> list:
    """The block terms of one shard's training rows, its blocks in row order."""
    return [cosine_model.block_terms(row_block(seg, a, b, np.dtype(np.float64)), A, Q, gram_q)
            for a, b in row_bounds(seg, block_rows, default_block_count(seg.nnz))]


def _sum_lists(lists: list[list]) -> cosine_model.BlockTerms:
    return cosine_model.sum_terms([t for part in lists for t in part])


@dataclass
class CosineRows:
    """What the cosine fit reads (see the module docstring)."""

    n_users: int
    n_items: int
    train_nnz: int
    item_ids: pa.Array
    n_fit: int
    val: tuple | None
    n_train: int
    sq_norm: float
    svd_input: object
    row_blocks: list | None
    n_blocks: int


@dataclass
class InMemoryRows(CosineRows):
    train: sp.csr_matrix = None
    user_ids: pa.Array = None
    blocks: list = None

    def terms(self, client):
        from bigcos.cosine_fit import _DaskTerms, _ThreadTerms

        return _DaskTerms(client, self.blocks) if client is not None else \
            _ThreadTerms(self.blocks)

    def write_users(self, model_dir, A: np.ndarray, root_tau: float, client=None) -> None:
        write_part(model_dir, 0, 1, self.user_ids, root_tau * embed_rows(self.train, A))


def _embed_shard(fs: FitShard, A: np.ndarray, root_tau: float, model_dir, n_shards: int):
    ids = read_user_rows(fs.users_file, fs.shard.start, fs.shard.stop,
                         ["user_id"]).column("user_id").combine_chunks()
    write_part(model_dir, fs.shard.index, n_shards, ids,
               root_tau * embed_rows(fs.shard.load("train"), A))


class _SegmentTerms:
    """``terms(A, Q, gram_q)``: one task per shard over its persisted training rows."""

    def __init__(self, shards: list[FitShard], block_rows, client):
        import dask

        self.client, self.block_rows = client, block_rows
        tag = uuid.uuid4().hex
        segs = [dask.delayed(FitShard.load)(fs, dask_key_name=f"bigcos-fit-segment-{i}-{tag}")
                for i, fs in enumerate(shards)]
        self.segments = (client.persist(segs) if client is not None else
                         [dask.delayed(s) for s in dask.compute(*segs, scheduler="threads")])

    def __call__(self, A, Q, gram_q) -> cosine_model.BlockTerms:
        import dask

        a, q, g = (shared(x, self.client) for x in (A, Q, gram_q))
        lists = [dask.delayed(_segment_terms, pure=False)(s, self.block_rows, a, q, g)
                 for s in self.segments]
        (total,) = dask.compute(dask.delayed(_sum_lists)(lists),
                                scheduler=self.client or "threads")
        return total

    def close(self) -> None:
        if self.client is not None:
            from distributed import futures_of

            self.client.cancel(futures_of(self.segments))
        self.segments = []


@dataclass
class ShardedCosineRows(CosineRows):
    shards: list = None
    block_rows: int | None = None

    def terms(self, client):
        return _SegmentTerms(self.shards, self.block_rows, client)

    def write_users(self, model_dir, A: np.ndarray, root_tau: float, client=None) -> None:
        import dask

        A_task = shared(A, client)
        dask.compute(*[dask.delayed(_embed_shard, pure=False)(fs, A_task, root_tau, model_dir,
                                                              len(self.shards))
                       for fs in self.shards], scheduler=client or "threads")


def cosine_rows(matrix_dir, options, in_memory: bool, client=None,
                validation_rows=None) -> CosineRows:
    """The rows of a cosine fit of ``matrix_dir`` (``options``: :class:`CosineOptions`),
    in memory or from the shards (passes on ``client``; None: threads here). Given
    ``validation_rows`` are validated on the whole matrix (in memory only)."""
    import dask

    selection = (types.SimpleNamespace(fraction=options.validation_fraction,
                                       holdout=options.validation_holdout, seed=options.seed,
                                       max_users=options.validation_max_users,
                                       rows=validation_rows)
                 if options.validation_fraction > 0 or validation_rows is not None else None)
    svd = types.SimpleNamespace(dtype="float64", block_rows=None, exact=False)
    if in_memory:
        data = load_in_memory(matrix_dir, _no_remedy(), selection, svd)
        X, segs = data.svd_input, [(a, b) for _, a, b in data.segments]
        blocks = [row_block(X, a, b, np.dtype(np.float64))
                  for a, b in segment_blocks(X, segs, options.block_rows)]
        sq = _fold([_sq_norm(row_block(X, a, b, X.dtype)) for a, b in segs])
        return InMemoryRows(data.n_users, data.n_items, data.train_nnz, data.item_ids,
                            data.n_fit + _m(data.val), data.val, data.n_fit, sq, X,
                            data.row_blocks, len(blocks), train=data.train,
                            user_ids=data.user_ids, blocks=blocks)
    data = load_sharded(matrix_dir, _no_remedy(), selection, svd, client)
    norms = dask.compute(*[dask.delayed(lambda fs: _sq_norm(fs.load()), pure=False)(fs)
                           for fs in data.shards], scheduler=client or "threads")
    n_blocks = sum(len(b) for b in data.svd_input.bounds) if options.block_rows is None else 0
    return ShardedCosineRows(data.n_users, data.n_items, data.train_nnz, data.item_ids,
                             data.n_fit + _m(data.val), data.val, data.n_fit,
                             _fold(list(norms)), data.svd_input, None, n_blocks,
                             shards=data.shards, block_rows=options.block_rows)


def _fold(values: list[float]) -> float:
    total = values[0]
    for v in values[1:]:
        total = total + v
    return total


def _m(val) -> int:
    return 0 if val is None else len(val[0])


def _no_remedy():
    from bigcos.column_remedies import Preprocessing

    return Preprocessing()
