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
plus, for user-item, the train shards overlapping the group's rows (the training items it
excludes, 12 bytes per non-zero). The embeddings and ids are shared read-only memory maps
of scratch files (:mod:`bigcos.neighbor_operands`, once per machine in the page cache):
items written by this process (p x k), users written by one task per user part (each holding
its part, ``rows * k * 4`` bytes, twice while writing), ``n * (4k + 4)`` bytes of disk per
model plus ids, removed at the end. This process never reads user embeddings: it holds the
items, one record per user part and per matrix shard, and the counts.
:meth:`Blocking.from_budget` picks the largest blocks within a budget. The pairs graph also
holds the lists in flight between its tasks.

Output (contracts.md): a directory of hive partitions
``kind=<kind>/model=<model>/metric=<metric>/part-<group>.parquet`` with columns ``query_id``,
``rank`` (int32, 1 = best), ``neighbor_id`` (original ids), ``score`` (float32), and
``_manifest.json`` at the top (a name dataset readers skip, so ``pd.read_parquet(DIR)`` reads
the whole directory as one table). Workers write their partitions straight into the temporary
output directory, which is renamed into place only when every task has succeeded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import scipy.sparse as sp

from bigcos import io, storage
from bigcos.blocked_topn import Blocking, check_metrics, group_keys
from bigcos.dask_tasks import run_tasks, task
from bigcos.errors import UserError
from bigcos.neighbor_operands import (
    SIDES,
    Job,
    check_shape,
    load_array,
    train_rows,
    train_rows_at,
    train_shards,
    write_items,
    write_user_part,
)
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
def training_items(model) -> sp.csr_matrix:
    """The model's training matrix (n_users, n_items) CSR, checked against the model's ids
    (whole, for one user at a time in ``bigcos similar``; the neighbour tasks read shards)."""
    from bigcos.matrix import load_matrix

    if model.matrix_dir is None:
        raise UserError(f"model '{model.name}': its manifest names no matrix_dir, so training "
                        "items cannot be excluded (pass --include-train)")
    train = load_matrix(model.matrix_dir).train
    check_shape(model, train.shape, len(model.user_ids))
    return train


