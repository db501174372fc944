"""Truncated SVD of a sparse, implicitly centred and scaled matrix: only sigma_k and V_k.

Both objectives of the paper need only the top-k right singular vectors V_k (p x k) and the
singular values sigma_k of

    X~ = (X - 1 mu^T) diag(s)        (mu = col_center, default 0; s = col_scale, default 1),

never U_k. So everything works with the p x p Gram operator A = X~^T X~, applied without
densifying X or forming A. This module is the driver: it checks the arguments, places the
passes (:mod:`bigcos.gram`: Dask, on a client's workers or on threads in this process) and
runs the algebra (:mod:`bigcos.krylov`: pure numpy/scipy) on them; :mod:`bigcos.spectrum`
holds the result type and its files.

Accuracy is reported, not assumed: ``Spectrum.residuals[i] = ||A v_i - sigma_i^2 v_i|| /
sigma_i^2`` (divided by sigma_1^2 instead where sigma_i^2 <= 1e-12 sigma_1^2, i.e. zero).
The randomised path takes them from the Krylov relation, so they measure convergence;
rounding of float32 products adds a floor of about 1e-6 sigma_1^2 / sigma_i^2 that they do
not show (float64 agrees with dense residuals to 1e-6 relative, see tests). A residual r
bounds the error of sigma_i^2 by r sigma_i^2, and by (r sigma_i^2)^2 / gap when sigma_i^2 is
separated from the rest of the spectrum by gap: sigma is usually far more accurate than r
(bench: max residual 1e-2, max error of sigma 9e-5).
"""

from __future__ import annotations

import math
import time

import numpy as np
import scipy.sparse as sp

from bigcos.dense import RowChunks
from bigcos.errors import UserError
from bigcos.gram import SCHEDULERS, GramOperator, default_block_count, pass_client
from bigcos.krylov import block_krylov, exact_eigenpairs
from bigcos.spectrum import Spectrum, load_spectrum, save_spectrum

__all__ = ["SVD_VERSION", "Spectrum", "default_block_count", "load_spectrum", "save_spectrum",
           "sharded_truncated_svd", "truncated_svd"]

# bumped whenever the same parameters give different results (cache keys). 7: the exact
# path's dense eigh runs at one BLAS thread (its last bits depended on the thread count).
# 8: a matrix of several shards is cut into row blocks shard by shard (one shard: unchanged)
SVD_VERSION = 8
EXACT_MAX_P = 20_000
DEFAULT_OVERSAMPLING = 16
DEFAULT_N_ITER = 6


