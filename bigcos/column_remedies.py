"""Remedies applied before the SVD: X~ = (X - 1 mu^T) S or X~ = R X, X never densified.

Pure numpy/scipy. The paper's Sec. 3 remedy "normalise before learning": standardise the columns
(mean 0, variance 1), down-weight popular items by count^(-beta), or down-weight active users by
count^(-gamma). The SVD and the row projection take the column remedy (mu, s) and centre/scale
inside their products; the row remedy R = diag(r) is applied to the CSR data itself
(:func:`scale_rows`: one scaled copy of the non-zeros, same sparsity pattern).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp

from bigcos.errors import UserError

PREPROCESSINGS = ("none", "standardize", "popularity", "rows")


@dataclass(frozen=True)
class ColumnSums:
    """Per-column sums of some rows of X, all a remedy and the loss need of them.

    ``n`` rows; ``total`` (p,) = X^T 1, ``sq`` (p,) = sum of squares, ``counts`` (p,) = stored
    non-zeros, all float64. Sums of several row sets add up (:meth:`combine`, in a fixed
    order, so the result does not depend on where each part was computed).
    """

    n: int
    total: np.ndarray
    sq: np.ndarray
    counts: np.ndarray

    @staticmethod
    def combine(parts: list[ColumnSums]) -> ColumnSums:
        """The sums of the union of disjoint row sets, added in the order given (one part is
        returned as is)."""
        out = parts[0]
        for part in parts[1:]:
            out = ColumnSums(out.n + part.n, out.total + part.total, out.sq + part.sq,
                             out.counts + part.counts)
        return out


def column_sums(X: sp.csr_matrix) -> ColumnSums:
    """:class:`ColumnSums` of the rows of X (CSR (n, p)); memory: three (p,) arrays."""
    p = X.shape[1]
    return ColumnSums(X.shape[0], np.asarray(X.sum(axis=0), np.float64).ravel(),
                      np.asarray(X.multiply(X).sum(axis=0), np.float64).ravel(),
                      np.bincount(X.indices[X.data != 0], minlength=p).astype(np.float64))


@dataclass(frozen=True)
class Preprocessing:
    """Remedy applied before the SVD: X~ = (X - 1 mu^T) S (columns) or X~ = diag(r) X (rows).

    ``standardize``: mu = column means, S = 1/std (population std over the fitted rows;
    columns of zero variance keep s = 1, their centred values are 0).
    ``popularity``: mu = 0, s_j = count_j^(-beta), count_j = non-zeros of column j in the
    fitted rows (s = 1 for unseen columns, whose entries are all zero).
    ``rows`` (user-activity weighting): r_u = count_u^(-gamma), count_u = non-zeros of row u
    (r = 1 for empty rows, whose entries are all zero). r_u depends on row u alone, so a
    held-out user's fold-in row is scaled by the same rule as a fitted row.

    References
    ----------
    Paper Sec. 3 (remedies: normalise before learning); MATH.md "Remedies".
    """

    kind: Literal["none", "standardize", "popularity", "rows"] = "none"
    beta: float = 0.75
    gamma: float = 0.5

    def __post_init__(self):
        if self.kind not in PREPROCESSINGS:
            raise UserError(f"kind: unknown column remedy '{self.kind}' "
                            f"({', '.join(PREPROCESSINGS[1:])})")
        if not math.isfinite(self.beta) or self.beta < 0:
            raise UserError(f"beta: must be finite and >= 0, not {self.beta}")
        if not math.isfinite(self.gamma) or self.gamma < 0:
            raise UserError(f"gamma: must be finite and >= 0, not {self.gamma}")

    @property
    def suffix(self) -> str:
        """Appended to model names: ``""``, ``-std``, ``-pop<beta>`` or ``-rows<gamma>``."""
        return {"none": "", "standardize": "-std", "popularity": f"-pop{self.beta:g}",
                "rows": f"-rows{self.gamma:g}"}[self.kind]

    def key(self) -> dict[str, Any]:
        """The parameters that change the result (part of the SVD cache key)."""
        exponent = {"popularity": {"beta": self.beta}, "rows": {"gamma": self.gamma}}
        return {"kind": self.kind, **exponent.get(self.kind, {})}

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
        if self.kind in ("none", "rows"):
            return None, None
        return self.columns_of_sums(column_sums(X))

    def columns_of_sums(self, sums: ColumnSums) -> tuple[np.ndarray | None, np.ndarray | None]:
        """:meth:`columns` from the column sums of the fitted rows (e.g. added up over the
        shards of a matrix: :meth:`ColumnSums.combine`)."""
        if self.kind in ("none", "rows"):
            return None, None
        n, p = sums.n, len(sums.total)
        if self.kind == "popularity":
            counts = sums.counts
            scale = np.ones(p)
            seen = counts > 0
            scale[seen] = counts[seen] ** (-self.beta)
            return None, scale
        total, sq = sums.total, sums.sq
        mu = total / max(n, 1)
        var = np.maximum(sq / max(n, 1) - mu**2, 0.0)
        scale = np.ones(p)
        varying = var > 1e-12 * np.maximum(sq / max(n, 1), np.finfo(np.float64).tiny)
        scale[varying] = 1.0 / np.sqrt(var[varying])
        return mu, scale

    def rows(self, X: sp.csr_matrix) -> np.ndarray | None:
        """The row scale r of this remedy (None unless ``kind == "rows"``).

        Parameters
        ----------
        X : scipy.sparse.csr_matrix, shape (n, p)
            Any rows (fitted or folded in): r_u depends on row u alone.

        Returns
        -------
        row_scale : ndarray, shape (n,), float64, or None (meaning 1)
            count_u^(-gamma), count_u = stored non-zeros of row u; 1 for an empty row.
        """
        if self.kind != "rows":
            return None
        nonzero_before = np.concatenate([[0], np.cumsum(X.data != 0)])
        counts = (nonzero_before[X.indptr[1:]] - nonzero_before[X.indptr[:-1]]).astype(np.float64)
        scale = np.ones(X.shape[0])
        seen = counts > 0
        scale[seen] = counts[seen] ** (-self.gamma)
        return scale


def scale_rows(X: sp.csr_matrix, row_scale: np.ndarray | None, dtype=None) -> sp.csr_matrix:
    """diag(r) X without densifying X: the CSR data times r of its row.

    Parameters
    ----------
    X : scipy.sparse.csr_matrix, shape (n, p)
    row_scale : ndarray, shape (n,), or None
        r (None: X itself is returned, no copy).
    dtype : numpy dtype, optional
        Of the scaled data (default: float64). The products are formed in float64 and cast.

    Returns
    -------
    scipy.sparse.csr_matrix, shape (n, p)
        Shares X's ``indices`` and ``indptr``; memory: one new data array (nnz itemsize bytes).
    """
    if row_scale is None:
        return X
    dtype = np.dtype(np.float64 if dtype is None else dtype)
    factor = np.repeat(np.asarray(row_scale, np.float64), np.diff(X.indptr))
    data = (X.data.astype(np.float64) * factor).astype(dtype, copy=False)
    out = sp.csr_matrix((data, X.indices, X.indptr), shape=X.shape, copy=False)
    out.has_sorted_indices = X.has_sorted_indices
    return out


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
    return squared_norm_of_sums(column_sums(X), col_center, col_scale)


def squared_norm_of_sums(sums: ColumnSums, col_center: np.ndarray | None,
                         col_scale: np.ndarray | None) -> float:
    """:func:`squared_norm` from the :class:`ColumnSums` of the rows."""
    n, sq = sums.n, sums.sq
    if col_center is not None:
        sq = sq - 2 * col_center * sums.total + n * col_center**2
    if col_scale is not None:
        sq = sq * col_scale**2
    return float(sq.sum())
