"""The exact top-N kernel: one block of queries against candidate tiles, dot and cosine at once.

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
passes while the tile is hot in cache: for dot, ``S >= threshold`` per row; for cosine, one
rescaling ``T = S * inv(c)`` and ``T >= threshold * ||q||`` (the threshold loosened by a few ulp,
so the pass can only admit too much, never too little). Each query row keeps a running
threshold, the score of its current N-th best; only entries at or above it become candidates.
Candidates are buffered and merged into the running lists only when the buffer holds as many
entries as the lists (so about log(number of tiles) merges per row). A (score, index) pair is
packed into one int64 *key* whose integer order is the required order, so a merge is a single
``np.partition`` over keys.

Floors (the symmetric kernel, p >= 64 N). A running threshold starting at -inf admits about
N (1 + ln(p / N)) candidates per row (the records of a random order: ~7 N at p = 50,000).
Lists that start empty therefore start at a *floor*: each row's score of a given rank among a
sample of about 2,000 evenly spaced rows, chosen so that the row's true N-th best lies below it
with probability ~0.999. The lists start as N placeholder keys at the floor (index >= p, which
sorts below every real candidate of the same score and carries the number of candidates seen),
so the filter admits only candidates at or above it: about 2-4 N per row. A list with no
placeholder left is exact; a row whose floor was too high still holds placeholders after it
has seen all p - 1 candidates and is then recomputed exactly (:func:`query_block_topn`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

METRICS = ("cos", "dot")
_LOW32 = np.int64(0xFFFFFFFF)
_COS_SLACK = 2e-6  # relative; >> the ~4 ulp (2.4e-7) by which T * inv(q) may differ from cos


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
    return (bits << 32) | (_LOW32 - np.asarray(index, dtype=np.int64))


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
    return scores, _LOW32 - (keys & _LOW32)


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
        self.cold = keys is None  # no tile seen yet: see _warm_up
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
            self.keys[touched] = np.partition(both, width, axis=1)[:, width:]
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
        threshold, _ = decode_keys(self.keys[rows].min(axis=1))
        self.threshold[rows] = np.where(self.frozen[rows], np.float32(np.inf), threshold)

    def sorted_keys(self) -> np.ndarray:
        """The lists after a final merge: (n_rows, n) int64 keys, best first."""
        self.merge()
        return -np.sort(-self.keys, axis=1)


class _Rows:
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

    def sorted_keys(self) -> dict[str, np.ndarray]:
        return {m: np.concatenate([top.sorted_keys() for top in tops])
                for m, tops in self.lists.items()}


class _Buffers:
    """Scratch arrays for tiles of up to ``size`` entries, reshaped per tile."""

    def __init__(self, size: int):
        self.tile = np.empty(size, np.float32)
        self.scaled = np.empty(size, np.float32)
        self.hits = (np.empty(size, bool), np.empty(size, bool))

    def shaped(self, shape: tuple[int, int]):
        """(tile, (scaled, hit, hit)) views of ``shape``."""
        size = shape[0] * shape[1]
        return self.tile[:size].reshape(shape), (
            self.scaled[:size].reshape(shape), *(h[:size].reshape(shape) for h in self.hits))


def _update(rows: _Rows, s: np.ndarray, by_row: bool, q0: int, inv_c: np.ndarray, c0: int,
            buffers: tuple[np.ndarray, ...]) -> None:
    """Offer the tile ``s`` to the lists of ``rows``.

    by_row: ``s[i, j]`` scores query q0+i against candidate c0+j; otherwise ``s[i, j]`` scores
    query q0+j against candidate c0+i (the transposed use of a symmetric tile). With both
    metrics one mask (dot hit or cosine hit) finds the entries, and each metric then keeps
    those of its own that reach its threshold.
    """
    scaled, *hit = buffers
    n_q = s.shape[0] if by_row else s.shape[1]
    start = q0 - rows.lo
    which, offset = divmod(start, rows.block)
    if offset or n_q > rows.block:
        raise ValueError(f"tile rows {q0}:{q0 + n_q} are not one block of {rows.block}")
    local = slice(start, start + n_q)
    inv_q = rows.inv[local]
    per_q = (slice(None), None) if by_row else (None, slice(None))
    per_c = (None, slice(None)) if by_row else (slice(None), None)
    tops = {metric: lists[which] for metric, lists in rows.lists.items()}
    for (metric, top), mask in zip(tops.items(), hit, strict=False):
        if top.cold:
            _warm_up(top, s, by_row, inv_q[per_q] * inv_c[per_c] if metric == "cos" else None)
        if metric == "dot":
            values, bound = s, top.threshold
        else:
            with np.errstate(invalid="ignore"):  # -inf (excluded) * 0 (zero norm): NaN, no hit
                values = np.multiply(s, inv_c[per_c], out=scaled)
            bound = _loosen(top.threshold, rows.norms[local])
        np.greater_equal(values, bound[per_q], out=mask)
    if len(tops) > 1:
        np.logical_or(hit[0], hit[1], out=hit[0])
    hits = np.flatnonzero(hit[0])
    i, j = np.divmod(hits, s.shape[1])
    q, c = (i, j) if by_row else (j, i)
    dots = s.reshape(-1)[hits]
    for metric, top in tops.items():
        scores = dots
        if metric == "cos":
            with np.errstate(invalid="ignore"):
                scores = dots * (inv_q[q] * inv_c[c])
        q_m, c_m = q, c
        if len(tops) > 1:
            with np.errstate(invalid="ignore"):
                keep = np.flatnonzero(scores >= top.threshold[q])
            q_m, c_m, scores = q[keep], c[keep], scores[keep]
        top.offer(q_m, encode_keys(scores, c_m + c0))


def _warm_up(top: RunningTopN, s: np.ndarray, by_row: bool, inv_product: np.ndarray | None):
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
    Working memory: about (10 + 24 * len(metrics)) * R * C bytes of tiles and buffers plus
    24 * R * n * len(metrics) bytes of running lists; independent of p.
    """
    n_rows, p = len(queries), len(candidates)
    rows = _Rows(0, n_rows, inv_queries, n, metrics, max(1, n_rows))
    width = max(1, min(candidate_block, p))
    buffers = _Buffers(n_rows * width)
    for c0 in range(0, p, width):
        c1 = min(p, c0 + width)
        tile, scratch = buffers.shaped((n_rows, c1 - c0))
        s = np.matmul(queries, candidates[c0:c1].T, out=tile)
        _mask_excluded(s, c0, c1, self_offset, exclude)
        _update(rows, s, True, 0, np.asarray(inv_candidates[c0:c1]), c0, scratch)
    result = rows.sorted_keys()
    fill_zero_queries(result, rows.inv, n, p, self_offset, exclude)
    return result


