"""Interaction logs to CSR matrices with id vocabularies, filters and held-out splits.

Reading the log (streamed, into codes and vocabularies) is :mod:`bigcos.log_reader`; this module
builds, filters, splits, saves and loads the matrices. Pipeline of :func:`ingest` (every step
streams or works on compact arrays; no whole-log frame)::

    Parquet record batches ──dictionary-encode ids per batch──▶ int32 codes + small dictionaries
        ──merge dictionaries (sorted vocabulary)──▶ global codes ──sort by (user, item[, time])──▶
        combine duplicates ──▶ binarise ──▶ min-count filters (iterated) ──▶ split ──▶ CSR

Memory: per row of the log, 8 bytes of codes + 4 of value (+ 8 of timestamp when a split by time
or ``--duplicates last`` needs it) + 16 during the sort, i.e. the size of the resulting COO
matrix, plus one record batch. The log itself is never held whole.

Vocabularies are sorted (integers numerically, strings lexicographically), so the matrix does
not depend on the order of rows or files in the log. Row i of every matrix is ``user_ids[i]``,
column j is ``item_ids[j]``.

On disk (a *matrix directory*)::

    train.npz        scipy.sparse CSR float32, (n_users, n_items)
    test.npz         held-out interactions, same shape (only with a split)
    users.parquet    index (int32), user_id (original type)[, heldout (bool)]
    items.parquet    index (int32), item_id (original type)
    manifest.json    inputs (sizes, sha256), parameters, counts, versions, timings
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from bigcos import io, storage
from bigcos.errors import UserError
from bigcos.log_reader import LogColumns, read_log
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
        n = self.train.shape[0]
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
    """Parameters of :func:`ingest`; every one changes the resulting matrix."""

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


# --------------------------------------------------------------------------- building
def _combine(cols: LogColumns, how: Duplicates) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                       np.ndarray | None]:
    """Order by (user, item) and combine duplicate pairs. Returns rows, cols, vals, times.

    Within one (user, item) pair: ``sum`` adds values, ``max`` keeps the largest, ``last`` keeps
    the value of the latest timestamp (ties: the row read last). ``times`` of a pair is its
    latest timestamp. Without timestamps, ``sum`` is scipy's O(nnz) COO→CSR conversion; the
    other rules sort the (user, item) keys once and reduce over runs of equal keys.
    """
    shape = (len(cols.user_vocab), len(cols.item_vocab))
    if cols.times is None and how == "sum":
        csr = sp.coo_matrix((cols.values, (cols.users, cols.items)), shape=shape).tocsr()
        rows = np.repeat(np.arange(shape[0], dtype=np.int32), np.diff(csr.indptr))
        return rows, csr.indices.astype(np.int32, copy=False), csr.data, None
    n_items = max(shape[1], 1)
    key = cols.users.astype(np.int64) * n_items + cols.items
    order = np.argsort(key)  # not stable: ties within a pair are resolved explicitly below
    key = key[order]
    first = np.flatnonzero(np.concatenate(([True], key[1:] != key[:-1])))
    if how == "sum":
        vals = np.add.reduceat(cols.values[order].astype(np.float64), first).astype(np.float32)
    elif how == "max":
        vals = np.maximum.reduceat(cols.values[order], first)
    else:  # last: the latest timestamp, and among equal times the row read last
        t = cols.times[order]
        latest = np.maximum.reduceat(t, first)
        is_latest = t == np.repeat(latest, np.diff(np.append(first, len(key))))
        winner = np.maximum.reduceat(np.where(is_latest, order, -1), first)
        vals = cols.values[winner]
    times = np.maximum.reduceat(cols.times[order], first) if cols.times is not None else None
    key = key[first]
    return (key // n_items).astype(np.int32), (key % n_items).astype(np.int32), vals, times


def _iterated_min_counts(rows: np.ndarray, cols: np.ndarray, n_users: int, n_items: int,
                         min_user: int, min_item: int) -> np.ndarray:
    """Boolean mask of interactions kept after dropping sparse users/items until stable."""
    keep = np.ones(len(rows), bool)
    if min_user <= 1 and min_item <= 1:
        return keep
    while True:
        u_count = np.bincount(rows[keep], minlength=n_users)
        i_count = np.bincount(cols[keep], minlength=n_items)
        new = keep & (u_count[rows] >= min_user) & (i_count[cols] >= min_item)
        if new.sum() == keep.sum():
            return new
        keep = new


def _split(rows: np.ndarray, n_users: int, times: np.ndarray | None, opts: IngestOptions
           ) -> tuple[np.ndarray, np.ndarray | None]:
    """Decide which interactions are held out. Returns (test mask, held-out users mask or None).

    ``rows`` is sorted (canonical order), so the draws depend only on the matrix and the seed.
    - random: per user, round(fraction · count) of its interactions, chosen uniformly
      (users with one interaction keep it in train);
    - time: the globally latest ``fraction`` of interactions (one cut-off time for everyone);
    - users: a ``heldout_users`` fraction of users; for each, ``test_fraction`` of their
      interactions is test and the rest their fold-in (the strong-generalisation protocol).
    """
    rng = np.random.default_rng(opts.seed)
    test = np.zeros(len(rows), bool)
    if opts.split == "none":
        return test, None
    if opts.split == "time":
        if times is None:
            raise UserError("--split time needs a timestamp column")
        cutoff = np.quantile(times, 1.0 - opts.test_fraction, method="higher")
        return times >= cutoff if opts.test_fraction > 0 else test, None
    counts = np.bincount(rows, minlength=n_users)
    heldout = None
    eligible = np.ones(n_users, bool)
    if opts.split == "users":
        order = rng.permutation(n_users)
        heldout = np.zeros(n_users, bool)
        heldout[order[: int(round(opts.heldout_users * n_users))]] = True
        eligible = heldout
    elif opts.split != "random":
        raise UserError(f"split: unknown protocol '{opts.split}' (none, random, time, users)")
    # rank of each interaction within its user by a random key; the lowest ranks are held out
    noise = rng.random(len(rows))
    order = np.lexsort((noise, rows))
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    rank = np.empty(len(rows), np.int64)
    rank[order] = np.arange(len(rows)) - np.repeat(starts, counts)
    n_test = np.where(counts > 1, np.round(opts.test_fraction * counts), 0).astype(np.int64)
    test = (rank < n_test[rows]) & eligible[rows]
    return test, heldout


def _csr(rows, cols, vals, shape) -> sp.csr_matrix:
    indptr = np.zeros(shape[0] + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=shape[0]), out=indptr[1:])
    if indptr[-1] < np.iinfo(np.int32).max:
        indptr = indptr.astype(np.int32)
    m = sp.csr_matrix((vals.astype(np.float32, copy=False), cols.astype(np.int32), indptr),
                      shape=shape)
    m.has_sorted_indices = True
    return m


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
    rows, items, vals, times = _combine(cols, opts.duplicates)
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
        kept = _iterated_min_counts(rows[sub], items[sub], n_users, n_items,
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
    train = _csr(rows[~test_mask], items[~test_mask], vals[~test_mask], shape)
    test = (_csr(rows[test_mask], items[test_mask], vals[test_mask], shape)
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


# --------------------------------------------------------------------------- disk
def save(directory: Path, data: Interactions) -> None:
    """Write ``data`` into an existing ``directory`` (see :func:`ingest` for atomicity).

    Parameters
    ----------
    directory : Path
    data : Interactions
        Written as train.npz[, test.npz], users.parquet, items.parquet (no manifest).
    """
    io.save_npz(directory / "train.npz", data.train)
    if data.test is not None:
        io.save_npz(directory / "test.npz", data.test)
    users = {"index": pa.array(np.arange(len(data.user_ids), dtype=np.int32)),
             "user_id": data.user_ids}
    if data.heldout_users is not None:
        users["heldout"] = pa.array(data.heldout_users)
    io.write_table(directory / "users.parquet", pa.table(users))
    io.write_table(directory / "items.parquet", pa.table({
        "index": pa.array(np.arange(len(data.item_ids), dtype=np.int32)),
        "item_id": data.item_ids}))


def ingest(log: str | os.PathLike, out: str | os.PathLike, options: IngestOptions | None = None,
           overwrite: bool = False, items: str | os.PathLike | None = None) -> Interactions:
    """Build the matrices of ``log`` and write a matrix directory at ``out`` atomically.

    Parameters
    ----------
    log : str or path
        A Parquet file or a directory of Parquet files (columns named by ``options``).
    out : str or path
        The matrix directory to write.
    options : IngestOptions, optional
        Column names, duplicate rule, threshold, minimum counts, split (default: all defaults).
    overwrite : bool
        Replace an existing ``out``.
    items : str or path, optional
        An item metadata table (e.g. titles and genres); its path is recorded in the manifest
        for later commands (reports, ``bigcos similar``).

    Returns
    -------
    Interactions
        ``train`` (and ``test``) CSR float32 of shape (n_users, n_items). Peak memory: about
        the COO form of the log (see the module docstring) plus the CSR result.
    """
    opts = options or IngestOptions()
    timings = io.Timings()
    log = storage.as_path(log)
    if items is not None and not storage.as_path(items).is_file():
        raise UserError(f"{items}: no such item metadata file")
    with io.atomic_output_dir(out, overwrite=overwrite) as tmp:
        with timings("read_and_build"):
            data, counts = build(log, opts)
        with timings("write"):
            save(tmp, data)
        inputs = {"log": str(log.resolve()), "files": io.fingerprint(log)}
        if items is not None:
            inputs["items"] = str(storage.resolve(items))
        io.write_manifest(tmp, "ingest", parameters=opts.__dict__, timings=timings,
                          inputs=inputs, counts=counts)
    return data


def load_matrix(directory: str | os.PathLike) -> Interactions:
    """Read a matrix directory written by :func:`ingest`.

    Parameters
    ----------
    directory : str or path

    Returns
    -------
    Interactions
        ``train`` CSR (n_users, n_items) (and ``test`` CSR or None) with index-aligned
        ``user_ids`` / ``item_ids`` (pyarrow arrays of the original ids) and ``heldout_users``
        (bool (n_users,) or None).
    """
    d = io.require_dir(directory, "matrix", "train.npz")
    train = io.load_npz(d / "train.npz").tocsr()
    test = io.load_npz(d / "test.npz").tocsr() if (d / "test.npz").exists() else None
    users = io.read_table(d / "users.parquet")
    items = io.read_table(d / "items.parquet")
    heldout = (users.column("heldout").to_numpy().astype(bool)
               if "heldout" in users.column_names else None)
    return Interactions(train, test, users.column("user_id").combine_chunks(),
                        items.column("item_id").combine_chunks(), heldout)
