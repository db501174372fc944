"""Exact blocked top-N in this process: the kernel of :mod:`bigcos.topn` over query blocks.

:func:`top_n` ranks every query row against every candidate row by cosine and/or dot
product, one query block at a time, so memory is bounded by :class:`Blocking`, never by the
number of candidates. Pure numpy/scipy: the Dask driver (:mod:`bigcos.neighbor_lists`), the
held-out evaluation and ``similar`` all call it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import scipy.sparse as sp

from bigcos.errors import UserError
from bigcos.topn import METRICS, decode_keys, inverse_norms, query_block_topn


# --------------------------------------------------------------------------- blocking
@dataclass(frozen=True)
class Blocking:
    """Block sizes: they change speed and memory, never results."""

    query_block: int = 512
    candidate_block: int = 4096
    group_rows: int = 16384  # at most; see groups()
    symmetric_block: int = 1024  # square tiles of item-item / user-user pair tasks

    def __post_init__(self):
        for name, value in asdict(self).items():
            if value < 1:
                raise UserError(f"{name}: must be at least 1, got {value}")

    def peak_bytes(self, n: int, n_metrics: int) -> int:
        """Peak working memory of one task, the formula of the module docstring."""
        r, c, g = self.query_block, self.candidate_block, self.group_rows
        tiles = max(r * c, self.symmetric_block ** 2) * (10 + 24 * n_metrics)
        return tiles + 2 * 24 * g * n * n_metrics + g * n * (8 * n_metrics + 40)

    def groups(self, n_queries: int, min_groups: int = 16) -> list[tuple[int, int]]:
        """Row ranges of the tasks: at most ``group_rows`` rows, whole query blocks, and at
        least ``min_groups`` of them when there are enough blocks (so workers finish together)."""
        n_blocks = -(-n_queries // self.query_block)
        per_group = self.group_rows // self.query_block
        n_groups = max(-(-n_blocks // per_group), min(n_blocks, min_groups))
        rows = -(-n_blocks // n_groups) * self.query_block
        return [(g0, min(n_queries, g0 + rows)) for g0 in range(0, n_queries, rows)]

    @classmethod
    def from_budget(cls, budget_bytes: int, n: int, n_metrics: int) -> Blocking:
        """The largest default-shaped blocks whose :meth:`peak_bytes` fits ``budget_bytes``."""
        for r, c in ((512, 4096), (256, 4096), (256, 2048), (128, 1024), (64, 512)):
            spare = budget_bytes - cls(r, c, 1, r).peak_bytes(n, n_metrics)
            per_row = n * (8 * n_metrics + 40) + 2 * 24 * n * n_metrics
            group = min(spare // per_row, 1 << 16) // r * r
            if group >= r:
                return cls(r, c, int(group), min(1024, 2 * r))
        need = cls(64, 512, 64, 64).peak_bytes(n, n_metrics) / 2**20
        raise UserError(f"memory_budget: {budget_bytes / 2**20:.0f} MiB is too small for "
                        f"N = {n} (need about {need:.0f} MiB)", parameter="memory_budget")


# --------------------------------------------------------------------------- in process
def top_n(queries: np.ndarray, candidates: np.ndarray, n: int,
          metrics: Sequence[str] = METRICS, *, exclude_self: bool = False,
          exclude: sp.csr_matrix | None = None,
          blocking: Blocking = Blocking()) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Exact top-``n`` of every query row among the candidate rows, in this process.

    queries (m, k), candidates (p, k) float32; ``exclude_self``: query i is candidate i;
    ``exclude``: (m, p) CSR of excluded pairs. Returns {metric: (index, score)}, both (m, n):
    int64 candidate indices (-1 where a row has fewer than n eligible candidates) and float32
    scores (-inf there), best first.
    """
    metrics = check_metrics(metrics)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    candidates = np.ascontiguousarray(candidates, dtype=np.float32)
    keys = group_keys(queries, inverse_norms(queries), candidates, inverse_norms(candidates),
                       n, metrics, blocking, 0 if exclude_self else None,
                       None if exclude is None else sp.csr_matrix(exclude))
    out = {}
    for m in metrics:
        scores, index = decode_keys(keys[m])
        empty = scores == -np.inf
        out[m] = (np.where(empty, -1, index), scores)
    return out


def check_metrics(metrics: Sequence[str]) -> tuple[str, ...]:
    metrics = tuple(dict.fromkeys(metrics))
    bad = [m for m in metrics if m not in METRICS]
    if bad or not metrics:
        raise UserError(f"metrics: unknown metric '{','.join(bad)}' (choose from cos, dot)",
                        parameter="metrics")
    return metrics


def group_keys(queries, inv_queries, candidates, inv_candidates, n, metrics, blocking,
                self_offset, exclude) -> dict[str, np.ndarray]:
    """Keys (rows, n) per metric for all rows of ``queries``, one query block at a time."""
    parts: dict[str, list[np.ndarray]] = {m: [] for m in metrics}
    for b0 in range(0, len(queries), blocking.query_block):
        b1 = min(len(queries), b0 + blocking.query_block)
        block = query_block_topn(
            np.ascontiguousarray(queries[b0:b1]), np.asarray(inv_queries[b0:b1]), candidates,
            inv_candidates, n, metrics, candidate_block=blocking.candidate_block,
            self_offset=None if self_offset is None else self_offset + b0,
            exclude=None if exclude is None else exclude[b0:b1])
        for m in metrics:
            parts[m].append(block[m])
    return {m: np.concatenate(parts[m]) if parts[m] else np.empty((0, n), np.int64)
            for m in metrics}


