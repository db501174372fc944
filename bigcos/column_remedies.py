"""Column remedies applied implicitly before the SVD: X~ = (X - 1 mu^T) S, X never densified.

Pure numpy/scipy. The paper's Sec. 3 remedy "normalise before learning": standardise the columns
(mean 0, variance 1), or down-weight popular items by count^(-beta). The SVD and the row
projection take (mu, s) and centre/scale inside their products.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp

from bigcos.errors import UserError

PREPROCESSINGS = ("none", "standardize", "popularity")


@dataclass(frozen=True)
class Preprocessing:
    """Column remedy applied implicitly before the SVD (X~ = (X - 1 mu^T) S).

    ``standardize``: mu = column means, S = 1/std (population std over the fitted rows;
    columns of zero variance keep s = 1, their centred values are 0).
    ``popularity``: mu = 0, s_j = count_j^(-beta), count_j = non-zeros of column j in the
    fitted rows (s = 1 for unseen columns, whose entries are all zero).

    References
    ----------
    Paper Sec. 3 (remedies: normalise before learning).
    """

    kind: Literal["none", "standardize", "popularity"] = "none"
    beta: float = 0.75

    def __post_init__(self):
        if self.kind not in PREPROCESSINGS:
            raise UserError(f"kind: unknown column remedy '{self.kind}' "
                            f"({', '.join(PREPROCESSINGS[1:])})")
        if not math.isfinite(self.beta) or self.beta < 0:
            raise UserError(f"beta: must be finite and >= 0, not {self.beta}")

    @property
    def suffix(self) -> str:
        """Appended to model names: ``""``, ``-std`` or ``-pop<beta>``."""
        return {"none": "", "standardize": "-std", "popularity": f"-pop{self.beta:g}"}[self.kind]

    def key(self) -> dict[str, Any]:
        """The parameters that change the result (part of the SVD cache key)."""
        return {"kind": self.kind, **({"beta": self.beta} if self.kind == "popularity" else {})}

    def columns(self, X: sp.csr_matrix) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The column centre and scale of this remedy.

        Parameters
        ----------
        X : scipy.sparse.csr_matrix, shape (n_fit, p)
            The rows the model is fit on.

        Returns
        -------
        col_center : ndarray, shape (p,), float64, or None (meaning 0)
        col_scale : ndarray, shape (p,), float64, or None (meaning 1)
        """
        if self.kind == "none":
            return None, None
        n, p = X.shape
        if self.kind == "popularity":
            counts = np.bincount(X.indices[X.data != 0], minlength=p).astype(np.float64)
            scale = np.ones(p)
            seen = counts > 0
            scale[seen] = counts[seen] ** (-self.beta)
            return None, scale
        total = np.asarray(X.sum(axis=0), np.float64).ravel()
        sq = np.asarray(X.multiply(X).sum(axis=0), np.float64).ravel()
        mu = total / max(n, 1)
        var = np.maximum(sq / max(n, 1) - mu**2, 0.0)
        scale = np.ones(p)
        varying = var > 1e-12 * np.maximum(sq / max(n, 1), np.finfo(np.float64).tiny)
        scale[varying] = 1.0 / np.sqrt(var[varying])
        return mu, scale


def squared_norm(X: sp.csr_matrix, col_center: np.ndarray | None,
                 col_scale: np.ndarray | None) -> float:
    """||(X - 1 mu^T) S||_F^2 without densifying X: sum_j s_j^2 (||x_j||^2 - 2 mu_j 1^T x_j +
    n mu_j^2).

    Parameters
    ----------
    X : scipy.sparse.csr_matrix, shape (n, p)
    col_center : ndarray, shape (p,), or None
        mu (None: 0).
    col_scale : ndarray, shape (p,), or None
        The diagonal of S (None: 1).

    Returns
    -------
    float
    """
    n, p = X.shape
    sq = np.asarray(X.multiply(X).sum(axis=0), np.float64).ravel()
    if col_center is not None:
        sq = sq - 2 * col_center * np.asarray(X.sum(axis=0), np.float64).ravel() \
            + n * col_center**2
    if col_scale is not None:
        sq = sq * col_scale**2
    return float(sq.sum())
