"""The fit rows of a sharded matrix, loaded where they are used, and their Gram operator.

A closed-form fit on a matrix of several shards (:mod:`bigcos.shards`) never stacks the
matrix: every Dask task loads its shard by path (:meth:`bigcos.shards.Shard.load`) and keeps
its *fit rows* (not a held-out user's, not a validation row), scaled by the row remedy:

    segment_s = (R X)[fit rows of shard s]        (R = diag(r), the row remedy, or I)

:func:`summarize` reduces the segments to column sums (:class:`ColumnSums`: the column remedy,
colsum, ||X~||_F^2) and to their row blocks; :class:`ShardGramOperator` applies
A = X~^T X~ with one task per row block over segments persisted on the workers (a lost worker's
segments are recomputed from the files by Dask, nothing is scattered from this process).

The row blocks of a segment are :func:`bigcos.gram.row_bounds` of the segment alone, so the
blocks, the order of the sums and therefore sigma and V are a function of the shard layout and
the data: the same on any number of workers, and the same as the in-memory path
(:func:`bigcos.gram.segment_blocks` with the shards as segments).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq
import scipy.sparse as sp

from bigcos import storage
from bigcos.column_remedies import ColumnSums, Preprocessing, column_sums, scale_rows
from bigcos.dense import RowChunks
from bigcos.gram import GramOperator, default_block_count, gram_block, row_block, row_bounds
from bigcos.shards import Shard


def read_user_rows(users_file: str, start: int, stop: int, columns: list[str]):
    """Rows [start, stop) of ``columns`` of a matrix's users.parquet, reading only the row
    groups that hold them (a pyarrow Table; path or store URL)."""
    fs, where = storage.filesystem_and_path(users_file)
    pf = pq.ParquetFile(where, filesystem=fs)
    columns = [c for c in columns if c in pf.schema_arrow.names]
    groups, first, offset = [], None, 0
    for g in range(pf.metadata.num_row_groups):
        rows = pf.metadata.row_group(g).num_rows
        if offset < stop and offset + rows > start:
            groups.append(g)
            first = offset if first is None else first
        offset += rows
    table = pf.read_row_groups(groups, columns=columns) if groups else \
        pf.schema_arrow.empty_table().select(columns)
    return table.slice(start - (first or 0), stop - start)


def fit_candidates(shard: Shard, users_file: str) -> np.ndarray:
    """bool (n_rows,): the shard's rows a model may be fit on (not a held-out user's)."""
    table = read_user_rows(users_file, shard.start, shard.stop, ["heldout"])
    if "heldout" not in table.column_names:
        return np.ones(shard.n_rows, bool)
    return ~table.column("heldout").to_numpy().astype(bool)


@dataclass(frozen=True)
class FitShard:
    """What a task needs to build the fit rows of one shard.

    ``validation_rows``: sorted local row indices (0 .. n_rows - 1) held out of the fit;
    ``pre``: the remedy (only its row remedy acts here); ``dtype``: of the row-scaled data
    (as the in-memory fit: float32 without the row remedy).
    """

    shard: Shard
    users_file: str
    validation_rows: tuple[int, ...]
    pre: Preprocessing
    dtype: str

    def scaled(self) -> sp.csr_matrix:
        """R X of the whole shard (every row: fitted, validation and held-out users)."""
        train = self.shard.load("train")
        return scale_rows(train, self.pre.rows(train), np.dtype(self.dtype))

    def fit_mask(self) -> np.ndarray:
        """bool (n_rows,): the rows the model is fit on."""
        mask = fit_candidates(self.shard, self.users_file)
        mask[list(self.validation_rows)] = False
        return mask

    def load(self) -> sp.csr_matrix:
        """The segment: (R X)[fit rows], CSR (n_fit_s, p)."""
        X, mask = self.scaled(), self.fit_mask()
        return X if mask.all() else X[np.flatnonzero(mask)]


def _summary(fs: FitShard, block_rows: int | None) -> tuple[ColumnSums, list[tuple[int, int]]]:
    seg = fs.load()
    return column_sums(seg), row_bounds(seg, block_rows, default_block_count(seg.nnz))


@dataclass
class ShardedRows:
    """The fit rows of a sharded matrix, described by small results only.

    ``shards``: one :class:`FitShard` per matrix shard, in row order; ``bounds``: the row
    blocks of each segment (local row ranges); ``sums``: their :class:`ColumnSums` added in
    shard order; ``shape``: (n_fit, p).
    """

    shards: list[FitShard]
    bounds: list[list[tuple[int, int]]]
    sums: ColumnSums
    shape: tuple[int, int]

    @property
    def nnz(self) -> int:
        return int(self.sums.counts.sum())

    def segment_bytes(self, dtype) -> int:
        """Memory of every segment loaded at once: values, column indices, row pointers."""
        return self.nnz * (np.dtype(dtype).itemsize + 4) + (self.shape[0] + len(self.shards)) * 8


KEEP_FRACTION = 0.4  # segments stay loaded while they take at most this share of the memory


def memory_for_segments(client) -> int:
    """Bytes the segments may take while kept loaded: ``KEEP_FRACTION`` of the workers' memory
    limits summed (with a client), else of this machine's memory (threads here)."""
    if client is None:
        import psutil

        return int(KEEP_FRACTION * psutil.virtual_memory().total)
    workers = client.scheduler_info().get("workers", {}).values()
    return int(KEEP_FRACTION * sum(w.get("memory_limit") or 0 for w in workers))