def truncated_svd(X: sp.csr_matrix, k: int, *, oversampling: int | None = None,
                  n_iter: int | None = None, seed: int = 0, dtype=np.float32,
                  exact: bool = False, col_center: np.ndarray | None = None,
                  col_scale: np.ndarray | None = None, block_rows: int | None = None,
                  tol: float | None = None, tile_cols: int = 32, client=None,
                  scheduler: str = "auto", row_blocks: list[tuple[int, int]] | None = None,
                  colsum: np.ndarray | None = None) -> Spectrum:
    """Top-k singular values and right singular vectors of X~ = (X - 1 mu^T) diag(s).

    Randomised block Krylov (Musco & Musco 2015) on A = X~^T X~, each application of A one
    pass over X; or, with ``exact``, a dense eigendecomposition of A.

    Parameters
    ----------
    X : scipy.sparse matrix or 2-D ndarray, shape (n, p)
        CSR preferred (other formats are converted). Not copied except for the cast to
        ``dtype`` (a float32 CSR with ``dtype=float32`` is used as is).
    k : int
        Singular triplets wanted: k <= min(n, p) for the randomised SVD, k <= p with
        ``exact`` (k = p is the full spectrum, zeros included when rank < p).
    oversampling : int, optional
        Extra block columns, l = k + oversampling (default 16).
    n_iter : int, optional
        Passes over X (default 6; on a flat-tailed 200,000 x 50,000 power-law matrix this
        puts every sigma_1..256 within ~1e-4 of PROPACK).
    seed : int
        Seed of the Gaussian start (``np.random.default_rng(seed)``).
    dtype : {float32, float64}
        Precision of the sparse products, the basis and its projections; centring terms and
        the Rayleigh-Ritz eigenproblem are float64, and so are the Gram matrices of the
        orthonormalisation where float32 would not resolve a block.
    exact : bool
        Dense float64 eigendecomposition of A (p x p, 8 p^2 bytes; p <= 20,000).
    col_center, col_scale : array_like, shape (p,), optional
        mu and s (finite).
    block_rows : int, optional
        Rows per Dask task (default: blocks of about 5M non-zeros, at most 8, whatever the
        cluster: :func:`bigcos.gram.default_block_count`). Changes results by float rounding.
    tol : float, optional
        Stop early once every residual of the top k is <= tol (checked after each pass).
    tile_cols : int
        Width of the column tiles of the dense operand inside a block (cache blocking;
        changes speed only).
    client : distributed.Client, optional
        The client whose workers may run the passes; never looked up if not given.
    scheduler : {"auto", "threads", "distributed"}
        Where the passes run. ``threads``: Dask's threaded scheduler in this process.
        ``distributed``: the workers of ``client`` (required): X's blocks are scattered once,
        each pass ships the p x l operand to every worker and the partial sums back.
        ``auto``: the workers when ``client`` is connected to a remote scheduler; threads
        without a client or when ``client.cluster`` is a ``LocalCluster`` (the same cores
        without the shipping: 1.5x faster on the bench matrix).
    row_blocks : list of (start, stop), optional
        The row blocks of the passes, covering X in row order (overrides ``block_rows``); e.g.
        :func:`bigcos.gram.segment_blocks` with a sharded matrix's shards as segments gives
        the blocks of :func:`sharded_truncated_svd`, so both return the same bits.
    colsum : ndarray, shape (p,), optional
        X^T 1 (float64) when already known (with ``col_center`` only).

    Returns
    -------
    Spectrum
        ``sigma`` (k,), ``V`` (p, k) float64, ``residuals`` (k,) (see the module docstring)
        and ``info`` (method, passes, block layout, scheduler, timings, ...).

    Raises
    ------
    UserError
        An argument is invalid; the message names the parameter.

    Notes
    -----
    Results are bitwise identical for any worker count, core count or scheduler: the row
    partition depends on the data alone and the dense products run over a fixed row split
    (:class:`bigcos.dense.RowChunks`).

    Cost (nnz non-zeros, l = k + oversampling, L = min(n_iter l, p)): each pass does 4 nnz l
    flops of sparse products, orthogonalisation ~4 p L l flops per pass; memory is the basis
    (p x L in ``dtype``) plus one p x l partial product per row block in flight.

    References
    ----------
    Halko, N., Martinsson, P.-G., Tropp, J. A. (2011). Finding structure with randomness:
    probabilistic algorithms for constructing approximate matrix decompositions. SIAM
    Review 53(2), 217-288.
    Musco, C., Musco, C. (2015). Randomized block Krylov methods for stronger and faster
    approximate singular value decomposition. NeurIPS 28.
    """
    t_start = time.perf_counter()
    X = _check_matrix(X)
    n, p = X.shape
    dtype = _check_dtype(dtype)
    mu, s = _check_vector(col_center, p, "col_center"), _check_vector(col_scale, p, "col_scale")
    k = _check_int(k, "k", 1)
    if scheduler not in SCHEDULERS:
        raise UserError(f"scheduler={scheduler!r}: must be one of {', '.join(SCHEDULERS)}")
    if exact:
        if k > p:
            raise UserError(f"k={k}: k must be <= p = {p} (the columns of X) for exact")
        if p > EXACT_MAX_P:
            raise UserError(f"exact: p = {p} columns need a dense {p} x {p} Gram matrix "
                            f"(limit {EXACT_MAX_P}); set exact=False for the randomised SVD")
        return _exact(X, k, mu, s, t_start)
    if k > min(n, p):
        raise UserError(f"k={k}: k must be <= min(n, p) = {min(n, p)} for the randomised SVD "
                        f"of X with shape {n} x {p} (with exact, k may be up to p)")
    oversampling, n_iter, tile_cols = _check_krylov(oversampling, n_iter, tile_cols, tol)
    if block_rows is not None:
        block_rows = _check_int(block_rows, "block_rows", 1)
    if row_blocks is not None:
        _check_row_blocks(row_blocks, n)
    # RowChunks runs the tall products in parallel over a fixed split, each at one BLAS
    # thread: results do not depend on the core count
    with RowChunks() as blas:
        op = GramOperator(X, blas=blas, dtype=dtype, col_center=mu, col_scale=s,
                          block_rows=block_rows, row_blocks=row_blocks, colsum=colsum,
                          tile_cols=tile_cols, client=pass_client(client, scheduler))
        return _krylov(op, k, oversampling, n_iter, seed, tol, dtype, blas, t_start)


