"""Held-out evaluation: every unseen item of each sampled test user ranked by dot and by
cosine, each user's Recall@K and NDCG@K kept, and a percentile bootstrap interval over the
sampled users per figure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from bigcos import metrics
from bigcos.blocked_topn import top_n
from bigcos.errors import UserError
from bigcos.reports.options import Options
from bigcos.reports.schema import HELDOUT_KS, heldout_measures
from bigcos.reports.scoring import EXPORTED, dot_factors, dot_scoring
from bigcos.stats import resample_means
from bigcos.topn import METRICS


@dataclass
class HeldOutScores:
    """Per-user held-out measures of every configuration, on the same users.

    Attributes
    ----------
    users : (m,) int64 matrix rows scored, ascending: the test users (users with at least one
        test item; only the held-out users under the strong-generalisation split), or a
        seeded sample of them.
    protocol : "strong" or "weak"
    measures : names of the measures, e.g. ``recall_at_20``.
    values : dict (model, metric) -> measure -> (m,) float64, aligned with ``users``.
    dot_scoring : dict model -> key of :data:`bigcos.reports.scoring.SCORING`.
    n_test_users : int
        All test users, of which ``users`` were ranked (default: ``users.size``).
    """

    users: np.ndarray
    protocol: str
    measures: list[str]
    values: dict[tuple[str, str], dict[str, np.ndarray]]
    dot_scoring: dict[str, str]
    n_test_users: int | None = None

    def __post_init__(self):
        if self.n_test_users is None:
            self.n_test_users = int(self.users.size)


def _per_user(hits: np.ndarray, rel: np.ndarray, ks: tuple[int, int, int]
              ) -> dict[str, np.ndarray]:
    names = heldout_measures(ks)
    return {names[0]: metrics.recall_at_k(hits, rel, ks[0]),
            names[1]: metrics.recall_at_k(hits, rel, ks[1]),
            names[2]: metrics.ndcg_at_k(hits, rel, ks[2])}


def sample_users(users: np.ndarray, max_users: int | None, seed: int) -> np.ndarray:
    """A seeded uniform sample without replacement of at most ``max_users`` of ``users``.

    Parameters
    ----------
    users : (m,) int64, ascending
    max_users : int or None
        None or at least ``m``: all users, unchanged.
    seed : int

    Returns
    -------
    (min(m, max_users),) int64, ascending.
    """
    if max_users is not None and max_users < 1:
        raise UserError(f"max_users: must be at least 1, got {max_users}")
    if max_users is None or users.size <= max_users:
        return users
    return np.sort(np.random.default_rng(seed).choice(users, max_users, replace=False))


def heldout_scores(models: dict[str, Any], data, ks: tuple[int, int, int] = HELDOUT_KS,
                   max_users: int | None = None, seed: int = 0) -> HeldOutScores | None:
    """Recall@K1, Recall@K2 and NDCG@K3 of the test users, for every model by dot and cosine.

    Parameters
    ----------
    models : dict
        Model name -> :class:`bigcos.models.Model`; each model's user embeddings must be the
        matrix's rows in order (held-out users: embeddings of their fold-in rows).
    data : bigcos.matrix.Interactions
        ``train`` (excluded items) and ``test`` (relevant items).
    ks : (K1, K2, K3)
    max_users : int or None
        Rank one seeded uniform sample without replacement of at most this many test users
        (:func:`sample_users`), the same for every model and metric so that comparisons stay
        paired; None: every test user (:attr:`Options.max_heldout_users` in a report).
    seed : int
        Seed of that sample.

    Returns
    -------
    HeldOutScores, or None without a test matrix.
        Dot ranks by the model's prediction of X in X's own scale
        (:func:`bigcos.reports.scoring.dot_factors`), cosine by the exported embeddings. Each
        ranking is one exact top-max(ks) list per user (:func:`bigcos.blocked_topn.top_n`;
        ties: smaller item index), the measures of :func:`bigcos.evaluation.per_user` read off
        it at each K; a sampled user's measures are those of the full run. Memory: the
        kernel's blocks plus 8 users max(ks) bytes per metric, users = the sample's size.
    """
    if data.test is None:
        return None
    n_relevant = np.diff(data.test.indptr)
    users = np.flatnonzero(n_relevant > 0)
    protocol = "strong" if data.heldout_users is not None and data.heldout_users.any() else "weak"
    if protocol == "strong":
        users = users[data.heldout_users[users]]
    n_test_users = int(users.size)
    users = sample_users(users, max_users, seed)
    exclude = data.train[users]
    rel = n_relevant[users]
    values, scoring = {}, {}
    for name, model in models.items():
        scoring[name] = dot_scoring(model)
        exported = model.user_embeddings[users], model.item_embeddings
        if scoring[name] in (EXPORTED, "x-tilde"):
            ranked = top_n(*exported, max(ks), METRICS, exclude=exclude)
        else:
            ranked = top_n(*dot_factors(model, users), max(ks), ("dot",), exclude=exclude)
            ranked.update(top_n(*exported, max(ks), ("cos",), exclude=exclude))
        for metric in METRICS:
            hits = metrics.relevance_hits(ranked[metric][0], users, data.test)
            values[name, metric] = _per_user(hits, rel, ks)
    return HeldOutScores(users, protocol, heldout_measures(ks), values, scoring, n_test_users)


def heldout_rows(scores: HeldOutScores | None, lams: dict[str, tuple[float | None, str | None]],
                 opts: Options) -> list[dict[str, Any]]:
    """One heldout-table row per configuration: each measure with its bootstrap interval.

    Parameters
    ----------
    scores : HeldOutScores or None
    lams : dict
        Model name -> (lam, lam_source) (:attr:`bigcos.reports.ModelParams.lam`).
    opts : Options
        ``n_resamples``, ``level``, ``seed`` of the percentile bootstrap over the ranked users
        (resampling the sample, so intervals account for it).

    Returns
    -------
    list of dict
        Columns of :func:`bigcos.reports.schema.heldout_fields`; cost one (n_resamples x
        users) @ (users x figures) product.
    """
    if scores is None:
        return []
    rows = []
    resampled = iter(resample_means([per[measure] for per in scores.values.values()
                                     for measure in scores.measures],
                                    opts.n_resamples, opts.seed))
    for name, metric in scores.values:
        row = {"model": name, "metric": metric, "protocol": scores.protocol,
               "n_users": int(scores.users.size), "n_test_users": scores.n_test_users}
        for measure in scores.measures:
            iv = next(resampled).interval(opts.level)
            row |= {measure: iv.estimate, f"{measure}_lo": iv.lo, f"{measure}_hi": iv.hi}
        lam, source = lams.get(name, (None, None))
        rows.append(row | {"level": opts.level, "lam": lam, "lam_source": source,
                           "scoring": scores.dot_scoring[name] if metric == "dot"
                           else "cosine"})
    return rows


def heldout(models: dict[str, Any], data, ks: tuple[int, int, int] = HELDOUT_KS,
            opts: Options | None = None) -> list[dict[str, Any]]:
    """The heldout table's rows (:func:`heldout_scores` on ``opts.max_heldout_users`` users
    sampled with ``opts.seed``, then :func:`heldout_rows`)."""
    from bigcos.reports.model_params import model_params

    lams = {}
    for name, m in models.items():
        p = model_params(name, m.manifest, m.item_embeddings.shape[1])
        lams[name] = (p.lam, p.lam_source)
    opts = opts or Options()
    scores = heldout_scores(models, data, ks, opts.max_heldout_users, opts.seed)
    return heldout_rows(scores, lams, opts)
