"""User embeddings in shards: reduced, sampled and evaluated on Dask workers, never gathered.

A shard is one row group of a Parquet file (``user_id`` + ``embedding``; a directory of such
files is read file by file) or ``shard_rows`` rows of a ``.npy`` file (memory-mapped; an
implicit ``.npz`` is written to one in the scratch directory first). Every pass is one Dask
task per shard, on ``client`` (a ``distributed.Client``; workers must see the files) or with
None on threads in this process, and returns only small results:

- :func:`scan`: per shard the finite-row mask and row norms (n values in all) and the Gram
  of its rows (k x k), summed here: the first pass of CholeskyQR2 (:mod:`bigcos.canonical`);
- :func:`projected_gram`: the second pass, ``(x R^+)'(x R^+)`` (r x r) per shard;
- :func:`take`: the rows of sampled users (m x k, m = the sample);
- :func:`heldout`: per sampled test user, Recall@K and NDCG@K of each member by cosine and
  dot (:func:`bigcos.evaluation.per_user` inside the task), a few floats per user.

Memory of a task: one shard (``rows * k * 4`` bytes) and the kernel's blocks; of this
process: k x k arrays, n-length masks and norms, and the sampled rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp

from bigcos import canonical, evaluation
from bigcos.dask_tasks import run_tasks, task
from bigcos.errors import UserError
from bigcos.neighbor_operands import load_array

TINY_NORM = 1e-12  # rows with a smaller norm (relative to the largest) count as zero
SHARD_ROWS = 1 << 18  # rows per .npy shard
GRAM_BLOCK = 1 << 15  # rows per float64 block of a shard's Gram


def load_npy(path: str | Path) -> np.ndarray:
    """Memory map of a local ``.npy`` file, safe to call from several threads (the header
    lock of :func:`bigcos.neighbor_operands.load_array`)."""
    return load_array(Path(path))


class NpyRows:
    """A 2-d float32 ``.npy`` file read by rows with plain reads, never memory-mapped here: a
    map would keep ~1 MiB of page cache per touched row in this process's resident memory
    (large page-cache folios), so sparse reads of a big file would look like gigabytes."""

    def __init__(self, path: str | Path):
        header = load_npy(path)
        self.path, self.shape, self._offset = str(path), header.shape, header.offset
        self._row_bytes = header.shape[1] * 4
        del header

    def __len__(self) -> int:
        return self.shape[0]

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` (any order, repeats allowed) as a (len(rows), k) float32 array."""
        import os

        unique, back = np.unique(np.asarray(rows, np.int64), return_inverse=True)
        out = np.empty((len(unique), self.shape[1]), np.float32)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for i, r in enumerate(unique):
                out[i] = np.frombuffer(os.pread(fd, self._row_bytes,
                                                self._offset + int(r) * self._row_bytes),
                                       np.float32)
        finally:
            os.close(fd)
        return out[back.ravel()]

    def blocks(self, block_rows: int = GRAM_BLOCK):
        """The rows, ``block_rows`` at a time (memory: one block)."""
        for start in range(0, self.shape[0], block_rows):
            rows = min(block_rows, self.shape[0] - start)
            yield np.fromfile(self.path, np.float32, rows * self.shape[1],
                              offset=self._offset + start * self._row_bytes
                              ).reshape(rows, self.shape[1])


@dataclass(frozen=True)
class Shard:
    """Rows of one file: Parquet row group ``part``, or ``.npy`` rows part:part+rows."""

    path: str
    fmt: str  # "parquet" or "npy"
    part: int
    rows: int


def read_shard(shard: Shard) -> np.ndarray:
    """The shard's rows as stored, (rows, k) float32 (NaN/inf kept: callers mask them)."""
    if shard.fmt == "npy":
        return np.array(load_npy(shard.path)[shard.part:shard.part + shard.rows], np.float32)
    column = pq.ParquetFile(shard.path).read_row_group(shard.part, columns=["embedding"]) \
        .column("embedding").combine_chunks()
    if column.null_count:
        raise UserError(f"{shard.path}: column 'embedding' has null rows (row group "
                        f"{shard.part})")
    flat = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return flat.reshape(shard.rows, column.type.list_size)