def sharded_truncated_svd(rows, k: int, *, oversampling: int | None = None,
                          n_iter: int | None = None, seed: int = 0, dtype=np.float32,
                          col_center: np.ndarray | None = None,
                          col_scale: np.ndarray | None = None, tol: float | None = None,
                          tile_cols: int = 32, client=None, scheduler: str = "auto",
                          keep_segments: bool | None = None) -> Spectrum:
    """:func:`truncated_svd` of the fit rows of a sharded matrix, loaded on the workers.

    Parameters
    ----------
    rows : bigcos.shard_gram.ShardedRows
        The fit rows (:func:`bigcos.shard_gram.summarize`): every pass is one task per row
        block of a shard's segment, over segments persisted where they were loaded.
    k, oversampling, n_iter, seed, dtype, col_center, col_scale, tol, tile_cols
        As :func:`truncated_svd` (no ``exact``: the fit loads the matrix for it).
    client : distributed.Client, optional
    scheduler : {"auto", "threads", "distributed"}
        ``auto`` and ``distributed``: the workers of ``client`` (this process never holds the
        matrix); ``threads`` or no client: threads in this process.
    keep_segments : bool, optional
        Keep the loaded rows between passes, else load them again every pass (None: keep
        them while they fit, :class:`bigcos.shard_gram.ShardGramOperator`); same results.

    Returns
    -------
    Spectrum
        Bitwise the spectrum of :func:`truncated_svd` on the stacked fit rows with
        ``row_blocks=segment_blocks(X_fit, shard segments, block_rows)``, for any number of
        workers. Memory here: the Krylov basis (p x L) and one p x l partial sum.
    """
    from bigcos.shard_gram import ShardGramOperator, shard_pass_client

    t_start = time.perf_counter()
    n, p = rows.shape
    dtype = _check_dtype(dtype)
    mu, s = _check_vector(col_center, p, "col_center"), _check_vector(col_scale, p, "col_scale")
    k = _check_int(k, "k", 1)
    if k > min(n, p):
        raise UserError(f"k={k}: k must be <= min(n, p) = {min(n, p)} for the randomised SVD "
                        f"of X with shape {n} x {p}")
    oversampling, n_iter, tile_cols = _check_krylov(oversampling, n_iter, tile_cols, tol)
    with RowChunks() as blas:
        op = ShardGramOperator(rows, blas=blas, dtype=dtype, col_center=mu, col_scale=s,
                               tile_cols=tile_cols, client=shard_pass_client(client, scheduler),
                               keep_segments=keep_segments)
        return _krylov(op, k, oversampling, n_iter, seed, tol, dtype, blas, t_start)


def _check_krylov(oversampling, n_iter, tile_cols, tol) -> tuple[int, int, int]:
    oversampling = (DEFAULT_OVERSAMPLING if oversampling is None
                    else _check_int(oversampling, "oversampling", 0))
    n_iter = DEFAULT_N_ITER if n_iter is None else _check_int(n_iter, "n_iter", 1)
    tile_cols = _check_int(tile_cols, "tile_cols", 1)
    if tol is not None and not (math.isfinite(tol) and tol > 0):
        raise UserError(f"tol={tol}: must be a positive number")
    return oversampling, n_iter, tile_cols


