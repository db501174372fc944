"""The Dask task graphs of :func:`bigcos.neighbor_lists.neighbors`, their tasks and writers.

Three graphs for one model and kind, each a list of tasks whose results are counts of what
they wrote; a query's list is the same whichever graph computes it:

- *groups* (:func:`group_graph`; user-item always, the others when ``symmetric=False``):
  queries are cut into groups of at most ``group_rows`` (one Dask task and one output file per
  group and metric), groups into query blocks of ``query_block`` rows, candidates into tiles
  of ``candidate_block``; a task scores its group against all candidates and writes its part.
- *pairs* (:func:`pair_graph`; item-item and user-user, the default while the running lists
  of all queries, ``2 * n_queries * N * 8 * m`` bytes, fit in :data:`SYMMETRIC_HELD_BYTES`):
  the product of a and b serves a's list and b's, so half the GEMM
  (:func:`bigcos.symmetric_topn.symmetric_topn`). Groups meet in a round-robin tournament
  of tasks on square tiles of ``symmetric_block``; each task resumes the two groups' lists
  (and thresholds) from their previous task; a last task per group writes its part.
- *sampled* (:func:`sampled_graph`, with ``max_queries``): groups of a seeded sample of query
  rows (:func:`query_sample`) against all candidates, their own rows and training items
  excluded as pairs.

Each task writes its part of every metric as
``kind=<kind>/model=<model>/metric=<metric>/part-<part>.parquet`` (:func:`neighbor_table`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from bigcos import io
from bigcos.blocked_topn import group_keys
from bigcos.dask_tasks import task
from bigcos.neighbor_operands import Job, load_array, train_rows
from bigcos.symmetric_topn import symmetric_topn
from bigcos.topn import decode_keys, fill_zero_queries

GiB = 2**30
SYMMETRIC_GROUPS = 8  # at least this many groups (4 parallel pair tasks per round)
SYMMETRIC_HELD_BYTES = 4 * GiB  # running lists the symmetric graph may hold, cluster-wide


# --------------------------------------------------------------------------- graphs
def use_symmetric(symmetric: bool | None, kind: str, n_queries: int, n: int,
                  n_metrics: int) -> bool:
    """Whether a kind runs as pairs: never user-item; else as asked, or (None) when the
    running lists of all queries fit in :data:`SYMMETRIC_HELD_BYTES`."""
    if kind == "user-item":
        return False
    if symmetric is not None:
        return symmetric
    return n_queries * n * 8 * n_metrics * 2 <= SYMMETRIC_HELD_BYTES


def group_graph(job: Job, n_queries: int, after: list) -> list:
    """One task per group of queries against all candidates; each writes its own parts.
    ``after``: the tasks writing the user operand (their results are not used)."""
    return [task(_run_group)(job, part, g0, g1, after)
            for part, (g0, g1) in enumerate(job.blocking.groups(n_queries))]


def pair_graph(job: Job, n_queries: int, after: list) -> list:
    """Symmetric kinds: every product between two groups g <= h is scored once, for the lists
    of both sides. The pairs are played as a round-robin tournament: first each group against
    itself, then rounds of disjoint pairs (len(groups) / 2 parallel tasks per round), each
    task resuming both groups' lists from their previous tasks, so thresholds stay as high as
    in one long pass. A last task per group sorts, fills zero-norm rows and writes."""
    import dask

    groups = job.blocking.groups(n_queries, min_groups=SYMMETRIC_GROUPS)
    lists = [dask.delayed(_pair_task, pure=False, nout=2)(job, g, g, None, None, after)[0]
             for g in groups]
    for round_pairs in _round_robin(len(groups)):
        for g, h in round_pairs:
            pair = dask.delayed(_pair_task, pure=False, nout=2)(job, groups[g], groups[h],
                                                               lists[g], lists[h])
            lists[g], lists[h] = pair[0], pair[1]
    return [task(_finish_group)(job, part, g0, g1, lists[part])
            for part, (g0, g1) in enumerate(groups)]


def _round_robin(n_groups: int) -> list[list[tuple[int, int]]]:
    """Rounds of disjoint pairs (g < h) covering every pair of groups once (circle method)."""
    players: list[int | None] = list(range(n_groups)) + ([None] if n_groups % 2 else [])
    rounds = []
    for _ in range(len(players) - 1):
        half = len(players) // 2
        pairs = zip(players[:half], reversed(players[half:]), strict=True)
        rounds.append([(min(a, b), max(a, b)) for a, b in pairs if a is not None and b is not None])
        players = [players[0], players[-1], *players[1:-1]]
    return rounds


def query_sample(n_queries: int, max_queries: int, seed: int) -> np.ndarray:
    """The seeded sample of query rows: ascending int64, ``min(n_queries, max_queries)`` rows
    drawn uniformly without replacement (all rows when there are at most ``max_queries``)."""
    if n_queries <= max_queries:
        return np.arange(n_queries, dtype=np.int64)
    rows = np.random.default_rng(seed).choice(n_queries, max_queries, replace=False)
    return np.sort(rows).astype(np.int64)


def with_sample(job: Job, counts: dict[str, Any], sample: np.ndarray) -> Job:
    """The job restricted to the query rows ``sample`` (:func:`query_sample`, written to its
    scratch directory); ``counts`` record the queries sampled from."""
    path = job.scratch / f"sample-{job.kind}.npy"
    io.save_npy(path, sample)
    counts["sampled_from"] = counts["queries"]
    counts["queries"] = len(sample)
    return dataclasses.replace(job, sample=path)


def sampled_graph(job: Job, n_sampled: int, after: list) -> list:
    """One task per group of sampled queries against all candidates (``job.sample``)."""
    return [task(_run_sampled_group)(job, part, i0, i1, after)
            for part, (i0, i1) in enumerate(job.blocking.groups(n_sampled))]


# --------------------------------------------------------------------------- tasks
def _run_group(job: Job, part: int, g0: int, g1: int, after=None) -> dict[str, int]:
    """One task: the lists of queries g0:g1, written as part ``part`` of every metric."""
    query_side, candidate_side = job.sides
    queries, inv_queries = job.rows(query_side), job.rows(query_side, "inv")
    exclude = None if job.shards is None else train_rows(job.shards, g0, g1)
    keys = group_keys(queries[g0:g1], inv_queries[g0:g1], job.rows(candidate_side),
                      job.rows(candidate_side, "inv"), job.n, job.metrics, job.blocking,
                      g0 if job.exclude_self else None, exclude)
    return _write_group(job, part, g0, g1, keys)


def _pair_task(job: Job, g: tuple[int, int], h: tuple[int, int], lists_g, lists_h,
               after=None):
    """One pair task: the lists of groups g and h updated with each other (h = g: itself)."""
    side = job.sides[0]
    return symmetric_topn(job.rows(side), job.rows(side, "inv"), job.n, job.metrics,
                          g, h, block=job.blocking.symmetric_block, lists_g=lists_g,
                          lists_h=lists_h, best_first=False)


def _finish_group(job: Job, part: int, g0: int, g1: int,
                  keys: dict[str, np.ndarray]) -> dict[str, int]:
    """The last task of a group in the pairs graph: sort its lists (the pair tasks leave them
    unsorted), fill its zero-norm rows, write its part."""
    keys = {m: -np.sort(-keys[m], axis=1) for m in job.metrics}
    side = job.sides[0]
    inv = job.rows(side, "inv")[g0:g1]
    fill_zero_queries(keys, inv, job.n, len(job.rows(side, "inv")), g0, None)
    return _write_group(job, part, g0, g1, keys)


def _run_sampled_group(job: Job, part: int, i0: int, i1: int, after=None) -> dict[str, int]:
    """One task: the lists of sampled queries i0:i1 (rows ``sample[i0:i1]``), written as part
    ``part``. A query's own row (item-item, user-user) and training items (user-item, from
    the :class:`~bigcos.neighbor_operands.SampledTrain` records in ``job.shards``) are
    excluded pairs, so each list equals the full run's list of that query."""
    query_side, candidate_side = job.sides
    rows = load_array(job.sample)[i0:i1]
    candidates = job.rows(candidate_side)
    if job.shards is not None:  # the sample's train rows, by sample position
        exclude = train_rows(job.shards, i0, i1)
    elif job.exclude_self:
        exclude = sp.csr_matrix((np.ones(len(rows), np.float32), rows,
                                 np.arange(len(rows) + 1)), shape=(len(rows), len(candidates)))
    else:
        exclude = None
    keys = group_keys(job.rows(query_side)[rows], job.rows(query_side, "inv")[rows],
                      candidates, job.rows(candidate_side, "inv"), job.n, job.metrics,
                      job.blocking, None, exclude)
    return _write_lists(job, part, job.ids_at(query_side, rows), keys)


