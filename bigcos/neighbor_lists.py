"""Exact top-N neighbours of a model's items and users, by cosine and by dot product, on Dask.

Kinds (MATH.md): ``item-item`` (rows of B against B), ``user-user`` (XA against XA), and
``user-item`` (XA against B). Every kind runs through the kernels of :mod:`bigcos.topn`
(query blocks) and :mod:`bigcos.symmetric_topn` (pairs of groups), which produce the dot and
the cosine lists from the same products. The query itself is excluded for item-item and
user-user; for user-item the user's training items are excluded unless
``exclude_train=False``. Ties go to the smaller matrix index, so the output does not
depend on block sizes, the number of workers or the scheduler.

Queries go through one of three task graphs, with the same results
(:mod:`bigcos.neighbor_graphs`): *groups* of queries against all candidates (user-item, or
``symmetric=False``); *pairs* of groups whose products serve both sides' lists (item-item and
user-user, the default while their running lists fit in :data:`SYMMETRIC_HELD_BYTES`); and
*sampled* groups of a seeded sample of queries (``max_queries``). This module is the driver:
it checks the request, writes the operands, builds the graphs, runs them, and writes the
manifest; :func:`read_neighbors` reads the dataset back.

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
from bigcos.blocked_topn import Blocking, check_metrics
from bigcos.dask_tasks import run_tasks, task, where_tasks_run
from bigcos.errors import UserError
from bigcos.neighbor_graphs import (
    SYMMETRIC_GROUPS,
    SYMMETRIC_HELD_BYTES,
    group_graph,
    neighbor_table,
    pair_graph,
    query_sample,
    sampled_graph,
    use_symmetric,
    with_sample,
)
from bigcos.neighbor_operands import (
    SIDES,
    Job,
    check_shape,
    sampled_train,
    train_shards,
    write_items,
    write_user_part,
)
from bigcos.options import parse_size
from bigcos.topn import METRICS, inverse_norms

__all__ = ["KINDS", "MEMORY_BUDGET", "METRICS", "SYMMETRIC_GROUPS", "SYMMETRIC_HELD_BYTES",
           "Blocking", "check_request", "neighbor_table", "neighbors", "query_sample",
           "read_neighbors", "training_items"]

KINDS = ("item-item", "user-user", "user-item")
MEMORY_BUDGET = "512MiB"  # the default working memory per worker thread (one source)
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
    product once for both of its lists (pair tasks, see
    :func:`bigcos.neighbor_graphs.pair_graph`); None = when the partial lists fit in
    :data:`SYMMETRIC_HELD_BYTES`.

    ``max_queries``: per model and kind with more queries, the lists of one seeded sample of
    that many query rows only (``np.sort(default_rng(seed).choice(n_queries, max_queries,
    replace=False))``: the same rows for every model of a kind, and the rows the report's
    agreement sample picks with the same seed and ``max_queries``), against every candidate;
    each list equals that query's list in the full run. Item-item lists of the models named in
    ``full_models`` cover every item regardless. None: every query.

    User embeddings are never read here: one task per user part writes its scratch operand
    where it runs (:func:`bigcos.neighbor_operands.write_user_part`), and the user-item tasks
    read the training rows they exclude from the matrix's train shards (sampled: from one
    file per shard of the sample's rows, written once per matrix). When user-item is the only
    kind with users and its queries are sampled, the part tasks write only the sampled users.
    This process holds the item embeddings (p x k), one record per user part and per shard,
    and the counts.
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
        tasks, task_keys, zero_norm_users, sampled_trains = [], [], {}, {}
        with timings("prepare"):
            for model in models:
                user_sample = _sampled_users_only(model, kinds, max_queries, seed)
                scratch, fills, sample_bounds = _prepare_model(scratch_root / model.name, model,
                                                               kinds, user_sample)
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
                    after, use_pairs = fills, False
                    if max_queries is not None and not full \
                            and counts[key]["queries"] > max_queries:
                        compact = user_sample is not None and kind == "user-item"
                        sample = user_sample if compact else query_sample(
                            counts[key]["queries"], max_queries, seed)
                        if job.shards is not None:  # the sample's train rows, once per matrix
                            records, writers = sampled_trains.setdefault(
                                str(model.matrix_dir), sampled_train(
                                    scratch_root / f"train-{len(sampled_trains)}", job.shards,
                                    sample))
                            job, after = dataclasses.replace(job, shards=records), fills + writers
                        if compact:  # the user scratch holds the sampled rows alone
                            counts[key]["sampled_from"] = counts[key]["queries"]
                            counts[key]["queries"] = len(sample)
                            job = dataclasses.replace(job, user_bounds=sample_bounds)
                            graph = group_graph
                        else:
                            job, graph = with_sample(job, counts[key], sample), sampled_graph
                    else:
                        use_pairs = use_symmetric(symmetric, kind, counts[key]["queries"], n,
                                                   len(metrics))
                        graph = pair_graph if use_pairs else group_graph
                    counts[key]["symmetric"] = use_pairs
                    for task in graph(job, counts[key]["queries"], after):
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
                                 counts=counts, scheduler=where_tasks_run(client))


def _sampled_users_only(model, kinds: tuple[str, ...], max_queries: int | None,
                        seed: int) -> np.ndarray | None:
    """The user rows the lists need when user-item is the only kind with users and its
    queries are sampled (the seeded sample, ascending); None: every user."""
    user_kinds = [kind for kind in kinds if "users" in SIDES[kind]]
    if user_kinds != ["user-item"] or max_queries is None or model.n_users <= max_queries:
        return None
    return query_sample(model.n_users, max_queries, seed)


def _prepare_model(scratch: Path, model, kinds: tuple[str, ...],
                   user_sample: np.ndarray | None = None) -> tuple[Path, list, tuple[int, ...]]:
    """Write the model's item operand here; return the scratch directory, the tasks that
    write its user parts (none when no kind needs users; only the rows of ``user_sample``
    when given) and the first scratch row of each part plus the last stop."""
    scratch.mkdir(parents=True)
    write_items(scratch, model.item_ids, model.item_embeddings)
    bounds = tuple(p.start for p in model.parts) + (model.n_users,)
    if not any("users" in SIDES[kind] for kind in kinds):
        return scratch, [], bounds
    if user_sample is None:
        return scratch, [task(write_user_part)(scratch, part) for part in model.parts], bounds
    at = np.searchsorted(user_sample, bounds)
    return scratch, [task(write_user_part)(scratch, part, user_sample[at[i]:at[i + 1]])
                     for i, part in enumerate(model.parts)], tuple(int(b) for b in at)


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


# --------------------------------------------------------------------------- reading
def read_neighbors(path: str | os.PathLike) -> pa.Table:
    """The whole neighbour dataset at ``path`` as one table (with kind, model, metric columns)."""
    p = io.require_dir(path, "neighbours", io.DATASET_MANIFEST)
    fs, where = storage.filesystem_and_path(p)
    dataset = pads.dataset(where, format="parquet", partitioning="hive", filesystem=fs,
                           ignore_prefixes=[".", "_"])
    return dataset.to_table()

