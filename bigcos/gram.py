"""The Gram operator A = X~^T X~ of a sparse, implicitly centred and scaled X, as Dask passes.

X~ = (X - 1 mu^T) diag(s) is never formed, nor A:

    A Q = S [X^T X (S Q) - c (mu^T S Q) - mu (c^T S Q) + n mu (mu^T S Q)],   c = X^T 1,

where X^T X (S Q) = sum_b X_b^T (X_b (S Q)) streams once over the row blocks X_b of X (one
"pass": one Dask task per block, tree-summed). The row partition is a function of the data
alone (:func:`default_block_count`; for a matrix of several shards, of each shard's rows:
:func:`segment_blocks`), so the order of the float sums, and the result, is the same on any
scheduler and worker count. :func:`pass_client` decides where passes run.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import numpy as np
import scipy.sparse as sp

from bigcos.dense import RowChunks
from bigcos.errors import UserError

SCHEDULERS = ("auto", "threads", "distributed")
BLOCK_NNZ = 5_000_000  # default row-block size in non-zeros (see default_block_count)
MAX_BLOCKS = 8


def pass_client(client, scheduler: str):
    """The ``distributed.Client`` the passes should run on, or None for threads in this process.

    Parameters
    ----------
    client : distributed.Client or None
        The client the caller owns; never looked up here.
    scheduler : {"auto", "threads", "distributed"}
        ``threads``: None. ``distributed``: ``client`` (required). ``auto``: None without a
        client or when ``client.cluster`` is a ``LocalCluster`` (its workers share this
        host's cores, so shipping the p x l operand to them each pass only costs time: 1.5x
        slower on the bench matrix), else ``client`` (a remote scheduler).

    Returns
    -------
    distributed.Client or None
    """
    if scheduler not in SCHEDULERS:
        raise UserError(f"scheduler={scheduler!r}: must be one of {', '.join(SCHEDULERS)}")
    if scheduler == "threads" or client is None:
        if scheduler == "distributed":
            raise UserError("scheduler='distributed' needs a client: pass client=<a "
                            "distributed.Client> (or scheduler='threads')")
        return None
    if scheduler == "auto":
        from distributed import LocalCluster

        if isinstance(getattr(client, "cluster", None), LocalCluster):
            return None
    return client


def default_block_count(nnz: int) -> int:
    """Row blocks of X when ``block_rows`` is not given: a function of the data alone.

    The partition fixes the order of the float sums, so making it independent of the number
    of workers makes the result bitwise identical on any cluster. One block per 5M non-zeros,
    at most ``MAX_BLOCKS``: every block writes a whole p x l partial sum, so fewer, larger
    blocks move less memory (on 2 cores, 200,000 x 50,000 x 10M nnz at k = 256: passes take
    3.4 s in 2 blocks, 4.1 s in 4, 5.2 s in 8). On a larger cluster pass ``block_rows``.

    Parameters
    ----------
    nnz : int
        Non-zeros of X.

    Returns
    -------
    int
        ceil(nnz / 5M), clipped to [1, 8].
    """
    return int(min(MAX_BLOCKS, max(1, -(-nnz // BLOCK_NNZ))))


def row_bounds(X: sp.csr_matrix, block_rows: int | None, n_blocks: int) -> list[tuple]:
    """Row ranges [a, b): ``block_rows`` rows each, else ``n_blocks`` of about equal nnz."""
    n = X.shape[0]
    if block_rows is not None:
        edges = list(range(0, n, block_rows)) + [n]
    else:
        targets = np.linspace(0, X.nnz, min(n_blocks, n) + 1)[1:-1]
        inner = np.searchsorted(X.indptr, targets, side="left")
        edges = sorted({0, n, *map(int, inner)})
    return [(a, b) for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]


def segment_blocks(X: sp.csr_matrix, segments: list[tuple[int, int]],
                   block_rows: int | None) -> list[tuple[int, int]]:
    """Row blocks of X that never cross a segment (e.g. the rows of one matrix shard).

    Each segment [a, b) is cut by :func:`row_bounds` on its own non-zeros (``block_rows``
    rows each, else :func:`default_block_count` blocks), so the blocks, and the order of the
    Gram sums over them, depend on the segments and the data alone: the same whether the
    segments are rows of one CSR here or shards loaded on workers
    (:mod:`bigcos.shard_gram`). One segment gives the blocks of the whole matrix.

    Returns
    -------
    list of (start, stop) row ranges of X, in row order.
    """
    out = []
    for a, b in segments:
        seg = row_block(X, a, b, X.dtype)
        out += [(a + lo, a + hi) for lo, hi in row_bounds(seg, block_rows,
                                                          default_block_count(seg.nnz))]
    return out


def row_block(X: sp.csr_matrix, a: int, b: int, dtype: np.dtype) -> sp.csr_matrix:
    """Rows [a, b) of X in ``dtype``, sharing X's data and indices when no cast is needed."""
    lo, hi = X.indptr[a], X.indptr[b]
    data = X.data[lo:hi]
    return sp.csr_matrix((data if data.dtype == dtype else data.astype(dtype),
                          X.indices[lo:hi], X.indptr[a:b + 1] - lo),
                         shape=(b - a, X.shape[1]), copy=False)


