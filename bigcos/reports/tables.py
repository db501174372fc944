"""The report's tables from neighbour lists and embeddings: agreement between configurations,
D-sensitivity, ground truth and popularity. Definitions of every metric: :mod:`bigcos.metrics`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from bigcos import metrics
from bigcos.reports.inputs import ItemInfo, NeighborLists
from bigcos.reports.model_params import DFamily
from bigcos.reports.options import Options
from bigcos.reports.schema import table_schema
from bigcos.stats import bootstrap_mean, bootstrap_means
from bigcos.topn import inverse_norms


# --------------------------------------------------------------------------- agreement
def _aligned(a: NeighborLists, b: NeighborLists, depth: int) -> tuple[np.ndarray, np.ndarray,
                                                                       np.ndarray]:
    """Common queries of two configurations and both lists cut to a common depth."""
    common, ia, ib = np.intersect1d(a.queries, b.queries, return_indices=True)
    n = min(depth, a.neighbors.shape[1], b.neighbors.shape[1])
    return common, a.neighbors[ia, :n], b.neighbors[ib, :n]


def _summary(values: np.ndarray, prefix: str) -> dict[str, float]:
    v = values[~np.isnan(values)]
    if v.size == 0:
        return {f"{prefix}_{s}": float("nan") for s in ("mean", "p10", "median", "p90")}
    p10, p50, p90 = np.quantile(v, [0.1, 0.5, 0.9])
    return {f"{prefix}_mean": float(v.mean()), f"{prefix}_p10": float(p10),
            f"{prefix}_median": float(p50), f"{prefix}_p90": float(p90)}


def _interval(values: np.ndarray, prefix: str, opts: Options) -> dict[str, float]:
    """Percentile bootstrap interval of the mean over queries (NaN queries dropped)."""
    iv = bootstrap_mean(values, opts.n_resamples, opts.level, opts.seed)
    return {f"{prefix}_lo": iv.lo, f"{prefix}_hi": iv.hi}


@dataclass
class Agreement:
    """Summary rows (one per pair of configurations), per-item tables (item-item pairs) and,
    for pairs within one D-family and metric, the per-query values (kind, model_a, model_b,
    metric) -> (queries, jaccard, rbo) that D-sensitivity's intervals resample."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    per_item: list[pa.Table] = field(default_factory=list)
    per_query: dict[tuple[str, str, str, str], tuple[np.ndarray, np.ndarray, np.ndarray]] = \
        field(default_factory=dict)


def _constant(value: str, n: int) -> pa.DictionaryArray:
    """n copies of one string, dictionary-encoded (one dictionary entry, n int32 codes)."""
    return pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), pa.array([value]))


def _mirrored(row: dict[str, Any]) -> dict[str, Any]:
    """The same agreement row with sides a and b swapped (both metrics are symmetric)."""
    out = dict(row)
    for col in ("model", "metric"):
        out[f"{col}_a"], out[f"{col}_b"] = row[f"{col}_b"], row[f"{col}_a"]
    return out


