"""Interaction logs to CSR matrices with id vocabularies, filters and held-out splits.

Reading the log (streamed, into codes and vocabularies) is :mod:`bigcos.log_reader`; the steps
on pairs shared with the out-of-core build (:mod:`bigcos.streamed_ingest`) are
:mod:`bigcos.pairs`; this module builds in memory, chooses the path, saves and loads.
Pipeline of :func:`build`::

    Parquet record batches ──dictionary-encode ids per batch──▶ int32 codes + small dictionaries
        ──merge dictionaries (sorted vocabulary)──▶ global codes ──sort by (user, item[, time])──▶
        combine duplicates ──▶ binarise ──▶ min-count filters (iterated) ──▶ split ──▶ CSR

Memory: per row of the log, 8 bytes of codes + 4 of value (+ 8 of timestamp when a split by time
or ``--duplicates last`` needs it) + 16 during the sort, i.e. the size of the resulting COO
matrix, plus one record batch. :func:`ingest` streams instead when that exceeds
``memory_limit``, with bitwise the same result.

Vocabularies are sorted (integers numerically, strings lexicographically), so the matrix does
not depend on the order of rows or files in the log. Row i of every matrix is ``user_ids[i]``,
column j is ``item_ids[j]``. On disk (a *matrix directory*; shard layout in
:mod:`bigcos.shards`): train/test shards, users.parquet (index, user_id[, heldout]),
items.parquet (index, item_id), manifest.json (inputs, parameters, counts, shards, timings).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from bigcos import io, pairs, shards, storage
from bigcos.errors import UserError
from bigcos.log_reader import read_log
from bigcos.options import opt

Duplicates = Literal["sum", "max", "last"]
Split = Literal["none", "random", "time", "users"]


# --------------------------------------------------------------------------- the result
@dataclass
class Interactions:
    """An interaction matrix with its vocabularies and optional held-out part.

    ``train`` and ``test`` are CSR float32 of shape (n_users, n_items) with sorted indices and no
    duplicates. ``user_ids[i]`` / ``item_ids[j]`` are the original ids of row i / column j.
    ``heldout_users`` (strong generalisation split only) marks users whose ``train`` row is their
    fold-in part: a model must not be fit on those rows (:attr:`fit_rows`, :attr:`fit_train`,
    :attr:`fit_matrix`).
    """

    train: sp.csr_matrix
    test: sp.csr_matrix | None
    user_ids: pa.Array
    item_ids: pa.Array
    heldout_users: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """(n_users, n_items)."""
        return self.train.shape

    @property
    def fit_rows(self) -> np.ndarray:
        """Rows a model may be fit on: every row but the held-out users' (strong
        generalisation), as sorted int64 indices of shape (n_fit,). The one definition used by
        every model and report."""
        n = self.shape[0]
        if self.heldout_users is None:
            return np.arange(n)
        return np.flatnonzero(~np.asarray(self.heldout_users, bool))

    @property
    def fit_train(self) -> sp.csr_matrix:
        """``train[fit_rows]``, shape (n_fit, n_items): the matrix a model is fit on (``train``
        itself, no copy, when no user is held out)."""
        rows = self.fit_rows
        return self.train if len(rows) == self.train.shape[0] else self.train[rows]

    @property
    def fit_matrix(self) -> sp.csr_matrix:
        """``train`` with the rows outside :attr:`fit_rows` emptied, shape (n_users, n_items):
        what a model may be fit on, row-aligned with ``train``."""
        rows = self.fit_rows
        if len(rows) == self.train.shape[0]:
            return self.train
        keep = np.zeros(self.train.shape[0], np.float32)
        keep[rows] = 1.0
        out = (sp.diags(keep) @ self.train).tocsr()
        out.eliminate_zeros()
        return out


@dataclass(frozen=True)
class IngestOptions:
    """Parameters of :func:`ingest`: the first twelve decide the matrices, ``shard_nnz`` their
    layout on disk, ``memory_limit`` and ``streaming`` only speed and memory."""

    user_col: str = opt("user_id", "Column of user ids.")
    item_col: str = opt("item_id", "Column of item ids.")
    value_col: str | None = opt("value", "Column of interaction strengths; if absent every row "
                                         "counts 1.")
    time_col: str | None = opt("timestamp", "Column of timestamps (needed by split time and "
                                            "duplicates last).")
    duplicates: Duplicates = opt("sum", "How repeated (user, item) rows combine; 'last' by "
                                        "time.")
    threshold: float | None = opt(None, "Binarise: keep value >= threshold as 1, drop the rest "
                                        "(e.g. 4 for ratings).")
    min_user: int = opt(1, "Minimum interactions per user (iterated with min_item until "
                           "stable).")
    min_item: int = opt(1, "Minimum interactions per item.")
    split: Split = opt("none", "Held-out protocol: random per-user fraction, global time "
                               "cut-off, or held-out users (strong generalisation).")
    test_fraction: float = opt(0.2, "Fraction of interactions held out (per user for "
                                    "random/users, overall for time).")
    heldout_users: float = opt(0.2, "Fraction of users held out (split users).")
    seed: int = opt(0, "Seed of the split.")
    shard_nnz: int = opt(50_000_000, "Non-zeros (train + test) per shard at most; a shard "
                                     "holds whole users (one user above it is a shard alone).",
                         minimum=1)
    memory_limit: str | None = opt(None, "Peak memory of ingest, e.g. 4GiB (default: half of "
                                         "this machine's memory); a log beyond it is streamed "
                                         "through spill files.", speed_only=True)
    streaming: Literal["auto", "on", "off"] = opt("auto", "Out-of-core build: auto (when the "
                                                          "in-memory one would exceed "
                                                          "memory_limit), on or off.",
                                                  speed_only=True)


# --------------------------------------------------------------------------- building
def _split(rows: np.ndarray, n_users: int, times: np.ndarray | None, opts: IngestOptions
           ) -> tuple[np.ndarray, np.ndarray | None]:
    """Decide which interactions are held out. Returns (test mask, held-out users mask or None).

    ``rows`` is sorted (canonical order), so the draws depend only on the matrix and the seed.
    - random: per user, round(fraction · count) of its interactions, chosen uniformly
      (users with one interaction keep it in train);
    - time: the globally latest ``fraction`` of interactions (one cut-off time for everyone);
    - users: a ``heldout_users`` fraction of users; for each, ``test_fraction`` of their
      interactions is test and the rest their fold-in (the strong-generalisation protocol).

    The streamed path (:mod:`bigcos.streamed_ingest`) computes the same masks shard by shard.
    """
    test = np.zeros(len(rows), bool)
    if opts.split == "none":
        return test, None
    if opts.split == "time":
        if times is None:
            raise UserError("--split time needs a timestamp column")
        cutoff = np.quantile(times, 1.0 - opts.test_fraction, method="higher")
        return times >= cutoff if opts.test_fraction > 0 else test, None
    heldout, state = pairs.split_rng_state(n_users, opts.split, opts.heldout_users, opts.seed)
    eligible = heldout if heldout is not None else np.ones(n_users, bool)
    noise = pairs.split_noise(state, 0, len(rows))
    return pairs.heldout_by_rank(rows, noise, n_users, opts.test_fraction, eligible), heldout


def build(log: str | os.PathLike, opts: IngestOptions = IngestOptions()
          ) -> tuple[Interactions, dict]:
    """Read ``log`` and build the matrices in memory (nothing is written).

    Parameters
    ----------
    log : str or path
        A Parquet file or a directory of Parquet files.
    opts : IngestOptions

    Returns
    -------
    interactions : Interactions
        ``train`` (and ``test``) CSR float32 of shape (n_users, n_items).
    counts : dict
        Rows read, pairs, duplicates, filtered, users, items, non-zeros, held-out users.
    """
    log = storage.as_path(log)
    _validate(opts)
    need_time = opts.split == "time" or opts.duplicates == "last"
    cols, n_rows = read_log(log, user_col=opts.user_col, item_col=opts.item_col,
                            value_col=opts.value_col, time_col=opts.time_col,
                            need_time=need_time)
    rows, items, vals, times = pairs.combine(cols.users, cols.items, cols.values, cols.times,
                                             (len(cols.user_vocab), len(cols.item_vocab)),
                                             opts.duplicates)
    counts = {"log_rows": n_rows, "pairs": len(rows), "duplicate_rows": n_rows - len(rows)}
    del cols.users, cols.items, cols.values, cols.times
    keep = np.ones(len(rows), bool)
    if opts.threshold is not None:
        keep = vals >= opts.threshold
        vals = np.ones_like(vals)
        counts["below_threshold"] = int((~keep).sum())
    n_users, n_items = len(cols.user_vocab), len(cols.item_vocab)
    if opts.min_user > 1 or opts.min_item > 1:
        sub = np.flatnonzero(keep)
        kept = pairs.iterated_min_counts(rows[sub], items[sub], n_users, n_items,
                                         opts.min_user, opts.min_item)
        keep[sub[~kept]] = False
    rows, items, vals = rows[keep], items[keep], vals[keep]
    times = times[keep] if times is not None else None
    if len(rows) == 0:
        raise UserError(f"{log}: no interactions left after threshold and minimum-count filters")
    # drop users/items left without interactions and renumber, keeping sorted order
    used_u = np.flatnonzero(np.bincount(rows, minlength=n_users))
    used_i = np.flatnonzero(np.bincount(items, minlength=n_items))
    user_ids = cols.user_vocab.take(pa.array(used_u))
    item_ids = cols.item_vocab.take(pa.array(used_i))
    remap_u = np.full(n_users, -1, np.int32)
    remap_u[used_u] = np.arange(len(used_u), dtype=np.int32)
    remap_i = np.full(n_items, -1, np.int32)
    remap_i[used_i] = np.arange(len(used_i), dtype=np.int32)
    rows, items = remap_u[rows], remap_i[items]
    shape = (len(used_u), len(used_i))
    test_mask, heldout = _split(rows, shape[0], times, opts)
    train = pairs.csr(rows[~test_mask], items[~test_mask], vals[~test_mask], shape)
    test = (pairs.csr(rows[test_mask], items[test_mask], vals[test_mask], shape)
            if opts.split != "none" else None)
    counts.update(users=shape[0], items=shape[1], train_nnz=int(train.nnz),
                  test_nnz=int(test.nnz) if test is not None else 0,
                  heldout_users=int(heldout.sum()) if heldout is not None else 0)
    return Interactions(train, test, user_ids, item_ids, heldout), counts


def _validate(opts: IngestOptions) -> None:
    if opts.duplicates not in ("sum", "max", "last"):
        raise UserError(f"duplicates: unknown rule '{opts.duplicates}' (sum, max or last)")
    if opts.split not in ("none", "random", "time", "users"):
        raise UserError(f"split: unknown protocol '{opts.split}' (none, random, time, users)")
    if not 0.0 <= opts.test_fraction < 1.0:
        raise UserError(f"test fraction must be in [0, 1), got {opts.test_fraction}")
    if not 0.0 < opts.heldout_users < 1.0 and opts.split == "users":
        raise UserError(f"held-out user fraction must be in (0, 1), got {opts.heldout_users}")
    if opts.min_user < 1 or opts.min_item < 1:
        raise UserError("minimum interaction counts must be >= 1")
    if opts.shard_nnz < 1:
        raise UserError(f"shard_nnz must be >= 1, got {opts.shard_nnz}", parameter="shard_nnz")
    if opts.streaming not in ("auto", "on", "off"):
        raise UserError(f"streaming: unknown mode '{opts.streaming}' (auto, on or off)",
                        parameter="streaming")
    memory_limit_bytes(opts)


def memory_limit_bytes(opts: IngestOptions) -> int:
    """``opts.memory_limit`` in bytes (default: :func:`bigcos.memory.default_limit`, half of
    the machine)."""
    from bigcos.memory import default_limit
    from bigcos.options import parse_size

    if opts.memory_limit is None:
        return default_limit()
    try:
        return parse_size(opts.memory_limit)
    except ValueError as exc:
        raise UserError(f"memory_limit: {exc}", parameter="memory_limit") from None


# --------------------------------------------------------------------------- disk
def save(directory: Path, data: Interactions, shard_nnz: int | None = None) -> dict:
    """Write ``data`` into an existing ``directory`` (see :func:`ingest` for atomicity).

    Parameters
    ----------
    directory : Path
    data : Interactions
        Written as train/test shards (:mod:`bigcos.shards`), users.parquet, items.parquet (no
        manifest).
    shard_nnz : int, optional
        Non-zeros per shard at most (default: one shard).

    Returns
    -------
    dict
        The manifest's ``shards`` section.
    """
    section = shards.write_in_memory(directory, data.train, data.test,
                                     shard_nnz or max(data.train.nnz, 1) + (
                                         data.test.nnz if data.test is not None else 0))
    save_vocabularies(directory, data.user_ids, data.item_ids, data.heldout_users)
    return section


def save_vocabularies(directory: Path, user_ids: pa.Array, item_ids: pa.Array,
                      heldout_users: np.ndarray | None) -> None:
    """Write users.parquet (index, user_id[, heldout]) and items.parquet (index, item_id)."""
    users = {"index": pa.array(np.arange(len(user_ids), dtype=np.int32)), "user_id": user_ids}
    if heldout_users is not None:
        users["heldout"] = pa.array(heldout_users)
    io.write_table(directory / "users.parquet", pa.table(users))
    io.write_table(directory / "items.parquet", pa.table({
        "index": pa.array(np.arange(len(item_ids), dtype=np.int32)), "item_id": item_ids}))


def in_memory_bytes(log: Path, opts: IngestOptions) -> int:
    """Estimated peak memory of :func:`build` on ``log`` (from the row count in its Parquet
    metadata): ``IN_MEMORY_BYTES_PER_ROW`` per row, more with timestamps."""
    rows = io.open_dataset(log).count_rows()
    need_time = opts.split == "time" or opts.duplicates == "last"
    return rows * IN_MEMORY_BYTES_PER_ROW[need_time]


IN_MEMORY_BYTES_PER_ROW = {False: 60, True: 110}


def streams(log: str | os.PathLike, opts: IngestOptions) -> bool:
    """Whether :func:`ingest` builds ``log`` out of core (:mod:`bigcos.streamed_ingest`):
    ``streaming="on"``, or "auto" and the in-memory build would exceed ``opts.memory_limit``
    beside what this process already holds. Only that build runs Dask tasks."""
    from bigcos.memory import rss_bytes

    if opts.streaming != "auto":
        return opts.streaming == "on"
    return in_memory_bytes(storage.as_path(log), opts) > memory_limit_bytes(opts) - rss_bytes()


def ingest(log: str | os.PathLike, out: str | os.PathLike, options: IngestOptions | None = None,
           overwrite: bool = False, items: str | os.PathLike | None = None,
           client=None) -> Interactions:
    """Build the matrices of ``log`` and write a matrix directory at ``out`` atomically.

    The matrices are built in memory when that fits ``options.memory_limit`` (or
    ``streaming="off"``), else out of core (:mod:`bigcos.streamed_ingest`); both give the
    same vocabularies, split and CSR arrays, written as row-range shards (:mod:`bigcos.shards`).

    Parameters
    ----------
    log : str or path
        A Parquet file or a directory of Parquet files (columns named by ``options``).
    out : str or path
        The matrix directory to write.
    options : IngestOptions, optional
        Column names, duplicate rule, threshold, minimum counts, split, shard size, memory
        limit (default: all defaults).
    overwrite : bool
        Replace an existing ``out``.
    items : str or path, optional
        An item metadata table (e.g. titles and genres); its path is recorded in the manifest
        for later commands (reports, ``bigcos similar``).
    client : distributed.Client, optional
        Where the out-of-core build's partition and shard tasks run (None: threads here).

    Returns
    -------
    Interactions
        ``train`` (and ``test``) CSR float32 of shape (n_users, n_items). Built in memory:
        peak memory about the COO form of the log plus the CSR result. Built out of core:
        ``train``/``test`` are read from the shards when first used (peak: ``memory_limit``).
    """
    from bigcos.dask_tasks import where_tasks_run
    from bigcos.streamed_ingest import build_streamed, effective_shard_nnz

    opts = options or IngestOptions()
    _validate(opts)
    timings = io.Timings()
    log = storage.as_path(log)
    if items is not None and not storage.as_path(items).is_file():
        raise UserError(f"{items}: no such item metadata file")
    limit = memory_limit_bytes(opts)
    shard_nnz = effective_shard_nnz(opts.shard_nnz, limit)
    streamed = streams(log, opts)
    if streamed and isinstance(storage.as_path(out), storage.StorePath):
        raise UserError(f"{out}: the out-of-core ingest (streaming '{opts.streaming}', a log "
                        f"beyond the memory limit) writes a local directory; give a local out "
                        f"and copy it to the store", parameter="streaming")
    with io.atomic_output_dir(out, overwrite=overwrite) as tmp:
        if streamed:
            with timings("streamed_build"):
                result = build_streamed(log, tmp, opts, limit, client)
            with timings("write"):
                save_vocabularies(tmp, result.user_ids, result.item_ids, result.heldout_users)
            section, counts = result.shards, result.counts
        else:
            with timings("read_and_build"):
                data, counts = build(log, opts)
            with timings("write"):
                section = save(tmp, data, shard_nnz)
        inputs = {"log": str(log.resolve()), "files": io.fingerprint(log)}
        if items is not None:
            inputs["items"] = str(storage.resolve(items))
        io.write_manifest(tmp, "ingest", parameters=opts.__dict__, timings=timings,
                          inputs=inputs, counts=counts, shards=section,
                          build={"streamed": streamed, "memory_limit_bytes": limit,
                                 "tasks": where_tasks_run(client) if streamed else None})
    if streamed:
        return _ShardedInteractions(Path(out), result.user_ids, result.item_ids,
                                    result.heldout_users)
    return data


class _ShardedInteractions(Interactions):
    """:class:`Interactions` of a matrix directory whose ``train``/``test`` are read from its
    shards (and kept) on first access."""

    def __init__(self, directory: Path, user_ids: pa.Array, item_ids: pa.Array,
                 heldout_users: np.ndarray | None):
        self._shards = shards.MatrixShards(directory)
        self._loaded: dict[str, sp.csr_matrix | None] = {}
        self.user_ids, self.item_ids, self.heldout_users = user_ids, item_ids, heldout_users

    def _part(self, part: str) -> sp.csr_matrix | None:
        if part not in self._loaded:
            self._loaded[part] = self._shards.load_matrix(part)
        return self._loaded[part]

    @property
    def train(self) -> sp.csr_matrix:
        return self._part("train")

    @property
    def test(self) -> sp.csr_matrix | None:
        return self._part("test")

    @property
    def shape(self) -> tuple[int, int]:
        return self._shards.shape


def load_matrix(directory: str | os.PathLike) -> Interactions:
    """Read a matrix directory written by :func:`ingest` (its shards stacked).

    Parameters
    ----------
    directory : str or path

    Returns
    -------
    Interactions
        ``train`` CSR (n_users, n_items) (and ``test`` CSR or None) with index-aligned
        ``user_ids`` / ``item_ids`` (pyarrow arrays of the original ids) and ``heldout_users``
        (bool (n_users,) or None). Memory: the whole matrices; stages that run per shard use
        :class:`bigcos.shards.MatrixShards` instead.
    """
    matrix = shards.MatrixShards(directory)
    d = matrix.directory
    users = io.read_table(d / "users.parquet")
    items = io.read_table(d / "items.parquet")
    heldout = (users.column("heldout").to_numpy().astype(bool)
               if "heldout" in users.column_names else None)
    return Interactions(matrix.load_matrix("train"), matrix.load_matrix("test"),
                        users.column("user_id").combine_chunks(),
                        items.column("item_id").combine_chunks(), heldout)
