"""Held-out evaluation: ranking every unseen item of each test user by dot and by cosine."""

from __future__ import annotations

from typing import Any

import numpy as np

from bigcos import metrics
from bigcos.blocked_topn import top_n
from bigcos.reports.schema import HELDOUT_KS
from bigcos.topn import METRICS


def heldout(models: dict[str, Any], data, ks: tuple[int, int, int] = HELDOUT_KS
            ) -> list[dict[str, Any]]:
    """Recall@K1, Recall@K2 and NDCG@K3 of ranking all non-training items by dot and cosine.

    Parameters
    ----------
    models : dict
        Model name -> :class:`bigcos.models.Model`; each model's user embeddings must be the
        matrix's rows in order (held-out users: embeddings of their fold-in rows).
    data : bigcos.matrix.Interactions
        ``train`` (excluded items) and ``test`` (relevant items); no rows without ``test``.
    ks : tuple of int
        (K1, K2, K3); the columns are named ``recall_at_<K1>``, ``recall_at_<K2>``,
        ``ndcg_at_<K3>`` (:func:`bigcos.reports.schema.heldout_fields`).

    Returns
    -------
    list of dict
        One row per (model, metric). Users with at least one test item are scored (under the
        strong-generalisation split only the held-out users). Top-K lists come from the exact
        kernel :func:`bigcos.neighbor_lists.top_n` (ties: smaller item index); memory about
        24 * users * max(ks) bytes per model beside the kernel's blocks.
    """
    if data.test is None:
        return []
    n_relevant = np.diff(data.test.indptr)
    users = np.flatnonzero(n_relevant > 0)
    protocol = "strong" if data.heldout_users is not None and data.heldout_users.any() else "weak"
    if protocol == "strong":
        users = users[data.heldout_users[users]]
    exclude = data.train[users]
    rel = n_relevant[users]
    rows = []
    for name, model in models.items():
        ranked = top_n(model.user_embeddings[users], model.item_embeddings, max(ks), METRICS,
                       exclude=exclude)
        for metric in METRICS:
            hits = metrics.relevance_hits(ranked[metric][0], users, data.test)
            rows.append({
                "model": name, "metric": metric, "protocol": protocol,
                "n_users": int(users.size),
                f"recall_at_{ks[0]}": float(np.nanmean(metrics.recall_at_k(hits, rel, ks[0]))),
                f"recall_at_{ks[1]}": float(np.nanmean(metrics.recall_at_k(hits, rel, ks[1]))),
                f"ndcg_at_{ks[2]}": float(np.nanmean(metrics.ndcg_at_k(hits, rel, ks[2])))})
    return rows
