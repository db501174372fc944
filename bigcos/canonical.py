"""The dot-equivalent family of any factor model: canonical form and its members (pure numpy).

MATH.md, "Any factor model: the dot-equivalent family". A model scores user u and item i by
``P_u . B_i`` with user embeddings P (n x k) and item embeddings B (p x k). With the Grams
``P'P = R_P' R_P`` and ``B'B = R_B' R_B`` (k x k, streamed over row blocks) and the SVD
``R_P R_B' = W S Z'``::

    P B' = (P R_P^-1 W) S (B R_B^-1 Z)'        (the canonical form; both factors orthonormal)

and every member ``P_D = P R_P^-1 W S^1/2 D``, ``B_D = B R_B^-1 Z S^1/2 D^-1`` (D positive
diagonal) has exactly the same scores P_D B_D' = P B', while cosines change with D.
Named members: ``balanced`` D = I, ``item-orthonormal`` D = S^1/2 (B_D = B R_B^-1 Z),
``user-orthonormal`` D = S^-1/2 (P_D = P R_P^-1 W).

Where a Gram is rank-deficient (numerically: eigenvalues below ``rtol`` times the largest) its
Cholesky factor is replaced by the eigen-factor ``R = Lambda^1/2 E'`` of the positive part
(r x k) and R^-1 by the pseudo-inverse ``E Lambda^-1/2`` (k x r): the canonical form then lives
in r <= k dimensions, and singular values of R_P R_B' below ``rtol`` times the largest are
dropped too (they carry no score).

Where a model sits in its family: with ``B = V~ M`` (V~ = B R_B^-1 Z orthonormal, M = Z' R_B),
B is a member exactly when ``M M'`` is diagonal, and then ``D_j = sqrt(s_j / (M M')_jj)``. The
*item norm ratio* ``sqrt((M M')_jj / s_j)`` is the size of the model's item factors along
canonical dimension j relative to the balanced member's; the user ratio likewise with
``N = W' R_P``. Training with an L2 penalty on both factors (objective 2, ALS weight decay)
ends, at a stationary point, with P'P = B'B, hence M M' = S: every ratio 1 (balanced, up to
rotation). A penalty on the product alone (objective 1) or none leaves D free.

R_P and R_B are the R factors of thin QRs of P and B. From the Grams alone (one pass over the
rows, Cholesky-QR) they lose accuracy as cond(P)^2; :func:`qr_factor` and :func:`refine_factor`
add CholeskyQR2's second pass (the Gram of ``P R_P^-1``, close to I), which restores working
precision. Both passes are sums over row blocks, so they run as map-reduces over shards of P
that never leave their workers (:mod:`bigcos.embedding_audit.shards`).

Memory: the Grams cost O(k^2) beside one block of rows; every other array here is k x k.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg as sla

RTOL = 1e-10
NAMED_MEMBERS = ("balanced", "item-orthonormal", "user-orthonormal")


def gram(x: np.ndarray, block_rows: int = 1 << 16, right: np.ndarray | None = None
         ) -> np.ndarray:
    """``x' x`` (k x k, float64) accumulated over blocks of ``block_rows`` rows of x (m x k);
    with ``right`` (k x r), the Gram ``(x right)' (x right)`` (r x r) of the projected rows.

    x may be float32 or a memory map; each block is promoted to float64 before its product,
    so memory is 8 * block_rows * k bytes beyond the result. The sum over row blocks is the
    map-reduce the audit runs over user shards on Dask workers (one block per shard).
    """
    width = x.shape[1] if right is None else right.shape[1]
    out = np.zeros((width, width), np.float64)
    for start in range(0, x.shape[0], block_rows):
        block = np.asarray(x[start:start + block_rows], np.float64)
        if right is not None:
            block = block @ right
        out += block.T @ block
    return out


def triangular_factor(g: np.ndarray, rtol: float = RTOL) -> tuple[np.ndarray, np.ndarray]:
    """A factor R (r x k) with ``R'R = g`` and its right inverse R^+ (k x r, ``R R^+ = I_r``).

    Cholesky (R upper triangular, r = k) when g is numerically positive definite; otherwise the
    eigen-factor of the eigenvalues above ``rtol`` times the largest (r < k).
    """
    g = (g + g.T) / 2
    scale = float(np.max(np.abs(np.diag(g)), initial=0.0))
    if scale == 0.0:
        return np.zeros((0, g.shape[0])), np.zeros((g.shape[0], 0))
    try:
        r = np.linalg.cholesky(g).T
        diag = np.abs(np.diag(r))
        if diag.min() ** 2 > rtol * diag.max() ** 2 * 1e2:
            return r, sla.solve_triangular(r, np.eye(len(r)), lower=False)
    except np.linalg.LinAlgError:
        pass
    w, e = np.linalg.eigh(g)
    keep = w > rtol * w.max()
    w, e = w[keep][::-1], e[:, keep][:, ::-1]
    root = np.sqrt(w)
    return root[:, None] * e.T, e / root


def refine_factor(factor: tuple[np.ndarray, np.ndarray], projected_gram: np.ndarray,
                  rtol: float = RTOL) -> tuple[np.ndarray, np.ndarray]:
    """One re-orthogonalisation step of Cholesky-QR (CholeskyQR2).

    ``factor`` = (R, R^+) from :func:`triangular_factor` of ``x'x``; ``projected_gram`` the
    Gram of ``x R^+`` (``gram(x, right=R^+)``, r x r, the identity up to rounding). Returns
    (R2 R, R^+ R2^-1) with R2 the factor of ``projected_gram``: ``x (R^+ R2^-1)`` is
    orthonormal to working precision even when x'x lost half the digits (cond(x) up to
    ~1e7 in float64), and ``R2 R`` is the R of x's thin QR (positive diagonal).

    References
    ----------
    Fukaya, Nakatsukasa, Yanagisawa, Yamamoto (2014), "CholeskyQR2: a simple and
    communication-avoiding algorithm for computing a tall-skinny QR factorization".
    """
    r, r_inv = factor
    r2, r2_inv = triangular_factor(projected_gram, rtol)
    return r2 @ r, r_inv @ r2_inv


def qr_factor(x: np.ndarray, block_rows: int = 1 << 16, rtol: float = RTOL
              ) -> tuple[np.ndarray, np.ndarray]:
    """(R, R^+) of the thin QR of x (m x k) by blocked CholeskyQR2: two passes over x's rows,
    memory O(k^2) beside one block (see :func:`gram`, :func:`refine_factor`)."""
    first = triangular_factor(gram(x, block_rows), rtol)
    return refine_factor(first, gram(x, block_rows, right=first[1]), rtol)


@dataclass(frozen=True)
class Canonical:
    """The canonical form of a factor model ``P B'`` (see the module docstring).

    s: (r,) singular values, descending. user_map (k_P x r): ``P @ user_map`` = P R_P^-1 W,
    orthonormal columns. item_map (k_B x r): ``B @ item_map`` = B R_B^-1 Z.
    user_coords (r x k_P) = W' R_P and item_coords (r x k_B) = Z' R_B, so that
    ``P = (P @ user_map) @ user_coords`` and likewise for B (on the factors' row spaces).
    """

    s: np.ndarray
    user_map: np.ndarray
    item_map: np.ndarray
    user_coords: np.ndarray
    item_coords: np.ndarray

    @property
    def rank(self) -> int:
        return len(self.s)


def canonical_form(user_gram: np.ndarray, item_gram: np.ndarray, rtol: float = RTOL) -> Canonical:
    """Canonical form of ``P B'`` from the Grams P'P (k x k) and B'B (k x k) (see :func:`gram`).

    Returns
    -------
    Canonical with ``P B' = (P user_map) diag(s) (B item_map)'``.
    """
    return canonical_from_factors(triangular_factor(user_gram, rtol),
                                  triangular_factor(item_gram, rtol), rtol)


def canonical_from_factors(user_factor: tuple[np.ndarray, np.ndarray],
                           item_factor: tuple[np.ndarray, np.ndarray],
                           rtol: float = RTOL) -> Canonical:
    """Canonical form of ``P B'`` from the factors (R_P, R_P^+) and (R_B, R_B^+) of the thin
    QRs of P and B (:func:`triangular_factor`, or :func:`qr_factor` / :func:`refine_factor`
    for CholeskyQR2 accuracy). Only k x k arrays: P and B are never needed here."""
    r_p, r_p_inv = user_factor
    r_b, r_b_inv = item_factor
    w, s, zt = np.linalg.svd(r_p @ r_b.T, full_matrices=False)
    keep = s > rtol * s[0] if len(s) else np.zeros(0, bool)
    w, s, z = w[:, keep], s[keep], zt[keep].T
    # fix signs (the SVD's are arbitrary): each item direction's largest coordinate positive
    sign = np.sign(z[np.argmax(np.abs(z), axis=0), np.arange(z.shape[1])])
    sign[sign == 0] = 1.0
    w, z = w * sign, z * sign
    return Canonical(s, r_p_inv @ w, r_b_inv @ z, w.T @ r_p, z.T @ r_b)


def member_maps(canon: Canonical, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(user map k_P x r, item map k_B x r) of the member with diagonal ``d`` (r,) > 0.

    ``P @ user map`` = P R_P^-1 W S^1/2 D and ``B @ item map`` = B R_B^-1 Z S^1/2 D^-1: the
    member's embeddings, with scores equal to P B'.
    """
    d = np.asarray(d, np.float64)
    if d.shape != canon.s.shape or not np.all(d > 0):
        raise ValueError(f"d must be {canon.rank} positive values, got shape {d.shape}")
    root = np.sqrt(canon.s)
    return canon.user_map * (root * d), canon.item_map * (root / d)


def named_scalings(s: np.ndarray) -> dict[str, np.ndarray]:
    """The named members' D (r,): balanced I, item-orthonormal S^1/2, user-orthonormal S^-1/2."""
    root = np.sqrt(np.asarray(s, np.float64))
    return {"balanced": np.ones_like(root), "item-orthonormal": root,
            "user-orthonormal": 1.0 / root}


def random_scalings(rank: int, count: int, seed: int = 0, spread: float = 10.0
                    ) -> dict[str, np.ndarray]:
    """``count`` seeded random D (rank,), each entry log-uniform on [1/spread, spread]."""
    if spread < 1:
        raise ValueError(f"spread must be >= 1, got {spread}")
    rng = np.random.default_rng(seed)
    log = np.log(spread)
    return {f"random-{i + 1}": np.exp(rng.uniform(-log, log, rank)) for i in range(count)}


@dataclass(frozen=True)
class Placement:
    """Where a model's own factors sit in its family (see the module docstring).

    item_ratio / user_ratio (r,): sqrt((M M')_jj / s_j) and sqrt((N N')_jj / s_j), 1 for the
    balanced member. fitted_d (r,): the D of the member whose item cosines the model's item
    embeddings reproduce, exact when ``item_off_diagonal`` is 0 (the relative Frobenius mass of
    M M' off its diagonal; 0 means B is a member up to rotation).
    """

    item_ratio: np.ndarray
    user_ratio: np.ndarray
    fitted_d: np.ndarray
    item_off_diagonal: float
    user_off_diagonal: float


def _ratio_and_off(coords: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, float]:
    mm = coords @ coords.T
    diag = np.diag(mm)
    off = mm - np.diag(diag)
    total = np.linalg.norm(mm)
    return np.sqrt(diag / s), float(np.linalg.norm(off) / total) if total > 0 else 0.0


def placement(canon: Canonical) -> Placement:
    """Measure how the model's own P and B share the scale S between them, per dimension."""
    item_ratio, item_off = _ratio_and_off(canon.item_coords, canon.s)
    user_ratio, user_off = _ratio_and_off(canon.user_coords, canon.s)
    return Placement(item_ratio, user_ratio, 1.0 / item_ratio, item_off, user_off)
