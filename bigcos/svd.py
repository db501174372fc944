"""Truncated SVD of a sparse, implicitly centred and scaled matrix: only sigma_k and V_k.

Both objectives of the paper need only the top-k right singular vectors V_k (p x k) and the
singular values sigma_k of

    X~ = (X - 1 mu^T) diag(s)        (mu = col_center, default 0; s = col_scale, default 1),

never U_k. So everything here works with the p x p Gram operator A = X~^T X~, applied without
densifying X or forming A:

    A Q = S [X^T X (S Q) - c (mu^T S Q) - mu (c^T S Q) + n mu (mu^T S Q)],   c = X^T 1,

where X^T X (S Q) = sum_b X_b^T (X_b (S Q)) streams once over the row blocks X_b of X (one
"pass"). Passes are Dask tasks (one per row block, tree-summed), computed on the workers of
a remote ``distributed`` scheduler if a client to one is open (the blocks are scattered to
the workers once), else with the threaded scheduler in this process (scipy's sparse products
release the GIL), also under a ``LocalCluster``: see ``scheduler`` in :func:`truncated_svd`.

Methods
-------
``krylov`` (default): randomised block Krylov (Musco & Musco 2015; block Lanczos with full
reorthogonalisation). From a Gaussian start Q_0 (p x l, l = k + oversampling) each pass j
computes W_j = A Q_j and orthonormalises it against all earlier blocks into Q_{j+1}; after
``n_iter`` passes, Rayleigh-Ritz on the basis K = [Q_1 ... Q_{n_iter-1}] (p x L,
L <= (n_iter - 1) l; the random Q_0 = Omega is not kept, so it is not orthonormalised, unless
n_iter = 1) with H = K^T A K taken from the orthogonalisation coefficients, so no extra pass
is needed. Products with the tall basis run over a fixed row split (bigcos.dense.RowChunks),
so the result does not depend on the number of cores. Residuals come from the Krylov relation
A K = K H + Z E^T (Z: the last W with K projected out): ||A v_i - theta_i v_i|| = ||Z y_i,last||.
``subspace``: plain subspace iteration (Halko, Martinsson & Tropp 2011, Alg. 4.4 on A) with
Rayleigh-Ritz on the last block, kept for comparison. ``exact=True``: dense float64
eigendecomposition of A (p x p) for small p; k = p works.

Accuracy is reported, not assumed: ``Spectrum.residuals[i] = ||A v_i - sigma_i^2 v_i|| /
sigma_i^2`` (divided by sigma_1^2 instead where sigma_i^2 <= 1e-12 sigma_1^2, i.e. zero).
The randomised paths take them from the computed products (Krylov relation / last block),
so they measure convergence; rounding of float32 products adds a floor of about
1e-6 sigma_1^2 / sigma_i^2 that they do not show (float64 agrees with dense residuals to
1e-6 relative, see tests). A residual r bounds the error of sigma_i^2 by r sigma_i^2, and by
(r sigma_i^2)^2 / gap when sigma_i^2 is separated from the rest of the spectrum by gap: sigma
is usually far more accurate than r (bench: max residual 1e-2, max error of sigma 9e-5).

Costs (n x p matrix with nnz non-zeros, L = basis width): each pass does 4 nnz l flops of
sparse products; orthogonalisation is GEMM (~4 p L l flops per pass); memory is the basis
(p x L, ``dtype``) plus one p x l partial product per block in flight; X itself is not copied
except for the cast to ``dtype`` (a float32 CSR input with ``dtype=float32`` is used as is).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.linalg
import scipy.sparse as sp

from bigcos.dense import RowChunks
from bigcos.errors import UserError

METHODS = ("krylov", "subspace")
SCHEDULERS = ("auto", "threads", "distributed")
SVD_VERSION = 6  # bumped whenever the same parameters give different results (cache keys)
BLOCK_NNZ = 5_000_000  # default row-block size in non-zeros (see default_block_count)
MAX_BLOCKS = 8
EXACT_MAX_P = 20_000
_GRAM_RESOLVES = 1 / 32    # s_min / s_max a float32 Gram matrix resolves (see _orthonormalize)
_SKIP_SECOND_SVQB = 8.0    # condition number up to which one SVQB round is enough
SPECTRUM_ARRAYS = "svd.npz"
SPECTRUM_INFO = "svd.json"
_FORMAT_VERSION = 1


@dataclass(frozen=True)
class Spectrum:
    """Top-k right singular triplets of X~ (without U).

    sigma: (k,) float64, descending, >= 0. V: (p, k) float64 with orthonormal columns (sign
    fixed so that each column's largest-magnitude entry is positive). residuals: (k,) float64,
    see the module docstring. info: method, passes over X, block layout, seed, dtype, timings.
    """

    sigma: np.ndarray
    V: np.ndarray
    residuals: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def k(self) -> int:
        return int(self.sigma.shape[0])


# --------------------------------------------------------------------------- public API
def truncated_svd(X: sp.csr_matrix, k: int, *, oversampling: int | None = None,
                  n_iter: int | None = None, seed: int = 0, dtype=np.float32,
                  exact: bool = False, col_center: np.ndarray | None = None,
                  col_scale: np.ndarray | None = None, block_rows: int | None = None,
                  tol: float | None = None, method: str = "krylov",
                  tile_cols: int = 32, scheduler: str = "auto") -> Spectrum:
    """Top-k singular values and right singular vectors of X~ = (X - 1 mu^T) diag(s).

    X: (n, p) sparse (CSR preferred; other sparse formats are converted). k: number of
    singular triplets; the randomised paths need k <= min(n, p), ``exact=True`` allows any
    k <= p (k = p is the full spectrum, zeros included when rank < p).
    oversampling: extra columns of the block, l = k + oversampling (default 16 for ``krylov``,
    k for ``subspace``). n_iter: passes over X (default 6 for ``krylov``, 7 for ``subspace``;
    on a flat-tailed 200,000 x 50,000 power-law matrix the defaults put every sigma_1..256
    within ~1e-4 of PROPACK). seed: the Gaussian start (``np.random.default_rng(seed)``).
    dtype: float32 or float64, the precision of the sparse products, of the basis and of its
    projections; centring terms and the Rayleigh-Ritz eigenproblem are float64, and so are
    the Gram matrices of the orthonormalisation where float32 would not resolve a block.
    col_center / col_scale: (p,) vectors mu and s.
    block_rows: rows per Dask task (default: blocks of about 5M non-zeros, at most 8, whatever
        the cluster: see :func:`default_block_count`).
    tol: stop early once every residual of the top k is <= tol (checked after each pass).
    method: ``krylov`` or ``subspace``. tile_cols: width of the column tiles of the dense
    operand inside a block (cache blocking; changes speed only).
    scheduler: where the passes run. ``distributed``: on the workers of the active
    ``distributed.Client`` (X's blocks are scattered once, each pass ships the p x l
    operand to every worker and the partial sums back). ``threads``: Dask's threaded
    scheduler in this process. ``auto`` (default): ``distributed`` when the active client
    is connected to a remote scheduler, ``threads`` when there is none or when it runs a
    ``LocalCluster`` (the same cores without the shipping: 1.5x faster on the bench matrix).

    Results are bitwise identical for any worker count, core count or scheduler: the row
    partition depends on the data alone and the dense products run over a fixed row split
    (:class:`bigcos.dense.RowChunks`); another ``block_rows`` changes them by float rounding.
    """
    t_start = time.perf_counter()
    X = _check_matrix(X)
    n, p = X.shape
    dtype = _check_dtype(dtype)
    mu, s = _check_vector(col_center, p, "col_center"), _check_vector(col_scale, p, "col_scale")
    k = _check_int(k, "k", 1)
    if exact:
        if k > p:
            raise UserError(f"k={k}: must be <= p={p} (the number of columns of X)")
        if p > EXACT_MAX_P:
            raise UserError(f"exact=True: p={p} columns needs a dense {p} x {p} Gram matrix "
                            f"(limit {EXACT_MAX_P}); use the randomised path")
        return _exact(X, k, mu, s, t_start)
    if k > min(n, p):
        raise UserError(f"k={k}: the randomised SVD needs k <= min(n, p) = {min(n, p)} for X of "
                        f"shape {n} x {p} (use exact=True for the full spectrum)")
    if method not in METHODS:
        raise UserError(f"method={method!r}: must be one of {', '.join(METHODS)}")
    default_os = 16 if method == "krylov" else k
    oversampling = default_os if oversampling is None else _check_int(oversampling,
                                                                      "oversampling", 0)
    n_iter = (6 if method == "krylov" else 7) if n_iter is None else _check_int(n_iter,
                                                                                 "n_iter", 1)
    if block_rows is not None:
        block_rows = _check_int(block_rows, "block_rows", 1)
    tile_cols = _check_int(tile_cols, "tile_cols", 1)
    if tol is not None and not (math.isfinite(tol) and tol > 0):
        raise UserError(f"tol={tol}: must be a positive number")
    block = min(k + oversampling, p)
    op = GramOperator(X, dtype=dtype, col_center=mu, col_scale=s, block_rows=block_rows,
                      tile_cols=tile_cols, client=_pass_client(scheduler))
    try:
        # RowChunks runs the tall products in parallel with a fixed split, BLAS at one thread
        # meanwhile: results do not depend on the core count
        with RowChunks() as blas:
            run = _krylov if method == "krylov" else _subspace
            sigma, V, residuals, extra = run(op, k, block, n_iter, seed, tol, blas)
    finally:
        op.close()
    timings = {**op.timings, **extra.pop("timings_s"),
               "total": time.perf_counter() - t_start}
    info = {"svd_version": SVD_VERSION, "method": method, "k": k, "block_size": block,
            "oversampling": block - k,
            "n_iter": n_iter, "passes": op.passes, "seed": seed, "dtype": dtype.name,
            "tol": tol, **extra, **op.describe(),
            "max_residual": float(residuals.max()),
            "timings_s": {key: round(v, 4) for key, v in timings.items()}}
    return Spectrum(sigma, V, residuals, info)


def save_spectrum(directory: Path, spectrum: Spectrum) -> None:
    """Write ``svd.npz`` (arrays ``sigma`` (k,), ``V`` (p, k), ``residuals`` (k,), float64) and
    ``svd.json`` (``{"format": 1, "k": k, "p": p, "info": {...}}``) into ``directory``.

    Each file is written to a temporary name and renamed, so a reader never sees half a file.
    """
    from bigcos.io import write_json

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{SPECTRUM_ARRAYS}.tmp-{uuid.uuid4().hex[:8]}.npz"
    np.savez(tmp, sigma=spectrum.sigma, V=spectrum.V, residuals=spectrum.residuals)
    os.replace(tmp, directory / SPECTRUM_ARRAYS)
    write_json(directory / SPECTRUM_INFO, {"format": _FORMAT_VERSION, "k": spectrum.k,
                                            "p": int(spectrum.V.shape[0]), "info": spectrum.info})


def load_spectrum(directory: Path) -> Spectrum:
    """Read a spectrum written by :func:`save_spectrum`, checking shapes against ``svd.json``."""
    directory = Path(directory)
    arrays, meta = directory / SPECTRUM_ARRAYS, directory / SPECTRUM_INFO
    for f in (arrays, meta):
        if not f.exists():
            raise UserError(f"{f}: missing (not a directory written by save_spectrum)")
    try:
        header = json.loads(meta.read_text())
        with np.load(arrays) as z:
            sigma, V, residuals = z["sigma"], z["V"], z["residuals"]
    except (json.JSONDecodeError, KeyError, ValueError, OSError) as exc:
        raise UserError(f"{directory}: unreadable spectrum ({exc})") from None
    if header.get("format") != _FORMAT_VERSION:
        raise UserError(f"{meta}: unsupported format {header.get('format')!r}")
    k, p = header.get("k"), header.get("p")
    if sigma.shape != (k,) or V.shape != (p, k) or residuals.shape != (k,):
        raise UserError(f"{arrays}: shapes sigma {sigma.shape}, V {V.shape}, residuals "
                        f"{residuals.shape} do not match k={k}, p={p} in {meta.name}")
    return Spectrum(sigma.astype(np.float64), V.astype(np.float64),
                    residuals.astype(np.float64), header.get("info", {}))


# --------------------------------------------------------------------------- the operator
def _gram_block(Xb: sp.csr_matrix, q_tiles: list[np.ndarray]) -> np.ndarray:
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


def _active_client():
    """The default ``distributed.Client``, or None (without importing distributed)."""
    distributed = sys.modules.get("distributed")
    if distributed is None:          # never imported: no client can be open
        return None
    try:
        return distributed.default_client()
    except ValueError:
        return None


def _pass_client(scheduler: str):
    """The ``distributed.Client`` the passes should run on, or None for threads."""
    if scheduler not in SCHEDULERS:
        raise UserError(f"scheduler={scheduler!r}: must be one of {', '.join(SCHEDULERS)}")
    client = None if scheduler == "threads" else _active_client()
    if scheduler == "distributed" and client is None:
        raise UserError("scheduler='distributed': no distributed.Client is active")
    if scheduler == "auto" and client is not None:
        from distributed import LocalCluster

        if isinstance(getattr(client, "cluster", None), LocalCluster):
            return None
    return client


class GramOperator:
    """Q (p x b) -> A Q (p x b) for A = X~^T X~, one Dask pass over X each.

    The result is float64 when centring or scaling is applied, else in ``dtype`` (the sum of
    the blocks' partial products; they are few, so rounding is dominated by the products).

    The row blocks of X (cast to ``dtype``) are placed once: scattered to the workers of
    ``client`` (a ``distributed.Client``), else held in this process for the threaded
    scheduler.
    ``passes`` counts the applications; ``timings`` holds the seconds spent placing blocks and
    in passes.
    """

    def __init__(self, X: sp.csr_matrix, *, dtype=np.float32, col_center=None, col_scale=None,
                 block_rows: int | None = None, tile_cols: int = 32, client=None) -> None:
        from dask import delayed

        t0 = time.perf_counter()
        self.shape = X.shape
        self.dtype = np.dtype(dtype)
        self.tile_cols = tile_cols
        self.mu, self.s = col_center, col_scale
        n, p = X.shape
        self.colsum = (np.asarray(X.sum(axis=0), dtype=np.float64).ravel()
                       if self.mu is not None else None)
        self.client = client
        bounds = _row_bounds(X, block_rows, default_block_count(X.nnz))
        blocks = [_row_block(X, a, b, self.dtype) for a, b in bounds]
        self.block_rows = [int(b - a) for a, b in bounds]
        if self.client is not None:
            self._blocks = self.client.scatter(blocks, hash=False)
        else:
            tag = uuid.uuid4().hex
            self._blocks = [delayed(b, name=f"bigcos-xblock-{i}-{tag}")
                            for i, b in enumerate(blocks)]
        self.passes = 0
        self.timings = {"place_blocks": time.perf_counter() - t0, "passes": 0.0}

    def describe(self) -> dict[str, Any]:
        return {"n_blocks": len(self.block_rows), "block_rows_max": max(self.block_rows),
                "tile_cols": self.tile_cols,
                "scheduler": "distributed" if self.client is not None else "threaded",
                "shape": list(self.shape), "col_center": self.mu is not None,
                "col_scale": self.s is not None}

    def __call__(self, Q: np.ndarray) -> np.ndarray:
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
        parts = [delayed(_gram_block, pure=False)(b, q) for b in self._blocks]
        (Y,) = dask.compute(_tree_sum(parts, inplace=self.client is None),
                            scheduler=self.client or "threads")
        # An array received from a worker may sit unaligned in its network frame; numpy then
        # skips BLAS for it (slower, and rounded differently from an aligned copy).
        Y = np.require(Y, requirements=("C", "A", "W"))
        if self.mu is not None or self.s is not None:
            Y = Y.astype(np.float64)
        if self.mu is not None:
            mSQ = self.mu @ SQ                  # (b,)  mu^T S Q
            cSQ = self.colsum @ SQ              # (b,)  c^T S Q
            Y -= np.outer(self.colsum, mSQ) + np.outer(self.mu, cSQ - n * mSQ)
        if self.s is not None:
            Y *= self.s[:, None]
        self.passes += 1
        self.timings["passes"] += time.perf_counter() - t0
        return Y

    def close(self) -> None:
        if self.client is not None and self._blocks:
            self.client.cancel(self._blocks)
        self._blocks = []


def default_block_count(nnz: int) -> int:
    """Row blocks of X when ``block_rows`` is not given: a function of the data alone.

    The partition fixes the order of the float sums, so making it independent of the number
    of workers makes the result bitwise identical on any cluster. One block per 5M non-zeros,
    at most ``MAX_BLOCKS``: every block writes a whole p x l partial sum, so fewer, larger
    blocks move less memory (on 2 cores, 200,000 x 50,000 x 10M nnz at k = 256: passes take
    3.4 s in 2 blocks, 4.1 s in 4, 5.2 s in 8). On a larger cluster pass ``block_rows``.
    """
    return int(min(MAX_BLOCKS, max(1, -(-nnz // BLOCK_NNZ))))


def _row_bounds(X: sp.csr_matrix, block_rows: int | None, n_blocks: int) -> list[tuple]:
    """Row ranges [a, b): ``block_rows`` rows each, else ``n_blocks`` of about equal nnz."""
    n = X.shape[0]
    if block_rows is not None:
        edges = list(range(0, n, block_rows)) + [n]
    else:
        targets = np.linspace(0, X.nnz, min(n_blocks, n) + 1)[1:-1]
        inner = np.searchsorted(X.indptr, targets, side="left")
        edges = sorted({0, n, *map(int, inner)})
    return [(a, b) for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]


def _row_block(X: sp.csr_matrix, a: int, b: int, dtype: np.dtype) -> sp.csr_matrix:
    """Rows [a, b) of X in ``dtype``, sharing X's data and indices when no cast is needed."""
    lo, hi = X.indptr[a], X.indptr[b]
    data = X.data[lo:hi]
    return sp.csr_matrix((data if data.dtype == dtype else data.astype(dtype),
                          X.indices[lo:hi], X.indptr[a:b + 1] - lo),
                         shape=(b - a, X.shape[1]), copy=False)


# --------------------------------------------------------------------------- linear algebra
def _orthonormalize(Z: np.ndarray, K: np.ndarray | None, ref_norm: float, dtype: np.dtype,
                    blas: RowChunks) -> tuple[np.ndarray, bool]:
    """Orthonormal basis (p x b', ``dtype``) of the part of Z (p x b) orthogonal to K.

    K (p x m, orthonormal columns) may be None; Z must already have K projected out once.
    SVQB (eigendecomposition of the b x b Gram matrix: GEMM-rate and rank revealing)
    normalises Z; directions with norm below ``ref_norm`` times 64 machine epsilons are dropped
    as numerically in span K, so b' <= b (0 when Z lies in span K). The Gram matrix is taken
    in ``dtype`` when that resolves Z's spectrum (float32: condition number <= ~30, the usual
    case for Krylov blocks), else accumulated in float64. The rounding of the first
    projection leaves components of size ~ eps ref_norm / s_min(Z) in span K; when that
    exceeds eps^(2/3) K is projected out a second time (selective reorthogonalisation). A
    second SVQB then restores orthonormality, unless Z was so well conditioned (<= 8) that
    the first left it at float rounding. Returns (Q, whether the second projection ran).
    """
    eps = np.finfo(dtype).eps
    W = np.asarray(Z, dtype=dtype)
    lam, U = np.linalg.eigh(blas.gram(W))
    if lam[-1] > 0 and lam[0] < _GRAM_RESOLVES ** 2 * lam[-1] and W.dtype != np.float64:
        lam, U = np.linalg.eigh(blas.gram(W, np.float64))
    keep = lam > (64 * eps * ref_norm) ** 2
    if not keep.any():
        return np.zeros((W.shape[0], 0), dtype=dtype), False
    U, lam = U[:, keep][:, ::-1], lam[keep][::-1]
    W = blas.nn(W, U / np.sqrt(lam))
    s_min, cond = float(np.sqrt(lam[-1])), float(np.sqrt(lam[0] / lam[-1]))
    reproject = K is not None and K.shape[1] > 0 and eps * ref_norm > eps ** (2 / 3) * s_min
    if reproject:
        blas.nn(K, blas.tn(K, W), out=W, subtract=True)
    if reproject or cond > _SKIP_SECOND_SVQB:
        lam, U = np.linalg.eigh(blas.gram(W))
        keep = lam > 0.01          # unit columns that lose 90 % to the re-projection are noise
        W = blas.nn(W, U[:, keep][:, ::-1] / np.sqrt(lam[keep][::-1]))
    return W, reproject


def _ritz(H: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k eigenpairs of the symmetric H, descending."""
    m = H.shape[0]
    theta, Y = scipy.linalg.eigh((H + H.T) / 2, subset_by_index=[m - k, m - 1], driver="evx")
    return theta[::-1], Y[:, ::-1]


def _relative(res_norm: np.ndarray, theta: np.ndarray) -> np.ndarray:
    top = max(float(theta[0]), np.finfo(np.float64).tiny) if theta.size else 1.0
    denom = np.where(theta > 1e-12 * top, theta, top)
    return res_norm / denom


def _finish(theta: np.ndarray, V: np.ndarray, res_norm: np.ndarray, blas: RowChunks):
    """float64 orthonormal V with fixed signs, sigma = sqrt(theta), relative residuals."""
    V = _cholesky_qr(V.astype(np.float64), blas)
    idx = np.array([np.abs(V[:, i]).argmax() for i in range(V.shape[1])], dtype=np.intp)
    V *= np.where(V[idx, np.arange(V.shape[1])] < 0, -1.0, 1.0)
    theta = np.maximum(theta, 0.0)
    return np.sqrt(theta), np.ascontiguousarray(V), _relative(res_norm, theta)


def _cholesky_qr(V: np.ndarray, blas: RowChunks) -> np.ndarray:
    """Orthonormalise the columns of a nearly orthonormal float64 V at GEMM speed.

    CholeskyQR: V R^-1 with R^T R = V^T V (R ~ I, so V moves only by its loss of
    orthogonality). Falls back to Householder QR when V^T V is not positive definite.
    """
    try:
        R = scipy.linalg.cholesky(blas.gram(V), lower=False)
    except np.linalg.LinAlgError:
        Qv, R = np.linalg.qr(V)
        return Qv * np.sign(np.where(np.diag(R) == 0, 1.0, np.diag(R)))
    return blas.nn(V, scipy.linalg.solve_triangular(R, np.eye(R.shape[0]), lower=False))


def _krylov(op: GramOperator, k: int, block: int, n_iter: int, seed: int, tol: float | None,
            blas: RowChunks):
    """Randomised block Krylov on A = X~^T X~; see the module docstring."""
    p, dtype = op.shape[1], op.dtype
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    omega = rng.standard_normal((p, block), dtype=dtype)
    t_orth = time.perf_counter() - t0
    if n_iter > 1:                          # the random start itself is not kept (K starts
        W = op(omega)                       # at orth(A Omega), one block less to store), so
        del omega                           # it need not be orthonormal
        t0 = time.perf_counter()
        Q, _ = _orthonormalize(W, None, float(np.linalg.norm(W, axis=0).max()), dtype, blas)
        del W
        n_iter -= 1
    else:
        t0 = time.perf_counter()
        ref = float(np.linalg.norm(omega, axis=0).max())
        Q, _ = _orthonormalize(omega, None, ref, dtype, blas)
    t_orth += time.perf_counter() - t0
    t0 = time.perf_counter()
    width = min(n_iter * block, p)
    K = np.empty((p, width), dtype=dtype)   # the basis [Q_0 Q_1 ...], columns [0, m) in use
    H = np.zeros((width, width))            # K^T A K, upper triangle filled block by block
    K[:, :Q.shape[1]] = Q
    start, m = 0, Q.shape[1]                # the current block Q_j is K[:, start:m]
    converged = None if tol is None else False
    reorthogonalized = 0
    Z = np.zeros((p, 0), dtype=dtype)
    t_orth += time.perf_counter() - t0
    for j in range(n_iter if m else 0):     # m = 0: A Omega = 0, nothing to iterate on
        W = op(K[:, start:m])
        t0 = time.perf_counter()
        Z = np.asarray(W, dtype=dtype)
        del W
        ref = float(np.sqrt(np.einsum("ij,ij->j", Z, Z).max()))
        C = blas.tn(K[:, :m], Z)            # = K^T A Q_j: a column block of H
        blas.nn(K[:, :m], C, out=Z, subtract=True)  # Z = (I - K K^T) W_j
        H[:m, start:m] = C
        last = j == n_iter - 1 or m == width
        if tol is not None and not last and m >= k:
            theta, Y, res = _krylov_ritz(H, Z, start, m, k, blas)
            converged = bool(_relative(res, np.maximum(theta, 0.0)).max() <= tol)
            last = converged
        if not last:
            Qn, again = _orthonormalize(Z, K[:, :m], ref, dtype, blas)
            reorthogonalized += again
            b = min(Qn.shape[1], width - m)
            if b == 0:                      # invariant subspace: the Ritz pairs are exact
                Z = np.zeros_like(Z)
                last = True
            else:
                K[:, m:m + b] = Qn[:, :b]
                start, m = m, m + b
        t_orth += time.perf_counter() - t0
        if last:
            break
    t0 = time.perf_counter()
    if m < k:                               # rank(A) < k: the basis holds all of range(A)
        theta, V, res = _completed_ritz(op, K[:, :m], k, rng, dtype, blas)
    else:
        theta, Y, res = _krylov_ritz(H, Z, start, m, k, blas)
        V = blas.nn(K[:, :m], Y)
    del K, Z                                # the basis is the bulk of the memory
    sigma, V, residuals = _finish(theta, V, res, blas)
    if tol is not None:
        converged = bool(residuals.max() <= tol)
    extra = {"basis_dim": m, "converged": converged, "reorthogonalized": reorthogonalized,
             "timings_s": {"orthonormalize": t_orth, "rayleigh_ritz": time.perf_counter() - t0}}
    return sigma, V, residuals, extra


def _completed_ritz(op: GramOperator, K: np.ndarray, k: int, rng, dtype: np.dtype,
                    blas: RowChunks):
    """Rayleigh-Ritz on K (p x m, m < k) completed by random orthonormal directions to k
    columns, with one more (explicit) pass; for A of rank < k. Returns (theta, V, res)."""
    E = rng.standard_normal((K.shape[0], k - K.shape[1])).astype(dtype)
    E -= K @ (K.T @ E)
    E, _ = _orthonormalize(E, K, 1.0, dtype, blas)
    B = np.hstack([K, E])
    W = op(B).astype(np.float64)
    B64 = B.astype(np.float64)
    theta, Y = _ritz(B64.T @ W, k)
    return theta, (B64 @ Y).astype(dtype), np.linalg.norm(W @ Y - B64 @ (Y * theta), axis=0)


def _pad_basis(Q: np.ndarray, k: int, rng, dtype: np.dtype, blas: RowChunks) -> np.ndarray:
    """Q (p x b, orthonormal) completed by random orthonormal directions to >= k columns."""
    if Q.shape[1] >= k:
        return Q
    E = rng.standard_normal((Q.shape[0], k - Q.shape[1])).astype(dtype)
    E -= Q @ (Q.T @ E)
    E, _ = _orthonormalize(E, Q, 1.0, dtype, blas)
    return np.hstack([Q, E])


def _krylov_ritz(H: np.ndarray, Z: np.ndarray, start: int, m: int, k: int, blas: RowChunks):
    """Top-k Ritz pairs of the first m basis columns and their residual norms ||Z y_last||."""
    Hm = np.triu(H[:m, :m]) + np.triu(H[:m, :m], 1).T
    theta, Y = _ritz(Hm, k)
    R = blas.nn(Z, Y[start:m])
    return theta, Y, np.sqrt(np.einsum("ij,ij->j", R, R, dtype=np.float64))


def _subspace(op: GramOperator, k: int, block: int, n_iter: int, seed: int, tol: float | None,
              blas: RowChunks):
    """Subspace iteration Q <- orth(A Q), Rayleigh-Ritz on the last block."""
    p, dtype = op.shape[1], op.dtype
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    Q, _ = _orthonormalize(rng.standard_normal((p, block)), None, 1.0, dtype, blas)
    converged = None if tol is None else False
    t_orth = time.perf_counter() - t0
    for j in range(n_iter):
        W = op(Q)
        t0 = time.perf_counter()
        Q64 = Q.astype(np.float64)
        last = j == n_iter - 1
        if tol is not None or last:
            theta, Y = _ritz(Q64.T @ W, k)
            res = np.linalg.norm(W @ Y - Q64 @ (Y * theta), axis=0)
            if tol is not None:
                converged = bool(_relative(res, np.maximum(theta, 0.0)).max() <= tol)
                last = last or converged
        if not last:
            Q, _ = _orthonormalize(W, None, float(np.linalg.norm(W, axis=0).max()), dtype, blas)
            Q = _pad_basis(Q, k, rng, dtype, blas)   # rank(A) < k: add null-space directions
        t_orth += time.perf_counter() - t0
        if last:
            break
    sigma, V, residuals = _finish(theta, Q64 @ Y, res, blas)
    extra = {"basis_dim": Q.shape[1], "converged": converged,
             "timings_s": {"orthonormalize": t_orth}}
    return sigma, V, residuals, extra


def _exact(X: sp.csr_matrix, k: int, mu, s, t_start: float) -> Spectrum:
    """Dense float64 eigendecomposition of A = X~^T X~ (p x p).

    Eigenvalues at or below p eps theta_1 (the rounding floor of A) are set to exactly 0, so a
    rank-deficient X~ gets sigma_i = 0 rather than sqrt(rounding noise) ~ 1e-8 sigma_1.
    """
    n, p = X.shape
    t0 = time.perf_counter()
    X64 = _row_block(X, 0, n, np.dtype(np.float64))
    A = (X64.T @ X64).toarray()
    if mu is not None:
        c = np.asarray(X64.sum(axis=0)).ravel()
        A -= np.outer(c, mu) + np.outer(mu, c - n * mu)
    if s is not None:
        A *= np.outer(s, s)
    t_gram = time.perf_counter() - t0
    t0 = time.perf_counter()
    theta, V = _ritz(A, k)
    res = np.linalg.norm(A @ V - V * theta, axis=0)
    # eigenvalues below the rounding floor of A are zero (rank deficiency), not sqrt(noise)
    theta[theta <= p * np.finfo(np.float64).eps * max(float(theta[0]), 0.0)] = 0.0
    t_eig = time.perf_counter() - t0
    with RowChunks() as blas:
        sigma, V, residuals = _finish(theta, V, res, blas)
    info = {"svd_version": SVD_VERSION, "method": "exact", "k": k, "passes": 1,
            "dtype": "float64", "shape": [n, p],
            "col_center": mu is not None, "col_scale": s is not None,
            "max_residual": float(residuals.max()) if residuals.size else 0.0,
            "timings_s": {"gram": round(t_gram, 4), "eigh": round(t_eig, 4),
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
    dt = np.dtype(dtype)
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


def _check_int(v, name: str, low: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < low:
        raise UserError(f"{name}={v!r}: must be an integer >= {low}")
    return int(v)
