"""Train with respect to cosine (the paper's first remedy, Sec. 3): objective, gradient, L-BFGS.

Notation as in MATH.md. X (n x p, sparse) holds the rows the model is fit on, split into row
blocks X_b; A, B are p x k; N(.) normalises every row to unit length (a zero row stays zero);

    M = X A,   P = N(M)  (n x k),   Q = N(B)  (p x k),   scores tau P Q^T.

Objective (no penalty term)::

    L(A, B, tau) = ||X - tau P Q^T||_F^2
                 = ||X||_F^2 - 2 tau s + tau^2 t,
    s = sum(X Q (.) P) = sum_b sum(X_b Q (.) P_b),     t = tr((P^T P)(Q^T Q)) = ||P Q^T||_F^2,

so neither the n x p product nor a dense X is formed: every block contributes
s_b, P_b^T P_b (k x k) and three p x k matrices (below), at O(nnz_b k + (n_b + p) k^2) flops.
tau is profiled out: tau* = s / t (0 when t = 0), L*(A, B) = ||X||^2 - s^2 / t, and by the
envelope theorem dL*/d(A, B) = dL/d(A, B) at tau = tau*.

Regularisation: by the rank k and by early stopping on validation rows (rows left out of X:
each row's fold-in items give p_u = N(x_u A), the model ranks the other items by cos(x_u A,
b_i) = p_u q_i^T, and training stops when Recall@20 of the held-out items has not improved for
``patience`` iterations; the best iterate is returned). There is deliberately no penalty:
N cancels any penalty on the scale of A or B (A -> cA and b_i -> c b_i change nothing), and
a penalty on the product, lam ||tau P Q^T||_F^2, only rescales the profiled objective
(L* = ||X||^2 - s^2 / ((1 + lam) t)), so it has the same minimisers.

Gradient (chain rule through N; row-wise, for m with p = m / ||m||: dL/dm = (g - p (p . g)) /
||m|| with g = dL/dp, and dL/dm = 0 for a zero row, whose score is 0)::

    dL/dP_b = -2 tau X_b Q + 2 tau^2 P_b (Q^T Q)
    dL/dA   = sum_b X_b^T J_b^T(dL/dP_b)      (J_b^T: the row-wise map above at M_b)
            = -2 tau sum_b X_b^T J_b^T(X_b Q) + 2 tau^2 sum_b X_b^T J_b^T(P_b Q^T Q)
    dL/dQ   = -2 tau sum_b X_b^T P_b + 2 tau^2 Q (sum_b P_b^T P_b),   dL/dB = J_B^T(dL/dQ)

J_b^T is linear, so the A-gradient splits into two per-block sums that do not need tau:
one pass over X per evaluation (see :class:`BlockTerms`). Everything is float64.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import scipy.optimize
import scipy.sparse as sp

from bigcos import metrics

RECALL_AT = 20


# --------------------------------------------------------------------------- row normalisation
def normalize_rows(M: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N(M), 1/||m_u||) for M (m, k): unit rows, and 0 (both) for zero rows."""
    norms = np.sqrt(np.einsum("ij,ij->i", M, M))
    inv = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
    return M * inv[:, None], inv


def normalize_backward(P: np.ndarray, inv_norms: np.ndarray, grad_P: np.ndarray) -> np.ndarray:
    """dL/dM from dL/dP for P = N(M): (g - p (p . g)) / ||m|| row-wise; 0 on zero rows."""
    along = np.einsum("ij,ij->i", P, grad_P)
    return (grad_P - P * along[:, None]) * inv_norms[:, None]


# --------------------------------------------------------------------------- one row block
@dataclass
class BlockTerms:
    """What one row block X_b (or a sum of blocks) contributes, given A, Q = N(B), Q^T Q.

    ``cross`` s_b = sum(X_b Q (.) P_b); ``gram_p`` P_b^T P_b (k, k); ``xtp`` X_b^T P_b (p, k);
    ``d_cross`` ds_b/dA = X_b^T J_b^T(X_b Q) (p, k); ``d_quad`` dt_b/dA with
    t_b = tr(P_b^T P_b Q^T Q): 2 X_b^T J_b^T(P_b Q^T Q) (p, k). Memory: 3 p k + k^2 floats.
    Sums of blocks add field by field (``+``).
    """

    cross: float
    gram_p: np.ndarray
    xtp: np.ndarray
    d_cross: np.ndarray
    d_quad: np.ndarray

    def __add__(self, other: BlockTerms) -> BlockTerms:
        return BlockTerms(self.cross + other.cross, self.gram_p + other.gram_p,
                          self.xtp + other.xtp, self.d_cross + other.d_cross,
                          self.d_quad + other.d_quad)


