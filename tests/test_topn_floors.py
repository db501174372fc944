"""Floors of the symmetric top-N kernel: lists that start at a sampled score give exactly the
brute-force lists, ties to the smaller index, also when floors are set too high on purpose
(every such row is recomputed) and when the pair calls come in the driver's order."""

from __future__ import annotations

import numpy as np
import pytest

from bigcos.topn import (
    PLACEHOLDER_TOP,
    decode_keys,
    fill_zero_queries,
    floor_plan,
    inverse_norms,
    symmetric_topn,
)

METRICS = ("cos", "dot")


def brute_force(x: np.ndarray, n: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """All scores densely (self -inf), then a lexsort per row: score descending, index
    ascending. Cosine = dot * (inv(q) * inv(c)), inv from float64 norms, 0 for zero rows."""
    scores = x @ x.T
    if metric == "cos":
        norms = np.sqrt((x.astype(np.float64) ** 2).sum(axis=1))
        inv = np.where(norms > 0, 1 / np.where(norms > 0, norms, 1), 0).astype(np.float32)
        scores = scores * (inv[:, None] * inv[None, :])
    scores = scores + np.float32(0)
    np.fill_diagonal(scores, -np.inf)
    order = np.lexsort((np.broadcast_to(np.arange(len(x)), scores.shape), -scores), axis=1)
    index = order[:, :n]
    return index, np.take_along_axis(scores, index, axis=1)


def tied(rng, p: int, k: int) -> np.ndarray:
    """Small integers (exact float32 products) with duplicate rows, a rescaled row and zero
    rows: ties in both metrics and zero-norm queries."""
    x = rng.integers(-2, 3, size=(p, k)).astype(np.float32)
    x[1::97] = x[0]
    x[5] = 3 * x[4]
    x[[3, 700]] = 0
    return x


def tournament(x, n, groups, block, best_first=True, **floors):
    """The driver's pair graph in one process: each group with itself, every pair once, then
    (lists sorted at the end when the calls leave them unsorted, as the driver's pair tasks
    do) zero-norm rows filled; returns {metric: (index, scores)} of all rows."""
    inv = inverse_norms(x)
    lists = [symmetric_topn(x, inv, n, METRICS, g, g, block=block, best_first=best_first,
                            **floors)[0] for g in groups]
    mid = {m: np.concatenate([part[m] for part in lists]) for m in METRICS}
    for a in range(len(groups)):
        for b in range(a + 1, len(groups)):
            lists[a], lists[b] = symmetric_topn(x, inv, n, METRICS, groups[a], groups[b],
                                                block=block, lists_g=lists[a],
                                                lists_h=lists[b], best_first=best_first,
                                                **floors)
    keys = {m: -np.sort(-np.concatenate([part[m] for part in lists]), axis=1) for m in METRICS}
    fill_zero_queries(keys, inv, n, len(x), 0, None)
    out = {}
    for m in METRICS:
        scores, index = decode_keys(keys[m])
        out[m] = (index, scores)
    return out, mid


@pytest.mark.parametrize("best_first", [True, False])
@pytest.mark.parametrize("floors", [{}, {"floor_sample": 300, "floor_rank": 1},
                                    {"floor_sample": 1199, "floor_rank": 2}])
def test_floored_tournament_equals_brute_force(floors, best_first):
    rng = np.random.default_rng(5)
    p, n = 1200, 8
    x = tied(rng, p, 6)
    assert floor_plan(p, n) is not None  # the default does floor at this size
    groups = [(0, 400), (400, 800), (800, 1200)]
    got, mid = tournament(x, n, groups, block=128, best_first=best_first, **floors)
    for metric in METRICS:
        index, scores = brute_force(x, n, metric)
        np.testing.assert_array_equal(got[metric][0], index, err_msg=metric)
        np.testing.assert_array_equal(got[metric][1], scores, err_msg=metric)
    if floors:  # floors too high: after the groups' own calls most rows still hold placeholders
        held = decode_keys(mid["cos"])[1] >= p
        assert held.any(axis=1).mean() > 0.5


def test_floor_plan_is_off_for_small_p_and_when_asked():
    assert floor_plan(1000, 100) is None
    assert floor_plan(10**6, 100, floor_sample=0) is None
    sample, rank = floor_plan(50_000, 100)
    assert sample <= 50_000 // 8 and 1 < rank < sample
    assert floor_plan(PLACEHOLDER_TOP // 2, 100) is None  # placeholder indices must stay >= p