def agreement(lists: list[NeighborLists], opts: Options, item_ids: pa.Array,
              dataset: str = "", families: dict[str, DFamily | None] | None = None
              ) -> Agreement:
    """Jaccard@N and RBO between every two configurations of the same kind.

    Parameters
    ----------
    lists : list of NeighborLists
    opts : Options
        ``depth`` (N) and ``rbo_p``.
    item_ids : pyarrow.Array
        Original ids of the matrix columns, for the per-item table's ``query_id``.
    dataset : str
        Value of the per-item table's ``dataset`` column.
    families : dict, optional
        Model name -> D-family: per-query values are kept for pairs within one family.

    Returns
    -------
    Agreement
        ``rows``: every pair in both orders (a, b) and (b, a), so filtering on ``model_a``
        finds all partners; ``jaccard_lo/hi``, ``rbo_lo/hi``: percentile bootstrap interval
        of the mean over queries (``opts.n_resamples``, ``opts.level``, ``opts.seed``;
        O(n_resamples x queries) per pair). ``per_item`` (item-item only): each pair once,
        in the canonical order (model_a, metric_a) < (model_b, metric_b). Jaccard@N and RBO
        are computed over the queries both configurations have; memory one (m,) float64
        array per pair and metric.
    """
    out = Agreement()
    ordered = sorted(sample_queries(lists, opts.max_queries, opts.seed),
                     key=lambda nl: (nl.kind, nl.model, nl.metric))
    pending: list[tuple[dict[str, Any], np.ndarray, np.ndarray]] = []
    for a, b in itertools.combinations(ordered, 2):
        if a.kind != b.kind:
            continue
        common, na, nb = _aligned(a, b, opts.depth)
        jac, rbo = metrics.jaccard_and_rbo(na, nb, opts.rbo_p)
        row = {"kind": a.kind, "model_a": a.model, "metric_a": a.metric, "model_b": b.model,
               "metric_b": b.metric, "n_queries": int(common.size), "depth": int(na.shape[1]),
               "rbo_p": opts.rbo_p, **_summary(jac, "jaccard"), **_summary(rbo, "rbo"),
               "level": opts.level}
        pending.append((row, jac, rbo))
        fam = (families or {}).get(a.model)
        if fam is not None and fam == families.get(b.model) and a.metric == b.metric:
            out.per_query[a.kind, a.model, b.model, a.metric] = (common, jac, rbo)
        if a.kind == "item-item":
            n = common.size
            out.per_item.append(pa.table(
                [_constant(dataset, n), item_ids.take(pa.array(common)), _constant(a.model, n),
                 _constant(a.metric, n), _constant(b.model, n), _constant(b.metric, n),
                 pa.array(jac), pa.array(rbo)],
                schema=table_schema("agreement_per_item", item_ids.type)))
    # every pair's intervals at once: pairs over the same number of queries share resamples
    intervals = bootstrap_means([v for _, jac, rbo in pending for v in (jac, rbo)],
                                opts.n_resamples, opts.level, opts.seed)
    for (row, _, _), iv_jac, iv_rbo in zip(pending, intervals[::2], intervals[1::2],
                                           strict=True):
        row.update(jaccard_lo=iv_jac.lo, jaccard_hi=iv_jac.hi, rbo_lo=iv_rbo.lo,
                   rbo_hi=iv_rbo.hi)
        out.rows += [row, _mirrored(row)]
    return out


def sample_queries(lists: list[NeighborLists], max_queries: int, seed: int
                   ) -> list[NeighborLists]:
    """The lists restricted to one seeded sample of at most ``max_queries`` queries per kind.

    Every configuration of a kind keeps the same queries (a uniform sample without
    replacement of the union of that kind's queries, drawn with ``seed``), so every pair is
    compared on the same queries and the bootstrap intervals over them account for the
    sample. Kinds with at most ``max_queries`` queries are kept whole.
    """
    out = []
    for kind in sorted({nl.kind for nl in lists}):
        of_kind = [nl for nl in lists if nl.kind == kind]
        union = np.unique(np.concatenate([nl.queries for nl in of_kind]))
        if union.size <= max_queries:
            out += of_kind
            continue
        keep = np.sort(np.random.default_rng(seed).choice(union, max_queries, replace=False))
        for nl in of_kind:
            mask = np.isin(nl.queries, keep)
            out.append(NeighborLists(nl.kind, nl.model, nl.metric, nl.queries[mask],
                                     nl.neighbors[mask]))
    return out