def block_terms(X_block: sp.csr_matrix, A: np.ndarray, Q: np.ndarray,
                gram_q: np.ndarray) -> BlockTerms:
    """The :class:`BlockTerms` of X_block (n_b, p) at A (p, k), Q = N(B) (p, k), gram_q = Q^T Q.

    Cost: three sparse-dense products (3 nnz_b k) and O(n_b k^2) dense work.
    """
    X_block = sp.csr_matrix(X_block)
    P, inv = normalize_rows(np.asarray(X_block @ A, np.float64))
    XQ = np.asarray(X_block @ Q, np.float64)
    Xt = X_block.T
    return BlockTerms(float(np.einsum("ij,ij->", XQ, P)), P.T @ P,
                      np.asarray(Xt @ P), np.asarray(Xt @ normalize_backward(P, inv, XQ)),
                      2.0 * np.asarray(Xt @ normalize_backward(P, inv, P @ gram_q)))


def sum_terms(parts: list[BlockTerms]) -> BlockTerms:
    """Sum of block terms in list order (fixed order: the same floats for any scheduler)."""
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total


def serial_terms(blocks: list[sp.csr_matrix]) -> Callable[..., BlockTerms]:
    """A ``terms(A, Q, gram_q)`` function evaluating ``blocks`` one after the other."""
    return lambda A, Q, gram_q: sum_terms([block_terms(b, A, Q, gram_q) for b in blocks])


# --------------------------------------------------------------------------- objective
@dataclass(frozen=True)
class Evaluation:
    """L and its gradient at (A, B): loss, grad_A (p, k), grad_B (p, k), tau, s and t."""

    loss: float
    grad_A: np.ndarray
    grad_B: np.ndarray
    tau: float
    cross: float
    quad: float


def evaluate(A: np.ndarray, B: np.ndarray, terms: Callable[..., BlockTerms], sq_norm: float,
             tau: float | None = None) -> Evaluation:
    """L(A, B, tau) and its exact gradient w.r.t. A and B; tau = None profiles tau out.

    ``terms(A, Q, gram_q)`` returns the :class:`BlockTerms` summed over the row blocks of X
    (one pass over X); ``sq_norm`` = ||X||_F^2. With tau profiled (tau* = s / t), the gradient
    is that of L*(A, B) = ||X||^2 - s^2 / t.
    """
    A = np.asarray(A, np.float64)
    Q, inv_b = normalize_rows(np.asarray(B, np.float64))
    gram_q = Q.T @ Q
    total = terms(A, Q, gram_q)
    s, t = total.cross, float(np.sum(total.gram_p * gram_q))  # tr(G_P G_Q), both symmetric
    if tau is None:
        tau = s / t if t > 0 else 0.0
    loss = sq_norm - 2.0 * tau * s + tau**2 * t
    grad_A = -2.0 * tau * total.d_cross + tau**2 * total.d_quad
    grad_Q = -2.0 * tau * total.xtp + 2.0 * tau**2 * (Q @ total.gram_p)
    return Evaluation(float(loss), grad_A, normalize_backward(Q, inv_b, grad_Q), float(tau),
                      float(s), t)


def dense_loss(X: np.ndarray | sp.spmatrix, A: np.ndarray, B: np.ndarray, tau: float) -> float:
    """||X - tau N(XA) N(B)^T||_F^2 by forming the n x p product (a check for small inputs)."""
    Xd = X.toarray() if sp.issparse(X) else np.asarray(X)
    Xd = Xd.astype(np.float64)
    P, _ = normalize_rows(Xd @ A)
    Q, _ = normalize_rows(np.asarray(B, np.float64))
    return float(np.sum((Xd - tau * P @ Q.T) ** 2))