def gram_block(Xb: sp.csr_matrix, q_tiles: list[np.ndarray]) -> np.ndarray:
    """X_b^T (X_b Q) for one row block, Q given as contiguous column tiles (p x t each).

    Tiling keeps the gathered rows of Q (and the scattered rows of the result) of popular
    columns in cache; scipy's CSR kernels release the GIL, so blocks run in parallel threads.
    Returns (p, sum of tile widths) in the dtype of the tiles.
    """
    width = sum(q.shape[1] for q in q_tiles)
    out = np.empty((Xb.shape[1], width), dtype=q_tiles[0].dtype)
    start = 0
    for q in q_tiles:
        t = q.shape[1]
        out[:, start:start + t] = Xb.T @ (Xb @ q)
        start += t
    return out


def _add(a: np.ndarray, b: np.ndarray, inplace: bool) -> np.ndarray:
    if inplace:
        a += b
        return a
    return a + b


def _tree_sum(parts: list, inplace: bool):
    """Pairwise tree-sum of Dask delayed arrays (depth log2(len(parts))).

    ``inplace`` reuses the left operand (threaded scheduler: each partial has one consumer);
    on a cluster a retried task must find its inputs unchanged, so it allocates.
    """
    from dask import delayed

    while len(parts) > 1:
        parts = [delayed(_add, pure=False)(parts[i], parts[i + 1], inplace)
                 if i + 1 < len(parts) else parts[i] for i in range(0, len(parts), 2)]
    return parts[0]


