"""Held-out ranking quality per user: the numbers every interval and verdict is built from.

A model ranks, for each evaluated user, every item the user did not train on, by the dot
product or the cosine of ``user_factors`` and ``item_factors``; Recall@K and NDCG@K (binary
relevance, Liang et al. 2018) are kept *per user*, so that statistics (bootstrap intervals,
paired differences, λ selection) can resample users. Pure numpy on top of the exact top-N
kernel: no Dask, no IO.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from bigcos import metrics
from bigcos.blocked_topn import top_n
from bigcos.errors import UserError

MEASURES = ("recall", "ndcg")


@dataclass(frozen=True)
class HeldOut:
    """The users a ranking is judged on.

    ``fold_in`` and ``relevant`` are CSR (m, p) aligned with ``users`` (row i = user
    ``users[i]`` of the matrix): the items each user may be scored from (excluded from the
    ranking) and the hidden items a good ranking puts first.
    """

    users: np.ndarray
    fold_in: sp.csr_matrix
    relevant: sp.csr_matrix

    def __post_init__(self):
        m = len(self.users)
        if self.fold_in.shape[0] != m or self.relevant.shape != self.fold_in.shape:
            raise ValueError(f"HeldOut: {m} users, fold_in {self.fold_in.shape}, "
                             f"relevant {self.relevant.shape}")

    @property
    def n_relevant(self) -> np.ndarray:
        """(m,) int: hidden items per user."""
        return np.diff(self.relevant.indptr)

    def subset(self, rows: np.ndarray) -> HeldOut:
        """The users at positions ``rows`` (e.g. a seeded sample)."""
        return HeldOut(self.users[rows], self.fold_in[rows], self.relevant[rows])


def from_split(train: sp.csr_matrix, test: sp.csr_matrix, users: np.ndarray) -> HeldOut:
    """HeldOut of ``users`` (row indices) from a matrix's train (fold-in) and test parts,
    keeping only users with at least one test item."""
    users = np.asarray(users, np.int64)
    users = users[np.diff(test.indptr)[users] > 0]
    return HeldOut(users, train[users].tocsr(), test[users].tocsr())


def validation_split(train: sp.csr_matrix, candidates: np.ndarray, fraction: float,
                     holdout: float, seed: int, rows: Sequence[int] | None = None,
                     max_rows: int | None = None
                     ) -> tuple[np.ndarray, sp.csr_matrix, sp.csr_matrix]:
    """Validation users drawn from the fit rows, each with a fold-in and a held-out part.

    Parameters
    ----------
    train : CSR (n, p)
    candidates : int array
        Rows that may become validation rows (the fit rows: never the test users).
    fraction : float in [0, 1)
        Share of ``candidates`` to draw (only rows with at least 2 items are eligible).
    holdout : float in (0, 1)
        Share of a validation row's items to hide: round(holdout x items), at least 1 and at
        most all but one.
    seed : int
        One seed draws the rows and the hidden items.
    rows : int sequence, optional
        Use these rows instead of drawing.
    max_rows : int, optional
        At most this many rows (a seeded subsample of the drawn ones).

    Returns
    -------
    rows : (m,) int64 sorted row indices
    fold_in, held_out : CSR (m, p)
    """
    counts = np.diff(train.indptr)
    rng = np.random.default_rng(seed)
    if rows is not None:
        rows = np.unique(np.asarray(rows, np.int64))
        bad = rows[~np.isin(rows, candidates) | (counts[np.clip(rows, 0, len(counts) - 1)] < 2)]
        if len(bad):
            raise UserError(f"validation_rows: row {int(bad[0])} is not a fit row with at "
                            f"least 2 items (rows are 0 .. {train.shape[0] - 1}, held-out "
                            "users excluded)")
    else:
        eligible = candidates[counts[candidates] >= 2]
        rows = eligible[draw_positions(rng, len(candidates), len(eligible), fraction, max_rows)]
    sub = train[rows].tocsr()
    return (rows, *hide_items(sub, holdout, rng))


def draw_positions(rng: np.random.Generator, n_candidates: int, n_eligible: int,
                   fraction: float, max_rows: int | None) -> np.ndarray:
    """Which eligible rows become validation rows, as sorted positions among them.

    ``round(fraction n_candidates)`` (at most ``max_rows`` and ``n_eligible``) positions in
    [0, n_eligible), drawn without replacement. Only counts enter, so a sharded matrix draws
    the same rows as a whole one from per-shard counts (position i is the i-th eligible row
    in row order).

    Returns
    -------
    (m,) int64, sorted.
    """
    m = int(round(fraction * n_candidates))
    if max_rows is not None:
        m = min(m, max_rows)
    return np.sort(rng.choice(n_eligible, size=min(m, n_eligible), replace=False))


def hide_items(sub: sp.csr_matrix, holdout: float, rng: np.random.Generator
               ) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Split validation rows (CSR (m, p)) into fold-in and held-out parts: round(holdout x
    items) of each row's items hidden, at least 1 and at most all but one, at random (``rng``,
    after :func:`draw_positions`)."""
    sub = sub.tocsr()
    sub.sort_indices()
    per_row = np.diff(sub.indptr)
    n_held = np.minimum(np.maximum(1, np.round(holdout * per_row)), per_row - 1).astype(np.int64)
    row_of = np.repeat(np.arange(sub.shape[0]), per_row)
    order = np.lexsort((rng.random(sub.nnz), row_of))  # a random order within each row
    rank = np.empty(sub.nnz, np.int64)
    rank[order] = np.arange(sub.nnz) - sub.indptr[row_of[order]]
    is_held = rank < n_held[row_of]

    def part(mask: np.ndarray) -> sp.csr_matrix:
        return sp.csr_matrix((sub.data[mask], (row_of[mask], sub.indices[mask])),
                             shape=sub.shape)

    return part(~is_held), part(is_held)


def per_user(user_factors: np.ndarray, item_factors: np.ndarray, heldout: HeldOut,
             metric_names: Sequence[str] = ("dot", "cos"), k: int = 20
             ) -> dict[str, dict[str, np.ndarray]]:
    """Recall@k and NDCG@k of every held-out user, by each metric.

    Parameters
    ----------
    user_factors : (m, d) float array
        Row i scores user ``heldout.users[i]``; the model's prediction of the user's row
        of X is ``user_factors @ item_factors.T``.
    item_factors : (p, d) float array
    heldout : HeldOut
    metric_names : "dot" and/or "cos"
    k : int
        List length (items ranked per user).

    Returns
    -------
    ``{metric: {"recall": (m,), "ndcg": (m,)}}`` float64 arrays, aligned with
    ``heldout.users`` (NaN for a user without hidden items).

    Notes
    -----
    Memory: the kernel's blocks plus (m, k) lists per metric. Ties go to the smaller item
    index (:func:`bigcos.neighbor_lists.top_n`).
    """
    ranked = top_n(user_factors, item_factors, k, tuple(metric_names), exclude=heldout.fold_in)
    rows = np.arange(len(heldout.users))
    n_rel = heldout.n_relevant
    out = {}
    for metric in metric_names:
        hits = metrics.relevance_hits(ranked[metric][0], rows, heldout.relevant)
        out[metric] = {"recall": metrics.recall_at_k(hits, n_rel, k),
                       "ndcg": metrics.ndcg_at_k(hits, n_rel, k)}
    return out
