"""The symmetric top-N kernel: the lists of two row groups of one matrix, each product once.

For item-item and user-user lists the queries are the candidates: the tile x_g x_h^T of two
row groups g and h serves the lists of g (candidates h) and, transposed, those of h
(candidates g), so a full pass costs half the GEMM of one-sided query blocks. Definitions,
keys and running lists are those of :mod:`bigcos.topn`; this module adds two things.

Rows sorted by norm. Inside a call each group's rows are taken in order of norm, so each chunk
of 64 candidates has a narrow range of norms, and one comparison per tile entry against a
per-chunk bound serves both metrics (:func:`bigcos.topn.update_chunked`).

Floors (p >= 64 N). A running threshold starting at -inf admits about
N (1 + ln(p / N)) candidates per row (the records of a random order: ~7 N at p = 50,000).
Lists that start empty therefore start at a *floor*: each row's score of a given rank among a
sample of about 2,000 evenly spaced rows, chosen so that the row's true N-th best lies below it
with probability ~0.999. The lists start as N placeholder keys at the floor (index >= p, which
sorts below every real candidate of the same score and carries the number of candidates seen),
so the filter admits only candidates at or above it: about 2-4 N per row. A list with no
placeholder left is exact; a row whose floor was too high still holds placeholders after it
has seen all p - 1 candidates and is then recomputed exactly
(:func:`bigcos.topn.query_block_topn`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from bigcos.topn import (
    EMPTY,
    LOW32,
    NormOrder,
    RowLists,
    TileBuffers,
    encode_keys,
    mask_excluded,
    query_block_topn,
    update_chunked,
)


def symmetric_topn(x: np.ndarray, inv: np.ndarray, n: int, metrics: Sequence[str],
                   g: tuple[int, int], h: tuple[int, int], *, block: int,
                   lists_g: dict[str, np.ndarray] | None = None,
                   lists_h: dict[str, np.ndarray] | None = None,
                   floor_sample: int | None = None, floor_rank: int | None = None,
                   best_first: bool = True,
                   ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
    """Update the top-``n`` lists of rows g and rows h of ``x`` with each other, self excluded.

    Every product x_a . x_b with a in g, b in h is computed once and serves both a's list
    (candidate b) and b's (candidate a): half the GEMM of two one-sided passes.

    Parameters
    ----------
    x : numpy.ndarray, shape (p, k), float32
        Queries and candidates at once (may be a memory map).
    inv : numpy.ndarray, shape (p,), float32
        :func:`bigcos.topn.inverse_norms` of ``x``.
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
    best_first : bool
        Sort each row's keys best first; False leaves them in no particular order, which is
        all a later call resuming from them needs (it saves a sort per row and call).

    Returns
    -------
    lists_g : dict of str to numpy.ndarray, shape (g1 - g0, n), int64
        Updated keys per metric, best first (as ``best_first`` says).
    lists_h : dict of str to numpy.ndarray, shape (h1 - h0, n), int64, or None
        The same for h; None when g == h. Zero-norm rows are left to
        :func:`bigcos.topn.fill_zero_queries`.

    Notes
    -----
    Working memory: at most (10 + 24 * len(metrics)) * block**2 bytes of tiles and buffers plus
    24 * n * len(metrics) + 4 * k bytes per row of g and h (lists, and a copy of the rows in
    order of norm: tiles then hold candidates of similar norms, so one comparison per entry
    against a per-chunk bound serves both metrics, see :func:`bigcos.topn.update_chunked`).

    Lists that are still floored when a call has shown their rows all p - 1 candidates
    (which a complete set of calls does) are recomputed exactly by
    :func:`bigcos.topn.query_block_topn`.
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
    buffers = TileBuffers(block * block)
    for i0 in range(0, len(side_g.ids), block):
        i1 = min(len(side_g.ids), i0 + block)
        xi = side_g.x[i0:i1]
        for j0 in range(i0 if same else 0, len(side_h.ids), block):
            j1 = min(len(side_h.ids), j0 + block)
            tile, hit = buffers.shaped((i1 - i0, j1 - j0))
            s = np.matmul(xi, side_h.x[j0:j1].T, out=tile)
            diagonal = same and i0 == j0
            if diagonal:
                mask_excluded(s, j0, j1, i0, None)
            update_chunked(side_g.rows, s, True, i0, side_h, j0, j1, hit)
            if not diagonal:
                update_chunked(side_h.rows, s, False, j0, side_g, i0, i1, hit)
    out_g = _settle_floors(side_g.keys_in_row_order(best_first), x, inv, n, g,
                           (g[1] - g[0] - 1) if same else h[1] - h[0], block)
    if same:
        return out_g, None
    return out_g, _settle_floors(side_h.keys_in_row_order(best_first), x, inv, n, h,
                                 g[1] - g[0], block)


class _Sorted(NormOrder):
    """Rows r0:r1 of x in order of norm (:class:`bigcos.topn.NormOrder`), with their
    embeddings (a copy) and running lists."""

    def __init__(self, x, inv, rows, n, metrics, block, lists):
        r0, r1 = rows
        super().__init__(np.asarray(inv[r0:r1]), r0)
        self.x = np.ascontiguousarray(x[self.ids])
        self.rows = RowLists(0, r1 - r0, self.inv, n, metrics, block,
                          None if lists is None else {m: k[self.order] for m, k in lists.items()})

    def keys_in_row_order(self, best_first: bool) -> dict[str, np.ndarray]:
        """The lists of rows r0:r1 in their own order (not by norm)."""
        out = {}
        for m, keys in self.rows.final_keys(best_first).items():
            out[m] = np.empty_like(keys)
            out[m][self.order] = keys
        return out


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
        # In key space (no decoding): the low 32 bits hold 2**32 - 1 - index, which is 0 for
        # EMPTY, in [1, 2**32 - 1 - p] for a placeholder and above that for a real candidate.
        low = keys & LOW32
        held = (low - 1).view(np.uint64) <= np.uint64(LOW32 - p - 1)
        if not held.any():
            continue
        keys[held] += seen  # index - seen: one more batch of candidates counted
        # seen in all = PLACEHOLDER_TOP - index = low - 1 after the update
        redo |= (held & (low + seen - 1 >= p - 1)).any(axis=1)
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
