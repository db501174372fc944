"""Streamed reading of interaction logs: Parquet record batches -> compact int32 codes and
sorted id vocabularies (the first stage of :func:`bigcos.matrix.ingest`).

Every batch is validated and its ids dictionary-encoded on a thread pool; the batches'
vocabularies are then merged into one sorted vocabulary per side (integers numerically, strings
lexicographically), so the codes do not depend on the order of rows or files in the log.
Memory: per row of the log, 8 bytes of codes + 4 of value (+ 8 of timestamp when asked for),
plus a few record batches. The log itself is never held whole.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from bigcos import io
from bigcos.errors import UserError

BATCH_ROWS = 1 << 20

@dataclass
class LogColumns:
    """Columns of a log as compact arrays aligned by row (m rows); codes index the sorted
    vocabularies."""

    users: np.ndarray  # int32 codes into user_vocab
    items: np.ndarray  # int32 codes into item_vocab
    values: np.ndarray  # float32
    times: np.ndarray | None  # int64, or None when not needed
    user_vocab: pa.Array
    item_vocab: pa.Array


def _check_schema(log: Path, schema: pa.Schema, wanted: dict[str, str | None],
                  need_time: bool) -> dict:
    """Validate column presence and types; ``wanted`` and the result map each role (user,
    item, value, time) to a column name or None."""
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
        "user": field("user id", wanted["user"], True),
        "item": field("item id", wanted["item"], True),
        "value": field("value", wanted["value"], False),
        "time": field("timestamp", wanted["time"], need_time),
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
class IdPart:
    """One record batch's ids in a compact form, mapped to global codes by :func:`_merge_vocab`.

    Integer ids: ``codes`` are ``id - base`` as uint32 when the batch's id range fits, else the
    raw ids as int64 (``base`` 0). String ids: ``codes`` are int32 indices into ``dictionary``.
    """

    codes: np.ndarray
    type: pa.DataType
    base: int = 0
    top: int = 0  # largest code (integer ids)
    dictionary: pa.Array | None = None


def encode_ids(column: pa.ChunkedArray | pa.Array) -> IdPart:
    if pa.types.is_integer(column.type):
        ids = column.to_numpy(zero_copy_only=False)
        lo, hi = int(ids.min()), int(ids.max())
        if hi - lo < 2**32:
            return IdPart((ids - lo).astype(np.uint32), column.type, lo, hi - lo)
        return IdPart(ids.astype(np.int64), column.type, 0, hi)
    encoded = pc.dictionary_encode(column)
    if isinstance(encoded, pa.ChunkedArray):
        encoded = encoded.combine_chunks()
    return IdPart(encoded.indices.to_numpy(zero_copy_only=False).astype(np.int32),
                   column.type, dictionary=encoded.dictionary)


def _merge_vocab(parts: list[IdPart]) -> tuple[np.ndarray, pa.Array]:
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


def _merge_dictionaries(parts: list[IdPart]) -> tuple[np.ndarray, pa.Array]:
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


def open_log(log: Path, *, user_col: str, item_col: str, value_col: str | None,
             time_col: str | None, need_time: bool) -> tuple:
    """Open ``log`` and check its columns. Returns (dataset, ``{role: column or None}``) with
    roles user, item, value, time (None when absent or not needed)."""
    dataset = io.open_dataset(log)
    cols = _check_schema(log, dataset.schema, {"user": user_col, "item": item_col,
                                               "value": value_col, "time": time_col}, need_time)
    if not need_time:
        cols["time"] = None
    return dataset, cols


def map_batches(log: Path, dataset, cols: dict, need_time: bool, batch_rows: int,
                fn: Callable, in_flight: int | None = None, readahead: bool = True
                ) -> Iterator[tuple[Any, int]]:
    """Apply ``fn(log, batch, cols, offset)`` to every record batch of ``dataset`` on a thread
    pool, yielding ``(result, batch rows)`` in the order of the log.

    At most ``in_flight`` batches (default two per core) are in work, so memory holds that
    many batches and results, plus the reader's buffers: several row groups read ahead, or
    with ``readahead=False`` one file at a time through a 1 MiB buffered stream (see
    :func:`_record_batches`). Unreadable files are UserErrors naming ``log``.
    """
    wanted = [c for c in (cols["user"], cols["item"], cols["value"],
                          cols["time"] if need_time else None) if c]
    workers = os.cpu_count() or 1
    limit = in_flight or 2 * workers
    try:
        with ThreadPoolExecutor(min(workers, limit)) as pool:
            pending: deque = deque()
            offset = 0
            for batch in _record_batches(dataset, wanted, batch_rows, readahead):
                if batch.num_rows:
                    pending.append((pool.submit(fn, log, batch, cols, offset), batch.num_rows))
                    offset += batch.num_rows
                while len(pending) > limit:
                    future, n = pending.popleft()
                    yield future.result(), n
            while pending:
                future, n = pending.popleft()
                yield future.result(), n
    except (pa.ArrowInvalid, OSError) as exc:
        raise UserError(f"{log}: cannot be read as Parquet ({io._first_line(exc)})") from None


def _record_batches(dataset, columns: list[str], batch_rows: int, readahead: bool
                    ) -> Iterator[pa.RecordBatch]:
    """The log's record batches in the order of its files.

    With ``readahead``, arrow's dataset scanner (fast, holds several row groups). Without,
    each file is read through a buffered stream without pre-buffering, which holds about one
    column chunk per column (unless a column is a hive partition key: then the scanner)."""
    if readahead or not isinstance(dataset, pads.FileSystemDataset):
        yield from dataset.to_batches(columns=columns, batch_size=batch_rows)
        return
    schema = pa.schema([dataset.schema.field(c) for c in columns])
    options = pads.ParquetFragmentScanOptions(use_buffered_stream=True, buffer_size=1 << 20,
                                              pre_buffer=False)
    for fragment in dataset.get_fragments():
        if not set(columns) <= set(fragment.physical_schema.names):  # a partition key
            yield from fragment.to_batches(schema=dataset.schema, columns=columns,
                                           batch_size=batch_rows, batch_readahead=1,
                                           fragment_scan_options=options)
            continue
        reader = pq.ParquetFile(fragment.path, buffer_size=1 << 20, pre_buffer=False,
                                filesystem=dataset.filesystem)
        for batch in reader.iter_batches(batch_size=batch_rows, columns=columns,
                                         use_threads=False):
            yield batch if batch.schema.equals(schema) else batch.cast(schema)


def check_ids(log: Path, batch: pa.RecordBatch, cols: dict, offset: int) -> None:
    """UserError naming the column and row of the first null id of ``batch``."""
    for role in ("user", "item"):
        col = batch.column(cols[role])
        if col.null_count:
            raise UserError(f"{log}: column '{cols[role]}' has null ids "
                            f"(first at row {offset + _first_null(col)})")


def encode_batch(log: Path, batch: pa.RecordBatch, cols: dict, offset: int) -> tuple:
    """One batch's (user IdPart, item IdPart, float32 values, int64 times or None)."""
    check_ids(log, batch, cols, offset)
    return (encode_ids(batch.column(cols["user"])), encode_ids(batch.column(cols["item"])),
            values_of(log, batch, cols["value"], offset),
            times_of(batch, cols["time"]) if cols["time"] else None)


