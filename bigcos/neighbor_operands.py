"""The operands of the neighbour tasks as scratch files, written and read where tasks run.

Items (p x k) are small: the driver writes them once per model (``items.npy``,
``inv_items.npy``, ``item_ids.arrow``). Users (n x k) never pass through the driver: one
task per user part (:mod:`bigcos.user_parts`) reads its part where it runs and writes
``users-<part>.npy`` (float32 rows), ``inv_users-<part>.npy`` (:func:`bigcos.topn.inverse_norms`)
and ``user_ids-<part>.arrow``. Later tasks see the parts as one array through
:class:`StackedRows` (memory maps of local files; a store's files are downloaded once per
worker process), so blocks and tiles may cross part boundaries and the results are those of
one array. Disk footprint: ``n * (4k + 4)`` bytes plus the ids, once per model (shared by its
user-user and user-item lists), removed when the lists are written; when user-item is the
only kind with users and its queries are sampled, only the sampled rows (``m * (4k + 4)``).

The training items a user-item task excludes come from the matrix's train shards
(:class:`bigcos.shards.MatrixShards`) overlapping its rows (:func:`train_rows`); a sampled
user-item job reads them from one small file per shard of the sample's rows
(:func:`sampled_train`, written once per matrix).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import scipy.sparse as sp

from bigcos import io, storage
from bigcos.blocked_topn import Blocking
from bigcos.dask_tasks import task
from bigcos.errors import UserError
from bigcos.shards import MatrixShards, Shard, read_shard, write_shard
from bigcos.topn import inverse_norms
from bigcos.user_parts import UserPart

SIDES = {"item-item": ("items", "items"), "user-user": ("users", "users"),
         "user-item": ("users", "items")}


# np.load parses a .npy header with ast.literal_eval, which CPython 3.11.7 cannot run in
# several threads at once ("SystemError: AST constructor recursion depth mismatch"); with
# mmap_mode the header is all a load reads, so one lock costs nothing.
_NPY_HEADER_LOCK = threading.Lock()


def write_items(scratch: Path, item_ids: pa.Array, items: np.ndarray) -> None:
    """The item operand of one model (driver side; p x k)."""
    io.save_npy(scratch / "items.npy", np.ascontiguousarray(items, dtype=np.float32))
    io.save_npy(scratch / "inv_items.npy", inverse_norms(items))
    write_ids(scratch / "item_ids.arrow", item_ids)


def write_user_part(scratch: Path, part: UserPart, rows: np.ndarray | None = None) -> int:
    """Task: read user part ``part`` where it runs, write its scratch files; return its
    number of zero-norm rows written. ``rows``: only these matrix rows (ascending, inside the
    part; a query sample), written in order, else every row. Memory: the part, about twice
    ``rows * k * 4`` bytes."""
    ids, users = part.read()
    if rows is not None:
        ids, users = ids.take(pa.array(rows - part.start)), users[rows - part.start]
    inv = inverse_norms(users)
    io.save_npy(scratch / f"users-{part.index:05d}.npy", np.ascontiguousarray(users))
    io.save_npy(scratch / f"inv_users-{part.index:05d}.npy", inv)
    write_ids(scratch / f"user_ids-{part.index:05d}.arrow", ids)
    return int(np.sum(inv == 0))


class StackedRows:
    """Consecutive row ranges held by several arrays, sliced as one ``(n, ...)`` array.

    ``x[a:b]`` is a view when the rows lie in one array, else a copy of ``b - a`` rows;
    ``x[rows]`` (an integer array, e.g. the kernel's rows sorted by norm) is a copy.
    """

    def __init__(self, arrays: Sequence[np.ndarray]):
        self.arrays = list(arrays)
        self.bounds = np.concatenate(([0], np.cumsum([len(a) for a in self.arrays])))
        self.shape = (int(self.bounds[-1]), *self.arrays[0].shape[1:])
        self.dtype = self.arrays[0].dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: slice | np.ndarray) -> np.ndarray:
        if not isinstance(key, slice):
            return self._take(np.asarray(key))
        start, stop, step = key.indices(len(self))
        if step != 1:
            raise TypeError("StackedRows: only contiguous slices")
        stop = max(start, stop)
        first = int(np.searchsorted(self.bounds, start, side="right")) - 1
        pieces = []
        for i in range(max(first, 0), len(self.arrays)):
            lo, hi = self.bounds[i], self.bounds[i + 1]
            if lo >= stop:
                break
            pieces.append(self.arrays[i][max(start, lo) - lo:min(stop, hi) - lo])
        if len(pieces) == 1:
            return pieces[0]
        if not pieces:
            return self.arrays[0][0:0]
        return np.concatenate(pieces)

    def _take(self, rows: np.ndarray) -> np.ndarray:
        if rows.dtype.kind not in "iu" or rows.ndim != 1:
            raise TypeError("StackedRows: only slices or 1-d integer arrays of rows")
        rows = np.where(rows < 0, rows + len(self), rows)
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"StackedRows: row index out of range 0..{len(self) - 1}")
        out = np.empty((len(rows), *self.shape[1:]), self.dtype)
        part = np.searchsorted(self.bounds, rows, side="right") - 1
        for i in np.unique(part):
            hit = part == i
            out[hit] = self.arrays[i][rows[hit] - self.bounds[i]]
        return out


def load_array(path: Path) -> np.ndarray:
    """A scratch ``.npy``: memory-mapped when local, downloaded once per process in a store."""
    if isinstance(path, storage.StorePath):
        return _load_from_store(path)
    with _NPY_HEADER_LOCK:
        return io.load_npy(path, mmap=True)


@functools.lru_cache(maxsize=16)
def _load_from_store(path: storage.StorePath) -> np.ndarray:
    """An operand in a store, downloaded once per worker process (the last few are kept)."""
    with _NPY_HEADER_LOCK:
        array = io.load_npy(path)
    array.flags.writeable = False  # shared by every task of this process
    return array


def user_rows(scratch: Path, n_parts: int, what: str) -> StackedRows:
    """The user parts' ``what`` ("users" or "inv_users") as one array of n rows."""
    return StackedRows([load_array(scratch / f"{what}-{i:05d}.npy") for i in range(n_parts)])


def user_ids(scratch: Path, bounds: Sequence[int], start: int = 0,
             stop: int | None = None) -> pa.Array:
    """The user ids of rows start:stop (default: to the end), from the id files of the parts
    overlapping them; ``bounds``: the parts' first rows and the last stop (n_parts + 1)."""
    stop = int(bounds[-1]) if stop is None else stop
    chunks = []
    for i in range(len(bounds) - 1):
        lo, hi = bounds[i], bounds[i + 1]
        if i and (hi <= start or lo >= stop):
            continue
        ids = read_ids(scratch / f"user_ids-{i:05d}.arrow")
        first = min(max(start, lo), hi)
        chunks.append(ids.slice(first - lo, max(0, min(stop, hi) - first)))
    return pa.concat_arrays(chunks)


def user_ids_at(scratch: Path, bounds: Sequence[int], rows: np.ndarray) -> pa.Array:
    """The user ids of ``rows`` (ascending int array), from the id files of their parts."""
    chunks = []
    for i in range(len(bounds) - 1):
        lo, hi = np.searchsorted(rows, [bounds[i], bounds[i + 1]])
        if hi > lo:
            ids = read_ids(scratch / f"user_ids-{i:05d}.arrow")
            chunks.append(ids.take(pa.array(rows[lo:hi] - bounds[i])))
    return pa.concat_arrays(chunks) if chunks else read_ids(
        scratch / "user_ids-00000.arrow").slice(0, 0)


@dataclass(frozen=True)
class SampledTrain:
    """The train rows of a query sample held by one shard: sample positions [start, stop)
    (rows ``sample[start:stop]`` of the matrix), in the scratch file ``train`` (CSR .npz)."""

    start: int
    stop: int
    train: str

    def load(self, part: str = "train") -> sp.csr_matrix:
        return read_shard(self.train)


def sampled_train(scratch: Path, shards: Sequence[Shard], sample: np.ndarray
                  ) -> tuple[tuple[SampledTrain, ...], list]:
    """Records of the sample's train rows (``sample`` ascending matrix rows) and the tasks
    that write them, one per shard holding sampled rows: each loads its shard once where it
    runs, so a group of sampled queries reads only its rows (:func:`train_rows` by sample
    position), not every shard its users fall in."""
    scratch.mkdir(parents=True, exist_ok=True)
    records, tasks = [], []
    for shard in shards:
        lo, hi = (int(i) for i in np.searchsorted(sample, [shard.start, shard.stop]))
        if hi > lo:
            path = scratch / f"train-sample-{shard.index:05d}.npz"
            records.append(SampledTrain(lo, hi, str(path)))
            tasks.append(task(_write_sampled_train)(path, shard, sample[lo:hi]))
    return tuple(records), tasks


def _write_sampled_train(path: Path, shard: Shard, rows: np.ndarray) -> int:
    """Task: the train rows ``rows`` (matrix rows inside ``shard``) as a CSR file; their nnz."""
    block = shard.load("train")[rows - shard.start].tocsr()
    write_shard(path, block)
    return int(block.nnz)


def train_rows(shards: Sequence[Shard | SampledTrain], start: int, stop: int) -> sp.csr_matrix:
    """Rows start:stop of a matrix's train part, from the shards overlapping them (loaded by
    path where this runs): CSR (stop - start, p). Memory: those shards."""
    blocks = []
    for shard in shards:
        if shard.stop <= start or shard.start >= stop:
            continue
        rows = shard.load("train")
        blocks.append(rows[max(start, shard.start) - shard.start:
                           min(stop, shard.stop) - shard.start])
    if len(blocks) == 1:
        return blocks[0].tocsr()
    return sp.vstack(blocks, format="csr")


def write_ids(path: Path, ids: pa.Array) -> None:
    table = pa.table({"id": ids})
    sink = path.open("wb") if isinstance(path, storage.StorePath) else pa.OSFile(str(path), "wb")
    with sink, ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)


