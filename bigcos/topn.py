"""The exact top-N kernel: one block of queries against candidate tiles, dot and cosine at once.

This module holds the query-block kernel (:func:`query_block_topn`) and what every top-N kernel
shares: inverse norms, the int64 keys, running lists and their merges, the tile filter's
warm-up. The symmetric kernel (one GEMM per pair of row groups, with floors) is
:mod:`bigcos.symmetric_topn`; its public names are importable from here too.

Definitions (MATH.md, "Similarities and top-N"), all in float32:

- ``dot(q, c)`` is the product computed by the GEMM of a tile.
- ``inv(x) = 1 / ||x||`` (norm accumulated in float64, then rounded), and ``inv(x) = 0`` for a
  zero-norm row, so that ``cos(q, c) = dot(q, c) * (inv(q) * inv(c))`` is 0, never NaN, when
  either side has norm 0. The product ``inv(q) * inv(c)`` is formed first, so cos(q, c) and
  cos(c, q) are the same float.
- The order is score descending, then candidate index ascending (ties go to the smaller index),
  so the result does not depend on the tiling.
- Excluded pairs (the query itself, a user's training items) score -inf and are never returned.
  A query with norm 0 scores 0 against every candidate, so its list is simply the first N
  eligible candidates, with score 0.

How it is fast. Per tile of ``R x C`` scores the kernel does one GEMM and a few vectorised
passes while the tile is hot in cache. The tile's candidates are taken in order of norm
(:class:`NormOrder`), so each chunk of 64 of them has a narrow range of norms, and one
comparison per entry, against a per-row and per-chunk bound (the lower of the dot threshold and
the cosine threshold times the chunk's least norm, loosened by a few ulp, so the pass can only
admit too much, never too little), finds the candidates of both metrics
(:func:`update_chunked`). Each query row keeps a running threshold, the score of its current
N-th best; only entries at or above it become candidates.
Candidates are buffered and merged into the running lists only when the buffer holds as many
entries as the lists (so about log(number of tiles) merges per row). A (score, index) pair is
packed into one int64 *key* whose integer order is the required order, so a merge is a single
``np.partition`` over keys.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

METRICS = ("cos", "dot")
LOW32 = np.int64(0xFFFFFFFF)  # the index field of a key (low 32 bits: 2**32 - 1 - index)
COS_SLACK = 2e-6  # relative; >> the ~4 ulp (2.4e-7) by which T * inv(q) may differ from cos


def inverse_norms(x: np.ndarray) -> np.ndarray:
    """Inverse row norms, the ``inv`` of the cosine (MATH.md, "Similarities and top-N").

    Parameters
    ----------
    x : numpy.ndarray, shape (m, k)
        Embeddings, one row each (any float dtype; may be a memory map).

    Returns
    -------
    numpy.ndarray, shape (m,), float32
        ``1 / ||x_i||`` with the norm accumulated in float64, and 0 where the norm is 0 or
        below float32's smallest normal number (denormal rows, e.g. items a fit never saw:
        their inverse would overflow float32, so they are treated as zero-norm).
    """
    norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))
    inv = np.zeros(len(x), dtype=np.float64)
    np.divide(1.0, norms, out=inv, where=norms >= np.finfo(np.float32).tiny)
    return inv.astype(np.float32)


def encode_keys(scores: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Pack scores and candidate indices into int64 keys whose order is the top-N order.

    ``key(a) > key(b)`` exactly when a's score is larger, or equal with a smaller index.

    Parameters
    ----------
    scores : numpy.ndarray, any shape
        float32 scores (cast to float32); -0.0 is treated as +0.0; NaN is not allowed.
    index : numpy.ndarray, same shape as scores
        Candidate indices, 0 <= index < 2**32 - 1 (2**32 - 1 marks :data:`EMPTY`).

    Returns
    -------
    numpy.ndarray, same shape, int64
        Score bits (as an ordered integer) in the high 32 bits, ``2**32 - 1 - index`` below.
    """
    bits = (np.asarray(scores, dtype=np.float32) + np.float32(0.0)).view(np.int32)
    bits = bits.astype(np.int64)
    bits ^= (bits >> 31) & 0x7FFFFFFF  # IEEE order -> two's-complement order
    return (bits << 32) | (LOW32 - np.asarray(index, dtype=np.int64))