def _family_per_query(pairs: list[tuple[np.ndarray, np.ndarray, np.ndarray]]
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Per query (those every pair has), the mean over pairs of Jaccard and of RBO."""
    common = pairs[0][0]
    for q, _, _ in pairs[1:]:
        common = np.intersect1d(common, q)
    jac = np.mean([j[np.searchsorted(q, common)] for q, j, _ in pairs], axis=0)
    rbo = np.mean([r[np.searchsorted(q, common)] for q, _, r in pairs], axis=0)
    return jac, rbo


def d_sensitivity(rows: list[dict[str, Any]], families: dict[str, DFamily | None],
                  per_query: dict | None = None, opts: Options | None = None
                  ) -> list[dict[str, Any]]:
    """Agreement across the models of one D-family, same metric: how much D moves the lists.

    Parameters
    ----------
    rows : list of dict
        Agreement rows (:func:`agreement`; each pair is counted once whatever its order).
    families : dict
        Model name -> :class:`DFamily` (None: in no family).
    per_query : dict, optional
        :attr:`Agreement.per_query`; without it the interval columns are NaN.
    opts : Options, optional
        The bootstrap's ``n_resamples``, ``level`` and ``seed``.

    Returns
    -------
    list of dict
        One row per (kind, family, metric), the family's parameters as columns: mean and
        smallest over pairs of models of the per-pair mean Jaccard@N and RBO; ``jaccard_lo``
        .. ``rbo_hi``: percentile bootstrap interval over the ``n_queries`` queries every pair
        has, of the per-query mean over pairs (its point estimate is then the mean over
        those queries, equal to ``jaccard_mean`` when every pair has the same queries).
    """
    opts = opts or Options()
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        fam = families.get(r["model_a"])
        if (fam is None or fam != families.get(r["model_b"]) or r["metric_a"] != r["metric_b"]
                or r["model_a"] >= r["model_b"]):
            continue
        groups.setdefault((r["kind"], fam, r["metric_a"]), []).append(r)
    out = []
    for (kind, fam, metric), pairs in sorted(groups.items(), key=lambda g: repr(g[0])):
        models = sorted({p["model_a"] for p in pairs} | {p["model_b"] for p in pairs})
        jac = np.array([p["jaccard_mean"] for p in pairs])
        rbo = np.array([p["rbo_mean"] for p in pairs])
        stored = [(per_query or {}).get((kind, p["model_a"], p["model_b"], metric))
                  for p in pairs]
        if all(x is not None for x in stored):
            q_jac, q_rbo = _family_per_query(stored)
        else:
            q_jac = q_rbo = np.array([])
        out.append({"kind": kind, **fam._asdict(), "metric": metric, "models": models,
                    "n_models": len(models), "n_pairs": len(pairs),
                    "jaccard_mean": float(jac.mean()), "jaccard_min": float(jac.min()),
                    "rbo_mean": float(rbo.mean()), "rbo_min": float(rbo.min()),
                    "n_queries": int(q_jac.size), **_interval(q_jac, "jaccard", opts),
                    **_interval(q_rbo, "rbo", opts), "level": opts.level})
    return out


# --------------------------------------------------------------------------- scores
def pair_scores(emb: np.ndarray, i: np.ndarray, j: np.ndarray, metric: str) -> np.ndarray:
    """Similarity of embedding rows ``i[t]`` and ``j[t]`` under ``metric``.

    Parameters
    ----------
    emb : numpy.ndarray
        (p, k) embeddings.
    i, j : numpy.ndarray
        (t,) row indices.
    metric : {"cos", "dot"}
        Cosine scores a zero-norm row 0 (:func:`bigcos.topn.inverse_norms`), never NaN.

    Returns
    -------
    numpy.ndarray
        (t,) float64. Pairs are taken in chunks of 8,192 (two (8192, k) float64 gathers in
        cache instead of two (t, k) arrays); each score is the same sum either way.
    """
    rows = emb.astype(np.float64)  # once per embedding (p, k), not per pair
    if metric == "cos":
        rows *= inverse_norms(emb).astype(np.float64)[:, None]
    out = np.empty(len(i), np.float64)
    for s in range(0, len(i), 8192):
        out[s:s + 8192] = np.einsum("tk,tk->t", rows[i[s:s + 8192]], rows[j[s:s + 8192]])
    return out


def cosine_matrix(emb: np.ndarray) -> np.ndarray:
    """(m, m) float64 cosine similarities of the rows of ``emb`` (m, k); zero rows score 0.

    Memory: 8 m^2 bytes; meant for the few hundred or thousand items of a heatmap.
    """
    unit = emb.astype(np.float64) * inverse_norms(emb).astype(np.float64)[:, None]
    return unit @ unit.T


def random_pairs(n: int, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` random ordered pairs (i, j) of distinct indices below ``n``: two (count,)."""
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, size=count)
    j = (i + rng.integers(1, n, size=count)) % n
    return i, j