def read_ids(path: Path) -> pa.Array:
    source = path.open("rb") if isinstance(path, storage.StorePath) else pa.memory_map(
        str(path), "r")
    with source:
        return ipc.open_file(source).read_all().column("id").combine_chunks()


def check_shape(model, shape: tuple[int, int], n_users: int) -> None:
    expected = (n_users, len(model.item_ids))
    if tuple(shape) != expected:
        raise UserError(f"{model.matrix_dir}: training matrix is {shape[0]} x "
                        f"{shape[1]} but model '{model.name}' has {expected[0]} users x "
                        f"{expected[1]} items")


def train_shards(model) -> tuple[Shard, ...]:
    """The train shards of a :class:`bigcos.model_info.ModelInfo`'s matrix (records only),
    checked against the model's numbers of users and items."""
    if model.matrix_dir is None:
        raise UserError(f"model '{model.name}': its manifest names no matrix_dir, so training "
                        "items cannot be excluded (pass --include-train)")
    matrix = MatrixShards(model.matrix_dir)
    check_shape(model, matrix.shape, model.n_users)
    return tuple(matrix.shards)


@dataclass(frozen=True)
class Job:
    """Everything a neighbour task needs, as paths and records (cheap to ship to workers).

    ``scratch`` holds the model's operands (:mod:`bigcos.neighbor_operands`); ``user_bounds``
    the first row of each user part and the last stop; ``shards`` the train shards whose rows
    are excluded (user-item), or None. A sampled user-item job may hold only the sample's
    rows: its users' scratch then has the sampled rows alone (``user_bounds`` count them)
    and ``shards`` are their :class:`SampledTrain` records, both by sample position."""

    scratch: Path
    out: Path  # the temporary output directory
    kind: str
    model: str
    n: int
    metrics: tuple[str, ...]
    blocking: Blocking
    user_bounds: tuple[int, ...]
    shards: tuple[Shard, ...] | tuple[SampledTrain, ...] | None = None
    sample: Path | None = None  # .npy of the sampled query rows (ascending), None: every row

    @property
    def sides(self) -> tuple[str, str]:
        return SIDES[self.kind]

    @property
    def exclude_self(self) -> bool:
        return self.kind != "user-item"

    def rows(self, side: str, what: str = "") -> np.ndarray | StackedRows:
        """The embeddings (``what`` = "") or inverse norms ("inv") of ``side``."""
        prefix = f"{what}_" if what else ""
        if side == "items":
            return load_array(self.scratch / f"{prefix}items.npy")
        return user_rows(self.scratch, len(self.user_bounds) - 1, f"{prefix}users")

    def ids(self, side: str, start: int = 0, stop: int | None = None) -> pa.Array:
        if side == "items":
            ids = read_ids(self.scratch / "item_ids.arrow")
            return ids if stop is None else ids.slice(start, stop - start)
        return user_ids(self.scratch, self.user_bounds, start, stop)

    def ids_at(self, side: str, rows: np.ndarray) -> pa.Array:
        """The ids of ``rows`` (ascending int array) of ``side``."""
        if side == "items":
            return read_ids(self.scratch / "item_ids.arrow").take(pa.array(rows))
        return user_ids_at(self.scratch, self.user_bounds, rows)

    def size(self, side: str, n_items: int) -> int:
        return self.user_bounds[-1] if side == "users" else n_items
