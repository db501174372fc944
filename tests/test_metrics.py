"""bigcos.metrics against hand-computed cases, brute-force references and exact properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st

from bigcos import metrics as M


# --------------------------------------------------------------------------- references
def rbo_reference(a: list[int], b: list[int], p: float) -> float:
    """Webber et al. 2010 Eq. 32 written out term by term with Python sets."""
    k = len(a)
    x = [len(set(a[:d]) & set(b[:d])) for d in range(1, k + 1)]
    total = sum(x[d - 1] / d * p**d for d in range(1, k + 1))
    return x[-1] / k * p**k + (1 - p) / p * total


def random_lists(rng, m, n, universe):
    return np.stack([rng.choice(universe, size=n, replace=False) for _ in range(m)])


# --------------------------------------------------------------------------- Jaccard
def test_jaccard_hand_computed():
    a = np.array([[1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4], [5, 6, -1, -1], [-1, -1, -1, -1]])
    b = np.array([[4, 3, 2, 1], [5, 6, 7, 8], [2, 1, 9, -1], [6, 7, 8, -1], [-1, -1, -1, -1]])
    # {1..4} vs itself: 1; disjoint: 0; |{1,2}| / |{1,2,3,4,9}| = 2/5; |{6}| / |{5,6,7,8}| = 1/4;
    # two empty lists are identical: 1.
    np.testing.assert_allclose(M.jaccard(a, b), [1.0, 0.0, 0.4, 0.25, 1.0])


def test_jaccard_matches_python_sets():
    rng = np.random.default_rng(0)
    a = random_lists(rng, 50, 7, 15)
    b = random_lists(rng, 50, 7, 15)
    expected = [len(set(x) & set(y)) / len(set(x) | set(y)) for x, y in zip(a, b, strict=True)]
    np.testing.assert_allclose(M.jaccard(a, b), expected)


def test_jaccard_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same 2-d shape"):
        M.jaccard(np.zeros((2, 3), int), np.zeros((2, 4), int))


# --------------------------------------------------------------------------- RBO
def test_rbo_hand_computed():
    a = np.array([[1, 2, 3, 4]])
    b = np.array([[2, 1, 9, 7]])
    # X = (0, 2, 2, 2); RBO_ext = 2/4 p^4 + (1-p)/p (2/2 p^2 + 2/3 p^3 + 2/4 p^4), p = 0.5:
    # 0.03125 + 1 * (0.25 + 0.083333 + 0.03125) = 0.395833...
    expected = 0.5 * 0.5**4 + (0.25 + 2 / 3 * 0.125 + 0.5 * 0.0625)
    np.testing.assert_allclose(M.rbo(a, b, p=0.5), [expected])
    np.testing.assert_allclose(M.overlap_at_depths(a, b), [[0, 2, 2, 2]])


def test_rbo_matches_reference_and_is_symmetric():
    rng = np.random.default_rng(1)
    a = random_lists(rng, 40, 10, 20)
    b = random_lists(rng, 40, 10, 20)
    for p in (0.5, 0.9, 0.98):
        expected = [rbo_reference(list(x), list(y), p) for x, y in zip(a, b, strict=True)]
        np.testing.assert_allclose(M.rbo(a, b, p), expected, rtol=1e-12)
        np.testing.assert_allclose(M.rbo(b, a, p), expected, rtol=1e-12)


@settings(max_examples=60, deadline=None)
@given(st.permutations(list(range(30))), st.integers(1, 15), st.floats(0.05, 0.99))
def test_rbo_identical_is_one_disjoint_is_zero(perm, n, p):
    a = np.array([perm[:n]])
    disjoint = np.array([perm[15:15 + n]])
    np.testing.assert_allclose(M.rbo(a, a, p), [1.0], rtol=1e-12)
    np.testing.assert_allclose(M.rbo(a, disjoint, p), [0.0], atol=0)
    np.testing.assert_allclose(M.jaccard(a, a), [1.0])
    np.testing.assert_allclose(M.jaccard(a, disjoint), [0.0])


def test_rbo_is_top_weighted():
    # Swapping the last two ranks costs less than swapping the first two.
    base = np.array([[0, 1, 2, 3, 4, 5]])
    swap_top = np.array([[1, 0, 2, 3, 4, 5]])
    swap_bottom = np.array([[0, 1, 2, 3, 5, 4]])
    assert M.rbo(base, swap_bottom)[0] > M.rbo(base, swap_top)[0]
    assert M.rbo(base, swap_top)[0] < 1.0


def test_rbo_rejects_bad_p():
    with pytest.raises(ValueError, match="p must be in"):
        M.rbo(np.zeros((1, 2), int), np.zeros((1, 2), int), p=1.0)


# --------------------------------------------------------------------------- labels
def test_label_precision_clusters_hand_computed():
    clusters = np.array([0, 0, 1, 1, 0, -1])
    sets = M.label_sets(clusters)
    queries = np.array([0, 2, 5, 1])
    neighbors = np.array([[1, 2, 4], [3, 0, -1], [0, 1, 2], [-1, -1, -1]])
    # query 0 (cluster 0): 1 and 4 share -> 2/3; query 2 (cluster 1): 3 of 2 valid -> 1/2;
    # item 5 is unlabelled -> NaN; query 1 has no valid neighbours -> NaN.
    got = M.label_precision(sets, queries, neighbors)
    np.testing.assert_allclose(got, [2 / 3, 0.5, np.nan, np.nan])


def test_label_precision_genres_share_at_least_one():
    genres = [["Comedy", "Drama"], ["Drama"], ["Horror"], [], ["Comedy", "Horror"]]
    sets = M.label_sets(genres)
    assert sets.shape == (5, 3)
    neighbors = np.array([[1, 2, 3, 4], [0, 4, 2, 3]])
    got = M.label_precision(sets, np.array([0, 4]), neighbors)
    # item 0 {C, D}: 1 shares D, 2 no, 3 (no genres) no, 4 shares C -> 2/4
    # item 4 {C, H}: 0 shares C, 4 itself yes, 2 shares H, 3 no -> 3/4
    np.testing.assert_allclose(got, [0.5, 0.75])


def test_popularity_bins_equal_count_and_ordered():
    pop = np.array([5, 1, 9, 3, 3, 7, 0, 2, 8, 6])
    bins = M.popularity_bins(pop, 5)
    np.testing.assert_array_equal(np.bincount(bins), [2, 2, 2, 2, 2])
    # a more popular item never sits in a lower bin
    order = np.argsort(pop, kind="stable")
    assert np.all(np.diff(bins[order]) >= 0)
    assert bins[6] == 0 and bins[2] == 4


def test_popularity_matched_neighbors_keep_bins_and_padding():
    rng = np.random.default_rng(3)
    pop = rng.integers(0, 1000, size=200)
    bins = M.popularity_bins(pop, 10)
    neighbors = random_lists(rng, 30, 8, 200)
    neighbors[0, 5:] = -1
    random_nb = M.popularity_matched_neighbors(neighbors, bins, seed=7)
    valid = neighbors != -1
    np.testing.assert_array_equal(random_nb == -1, ~valid)
    np.testing.assert_array_equal(bins[random_nb[valid]], bins[neighbors[valid]])
    assert not np.array_equal(random_nb, neighbors)
    np.testing.assert_array_equal(random_nb, M.popularity_matched_neighbors(neighbors, bins, 7))


def test_popularity_matched_baseline_is_chance_level():
    # Labels independent of popularity: the baseline precision approaches sum_c share_c^2.
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 4, size=4000)
    sets = M.label_sets(labels)
    pop = rng.integers(1, 100, size=4000)
    bins = M.popularity_bins(pop, 10)
    queries = np.arange(4000)
    same_cluster = np.stack([rng.choice(np.flatnonzero(labels == labels[q]), 5)
                             for q in queries[:500]])
    baseline = M.label_precision(sets, queries[:500],
                                 M.popularity_matched_neighbors(same_cluster, bins, seed=0))
    chance = np.sum((np.bincount(labels) / labels.size) ** 2)
    assert abs(np.nanmean(baseline) - chance) < 0.03
    np.testing.assert_allclose(M.label_precision(sets, queries[:500], same_cluster), 1.0)


# --------------------------------------------------------------------------- AUC / Spearman
def test_auc_hand_computed_with_ties():
    scores = np.array([0.9, 0.5, 0.5, 0.1, 0.5])
    positive = np.array([True, True, False, False, False])
    # pos {0.9, 0.5} vs neg {0.5, 0.1, 0.5}: 0.9 beats all 3; 0.5 ties two, beats one
    # -> (3 + 1 + 2 * 0.5) / 6 = 5/6
    assert M.auc(scores, positive) == pytest.approx(5 / 6)
    assert M.auc(scores, np.ones(5, bool)) != M.auc(scores, np.ones(5, bool))  # NaN


def test_auc_matches_pairwise_count():
    rng = np.random.default_rng(5)
    scores = rng.integers(0, 6, size=80).astype(float)
    positive = rng.random(80) < 0.4
    pos, neg = scores[positive], scores[~positive]
    brute = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum())
    assert M.auc(scores, positive) == pytest.approx(brute / (pos.size * neg.size))


def test_average_ranks_and_spearman_match_scipy():
    rng = np.random.default_rng(6)
    x = rng.integers(0, 10, size=100)
    y = x + rng.integers(0, 5, size=100)
    np.testing.assert_allclose(M.average_ranks(x), scipy.stats.rankdata(x))
    assert M.spearman(x, y) == pytest.approx(scipy.stats.spearmanr(x, y).statistic)
    assert M.spearman(x, -x) == pytest.approx(-1.0)
    assert math.isnan(M.spearman(np.ones(5), np.arange(5)))


# --------------------------------------------------------------------------- recall / NDCG
def test_recall_and_ndcg_hand_computed():
    # user 0 relevant {2, 5}; user 1 relevant {0, 1, 3, 4}; user 2 none.
    relevant = sp.csr_matrix((np.ones(6), ([0, 0, 1, 1, 1, 1], [2, 5, 0, 1, 3, 4])), shape=(3, 6))
    ranked = np.array([[5, 1, 2], [2, 0, -1], [0, 1, 2]])
    hits = M.relevance_hits(ranked, np.array([0, 1, 2]), relevant)
    np.testing.assert_array_equal(hits, [[1, 0, 1], [0, 1, 0], [0, 0, 0]])
    # Recall@3 (Liang et al.): 2/min(3,2) = 1; 1/min(3,4) = 1/3; no relevant -> NaN
    np.testing.assert_allclose(M.recall_at_k(hits, np.array([2, 4, 0]), 3), [1, 1 / 3, np.nan])
    np.testing.assert_allclose(M.recall_at_k(hits, np.array([2, 4, 0]), 1), [1, 0, np.nan])
    # NDCG@3: user 0 DCG = 1 + 1/log2(4) = 1.5, IDCG = 1 + 1/log2(3);
    # user 1 DCG = 1/log2(3), IDCG = 1 + 1/log2(3) + 1/2
    expected = [1.5 / (1 + 1 / math.log2(3)), (1 / math.log2(3)) / (1.5 + 1 / math.log2(3)), np.nan]
    np.testing.assert_allclose(M.ndcg_at_k(hits, np.array([2, 4, 0]), 3), expected)


def test_ndcg_perfect_ranking_is_one_and_recall_bounds():
    rng = np.random.default_rng(8)
    n_users, n_items, k = 20, 30, 10
    relevant = sp.random(n_users, n_items, density=0.2, format="csr", random_state=9)
    relevant.data[:] = 1
    n_rel = np.diff(relevant.indptr)
    ranked = np.stack([np.concatenate([relevant[u].indices,
                                       np.setdiff1d(np.arange(n_items), relevant[u].indices)])[:k]
                       for u in range(n_users)])
    hits = M.relevance_hits(ranked, np.arange(n_users), relevant)
    ok = n_rel > 0
    np.testing.assert_allclose(M.ndcg_at_k(hits, n_rel, k)[ok], 1.0)
    np.testing.assert_allclose(M.recall_at_k(hits, n_rel, k)[ok], 1.0)
    shuffled = rng.permuted(ranked, axis=1)
    h2 = M.relevance_hits(shuffled, np.arange(n_users), relevant)
    assert np.all(M.ndcg_at_k(h2, n_rel, k)[ok] <= 1.0 + 1e-12)
    np.testing.assert_allclose(M.recall_at_k(h2, n_rel, k)[ok], 1.0)


# --------------------------------------------------------------------------- popularity
def test_log_popularity_ratio_hand_computed():
    pop = np.array([9, 99, 999, 0])
    got = M.log_popularity_ratio(pop, np.array([0, 2]), np.array([[1, 2], [3, -1]]))
    # query 0 (log10 10 = 1): neighbours 2 and 3 -> (1 + 2) / 2 = 1.5; query 2: log10 1 - 3 = -3
    np.testing.assert_allclose(got, [1.5, -3.0])


def test_jaccard_and_rbo_in_one_pass_equal_the_separate_metrics():
    rng = np.random.default_rng(4)
    a = random_lists(rng, 60, 10, 25)
    b = random_lists(rng, 60, 10, 25)
    b[::7, -3:] = M.PAD  # padded (shorter) lists too
    jac, rbo = M.jaccard_and_rbo(a, b, 0.8)
    np.testing.assert_array_equal(jac, M.jaccard(a, b))
    np.testing.assert_array_equal(rbo, M.rbo(a, b, 0.8))
