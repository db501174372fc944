"""Exact top-N neighbours of a model's items and users, by cosine and by dot product, on Dask.

Kinds (MATH.md): ``item-item`` (rows of B against B), ``user-user`` (XA against XA), and
``user-item`` (XA against B). Every kind runs through the one kernel of :mod:`bigcos.topn`,
which produces the dot and the cosine lists from the same products. The query itself is
excluded for item-item and user-user; for user-item the user's training items are excluded
unless ``exclude_train=False``. Ties go to the smaller matrix index, so the output does not
depend on block sizes, the number of workers or the scheduler.

Two task graphs, same results:

- *groups* (user-item always; the others when ``symmetric=False``): queries are cut into
  groups of at most ``group_rows`` (one Dask task and one output file per group and metric),
  groups into query blocks of ``query_block`` rows, candidates into tiles of
  ``candidate_block``; a task scores its group against all candidates and writes its part.
- *pairs* (item-item and user-user, the default while the running lists of all queries,
  ``2 * n_queries * N * 8 * m`` bytes, fit in :data:`SYMMETRIC_HELD_BYTES`): the product of a
  and b serves a's list and b's, so half the GEMM. Groups meet in a round-robin tournament
  of tasks on square tiles of ``symmetric_block``; each task resumes the two groups' lists
  (and thresholds) from their previous task; a last task per group writes its part.

Peak memory of one task (one worker thread), with R = query_block, C = candidate_block,
S = symmetric_block, G = group_rows, m = number of metrics, N = neighbours::

    max(R*C, S*S) * (9 + 24*m)      tiles, hit masks, candidate buffers and merges
    + 2 * 24 * G * N * m            running lists and candidate buffers of two groups
    + G * N * (8*m + 40)            a group's final lists and its Arrow output table

bytes (:meth:`Blocking.peak_bytes`), independent of the number of queries and candidates;
the embeddings and ids are shared read-only memory maps (``(n_queries + n_candidates) * k * 4``
bytes, once per machine in the page cache). :meth:`Blocking.from_budget` picks the largest
blocks within a budget. The pairs graph also holds the lists in flight between its tasks.

Output (contracts.md): a directory of hive partitions
``kind=<kind>/model=<model>/metric=<metric>/part-<group>.parquet`` with columns ``query_id``,
``rank`` (int32, 1 = best), ``neighbor_id`` (original ids), ``score`` (float32), and
``_manifest.json`` at the top (a name dataset readers skip, so ``pd.read_parquet(DIR)`` reads
the whole directory as one table). Workers write their partitions straight into the temporary
output directory, which is renamed into place only when every task has succeeded.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.ipc as ipc
import scipy.sparse as sp

from bigcos import io, storage
from bigcos.blocked_topn import Blocking, check_metrics, group_keys
from bigcos.errors import UserError
from bigcos.options import parse_size
from bigcos.topn import (
    METRICS,
    decode_keys,
    fill_zero_queries,
    inverse_norms,
    symmetric_topn,
)

KINDS = ("item-item", "user-user", "user-item")
GiB = 2**30
MEMORY_BUDGET = "512MiB"  # the default working memory per worker thread (one source)
SYMMETRIC_GROUPS = 8  # at least this many groups (4 parallel pair tasks per round)
SYMMETRIC_HELD_BYTES = 4 * GiB  # running lists the symmetric graph may hold, cluster-wide
log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- operands
@dataclass
class Operands:
    """What one kind of one model compares: queries (m, k) against candidates (p, k)."""

    queries: np.ndarray
    query_ids: pa.Array
    candidates: np.ndarray
    candidate_ids: pa.Array
    exclude_self: bool
    exclude: sp.csr_matrix | None  # (m, p) excluded pairs (user-item: training items)


def operands(model, kind: str, exclude_train: bool = True) -> Operands:
    """The query and candidate embeddings of ``kind`` for a :class:`bigcos.models.Model`."""
    if kind == "item-item":
        return Operands(model.item_embeddings, model.item_ids, model.item_embeddings,
                        model.item_ids, True, None)
    if kind == "user-user":
        return Operands(model.user_embeddings, model.user_ids, model.user_embeddings,
                        model.user_ids, True, None)
    if kind != "user-item":
        raise UserError(f"--kind: unknown kind '{kind}' (choose from {', '.join(KINDS)})")
    exclude = None
    if exclude_train:
        exclude = training_items(model)
    return Operands(model.user_embeddings, model.user_ids, model.item_embeddings,
                    model.item_ids, False, exclude)


def training_items(model) -> sp.csr_matrix:
    """The model's training matrix (n_users, n_items) CSR, checked against the model's ids."""
    from bigcos.matrix import load_matrix

    if model.matrix_dir is None:
        raise UserError(f"model '{model.name}': its manifest names no matrix_dir, so training "
                        "items cannot be excluded (pass --include-train)")
    train = load_matrix(model.matrix_dir).train
    shape = (len(model.user_ids), len(model.item_ids))
    if train.shape != shape:
        raise UserError(f"{model.matrix_dir}: training matrix is {train.shape[0]} x "
                        f"{train.shape[1]} but model '{model.name}' has {shape[0]} users x "
                        f"{shape[1]} items")
    return train


# --------------------------------------------------------------------------- on Dask
@dataclass(frozen=True)
class _Job:
    """Everything a task needs, as paths in the scratch directory (cheap to ship to workers)."""

    scratch: Path
    out: Path  # the temporary output directory
    kind: str
    model: str
    n: int
    metrics: tuple[str, ...]
    blocking: Blocking
    exclude_self: bool
    same_operands: bool
    n_candidates: int


def neighbors(model_dirs: Sequence[str | os.PathLike], out: str | os.PathLike, *,
              kinds: Sequence[str] = ("item-item",), metrics: Sequence[str] = METRICS,
              n: int = 100, exclude_train: bool = True, blocking: Blocking | None = None,
              memory_budget: int | None = None, symmetric: bool | None = None,
              overwrite: bool = False, client=None) -> dict[str, Any]:
    """Write the neighbour dataset of every model and kind to ``out``; return its manifest.

    Tasks run on ``client`` (a ``distributed.Client``; its workers must see ``out``'s file
    system), or with None on Dask's threaded scheduler in this process, one BLAS thread each.
    ``blocking`` fixes block sizes; otherwise they are sized from ``memory_budget`` (bytes
    per worker thread, default MEMORY_BUDGET). ``symmetric`` (item-item, user-user): compute each
    product once for both of its lists (pair tasks, see :func:`_pair_graph`); None = when the
    partial lists fit in :data:`SYMMETRIC_HELD_BYTES`.
    """
    import dask
    from threadpoolctl import threadpool_limits

    from bigcos.models import load_model

    kinds, metrics, blocking = check_request(model_dirs, out, kinds=kinds, metrics=metrics, n=n,
                                             blocking=blocking, memory_budget=memory_budget,
                                             overwrite=overwrite)
    models = [load_model(d) for d in model_dirs]
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        dup = next(x for x in names if names.count(x) > 1)
        raise UserError(f"model name '{dup}' appears twice among the model directories")
    timings = io.Timings()
    counts: dict[str, Any] = {}
    with io.atomic_output_dir(out, overwrite=overwrite) as tmp, \
            _scratch_root(tmp, client) as scratch_root:
        tasks, task_keys = [], []
        with timings("prepare"):
            for model in models:
                for kind in kinds:
                    ops = operands(model, kind, exclude_train)
                    n_used = max(1, min(n, len(ops.candidates) - ops.exclude_self))
                    job = _prepare(scratch_root / f"{model.name}.{kind}", tmp, ops, kind,
                                   model.name, n_used, metrics, blocking)
                    counts[f"{model.name}/{kind}"] = _operand_counts(ops) | {"n_used": n_used}
                    use_pairs = _use_symmetric(symmetric, ops, blocking, n, len(metrics))
                    counts[f"{model.name}/{kind}"]["symmetric"] = use_pairs
                    graph = _pair_graph if use_pairs else _group_graph
                    for task in graph(job, len(ops.queries)):
                        tasks.append(task)
                        task_keys.append(f"{model.name}/{kind}")
        _warn_short_lists(n, counts)
        with timings("compute"), threadpool_limits(1):
            results = dask.compute(*tasks, scheduler="threads" if client is None else client)
        for key, result in zip(task_keys, results, strict=True):
            for name, value in result.items():
                counts[key][name] = counts[key].get(name, 0) + value
        storage.rmtree(scratch_root)
        parameters = {"kinds": list(kinds), "metrics": list(metrics), "n": n,
                      "exclude_train": exclude_train, "blocking": asdict(blocking),
                      "symmetric": symmetric,
                      "task_peak_bytes": blocking.peak_bytes(n, len(metrics))}
        inputs = {"models": {m.name: {"dir": str(storage.resolve(d)),
                                      "matrix_dir": str(m.matrix_dir) if m.matrix_dir else None}
                             for m, d in zip(models, model_dirs, strict=True)}}
        return io.write_manifest(tmp, "neighbors", parameters, timings,
                                 filename=io.DATASET_MANIFEST, inputs=inputs,
                                 counts=counts, scheduler=_scheduler_info(client))


@contextlib.contextmanager
def _scratch_root(tmp: Path | storage.StorePath, client):
    """Where the tasks' operands are kept: beside the output (every worker sees it), but in a
    local temporary directory when the output is in a store and the tasks run on threads in
    this process (memory-mapped there, not downloaded by every task)."""
    if client is None and isinstance(tmp, storage.StorePath):
        with tempfile.TemporaryDirectory(prefix="bigcos-neighbors-") as local:
            yield Path(local) / ".scratch"
    else:
        yield tmp / ".scratch"


def check_request(model_dirs: Sequence[str | os.PathLike], out: str | os.PathLike, *,
                  kinds: Sequence[str], metrics: Sequence[str], n: int,
                  blocking: Blocking | None = None, memory_budget: int | None = None,
                  overwrite: bool = False) -> tuple[tuple[str, ...], tuple[str, ...], Blocking]:
    """The checks of :func:`neighbors` that need no model loaded, for callers to run before
    they start a cluster. Returns (kinds, metrics, blocking), deduplicated and sized."""
    if n < 1:
        raise UserError(f"-N: must be at least 1, got {n}")
    metrics = check_metrics(metrics)
    kinds = tuple(dict.fromkeys(kinds))
    for kind in kinds:
        if kind not in KINDS:
            raise UserError(f"--kind: unknown kind '{kind}' (choose from {', '.join(KINDS)})")
    if io.output_exists(out) and not overwrite:
        raise UserError(f"{out}: output already exists (pass --overwrite to replace it)")
    for model_dir in model_dirs:
        io.require_dir(model_dir, "model", "items.parquet")
    if blocking is None:
        blocking = Blocking.from_budget(memory_budget or parse_size(MEMORY_BUDGET), n,
                                           len(metrics))
    return kinds, metrics, blocking


def _warn_short_lists(n: int, counts: dict[str, Any]) -> None:
    """One warning for every model/kind whose lists cannot hold N (fewer candidates)."""
    short = {key: c["n_used"] for key, c in counts.items() if c["n_used"] < n}
    if short:
        log.warning("N = %d exceeds the candidates of %s: lists hold at most that many "
                    "neighbours", n, ", ".join(f"{k} ({v})" for k, v in short.items()))


def _prepare(scratch: Path, out: Path, ops: Operands, kind: str, model: str, n: int,
             metrics: tuple[str, ...], blocking: Blocking) -> _Job:
    scratch.mkdir(parents=True)
    same = ops.candidates is ops.queries
    io.save_npy(scratch / "queries.npy", np.ascontiguousarray(ops.queries, dtype=np.float32))
    io.save_npy(scratch / "inv_queries.npy", inverse_norms(ops.queries))
    _write_ids(scratch / "query_ids.arrow", ops.query_ids)
    if not same:
        io.save_npy(scratch / "candidates.npy", np.ascontiguousarray(ops.candidates, np.float32))
        io.save_npy(scratch / "inv_candidates.npy", inverse_norms(ops.candidates))
        _write_ids(scratch / "candidate_ids.arrow", ops.candidate_ids)
    if ops.exclude is not None:
        io.save_npz(scratch / "exclude.npz", ops.exclude.tocsr())
    for metric in metrics:
        (out / f"kind={kind}" / f"model={model}" / f"metric={metric}").mkdir(parents=True)
    return _Job(scratch, out, kind, model, n, metrics, blocking, ops.exclude_self, same,
                len(ops.candidates))


def _operand_counts(ops: Operands) -> dict[str, int]:
    return {"queries": len(ops.queries), "candidates": len(ops.candidates),
            "zero_norm_queries": int(np.sum(inverse_norms(ops.queries) == 0)),
            "zero_norm_candidates": int(np.sum(inverse_norms(ops.candidates) == 0)),
            "excluded_pairs": 0 if ops.exclude is None else int(ops.exclude.nnz)}


def _group_graph(job: _Job, n_queries: int) -> list:
    """One task per group of queries against all candidates; each writes its own parts."""
    import dask

    return [dask.delayed(_run_group, pure=False)(job, part, g0, g1)
            for part, (g0, g1) in enumerate(job.blocking.groups(n_queries))]


def _pair_graph(job: _Job, n_queries: int) -> list:
    """Symmetric kinds: every product between two groups g <= h is scored once, for the lists
    of both sides. The pairs are played as a round-robin tournament: first each group against
    itself, then rounds of disjoint pairs (len(groups) / 2 parallel tasks per round), each
    task resuming both groups' lists from their previous tasks, so thresholds stay as high as
    in one long pass. A last task per group sorts, fills zero-norm rows and writes."""
    import dask

    groups = job.blocking.groups(n_queries, min_groups=SYMMETRIC_GROUPS)
    lists = [dask.delayed(_pair_task, pure=False, nout=2)(job, g, g, None, None)[0]
             for g in groups]
    for round_pairs in _round_robin(len(groups)):
        for g, h in round_pairs:
            pair = dask.delayed(_pair_task, pure=False, nout=2)(job, groups[g], groups[h],
                                                               lists[g], lists[h])
            lists[g], lists[h] = pair[0], pair[1]
    return [dask.delayed(_finish_group, pure=False)(job, part, g0, g1, lists[part])
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


def _use_symmetric(symmetric: bool | None, ops: Operands, blocking: Blocking, n: int,
                   n_metrics: int) -> bool:
    if not (ops.exclude_self and ops.candidates is ops.queries and ops.exclude is None):
        return False
    if symmetric is not None:
        return symmetric
    return len(ops.queries) * n * 8 * n_metrics * 2 <= SYMMETRIC_HELD_BYTES


def _run_group(job: _Job, part: int, g0: int, g1: int) -> dict[str, int]:
    """One task: the lists of queries g0:g1, written as part ``part`` of every metric."""
    load = _scratch_loader(job)
    queries, inv_queries = load("queries.npy"), load("inv_queries.npy")
    candidates = queries if job.same_operands else load("candidates.npy")
    inv_candidates = inv_queries if job.same_operands else load("inv_candidates.npy")
    exclude = None
    if (job.scratch / "exclude.npz").exists():
        exclude = io.load_npz(job.scratch / "exclude.npz").tocsr()[g0:g1]
    keys = group_keys(queries[g0:g1], inv_queries[g0:g1], candidates, inv_candidates, job.n,
                       job.metrics, job.blocking, g0 if job.exclude_self else None, exclude)
    return _write_group(job, part, g0, g1, keys)


def _pair_task(job: _Job, g: tuple[int, int], h: tuple[int, int], lists_g, lists_h):
    load = _scratch_loader(job)
    return symmetric_topn(load("queries.npy"), load("inv_queries.npy"), job.n, job.metrics,
                          g, h, block=job.blocking.symmetric_block, lists_g=lists_g,
                          lists_h=lists_h)


def _finish_group(job: _Job, part: int, g0: int, g1: int,
                  keys: dict[str, np.ndarray]) -> dict[str, int]:
    keys = {m: keys[m].copy() for m in job.metrics}
    inv = _scratch_loader(job)("inv_queries.npy")[g0:g1]
    fill_zero_queries(keys, inv, job.n, job.n_candidates, g0, None)
    return _write_group(job, part, g0, g1, keys)


def _write_group(job: _Job, part: int, g0: int, g1: int,
                 keys: dict[str, np.ndarray]) -> dict[str, int]:
    """Write the lists (keys) of queries g0:g1 as part ``part`` of every metric."""
    query_ids = _read_ids(job.scratch / "query_ids.arrow")
    candidate_ids = query_ids if job.same_operands else _read_ids(
        job.scratch / "candidate_ids.arrow")
    written = {}
    for metric in job.metrics:
        table = neighbor_table(query_ids.slice(g0, g1 - g0), keys[metric], candidate_ids)
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


# np.load parses a .npy header with ast.literal_eval, which CPython 3.11.7 cannot run in
# several threads at once ("SystemError: AST constructor recursion depth mismatch"); with
# mmap_mode the header is all a load reads, so one lock costs nothing.
_NPY_HEADER_LOCK = threading.Lock()


def _scratch_loader(job: _Job):
    def load(name: str) -> np.ndarray:
        if isinstance(job.scratch, storage.StorePath):
            return _load_from_store(job.scratch / name)
        with _NPY_HEADER_LOCK:
            return io.load_npy(job.scratch / name, mmap=True)
    return load


@functools.lru_cache(maxsize=4)
def _load_from_store(path: storage.StorePath) -> np.ndarray:
    """An operand in a store, downloaded once per worker process (the last few are kept)."""
    with _NPY_HEADER_LOCK:
        array = io.load_npy(path)
    array.flags.writeable = False  # shared by every task of this process
    return array


def _write_ids(path: Path, ids: pa.Array) -> None:
    table = pa.table({"id": ids})
    sink = path.open("wb") if isinstance(path, storage.StorePath) else pa.OSFile(str(path), "wb")
    with sink, ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)


def _read_ids(path: Path) -> pa.Array:
    source = path.open("rb") if isinstance(path, storage.StorePath) else pa.memory_map(
        str(path), "r")
    with source:
        return ipc.open_file(source).read_all().column("id").combine_chunks()


def _scheduler_info(client) -> dict[str, Any]:
    if client is None:
        return {"scheduler": "threads", "workers": os.cpu_count()}
    workers = client.scheduler_info().get("workers", {})
    return {"scheduler": client.scheduler.address, "workers": len(workers),
            "threads": sum(w.get("nthreads", 0) for w in workers.values())}


# --------------------------------------------------------------------------- reading
def read_neighbors(path: str | os.PathLike) -> pa.Table:
    """The whole neighbour dataset at ``path`` as one table (with kind, model, metric columns)."""
    p = io.require_dir(path, "neighbours", io.DATASET_MANIFEST)
    fs, where = storage.filesystem_and_path(p)
    dataset = pads.dataset(where, format="parquet", partitioning="hive", filesystem=fs,
                           ignore_prefixes=[".", "_"])
    return dataset.to_table()

