"""Interaction logs to CSR matrices with id vocabularies, filters and held-out splits.

Pipeline of :func:`ingest` (every step streams or works on compact arrays; no whole-log frame)::

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
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from bigcos import io
from bigcos.errors import UserError

Duplicates = Literal["sum", "max", "last"]
Split = Literal["none", "random", "time", "users"]
BATCH_ROWS = 1 << 20


# --------------------------------------------------------------------------- the result
@dataclass
class Interactions:
    """An interaction matrix with its vocabularies and optional held-out part.

    ``train`` and ``test`` are CSR float32 of shape (n_users, n_items) with sorted indices and no
    duplicates. ``user_ids[i]`` / ``item_ids[j]`` are the original ids of row i / column j.
    ``heldout_users`` (strong generalisation split only) marks users whose ``train`` row is their
    fold-in part: a model must not be fit on those rows (use :attr:`fit_matrix`).
    """

    train: sp.csr_matrix
    test: sp.csr_matrix | None
    user_ids: pa.Array
    item_ids: pa.Array
    heldout_users: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.train.shape

    @property
    def fit_matrix(self) -> sp.csr_matrix:
        """``train`` with the rows of held-out users emptied: what a model may be fit on."""
        if self.heldout_users is None or not self.heldout_users.any():
            return self.train
        keep = sp.diags((~self.heldout_users).astype(np.float32))
        out = (keep @ self.train).tocsr()
        out.eliminate_zeros()
        return out


@dataclass(frozen=True)
class IngestOptions:
    """Parameters of :func:`ingest`; every one changes the resulting matrix."""

    user_col: str = "user_id"
    item_col: str = "item_id"
    value_col: str | None = "value"  # None or absent column: every interaction counts 1
    time_col: str | None = "timestamp"
    duplicates: Duplicates = "sum"
    threshold: float | None = None  # keep value >= threshold, as 1.0 (binarise)
    min_user: int = 1
    min_item: int = 1
    split: Split = "none"
    test_fraction: float = 0.2
    heldout_users: float = 0.2  # for split="users": fraction of users held out
    seed: int = 0


# --------------------------------------------------------------------------- reading
@dataclass
class _Columns:
    """Columns of a log as compact arrays aligned by row."""

    users: np.ndarray  # int32 codes into user_vocab
    items: np.ndarray  # int32 codes into item_vocab
    values: np.ndarray  # float32
    times: np.ndarray | None  # int64, or None when not needed
    user_vocab: pa.Array
    item_vocab: pa.Array


def _check_schema(log: Path, schema: pa.Schema, opts: IngestOptions, need_time: bool) -> dict:
    """Validate column presence and types; return {role: column name or None}."""
    names = schema.names

    def field(role: str, name: str | None, required: bool) -> str | None:
        if name is None:
            return None
        if name not in names:
            if required:
                raise UserError(f"{log}: column '{name}' ({role}) not found; "
                                f"columns are {', '.join(names)}")
            return None
        return name

    cols = {
        "user": field("user id", opts.user_col, True),
        "item": field("item id", opts.item_col, True),
        "value": field("value", opts.value_col, False),
        "time": field("timestamp", opts.time_col, need_time),
    }
    for role in ("user", "item"):
        t = schema.field(cols[role]).type
        if pa.types.is_dictionary(t):
            t = t.value_type
        if not (pa.types.is_integer(t) or pa.types.is_string(t) or pa.types.is_large_string(t)):
            raise UserError(f"{log}: column '{cols[role]}' must hold integer or string ids, "
                            f"not {t}")
    if cols["value"]:
        t = schema.field(cols["value"]).type
        if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)):
            raise UserError(f"{log}: column '{cols['value']}' must be numeric, not {t}")
    if cols["time"]:
        t = schema.field(cols["time"]).type
        if not (pa.types.is_integer(t) or pa.types.is_timestamp(t) or pa.types.is_date(t)):
            raise UserError(f"{log}: column '{cols['time']}' must be an integer or timestamp, "
                            f"not {t}")
    return cols


@dataclass
class _IdPart:
    """One record batch's ids in a compact form, mapped to global codes by :func:`_merge_vocab`.

    Integer ids: ``codes`` are ``id - base`` as uint32 when the batch's id range fits, else the
    raw ids as int64 (``base`` 0). String ids: ``codes`` are int32 indices into ``dictionary``.
    """

    codes: np.ndarray
    type: pa.DataType
    base: int = 0
    top: int = 0  # largest code (integer ids)
    dictionary: pa.Array | None = None


def _encode(column: pa.ChunkedArray | pa.Array) -> _IdPart:
    if pa.types.is_integer(column.type):
        ids = column.to_numpy(zero_copy_only=False)
        lo, hi = int(ids.min()), int(ids.max())
        if hi - lo < 2**32:
            return _IdPart((ids - lo).astype(np.uint32), column.type, lo, hi - lo)
        return _IdPart(ids.astype(np.int64), column.type, 0, hi)
    encoded = pc.dictionary_encode(column)
    if isinstance(encoded, pa.ChunkedArray):
        encoded = encoded.combine_chunks()
    return _IdPart(encoded.indices.to_numpy(zero_copy_only=False).astype(np.int32),
                   column.type, dictionary=encoded.dictionary)


def _merge_vocab(parts: list[_IdPart]) -> tuple[np.ndarray, pa.Array]:
    """Map every batch's ids onto one sorted vocabulary: (global int32 codes, vocabulary).

    Integer ids whose overall range is at most twice the number of rows use a
    direct-address table (O(rows + range), no hashing, no sort); sparse ranges sort the
    batches' distinct ids and binary-search them; strings merge arrow dictionaries.
    """
    if parts[0].dictionary is not None:
        return _merge_dictionaries(parts)
    n_rows = sum(len(p.codes) for p in parts)
    lo = min(p.base for p in parts)
    span = max(p.base + p.top for p in parts) - lo + 1
    if span <= max(2 * n_rows, 1 << 22):  # table: 5 bytes per id in range, <= 10 per row
        present = np.zeros(span, bool)
        for p in parts:
            present[p.codes + np.int64(p.base - lo)] = True
        code_of = np.cumsum(present, dtype=np.int32 if span < 2**31 else np.int64) - 1
        vocab = np.flatnonzero(present) + lo
        codes = np.concatenate([code_of[p.codes + np.int64(p.base - lo)] for p in parts])
    else:
        vocab = np.unique(np.concatenate([np.unique(p.codes).astype(np.int64) + p.base
                                          for p in parts]))
        codes = np.concatenate([np.searchsorted(vocab, p.codes.astype(np.int64) + p.base)
                                for p in parts])
    return codes.astype(np.int32), pa.array(vocab).cast(parts[0].type)


def _merge_dictionaries(parts: list[_IdPart]) -> tuple[np.ndarray, pa.Array]:
    dicts = [p.dictionary.cast(parts[0].dictionary.type) for p in parts]
    vocab = pc.unique(pa.concat_arrays(dicts))
    vocab = vocab.take(pc.sort_indices(vocab))
    out = np.empty(sum(len(p.codes) for p in parts), np.int32)
    start = 0
    for p, d in zip(parts, dicts, strict=True):
        mapping = pc.index_in(d, value_set=vocab).to_numpy(zero_copy_only=False)
        out[start:start + len(p.codes)] = mapping.astype(np.int32)[p.codes]
        start += len(p.codes)
    return out, vocab


def _read_log(log: Path, opts: IngestOptions, need_time: bool) -> tuple[_Columns, int]:
    """Stream the log in record batches into compact columns. Returns (columns, rows read).

    Batches are validated and their ids made compact on a thread pool (numpy and pyarrow
    release the GIL),
    with at most two batches per core in flight, so memory holds the compact columns plus a
    few record batches.
    """
    dataset = io.open_dataset(log)
    cols = _check_schema(log, dataset.schema, opts, need_time)
    wanted = [c for c in (cols["user"], cols["item"], cols["value"],
                          cols["time"] if need_time else None) if c]

    def encode(batch: pa.RecordBatch, offset: int) -> tuple:
        for role in ("user", "item"):
            col = batch.column(cols[role])
            if col.null_count:
                raise UserError(f"{log}: column '{cols[role]}' has null ids "
                                f"(first at row {offset + _first_null(col)})")
        return (_encode(batch.column(cols["user"])), _encode(batch.column(cols["item"])),
                _values(log, batch, cols["value"], offset),
                _times(batch, cols["time"]) if need_time else None)

    parts: list[tuple] = []
    rows = 0
    workers = os.cpu_count() or 1
    try:
        with ThreadPoolExecutor(workers) as pool:
            pending: deque = deque()
            for batch in dataset.to_batches(columns=wanted, batch_size=BATCH_ROWS):
                if batch.num_rows:
                    pending.append(pool.submit(encode, batch, rows))
                    rows += batch.num_rows
                while len(pending) > 2 * workers:
                    parts.append(pending.popleft().result())
            parts.extend(f.result() for f in pending)
    except (pa.ArrowInvalid, OSError) as exc:
        raise UserError(f"{log}: cannot be read as Parquet ({io._first_line(exc)})") from None
    if rows == 0:
        raise UserError(f"{log}: the log has no rows")
    user_parts, item_parts, values, times = (list(x) for x in zip(*parts, strict=True))
    del parts
    users, user_vocab = _merge_vocab(user_parts)
    del user_parts
    items, item_vocab = _merge_vocab(item_parts)
    del item_parts
    return _Columns(users, items, np.concatenate(values),
                    np.concatenate(times) if need_time else None, user_vocab, item_vocab), rows


def _first_null(col: pa.Array) -> int:
    return int(pc.index(pc.is_null(col), True).as_py())


def _values(log: Path, batch: pa.RecordBatch, name: str | None, offset: int) -> np.ndarray:
    if name is None:
        return np.ones(batch.num_rows, np.float32)
    col = batch.column(name)
    if col.null_count:
        raise UserError(f"{log}: column '{name}' has null values "
                        f"(first at row {offset + _first_null(col)})")
    v = col.to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    bad = ~np.isfinite(v)
    if bad.any():
        i = int(np.argmax(bad))
        raise UserError(f"{log}: column '{name}' has a non-finite value {v[i]} at row {offset + i}")
    neg = v < 0
    if neg.any():
        i = int(np.argmax(neg))
        raise UserError(f"{log}: column '{name}' has a negative value {v[i]} at row {offset + i}; "
                        "interaction strengths must be >= 0")
    return v


def _times(batch: pa.RecordBatch, name: str) -> np.ndarray:
    col = batch.column(name)
    if pa.types.is_date(col.type):
        col = col.cast(pa.date64())
    # a missing time sorts first: it never wins "last", and lands in train for a time split
    col = pc.fill_null(col.cast(pa.int64()), np.iinfo(np.int64).min)
    return col.to_numpy(zero_copy_only=False)


# --------------------------------------------------------------------------- building
def _combine(cols: _Columns, how: Duplicates) -> tuple[np.ndarray, np.ndarray, np.ndarray,
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
    """Read ``log`` and build the matrices in memory. Returns (interactions, counts)."""
    log = Path(log)
    _validate(opts)
    need_time = opts.split == "time" or opts.duplicates == "last"
    cols, n_rows = _read_log(log, opts, need_time)
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
    """Write ``data`` into ``directory`` (which must exist; see :func:`ingest` for atomicity)."""
    sp.save_npz(directory / "train.npz", data.train, compressed=False)
    if data.test is not None:
        sp.save_npz(directory / "test.npz", data.test, compressed=False)
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

    ``items`` optionally names an item metadata table (e.g. titles and genres); its path is
    recorded in the manifest for later commands (reports, ``bigcos similar``).
    """
    opts = options or IngestOptions()
    timings = io.Timings()
    log = Path(log)
    if items is not None and not Path(items).is_file():
        raise UserError(f"{items}: no such item metadata file")
    with io.atomic_output_dir(out, overwrite=overwrite) as tmp:
        with timings("read_and_build"):
            data, counts = build(log, opts)
        with timings("write"):
            save(tmp, data)
        inputs = {"log": str(log.resolve()), "files": io.fingerprint(log)}
        if items is not None:
            inputs["items"] = str(Path(items).resolve())
        io.write_manifest(tmp, "ingest", parameters=opts.__dict__, timings=timings,
                          inputs=inputs, counts=counts)
    return data


def load_matrix(directory: str | os.PathLike) -> Interactions:
    """Read a matrix directory written by :func:`ingest`.

    Returns :class:`Interactions`: ``train`` CSR (and ``test`` CSR or None) with index-aligned
    ``user_ids`` / ``item_ids`` (pyarrow arrays of the original ids).
    """
    d = io.require_dir(directory, "matrix", "train.npz")
    train = sp.load_npz(d / "train.npz").tocsr()
    test = sp.load_npz(d / "test.npz").tocsr() if (d / "test.npz").exists() else None
    users = io.read_table(d / "users.parquet")
    items = io.read_table(d / "items.parquet")
    heldout = (users.column("heldout").to_numpy().astype(bool)
               if "heldout" in users.column_names else None)
    return Interactions(train, test, users.column("user_id").combine_chunks(),
                        items.column("item_id").combine_chunks(), heldout)