# --------------------------------------------------------------------------- warm start
def warm_start(V: np.ndarray, sigma: np.ndarray, n_rows: int,
               lam: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(A0, B0) from the top-k SVD of X: objective 1's ``symmetric`` model, rescaled.

    A = c V_k G^(1/2), B = N(V_k G^(1/2)) with G = dMat(sigma^2 / (sigma^2 + lam)) (lam = 0:
    A, B span V_k). N(XA) and N(B) do not see c or B's row lengths, so these only condition
    the optimiser: c makes the root-mean-square row of XA unit length, c^2 = n / sum(sigma_i^2
    g_i) (as XV_k = U_k Sigma_k), and Q's rows start at unit length like B's.
    """
    V = np.asarray(V, np.float64)
    sigma = np.asarray(sigma, np.float64)
    g = np.divide(sigma**2, sigma**2 + lam, out=np.zeros_like(sigma), where=sigma > 0)
    base = V * np.sqrt(g)
    energy = float(np.sum(sigma**2 * g))
    scale = np.sqrt(n_rows / energy) if energy > 0 else 1.0
    return base * scale, normalize_rows(base)[0]


# --------------------------------------------------------------------------- validation
def cosine_recall(X_fold: sp.csr_matrix, relevant: sp.csr_matrix, A: np.ndarray, B: np.ndarray,
                  at: int = RECALL_AT, chunk: int = 2048) -> float:
    """Mean Recall@``at`` of ranking every item not in a row's fold-in by cos(x_u A, b_i).

    X_fold, relevant: (m, p) CSR, fold-in and held-out items of m validation rows; rows with no
    held-out item are skipped. Memory: ``chunk`` x p scores at a time. Recall counts the set
    of the top ``at`` items, so their order (and ties beyond a score) cannot change it.
    """
    X_fold, relevant = sp.csr_matrix(X_fold), sp.csr_matrix(relevant)
    n_rel = np.diff(relevant.indptr)
    rows = np.flatnonzero(n_rel > 0)
    if not len(rows):
        return float("nan")
    Q, _ = normalize_rows(np.asarray(B, np.float64))
    at = min(at, Q.shape[0])
    recalls = []
    for start in range(0, len(rows), chunk):
        idx = rows[start:start + chunk]
        fold = X_fold[idx]
        P, _ = normalize_rows(np.asarray(fold @ A, np.float64))
        S = P @ Q.T
        S[fold.nonzero()] = -np.inf
        top = np.argpartition(-S, at - 1, axis=1)[:, :at]
        hits = metrics.relevance_hits(top, idx, relevant)
        recalls.append(metrics.recall_at_k(hits, n_rel[idx], at))
    return float(np.nanmean(np.concatenate(recalls)))


# --------------------------------------------------------------------------- optimiser
@dataclass
class CosineFit:
    """Result of :func:`fit_lbfgs`.

    A, B (p, k) float64 and the profiled ``tau`` of the returned iterate; ``loss`` its L;
    ``loss_curve[i]``: L after iteration i (index 0: the warm start); ``validation_curve``:
    validation Recall@20 by cosine at the same iterates (empty without validation);
    ``best_iteration``: the iterate returned; ``iterations``: L-BFGS iterations run;
    ``evaluations``: passes over X; ``stop_reason``: why it stopped.
    """

    A: np.ndarray
    B: np.ndarray
    tau: float
    loss: float
    loss_curve: list[float]
    validation_curve: list[float] = field(default_factory=list)
    best_iteration: int = 0
    iterations: int = 0
    evaluations: int = 0
    stop_reason: str = ""


def fit_lbfgs(A0: np.ndarray, B0: np.ndarray, terms: Callable[..., BlockTerms], sq_norm: float,
              *, iterations: int = 100, tol: float = 1e-7,
              validate: Callable[[np.ndarray, np.ndarray], float] | None = None,
              patience: int = 10) -> CosineFit:
    """Minimise L*(A, B) (tau profiled) with scipy's L-BFGS-B from (A0, B0).

    ``terms``: see :func:`evaluate`. Stops after ``iterations`` iterations, when the relative
    decrease of L* per iteration falls below ``tol`` (L-BFGS-B's ``ftol``), or, when
    ``validate(A, B)`` (higher is better) is given, once it has not improved for ``patience``
    iterations; the iterate with the best validation score is then returned (the last one
    without ``validate``). Each iteration costs one or more passes over X (line search).
    """
    p, k = A0.shape
    size = p * k
    calls = [0]

    def unpack(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return x[:size].reshape(p, k), x[size:].reshape(p, k)

    def fun(x: np.ndarray) -> tuple[float, np.ndarray]:
        calls[0] += 1
        ev = evaluate(*unpack(x), terms, sq_norm)
        return ev.loss, np.concatenate([ev.grad_A.ravel(), ev.grad_B.ravel()])

    x0 = np.concatenate([np.asarray(A0, np.float64).ravel(), np.asarray(B0, np.float64).ravel()])
    loss_curve = [fun(x0)[0]]
    scores = [validate(*unpack(x0))] if validate else []
    best = {"x": x0, "iteration": 0}

    def callback(intermediate_result: scipy.optimize.OptimizeResult) -> None:
        loss_curve.append(float(intermediate_result.fun))
        if validate is None:
            best.update(x=intermediate_result.x.copy(), iteration=len(loss_curve) - 1)
            return
        scores.append(validate(*unpack(intermediate_result.x)))
        if scores[-1] > scores[best["iteration"]]:
            best.update(x=intermediate_result.x.copy(), iteration=len(scores) - 1)
        elif len(scores) - 1 - best["iteration"] >= patience:
            raise StopIteration

    result = scipy.optimize.minimize(fun, x0, jac=True, method="L-BFGS-B", callback=callback,
                                     options={"maxiter": iterations, "ftol": tol, "gtol": 0.0})
    stop = ("early stopping" if validate is not None and result.status == 99
            else str(result.message))
    A, B = unpack(best["x"])
    final = evaluate(A, B, terms, sq_norm)
    return CosineFit(A.copy(), B.copy(), final.tau, final.loss, loss_curve, scores,
                     best["iteration"], len(loss_curve) - 1, calls[0] + 1, stop)
