"""Comparison reports: Parquet tables with a versioned schema, and a self-contained HTML page.

A report answers "can I trust cosine similarity on my embeddings?" for one matrix, several
models (model directories, ``bigcos.load_model``) and their neighbour lists (a neighbour dataset,
``kind=/model=/metric=`` hive partitions). A *configuration* is one (model, metric) pair, metric
in {cos, dot}. Lists are cut at ``depth`` N (default 10). Definitions of every metric are in
:mod:`bigcos.metrics`.

Output directory (written atomically, with ``manifest.json``)::

    agreement.parquet           one row per kind and unordered pair of configurations
    agreement_per_item.parquet  one row per item-item query and pair of configurations
    d_sensitivity.parquet       one row per kind, D-family and metric
    ground_truth.parquet        one row per item-item configuration (needs item labels)
    heldout.parquet             one row per user-item configuration (needs a test matrix)
    popularity.parquet          one row per configuration with item-item lists
    report.html                 the page: plots (inline PNG) and example neighbour lists

Schema, version 1 (``SCHEMA_VERSION``; also stored in each file's Parquet metadata under
``bigcos.schema`` as JSON ``{"table": ..., "version": ...}`` and in the manifest):

agreement
    kind string, model_a string, metric_a string, model_b string, metric_b string,
    n_queries int64 (queries present in both), depth int32 (N), rbo_p float64,
    jaccard_mean, jaccard_p10, jaccard_median, jaccard_p90,
    rbo_mean, rbo_p10, rbo_median, rbo_p90 float64
agreement_per_item
    query_id (the dataset's item id type: int64 or string), model_a, metric_a, model_b,
    metric_b dictionary<int32, string> (pandas: categorical), jaccard float64, rbo float64
d_sensitivity
    kind string, family string (models differing only in the rescaling D), metric string,
    n_models int32, n_pairs int32, jaccard_mean, jaccard_min, rbo_mean, rbo_min float64
    (mean / smallest over pairs of models of the per-pair mean over queries)
ground_truth
    model string, metric string, label_source string (the item column: "cluster", "genres",
    ...), depth int32,
    n_queries int64, precision float64 (label precision@N: share of neighbours with >= 1 label
    in common with the query), baseline_precision float64 (same, for popularity-matched
    random neighbours), lift float64 (precision / baseline), auc float64 (within- vs
    between-label similarity of random item pairs under this metric), n_auc_pairs int64
heldout
    model string, metric string, protocol string ("strong": held-out users, "weak": held-out
    interactions of training users), n_users int64, recall_at_20, recall_at_50,
    ndcg_at_100 float64 (user-item ranking of all items minus the user's training items)
popularity
    model string, metric string, norm_popularity_spearman float64 (item embedding norm vs
    number of training users, same for both metrics of a model), n_queries int64,
    log_ratio_mean, log_ratio_median float64 (per query: mean over its item-item neighbours of
    log10((1 + pop_neighbour) / (1 + pop_query))), frac_more_popular float64 (share of
    neighbours more popular than their query)
"""

from __future__ import annotations

import base64
import html
import io as pyio
import itertools
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import scipy.sparse as sp

from bigcos import io, metrics
from bigcos.blocked_topn import top_n
from bigcos.errors import UserError
from bigcos.neighbor_lists import KINDS, METRICS

SCHEMA_VERSION = 1
_F64 = pa.float64()
_STR = pa.string()
_DICT = pa.dictionary(pa.int32(), pa.string())  # string column stored once per distinct value
_I64 = pa.int64()

_FIELDS: dict[str, list[tuple[str, pa.DataType | None]]] = {
    "agreement": [("kind", _STR), ("model_a", _STR), ("metric_a", _STR), ("model_b", _STR),
                  ("metric_b", _STR), ("n_queries", pa.int64()), ("depth", pa.int32()),
                  ("rbo_p", _F64), ("jaccard_mean", _F64), ("jaccard_p10", _F64),
                  ("jaccard_median", _F64), ("jaccard_p90", _F64), ("rbo_mean", _F64),
                  ("rbo_p10", _F64), ("rbo_median", _F64), ("rbo_p90", _F64)],
    "agreement_per_item": [("query_id", None), ("model_a", _DICT), ("metric_a", _DICT),
                           ("model_b", _DICT), ("metric_b", _DICT), ("jaccard", _F64),
                           ("rbo", _F64)],
    "d_sensitivity": [("kind", _STR), ("family", _STR), ("metric", _STR),
                      ("n_models", pa.int32()), ("n_pairs", pa.int32()), ("jaccard_mean", _F64),
                      ("jaccard_min", _F64), ("rbo_mean", _F64), ("rbo_min", _F64)],
    "ground_truth": [("model", _STR), ("metric", _STR), ("label_source", _STR),
                     ("depth", pa.int32()), ("n_queries", pa.int64()), ("precision", _F64),
                     ("baseline_precision", _F64), ("lift", _F64), ("auc", _F64),
                     ("n_auc_pairs", pa.int64())],
    "heldout": [("model", _STR), ("metric", _STR), ("protocol", _STR), ("n_users", pa.int64()),
                ("recall_at_20", _F64), ("recall_at_50", _F64), ("ndcg_at_100", _F64)],
    "popularity": [("model", _STR), ("metric", _STR), ("norm_popularity_spearman", _F64),
                   ("n_queries", pa.int64()), ("log_ratio_mean", _F64),
                   ("log_ratio_median", _F64), ("frac_more_popular", _F64)],
}