def _krylov(op, k: int, oversampling: int, n_iter: int, seed: int, tol, dtype, blas,
            t_start: float) -> Spectrum:
    """Block Krylov on the operator ``op`` (released at the end) and the Spectrum's info."""
    p = op.shape[1]
    block = min(k + oversampling, p)
    try:
        sigma, V, residuals, extra = block_krylov(op, p, k, block, n_iter, seed, tol,
                                                  dtype, blas)
    finally:
        op.close()
    timings = {**op.timings, **extra.pop("timings_s"),
               "total": time.perf_counter() - t_start}
    info = {"svd_version": SVD_VERSION, "method": "krylov", "k": k, "block_size": block,
            "oversampling": block - k,
            "n_iter": n_iter, "passes": op.passes, "seed": seed, "dtype": dtype.name,
            "tol": tol, **extra, **op.describe(),
            "max_residual": float(residuals.max()),
            "timings_s": {key: round(v, 4) for key, v in timings.items()}}
    return Spectrum(sigma, V, residuals, info)


def _exact(X: sp.csr_matrix, k: int, mu, s, t_start: float) -> Spectrum:
    with RowChunks() as blas:
        sigma, V, residuals, timings = exact_eigenpairs(X, k, mu, s, blas)
    n, p = X.shape
    info = {"svd_version": SVD_VERSION, "method": "exact", "k": k, "passes": 1,
            "dtype": "float64", "shape": [n, p],
            "col_center": mu is not None, "col_scale": s is not None,
            "max_residual": float(residuals.max()) if residuals.size else 0.0,
            "timings_s": {"gram": round(timings["gram"], 4), "eigh": round(timings["eigh"], 4),
                          "total": round(time.perf_counter() - t_start, 4)}}
    return Spectrum(sigma, V, residuals, info)


# --------------------------------------------------------------------------- validation
def _check_matrix(X) -> sp.csr_matrix:
    if isinstance(X, np.ndarray) and X.ndim == 2:
        X = sp.csr_matrix(X)
    if not sp.issparse(X) or X.ndim != 2:
        raise UserError(f"X: expected a 2-D scipy.sparse matrix, got {type(X).__name__}")
    X = X.tocsr()
    if X.dtype.kind not in "fiub":
        raise UserError(f"X: dtype {X.dtype} is not numeric")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise UserError(f"X: shape {X.shape} is empty")
    if X.dtype.kind == "f" and not np.isfinite(X.data).all():
        raise UserError("X: contains NaN or infinite values")
    if not X.has_canonical_format:
        X = X.copy()
        X.sum_duplicates()
    return X


def _check_dtype(dtype) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise UserError(f"dtype={dtype!r}: must be float32 or float64") from None
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise UserError(f"dtype={dt}: must be float32 or float64")
    return dt


def _check_vector(v, p: int, name: str) -> np.ndarray | None:
    if v is None:
        return None
    a = np.asarray(v, dtype=np.float64)
    if a.shape != (p,):
        raise UserError(f"{name}: shape {a.shape} does not match the {p} columns of X")
    if not np.isfinite(a).all():
        raise UserError(f"{name}: contains NaN or infinite values")
    return a


def _check_row_blocks(row_blocks, n: int) -> None:
    edges = [0]
    for a, b in row_blocks:
        if a != edges[-1] or b <= a:
            raise UserError(f"row_blocks: ({a}, {b}) does not follow row {edges[-1]} (blocks "
                            "must be non-empty row ranges covering X in order)")
        edges.append(b)
    if edges[-1] != n:
        raise UserError(f"row_blocks: cover rows 0..{edges[-1]}, X has {n} rows")


def _check_int(v, name: str, low: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < low:
        raise UserError(f"{name}={v!r}: must be an integer >= {low}")
    return int(v)