@dataclass
class UserShards:
    """The user embeddings as shards, with their ids.

    Before :func:`scan`: ``ids`` of every row. After: ``ids`` of the kept (finite) rows,
    ``keep`` the kept rows of each shard (local indices) and ``tiny`` the norm below which a
    row counts as zero. A user's index is its position among the kept rows.
    """

    shards: list[Shard]
    ids: pa.Array
    dims: int
    keep: list[np.ndarray] | None = None
    tiny: float = 0.0
    max_norm: float = 0.0
    warnings: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)


def parquet_shards(path: str | Path) -> tuple[list[Shard], pa.Array, int]:
    """Shards (one per row group), ids and dimension of a Parquet file or directory of files."""
    p = Path(path)
    files = sorted(f for f in p.glob("*.parquet")) if p.is_dir() else [p]
    if not files:
        raise UserError(f"{p}: no .parquet files")
    shards, ids, dims = [], [], None
    for f in files:
        schema = pq.read_schema(f)
        for col in ("user_id", "embedding"):
            if col not in schema.names:
                raise UserError(f"{f}: column '{col}' not found")
        kind = schema.field("embedding").type
        if not pa.types.is_fixed_size_list(kind):
            raise UserError(f"{f}: column 'embedding' must be a fixed-size list of float32")
        if dims is not None and kind.list_size != dims:
            raise UserError(f"{f}: {kind.list_size} dimensions, {files[0]} has {dims}")
        dims = kind.list_size
        meta = pq.ParquetFile(f).metadata
        shards += [Shard(str(f), "parquet", g, meta.row_group(g).num_rows)
                   for g in range(meta.num_row_groups) if meta.row_group(g).num_rows]
        ids.append(pq.read_table(f, columns=["user_id"]).column("user_id").combine_chunks())
    return shards, pa.concat_arrays(ids), dims


def npy_shards(path: str | Path, shard_rows: int = SHARD_ROWS) -> list[Shard]:
    """Shards of ``shard_rows`` rows of a 2-d ``.npy`` file."""
    n = load_npy(path).shape[0]
    return [Shard(str(path), "npy", s, min(shard_rows, n - s)) for s in range(0, n, shard_rows)]


# --------------------------------------------------------------------------- tasks
def _scan_shard(shard: Shard) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = read_shard(shard)
    finite = np.isfinite(x).all(axis=1)
    x = x[finite]
    return finite, row_norms(x), canonical.gram(x, GRAM_BLOCK)


def row_norms(x: np.ndarray | NpyRows, block_rows: int = GRAM_BLOCK) -> np.ndarray:
    """Euclidean norm of every row, float64, in blocks (x: an array, memory map or file)."""
    blocks = x.blocks(block_rows) if isinstance(x, NpyRows) else (
        x[s:s + block_rows] for s in range(0, len(x), block_rows))
    return np.concatenate([np.linalg.norm(np.asarray(b, np.float64), axis=1) for b in blocks]
                          or [np.zeros(0)])


def scan(users: UserShards, client=None) -> np.ndarray:
    """Drop non-finite rows, find the zero-norm threshold, return the Gram P'P (k x k).

    Sets ``users.keep``, ``users.ids`` (kept rows), ``users.tiny`` and counts what was dropped
    or zeroed in ``users.warnings`` (the wording of the in-memory checks of item rows).
    """
    results = run_tasks([task(_scan_shard)(s) for s in users.shards], client)
    finite = np.concatenate([r[0] for r in results])
    norms = np.concatenate([r[1] for r in results])
    dropped = int((~finite).sum())
    if dropped:
        users.warnings.append(f"{dropped:,} user rows with NaN or inf dropped")
        users.ids = users.ids.filter(pa.array(finite))
    if not len(norms):
        raise UserError(f"{users.shards[0].path}: no user embeddings")
    users.keep = [np.flatnonzero(r[0]) for r in results]
    users.max_norm = float(norms.max())
    users.tiny = TINY_NORM * users.max_norm
    tiny = int(((norms > 0) & (norms < users.tiny)).sum())
    if tiny:
        users.warnings.append(f"{tiny:,} user rows with norm below {TINY_NORM:g} of the "
                              "largest set to zero")
    zero = int((norms < users.tiny).sum()) if users.tiny > 0 else int((norms == 0).sum())
    if zero:
        users.warnings.append(f"{zero:,} user rows are all zero (no cosine: scored 0)")
    return sum(r[2] for r in results)