class GramOperator:
    """Q (p x b) -> A Q (p x b) for A = X~^T X~, one Dask pass over X each.

    The row blocks of X (cast to ``dtype``) are placed once: scattered to the workers of
    ``client``, else held in this process for Dask's threaded scheduler. Call :meth:`close`
    to release them.

    Parameters
    ----------
    X : scipy.sparse.csr_matrix, shape (n, p)
        Canonical CSR; not copied except for the cast to ``dtype``.
    blas : RowChunks
        Open pool; the small centring products run in it (single-threaded BLAS).
    dtype : numpy dtype
        float32 or float64: precision of the sparse products.
    col_center, col_scale : ndarray, shape (p,), float64, or None
        mu and s.
    block_rows : int, optional
        Rows per block (default: :func:`default_block_count` blocks of about equal nnz).
    row_blocks : list of (start, stop), optional
        The row blocks themselves (e.g. :func:`segment_blocks`), in row order, covering X;
        overrides ``block_rows``.
    colsum : ndarray, shape (p,), float64, optional
        X^T 1 when already known (used only with ``col_center``; default: computed here).
    tile_cols : int
        Width of the column tiles of Q inside a block (cache blocking; speed only).
    client : distributed.Client or None
        Run passes on its workers; None: Dask's threaded scheduler in this process.

    Notes
    -----
    Each call does 4 nnz b flops; memory: one p x b partial sum per block in flight (and a
    copy of Q per worker with a client). The result is float64 when centring or scaling is
    applied, else in ``dtype``. ``passes`` counts calls; ``timings`` holds the seconds spent
    placing blocks and in passes.
    """

    def __init__(self, X: sp.csr_matrix, *, blas: RowChunks, dtype=np.float32,
                 col_center=None, col_scale=None, block_rows: int | None = None,
                 row_blocks: list[tuple[int, int]] | None = None, colsum=None,
                 tile_cols: int = 32, client=None) -> None:
        from dask import delayed

        t0 = time.perf_counter()
        self._setup(X.shape, blas, dtype, col_center, col_scale, tile_cols, client)
        if self.mu is not None:
            self.colsum = (np.asarray(X.sum(axis=0), dtype=np.float64).ravel()
                           if colsum is None else np.asarray(colsum, np.float64))
        bounds = (row_bounds(X, block_rows, default_block_count(X.nnz)) if row_blocks is None
                  else list(row_blocks))
        blocks = [row_block(X, a, b, self.dtype) for a, b in bounds]
        self.block_rows = [int(b - a) for a, b in bounds]
        if self.client is not None:
            self._blocks = self.client.scatter(blocks, hash=False)
        else:
            tag = uuid.uuid4().hex
            self._blocks = [delayed(b, name=f"bigcos-xblock-{i}-{tag}")
                            for i, b in enumerate(blocks)]
        self.timings["place_blocks"] = time.perf_counter() - t0

    def _setup(self, shape, blas, dtype, col_center, col_scale, tile_cols, client) -> None:
        """The state every operator shares (blocks and ``colsum`` are set by the caller)."""
        self.shape = shape
        self.dtype = np.dtype(dtype)
        self.tile_cols = tile_cols
        self.mu, self.s = col_center, col_scale
        self.colsum = None
        self.client = client
        self._blas = blas
        self.passes = 0
        self.timings = {"place_blocks": 0.0, "passes": 0.0}

    def _parts(self, q) -> list:
        """One delayed partial X_b^T (X_b Q) per row block, in block order."""
        from dask import delayed

        return [delayed(gram_block, pure=False)(b, q) for b in self._blocks]

    def describe(self) -> dict[str, Any]:
        """Block layout, scheduler, shape and centring flags (for ``Spectrum.info``)."""
        return {"n_blocks": len(self.block_rows), "block_rows_max": max(self.block_rows),
                "tile_cols": self.tile_cols,
                "scheduler": "distributed" if self.client is not None else "threaded",
                "shape": list(self.shape), "col_center": self.mu is not None,
                "col_scale": self.s is not None}

    def __call__(self, Q: np.ndarray) -> np.ndarray:
        """A Q for Q of shape (p, b); returns (p, b), float64 if centred or scaled."""
        import dask
        from dask import delayed

        t0 = time.perf_counter()
        n = self.shape[0]
        SQ = Q if self.s is None else Q * self.s[:, None]
        tiles = [np.ascontiguousarray(SQ[:, a:a + self.tile_cols], dtype=self.dtype)
                 for a in range(0, SQ.shape[1], self.tile_cols)]
        if self.client is not None:
            [q] = self.client.scatter([tiles], broadcast=True, hash=False)
        else:
            q = delayed(tiles, name=f"bigcos-q-{uuid.uuid4().hex}")
        parts = self._parts(q)
        (Y,) = dask.compute(_tree_sum(parts, inplace=self.client is None),
                            scheduler=self.client or "threads")
        # An array received from a worker may sit unaligned in its network frame; numpy then
        # skips BLAS for it (slower, and rounded differently from an aligned copy).
        Y = np.require(Y, requirements=("C", "A", "W"))
        if self.mu is not None or self.s is not None:
            Y = Y.astype(np.float64)
        if self.mu is not None:
            mSQ = self._blas.call(np.matmul, self.mu, SQ)        # (b,)  mu^T S Q
            cSQ = self._blas.call(np.matmul, self.colsum, SQ)    # (b,)  c^T S Q
            Y -= np.outer(self.colsum, mSQ) + np.outer(self.mu, cSQ - n * mSQ)
        if self.s is not None:
            Y *= self.s[:, None]
        self.passes += 1
        self.timings["passes"] += time.perf_counter() - t0
        return Y

    def close(self) -> None:
        """Release the blocks (cancel their futures on the workers)."""
        if self.client is not None and self._blocks:
            self.client.cancel(self._blocks)
        self._blocks = []
