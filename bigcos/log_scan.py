"""The two streamed passes over a log of the out-of-core ingest (:mod:`bigcos.streamed_ingest`).

1. :func:`scan_vocabularies`: the sorted user and item vocabularies (the same arrays
   :func:`bigcos.log_reader.read_log` builds) and the number of log rows of every user, holding
   only distinct ids: each batch is reduced to (distinct ids, counts) and the pending
   reductions are merged whenever they exceed a row budget.
2. :func:`spill`: every row's global codes, value and time, appended to the spill partition
   of its user (contiguous user ranges), in the order of the log.

Memory: the vocabularies and per-user counts (8-16 bytes per id), a few record batches, and
the pending reductions of pass 1 (bounded by ``merge_rows``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bigcos.errors import UserError
from bigcos.log_reader import (
    IdPart,
    check_ids,
    encode_ids,
    map_batches,
    open_log,
    times_of,
    values_of,
)


def _distinct(part: IdPart) -> tuple:
    """(distinct ids, int64 counts) of one batch's ids; ids are int64 or an arrow array."""
    if part.dictionary is not None:
        return part.dictionary, np.bincount(part.codes, minlength=len(part.dictionary))
    ids, counts = np.unique(part.codes, return_counts=True)
    return ids.astype(np.int64) + part.base, counts.astype(np.int64)


def _merge(reductions: list[tuple], value_type: pa.DataType | None) -> tuple:
    """Merge (ids, counts) reductions into one, ids sorted (as the vocabularies are)."""
    counts = np.concatenate([c for _, c in reductions])
    if value_type is None:
        ids = np.concatenate([k for k, _ in reductions])
        order = np.argsort(ids, kind="stable")
        ids = ids[order]
        first = np.flatnonzero(np.concatenate(([True], ids[1:] != ids[:-1])))
        return ids[first], np.add.reduceat(counts[order], first)
    ids = pa.concat_arrays([k.cast(value_type) for k, _ in reductions])
    table = pa.table({"id": ids, "n": counts}).group_by("id").aggregate([("n", "sum")])
    table = table.take(pc.sort_indices(table["id"]))
    return table["id"].combine_chunks(), table["n_sum"].to_numpy()


class _Counter:
    """Running (distinct ids, counts) of one id column.

    Integer ids count into a dense array over their range while it takes at most
    ``table_bytes`` (8 bytes per id in range); beyond that, and for strings, each batch's
    (distinct ids, counts) is kept pending and merged whenever ``merge_rows`` accumulate.
    ``counts=False``: only the distinct ids matter (the counts of the result are not usable).
    """

    def __init__(self, merge_rows: int, table_bytes: int, counts: bool = True):
        self.merge_rows, self.table_bytes, self.counts = merge_rows, table_bytes, counts
        self.pending: list[tuple] = []
        self.pending_rows = 0
        self.id_type: pa.DataType | None = None
        self.value_type: pa.DataType | None = None
        self.dense: np.ndarray | None = None
        self.lo = 0
        self.dense_ok = True

    def _add_dense(self, part: IdPart) -> bool:
        lo = part.base if self.dense is None else min(part.base, self.lo)
        hi = part.base + part.top + 1 if self.dense is None else max(
            part.base + part.top + 1, self.lo + len(self.dense))
        if part.codes.dtype != np.uint32 or 8 * (hi - lo) > self.table_bytes:
            return False
        if self.dense is None or lo < self.lo or hi > self.lo + len(self.dense):
            grown = np.zeros(hi - lo, np.int64)
            if self.dense is not None:
                grown[self.lo - lo:self.lo - lo + len(self.dense)] = self.dense
            self.dense, self.lo = grown, lo
        at = part.base - self.lo
        # in place: a bincount over the batch's id range would allocate (and page-fault) a
        # range-sized array per batch, several times slower for sparse id ranges
        if self.counts:
            np.add.at(self.dense[at:at + part.top + 1], part.codes, 1)
        else:  # presence only (a count of 1): a plain scatter
            self.dense[at:at + part.top + 1][part.codes] = 1
        return True

    def add(self, part: IdPart) -> None:
        if self.id_type is None:
            self.id_type = part.type
            self.value_type = part.dictionary.type if part.dictionary is not None else None
        if self.value_type is None and self.dense_ok:
            if self._add_dense(part):
                return
            self.dense_ok = False
            if self.dense is not None:
                present = np.flatnonzero(self.dense)
                self.pending.append((present + self.lo, self.dense[present]))
                self.pending_rows += len(present)
                self.dense = None
        self.pending.append(_distinct(part))
        self.pending_rows += len(self.pending[-1][1])
        if self.pending_rows > self.merge_rows and len(self.pending) > 1:
            self.pending = [_merge(self.pending, self.value_type)]
            self.pending_rows = len(self.pending[0][1])

    def result(self) -> tuple[pa.Array, np.ndarray]:
        if self.dense is not None:
            present = np.flatnonzero(self.dense)
            ids, counts = present.astype(np.int64) + self.lo, self.dense[present]
        else:
            ids, counts = _merge(self.pending, self.value_type)
        self.pending, self.dense = [], None
        if self.value_type is None:
            ids = pa.array(ids).cast(self.id_type)
        return ids, counts


def _distinct_batch(log: Path, batch: pa.RecordBatch, cols: dict, offset: int) -> tuple:
    check_ids(log, batch, cols, offset)
    return encode_ids(batch.column(cols["user"])), encode_ids(batch.column(cols["item"]))