def symmetric_topn(x: np.ndarray, inv: np.ndarray, n: int, metrics: Sequence[str],
                   g: tuple[int, int], h: tuple[int, int], *, block: int,
                   lists_g: dict[str, np.ndarray] | None = None,
                   lists_h: dict[str, np.ndarray] | None = None,
                   floor_sample: int | None = None, floor_rank: int | None = None,
                   ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
    """Update the top-``n`` lists of rows g and rows h of ``x`` with each other, self excluded.

    Every product x_a . x_b with a in g, b in h is computed once and serves both a's list
    (candidate b) and b's (candidate a): half the GEMM of two one-sided passes.

    Parameters
    ----------
    x : numpy.ndarray, shape (p, k), float32
        Queries and candidates at once (may be a memory map).
    inv : numpy.ndarray, shape (p,), float32
        :func:`inverse_norms` of ``x``.
    n : int
    metrics : sequence of {"cos", "dot"}
    g, h : tuple of int
        Row ranges (g0, g1) and (h0, h1) with g == h or g1 <= h0.
    block : int
        Side of the square tiles; changes speed and memory, never results.
    lists_g, lists_h : dict of str to numpy.ndarray, optional
        The lists so far, {metric: keys of shape (g1 - g0, n) / (h1 - h0, n)}, e.g. from an
        earlier call with other ranges; None = empty. Their thresholds carry over, so a
        row's candidates pass the filter about as rarely as if all its tiles ran in one call.
    floor_sample, floor_rank : int, optional
        Lists that start empty start from *floors* (see :func:`floored_lists`): the
        ``floor_rank``-th best score of each row among ``floor_sample`` evenly spaced rows of
        ``x``. None = sized from p and n (:func:`floor_plan`); ``floor_sample=0`` = no floors.
        They change speed, never results.

    Returns
    -------
    lists_g : dict of str to numpy.ndarray, shape (g1 - g0, n), int64
        Updated keys per metric, best first.
    lists_h : dict of str to numpy.ndarray, shape (h1 - h0, n), int64, or None
        The same for h; None when g == h. Zero-norm rows are left to
        :func:`fill_zero_queries`.

    Notes
    -----
    Working memory: (10 + 24 * len(metrics)) * block**2 bytes of tiles and buffers plus
    24 * n * len(metrics) + 4 * k bytes per row of g and h (lists, and a copy of the rows in
    order of norm: tiles then hold candidates of similar norms, so one comparison per entry
    against a per-chunk bound serves both metrics, see :func:`_update_chunked`).

    Lists that are still floored when a call has shown their rows all p - 1 candidates
    (which a complete set of calls does) are recomputed exactly by :func:`query_block_topn`.
    """
    same = g == h
    plan = floor_plan(len(x), n, floor_sample, floor_rank)
    if lists_g is None and plan:
        lists_g = floored_lists(x, inv, n, metrics, g, *plan, block=block)
    if lists_h is None and plan and not same:
        lists_h = floored_lists(x, inv, n, metrics, h, *plan, block=block)
    # rows in order of norm, so that each chunk of candidates has a narrow range of norms
    sides = [_Sorted(x, inv, g, n, metrics, block, lists_g)]
    sides.append(sides[0] if same else _Sorted(x, inv, h, n, metrics, block, lists_h))
    side_g, side_h = sides
    buffers = _Buffers(block * block)
    for i0 in range(0, len(side_g.ids), block):
        i1 = min(len(side_g.ids), i0 + block)
        xi = side_g.x[i0:i1]
        for j0 in range(i0 if same else 0, len(side_h.ids), block):
            j1 = min(len(side_h.ids), j0 + block)
            tile, scratch = buffers.shaped((i1 - i0, j1 - j0))
            s = np.matmul(xi, side_h.x[j0:j1].T, out=tile)
            diagonal = same and i0 == j0
            if diagonal:
                _mask_excluded(s, j0, j1, i0, None)
            _update_chunked(side_g.rows, s, True, i0, side_h, j0, j1, scratch)
            if not diagonal:
                _update_chunked(side_h.rows, s, False, j0, side_g, i0, i1, scratch)
    rows_g = side_g.unsorted_keys()
    out_g = _settle_floors(rows_g, x, inv, n, g, (g[1] - g[0] - 1) if same
                           else h[1] - h[0], block)
    if same:
        return out_g, None
    return out_g, _settle_floors(side_h.unsorted_keys(), x, inv, n, h, g[1] - g[0], block)


_CHUNK = 64  # candidates sharing one norm range in the filter of _update_chunked


class _Sorted:
    """Rows r0:r1 of x in order of norm: their embeddings (a copy), global ids, running
    lists, and the min and max norm of each chunk of _CHUNK consecutive rows."""

    def __init__(self, x, inv, rows, n, metrics, block, lists):
        r0, r1 = rows
        inv_here = np.asarray(inv[r0:r1])
        # largest norm first (zero norms before them): the dot thresholds rise early
        self.order = np.argsort(inv_here, kind="stable")
        self.ids = r0 + self.order
        self.x = np.ascontiguousarray(x[self.ids])
        self.inv = inv_here[self.order]
        self.rows = _Rows(0, r1 - r0, self.inv, n, metrics, block,
                          None if lists is None else {m: k[self.order] for m, k in lists.items()})
        self.zero = self.inv == 0

    def chunks(self, c0: int, c1: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Least norm, largest norm and 'has a zero-norm row' of each chunk of c0:c1."""
        starts = np.arange(0, c1 - c0, _CHUNK)
        norms = self.rows.norms[c0:c1]
        return (np.minimum.reduceat(norms, starts), np.maximum.reduceat(norms, starts),
                np.logical_or.reduceat(self.zero[c0:c1], starts))

    def unsorted_keys(self) -> dict[str, np.ndarray]:
        out = {}
        for m, keys in self.rows.sorted_keys().items():
            out[m] = np.empty_like(keys)
            out[m][self.order] = keys
        return out


def _update_chunked(rows: _Rows, s: np.ndarray, by_row: bool, q0: int, cands: _Sorted,
                    c0: int, c1: int, buffers: tuple[np.ndarray, ...]) -> None:
    """Offer the tile ``s`` to ``rows`` (local, sorted), candidates c0:c1 of ``cands``.

    One pass per tile: a score is kept when it reaches, for its query, the lower of the dot
    threshold and the cosine threshold turned into a dot bound with the least (most, for a
    negative bound) norm of the candidate's chunk; then each metric keeps its exact hits.
    """
    _, hit, _ = buffers
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
            _warm_up(top, s, by_row, inv_q[per_q] * inv_c[per_c] if metric == "cos" else None)
    lo, hi, any_zero = cands.chunks(c0, c1)
    bound = None
    with np.errstate(invalid="ignore"):
        for metric, top in tops.items():
            t = top.threshold.astype(np.float64)[:, None]
            if metric == "cos":
                b = t - np.abs(t) * _COS_SLACK
                b = np.where(np.isposinf(t), np.inf, b * rows.norms[local][:, None])
                t = np.where(b > 0, b * lo[None, :], b * hi[None, :])
                t = np.where((b <= 0) & any_zero[None, :], -np.inf, t)
                t = np.where(np.isnan(t), b, t)  # +-inf * 0
            bound = t if bound is None else np.fmin(bound, t)
        bound = np.where(np.isfinite(bound), bound - np.abs(bound) * 1e-6, bound)
    bound = np.nextafter(bound.astype(np.float32), np.float32(-np.inf))
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




# --------------------------------------------------------------------------- floors
#: Floors' placeholder keys hold index PLACEHOLDER_TOP - (candidates seen so far); any index
#: >= p with a finite score is a placeholder (real candidates are < p, EMPTY's score is -inf).
PLACEHOLDER_TOP = 2**32 - 2
_FLOOR_SAMPLE = 2048  # default sample size: ~5 % of the half GEMM at p = 50,000


def floor_plan(p: int, n: int, floor_sample: int | None = None,
               floor_rank: int | None = None) -> tuple[int, int] | None:
    """(sample size, rank) of the floors for p candidates and lists of n, or None (no floors).

    With m sampled candidates a row expects mu = m * n / (p - 1) of them among its true top n;
    the rank ceil(mu + 4 sqrt(mu) + 1.5) exceeds that count with probability about 1e-3 (a
    Poisson tail), so about one row in a thousand ends below its floor and is recomputed.
    The floor is then about the (rank / mu * n)-th best score, where a running threshold starts
    at -inf: the filter passes about n (1 + ln(rank / mu)) candidates per row instead of
    n (1 + ln(p / n)).
    """
    if floor_sample == 0 or 2 * p >= PLACEHOLDER_TOP or p - 1 < 64 * n:
        return None
    sample = min(p - 1, floor_sample or min(_FLOOR_SAMPLE, (p - 1) // 8))
    mu = sample * n / (p - 1)
    rank = floor_rank or int(np.ceil(mu + 4 * np.sqrt(mu) + 1.5))
    return (sample, rank) if rank <= sample else None


def floored_lists(x: np.ndarray, inv: np.ndarray, n: int, metrics: Sequence[str],
                  rows: tuple[int, int], sample: int, rank: int, *,
                  block: int) -> dict[str, np.ndarray]:
    """Starting lists of rows r0:r1 of ``x``: n placeholder keys at each row's floor.

    The floor of a row (per metric) is its ``rank``-th best score among ``sample`` evenly
    spaced rows of ``x`` (itself excluded). A placeholder sorts below every real candidate of
    the same score, so the running threshold starts at the floor: the kernel admits only
    candidates scoring at least that much, and the list is exact once no placeholder is left
    (n real candidates at or above the floor, every candidate at or above it having been
    seen). Zero-norm rows keep EMPTY lists. Memory: about 12 * block**2 bytes of sample scores.
    """
    r0, r1 = rows
    p = len(x)
    picks = np.unique(np.linspace(0, p - 1, sample).round().astype(np.int64))
    xs, inv_s = np.ascontiguousarray(x[picks]), np.asarray(inv[picks])
    lists = {m: np.full((r1 - r0, n), EMPTY, np.int64) for m in metrics}
    step = max(1, block * block // len(picks))
    nth = len(picks) - rank
    for a0 in range(r0, r1, step):
        a1 = min(r1, a0 + step)
        dot = np.ascontiguousarray(x[a0:a1]) @ xs.T
        inv_a = np.asarray(inv[a0:a1])
        here = (picks >= a0) & (picks < a1)
        dot[picks[here] - a0, np.flatnonzero(here)] = -np.inf
        for m in metrics:
            if m == "dot":
                floor = np.partition(dot, nth, axis=1)[:, nth]
            else:  # rows scale by inv_a >= 0 after the selection (a floor need not be exact)
                with np.errstate(invalid="ignore"):
                    scaled = np.multiply(dot, inv_s, out=dot if "dot" not in metrics else None)
                floor = np.partition(scaled, nth, axis=1)[:, nth] * inv_a
            live = (inv_a != 0) & np.isfinite(floor)
            keys = encode_keys(floor[live], np.full(int(live.sum()), PLACEHOLDER_TOP))
            lists[m][np.flatnonzero(live) + a0 - r0] = keys[:, None]
    return lists


def _settle_floors(lists: dict[str, np.ndarray], x: np.ndarray, inv: np.ndarray, n: int,
                   rows: tuple[int, int], seen: int, block: int) -> dict[str, np.ndarray]:
    """Count ``seen`` more candidates in the placeholders of rows r0:r1; recompute exactly
    the rows still floored once they have seen all p - 1 candidates (their floor was above
    their n-th best)."""
    p, r0 = len(x), rows[0]
    redo = np.zeros(rows[1] - r0, bool)
    for keys in lists.values():
        scores, index = decode_keys(keys)
        held = (index >= p) & (scores > -np.inf)
        if not held.any():
            continue
        index = index[held] - seen
        keys[held] = encode_keys(scores[held], index)
        done = np.zeros_like(held)
        done[held] = PLACEHOLDER_TOP - index >= p - 1
        redo |= done.any(axis=1)
    if redo.any():
        local = np.flatnonzero(redo)
        self_pairs = sp.csr_matrix((np.ones(len(local)), (np.arange(len(local)), local + r0)),
                                   shape=(len(local), p))
        exact = query_block_topn(np.ascontiguousarray(x[local + r0]), np.asarray(inv)[local + r0],
                                 x, inv, n, list(lists), candidate_block=block * 4,
                                 exclude=self_pairs)
        for m, keys in lists.items():
            keys[local] = exact[m]
    return lists


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


def _loosen(threshold: np.ndarray, norms: np.ndarray) -> np.ndarray:
    """Per-row bound on ``dot * inv(c)`` admitting every cosine >= threshold (float32)."""
    t = threshold.astype(np.float64)
    with np.errstate(invalid="ignore"):
        t = (t - np.abs(t) * _COS_SLACK) * norms
    t = np.where(np.isposinf(threshold), np.inf, t)  # frozen rows (norm 0) accept nothing
    return np.nextafter(t.astype(np.float32), np.float32(-np.inf))


def _mask_excluded(s: np.ndarray, c0: int, c1: int, self_offset: int | None,
                   exclude: sp.csr_matrix | None) -> None:
    """Set excluded pairs of the tile ``s`` (queries x candidates c0:c1) to -inf."""
    if self_offset is not None:
        lo, hi = max(c0, self_offset), min(c1, self_offset + len(s))
        if lo < hi:
            idx = np.arange(lo, hi)
            s[idx - self_offset, idx - c0] = -np.inf
    if exclude is not None and exclude.nnz:
        rows = np.repeat(np.arange(exclude.shape[0]), np.diff(exclude.indptr))
        inside = (exclude.indices >= c0) & (exclude.indices < c1)
        s[rows[inside], exclude.indices[inside] - c0] = -np.inf


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
