"""Pure metric functions comparing neighbour lists, rankings and embeddings (numpy only).

Conventions shared by every function:

- A *neighbour list* is a row of an (m, N) integer array of matrix indices, best first. Rows are
  m queries handled at once (vectorised; no Python loop over queries). The value ``-1`` pads a
  list shorter than N; padding is never a match and never counts as a neighbour.
- A list holds no repeated index (top-N lists never do).
- Per-query metrics return float64 arrays of shape (m,); NaN marks a query for which the metric
  is undefined (stated per function), so ``np.nanmean`` summarises.

Definitions (A, B are two lists of one query; A_d is the prefix of depth d):

- Jaccard@N = |A ∩ B| / |A ∪ B| (1.0 when both lists are empty).
- Rank-biased overlap (Webber, Moffat & Zobel 2010, "A similarity measure for indefinite
  rankings", Eq. 32: the *extrapolated* RBO for two lists of the same depth k)::

      RBO_ext(A, B; p) = (X_k / k) p^k + ((1 - p) / p) * sum_{d=1..k} (X_d / d) p^d,
      X_d = |A_d ∩ B_d|

  It is 1 for identical lists and 0 for disjoint ones; p sets the top-weighting (the first
  d ranks carry weight 1 - p^(d-1) + ((1-p)/p) d (ln(1/(1-p)) - sum_{i<d} p^i / i); p = 0.9
  puts 86% of the weight on the top 10).
- Label precision@N: the fraction of a query's (valid) neighbours sharing at least one label
  with the query. Single labels (simulator clusters) are one-label sets, so this is cluster
  precision; for multi-label genres it is "shares at least one genre".
- Recall@K (Liang et al. 2018, "Variational autoencoders for collaborative filtering"):
  hits in the top K / min(K, |relevant|).
- NDCG@K, binary relevance: DCG = sum_{r<=K} rel_r / log2(r + 1), normalised by the DCG of
  the ideal ranking with min(K, |relevant|) hits at the top.
- AUC of within- vs between-group scores: the Mann-Whitney statistic
  P(s_within > s_between) + P(s_within = s_between) / 2.
- Spearman correlation: Pearson correlation of average ranks (ties share their mean rank).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

PAD = -1


# --------------------------------------------------------------------------- list overlap
def _new_overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """How many shared elements enter both prefixes at depth d = 1..N: (m, N) int64.

    a, b: (m, N) int arrays (-1 padded, no repeats within a row). Element a[i, r] = b[i, s]
    enters both prefixes at depth max(r, s) + 1, so ``cumsum`` of the result along axis 1 is
    X_d = |A_d ∩ B_d| and its row sum is |A ∩ B|. Each row of [a | b] is sorted once
    (O(N log N)); a shared element shows up as two equal neighbours in the sorted row.
    """
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"neighbour arrays must have the same 2-d shape, got {a.shape}, {b.shape}")
    m, n = a.shape
    values = np.concatenate([a, b], axis=1).astype(np.int64, copy=False)
    order = np.argsort(values, axis=1)  # position p < N is rank p of a, else rank p - N of b
    ordered = np.take_along_axis(values, order, axis=1)
    row, col = np.nonzero((ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] != PAD))
    depth = np.maximum(order[row, col] % n, order[row, col + 1] % n)
    return np.bincount(row * n + depth, minlength=m * n).reshape(m, n).astype(np.int64)


def jaccard(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Jaccard@N of the lists in rows of a and b ((m, N) each, -1 padded): (m,) float64."""
    return _jaccard_from(_new_overlap(a, b), a, b)


def _jaccard_from(new: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    shared = new.sum(axis=1)
    union = (np.asarray(a) != PAD).sum(axis=1) + (np.asarray(b) != PAD).sum(axis=1) - shared
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, shared / np.maximum(union, 1), 1.0)


def jaccard_and_rbo(a: np.ndarray, b: np.ndarray, p: float = 0.9
                    ) -> tuple[np.ndarray, np.ndarray]:
    """``(jaccard(a, b), rbo(a, b, p))`` from one sort of each row (half the cost of both)."""
    new = _new_overlap(a, b)
    return _jaccard_from(new, a, b), _rbo_from(np.cumsum(new, axis=1), p)


