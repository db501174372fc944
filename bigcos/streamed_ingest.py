"""Out-of-core ingest: a log of any size to a sharded matrix directory within a memory limit.

The same steps as the in-memory :func:`bigcos.matrix.build`, run per user range so that no
step holds more than one partition or one shard (:mod:`bigcos.pairs` holds the shared steps,
which is why both paths give bitwise identical matrices)::

    pass 1  log ──▶ sorted vocabularies + log rows per user          (bigcos.log_scan)
    pass 2  log ──▶ spill partitions of contiguous users, rows in log order
    task per partition: combine duplicates, threshold ──▶ sorted pairs + counts per user/item
    rounds of count tasks: iterated min-count filters (one pass over the pairs per round)
    [split time: 4 counting passes find the exact cut-off; split random/users: each shard
     draws its slice of the one seeded key stream]
    task per shard: pairs of its users ──▶ renumber, split ──▶ train/test CSR shard files

Tasks run on ``client`` (a ``distributed.Client``; the spill files live in the output
directory, so workers must see it) or, with ``client=None``, on threads in this process.
Memory: the working budget is ``memory_limit`` minus this process's RSS at the start; pass 1
and 2 hold a few record batches of ``budget / BATCH_BYTES_PER_ROW`` rows; partitions hold
``budget / threads / SPILL_BYTES_PER_ROW`` log rows; shards at most
``memory_limit / (SHARD_SHARE · SHARD_BYTES_PER_NNZ)`` non-zeros (:func:`effective_shard_nnz`),
built as many at a time as fit the budget. The vocabularies and per-user counts (about 30
bytes per user) stay in this process. With a ``client``, each task is sized the same way for
the worker that runs it (give workers at least the budget). Spill I/O: the log's codes are
written once and read about (3 + filter rounds) times.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from bigcos import pairs, shards
from bigcos.dask_tasks import shared
from bigcos.errors import UserError
from bigcos.log_scan import CodeMap, scan_vocabularies, spill
from bigcos.memory import release_memory, reuse_heap_within, rss_bytes

BATCH_BYTES_PER_ROW = 2000  # a batch in flight: arrow columns, codes, order, copies, readers
SPILL_BYTES_PER_ROW = 120  # combining one partition: raw columns, sort keys, order, results
SHARD_BYTES_PER_NNZ = 100  # building one shard: pairs, keys, ranks, two CSR matrices
SHARD_SHARE = 2  # a shard's build takes at most 1 / SHARD_SHARE of memory_limit
MIN_WORKING_BYTES = 32 << 20


def effective_shard_nnz(shard_nnz: int, memory_limit: int) -> int:
    """Non-zeros per shard at most: ``shard_nnz``, fewer when one shard's build
    (``SHARD_BYTES_PER_NNZ`` bytes per non-zero) would take more than half of
    ``memory_limit``. Depends on the options only, so both ingest paths cut the same shards."""
    return max(1, min(shard_nnz, memory_limit // (SHARD_SHARE * SHARD_BYTES_PER_NNZ)))


def run_tasks(client: Any, fn, args: list[tuple], threads: int, common: tuple = ()
              ) -> Iterator:
    """Yield ``fn(*a, *common)`` for every ``a`` of ``args`` in order, run as Dask tasks on
    ``client`` or on ``threads`` threads (``client=None``); each result is handed over as soon
    as it and those before it are done, so the caller can reduce them one by one. ``common``
    (e.g. the renumbering arrays, ~5 bytes per user) goes to each worker once, scattered,
    instead of with every task through the scheduler."""
    if client is not None:
        common = tuple(shared(value, client) for value in common)
        futures = [client.submit(fn, *a, *common, pure=False) for a in args]
        for i in range(len(futures)):
            yield futures[i].result()
            futures[i] = None
        return
    if threads <= 1 or len(args) <= 1:
        yield from (fn(*a, *common) for a in args)
        return
    with ThreadPoolExecutor(threads) as pool:
        yield from pool.map(lambda a: fn(*a, *common), args)


@dataclass(frozen=True)
class _Part:
    """One spill partition: users ``start <= code < stop`` (codes of the full vocabulary)."""

    path: str
    start: int
    stop: int


# --------------------------------------------------------------------------- tasks
def _load(part: _Part, name: str, dtype, lo: int = 0, hi: int = -1) -> np.ndarray:
    """Elements ``lo:hi`` (default all) of one column file of a partition."""
    itemsize = np.dtype(dtype).itemsize
    return np.fromfile(Path(part.path) / name, dtype=dtype, offset=lo * itemsize,
                       count=hi - lo if hi >= 0 else -1)


def _combine_part(part: _Part, n_items: int, how: str, threshold: float | None,
                  read_time: bool, keep_time: bool) -> dict:
    """Combine one partition's rows into sorted pairs (files replaced), apply the threshold,
    return its counts of pairs kept per user (local) and per item. ``read_time``: the spill
    has times (``how == "last"`` or a time split); ``keep_time``: the pairs keep them."""
    d = Path(part.path)
    n = part.stop - part.start
    users = _load(part, "users.i32", np.int32) - np.int32(part.start)  # every user has rows
    times = _load(part, "times.i64", np.int64) if read_time else None
    rows, items, vals, times = pairs.combine(
        users, _load(part, "items.i32", np.int32), _load(part, "values.f32", np.float32),
        times, (n, n_items), how)
    del users
    for name in ("users.i32", "items.i32", "values.f32", "times.i64"):
        (d / name).unlink(missing_ok=True)
    keep = None  # every pair kept: no keep.bool file
    if threshold is not None:
        keep = vals >= threshold
        vals = np.ones_like(vals)
    for name, a in (("rows.i32", rows), ("items.i32", items), ("values.f32", vals),
                    ("keep.bool", keep), ("times.i64", times if keep_time else None)):
        if a is not None:
            a.tofile(d / name)
    return {"pairs": len(rows), "below_threshold": 0 if keep is None else int((~keep).sum()),
            "users": np.bincount(_kept_only(rows, keep), minlength=n),
            "items": np.bincount(_kept_only(items, keep), minlength=n_items)}


def _kept_only(a: np.ndarray, keep: np.ndarray | None) -> np.ndarray:
    """``a[keep]``; ``a`` itself when ``keep`` is None (every element kept)."""
    return a if keep is None else a[keep]


def _load_keep(part: _Part, lo: int = 0, hi: int = -1) -> np.ndarray | None:
    """The threshold's keep mask of pairs ``lo:hi`` of a combined partition (None: all)."""
    if not (Path(part.path) / "keep.bool").exists():
        return None
    return _load(part, "keep.bool", bool, lo, hi)