# --------------------------------------------------------------------------- on Dask
def neighbors(model_dirs: Sequence[str | os.PathLike], out: str | os.PathLike, *,
              kinds: Sequence[str] = ("item-item",), metrics: Sequence[str] = METRICS,
              n: int = 100, exclude_train: bool = True, blocking: Blocking | None = None,
              memory_budget: int | None = None, symmetric: bool | None = None,
              max_queries: int | None = None, full_models: Sequence[str] = (),
              seed: int = 0, overwrite: bool = False, client=None) -> dict[str, Any]:
    """Write the neighbour dataset of every model and kind to ``out``; return its manifest.

    Tasks run on ``client`` (a ``distributed.Client``; its workers must see ``out``'s file
    system), or with None on Dask's threaded scheduler in this process, one BLAS thread each.
    ``blocking`` fixes block sizes; otherwise they are sized from ``memory_budget`` (bytes
    per worker thread, default MEMORY_BUDGET). ``symmetric`` (item-item, user-user): compute each
    product once for both of its lists (pair tasks, see :func:`_pair_graph`); None = when the
    partial lists fit in :data:`SYMMETRIC_HELD_BYTES`.

    ``max_queries``: per model and kind with more queries, the lists of one seeded sample of
    that many query rows only (``np.sort(default_rng(seed).choice(n_queries, max_queries,
    replace=False))``: the same rows for every model of a kind, and the rows the report's
    agreement sample picks with the same seed and ``max_queries``), against every candidate;
    each list equals that query's list in the full run. Item-item lists of the models named in
    ``full_models`` cover every item regardless. None: every query.

    User embeddings are never read here: one task per user part writes its scratch operand
    where it runs (:func:`bigcos.neighbor_operands.write_user_part`), and the user-item tasks
    read the training rows they exclude from the matrix's train shards. This process holds
    the item embeddings (p x k), one record per user part and per shard, and the counts.
    """
    from bigcos.model_info import load_model_info

    kinds, metrics, blocking = check_request(model_dirs, out, kinds=kinds, metrics=metrics, n=n,
                                             blocking=blocking, memory_budget=memory_budget,
                                             overwrite=overwrite)
    if max_queries is not None and max_queries < 1:
        raise UserError(f"max_queries: must be at least 1, got {max_queries}")
    models = [load_model_info(d) for d in model_dirs]
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        dup = next(x for x in names if names.count(x) > 1)
        raise UserError(f"model name '{dup}' appears twice among the model directories")
    unknown = sorted(set(full_models) - set(names))
    if unknown:
        raise UserError(f"full_models: no model named '{unknown[0]}' (models: "
                        f"{', '.join(names)})")
    timings = io.Timings()
    counts: dict[str, Any] = {}
    with io.atomic_output_dir(out, overwrite=overwrite) as tmp, \
            _scratch_root(tmp, client) as scratch_root:
        tasks, task_keys, zero_norm_users = [], [], {}
        with timings("prepare"):
            for model in models:
                scratch, fills = _prepare_model(scratch_root / model.name, model, kinds)
                zero_norm_users[model.name] = fills
                for kind in kinds:
                    job = Job(scratch, tmp, kind, model.name, n, metrics, blocking,
                               tuple(p.start for p in model.parts) + (model.n_users,),
                               train_shards(model) if kind == "user-item" and exclude_train
                               else None)
                    key = f"{model.name}/{kind}"
                    counts[key] = _operand_counts(job, model)
                    n_candidates = counts[key]["candidates"]
                    n_used = max(1, min(n, n_candidates - job.exclude_self))
                    job = dataclasses.replace(job, n=n_used)
                    counts[key]["n_used"] = n_used
                    _output_dirs(tmp, kind, model.name, metrics)
                    full = kind == "item-item" and model.name in full_models
                    if max_queries is not None and not full \
                            and counts[key]["queries"] > max_queries:
                        job = _with_sample(job, counts[key], max_queries, seed)
                        graph, use_pairs = _sampled_graph, False
                    else:
                        use_pairs = _use_symmetric(symmetric, kind, counts[key]["queries"], n,
                                                   len(metrics))
                        graph = _pair_graph if use_pairs else _group_graph
                    counts[key]["symmetric"] = use_pairs
                    for task in graph(job, counts[key]["queries"], fills):
                        tasks.append(task)
                        task_keys.append(key)
        _warn_short_lists(n, counts)
        fill_tasks = [f for fills in zero_norm_users.values() for f in fills]
        with timings("compute"):
            results = run_tasks(tasks + fill_tasks, client)
        for key, result in zip(task_keys, results[:len(tasks)], strict=True):
            for name, value in result.items():
                counts[key][name] = counts[key].get(name, 0) + value
        _count_zero_norm_users(counts, zero_norm_users, results[len(tasks):])
        storage.rmtree(scratch_root)
        parameters = {"kinds": list(kinds), "metrics": list(metrics), "n": n,
                      "exclude_train": exclude_train, "blocking": asdict(blocking),
                      "symmetric": symmetric, "max_queries": max_queries,
                      "full_models": list(full_models), "seed": seed,
                      "task_peak_bytes": blocking.peak_bytes(n, len(metrics))}
        inputs = {"models": {m.name: {"dir": str(storage.resolve(d)),
                                      "matrix_dir": str(m.matrix_dir) if m.matrix_dir else None}
                             for m, d in zip(models, model_dirs, strict=True)}}
        return io.write_manifest(tmp, "neighbors", parameters, timings,
                                 filename=io.DATASET_MANIFEST, inputs=inputs,
                                 counts=counts, scheduler=_scheduler_info(client))


def _prepare_model(scratch: Path, model, kinds: tuple[str, ...]) -> tuple[Path, list]:
    """Write the model's item operand here; return the scratch directory and the tasks that
    write its user parts (none when no kind needs users)."""
    scratch.mkdir(parents=True)
    write_items(scratch, model.item_ids, model.item_embeddings)
    if not any("users" in SIDES[kind] for kind in kinds):
        return scratch, []
    return scratch, [task(write_user_part)(scratch, part) for part in model.parts]


def _output_dirs(out: Path, kind: str, model: str, metrics: tuple[str, ...]) -> None:
    for metric in metrics:
        (out / f"kind={kind}" / f"model={model}" / f"metric={metric}").mkdir(parents=True)


def _operand_counts(job: Job, model) -> dict[str, int]:
    """Counts known before the tasks run; zero-norm users are counted by the part tasks."""
    query_side, candidate_side = job.sides
    p = len(model.item_ids)
    zero_items = int(np.sum(inverse_norms(model.item_embeddings) == 0))
    return {"queries": job.size(query_side, p), "candidates": job.size(candidate_side, p),
            "zero_norm_queries": zero_items if query_side == "items" else 0,
            "zero_norm_candidates": zero_items if candidate_side == "items" else 0,
            "excluded_pairs": 0 if job.shards is None else sum(s.train_nnz for s in job.shards)}