def overlap_at_depths(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """X_d = |A_d ∩ B_d| for d = 1..N: an (m, N) int64 array (column d-1 holds X_d)."""
    return np.cumsum(_new_overlap(a, b), axis=1)


def rbo(a: np.ndarray, b: np.ndarray, p: float = 0.9) -> np.ndarray:
    """Extrapolated rank-biased overlap RBO_ext (Webber et al. 2010, Eq. 32) per row: (m,).

    a, b: (m, k) lists of the same depth k, best first. 0 < p < 1. Padding (-1) never matches,
    so a padded list is treated as continuing with items absent from the other list.
    """
    return _rbo_from(overlap_at_depths(a, b), p)


def _rbo_from(overlap: np.ndarray, p: float) -> np.ndarray:
    """RBO_ext per row from X_d (an (m, k) array, column d-1 holding X_d)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"RBO persistence p must be in (0, 1), got {p}")
    x = overlap.astype(np.float64)
    k = x.shape[1]
    if k == 0:
        return np.ones(x.shape[0])
    d = np.arange(1, k + 1, dtype=np.float64)
    weights = (1.0 - p) / p * p**d / d
    return x @ weights + x[:, -1] / k * p**k


# --------------------------------------------------------------------------- labels
def label_sets(labels: np.ndarray | list) -> sp.csr_matrix:
    """Items' label sets as a boolean CSR matrix (n_items, n_labels).

    ``labels`` is either a 1-d array of one integer label per item (negative = unlabelled), or a
    list of per-item iterables of hashable labels (genres; empty or None = unlabelled).
    """
    if isinstance(labels, np.ndarray) and labels.ndim == 1 and labels.dtype.kind in "iu":
        rows = np.flatnonzero(labels >= 0)
        cols = labels[rows].astype(np.int64)
        n_labels = int(cols.max()) + 1 if cols.size else 0
        return sp.csr_matrix((np.ones(rows.size, bool), (rows, cols)),
                             shape=(labels.size, n_labels))
    vocabulary: dict = {}
    rows_list, cols_list = [], []
    for i, item_labels in enumerate(labels):
        for label in (item_labels if item_labels is not None else ()):
            rows_list.append(i)
            cols_list.append(vocabulary.setdefault(label, len(vocabulary)))
    matrix = sp.csr_matrix((np.ones(len(rows_list), bool), (rows_list, cols_list)),
                           shape=(len(labels), len(vocabulary)))
    matrix.sum_duplicates()
    return matrix


def shares_label(sets: sp.csr_matrix, queries: np.ndarray, neighbors: np.ndarray) -> np.ndarray:
    """(m, N) bool: does neighbour (i, j) share at least one label with query i? Padding: False."""
    neighbors = np.asarray(neighbors)
    m, n = neighbors.shape
    valid = neighbors != PAD
    q = np.repeat(np.asarray(queries, dtype=np.int64), n)
    nb = np.where(valid, neighbors, 0).reshape(-1)
    shared = np.asarray(sets[q].multiply(sets[nb]).sum(axis=1)).reshape(m, n) > 0
    return shared & valid


def label_precision(sets: sp.csr_matrix, queries: np.ndarray,
                    neighbors: np.ndarray) -> np.ndarray:
    """Label precision@N per query: fraction of valid neighbours sharing >= 1 label. (m,) float64.

    NaN for a query without labels or without valid neighbours.
    """
    neighbors = np.asarray(neighbors)
    n_valid = (neighbors != PAD).sum(axis=1)
    hits = shares_label(sets, queries, neighbors).sum(axis=1)
    labelled = np.diff(sets.indptr)[np.asarray(queries, dtype=np.int64)] > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(labelled & (n_valid > 0), hits / n_valid, np.nan)


def popularity_bins(popularity: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-count popularity bins: (n_items,) int64 in [0, n_bins), 0 = least popular.

    Items are ordered by popularity (ties by index) and cut into n_bins runs of equal size
    (sizes differ by at most one).
    """
    popularity = np.asarray(popularity)
    n = popularity.size
    n_bins = max(1, min(int(n_bins), n))
    order = np.argsort(popularity, kind="stable")
    bins = np.empty(n, dtype=np.int64)
    bins[order] = np.arange(n, dtype=np.int64) * n_bins // max(n, 1)
    return bins


def popularity_matched_neighbors(neighbors: np.ndarray, bins: np.ndarray,
                                 seed: int = 0) -> np.ndarray:
    """Random neighbours with the same popularity bins as the real ones: (m, N), -1 kept.

    Each valid neighbour is replaced by an item drawn uniformly from its own bin (with
    replacement; the query itself can be drawn with probability 1/bin size, which is negligible
    for bins of many items). Label precision of the result is the popularity-matched baseline:
    what precision random lists would get given how popular the real neighbours are.
    """
    neighbors = np.asarray(neighbors)
    rng = np.random.default_rng(seed)
    order = np.argsort(bins, kind="stable")
    sizes = np.bincount(bins)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    valid = neighbors != PAD
    b = bins[np.where(valid, neighbors, 0)]
    draw = starts[b] + np.floor(rng.random(neighbors.shape) * sizes[b]).astype(np.int64)
    return np.where(valid, order[draw], PAD)


# --------------------------------------------------------------------------- ranks and AUC
def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of a 1-d array, ties sharing their average rank (float64)."""
    x = np.asarray(x)
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    boundaries = np.flatnonzero(np.concatenate([[True], sorted_x[1:] != sorted_x[:-1], [True]]))
    first, last = boundaries[:-1], boundaries[1:]
    mean_rank = (first + last + 1) / 2.0  # mean of 1-based ranks first+1 .. last
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, last - first)
    return ranks


def auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Mann-Whitney AUC: P(score_pos > score_neg) + P(equal) / 2. NaN without both classes.

    scores: (n,) float; positive: (n,) bool (e.g. "the pair is within one cluster").
    """
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    rank_sum = average_ranks(scores)[positive].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation (ties averaged). NaN when either input is constant."""
    rx = average_ranks(x)
    ry = average_ranks(y)
    rx -= rx.mean()
    ry -= ry.mean()
    denom = np.sqrt((rx @ rx) * (ry @ ry))
    return float(rx @ ry / denom) if denom > 0 else float("nan")


# --------------------------------------------------------------------------- ranking quality
def relevance_hits(ranked: np.ndarray, users: np.ndarray, relevant: sp.csr_matrix) -> np.ndarray:
    """(m, K) bool: is ranked[i, r] among the relevant items of user ``users[i]``?

    ranked: (m, K) item indices (-1 padded); relevant: CSR (n_users, n_items) whose non-zeros
    are the relevant (held-out) items; its column indices need not be sorted.
    """
    relevant = relevant.tocsr()
    ranked = np.asarray(ranked)
    users = np.asarray(users, dtype=np.int64)
    n_items = relevant.shape[1]
    row_of_entry = np.repeat(np.arange(relevant.shape[0], dtype=np.int64), np.diff(relevant.indptr))
    keys = np.sort(row_of_entry * n_items + relevant.indices.astype(np.int64))
    query = users[:, None] * n_items + np.where(ranked == PAD, 0, ranked)
    pos = np.minimum(np.searchsorted(keys, query), max(keys.size - 1, 0))
    found = keys[pos] == query if keys.size else np.zeros(query.shape, bool)
    return found & (ranked != PAD)


def recall_at_k(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """Recall@k = hits in the top k / min(k, n_relevant) per row: (m,); NaN if n_relevant = 0."""
    n_relevant = np.asarray(n_relevant)
    found = np.asarray(hits)[:, :k].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_relevant > 0, found / np.minimum(k, n_relevant), np.nan)


def ndcg_at_k(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """NDCG@k with binary relevance per row: (m,); NaN if n_relevant = 0."""
    hits = np.asarray(hits)[:, :k]
    n_relevant = np.asarray(n_relevant)
    discounts = 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))
    dcg = hits @ discounts[: hits.shape[1]]
    ideal = np.concatenate([[0.0], np.cumsum(discounts)])[np.minimum(k, n_relevant)]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_relevant > 0, dcg / np.where(ideal > 0, ideal, 1.0), np.nan)


# --------------------------------------------------------------------------- popularity
def log_popularity_ratio(popularity: np.ndarray, queries: np.ndarray,
                         neighbors: np.ndarray) -> np.ndarray:
    """Mean over valid neighbours of log10((1 + pop_neighbour) / (1 + pop_query)): (m,).

    > 0: neighbours are more popular than their query (cosine's known pull towards, or dot's
    towards, popular items shows here). NaN for a query without valid neighbours.
    """
    neighbors = np.asarray(neighbors)
    log_pop = np.log10(1.0 + np.asarray(popularity, dtype=np.float64))
    valid = neighbors != PAD
    diff = log_pop[np.where(valid, neighbors, 0)] - log_pop[np.asarray(queries)][:, None]
    n_valid = valid.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_valid > 0, (diff * valid).sum(axis=1) / n_valid, np.nan)