def _filtered(keep: np.ndarray | None, rows: np.ndarray, items: np.ndarray,
              users_ok: np.ndarray | None, items_ok: np.ndarray | None) -> np.ndarray | None:
    """``keep`` (None: all) and the user/item filters (None: none), None when all kept."""
    if users_ok is None:
        return keep
    ok = users_ok[rows] & items_ok[items]
    return ok if keep is None else keep & ok


def _kept(part: _Part, users_ok: np.ndarray | None, items_ok: np.ndarray | None
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(local rows, items, kept mask or None: all) of a combined partition under the
    user/item filters."""
    rows = _load(part, "rows.i32", np.int32)
    items = _load(part, "items.i32", np.int32)
    return rows, items, _filtered(_load_keep(part), rows, items, users_ok, items_ok)


def _count_part(part: _Part, users_ok: np.ndarray, items_ok: np.ndarray, n_items: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """Pairs kept per user (local) and per item under the filters."""
    rows, items, keep = _kept(part, users_ok, items_ok)
    return (np.bincount(_kept_only(rows, keep), minlength=part.stop - part.start),
            np.bincount(_kept_only(items, keep), minlength=n_items))


def _time_histogram(part: _Part, users_ok, items_ok, prefix: int, shift: int) -> np.ndarray:
    """Histogram of bits ``shift .. shift + 16`` of the kept pairs' times (as order-preserving
    unsigned keys) among those whose higher bits equal ``prefix``."""
    _, _, keep = _kept(part, users_ok, items_ok)
    key = _kept_only(_load(part, "times.i64", np.int64), keep).view(np.uint64) ^ np.uint64(
        1 << 63)
    if shift < 48:
        key = key[(key >> np.uint64(shift + 16)) == np.uint64(prefix)]
    return np.bincount(((key >> np.uint64(shift)) & np.uint64(0xFFFF)).astype(np.int64),
                       minlength=1 << 16)


@dataclass(frozen=True)
class _ShardJob:
    """What one shard task needs: its rows [start, stop) (final numbering), the partitions
    holding them, the filters and renumbering, and its split inputs."""

    index: int
    start: int
    stop: int
    parts: tuple
    first_user: int  # full-vocabulary code of row ``start``
    last_user: int  # full-vocabulary code of row ``stop - 1``
    offset: int  # pairs before this shard (its first key in the split's stream)
    train_path: str
    test_path: str | None


def _build_shard(job: _ShardJob, remap_u: np.ndarray, filters: tuple, n_items: int,
                 split: dict) -> tuple[int, int]:
    """Write shard ``job``'s train (and test) CSR; return their non-zeros."""
    users_ok, items_ok, remap_i = filters
    cols: dict[str, list] = {"rows": [], "items": [], "values": [], "times": []}
    for part in job.parts:
        # the shard's users are a contiguous run of the partition's sorted rows
        sorted_rows = np.memmap(Path(part.path) / "rows.i32", np.int32, mode="r")
        lo, hi = (int(x) for x in np.searchsorted(
            sorted_rows, [job.first_user - part.start, job.last_user - part.start + 1]))
        del sorted_rows
        rows = _load(part, "rows.i32", np.int32, lo, hi).astype(np.int64) + part.start
        items = _load(part, "items.i32", np.int32, lo, hi)
        keep = _filtered(_load_keep(part, lo, hi), rows, items, users_ok, items_ok)
        cols["rows"].append(remap_u[_kept_only(rows, keep)] - np.int32(job.start))
        cols["items"].append(remap_i[_kept_only(items, keep)])
        cols["values"].append(_kept_only(_load(part, "values.f32", np.float32, lo, hi), keep))
        if split["protocol"] == "time":
            cols["times"].append(_kept_only(_load(part, "times.i64", np.int64, lo, hi), keep))
    rows, items, vals = (np.concatenate(cols[c]) for c in ("rows", "items", "values"))
    shape = (job.stop - job.start, n_items)
    test = np.zeros(len(rows), bool)
    if split["protocol"] == "time" and split["cutoff"] is not None:
        test = np.concatenate(cols["times"]) >= split["cutoff"]
    elif split["protocol"] in ("random", "users"):
        noise = pairs.split_noise(split["state"], job.offset, len(rows))
        eligible = (split["heldout"][job.start:job.stop] if split["heldout"] is not None
                    else np.ones(shape[0], bool))
        test = pairs.heldout_by_rank(rows, noise, shape[0], split["fraction"], eligible)
    train = pairs.csr(rows[~test], items[~test], vals[~test], shape)
    shards.write_shard(Path(job.train_path), train)
    if job.test_path is None:
        return train.nnz, 0
    test_m = pairs.csr(rows[test], items[test], vals[test], shape)
    shards.write_shard(Path(job.test_path), test_m)
    return train.nnz, test_m.nnz


