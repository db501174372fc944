"""The audit's tables, as lists of row dicts (the schema is in :mod:`bigcos.embedding_audit`)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from bigcos import metrics, stats
from bigcos.embedding_audit.family import OWN, Family, Lists, Member, dot_deviation
from bigcos.embedding_audit.shards import row_norms

METRICS = ("cos", "dot")


def _interval(values: np.ndarray, opts) -> dict:
    ci = stats.bootstrap_mean(values, opts.n_resamples, opts.level, opts.seed)
    return {"n": ci.n, "mean": ci.estimate, "lo": ci.lo, "hi": ci.hi}


def agreement(lists: dict[tuple[str, str], Lists], members: list[Member], opts) -> list[dict]:
    """Jaccard@N of each member's lists with the model's own (and with balanced), per metric;
    plus own cosine vs own dot. ``lists`` is keyed by (member, kind)."""
    rows = []
    by_name = {m.name: m for m in members}
    for (name, kind), current in lists.items():
        pairs = [((OWN, "cos"), (OWN, "dot"))] if name == OWN else []
        if name != OWN:
            for ref in (OWN, "balanced"):
                if ref != name and (ref, kind) in lists:
                    pairs += [((name, m), (ref, m)) for m in METRICS]
        for (a, ma), (b, mb) in pairs:
            ia = current.lists[ma][0]
            ib = lists[(b, kind)].lists[mb][0]
            deviation = float("nan")
            if kind == "user-item" and ma == mb == "dot" and a != b:
                deviation = dot_deviation(by_name[b], by_name[a], ib)
            ci = _interval(metrics.jaccard(ia, ib), opts)
            rows.append({"kind": kind, "member_a": a, "metric_a": ma, "member_b": b,
                         "metric_b": mb, "depth": opts.depth, "n_queries": ci["n"],
                         "jaccard": ci["mean"], "jaccard_lo": ci["lo"], "jaccard_hi": ci["hi"],
                         "max_rel_score_diff": deviation})
    return rows


def dimensions(family: Family) -> list[dict]:
    place = family.place
    return [{"dimension": j, "s": float(family.canon.s[j]),
             "item_norm_ratio": float(place.item_ratio[j]),
             "user_norm_ratio": float(place.user_ratio[j]),
             "fitted_d": float(place.fitted_d[j])} for j in range(family.canon.rank)]


def member_scalings(family: Family) -> list[dict]:
    return [{"member": m.name, "dimension": j, "d": float(v)}
            for m in family.members if m.d is not None for j, v in enumerate(m.d)]


def popularity(lists: dict[tuple[str, str], Lists], members: list[Member],
               queries: np.ndarray, pop: np.ndarray, opts) -> list[dict]:
    """Norm-popularity Spearman of each member's item embeddings, and how much more popular
    (log10 ratio) item-item neighbours are than their query, per metric."""
    rows = []
    for member in members:
        if (member.name, "item-item") not in lists:
            continue
        norms = row_norms(member.items)
        rho = metrics.spearman(norms, pop)
        for metric in METRICS:
            index = lists[(member.name, "item-item")].lists[metric][0]
            ci = _interval(metrics.log_popularity_ratio(pop, queries, index), opts)
            rows.append({"member": member.name, "metric": metric,
                         "norm_popularity_spearman": rho, "n_queries": ci["n"],
                         "log_pop_ratio": ci["mean"], "log_pop_ratio_lo": ci["lo"],
                         "log_pop_ratio_hi": ci["hi"]})
    return rows


def _pair_scores(items, a: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray]:
    xa, xb = items.take(a).astype(np.float64), items.take(b).astype(np.float64)
    dot = np.einsum("ij,ij->i", xa, xb)
    denom = np.linalg.norm(xa, axis=1) * np.linalg.norm(xb, axis=1)
    cos = np.divide(dot, denom, out=np.zeros_like(dot), where=denom > 0)
    return {"cos": cos, "dot": dot}


def labels(lists: dict[tuple[str, str], Lists], members: list[Member], queries: np.ndarray,
           sets: sp.csr_matrix, label_column: str, opts) -> list[dict]:
    """Label precision@N of item-item lists, and the same-label AUC of random item pairs."""
    rng = np.random.default_rng(opts.seed)
    p = sets.shape[0]
    labelled = np.flatnonzero(np.diff(sets.indptr) > 0)
    a = labelled[rng.integers(0, len(labelled), opts.auc_pairs)] if len(labelled) else labelled
    b = labelled[rng.integers(0, len(labelled), opts.auc_pairs)] if len(labelled) else labelled
    keep = a != b
    a, b = a[keep], b[keep]
    same = np.asarray(sets[a].multiply(sets[b]).sum(axis=1)).ravel() > 0
    rows = []
    for member in members:
        if (member.name, "item-item") not in lists:
            continue
        pair_scores = _pair_scores(member.items, a, b)
        for metric in METRICS:
            index = lists[(member.name, "item-item")].lists[metric][0]
            ci = _interval(metrics.label_precision(sets, queries, index), opts)
            rows.append({"member": member.name, "metric": metric, "label_column": label_column,
                         "depth": opts.depth, "n_queries": ci["n"], "precision": ci["mean"],
                         "precision_lo": ci["lo"], "precision_hi": ci["hi"],
                         "same_label_auc": metrics.auc(pair_scores[metric], same),
                         "n_auc_pairs": len(a), "n_items": p})
    return rows


def heldout(per_member: dict[str, dict[str, dict[str, np.ndarray]]], opts) -> list[dict]:
    rows = []
    for name, by_metric in per_member.items():
        for metric, measures in by_metric.items():
            for measure, values in measures.items():
                ci = _interval(values, opts)
                rows.append({"member": name, "metric": metric, "measure": measure,
                             "n_users": ci["n"], "mean": ci["mean"], "lo": ci["lo"],
                             "hi": ci["hi"]})
    return rows


def examples(lists: dict[tuple[str, str], Lists], queries: np.ndarray, chosen: np.ndarray,
             item_ids: list, titles: np.ndarray) -> list[dict]:
    """Item-item lists of the chosen query items (indices into ``queries``) with titles."""
    rows = []
    for (name, kind), current in lists.items():
        if kind != "item-item" or name not in (OWN, "balanced", "item-orthonormal"):
            continue
        for metric in METRICS:
            index, score = current.lists[metric]
            for q in chosen:
                query = int(queries[q])
                for rank, (c, s) in enumerate(zip(index[q], score[q], strict=True)):
                    if c < 0:
                        break
                    rows.append({"query_id": str(item_ids[query]), "query_title": titles[query],
                                 "member": name, "metric": metric, "rank": rank + 1,
                                 "item_id": str(item_ids[c]), "title": titles[c],
                                 "score": float(s)})
    return rows