def table_schema(name: str, item_id_type: pa.DataType = _I64) -> pa.Schema:
    """The documented schema of table ``name`` (query ids take the dataset's item id type)."""
    fields = [pa.field(col, typ if typ is not None else item_id_type) for col, typ in _FIELDS[name]]
    meta = {"bigcos.schema": json.dumps({"table": name, "version": SCHEMA_VERSION})}
    return pa.schema(fields, metadata=meta)


def _table(name: str, rows: list[dict[str, Any]]) -> pa.Table:
    """Rows (dicts keyed by column) as a table of the documented schema of ``name``."""
    return pa.Table.from_pylist(rows, schema=table_schema(name))


# --------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class NeighborLists:
    """One configuration's neighbour lists as matrix indices.

    ``queries``: (m,) int64 row/column indices of the queries, ascending. ``neighbors``: (m, N)
    int64 indices of neighbours, rank 1 first, -1 where a list is shorter than N.
    """

    kind: str
    model: str
    metric: str
    queries: np.ndarray
    neighbors: np.ndarray

    @property
    def label(self) -> str:
        return f"{self.model}/{self.metric}"


def _indices_of(ids: pa.Array, vocabulary: pa.Array, what: str) -> np.ndarray:
    """Positions of ``ids`` in ``vocabulary`` (int64); UserError if any id is unknown."""
    if ids.type != vocabulary.type:
        try:
            ids = ids.cast(vocabulary.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise UserError(f"{what}: ids of type {ids.type} do not match the matrix's "
                            f"{vocabulary.type}") from None
    index = pc.index_in(ids, value_set=vocabulary)
    if index.null_count:
        bad = ids.filter(pc.is_null(index))[0]
        raise UserError(f"{what}: id {bad} is not in the matrix ({index.null_count} unknown ids)")
    return index.to_numpy(zero_copy_only=False).astype(np.int64)


def lists_from_table(table: pa.Table, kind: str, model: str, metric: str,
                     query_ids: pa.Array, neighbor_ids: pa.Array, what: str) -> NeighborLists:
    """Turn rows (query_id, rank, neighbor_id) into an (m, N) index array of one configuration.

    ``query_ids`` / ``neighbor_ids`` are the vocabularies (matrix order) of queries and neighbours.
    """
    q = _indices_of(table.column("query_id").combine_chunks(), query_ids, what)
    nb = _indices_of(table.column("neighbor_id").combine_chunks(), neighbor_ids, what)
    rank = table.column("rank").to_numpy().astype(np.int64)
    if rank.size and rank.min() < 1:
        raise UserError(f"{what}: column 'rank' must start at 1, found {rank.min()}")
    queries, row = np.unique(q, return_inverse=True)
    depth = int(rank.max()) if rank.size else 0
    neighbors = np.full((queries.size, depth), metrics.PAD, dtype=np.int64)
    neighbors[row, rank - 1] = nb
    return NeighborLists(kind, model, metric, queries, neighbors)


def read_neighbor_lists(directory: str | Path, user_ids: pa.Array, item_ids: pa.Array,
                        max_rank: int | None = None) -> list[NeighborLists]:
    """Every configuration in a neighbour dataset (``kind=*/model=*/metric=*/part-*.parquet``).

    ``max_rank``: keep ranks 1..max_rank only (the report needs ``depth``; memory then scales
    with depth, not with the N the lists were computed at).
    """
    root = io.require_dir(directory, "neighbour dataset", io.DATASET_MANIFEST)
    vocab = {"item": item_ids, "user": user_ids}
    out = []
    for leaf in sorted(root.glob("kind=*/model=*/metric=*")):
        if not leaf.is_dir():
            continue
        kind, model, metric = (part.split("=", 1)[1] for part in leaf.parts[-3:])
        if kind not in KINDS:
            raise UserError(f"{leaf}: unknown kind '{kind}' (expected one of {', '.join(KINDS)})")
        files = sorted(leaf.glob("*.parquet"))
        if not files:
            continue
        table = pa.concat_tables(_read_ranks(f, max_rank) for f in files)
        query_side, neighbor_side = kind.split("-")
        out.append(lists_from_table(table, kind, model, metric, vocab[query_side],
                                    vocab[neighbor_side], str(leaf)))
    if not out:
        raise UserError(f"{root}: no kind=*/model=*/metric=* partitions with Parquet files")
    return out


def _read_ranks(path: Path, max_rank: int | None) -> pa.Table:
    """query_id, rank, neighbor_id of one neighbour file, ranks <= max_rank when given."""
    columns = ["query_id", "rank", "neighbor_id"]
    try:
        return pq.read_table(path, columns=columns,
                             filters=None if max_rank is None else [("rank", "<=", max_rank)])
    except (pa.ArrowInvalid, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: cannot be read as a neighbour file ({first})") from None


@dataclass(frozen=True)
class ItemInfo:
    """Item metadata aligned with the matrix columns.

    ``labels``: boolean CSR (n_items, n_labels) or None; ``label_source``: the item column the
    labels came from, or None; ``single_label``: at most one label per item (clusters,
    categories); ``titles``: (n_items,) object array of display names (the id when none).
    """

    labels: sp.csr_matrix | None
    label_source: str | None
    titles: np.ndarray
    single_label: bool = False


def read_item_info(path: str | Path | None, item_ids: pa.Array,
                   label_column: str | None = None) -> ItemInfo:
    """Labels and titles from an item table keyed by ``item_id``, aligned with ``item_ids``.

    Labels come from ``label_column``, by default ``cluster`` (simulator) else ``genres``:
    an integer or string column gives one label per item, a list column a set of labels.
    Titles come from ``title`` or ``name``. Items absent from the table are unlabelled.
    """
    ids_text = np.array([str(v) for v in item_ids.to_pylist()], dtype=object)
    if path is None:
        if label_column:
            raise UserError(f"--labels {label_column}: no item table (pass --items)")
        return ItemInfo(None, None, ids_text)
    table = io.read_table(path)
    if "item_id" not in table.column_names:
        raise UserError(f"{path}: column 'item_id' not found")
    ids = table.column("item_id").combine_chunks()
    if ids.type != item_ids.type:
        ids = ids.cast(item_ids.type)
    index = pc.index_in(item_ids, value_set=ids)
    present = index.is_valid().to_numpy(zero_copy_only=False)
    row = pc.fill_null(index, 0).to_numpy().astype(np.int64)
    titles = ids_text.copy()
    for col in ("title", "name"):
        if col in table.column_names:
            values = np.array(table.column(col).to_pylist(), dtype=object)
            titles = np.where(present, values[row], ids_text)
            break
    if label_column is None:
        label_column = next((c for c in ("cluster", "genres") if c in table.column_names), None)
        if label_column is None:
            return ItemInfo(None, None, titles)
    if label_column not in table.column_names:
        raise UserError(f"{path}: label column '{label_column}' not found "
                        f"(columns: {', '.join(table.column_names)})")
    column = table.column(label_column).combine_chunks()
    values = column.to_pylist()
    aligned = [values[r] if ok else None for r, ok in zip(row, present, strict=True)]
    if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        return ItemInfo(metrics.label_sets(aligned), label_column, titles)
    sets = metrics.label_sets([[v] if v is not None else [] for v in aligned])
    titles = np.array([f"{t} [{label_column} {v}]" if v is not None else t
                       for t, v in zip(titles, aligned, strict=True)], dtype=object)
    return ItemInfo(sets, label_column, titles, single_label=True)


def item_popularity(train: sp.csr_matrix) -> np.ndarray:
    """Number of distinct users per item in ``train``: (n_items,) int64."""
    return np.bincount(train.indices, minlength=train.shape[1]).astype(np.int64)


def d_family(manifest: dict[str, Any], name: str) -> str | None:
    """The family of models that differ only in the rescaling D of objective 1, or None.

    From a ``bigcos fit`` manifest: objective 1 with a ``scaling`` (not project-back); models
    with the same lam, SVD rank k and column remedy form one family. Without fit
    parameters the name decides: ``obj1-<scaling>[-suffix]`` models form one family "obj1".
    """
    params = manifest.get("parameters", {})
    if "objective" not in params:
        return "obj1" if name.startswith("obj1-") and "project-back" not in name else None
    if params["objective"] != 1 or not params.get("scaling"):
        return None
    svd = params.get("svd", {})
    pre = params.get("preprocessing", {})
    remedy = "".join(f" {k}={v}" for k, v in sorted(pre.items()) if v != "none")
    return f"obj1 lam={params.get('lam', 0):g} k={svd.get('k', '?')}{remedy}"


# --------------------------------------------------------------------------- agreement
@dataclass(frozen=True)
class Options:
    """Report parameters: each changes numbers in the report."""

    depth: int = 10           # N of Jaccard@N, RBO, precision@N
    rbo_p: float = 0.9        # RBO persistence
    n_bins: int = 10          # popularity bins of the matched baseline
    auc_pairs: int = 200_000  # random item pairs for the within/between AUC
    seed: int = 0
    examples: tuple[str, ...] = ()  # item ids (as text) shown as example lists; default: popular
    n_examples: int = 4
    labels: str | None = None  # item column of ground-truth labels; default cluster / genres

    def __post_init__(self):
        for name in ("depth", "n_bins", "auc_pairs", "n_examples"):
            if getattr(self, name) < 1:
                raise UserError(f"report {name}: must be at least 1, got {getattr(self, name)}")
        if not 0.0 < self.rbo_p < 1.0:
            raise UserError(f"report rbo_p: must be in (0, 1), got {self.rbo_p}")
        object.__setattr__(self, "examples", tuple(str(e) for e in self.examples))


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


@dataclass
class Agreement:
    """Summary rows (one per pair of configurations) and per-item tables (item-item pairs)."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    per_item: list[pa.Table] = field(default_factory=list)


def _constant(value: str, n: int) -> pa.DictionaryArray:
    """n copies of one string, dictionary-encoded (one dictionary entry, n int32 codes)."""
    return pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), pa.array([value]))


def agreement(lists: list[NeighborLists], opts: Options, item_ids: pa.Array) -> Agreement:
    """Jaccard@N and RBO for every unordered pair of configurations of the same kind.

    ``item_ids``: original ids of the matrix columns, for the per-item table's ``query_id``.
    """
    out = Agreement()
    for a, b in itertools.combinations(lists, 2):
        if a.kind != b.kind:
            continue
        common, na, nb = _aligned(a, b, opts.depth)
        jac = metrics.jaccard(na, nb)
        rbo = metrics.rbo(na, nb, opts.rbo_p)
        out.rows.append({"kind": a.kind, "model_a": a.model, "metric_a": a.metric,
                         "model_b": b.model, "metric_b": b.metric,
                         "n_queries": int(common.size), "depth": int(na.shape[1]),
                         "rbo_p": opts.rbo_p, **_summary(jac, "jaccard"),
                         **_summary(rbo, "rbo")})
        if a.kind == "item-item":
            n = common.size
            out.per_item.append(pa.table(
                [item_ids.take(pa.array(common)), _constant(a.model, n), _constant(a.metric, n),
                 _constant(b.model, n), _constant(b.metric, n), pa.array(jac), pa.array(rbo)],
                schema=table_schema("agreement_per_item", item_ids.type)))
    return out


def d_sensitivity(rows: list[dict[str, Any]], families: dict[str, str | None]
                  ) -> list[dict[str, Any]]:
    """Agreement across models of one D-family, same metric: how much D moves the lists.

    ``rows``: agreement rows; ``families``: model name -> family (None: not in one).
    """
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        fam = families.get(r["model_a"])
        if fam is None or fam != families.get(r["model_b"]) or r["metric_a"] != r["metric_b"]:
            continue
        groups.setdefault((r["kind"], fam, r["metric_a"]), []).append(r)
    out = []
    for (kind, fam, metric), pairs in sorted(groups.items()):
        models = {p["model_a"] for p in pairs} | {p["model_b"] for p in pairs}
        jac = np.array([p["jaccard_mean"] for p in pairs])
        rbo = np.array([p["rbo_mean"] for p in pairs])
        out.append({"kind": kind, "family": fam, "metric": metric, "n_models": len(models),
                    "n_pairs": len(pairs), "jaccard_mean": float(jac.mean()),
                    "jaccard_min": float(jac.min()), "rbo_mean": float(rbo.mean()),
                    "rbo_min": float(rbo.min())})
    return out


# --------------------------------------------------------------------------- scores
def normalise_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit norm; zero rows stay zero (their cosine is 0, never NaN)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1)


def pair_scores(emb: np.ndarray, i: np.ndarray, j: np.ndarray, metric: str) -> np.ndarray:
    """Similarity of embedding rows i[t] and j[t] under ``metric``: (t,) float64."""
    e = normalise_rows(emb) if metric == "cos" else emb
    return np.einsum("tk,tk->t", e[i].astype(np.float64), e[j].astype(np.float64))


def random_pairs(n: int, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` random ordered pairs (i, j) of distinct indices below n."""
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, size=count)
    j = (i + rng.integers(1, n, size=count)) % n
    return i, j


# --------------------------------------------------------------------------- tables
def ground_truth(lists: list[NeighborLists], models: dict[str, Any], info: ItemInfo,
                 popularity: np.ndarray, opts: Options) -> list[dict[str, Any]]:
    """Label precision@N vs the popularity-matched baseline, and the within/between AUC."""
    if info.labels is None:
        return []
    bins = metrics.popularity_bins(popularity, opts.n_bins)
    i, j = random_pairs(info.labels.shape[0], opts.auc_pairs, opts.seed)
    labelled = np.diff(info.labels.indptr) > 0
    keep = labelled[i] & labelled[j]
    i, j = i[keep], j[keep]
    same = metrics.shares_label(info.labels, i, j[:, None])[:, 0]
    rows = []
    for nl in lists:
        if nl.kind != "item-item":
            continue
        nb = nl.neighbors[:, :opts.depth]
        precision = metrics.label_precision(info.labels, nl.queries, nb)
        random_nb = metrics.popularity_matched_neighbors(nb, bins, opts.seed)
        baseline = metrics.label_precision(info.labels, nl.queries, random_nb)
        model = models.get(nl.model)
        auc = (metrics.auc(pair_scores(model.item_embeddings, i, j, nl.metric), same)
               if model is not None else float("nan"))
        p, b = float(np.nanmean(precision)), float(np.nanmean(baseline))
        rows.append({"model": nl.model, "metric": nl.metric, "label_source": info.label_source,
                     "depth": int(nb.shape[1]), "n_queries": int((~np.isnan(precision)).sum()),
                     "precision": p, "baseline_precision": b,
                     "lift": p / b if b > 0 else float("nan"), "auc": auc,
                     "n_auc_pairs": int(i.size)})
    return rows


def heldout(models: dict[str, Any], data, ks: tuple[int, int, int] = (20, 50, 100)
            ) -> list[dict[str, Any]]:
    """Recall@20, Recall@50, NDCG@100 of ranking all non-training items by dot and cosine.

    Users with at least one test item are scored (under the strong-generalisation split only
    the held-out users); each model's user embeddings must be the matrix's rows in order
    (held-out users: embeddings of their fold-in rows). Top-K lists come from the exact kernel
    :func:`bigcos.neighbor_lists.top_n` (ties: smaller item index; training items excluded).
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
            rows.append({"model": name, "metric": metric, "protocol": protocol,
                         "n_users": int(users.size),
                         "recall_at_20": float(np.nanmean(metrics.recall_at_k(hits, rel, ks[0]))),
                         "recall_at_50": float(np.nanmean(metrics.recall_at_k(hits, rel, ks[1]))),
                         "ndcg_at_100": float(np.nanmean(metrics.ndcg_at_k(hits, rel, ks[2])))})
    return rows


def popularity_rows(lists: list[NeighborLists], models: dict[str, Any],
                    popularity: np.ndarray, opts: Options) -> list[dict[str, Any]]:
    """Norm-popularity Spearman per model and neighbour popularity relative to the query."""
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


def write_tables(directory: Path, tables: dict[str, pa.Table]) -> None:
    """One zstd Parquet file per table (schema metadata included)."""
    for name, table in tables.items():
        io.write_table(directory / f"{name}.parquet", table)


def read_report_table(directory: str | Path, name: str) -> pa.Table:
    """Read a report table and check its schema version."""
    table = pq.read_table(Path(directory) / f"{name}.parquet")
    meta = json.loads((table.schema.metadata or {}).get(b"bigcos.schema", b"{}"))
    if meta.get("version") != SCHEMA_VERSION:
        raise UserError(f"{directory}/{name}.parquet: schema version {meta.get('version')} "
                        f"is not {SCHEMA_VERSION}")
    return table


# --------------------------------------------------------------------------- the whole report
@dataclass
class Report:
    """Everything a report holds in memory: tables and what the page needs."""

    tables: dict[str, pa.Table]
    lists: list[NeighborLists]
    models: dict[str, Any]
    info: ItemInfo
    popularity: np.ndarray
    item_ids: pa.Array
    options: Options


def build_report(data, models: dict[str, Any], lists: list[NeighborLists], info: ItemInfo,
                 opts: Options, timings: io.Timings | None = None) -> Report:
    """Compute every table. ``data``: Interactions; ``models``: name -> Model."""
    timings = timings or io.Timings()
    popularity = item_popularity(data.fit_matrix)
    id_type = data.item_ids.type
    with timings("agreement"):
        agree = agreement(lists, opts, data.item_ids)
        per_item = (pa.concat_tables(agree.per_item) if agree.per_item
                    else table_schema("agreement_per_item", id_type).empty_table())
        families = {name: d_family(m.manifest, name) for name, m in models.items()}
        for nl in lists:
            families.setdefault(nl.model, d_family({}, nl.model))
    with timings("ground_truth"):
        truth = ground_truth(lists, models, info, popularity, opts)
    with timings("heldout"):
        held = heldout(models, data)
    with timings("popularity"):
        pop = popularity_rows(lists, models, popularity, opts)
    tables = {
        "agreement": _table("agreement", agree.rows),
        "agreement_per_item": per_item,
        "d_sensitivity": _table("d_sensitivity", d_sensitivity(agree.rows, families)),
        "ground_truth": _table("ground_truth", truth),
        "heldout": _table("heldout", held),
        "popularity": _table("popularity", pop),
    }
    return Report(tables, lists, models, info, popularity, data.item_ids, opts)


def write_report(out: str | Path, matrix_dir: str | Path, model_dirs: Iterable[str | Path],
                 neighbors_dir: str | Path, items: str | Path | None = None,
                 options: Options | None = None, overwrite: bool = False) -> Report:
    """Load the inputs, compute the report and write tables, page and manifest atomically.

    ``items`` defaults to the item table recorded by ``bigcos ingest --items``.
    """
    from bigcos.matrix import load_matrix
    from bigcos.models import load_model

    opts = options or Options()
    timings = io.Timings()
    with timings("load"):
        data = load_matrix(matrix_dir)
        models = {}
        for d in model_dirs:
            model = load_model(d)
            models[model.name] = model
        items = items or io.read_manifest(matrix_dir).get("inputs", {}).get("items")
        info = read_item_info(items, data.item_ids, opts.labels)
        lists = read_neighbor_lists(neighbors_dir, data.user_ids, data.item_ids, opts.depth)
    report = build_report(data, models, lists, info, opts, timings)
    with io.atomic_output_dir(out, overwrite=overwrite) as tmp:
        write_tables(tmp, report.tables)
        with timings("page"):
            (tmp / "report.html").write_text(render_html(report))
        io.write_manifest(
            tmp, "report", parameters=opts.__dict__, timings=timings,
            inputs={"matrix": str(Path(matrix_dir).resolve()),
                    "models": [str(Path(d).resolve()) for d in model_dirs],
                    "neighbors": str(Path(neighbors_dir).resolve()),
                    "items": str(items) if items else None},
            schema={"version": SCHEMA_VERSION,
                    "tables": {n: [f.name for f in t.schema] for n, t in report.tables.items()}},
            counts={n: t.num_rows for n, t in report.tables.items()})
    return report


# --------------------------------------------------------------------------- the page
def _png(fig) -> str:
    buf = pyio.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return ('<img alt="plot" src="data:image/png;base64,'
            + base64.b64encode(buf.getvalue()).decode("ascii") + '">')


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _rows(report: Report, name: str) -> list[dict[str, Any]]:
    return report.tables[name].to_pylist()


def plot_d_sensitivity(rows: list[dict[str, Any]]) -> str | None:
    """Bars: mean Jaccard@N across the D-family, cos next to dot, per kind."""
    if not rows:
        return None
    plt = _plt()
    labels = sorted({(r["kind"], r["family"]) for r in rows})
    fig, ax = plt.subplots(figsize=(8, 0.6 + 0.5 * len(labels)))
    y = np.arange(len(labels))
    for off, metric, color in ((-0.2, "cos", "tab:red"), (0.2, "dot", "tab:blue")):
        vals = [next((r["jaccard_mean"] for r in rows if (r["kind"], r["family"]) == lab
                      and r["metric"] == metric), np.nan) for lab in labels]
        ax.barh(y + off, vals, height=0.4, color=color, label=metric)
    ax.set_yticks(y, [f"{k}\n{f}" for k, f in labels], fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_xlabel("mean Jaccard@N between models that differ only in D (1 = D does not matter)")
    ax.legend()
    return _png(fig)


def plot_agreement_heatmap(rows: list[dict[str, Any]], kind: str) -> str | None:
    """Mean Jaccard@N between every two configurations of one kind."""
    rows = [r for r in rows if r["kind"] == kind]
    if not rows:
        return None
    plt = _plt()
    names = sorted({f"{r['model_a']}/{r['metric_a']}" for r in rows}
                   | {f"{r['model_b']}/{r['metric_b']}" for r in rows})
    pos = {n: i for i, n in enumerate(names)}
    mat = np.eye(len(names))
    for r in rows:
        a, b = pos[f"{r['model_a']}/{r['metric_a']}"], pos[f"{r['model_b']}/{r['metric_b']}"]
        mat[a, b] = mat[b, a] = r["jaccard_mean"]
    size = 2 + 0.45 * len(names)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(mat, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    if len(names) <= 14:
        for (a, b), v in np.ndenumerate(mat):
            ax.text(b, a, f"{v:.2f}", ha="center", va="center", fontsize=6,
                    color="white" if v < 0.6 else "black")
    fig.colorbar(im, ax=ax, label="mean Jaccard@N")
    ax.set_title(f"{kind}: how much do the neighbour lists agree?")
    return _png(fig)


def plot_cos_vs_dot(rows: list[dict[str, Any]], columns: list[str], title: str,
                    baseline: str | None = None) -> str | None:
    """One panel per column: each model a line, its cosine value (red) next to its dot (blue).

    ``baseline`` (optional): a column drawn as a black tick per configuration (e.g. the
    popularity-matched random baseline of ``columns[0]``).
    """
    if not rows:
        return None
    plt = _plt()
    models = sorted({r["model"] for r in rows})
    y = {m: i for i, m in enumerate(models)}
    fig, axes = plt.subplots(1, len(columns), figsize=(3.6 * len(columns) + 1.5,
                                                        0.9 + 0.28 * len(models)),
                             sharey=True, squeeze=False)
    for ax, col in zip(axes[0], columns, strict=True):
        for metric, color, marker in (("cos", "tab:red", "o"), ("dot", "tab:blue", "s")):
            sel = [r for r in rows if r["metric"] == metric]
            ax.scatter([r[col] for r in sel], [y[r["model"]] for r in sel], color=color,
                       marker=marker, label=metric, zorder=3)
            if baseline and col == columns[0]:
                ax.scatter([r[baseline] for r in sel], [y[r["model"]] for r in sel],
                           color=color, marker="|", s=120, zorder=3,
                           label=f"{metric}: random, same popularity")
        for m in models:
            vals = [r[col] for r in rows if r["model"] == m]
            ax.plot([min(vals), max(vals)], [y[m], y[m]], color="grey", lw=1, zorder=1)
        ax.set_title(col, fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(range(len(models)), models, fontsize=7)
    axes[0][0].invert_yaxis()
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _png(fig)


def plot_norm_vs_popularity(report: Report) -> str | None:
    """Item embedding norm against popularity, one panel per model."""
    if not report.models:
        return None
    plt = _plt()
    names = sorted(report.models)
    cols = min(4, len(names))
    rows_n = -(-len(names) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(3.2 * cols, 2.8 * rows_n), squeeze=False)
    pop = report.popularity
    for ax, name in zip(axes.flat, names, strict=False):
        norms = np.linalg.norm(report.models[name].item_embeddings, axis=1)
        ax.scatter(pop + 1, norms, s=2, alpha=0.3)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(plt.NullFormatter())
        ax.set_title(f"{name}\nSpearman {metrics.spearman(norms, pop):.2f}", fontsize=8)
        ax.set_xlabel("1 + users per item", fontsize=7)
        ax.set_ylabel("‖item embedding‖", fontsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    return _png(fig)


def plot_relative_popularity(report: Report) -> str | None:
    """Distribution over queries of log10 popularity ratio neighbour / query, per config."""
    lists = [nl for nl in report.lists if nl.kind == "item-item"]
    if not lists:
        return None
    plt = _plt()
    data = []
    for nl in lists:
        r = metrics.log_popularity_ratio(report.popularity, nl.queries,
                                         nl.neighbors[:, :report.options.depth])
        data.append(r[~np.isnan(r)])
    fig, ax = plt.subplots(figsize=(8, 0.8 + 0.35 * len(lists)))
    ax.boxplot(data, orientation="horizontal", showfliers=False)
    ax.set_yticks(range(1, len(lists) + 1), [nl.label for nl in lists], fontsize=7)
    ax.axvline(0, color="grey", lw=1)
    ax.set_xlabel("log10 (1 + popularity of neighbour) / (1 + popularity of query)")
    ax.set_title("Are the neighbours more popular than the item itself? (> 0: yes)")
    return _png(fig)


def single_labels(sets: sp.csr_matrix) -> np.ndarray:
    """The first label of each row of a label-set matrix, -1 for none: (n_items,) int64."""
    out = np.full(sets.shape[0], -1, dtype=np.int64)
    has = np.diff(sets.indptr) > 0
    out[has] = sets.indices[sets.indptr[:-1][has]]
    return out


def plot_cosine_heatmaps(report: Report, max_items: int = 200) -> str | None:
    """The paper's Figure 1: item-item cosine, items sorted by label then popularity
    (single-label ground truth only: simulator clusters, categories)."""
    info = report.info
    if not info.single_label or not report.models:
        return None
    plt = _plt()
    rng = np.random.default_rng(report.options.seed)
    cluster = single_labels(info.labels)
    labelled = np.flatnonzero(cluster >= 0)
    pick = np.sort(rng.choice(labelled, size=min(max_items, labelled.size), replace=False))
    order = pick[np.lexsort((-report.popularity[pick], cluster[pick]))]
    names = sorted(report.models)
    cols = min(4, len(names))
    rows_n = -(-len(names) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(3 * cols, 3 * rows_n), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        e = normalise_rows(report.models[name].item_embeddings[order].astype(np.float64))
        ax.imshow(e @ e.T, vmin=-1, vmax=1, cmap="RdBu_r")
        ax.set_title(name, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle(f"item-item cosine (items sorted by {info.label_source}, then popularity)",
                 fontsize=9)
    fig.tight_layout()
    return _png(fig)


def example_queries(report: Report) -> np.ndarray:
    """Matrix indices of the example items: the requested ids, else the most popular ones."""
    ids = [str(v) for v in report.item_ids.to_pylist()]
    if report.options.examples:
        where = {v: i for i, v in enumerate(ids)}
        missing = [e for e in report.options.examples if e not in where]
        if missing:
            raise UserError(f"--example {missing[0]}: item id not in the matrix")
        return np.array([where[e] for e in report.options.examples], dtype=np.int64)
    return np.argsort(-report.popularity, kind="stable")[:report.options.n_examples]


def example_tables(report: Report) -> str:
    """HTML tables: the top-N item-item neighbours of each example item under each config."""
    lists = [nl for nl in report.lists if nl.kind == "item-item"]
    titles = report.info.titles
    parts = []
    for q in example_queries(report):
        head = "".join(f"<th>{html.escape(nl.label)}</th>" for nl in lists)
        columns = []
        for nl in lists:
            row = np.searchsorted(nl.queries, q)
            found = row < nl.queries.size and nl.queries[row] == q
            columns.append(nl.neighbors[row, :report.options.depth] if found else np.array([]))
        depth = max((c.size for c in columns), default=0)
        body = []
        for r in range(depth):
            cells = "".join(
                f"<td>{html.escape(str(titles[c[r]])) if r < c.size and c[r] >= 0 else ''}</td>"
                for c in columns)
            body.append(f"<tr><th>{r + 1}</th>{cells}</tr>")
        parts.append(f"<h3>The {depth} nearest items to {html.escape(str(titles[q]))} "
                     f"({int(report.popularity[q])} users) under each configuration</h3>"
                     f"<div class=scroll><table><tr><th>rank</th>{head}</tr>"
                     f"{''.join(body)}</table></div>")
    return "\n".join(parts)


def html_table(rows: list[dict[str, Any]]) -> str:
    """A plain HTML table of rows (floats to 3 decimals)."""
    if not rows:
        return "<p><em>not computed for these inputs</em></p>"
    cols = list(rows[0])

    def fmt(v):
        return f"{v:.3f}" if isinstance(v, float) else html.escape(str(v))

    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{fmt(r[c])}</td>" for c in cols) + "</tr>"
                   for r in rows)
    return f"<div class=scroll><table><tr>{head}</tr>{body}</table></div>"


_CSS = """body{font-family:sans-serif;max-width:1150px;margin:auto;padding:1em;color:#222}
table{border-collapse:collapse;font-size:12px;margin:.5em 0}td,th{border:1px solid #ccc;
padding:2px 6px;text-align:left}.scroll{overflow-x:auto}img{max-width:100%}h2{margin-top:2em}"""


def _span(values: list[float]) -> str:
    lo, hi = min(values), max(values)
    return f"{lo:.3f}" if np.isclose(lo, hi, rtol=0, atol=5e-4) else f"{lo:.3f} to {hi:.3f}"


def findings(report: Report) -> list[str]:
    """Headline sentences computed from the tables (nothing here is hand-written)."""
    n = report.options.depth
    out = []
    for r in _rows(report, "d_sensitivity"):
        if r["metric"] != "cos":
            continue
        dot = next((d for d in _rows(report, "d_sensitivity") if d["metric"] == "dot"
                    and (d["kind"], d["family"]) == (r["kind"], r["family"])), None)
        dot_text = (f"; by dot {dot['jaccard_mean']:.3f} (lowest pair {dot['jaccard_min']:.3f})"
                    if dot else "")
        out.append(f"{r['kind']} neighbours across {r['n_models']} rescalings D of "
                   f"{r['family']}: mean Jaccard@{n} by cosine {r['jaccard_mean']:.3f} (lowest "
                   f"pair {r['jaccard_min']:.3f}){dot_text}.")
    held = _rows(report, "heldout")
    families = {name: d_family(m.manifest, name) for name, m in report.models.items()}
    for fam in sorted({f for f in families.values() if f}):
        rows = [r for r in held if families.get(r["model"]) == fam]
        if len({r["model"] for r in rows}) > 1:
            by = {m: [r["recall_at_20"] for r in rows if r["metric"] == m] for m in METRICS}
            out.append(f"Held-out Recall@20 across the D of {fam} ({rows[0]['protocol']} "
                       f"generalisation, {rows[0]['n_users']} users): by dot {_span(by['dot'])}, "
                       f"by cosine {_span(by['cos'])}.")
    truth = _rows(report, "ground_truth")
    if truth:
        best = max(truth, key=lambda r: r["auc"])
        worst = min(truth, key=lambda r: r["auc"])
        out.append(f"Same-{truth[0]['label_source']} vs different-{truth[0]['label_source']} "
                   f"AUC ranges from {worst['auc']:.3f} ({worst['model']}/{worst['metric']}) to "
                   f"{best['auc']:.3f} ({best['model']}/{best['metric']}); label precision@{n} "
                   f"is {_span([r['precision'] for r in truth])} against "
                   f"{_span([r['baseline_precision'] for r in truth])} for popularity-matched "
                   f"random neighbours.")
    pop = _rows(report, "popularity")
    if pop:
        by = {m: [r["frac_more_popular"] for r in pop if r["metric"] == m] for m in METRICS}
        if by["cos"] and by["dot"]:
            out.append(f"Share of item-item neighbours more popular than their query: by dot "
                       f"{_span(by['dot'])}, by cosine {_span(by['cos'])} across models.")
    return out


def render_html(report: Report) -> str:
    """The self-contained page: every plot an inline PNG, no external assets."""
    n = report.options.depth
    sections = [
        ("Does the rescaling D change the neighbours?",
         f"Objective 1 (paper Eq. 1) is solved equally well by every diagonal rescaling D. "
         f"Mean Jaccard@{n} between the lists of models that differ only in D: below 1 means "
         f"the choice of D, which the training loss cannot see, changed who the neighbours are.",
         [plot_d_sensitivity(_rows(report, "d_sensitivity"))], "d_sensitivity"),
        ("Agreement between configurations", f"Mean Jaccard@{n} (RBO p={report.options.rbo_p} "
         f"in agreement.parquet).",
         [plot_agreement_heatmap(_rows(report, "agreement"), k) for k in KINDS], None),
        ("Ground truth: do neighbours share a label?",
         f"Share of the {n} item-item neighbours with a label in common with the query, next "
         f"to random neighbours of the same popularity bins (|), and the AUC of similarity for "
         f"same-label vs different-label item pairs (0.5 = chance).",
         [plot_cos_vs_dot(_rows(report, "ground_truth"), ["precision", "auc"],
                          f"label precision@{n} (| = popularity-matched random) and AUC",
                          baseline="baseline_precision"),
          plot_cosine_heatmaps(report)], "ground_truth"),
        ("Held-out interactions: ranking by dot vs cosine",
         "Every item the user has not interacted with in training is ranked by the score of "
         "the user and item embeddings; relevant = the user's held-out items (Recall@K divides "
         "by min(K, number of held-out items)).",
         [plot_cos_vs_dot(_rows(report, "heldout"),
                          ["recall_at_20", "recall_at_50", "ndcg_at_100"],
                          "ranking all unseen items of each test user")], "heldout"),
        ("Popularity and norms", "How the item norm tracks popularity under each model, and "
         "how popular the neighbours are relative to the query.",
         [plot_norm_vs_popularity(report), plot_relative_popularity(report)], "popularity"),
    ]
    summary = "".join(f"<li>{html.escape(f)}</li>" for f in findings(report))
    body = [f"<h2>Findings</h2><ul>{summary}</ul>" if summary else ""]
    for title, text, images, table in sections:
        body.append(f"<h2>{html.escape(title)}</h2><p>{html.escape(text)}</p>")
        body.extend(img for img in images if img)
        if table:
            body.append(html_table(_rows(report, table)))
    body.append("<h2>Example neighbour lists</h2>" + example_tables(report))
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>bigcos report</title>"
            f"<style>{_CSS}</style></head><body><h1>Is cosine similarity really about "
            f"similarity here?</h1>{''.join(body)}</body></html>\n")