def summarize(shards: list[FitShard], p: int, block_rows: int | None, client=None
              ) -> ShardedRows:
    """One task per shard: load its segment, return its column sums and row blocks.

    Parameters
    ----------
    shards : list of FitShard
    p : int
        Columns of the matrix.
    block_rows : int, optional
        Rows per block (default: :func:`bigcos.gram.default_block_count` per segment).
    client : distributed.Client, optional
        None: threads in this process.

    Returns
    -------
    ShardedRows
        Memory here: three (p,) float64 arrays per shard while adding up.
    """
    import dask

    tasks = [dask.delayed(_summary, pure=False)(fs, block_rows) for fs in shards]
    results = dask.compute(*tasks, scheduler=client or "threads")
    sums = ColumnSums.combine([s for s, _ in results])
    return ShardedRows(list(shards), [b for _, b in results], sums, (sums.n, p))


def shard_pass_client(client, scheduler: str):
    """Where the passes over a sharded matrix run: ``client``'s workers unless ``scheduler``
    is "threads" or there is no client (then threads in this process). Unlike
    :func:`bigcos.gram.pass_client`, "auto" uses a ``LocalCluster``'s workers too: the point
    is that this process never holds the matrix."""
    from bigcos.errors import UserError
    from bigcos.gram import SCHEDULERS

    if scheduler not in SCHEDULERS:
        raise UserError(f"scheduler={scheduler!r}: must be one of {', '.join(SCHEDULERS)}")
    if scheduler == "distributed" and client is None:
        raise UserError("scheduler='distributed' needs a client: pass client=<a "
                        "distributed.Client> (or scheduler='threads')")
    return None if scheduler == "threads" else client


def _gram_slice(seg: sp.csr_matrix, a: int, b: int, dtype, q_tiles: list[np.ndarray]
                ) -> np.ndarray:
    return gram_block(row_block(seg, a, b, dtype), q_tiles)


class ShardGramOperator(GramOperator):
    """Q (p x b) -> A Q for A = X~^T X~ of the fit rows of a sharded matrix.

    The segments (:meth:`FitShard.load`) are loaded by tasks: once, and kept (persisted on
    the workers of ``client``, recomputed from the files if a worker is lost, or computed on
    threads in this process with None), when they fit :func:`memory_for_segments`; else
    again by every pass (the shard files stay in the page cache), so memory is bounded by a
    few segments per worker, whatever the matrix's size. Each pass is one task per row block
    of a segment, tree-summed in block order (:mod:`bigcos.gram`): the same sums either way.
    Call :meth:`close` to release the segments.

    Parameters
    ----------
    rows : ShardedRows
    blas, dtype, col_center, col_scale, tile_cols, client
        As :class:`bigcos.gram.GramOperator`; colsum is ``rows.sums.total``.
    keep_segments : bool, optional
        Keep the segments loaded between passes (None: when they fit, see above).
    """

    def __init__(self, rows: ShardedRows, *, blas: RowChunks, dtype=np.float32,
                 col_center=None, col_scale=None, tile_cols: int = 32, client=None,
                 keep_segments: bool | None = None) -> None:
        import dask

        t0 = time.perf_counter()
        self._setup(rows.shape, blas, dtype, col_center, col_scale, tile_cols, client)
        if self.mu is not None:
            self.colsum = rows.sums.total
        tag = uuid.uuid4().hex
        segments = [dask.delayed(FitShard.load)(fs, dask_key_name=f"bigcos-fit-segment-{i}-{tag}")
                    for i, fs in enumerate(rows.shards)]
        if keep_segments is None:
            keep_segments = rows.segment_bytes(dtype) <= memory_for_segments(client)
        self.keep_segments = bool(keep_segments)
        if not keep_segments:
            self._segments = segments  # loaded by every pass, released after it
        elif client is not None:
            self._segments = client.persist(segments)
        else:
            loaded = dask.compute(*segments, scheduler="threads")
            self._segments = [dask.delayed(s, name=f"bigcos-fit-segment-{i}-{tag}")
                              for i, s in enumerate(loaded)]
        self._slices = [(i, a, b) for i, bounds in enumerate(rows.bounds) for a, b in bounds]
        self.block_rows = [int(b - a) for _, a, b in self._slices]
        self._blocks = self._slices
        self.n_shards = len(rows.shards)
        self.timings["place_blocks"] = time.perf_counter() - t0

    def _parts(self, q) -> list:
        from dask import delayed

        return [delayed(_gram_slice, pure=False)(self._segments[i], a, b, self.dtype, q)
                for i, a, b in self._slices]

    def describe(self) -> dict:
        return {**super().describe(), "sharded": True, "n_shards": self.n_shards,
                "keep_segments": self.keep_segments}

    def close(self) -> None:
        """Release the segments (cancel their futures on the workers)."""
        if self.client is not None and self._segments:
            from distributed import futures_of

            self.client.cancel(futures_of(self._segments))
        self._segments, self._blocks = [], []
