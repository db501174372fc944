"""Randomised block Krylov for the top eigenpairs of a symmetric PSD operator: the algebra only.

Pure numpy/scipy: the operator is any callable Q (p x b) -> A Q; where it runs (Dask, threads)
is the caller's business (:mod:`bigcos.gram`, driven by :func:`bigcos.svd.truncated_svd`).

Block Krylov (Musco & Musco 2015; block Lanczos with full reorthogonalisation): from a Gaussian
start Omega (p x l) each pass j computes W_j = A Q_j and orthonormalises it against all earlier
blocks into Q_{j+1}; after ``n_iter`` passes, Rayleigh-Ritz on the basis K = [Q_1 ... Q_m]
(p x L, L <= n_iter l; Omega itself is not kept, unless n_iter = 1) with H = K^T A K taken
from the orthogonalisation coefficients, so no extra pass is needed. Residuals come from the
Krylov relation A K = K H + Z E^T (Z: the last W with K projected out):
||A v_i - theta_i v_i|| = ||Z y_i,last||. Every tall product goes through
:class:`bigcos.dense.RowChunks` and every small LAPACK call through ``RowChunks.call``, so the
result does not depend on the number of cores.

References
----------
Halko, N., Martinsson, P.-G., Tropp, J. A. (2011). Finding structure with randomness:
probabilistic algorithms for constructing approximate matrix decompositions. SIAM Review 53(2).
Musco, C., Musco, C. (2015). Randomized block Krylov methods for stronger and faster
approximate singular value decomposition. NeurIPS 28.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import scipy.linalg
import scipy.sparse as sp

from bigcos.dense import RowChunks

GRAM_RESOLVES = 1 / 32    # s_min / s_max a float32 Gram matrix resolves (see orthonormalize)
SKIP_SECOND_SVQB = 8.0    # condition number up to which one SVQB round is enough


def orthonormalize(Z: np.ndarray, K: np.ndarray | None, ref_norm: float, dtype: np.dtype,
                   blas: RowChunks) -> tuple[np.ndarray, bool]:
    """Orthonormal basis of the part of Z orthogonal to K (SVQB, selective reorthogonalisation).

    SVQB (eigendecomposition of the b x b Gram matrix: GEMM-rate and rank revealing)
    normalises Z; directions with norm below ``ref_norm`` times 64 machine epsilons are dropped
    as numerically in span K. The Gram matrix is taken in ``dtype`` when that resolves Z's
    spectrum (float32: condition number <= ~30, the usual case for Krylov blocks), else
    accumulated in float64. The rounding of the first projection leaves components of size
    ~ eps ref_norm / s_min(Z) in span K; when that exceeds eps^(2/3) K is projected out a second
    time. A second SVQB then restores orthonormality, unless Z was so well conditioned (<= 8)
    that the first left it at float rounding.

    Parameters
    ----------
    Z : ndarray, shape (p, b)
        With K projected out once already.
    K : ndarray, shape (p, m), orthonormal columns, or None
    ref_norm : float
        The largest column norm of Z before the projection (the scale of "numerically zero").
    dtype : numpy dtype
        float32 or float64: precision of the result and of the products.
    blas : RowChunks
        Open pool for the tall products (memory: Z's copy in ``dtype`` plus one p x b output).

    Returns
    -------
    Q : ndarray, shape (p, b'), ``dtype``
        b' <= b orthonormal columns (0 when Z lies in span K).
    reprojected : bool
        Whether K was projected out a second time.
    """
    eps = np.finfo(dtype).eps
    W = np.asarray(Z, dtype=dtype)
    lam, U = blas.call(np.linalg.eigh, blas.gram(W))
    if lam[-1] > 0 and lam[0] < GRAM_RESOLVES ** 2 * lam[-1] and W.dtype != np.float64:
        lam, U = blas.call(np.linalg.eigh, blas.gram(W, np.float64))
    keep = lam > (64 * eps * ref_norm) ** 2
    if not keep.any():
        return np.zeros((W.shape[0], 0), dtype=dtype), False
    U, lam = U[:, keep][:, ::-1], lam[keep][::-1]
    W = blas.nn(W, U / np.sqrt(lam))
    s_min, cond = float(np.sqrt(lam[-1])), float(np.sqrt(lam[0] / lam[-1]))
    reproject = K is not None and K.shape[1] > 0 and eps * ref_norm > eps ** (2 / 3) * s_min
    if reproject:
        blas.nn(K, blas.tn(K, W), out=W, subtract=True)
    if reproject or cond > SKIP_SECOND_SVQB:
        lam, U = blas.call(np.linalg.eigh, blas.gram(W))
        keep = lam > 0.01          # unit columns that lose 90 % to the re-projection are noise
        W = blas.nn(W, U[:, keep][:, ::-1] / np.sqrt(lam[keep][::-1]))
    return W, reproject


def ritz(H: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k eigenpairs of a symmetric matrix (its symmetric part), descending.

    Parameters
    ----------
    H : ndarray, shape (m, m)
    k : int
        1 <= k <= m.

    Returns
    -------
    theta : ndarray, shape (k,)
    Y : ndarray, shape (m, k)
    """
    m = H.shape[0]
    theta, Y = scipy.linalg.eigh((H + H.T) / 2, subset_by_index=[m - k, m - 1], driver="evx")
    return theta[::-1], Y[:, ::-1]


def relative_residuals(res_norm: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """||A v_i - theta_i v_i|| / theta_i, divided by theta_1 instead where theta_i is ~0.

    Parameters
    ----------
    res_norm : ndarray, shape (k,)
    theta : ndarray, shape (k,), descending, >= 0

    Returns
    -------
    ndarray, shape (k,)
        theta_i <= 1e-12 theta_1 counts as zero.
    """
    top = max(float(theta[0]), np.finfo(np.float64).tiny) if theta.size else 1.0
    denom = np.where(theta > 1e-12 * top, theta, top)
    return res_norm / denom


def cholesky_qr(V: np.ndarray, blas: RowChunks) -> np.ndarray:
    """Orthonormalise the columns of a nearly orthonormal float64 V at GEMM speed.

    CholeskyQR: V R^-1 with R^T R = V^T V (R ~ I, so V moves only by its loss of
    orthogonality). Falls back to Householder QR when V^T V is not positive definite.

    Parameters
    ----------
    V : ndarray, shape (p, k), float64
    blas : RowChunks

    Returns
    -------
    ndarray, shape (p, k), float64, orthonormal columns
    """
    try:
        R = blas.call(scipy.linalg.cholesky, blas.gram(V), lower=False)
    except np.linalg.LinAlgError:
        Qv, R = blas.call(np.linalg.qr, V)
        return Qv * np.sign(np.where(np.diag(R) == 0, 1.0, np.diag(R)))
    R_inv = blas.call(scipy.linalg.solve_triangular, R, np.eye(R.shape[0]), lower=False)
    return blas.nn(V, R_inv)


def finish(theta: np.ndarray, V: np.ndarray, res_norm: np.ndarray, blas: RowChunks):
    """Final Ritz pairs as singular triplets of X~ (A = X~^T X~).

    Parameters
    ----------
    theta : ndarray, shape (k,)
        Ritz values (eigenvalues of A), descending; negatives (rounding) become 0.
    V : ndarray, shape (p, k)
        Ritz vectors, any float dtype; re-orthonormalised in float64 (:func:`cholesky_qr`).
    res_norm : ndarray, shape (k,)
        ||A v_i - theta_i v_i||.
    blas : RowChunks

    Returns
    -------
    sigma : ndarray, shape (k,), sqrt(theta)
    V : ndarray, shape (p, k), float64, C-contiguous; each column's largest-magnitude entry > 0
    residuals : ndarray, shape (k,), see :func:`relative_residuals`
    """
    V = cholesky_qr(V.astype(np.float64), blas)
    idx = np.array([np.abs(V[:, i]).argmax() for i in range(V.shape[1])], dtype=np.intp)
    V *= np.where(V[idx, np.arange(V.shape[1])] < 0, -1.0, 1.0)
    theta = np.maximum(theta, 0.0)
    return np.sqrt(theta), np.ascontiguousarray(V), relative_residuals(res_norm, theta)


def block_krylov(apply_A: Callable[[np.ndarray], np.ndarray], p: int, k: int, block: int,
                 n_iter: int, seed: int, tol: float | None, dtype: np.dtype,
                 blas: RowChunks) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Top-k eigenpairs of a symmetric PSD A by randomised block Krylov (module docstring).

    Parameters
    ----------
    apply_A : callable
        Q (p x b, ``dtype``) -> A Q (p x b, ``dtype`` or float64); called once per pass.
    p : int
        Order of A.
    k : int
        Eigenpairs wanted, 1 <= k <= p.
    block : int
        Block width l (k + oversampling, <= p).
    n_iter : int
        Passes (applications of A), >= 1; fewer if ``tol`` is met or the space is exhausted.
    seed : int
        Seed of the Gaussian start, ``np.random.default_rng(seed)``.
    tol : float or None
        Stop once every relative residual of the top k is <= tol (checked after each pass).
    dtype : numpy dtype
        float32 or float64: the basis and its products; H and the eigenproblem are float64.
    blas : RowChunks
        Open pool for the products.

    Returns
    -------
    sigma : ndarray, shape (k,)
        sqrt of the Ritz values, descending.
    V : ndarray, shape (p, k), float64
    residuals : ndarray, shape (k,)
        Relative residuals ||A v_i - sigma_i^2 v_i|| / sigma_i^2 from the Krylov relation.
    extra : dict
        ``basis_dim``, ``converged`` (None without ``tol``), ``reorthogonalized`` and
        ``timings_s`` (``orthonormalize``, ``rayleigh_ritz``).

    Notes
    -----
    Memory: the basis K (p x min(n_iter l, p), ``dtype``), H (L x L float64) and two p x l
    blocks. Flops besides the passes: ~4 p L l per pass (projection and SVQB GEMMs).

    References
    ----------
    Musco & Musco (2015), Algorithm 2; Halko, Martinsson & Tropp (2011), Sec. 4.
    """
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    omega = rng.standard_normal((p, block), dtype=dtype)
    t_orth = time.perf_counter() - t0
    if n_iter > 1:                          # the random start itself is not kept (K starts
        W = apply_A(omega)                  # at orth(A Omega), one block less to store), so
        del omega                           # it need not be orthonormal
        t0 = time.perf_counter()
        Q, _ = orthonormalize(W, None, float(np.linalg.norm(W, axis=0).max()), dtype, blas)
        del W
        n_iter -= 1
    else:
        t0 = time.perf_counter()
        ref = float(np.linalg.norm(omega, axis=0).max())
        Q, _ = orthonormalize(omega, None, ref, dtype, blas)
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
        W = apply_A(K[:, start:m])
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
            converged = bool(relative_residuals(res, np.maximum(theta, 0.0)).max() <= tol)
            last = converged
        if not last:
            Qn, again = orthonormalize(Z, K[:, :m], ref, dtype, blas)
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
        theta, V, res = _completed_ritz(apply_A, K[:, :m], k, rng, dtype, blas)
    else:
        theta, Y, res = _krylov_ritz(H, Z, start, m, k, blas)
        V = blas.nn(K[:, :m], Y)
    del K, Z                                # the basis is the bulk of the memory
    sigma, V, residuals = finish(theta, V, res, blas)
    if tol is not None:
        converged = bool(residuals.max() <= tol)
    extra = {"basis_dim": m, "converged": converged, "reorthogonalized": reorthogonalized,
             "timings_s": {"orthonormalize": t_orth, "rayleigh_ritz": time.perf_counter() - t0}}
    return sigma, V, residuals, extra


def _krylov_ritz(H: np.ndarray, Z: np.ndarray, start: int, m: int, k: int, blas: RowChunks):
    """Top-k Ritz pairs of the first m basis columns and their residual norms ||Z y_last||."""
    Hm = np.triu(H[:m, :m]) + np.triu(H[:m, :m], 1).T
    theta, Y = blas.call(ritz, Hm, k)
    R = blas.nn(Z, Y[start:m])
    return theta, Y, np.sqrt(np.einsum("ij,ij->j", R, R, dtype=np.float64))


def _completed_ritz(apply_A: Callable, K: np.ndarray, k: int, rng, dtype: np.dtype,
                    blas: RowChunks):
    """Rayleigh-Ritz on K (p x m, m < k) completed by random orthonormal directions to k
    columns, with one more (explicit) pass; for A of rank < k. Returns (theta, V, res)."""
    E = rng.standard_normal((K.shape[0], k - K.shape[1])).astype(dtype)
    E -= blas.call(lambda: K @ (K.T @ E))
    E, _ = orthonormalize(E, K, 1.0, dtype, blas)
    B = np.hstack([K, E])
    W = apply_A(B).astype(np.float64)
    B64 = B.astype(np.float64)

    def dense_ritz():
        theta, Y = ritz(B64.T @ W, k)
        return theta, (B64 @ Y).astype(dtype), np.linalg.norm(W @ Y - B64 @ (Y * theta), axis=0)

    return blas.call(dense_ritz)


def exact_eigenpairs(X: sp.csr_matrix, k: int, col_center: np.ndarray | None,
                     col_scale: np.ndarray | None, blas: RowChunks):
    """Top-k eigenpairs of the dense float64 A = X~^T X~, X~ = (X - 1 mu^T) diag(s).

    Eigenvalues at or below p eps theta_1 (the rounding floor of A) are set to exactly 0, so a
    rank-deficient X~ gets sigma_i = 0 rather than sqrt(rounding noise) ~ 1e-8 sigma_1.

    Parameters
    ----------
    X : scipy.sparse.csr_matrix, shape (n, p)
        Canonical CSR, any numeric dtype (cast to float64).
    k : int
        1 <= k <= p; k = p is the full spectrum.
    col_center, col_scale : ndarray, shape (p,), float64, or None
        mu and s.
    blas : RowChunks

    Returns
    -------
    sigma : ndarray, shape (k,)
    V : ndarray, shape (p, k), float64
    residuals : ndarray, shape (k,)
    timings_s : dict
        Seconds in ``gram`` and ``eigh``.

    Notes
    -----
    Memory: A (p x p float64, 8 p^2 bytes) plus its eigenvectors; flops O(p^3).
    """
    n, p = X.shape
    t0 = time.perf_counter()
    X64 = sp.csr_matrix((X.data.astype(np.float64, copy=False), X.indices, X.indptr),
                        shape=X.shape, copy=False)
    A = (X64.T @ X64).toarray()
    if col_center is not None:
        c = np.asarray(X64.sum(axis=0)).ravel()
        A -= np.outer(c, col_center) + np.outer(col_center, c - n * col_center)
    if col_scale is not None:
        A *= np.outer(col_scale, col_scale)
    t_gram = time.perf_counter() - t0
    t0 = time.perf_counter()

    def eigenpairs():
        theta, V = ritz(A, k)
        return theta, V, np.linalg.norm(A @ V - V * theta, axis=0)

    theta, V, res = blas.call(eigenpairs)
    # eigenvalues below the rounding floor of A are zero (rank deficiency), not sqrt(noise)
    theta[theta <= p * np.finfo(np.float64).eps * max(float(theta[0]), 0.0)] = 0.0
    t_eig = time.perf_counter() - t0
    sigma, V, residuals = finish(theta, V, res, blas)
    return sigma, V, residuals, {"gram": t_gram, "eigh": t_eig}
