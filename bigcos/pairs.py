"""Pure numpy steps on (user, item) pairs shared by the in-memory and the streamed ingest.

Both paths of :func:`bigcos.matrix.ingest` call these same functions, the in-memory path once
on the whole log and the streamed path (:mod:`bigcos.streamed_ingest`) once per spill
partition or shard (a set of whole users), so their outputs are bitwise identical:

- :func:`combine` orders by (user, item) with a *stable* sort and combines duplicates; every
  pair belongs to one user, so combining per user range gives the same pairs;
- :func:`heldout_by_rank` ranks a user's interactions by a random key; the keys are one
  stream of ``Generator(PCG64(seed)).random`` over all pairs in (user, item) order, and
  :func:`split_noise` draws any slice of that stream directly (``PCG64.advance``);
- :func:`time_cutoff_index` is the order statistic that ``np.quantile(.., method="higher")``
  picks, so a cut-off can be found by counting instead of sorting.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def combine(users: np.ndarray, items: np.ndarray, values: np.ndarray, times: np.ndarray | None,
            shape: tuple[int, int], how: str
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Order rows by (user, item) and combine duplicate pairs. Returns rows, cols, vals, times.

    Parameters
    ----------
    users, items : int32 (m,)
        Codes of the rows (``users < shape[0]``, ``items < shape[1]``), in the order read.
    values : float32 (m,)
    times : int64 (m,) or None
    shape : (n_users, n_items)
    how : {"sum", "max", "last"}
        Within one (user, item) pair: ``sum`` adds values, ``max`` keeps the largest, ``last``
        keeps the value of the latest timestamp (ties: the row read last). ``times`` of a pair
        is its latest timestamp.

    Returns
    -------
    rows, cols : int32 (n,), sorted by (row, col), no duplicates
    vals : float32 (n,)
    times : int64 (n,) or None

    Without timestamps, ``sum`` is scipy's O(m) COO→CSR conversion (which sums each row's
    duplicates in the order read); the other rules sort the (user, item) keys once (stable,
    so the order within a pair is the order read) and reduce over runs of equal keys.
    Memory: about 40 bytes per row.
    """
    if times is None and how == "sum":
        csr = sp.coo_matrix((values, (users, items)), shape=shape).tocsr()
        rows = np.repeat(np.arange(shape[0], dtype=np.int32), np.diff(csr.indptr))
        return rows, csr.indices.astype(np.int32, copy=False), csr.data, None
    n_items = max(shape[1], 1)
    key = users.astype(np.int64) * n_items + items
    order = np.argsort(key, kind="stable")
    key = key[order]
    first = np.flatnonzero(np.concatenate(([True], key[1:] != key[:-1])))
    if how == "sum":
        vals = np.add.reduceat(values[order].astype(np.float64), first).astype(np.float32)
    elif how == "max":
        vals = np.maximum.reduceat(values[order], first)
    else:  # last: the latest timestamp, and among equal times the row read last
        t = times[order]
        latest = np.maximum.reduceat(t, first)
        is_latest = t == np.repeat(latest, np.diff(np.append(first, len(key))))
        winner = np.maximum.reduceat(np.where(is_latest, order, -1), first)
        vals = values[winner]
    out_times = np.maximum.reduceat(times[order], first) if times is not None else None
    key = key[first]
    return (key // n_items).astype(np.int32), (key % n_items).astype(np.int32), vals, out_times


def iterated_min_counts(rows: np.ndarray, cols: np.ndarray, n_users: int, n_items: int,
                        min_user: int, min_item: int) -> np.ndarray:
    """Boolean mask of interactions kept after dropping sparse users/items until stable.

    Each round keeps a pair when its user has >= ``min_user`` and its item >= ``min_item``
    pairs kept in the previous round; it stops when a round drops nothing. (The streamed path
    runs the same rounds with one pass over the spill partitions per round.)
    """
    keep = np.ones(len(rows), bool)
    if min_user <= 1 and min_item <= 1:
        return keep
    while True:
        u_count = np.bincount(rows[keep], minlength=n_users)
        i_count = np.bincount(cols[keep], minlength=n_items)
        new = keep & (u_count[rows] >= min_user) & (i_count[cols] >= min_item)
        if new.sum() == keep.sum():
            return new
        keep = new


def split_rng_state(n_users: int, split: str, heldout_fraction: float, seed: int
                    ) -> tuple[np.ndarray | None, dict]:
    """The held-out users (split ``users``) and the generator state the interaction keys start
    from.

    Returns
    -------
    heldout : bool (n_users,) or None
        The first ``round(heldout_fraction · n_users)`` users of a seeded permutation.
    state : dict
        ``PCG64`` state after that permutation (input of :func:`split_noise`).
    """
    rng = np.random.default_rng(seed)
    heldout = None
    if split == "users":
        order = rng.permutation(n_users)
        heldout = np.zeros(n_users, bool)
        heldout[order[: int(round(heldout_fraction * n_users))]] = True
    return heldout, rng.bit_generator.state


def split_noise(state: dict, start: int, count: int) -> np.ndarray:
    """Keys ``start .. start + count`` of the stream ``Generator(state).random(...)``, float64.

    Each double consumes one 64-bit output of PCG64, so advancing the state by ``start``
    gives the same numbers as drawing all keys before them: any shard draws its own slice.
    """
    bits = np.random.PCG64()
    bits.state = state
    bits.advance(start)
    return np.random.Generator(bits).random(count)


def heldout_by_rank(rows: np.ndarray, noise: np.ndarray, n_users: int, fraction: float,
                    eligible: np.ndarray) -> np.ndarray:
    """Test mask: per user, its ``round(fraction · count)`` pairs of lowest key.

    Parameters
    ----------
    rows : int (m,)
        Sorted row of each pair (< ``n_users``).
    noise : float64 (m,)
        Random keys of the pairs (ties: the earlier pair ranks first).
    n_users : int
    fraction : float
    eligible : bool (n_users,)
        Users that may have test pairs; users with one pair keep it in train.

    Returns
    -------
    bool (m,)

    Only the pairs of users with test pairs are ranked (with ``split = "users"`` a small
    fraction of all pairs); a user's rank among its own pairs does not depend on the others.
    """
    counts = np.bincount(rows, minlength=n_users)
    n_test = np.where((counts > 1) & eligible, np.round(fraction * counts), 0).astype(np.int64)
    picked = np.flatnonzero(n_test[rows] > 0)  # sorted by row, as rows are
    rows_p = rows[picked]
    counts_p = np.where(n_test > 0, counts, 0)
    starts = np.concatenate(([0], np.cumsum(counts_p)[:-1]))
    rank = np.empty(len(picked), np.int64)
    rank[np.lexsort((noise[picked], rows_p))] = (np.arange(len(picked))
                                                 - np.repeat(starts, counts_p))
    test = np.zeros(len(rows), bool)
    test[picked] = rank < n_test[rows_p]
    return test


def time_cutoff_index(n: int, fraction: float) -> int:
    """Index in sorted order of the time cut-off of a ``fraction`` time split of ``n`` pairs:
    the element ``np.quantile(times, 1 - fraction, method="higher")`` returns."""
    q = np.asarray(1.0 - fraction, dtype=np.float64)
    return int(np.ceil((n - 1) * q).astype(np.intp))


def csr(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, shape: tuple[int, int]
        ) -> sp.csr_matrix:
    """CSR float32 of sorted (row, col) pairs without duplicates; int32 indptr when it fits."""
    indptr = np.zeros(shape[0] + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=shape[0]), out=indptr[1:])
    if indptr[-1] < np.iinfo(np.int32).max:
        indptr = indptr.astype(np.int32)
    m = sp.csr_matrix((vals.astype(np.float32, copy=False), cols.astype(np.int32), indptr),
                      shape=shape)
    m.has_sorted_indices = True
    return m
