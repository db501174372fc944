"""``bigcos bench metrics``: the report's metrics beside the implementations a user would reach for.

Peers: scikit-learn ``roc_auc_score`` and ``ndcg_score``, scipy ``spearmanr``, and plain
Python sets for Jaccard@N and rank-biased overlap (no maintained RBO package is installed).
Every row also states the largest absolute difference from the peer's values.
"""

from __future__ import annotations

import click
import numpy as np
import scipy.sparse as sp

from bigcos import metrics
from bigcos.bench.common import json_option, measure, report


def random_lists(rng: np.random.Generator, m: int, n: int, universe: int) -> np.ndarray:
    """(m, n) lists without repeats in a row: the first n of a random key order per row."""
    keys = rng.random((m, universe))
    return np.argpartition(keys, n, axis=1)[:, :n].astype(np.int64)


def python_jaccard(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.array([len(set(x) & set(y)) / len(set(x) | set(y))
                     for x, y in zip(a.tolist(), b.tolist(), strict=True)])


def python_rbo(a: np.ndarray, b: np.ndarray, p: float) -> np.ndarray:
    """Webber et al. 2010 Eq. 32, one list pair at a time with incrementally grown sets."""
    out = []
    for x, y in zip(a.tolist(), b.tolist(), strict=True):
        seen_x, seen_y, overlap, total = set(), set(), 0, 0.0
        for d, (u, v) in enumerate(zip(x, y, strict=True), start=1):
            overlap += (u in seen_y) + (v in seen_x) + (u == v)
            seen_x.add(u)
            seen_y.add(v)
            total += overlap / d * p**d
        k = len(x)
        out.append(overlap / k * p**k + (1 - p) / p * total)
    return np.array(out)


def _row(m, peer_values, ours, work: int) -> dict:
    """A table row; ``peer_values`` (or None for the peer's own row) gives the difference."""
    row = m.row()
    row["items_per_s"] = round(work / m.seconds) if m.seconds > 0 else None
    if peer_values is not None:
        row["max_abs_diff_vs_peer"] = float(np.nanmax(np.abs(np.asarray(ours) - peer_values)))
    return row


@click.command()
@click.option("--queries", type=click.IntRange(min=10), default=100_000, show_default=True,
              help="Neighbour lists compared (Jaccard, RBO).")
@click.option("--depth", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--pairs", type=click.IntRange(min=10), default=2_000_000, show_default=True,
              help="Scores for AUC and Spearman.")
@click.option("--users", type=click.IntRange(min=10), default=5_000, show_default=True,
              help="Users ranked for NDCG@100 (against 2,000 items).")
@click.option("--seed", type=int, default=0, show_default=True)
@json_option
def metrics_bench(queries, depth, pairs, users, seed, json_path):
    """Time Jaccard@N, RBO, AUC, Spearman and NDCG@100 beside Python, scikit-learn, scipy.

    \b
    Example:
      bigcos bench metrics --queries 20000 --pairs 500000 --users 1000
    """
    import scipy.stats

    rng = np.random.default_rng(seed)
    rows = []
    a = random_lists(rng, queries, depth, 3 * depth)
    b = random_lists(rng, queries, depth, 3 * depth)
    m, ours = measure("bigcos jaccard", lambda: metrics.jaccard(a, b))
    mp, theirs = measure("python sets jaccard", lambda: python_jaccard(a, b))
    rows += [_row(m, theirs, ours, queries), _row(mp, None, theirs, queries)]
    m, ours = measure("bigcos rbo (p=0.9)", lambda: metrics.rbo(a, b, 0.9))
    mp, theirs = measure("python rbo (p=0.9)", lambda: python_rbo(a, b, 0.9))
    rows += [_row(m, theirs, ours, queries), _row(mp, None, theirs, queries)]

    scores = rng.integers(0, 1000, size=pairs).astype(np.float64)  # many ties on purpose
    positive = rng.random(pairs) < 0.3
    other = scores + rng.normal(0, 300, size=pairs)
    try:
        from sklearn.metrics import ndcg_score, roc_auc_score
    except ImportError:
        roc_auc_score = ndcg_score = None
    m, ours = measure("bigcos auc", lambda: metrics.auc(scores, positive))
    if roc_auc_score is not None:
        mp, theirs = measure("sklearn roc_auc_score", lambda: roc_auc_score(positive, scores))
        rows += [_row(m, theirs, ours, pairs), _row(mp, None, theirs, pairs)]
    else:
        rows.append(_row(m, None, ours, pairs))
    m, ours = measure("bigcos spearman", lambda: metrics.spearman(scores, other))
    mp, theirs = measure("scipy spearmanr", lambda: scipy.stats.spearmanr(scores, other).statistic)
    rows += [_row(m, theirs, ours, pairs), _row(mp, None, theirs, pairs)]

    n_items, k = 2_000, 100
    relevant = sp.random(users, n_items, density=0.01, format="csr", random_state=seed)
    relevant.data[:] = 1
    user_scores = rng.random((users, n_items))
    ranked = np.argsort(-user_scores, axis=1)[:, :k]
    n_rel = np.diff(relevant.indptr)

    def ours_ndcg():
        hits = metrics.relevance_hits(ranked, np.arange(users), relevant)
        return metrics.ndcg_at_k(hits, n_rel, k)

    m, ours = measure("bigcos relevance_hits + ndcg@100", ours_ndcg)
    has = n_rel > 0
    if ndcg_score is not None:
        truth = relevant.toarray()[has]
        mp, theirs = measure("sklearn ndcg_score@100 (dense)",
                             lambda: ndcg_score(truth, user_scores[has], k=k))
        rows += [_row(m, theirs, np.nanmean(ours), users),
                 _row(mp, None, theirs, users)]
    else:
        rows.append(_row(m, None, ours, users))
    report(f"metrics: {queries:,} lists of depth {depth}, {pairs:,} scores, {users:,} users "
           f"x {n_items:,} items", rows, json_path,
           {"queries": queries, "depth": depth, "pairs": pairs, "users": users, "seed": seed})


metrics_bench.name = "metrics"