# --------------------------------------------------------------------------- ground truth
def ground_truth(lists: list[NeighborLists], models: dict[str, Any], info: ItemInfo,
                 popularity: np.ndarray, opts: Options) -> list[dict[str, Any]]:
    """Label precision@N against a popularity-matched baseline, and the within/between AUC.

    Parameters
    ----------
    lists : list of NeighborLists
        Item-item configurations are used, others skipped.
    models : dict
        Model name -> :class:`bigcos.models.Model` (for the AUC's pair scores).
    info : ItemInfo
        Labels; no rows without them.
    popularity : numpy.ndarray
        (n_items,) users per item, for the matched baseline.
    opts : Options
        ``depth``, ``n_bins``, ``auc_pairs``, ``seed``, ``n_resamples``, ``level``.

    Returns
    -------
    list of dict
        One row per item-item configuration. ``precision_lo/hi`` and ``baseline_lo/hi``:
        percentile bootstrap intervals of the two means over the same resampled queries;
        ``above_baseline_lo/hi``: the paired interval of precision - baseline (above 0: the
        lists share labels more often than popularity-matched random neighbours).
    """
    if info.labels is None:
        return []
    bins = metrics.popularity_bins(popularity, opts.n_bins)
    i, j = random_pairs(info.labels.shape[0], opts.auc_pairs, opts.seed)
    labelled = np.diff(info.labels.indptr) > 0
    keep = labelled[i] & labelled[j]
    i, j = i[keep], j[keep]
    same = metrics.shares_label(info.labels, i, j[:, None])[:, 0]
    rows, per_query = [], []
    for nl in lists:
        if nl.kind != "item-item":
            continue
        nb = nl.neighbors[:, :opts.depth]
        precision = metrics.label_precision(info.labels, nl.queries, nb)
        random_nb = metrics.popularity_matched_neighbors(nb, bins, opts.seed)
        baseline = metrics.label_precision(info.labels, nl.queries, random_nb)
        both = ~np.isnan(precision) & ~np.isnan(baseline)  # paired: the same queries
        precision, baseline = precision[both], baseline[both]
        model = models.get(nl.model)
        auc = (metrics.auc(pair_scores(model.item_embeddings, i, j, nl.metric), same)
               if model is not None else float("nan"))
        p, b = (float(x.mean()) if x.size else float("nan") for x in (precision, baseline))
        rows.append({"model": nl.model, "metric": nl.metric, "label_source": info.label_source,
                     "n_unlabelled_items": info.n_unlabelled, "depth": int(nb.shape[1]),
                     "n_queries": int(precision.size),
                     "precision": p, "baseline_precision": b,
                     "lift": p / b if b > 0 else float("nan"), "auc": auc,
                     "n_auc_pairs": int(i.size), "level": opts.level})
        per_query += [precision, baseline, precision - baseline]
    intervals = bootstrap_means(per_query, opts.n_resamples, opts.level, opts.seed)
    for row, iv_p, iv_b, iv_d in zip(rows, intervals[::3], intervals[1::3], intervals[2::3],
                                     strict=True):
        row.update(precision_lo=iv_p.lo, precision_hi=iv_p.hi, baseline_lo=iv_b.lo,
                   baseline_hi=iv_b.hi, above_baseline_lo=iv_d.lo, above_baseline_hi=iv_d.hi)
    return rows


# --------------------------------------------------------------------------- popularity
def popularity_rows(lists: list[NeighborLists], models: dict[str, Any],
                    popularity: np.ndarray, opts: Options) -> list[dict[str, Any]]:
    """Norm-popularity Spearman per model and neighbour popularity relative to the query.

    Parameters
    ----------
    lists : list of NeighborLists
        Item-item configurations are used, others skipped.
    models : dict
        Model name -> :class:`bigcos.models.Model`.
    popularity : numpy.ndarray
        (n_items,) users per item.
    opts : Options
        ``depth``.

    Returns
    -------
    list of dict
        One row per item-item configuration.
    """
    rows = []
    for nl in lists:
        if nl.kind != "item-item":
            continue
        nb = nl.neighbors[:, :opts.depth]
        ratio = metrics.log_popularity_ratio(popularity, nl.queries, nb)
        valid = nb != metrics.PAD
        more = (popularity[np.where(valid, nb, 0)] > popularity[nl.queries][:, None]) & valid
        model = models.get(nl.model)
        rho = (metrics.spearman(np.linalg.norm(model.item_embeddings, axis=1), popularity)
               if model is not None else float("nan"))
        finite = ratio[~np.isnan(ratio)]
        rows.append({"model": nl.model, "metric": nl.metric, "norm_popularity_spearman": rho,
                     "n_queries": int(finite.size),
                     "log_ratio_mean": float(finite.mean()) if finite.size else float("nan"),
                     "log_ratio_median": float(np.median(finite)) if finite.size else float("nan"),
                     "frac_more_popular": float(more.sum() / max(valid.sum(), 1))})
    return rows