# --------------------------------------------------------------------------- writers
def _write_group(job: Job, part: int, g0: int, g1: int,
                 keys: dict[str, np.ndarray]) -> dict[str, int]:
    """Write the lists (keys) of queries g0:g1 as part ``part`` of every metric."""
    return _write_lists(job, part, job.ids(job.sides[0], g0, g1), keys)


def _write_lists(job: Job, part: int, query_ids: pa.Array,
                 keys: dict[str, np.ndarray]) -> dict[str, int]:
    """Write the lists (keys) of the queries ``query_ids`` as part ``part`` of every metric."""
    candidate_ids = job.ids(job.sides[1])
    written = {}
    for metric in job.metrics:
        table = neighbor_table(query_ids, keys[metric], candidate_ids)
        directory = job.out / f"kind={job.kind}" / f"model={job.model}" / f"metric={metric}"
        io.write_table(directory / f"part-{part:05d}.parquet", table)
        written[f"rows_{metric}"] = table.num_rows
        written[f"short_lists_{metric}"] = int(np.sum(decode_keys(keys[metric][:, -1])[0]
                                                      == -np.inf))
    return written


def neighbor_table(query_ids: pa.Array, keys: np.ndarray, candidate_ids: pa.Array) -> pa.Table:
    """Rows (query_id, rank, neighbor_id, score) of lists of keys (queries, n), best first."""
    scores, index = decode_keys(keys)
    valid = scores > -np.inf  # a prefix of each row: EMPTY slots and excluded pairs sort last
    per_row = valid.sum(axis=1)
    rank = (np.arange(keys.shape[1], dtype=np.int32)[None, :] + 1)
    return pa.table({
        "query_id": query_ids.take(pa.array(np.repeat(np.arange(len(keys)), per_row))),
        "rank": pa.array(np.broadcast_to(rank, keys.shape)[valid]),
        "neighbor_id": candidate_ids.take(pa.array(index[valid])),
        "score": pa.array(scores[valid]),
    })