def _count_zero_norm_users(counts: dict[str, Any], tasks: dict[str, list],
                           results: list[int]) -> None:
    at = 0
    for model, fills in tasks.items():
        zero = sum(results[at:at + len(fills)])
        at += len(fills)
        for kind, (query_side, candidate_side) in SIDES.items():
            key = f"{model}/{kind}"
            if key in counts:
                counts[key]["zero_norm_queries"] += zero * (query_side == "users")
                counts[key]["zero_norm_candidates"] += zero * (candidate_side == "users")


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


def _group_graph(job: Job, n_queries: int, after: list) -> list:
    """One task per group of queries against all candidates; each writes its own parts.
    ``after``: the tasks writing the user operand (their results are not used)."""
    return [task(_run_group)(job, part, g0, g1, after)
            for part, (g0, g1) in enumerate(job.blocking.groups(n_queries))]


def query_sample(n_queries: int, max_queries: int, seed: int) -> np.ndarray:
    """The seeded sample of query rows: ascending int64, ``min(n_queries, max_queries)`` rows
    drawn uniformly without replacement (all rows when there are at most ``max_queries``)."""
    if n_queries <= max_queries:
        return np.arange(n_queries, dtype=np.int64)
    rows = np.random.default_rng(seed).choice(n_queries, max_queries, replace=False)
    return np.sort(rows).astype(np.int64)


def _with_sample(job: Job, counts: dict[str, Any], max_queries: int, seed: int) -> Job:
    """The job restricted to the seeded query sample (written to its scratch directory)."""
    path = job.scratch / f"sample-{job.kind}.npy"
    io.save_npy(path, query_sample(counts["queries"], max_queries, seed))
    counts["sampled_from"] = counts["queries"]
    counts["queries"] = min(counts["queries"], max_queries)
    return dataclasses.replace(job, sample=path)


def _sampled_graph(job: Job, n_sampled: int, after: list) -> list:
    """One task per group of sampled queries against all candidates (``job.sample``)."""
    return [task(_run_sampled_group)(job, part, i0, i1, after)
            for part, (i0, i1) in enumerate(job.blocking.groups(n_sampled))]


def _run_sampled_group(job: Job, part: int, i0: int, i1: int, after=None) -> dict[str, int]:
    """One task: the lists of sampled queries i0:i1 (rows ``sample[i0:i1]``), written as part
    ``part``. A query's own row (item-item, user-user) and training items (user-item) are
    excluded pairs, so each list equals the full run's list of that query."""
    query_side, candidate_side = job.sides
    rows = load_array(job.sample)[i0:i1]
    candidates = job.rows(candidate_side)
    if job.shards is not None:
        exclude = train_rows_at(job.shards, rows)
    elif job.exclude_self:
        exclude = sp.csr_matrix((np.ones(len(rows), np.float32), rows,
                                 np.arange(len(rows) + 1)), shape=(len(rows), len(candidates)))
    else:
        exclude = None
    keys = group_keys(job.rows(query_side)[rows], job.rows(query_side, "inv")[rows],
                      candidates, job.rows(candidate_side, "inv"), job.n, job.metrics,
                      job.blocking, None, exclude)
    return _write_lists(job, part, job.ids_at(query_side, rows), keys)


def _pair_graph(job: Job, n_queries: int, after: list) -> list:
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


def _use_symmetric(symmetric: bool | None, kind: str, n_queries: int, n: int,
                   n_metrics: int) -> bool:
    if kind == "user-item":
        return False
    if symmetric is not None:
        return symmetric
    return n_queries * n * 8 * n_metrics * 2 <= SYMMETRIC_HELD_BYTES


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
    side = job.sides[0]
    return symmetric_topn(job.rows(side), job.rows(side, "inv"), job.n, job.metrics,
                          g, h, block=job.blocking.symmetric_block, lists_g=lists_g,
                          lists_h=lists_h)


def _finish_group(job: Job, part: int, g0: int, g1: int,
                  keys: dict[str, np.ndarray]) -> dict[str, int]:
    keys = {m: keys[m].copy() for m in job.metrics}
    side = job.sides[0]
    inv = job.rows(side, "inv")[g0:g1]
    fill_zero_queries(keys, inv, job.n, len(job.rows(side, "inv")), g0, None)
    return _write_group(job, part, g0, g1, keys)


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