def _rows(shard: Shard, local: np.ndarray | None, tiny: float) -> np.ndarray:
    """Rows ``local`` of the shard (None: all), rows below the zero-norm threshold set to 0."""
    x = read_shard(shard)
    if local is not None:
        x = x[local]
    zero = row_norms(x) < tiny
    if zero.any():
        x = np.array(x)  # a Parquet shard may be a read-only view of Arrow's buffer
        x[zero] = 0.0
    return x


def _projected_gram_shard(shard: Shard, local: np.ndarray | None, tiny: float,
                          right: np.ndarray) -> np.ndarray:
    return canonical.gram(_rows(shard, local, tiny), GRAM_BLOCK, right)


def projected_gram(users: UserShards, right: np.ndarray, client=None) -> np.ndarray:
    """``(P right)'(P right)`` (r x r) summed over shards: CholeskyQR2's second pass."""
    tasks = [task(_projected_gram_shard)(s, None if len(keep) == s.rows else keep, users.tiny,
                                         right)
             for s, keep in zip(users.shards, users.keep, strict=True)]
    return sum(run_tasks(tasks, client))


def user_factor(users: UserShards, gram: np.ndarray, client=None
                ) -> tuple[np.ndarray, np.ndarray]:
    """(R_P, R_P^+) of the thin QR of the users' rows by CholeskyQR2 over shards, from the Gram
    of :func:`scan` and one more pass. Only k x k arrays reach this process."""
    first = canonical.triangular_factor(gram)
    return canonical.refine_factor(first, projected_gram(users, first[1], client))


def locate(users: UserShards, rows: np.ndarray) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """(shard, positions in ``rows``, local rows in the shard) of sorted user indices ``rows``."""
    ends = np.cumsum([len(k) for k in users.keep])
    shard_of = np.searchsorted(ends, rows, side="right")
    out = []
    for s in np.unique(shard_of):
        at = np.flatnonzero(shard_of == s)
        start = ends[s] - len(users.keep[s])
        out.append((int(s), at, users.keep[s][rows[at] - start]))
    return out


def take(users: UserShards, rows: np.ndarray, client=None) -> np.ndarray:
    """The embeddings (m x k float32) of users ``rows`` (sorted indices), read on workers."""
    located = locate(users, rows)
    parts = run_tasks([task(_rows)(users.shards[s], local, users.tiny)
                      for s, _, local in located], client)
    out = np.empty((len(rows), users.dims), np.float32)
    for (_, at, _), part in zip(located, parts, strict=True):
        out[at] = part
    return out


# --------------------------------------------------------------------------- held-out
def _heldout_shard(shard: Shard, local: np.ndarray, tiny: float, maps: dict,
                   item_files: dict[str, str], fold_in: sp.csr_matrix,
                   relevant: sp.csr_matrix, k: int) -> dict:
    from bigcos.embedding_audit.family import project

    x = _rows(shard, local, tiny)
    held = evaluation.HeldOut(np.arange(len(local)), fold_in, relevant)
    out = {}
    for name, (linear_map, floor) in maps.items():
        rows = x if linear_map is None else project(x, linear_map, floor)
        out[name] = evaluation.per_user(rows, load_npy(item_files[name]), held, ("cos", "dot"),
                                        k)
    return out


def heldout(users: UserShards, rows: np.ndarray, maps: dict, item_files: dict[str, str],
            train: sp.csr_matrix, test: sp.csr_matrix, k: int, client=None
            ) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """Recall@k and NDCG@k of sampled test users ``rows`` (sorted), per member and metric.

    maps: {member: (user map k x r or None for the model's own rows, zero-norm floor)};
    item_files: {member: its item embeddings (.npy)}; train / test: CSR (n_users x p).
    Returns {member: {metric: {"recall_at_k": (m,), "ndcg_at_k": (m,)}}} aligned with ``rows``
    (k the number).
    """
    located = locate(users, rows)
    tasks = [task(_heldout_shard)(users.shards[s], local, users.tiny, maps, item_files,
                                      train[rows[at]], test[rows[at]], k)
             for s, at, local in located]
    parts = run_tasks(tasks, client)
    out: dict = {}
    for name in maps:
        out[name] = {}
        for metric in ("cos", "dot"):
            out[name][metric] = {}
            for measure in evaluation.MEASURES:
                values = np.empty(len(rows))
                for (_, at, _), part in zip(located, parts, strict=True):
                    values[at] = part[name][metric][measure]
                out[name][metric][f"{measure}_at_{k}"] = values
    return out
