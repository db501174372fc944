"""The audit's neighbour lists on Dask: sampled queries against ALL items, every member at once.

The path of ``bigcos neighbors`` (:mod:`bigcos.neighbor_lists`) for a sample of queries: the
queries of one member and kind are cut into groups (:meth:`bigcos.blocked_topn.Blocking.groups`,
blocks sized by :meth:`~bigcos.blocked_topn.Blocking.from_budget` from the same per-thread
budget, :data:`bigcos.neighbor_lists.MEMORY_BUDGET`), and one task per group runs the exact
kernel (:func:`bigcos.blocked_topn.group_keys`, both metrics from one product) against the
member's item embeddings, memory-mapped from the scratch directory. A task ships its group's
query rows and excluded pairs, and returns its (group x depth) keys per metric; so peak memory
of a task is the kernel's blocks (:meth:`~bigcos.blocked_topn.Blocking.peak_bytes`), whatever
the number of items, and this process holds (queries x depth) lists per member and kind.
Results do not depend on blocks, workers or scheduler (ties go to the smaller item index).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from bigcos.blocked_topn import Blocking, group_keys
from bigcos.embedding_audit.family import Lists
from bigcos.embedding_audit.shards import load_npy, run_tasks, task
from bigcos.neighbor_lists import MEMORY_BUDGET
from bigcos.options import parse_size
from bigcos.topn import METRICS, decode_keys, inverse_norms


@dataclass
class ListJob:
    """Lists of one member and kind: query rows (m, r) against the member's items file."""

    member: str
    kind: str
    queries: np.ndarray
    items_file: str
    exclude: sp.csr_matrix | None  # (m, p) excluded pairs: the query itself, training items


def blocking_for(depth: int, memory_budget: int | None = None) -> Blocking:
    """Blocks of :mod:`bigcos.neighbor_lists` for lists of ``depth`` by both metrics."""
    return Blocking.from_budget(memory_budget or parse_size(MEMORY_BUDGET), depth, len(METRICS))


def _group_task(items_file: str, queries: np.ndarray, exclude: sp.csr_matrix | None,
                depth: int, blocking: Blocking) -> dict[str, np.ndarray]:
    candidates = load_npy(items_file)
    inv_candidates = load_npy(f"{items_file}.inv.npy")
    return group_keys(queries, inverse_norms(queries), candidates, inv_candidates, depth,
                      METRICS, blocking, None, exclude)


def compute_lists(jobs: list[ListJob], depth: int, blocking: Blocking, client=None
                  ) -> dict[tuple[str, str], Lists]:
    """Run every job's groups as Dask tasks; return {(member, kind): Lists} (index -1 and
    score -inf where fewer than ``depth`` candidates are eligible)."""
    tasks, owners = [], []
    for j, job in enumerate(jobs):
        queries = np.ascontiguousarray(job.queries, np.float32)
        for g0, g1 in blocking.groups(len(queries)):
            part = None if job.exclude is None else job.exclude[g0:g1]
            tasks.append(task(_group_task)(job.items_file, queries[g0:g1], part, depth,
                                               blocking))
            owners.append(j)
    results = run_tasks(tasks, client)
    out = {}
    for j, job in enumerate(jobs):
        parts = [r for r, o in zip(results, owners, strict=True) if o == j]
        lists = {}
        for metric in METRICS:
            keys = np.concatenate([p[metric] for p in parts]) if parts else \
                np.empty((0, depth), np.int64)
            scores, index = decode_keys(keys)
            lists[metric] = (np.where(scores == -np.inf, -1, index), scores)
        out[(job.member, job.kind)] = Lists(job.member, job.kind, lists)
    return out