def scan_vocabularies(log: Path, *, columns: dict[str, str | None], need_time: bool,
                      batch_rows: int, merge_rows: int, table_bytes: int
                      ) -> tuple[pa.Array, np.ndarray, pa.Array, int]:
    """Pass 1: the sorted vocabularies and log rows per user.

    Parameters
    ----------
    log : Path
    columns : dict
        ``{"user", "item", "value", "time"}`` column names (as :class:`IngestOptions`).
    need_time : bool
    batch_rows : int
        Rows per record batch.
    merge_rows : int
        Pending distinct ids (per side) before they are merged.
    table_bytes : int
        Largest dense count array over a range of integer ids (per side).

    Returns
    -------
    user_vocab, user_rows, item_vocab, rows
        Vocabularies (arrow, sorted), int64 log rows per user (n_users,), rows of the log.
    """
    dataset, cols = open_log(log, user_col=columns["user"], item_col=columns["item"],
                             value_col=columns["value"], time_col=columns["time"],
                             need_time=need_time)
    users = _Counter(merge_rows, table_bytes)
    items = _Counter(merge_rows, table_bytes, counts=False)  # only the vocabulary is needed
    rows = 0
    for (user_part, item_part), n in map_batches(log, dataset, cols, False, batch_rows,
                                                 _distinct_batch, in_flight=2, readahead=False):
        users.add(user_part)
        items.add(item_part)
        rows += n
    if rows == 0:
        raise UserError(f"{log}: the log has no rows")
    user_vocab, user_rows = users.result()
    item_vocab, _ = items.result()
    return user_vocab, user_rows, item_vocab, rows


class CodeMap:
    """Original ids → int32 codes into a sorted vocabulary (every id must be in it).

    Integer ids use a direct-address table (4 bytes per id in the vocabulary's range, from 0
    when that at most doubles it) when it takes at most ``table_bytes``, else a binary search
    of the sorted batch; string ids a hash lookup of each batch's dictionary.
    """

    def __init__(self, vocab: pa.Array, table_bytes: int):
        self.strings = not pa.types.is_integer(vocab.type)
        self.vocab = vocab if self.strings else vocab.to_numpy().astype(np.int64)
        self.table = None
        if not self.strings and len(self.vocab):
            self.lo = int(self.vocab[0])
            span = int(self.vocab[-1]) - self.lo + 1
            if 0 <= self.lo <= span:  # the table from id 0: ids index it without a subtraction
                span, self.lo = span + self.lo, 0
            if 4 * span <= max(table_bytes, 1 << 22):
                self.table = np.full(span, -1, np.int32)
                self.table[self.vocab - self.lo] = np.arange(len(self.vocab), dtype=np.int32)

    def __call__(self, column: pa.Array) -> np.ndarray:
        if self.strings:
            part = encode_ids(column)
            mapping = pc.index_in(part.dictionary.cast(self.vocab.type), value_set=self.vocab)
            return mapping.to_numpy(zero_copy_only=False).astype(np.int32)[part.codes]
        ids = column.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
        if self.table is not None:
            return self.table[ids - self.lo if self.lo else ids]
        order = np.argsort(ids)  # sorted queries search the vocabulary cache-friendly
        codes = np.empty(len(ids), np.int32)
        codes[order] = np.searchsorted(self.vocab, ids[order])
        return codes


def spill(log: Path, *, columns: dict[str, str | None], need_time: bool, batch_rows: int,
          user_map: CodeMap, item_map: CodeMap, user_starts: np.ndarray,
          part_dirs: list[Path]) -> None:
    """Pass 2: append every row (user code, item code, value[, time]) to its partition.

    Partition p holds the users ``user_starts[p] <= code < user_starts[p + 1]``; its rows are
    appended in the order of the log to ``users.i32``, ``items.i32``, ``values.f32`` (and
    ``times.i64``) in ``part_dirs[p]``.
    """
    dataset, cols = open_log(log, user_col=columns["user"], item_col=columns["item"],
                             value_col=columns["value"], time_col=columns["time"],
                             need_time=need_time)

    n_parts = len(part_dirs)
    part_type = np.uint16 if n_parts <= 1 << 16 else np.int64  # small: a radix sort
    part_of_user = np.repeat(np.arange(n_parts, dtype=part_type), np.diff(user_starts))

    def encode(log: Path, batch: pa.RecordBatch, cols: dict, offset: int) -> tuple:
        users = user_map(batch.column(cols["user"]))
        part = part_of_user[users]
        order = np.argsort(part, kind="stable")
        bounds = np.concatenate(([0], np.cumsum(np.bincount(part, minlength=n_parts))))
        arrays = {"users.i32": users, "items.i32": item_map(batch.column(cols["item"])),
                  "values.f32": values_of(log, batch, cols["value"], offset)}
        if need_time:
            arrays["times.i64"] = times_of(batch, cols["time"])
        return {name: a[order] for name, a in arrays.items()}, bounds

    files: dict = {}  # (partition, column) -> open file, kept open for the whole pass
    try:
        for (arrays, bounds), _ in map_batches(log, dataset, cols, need_time, batch_rows,
                                               encode, in_flight=2, readahead=False):
            for p in np.flatnonzero(np.diff(bounds)):
                lo, hi = bounds[p], bounds[p + 1]
                for name, a in arrays.items():
                    if (p, name) not in files:
                        files[p, name] = open(part_dirs[p] / name, "ab")  # noqa: SIM115
                    a[lo:hi].tofile(files[p, name])
    finally:
        for fh in files.values():
            fh.close()
