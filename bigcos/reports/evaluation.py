"""Held-out evaluation: every unseen item of each sampled test user ranked by dot and by
cosine, each user's Recall@K and NDCG@K kept, and a percentile bootstrap interval over the
sampled users per figure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from bigcos import metrics
from bigcos.blocked_topn import top_n
from bigcos.dask_tasks import run_tasks, task
from bigcos.errors import UserError
from bigcos.reports.inputs import RowBlock, row_blocks
from bigcos.reports.options import Options
from bigcos.reports.schema import HELDOUT_KS, heldout_measures
from bigcos.reports.scoring import EXPORTED, dot_scoring, factors_of
from bigcos.stats import resample_means
from bigcos.topn import METRICS
from bigcos.user_parts import user_parts


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


def _test_rows(block: RowBlock, strong: bool | None) -> np.ndarray | tuple[int, int, bool]:
    """Local rows of the block's test users; with ``strong`` None the counts (weak, strong,
    any held-out user) that decide the protocol."""
    _, test, heldout = block.load()
    rows = np.flatnonzero(np.diff(test.indptr) > 0)
    if strong is None:
        held = 0 if heldout is None else int(heldout[rows].sum())
        return int(rows.size), held, heldout is not None and bool(heldout.any())
    return rows[heldout[rows]] if strong else rows


def _user_rows(model, start: int, rows: np.ndarray) -> np.ndarray:
    """User embeddings of matrix rows ``start + rows``: from memory (a Model) or from the user
    parts overlapping them, read here (a model directory)."""
    if not isinstance(model, str):
        return model.user_embeddings[start + rows]
    out = None
    for part in user_parts(model):
        inside = (start + rows >= part.start) & (start + rows < part.stop)
        if not inside.any():
            continue
        emb = part.read()[1]
        out = np.empty((len(rows), emb.shape[1]), np.float32) if out is None else out
        out[inside] = emb[start + rows[inside] - part.start]
    return out


def _score_block(block: RowBlock, strong: bool, positions: np.ndarray | None, models: dict,
                 ks: tuple[int, int, int]) -> tuple[np.ndarray, dict]:
    """Task: the sampled test users of one block (local test-user positions ``positions``,
    None = all) ranked by every model; returns (their matrix rows, per-user measures)."""
    from bigcos.model_info import load_model_info

    train, test, _ = block.load()
    rows = _test_rows(block, strong)
    if positions is not None:
        rows = rows[positions]
    exclude, relevant = train[rows], test[rows]
    rel = np.diff(relevant.indptr)
    local = np.arange(len(rows))
    values = {}
    for name, model in models.items():
        if not len(rows):
            values |= {(name, metric): {m: np.empty(0) for m in heldout_measures(ks)}
                       for metric in METRICS}
            continue
        exported_users = _user_rows(model, block.start, rows)
        info = load_model_info(model) if isinstance(model, str) else model
        exported = exported_users, info.item_embeddings
        if dot_scoring(info) in (EXPORTED, "x-tilde"):
            ranked = top_n(*exported, max(ks), METRICS, exclude=exclude)
        else:
            ranked = top_n(*factors_of(info, exported_users), max(ks), ("dot",),
                           exclude=exclude)
            ranked.update(top_n(*exported, max(ks), ("cos",), exclude=exclude))
        for metric in METRICS:
            hits = metrics.relevance_hits(ranked[metric][0], local, relevant)
            values[name, metric] = _per_user(hits, rel, ks)
    return block.start + rows, values


def heldout_scores(models: dict[str, Any], data, ks: tuple[int, int, int] = HELDOUT_KS,
                   max_users: int | None = None, seed: int = 0,
                   client=None) -> HeldOutScores | None:
    """Recall@K1, Recall@K2 and NDCG@K3 of the test users, for every model by dot and cosine.

    Parameters
    ----------
    models : dict
        Model name -> :class:`bigcos.models.Model` (user embeddings in memory), or
        :class:`bigcos.model_info.ModelInfo` (user parts, read by the tasks). Each model's
        user rows must be the matrix's rows in order (held-out users: their fold-in rows).
    data : bigcos.matrix.Interactions or str or path
        In memory (one task in this process), or a matrix directory: one Dask task per
        train/test shard, which loads the shard and the model's user parts overlapping it
        where it runs and ranks only the sampled test users in it.
    ks : (K1, K2, K3)
    max_users : int or None
        Rank one seeded uniform sample without replacement of at most this many test users
        (:func:`sample_users`: the same users for any sharding), the same for every model and
        metric so that comparisons stay paired; None: every test user
        (:attr:`Options.max_heldout_users` in a report).
    seed : int
        Seed of that sample.
    client : distributed.Client, optional
        Where the tasks run; None: threads in this process.

    Returns
    -------
    HeldOutScores, or None without a test matrix.
        Dot ranks by the model's prediction of X in X's own scale
        (:func:`bigcos.reports.scoring.dot_factors`), cosine by the exported embeddings. Each
        ranking is one exact top-max(ks) list per user (:func:`bigcos.blocked_topn.top_n`;
        ties: smaller item index), the measures of :func:`bigcos.evaluation.per_user` read off
        it at each K; a sampled user's measures are those of the full run. This process
        holds per block three counts, then the sampled users' rows and measures (a few floats
        per sampled user). Memory of a task: its shard, the overlapping user parts of one
        model at a time (rows x k x 4 bytes), the p x d item factors, the kernel's blocks and
        8 users max(ks) bytes per metric, users = the sampled users of the block.
    """
    blocks = row_blocks(data)
    if blocks is None:
        return None
    counts = run_tasks([task(_test_rows)(b, None) for b in blocks], client)
    strong = any(c[2] for c in counts)
    protocol = "strong" if strong else "weak"
    sizes = np.array([c[1] if strong else c[0] for c in counts], np.int64)
    n_test_users = int(sizes.sum())
    positions = sample_users(np.arange(n_test_users), max_users, seed)
    offsets = np.concatenate(([0], np.cumsum(sizes)))
    sampled = positions.size < n_test_users
    entries = {name: str(m.directory) if hasattr(m, "parts") else m
               for name, m in models.items()}
    tasks = [task(_score_block)(b, strong, positions[(positions >= lo) & (positions < hi)] - lo
                                if sampled else None, entries, ks)
             for b, lo, hi in zip(blocks, offsets[:-1], offsets[1:], strict=True)]
    parts = run_tasks(tasks, client)
    users = np.concatenate([p[0] for p in parts]).astype(np.int64)
    values = {key: {measure: np.concatenate([p[1][key][measure] for p in parts])
                    for measure in heldout_measures(ks)}
              for key in parts[0][1]} if parts else {}
    scoring = {name: dot_scoring(m) for name, m in models.items()}
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
            opts: Options | None = None, client=None) -> list[dict[str, Any]]:
    """The heldout table's rows (:func:`heldout_scores` on ``opts.max_heldout_users`` users
    sampled with ``opts.seed``, on ``client``, then :func:`heldout_rows`)."""
    from bigcos.reports.model_params import model_params

    lams = {}
    for name, m in models.items():
        p = model_params(name, m.manifest, m.item_embeddings.shape[1])
        lams[name] = (p.lam, p.lam_source)
    opts = opts or Options()
    scores = heldout_scores(models, data, ks, opts.max_heldout_users, opts.seed, client)
    return heldout_rows(scores, lams, opts)