# --------------------------------------------------------------------------- driver
@dataclass
class StreamedMatrix:
    """What the streamed ingest leaves beside its shard files."""

    user_ids: pa.Array
    item_ids: pa.Array
    heldout_users: np.ndarray | None
    shards: dict  # the manifest's shards section
    counts: dict


def build_streamed(log: Path, out: Path, opts, memory_limit: int, client: Any = None
                   ) -> StreamedMatrix:
    """Ingest ``log`` out of core into the matrix directory ``out`` (shard files only).

    Parameters
    ----------
    log : Path
    out : Path
        An existing, empty directory (the spill files live in ``out/.spill`` meanwhile).
    opts : IngestOptions
    memory_limit : int
        Bytes this process's RSS should stay under.
    client : distributed.Client, optional
        Where the partition and shard tasks run (None: threads in this process).

    Returns
    -------
    StreamedMatrix
    """
    release_memory()  # also tunes glibc to return large arrays to the system
    need_time = opts.split == "time" or opts.duplicates == "last"
    columns = {"user": opts.user_col, "item": opts.item_col, "value": opts.value_col,
               "time": opts.time_col}
    budget = memory_limit - rss_bytes()
    if budget < MIN_WORKING_BYTES:
        raise UserError(f"memory_limit: {memory_limit:,} bytes leave less than "
                        f"{MIN_WORKING_BYTES >> 20} MiB beyond the {rss_bytes():,} this "
                        "process already uses", parameter="memory_limit")
    reuse_heap_within(budget)
    batch_rows = int(np.clip(budget // BATCH_BYTES_PER_ROW, 1 << 14, 1 << 20))
    user_vocab, user_rows, item_vocab, n_rows = scan_vocabularies(
        log, columns=columns, need_time=need_time, batch_rows=batch_rows,
        merge_rows=max(budget // 256, 1 << 16), table_bytes=budget // 8)
    release_memory()
    threads = 1 if client is not None else max(1, min(os.cpu_count() or 1, 4))
    budget = max(memory_limit - rss_bytes(), MIN_WORKING_BYTES)
    # partitions fit the budget, and there are at least two per thread to keep them busy
    rows_per_part = max(min(budget // threads // SPILL_BYTES_PER_ROW, n_rows // (2 * threads)),
                        1)
    starts = shards.shard_bounds(user_rows, rows_per_part)
    spill_dir = out / ".spill"
    parts = [_Part(str(spill_dir / f"p{p:05d}"), int(starts[p]), int(starts[p + 1]))
             for p in range(len(starts) - 1)]
    for part in parts:
        Path(part.path).mkdir(parents=True)
    n_items_all = len(item_vocab)
    spill(log, columns=columns, need_time=need_time, batch_rows=batch_rows,
          user_map=CodeMap(user_vocab, budget // 8),
          item_map=CodeMap(item_vocab, budget // 8), user_starts=starts,
          part_dirs=[Path(p.path) for p in parts])
    release_memory()
    counts, u_count, i_count = _combine_all(parts, n_rows, n_items_all, opts, need_time,
                                            client, threads)
    release_memory()
    u_count, i_count, users_ok, items_ok = _filter_rounds(parts, u_count, i_count, opts,
                                                          client, threads)
    if u_count.sum() == 0:
        shutil.rmtree(spill_dir)
        raise UserError(f"{log}: no interactions left after threshold and minimum-count filters")
    used_u, used_i = np.flatnonzero(u_count), np.flatnonzero(i_count)
    n_users, n_items = len(used_u), len(used_i)
    remap_u = np.full(len(u_count), -1, np.int32)
    remap_u[used_u] = np.arange(n_users, dtype=np.int32)
    remap_i = np.full(n_items_all, -1, np.int32)
    remap_i[used_i] = np.arange(n_items, dtype=np.int32)
    row_nnz = u_count[used_u]
    split = _split_inputs(opts, n_users, parts, users_ok, items_ok, int(row_nnz.sum()),
                          client, threads)
    shard_nnz = effective_shard_nnz(opts.shard_nnz, memory_limit)
    bounds = shards.shard_bounds(row_nnz, shard_nnz)
    offsets = np.concatenate(([0], np.cumsum(row_nnz, dtype=np.int64)))
    jobs = _shard_jobs(out, bounds, offsets, used_u, parts, opts.split != "none")
    filters = (users_ok, items_ok, remap_i)
    release_memory()
    largest = int(np.max(np.diff(offsets[bounds])))
    shard_threads = int(np.clip(budget // max(largest * SHARD_BYTES_PER_NNZ, 1), 1, threads))
    nnz = list(run_tasks(client, _build_shard, [(j,) for j in jobs], shard_threads,
                         common=(remap_u, filters, n_items, split)))
    shutil.rmtree(spill_dir)
    heldout = split["heldout"]
    counts.update(users=n_users, items=n_items, train_nnz=sum(t for t, _ in nnz),
                  test_nnz=sum(t for _, t in nnz),
                  heldout_users=int(heldout.sum()) if heldout is not None else 0)
    section = shards.manifest_section((n_users, n_items), shard_nnz, opts.split != "none",
                                      bounds, [t for t, _ in nnz], [t for _, t in nnz])
    return StreamedMatrix(user_vocab.take(pa.array(used_u)), item_vocab.take(pa.array(used_i)),
                          heldout, section, counts)


def _combine_all(parts: list[_Part], n_rows: int, n_items: int, opts, need_time: bool,
                 client: Any, threads: int) -> tuple[dict, np.ndarray, np.ndarray]:
    """Run :func:`_combine_part` on every partition. Returns the counts so far (log rows,
    pairs, duplicates[, below threshold]) and the pairs kept per user and per item."""
    n_pairs = below = 0
    user_counts, i_count = [], np.zeros(n_items, np.int64)
    for done in run_tasks(client, _combine_part,
                          [(p, n_items, opts.duplicates, opts.threshold, need_time,
                            opts.split == "time") for p in parts], threads):
        n_pairs += done["pairs"]
        below += done["below_threshold"]
        user_counts.append(done["users"])
        i_count += done["items"]
    counts = {"log_rows": n_rows, "pairs": n_pairs, "duplicate_rows": n_rows - n_pairs}
    if opts.threshold is not None:
        counts["below_threshold"] = below
    return counts, np.concatenate(user_counts), i_count


def _filter_rounds(parts: list[_Part], u_count: np.ndarray, i_count: np.ndarray, opts,
                   client: Any, threads: int) -> tuple:
    """The rounds of :func:`bigcos.pairs.iterated_min_counts`, one counting pass over the
    partitions each. Returns the final (pairs per user, pairs per item, users kept, items
    kept), the masks None without filters."""
    if opts.min_user <= 1 and opts.min_item <= 1:
        return u_count, i_count, None, None
    users_ok, items_ok = np.ones(len(u_count), bool), np.ones(len(i_count), bool)
    total = int(u_count.sum())
    while True:
        users_ok &= u_count >= opts.min_user
        items_ok &= i_count >= opts.min_item
        user_counts, i_count = [], np.zeros(len(items_ok), np.int64)
        for part_users, part_items in run_tasks(
                client, _count_part, [(p, users_ok[p.start:p.stop]) for p in parts], threads,
                common=(items_ok, len(items_ok))):
            user_counts.append(part_users)
            i_count += part_items
        u_count = np.concatenate(user_counts)
        if int(u_count.sum()) == total:  # a round that drops nothing: stable
            return u_count, i_count, users_ok, items_ok
        total = int(u_count.sum())


def _shard_jobs(out: Path, bounds: np.ndarray, offsets: np.ndarray, used_u: np.ndarray,
                parts: list[_Part], split: bool) -> list[_ShardJob]:
    """One job per shard [bounds[s], bounds[s + 1]) of the final rows, with the partitions
    holding its users; ``offsets[r]`` is the number of pairs before row r."""
    n_shards = len(bounds) - 1
    if n_shards > 1:
        (out / shards.SHARD_DIR).mkdir()
    jobs = []
    for s in range(n_shards):
        a, b = int(bounds[s]), int(bounds[s + 1])
        first, last = int(used_u[a]), int(used_u[b - 1])
        train, test = shards.file_names(n_shards, s, split)
        jobs.append(_ShardJob(s, a, b, tuple(p for p in parts
                                             if p.start <= last and p.stop > first),
                              first, last, int(offsets[a]), str(out / train),
                              str(out / test) if test else None))
    return jobs


def _split_inputs(opts, n_users: int, parts: list[_Part], users_ok, items_ok, n_pairs: int,
                  client: Any, threads: int) -> dict:
    """The split's global inputs: held-out users and key-stream state (random, users) or the
    time cut-off, found as the exact order statistic by four 16-bit counting passes."""
    heldout, state = pairs.split_rng_state(n_users, opts.split, opts.heldout_users, opts.seed)
    split = {"protocol": opts.split, "fraction": opts.test_fraction, "heldout": heldout,
             "state": state, "cutoff": None}
    if opts.split != "time" or opts.test_fraction <= 0:
        return split
    rank = pairs.time_cutoff_index(n_pairs, opts.test_fraction)
    prefix = 0
    for shift in (48, 32, 16, 0):
        hist = np.zeros(1 << 16, np.int64)
        for part_hist in run_tasks(client, _time_histogram,
                                   [(p, None if users_ok is None else users_ok[p.start:p.stop],
                                     items_ok, prefix, shift) for p in parts], threads):
            hist += part_hist
        cum = np.cumsum(hist)
        bucket = int(np.searchsorted(cum, rank, side="right"))
        rank -= int(cum[bucket - 1]) if bucket else 0
        prefix = (prefix << 16) | bucket
    split["cutoff"] = int(np.uint64(prefix ^ (1 << 63)).view(np.int64))
    return split