def read_log(log: Path, *, user_col: str, item_col: str, value_col: str | None,
             time_col: str | None, need_time: bool) -> tuple[LogColumns, int]:
    """Stream a log in record batches into compact columns.

    Batches are validated and their ids made compact on a thread pool (numpy and pyarrow
    release the GIL), with at most two batches per core in flight, so memory holds the compact
    columns plus a few record batches.

    Parameters
    ----------
    log : Path
        A Parquet file or a directory of Parquet files (hive partitions included).
    user_col, item_col : str
        Id columns (integer or string); required, no nulls.
    value_col : str or None
        Interaction strength (numeric, finite, >= 0); None or absent: every row counts 1.
    time_col : str or None
        Timestamp column (integer, timestamp or date); read only when ``need_time``.
    need_time : bool
        Whether timestamps are needed (and ``time_col`` required).

    Returns
    -------
    columns : LogColumns
        ``users``/``items`` int32 codes (m,), ``values`` float32 (m,), ``times`` int64 (m,) or
        None, and the sorted vocabularies.
    rows : int
        Rows read, m.
    """
    dataset, cols = open_log(log, user_col=user_col, item_col=item_col, value_col=value_col,
                             time_col=time_col, need_time=need_time)
    parts: list[tuple] = []
    rows = 0
    for part, n in map_batches(log, dataset, cols, need_time, BATCH_ROWS, encode_batch):
        parts.append(part)
        rows += n
    if rows == 0:
        raise UserError(f"{log}: the log has no rows")
    user_parts, item_parts, values, times = (list(x) for x in zip(*parts, strict=True))
    del parts
    users, user_vocab = _merge_vocab(user_parts)
    del user_parts
    items, item_vocab = _merge_vocab(item_parts)
    del item_parts
    return LogColumns(users, items, np.concatenate(values),
                    np.concatenate(times) if need_time else None, user_vocab, item_vocab), rows


def _first_null(col: pa.Array) -> int:
    return int(pc.index(pc.is_null(col), True).as_py())


def values_of(log: Path, batch: pa.RecordBatch, name: str | None, offset: int) -> np.ndarray:
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


def times_of(batch: pa.RecordBatch, name: str) -> np.ndarray:
    col = batch.column(name)
    if pa.types.is_date(col.type):
        col = col.cast(pa.date64())
    # a missing time sorts first: it never wins "last", and lands in train for a time split
    col = pc.fill_null(col.cast(pa.int64()), np.iinfo(np.int64).min)
    return col.to_numpy(zero_copy_only=False)