def decode_keys(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`encode_keys`.

    Parameters
    ----------
    keys : numpy.ndarray, any shape, int64

    Returns
    -------
    scores : numpy.ndarray, same shape, float32
        (-0.0 comes back as +0.0; :data:`EMPTY` as -inf.)
    index : numpy.ndarray, same shape, int64
    """
    bits = keys >> 32
    bits ^= (bits >> 31) & 0x7FFFFFFF
    scores = bits.astype(np.int32).view(np.float32)
    return scores, LOW32 - (keys & LOW32)


#: key of (-inf, index 2**32 - 1): below every real candidate; marks an empty slot.
EMPTY = int(encode_keys(np.array([-np.inf], np.float32), np.array([2**32 - 1]))[0])


class RunningTopN:
    """Running top-N lists of ``n_rows`` queries over candidates offered in any order.

    ``keys`` is (n_rows, n) int64, unsorted within a row, EMPTY where fewer than n candidates
    were seen; ``threshold`` is (n_rows,) float32, the score of each row's n-th best so far
    (-inf while the row is not full; +inf for frozen rows, which accept nothing). Candidates
    offered since the last merge wait in a buffer; :meth:`merge` folds them in.
    Memory: 8 * n_rows * n bytes for the lists plus at most twice that for the buffer.
    """

    def __init__(self, n_rows: int, n: int, frozen: np.ndarray | None = None,
                 keys: np.ndarray | None = None) -> None:
        self.n = n
        self.frozen = np.zeros(n_rows, bool) if frozen is None else frozen
        self.threshold = np.where(self.frozen, np.float32(np.inf), np.float32(-np.inf))
        self.cold = keys is None  # no tile seen yet: see warm_up
        if keys is None:
            self.keys = np.full((n_rows, n), EMPTY, dtype=np.int64)
        else:  # resume from earlier lists (a copy: merges write in place)
            self.keys = np.array(keys, dtype=np.int64)
            self._update_threshold(np.arange(n_rows))
        self._rows: list[np.ndarray] = []
        self._keys: list[np.ndarray] = []
        self._pending = 0

    def offer(self, rows: np.ndarray, keys: np.ndarray) -> None:
        """Add candidates; merge when the buffer holds as many entries as the lists.

        Parameters
        ----------
        rows : numpy.ndarray, shape (c,), int
            Local row number (0 <= rows < n_rows) of each candidate.
        keys : numpy.ndarray, shape (c,), int64
            Their :func:`encode_keys`.
        """
        if len(rows):
            self._rows.append(rows)
            self._keys.append(keys)
            self._pending += len(rows)
            if self._pending >= self.keys.size:
                self.merge()

    def merge(self) -> None:
        """Fold buffered candidates into the lists and update the thresholds."""
        if not self._pending:
            return
        rows = np.concatenate(self._rows)
        keys = np.concatenate(self._keys)
        self._rows, self._keys, self._pending = [], [], 0
        n_rows, n = self.keys.shape
        counts = np.bincount(rows, minlength=n_rows)
        touched = np.flatnonzero(counts)
        width = int(counts.max())
        order = np.argsort(rows.astype(np.int16) if n_rows < 2**15 else rows, kind="stable")
        rows, keys = rows[order], keys[order]
        starts = np.cumsum(counts) - counts
        slot = np.arange(len(rows)) - starts[rows]
        if len(touched) * (n + width) <= 4 * (len(touched) * n + len(rows)):
            # dense: one row of (current list | padded candidates) per touched query
            where = np.empty(n_rows, np.int64)
            where[touched] = np.arange(len(touched))
            both = np.full((len(touched), n + width), EMPTY, dtype=np.int64)
            both[:, :n] = self.keys[touched]
            both[where[rows], n + slot] = keys
            both.partition(width, axis=1)
            self.keys[touched] = both[:, width:]
            self._set_threshold(touched, both[:, width])  # the least kept key of each row
        else:
            # skewed (a few rows with very many candidates): sort the pairs instead
            all_rows = np.concatenate([np.repeat(touched, n), rows])
            all_keys = np.concatenate([self.keys[touched].ravel(), keys])
            order = np.lexsort((~all_keys, all_rows))
            all_rows, all_keys = all_rows[order], all_keys[order]
            first = np.searchsorted(all_rows, touched)
            take = (first[:, None] + np.arange(n)).ravel()
            self.keys[touched] = all_keys[take].reshape(len(touched), n)
            self._update_threshold(touched)

    def _update_threshold(self, rows: np.ndarray) -> None:
        self._set_threshold(rows, self.keys[rows].min(axis=1))

    def _set_threshold(self, rows: np.ndarray, least_keys: np.ndarray) -> None:
        threshold, _ = decode_keys(least_keys)
        self.threshold[rows] = np.where(self.frozen[rows], np.float32(np.inf), threshold)

    def final_keys(self, best_first: bool = True) -> np.ndarray:
        """The lists after a final merge: (n_rows, n) int64 keys, best first (else in no
        particular order, for a later :class:`RunningTopN` to resume from)."""
        self.merge()
        return -np.sort(-self.keys, axis=1) if best_first else self.keys


class RowLists:
    """Running lists, per metric, of the query rows lo:hi (global indices), in blocks of
    ``block`` rows (a block's lists merge at their own pace, see :class:`RunningTopN`)."""

    def __init__(self, lo: int, hi: int, inv: np.ndarray, n: int, metrics: Sequence[str],
                 block: int, keys: dict[str, np.ndarray] | None = None):
        self.lo, self.block = lo, block
        self.inv = np.asarray(inv[lo:hi])
        zero = self.inv == 0
        self.norms = np.zeros(hi - lo, np.float64)
        np.divide(1.0, self.inv, out=self.norms, where=~zero)
        starts = range(0, hi - lo, block)
        self.lists = {m: [RunningTopN(min(block, hi - lo - b), n, zero[b:b + block].copy(),
                                      None if keys is None else keys[m][b:b + block])
                          for b in starts] for m in metrics}

    def final_keys(self, best_first: bool = True) -> dict[str, np.ndarray]:
        """{metric: (hi - lo, n) keys}, see :meth:`RunningTopN.final_keys`."""
        return {m: np.concatenate([top.final_keys(best_first) for top in tops])
                for m, tops in self.lists.items()}


class TileBuffers:
    """Scratch arrays for tiles of up to ``size`` entries (scores and hit mask), reshaped per
    tile."""

    def __init__(self, size: int):
        self.tile = np.empty(size, np.float32)
        self.hit = np.empty(size, bool)

    def shaped(self, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """(tile, hit) views of ``shape``."""
        size = shape[0] * shape[1]
        return self.tile[:size].reshape(shape), self.hit[:size].reshape(shape)


_CHUNK = 64  # candidates sharing one norm range in the filter of update_chunked


class NormOrder:
    """Rows r0:r0 + len(inv) of an embedding in order of norm, largest first (zero norms before
    them): ``order`` (local row of each position), global ``ids``, their ``inv``, ``norms``
    (float64, 0 for zero norms) and ``zero``. In this order each chunk of _CHUNK consecutive
    candidates has a narrow range of norms, so one comparison per tile entry against a
    per-chunk bound serves dot and cosine at once (:func:`update_chunked`); and the dot
    thresholds of the queries rise early."""

    def __init__(self, inv: np.ndarray, r0: int = 0):
        self.order = np.argsort(inv, kind="stable")
        self.ids = r0 + self.order
        self.inv = inv[self.order]
        self.zero = self.inv == 0
        self.norms = np.zeros(len(inv), np.float64)
        np.divide(1.0, self.inv, out=self.norms, where=~self.zero)

    def column(self) -> np.ndarray:
        """Position of each row r0 + j in this order (the tile column of candidate r0 + j)."""
        position = np.empty(len(self.order), np.int64)
        position[self.order] = np.arange(len(self.order))
        return position

    def chunks(self, c0: int, c1: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Least norm, largest norm and 'has a zero-norm row' of each chunk of positions
        c0:c1."""
        starts = np.arange(0, c1 - c0, _CHUNK)
        norms = self.norms[c0:c1]
        return (np.minimum.reduceat(norms, starts), np.maximum.reduceat(norms, starts),
                np.logical_or.reduceat(self.zero[c0:c1], starts))


def update_chunked(rows: RowLists, s: np.ndarray, by_row: bool, q0: int, cands: NormOrder,
                   c0: int, c1: int, hit: np.ndarray) -> None:
    """Offer the tile ``s`` to ``rows`` (one block), candidates c0:c1 of ``cands``: ``s[i, j]``
    (``s[j, i]`` when not ``by_row``) scores query q0 + i against candidate ``cands.ids[c0 + j]``.

    One pass per tile: a score is kept when it reaches, for its query, the lower of the dot
    threshold and the cosine threshold turned into a dot bound with the least (most, for a
    negative bound) norm of the candidate's chunk; then each metric keeps its exact hits.
    """
    n_q = s.shape[0] if by_row else s.shape[1]
    which, offset = divmod(q0 - rows.lo, rows.block)
    if offset or n_q > rows.block:
        raise ValueError(f"tile rows {q0}:{q0 + n_q} are not one block of {rows.block}")
    local = slice(q0 - rows.lo, q0 - rows.lo + n_q)
    inv_q, inv_c = rows.inv[local], cands.inv[c0:c1]
    tops = {metric: lists[which] for metric, lists in rows.lists.items()}
    per_q = (slice(None), None) if by_row else (None, slice(None))
    per_c = (None, slice(None)) if by_row else (slice(None), None)
    for metric, top in tops.items():
        if top.cold:
            warm_up(top, s, by_row, inv_q[per_q] * inv_c[per_c] if metric == "cos" else None)
    bound = filter_bounds(tops, rows.norms[local], *cands.chunks(c0, c1))
    n_c = c1 - c0
    full = n_c // _CHUNK * _CHUNK
    if by_row:
        if full:
            np.greater_equal(s[:, :full].reshape(n_q, -1, _CHUNK), bound[:, :full // _CHUNK, None],
                             out=hit[:, :full].reshape(n_q, -1, _CHUNK))
        if full < n_c:
            np.greater_equal(s[:, full:], bound[:, -1:], out=hit[:, full:])
    else:
        bound = np.ascontiguousarray(bound.T)  # (chunks, queries): a strided one is 2x slower
        if full:
            np.greater_equal(s[:full].reshape(-1, _CHUNK, n_q), bound[:full // _CHUNK, None, :],
                             out=hit[:full].reshape(-1, _CHUNK, n_q))
        if full < n_c:
            np.greater_equal(s[full:], bound[-1:, :], out=hit[full:])
    hits = np.flatnonzero(hit)
    i, j = np.divmod(hits, s.shape[1])
    q, c = (i, j) if by_row else (j, i)
    dots = s.reshape(-1)[hits]
    for metric, top in tops.items():
        scores = dots
        if metric == "cos":
            with np.errstate(invalid="ignore"):
                scores = dots * (inv_q[q] * inv_c[c])
        with np.errstate(invalid="ignore"):
            keep = np.flatnonzero(scores >= top.threshold[q])
        top.offer(q[keep], encode_keys(scores[keep], cands.ids[c0 + c[keep]]))


def filter_bounds(tops: dict[str, RunningTopN], norms_q: np.ndarray, lo: np.ndarray,
                  hi: np.ndarray, any_zero: np.ndarray) -> np.ndarray:
    """The filter's bound per query and chunk of candidates: a float32 score (dot product)
    below which no entry of the chunk can reach any metric's threshold.

    Parameters
    ----------
    tops : dict of str to RunningTopN
        The queries' lists per metric (their ``threshold``, shape (q,)).
    norms_q : numpy.ndarray, shape (q,), float64
        Query norms (0 for zero-norm queries, whose thresholds are +inf).
    lo, hi, any_zero : numpy.ndarray, shape (chunks,)
        Least and largest candidate norm of each chunk, and whether it holds a zero-norm
        candidate (:meth:`NormOrder.chunks`).

    Returns
    -------
    numpy.ndarray, shape (q, chunks), float32 (possibly a broadcast view)
        The lower of the dot threshold (exact) and the cosine threshold t turned into a dot
        bound: b * lo with b = t ||q|| for b > 0 (b * hi, or -inf with a zero-norm candidate,
        for b <= 0), b loosened by COS_SLACK + 1e-6 relative. A float32 score s at or above a
        real bound v is at or above any float32 rounding of a value w <= v, so the bound can
        only admit too much, never too little: b and lo are rounded down to float32 and
        multiplied there (the (q, chunks) work is one float32 product and one minimum).
    """
    bound = None
    for metric, top in tops.items():
        if metric == "cos":
            part = _cos_bounds(top.threshold, norms_q, lo, hi, any_zero)
        else:
            part = top.threshold[:, None]
        bound = part if bound is None else np.minimum(bound, part)
    return np.broadcast_to(bound, (len(norms_q), len(lo)))


def _cos_bounds(threshold: np.ndarray, norms_q: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                any_zero: np.ndarray) -> np.ndarray:
    """:func:`filter_bounds`' cosine part, (q, chunks) float32."""
    t = threshold.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        b = (t - np.abs(t) * (COS_SLACK + 1e-6)) * norms_q
        b[np.isposinf(t)] = np.inf
        positive = (b > 0) & (b < np.finfo(np.float32).max)
        out = np.multiply(_round_down32(np.where(positive, b, 0.0))[:, None],
                          _round_down32(lo)[None, :])
        other = np.flatnonzero(~positive)
        if len(other):  # -inf, +inf (frozen), <= 0 or huge: in float64, on these rows only
            bo = b[other, None]
            t = np.where(bo > 0, bo * lo[None, :], bo * hi[None, :])
            t = np.where((bo <= 0) & any_zero[None, :], -np.inf, t)
            out[other] = np.where(np.isnan(t), bo, t)  # +-inf * 0
    return out


def _round_down32(x: np.ndarray) -> np.ndarray:
    """float32 values <= x (x float64, finite and non-negative)."""
    x32 = x.astype(np.float32)
    return np.where(x32 > x, np.nextafter(x32, np.float32(0)), x32)


def warm_up(top: RunningTopN, s: np.ndarray, by_row: bool, inv_product: np.ndarray | None):
    """Raise cold thresholds to a lower bound of each query's n-th best score in the tile ``s``.

    The bound is the n-th largest of the maxima of disjoint chunks of (up to) 8 scores: n
    chunks reach it, so n entries of the tile score at least that much and the query's final
    n-th best can only be higher. The first tile then yields about n candidates per query
    instead of all, for a partition over an eighth of the tile.
    """
    top.cold = False
    scores = s if inv_product is None else _cosine(s, inv_product)
    if not by_row:
        scores = scores.T
    n_rows, width = scores.shape
    if width < top.n:
        return
    chunk = min(8, width // top.n)
    n_chunks = width // chunk
    # chunk j holds the columns j, j + n_chunks, ...: a reduction over the middle axis is fast
    maxima = scores[:, :n_chunks * chunk].reshape(n_rows, chunk, n_chunks).max(axis=1)
    nth = np.partition(maxima, n_chunks - top.n, axis=1)[:, n_chunks - top.n]
    top.threshold = np.where(top.frozen, top.threshold, np.maximum(top.threshold, nth))


def _cosine(s: np.ndarray, inv_product: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        cos = s * inv_product
    cos[np.isnan(cos)] = -np.inf  # excluded (-inf) times zero norm
    return cos


def query_block_topn(queries: np.ndarray, inv_queries: np.ndarray, candidates: np.ndarray,
                     inv_candidates: np.ndarray, n: int, metrics: Sequence[str], *,
                     candidate_block: int, self_offset: int | None = None,
                     exclude: sp.csr_matrix | None = None) -> dict[str, np.ndarray]:
    """Exact top-``n`` candidates of each query row, for each metric, in one pass over tiles.

    Parameters
    ----------
    queries : numpy.ndarray, shape (R, k), float32
    inv_queries : numpy.ndarray, shape (R,), float32
        :func:`inverse_norms` of ``queries``.
    candidates : numpy.ndarray, shape (p, k), float32
        May be a read-only memory map; read one tile of ``candidate_block`` rows at a time.
    inv_candidates : numpy.ndarray, shape (p,), float32
        :func:`inverse_norms` of ``candidates``.
    n : int
        List length.
    metrics : sequence of {"cos", "dot"}
    candidate_block : int
        Candidates per tile (C); changes speed and memory, never results.
    self_offset : int, optional
        Query row i is candidate ``self_offset + i`` and is excluded (item-item, user-user).
    exclude : scipy.sparse.csr_matrix, shape (R, p), optional
        Stored entries are excluded pairs (user-item: training items).

    Returns
    -------
    dict of str to numpy.ndarray, shape (R, n), int64
        Keys per metric, best first (see :func:`decode_keys`); :data:`EMPTY` pads rows with
        fewer than n eligible candidates. Zero-norm queries get their first eligible
        candidates with score 0 (:func:`fill_zero_queries`).

    Notes
    -----
    Working memory: at most about (10 + 24 * len(metrics)) * R * C bytes of tiles and buffers plus
    24 * R * n * len(metrics) bytes of running lists; independent of p.
    """
    n_rows, p = len(queries), len(candidates)
    rows = RowLists(0, n_rows, inv_queries, n, metrics, max(1, n_rows))
    width = max(1, min(candidate_block, p))
    buffers = TileBuffers(n_rows * width)
    for c0 in range(0, p, width):
        c1 = min(p, c0 + width)
        cands = NormOrder(np.asarray(inv_candidates[c0:c1]), c0)
        tile, hit = buffers.shaped((n_rows, c1 - c0))
        s = np.matmul(queries, np.asarray(candidates[c0:c1])[cands.order].T, out=tile)
        mask_excluded(s, c0, c1, self_offset, exclude, cands.column())
        update_chunked(rows, s, True, 0, cands, 0, c1 - c0, hit)
    result = rows.final_keys()
    fill_zero_queries(result, rows.inv, n, p, self_offset, exclude)
    return result


def fill_zero_queries(lists: dict[str, np.ndarray], inv_queries: np.ndarray, n: int, p: int,
                      self_offset: int | None, exclude: sp.csr_matrix | None) -> None:
    """Set the lists of zero-norm queries to their first eligible candidates, score 0.

    Every candidate ties at 0 for such a query, by either metric, and ties go to the smaller
    index.

    Parameters
    ----------
    lists : dict of str to numpy.ndarray, shape (R, n), int64
        Keys per metric, modified in place.
    inv_queries : numpy.ndarray, shape (R,)
        :func:`inverse_norms` of the queries; 0 marks a zero-norm query.
    n, p : int
        List length and number of candidates.
    self_offset : int or None
        Query row i is candidate ``self_offset + i`` (excluded).
    exclude : scipy.sparse.csr_matrix, shape (R, p), or None
        Excluded pairs.
    """
    zero = np.flatnonzero(np.asarray(inv_queries) == 0)
    if len(zero):
        firsts = _first_eligible(zero, n, p, self_offset, exclude)
        for keys in lists.values():
            keys[zero] = firsts


def mask_excluded(s: np.ndarray, c0: int, c1: int, self_offset: int | None,
                  exclude: sp.csr_matrix | None, column: np.ndarray | None = None) -> None:
    """Set excluded pairs of the tile ``s`` (queries x candidates c0:c1) to -inf; candidate
    c0 + j is column ``column[j]`` of the tile (None: column j)."""
    column = np.arange(c1 - c0) if column is None else column
    if self_offset is not None:
        lo, hi = max(c0, self_offset), min(c1, self_offset + len(s))
        if lo < hi:
            idx = np.arange(lo, hi)
            s[idx - self_offset, column[idx - c0]] = -np.inf
    if exclude is not None and exclude.nnz:
        rows = np.repeat(np.arange(exclude.shape[0]), np.diff(exclude.indptr))
        inside = (exclude.indices >= c0) & (exclude.indices < c1)
        s[rows[inside], column[exclude.indices[inside] - c0]] = -np.inf


def _first_eligible(rows: np.ndarray, n: int, p: int, self_offset: int | None,
                    exclude: sp.csr_matrix | None) -> np.ndarray:
    """(len(rows), n) keys of the first n eligible candidates, score 0 (zero-norm queries)."""
    out = np.full((len(rows), n), EMPTY, dtype=np.int64)
    for i, row in enumerate(rows):
        banned = set() if exclude is None else set(
            exclude.indices[exclude.indptr[row]:exclude.indptr[row + 1]].tolist())
        if self_offset is not None:
            banned.add(self_offset + int(row))
        first = [c for c in range(min(p, n + len(banned))) if c not in banned][:n]
        out[i, :len(first)] = encode_keys(np.zeros(len(first), np.float32), np.array(first))
    return out


#: Public names of :mod:`bigcos.symmetric_topn`, also importable from this module.
_SYMMETRIC = ("PLACEHOLDER_TOP", "floor_plan", "floored_lists", "symmetric_topn")


def __getattr__(name: str):
    """``from bigcos.topn import symmetric_topn`` and the floors' names, imported on first use
    (bigcos.symmetric_topn imports this module, so a top-level import would be a cycle)."""
    if name in _SYMMETRIC:
        from bigcos import symmetric_topn

        return getattr(symmetric_topn, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
