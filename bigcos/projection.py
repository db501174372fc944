"""P = X~ V_k over row blocks of the sparse matrix, with Dask: the one pass that builds user
embeddings X~ A = P dMat(a) for every closed-form model of one spectrum.

X~ V = X (S V) - 1 (mu^T S V), so X is never densified.
"""

from __future__ import annotations

import os

import numpy as np
import scipy.sparse as sp


def project_block(block: sp.csr_matrix, W: np.ndarray, offset: np.ndarray | None
                  ) -> np.ndarray:
    """X_b (S V) - 1 (mu^T S V) for some rows X_b (CSR (m, p)), with ``(W, offset)`` from
    :func:`projection_operands`. Row i of the result depends on row i of X_b alone (so any
    split of the rows, e.g. by matrix shard, gives the same bits). Returns (m, k) in W's
    dtype."""
    out = np.asarray(block.astype(W.dtype, copy=False) @ W)
    if offset is not None:
        out -= offset.astype(W.dtype)
    return out


def projection_operands(V: np.ndarray, col_center: np.ndarray | None,
                        col_scale: np.ndarray | None, dtype) -> tuple[np.ndarray, np.ndarray]:
    """(W, offset): W = S V (p, k) cast to ``dtype``, offset = mu^T S V (k,) float64 or None;
    both formed in float64."""
    W = np.asarray(V, np.float64)
    if col_scale is not None:
        W = W * np.asarray(col_scale, np.float64)[:, None]
    offset = None if col_center is None else np.asarray(col_center, np.float64) @ W
    return W.astype(dtype), offset


def project_rows(X: sp.csr_matrix, V: np.ndarray, col_center: np.ndarray | None = None,
                 col_scale: np.ndarray | None = None, block_rows: int | None = None,
                 dtype=np.float64, *, client=None) -> np.ndarray:
    """P = (X - 1 mu^T) S V over row blocks, never densifying X.

    Each block computes X_b (S V) - 1 (mu^T S V) (S V and mu^T S V are formed in float64, then
    cast). Blocks only change speed, never the result: each row is computed by the same
    product whatever the split.

    Parameters
    ----------
    X : scipy.sparse.csr_matrix, shape (n, p)
    V : ndarray, shape (p, k)
        Right singular vectors of X~.
    col_center : ndarray, shape (p,), or None
        mu of a column remedy (None: 0).
    col_scale : ndarray, shape (p,), or None
        Diagonal of S (None: 1).
    block_rows : int, optional
        Rows per Dask task (default: about 4 blocks per core, at most ~1M non-zeros each).
    dtype : numpy dtype
        Arithmetic and output type.
    client : distributed.Client, optional
        Where the blocks run: the client's workers (blocks scattered, S V broadcast once), or
        Dask's threaded scheduler in this process when None. No default client is looked up.

    Returns
    -------
    P : ndarray, shape (n, k), ``dtype``
        Memory: n k itemsize bytes, plus one (block_rows, k) block per running task.
    """
    import dask
    from dask import delayed

    W, offset = projection_operands(V, col_center, col_scale, dtype)
    n = X.shape[0]
    if block_rows is None:  # ~ 4 blocks per core, at most ~ 1M non-zeros each
        block_rows = max(1024, min(n, int(n * 1e6 / max(X.nnz, 1))))
        block_rows = min(block_rows, max(1024, -(-n // (4 * (os.cpu_count() or 1)))))
    blocks = [X[s:s + block_rows] for s in range(0, n, max(1, block_rows))]
    if not blocks:
        return np.zeros((0, W.shape[1]), dtype)
    if client is None:
        W_arg = delayed(W)
        parts = dask.compute(*[delayed(project_block)(b, W_arg, offset) for b in blocks],
                             scheduler="threads")
    else:
        scattered = client.scatter(blocks)
        W_future = client.scatter(W, broadcast=True)
        parts = client.gather(client.map(project_block, scattered, W=W_future, offset=offset))
    return np.vstack(parts)


def column_sq_norms(P: np.ndarray, rows: np.ndarray, chunk: int = 1 << 16) -> np.ndarray:
    """Squared column norms of P over some of its rows: ||X~ v_i||^2 over the fitted rows.

    Parameters
    ----------
    P : ndarray, shape (n, k)
    rows : ndarray of int, shape (m,)
        Sorted row indices.
    chunk : int
        Rows converted to float64 at a time (memory: chunk k 8 bytes).

    Returns
    -------
    ndarray, shape (k,), float64
        sum over ``rows`` of P[row, i]^2.
    """
    out = np.zeros(P.shape[1])
    for start in range(0, len(rows), chunk):
        idx = rows[start:start + chunk]
        block = P[idx[0]:idx[-1] + 1] if idx[-1] - idx[0] + 1 == len(idx) else P[idx]
        block = block.astype(np.float64, copy=False)
        out += np.einsum("ij,ij->j", block, block)
    return out
