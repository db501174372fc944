"""The partitioned matrix dataset: train/test CSR stored as row-range shards of whole users.

A matrix directory (written by :func:`bigcos.matrix.ingest`) holds its matrices as shards:
consecutive row ranges, each a scipy CSR ``.npz`` of shape (rows in the range, n_items), sized
by non-zeros (train + test) so that no shard exceeds ``shard_nnz`` unless one user alone does.
A shard never splits a user (rows are users). Layout::

    manifest.json          ... "shards": {"layout": 1, "shape": [n_users, n_items],
                                          "shard_nnz": N, "split": bool,
                                          "files": [{"rows": [start, stop], "train_nnz": a,
                                                     "test_nnz": b, "train": "train.npz",
                                                     "test": "test.npz" | null}, ...]}
    train.npz, test.npz    one shard: exactly the single-file layout of earlier versions
    shards/train-00000.npz, shards/test-00000.npz, ...     several shards

Paths in the manifest are relative to the directory. A directory written before shards
existed (no ``shards`` section) reads as one shard. :class:`MatrixShards` is what later stages
use: ``shards`` (picklable :class:`Shard` records a Dask worker can load by path),
:meth:`MatrixShards.load_shard` and :meth:`MatrixShards.load_matrix` (the shards stacked).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from bigcos import io, storage

LAYOUT_VERSION = 1
SHARD_DIR = "shards"


@dataclass(frozen=True)
class Shard:
    """One row range [start, stop) of a matrix and the absolute paths of its files."""

    index: int
    start: int
    stop: int
    train_nnz: int
    test_nnz: int
    train: str
    test: str | None

    @property
    def n_rows(self) -> int:
        return self.stop - self.start

    def load(self, part: str = "train") -> sp.csr_matrix:
        """The shard's ``train`` or ``test`` CSR float32, shape (n_rows, n_items)."""
        path = self.train if part == "train" else self.test
        if path is None:
            raise ValueError(f"part: shard {self.index} has no '{part}' matrix")
        return read_shard(path)


def read_shard(path: str | os.PathLike) -> sp.csr_matrix:
    """Read one shard file (CSR float32 with sorted indices); a path or a store URL."""
    return io.load_npz(storage.as_path(path)).tocsr()


def write_shard(path: Path | storage.StorePath, matrix: sp.csr_matrix) -> None:
    """Write one shard file (uncompressed .npz, as ``scipy.sparse.save_npz``)."""
    io.save_npz(path, matrix)


def shard_bounds(row_nnz: np.ndarray, shard_nnz: int) -> np.ndarray:
    """Row boundaries [0, b1, ..., n] of consecutive shards of at most ``shard_nnz`` non-zeros.

    Greedy over rows in order: a shard closes before the row that would take it past
    ``shard_nnz``; a row with more non-zeros than that is a shard of its own. Every shard has
    at least one row (a matrix without rows has one empty shard).

    Parameters
    ----------
    row_nnz : int (n,)
        Non-zeros of each row (train + test).
    shard_nnz : int
    """
    n = len(row_nnz)
    bounds = [0]
    total = np.concatenate(([0], np.cumsum(row_nnz, dtype=np.int64)))
    while bounds[-1] < n:
        start = bounds[-1]
        stop = int(np.searchsorted(total, total[start] + shard_nnz, side="right")) - 1
        bounds.append(min(max(stop, start + 1), n))
    if n == 0:
        bounds.append(0)
    return np.asarray(bounds, np.int64)


def file_names(n_shards: int, index: int, split: bool) -> tuple[str, str | None]:
    """Relative paths of shard ``index``'s train and test files."""
    if n_shards == 1:
        return "train.npz", ("test.npz" if split else None)
    return (f"{SHARD_DIR}/train-{index:05d}.npz",
            f"{SHARD_DIR}/test-{index:05d}.npz" if split else None)


def manifest_section(shape: tuple[int, int], shard_nnz: int, split: bool, bounds: np.ndarray,
                     train_nnz: list[int], test_nnz: list[int]) -> dict:
    """The ``shards`` section of a matrix manifest (see the module docstring)."""
    n = len(bounds) - 1
    files = []
    for s in range(n):
        train, test = file_names(n, s, split)
        files.append({"rows": [int(bounds[s]), int(bounds[s + 1])],
                      "train_nnz": int(train_nnz[s]), "test_nnz": int(test_nnz[s]),
                      "train": train, "test": test})
    return {"layout": LAYOUT_VERSION, "shape": [int(shape[0]), int(shape[1])],
            "shard_nnz": int(shard_nnz), "split": bool(split), "files": files}


def write_in_memory(directory: Path, train: sp.csr_matrix, test: sp.csr_matrix | None,
                    shard_nnz: int) -> dict:
    """Cut whole matrices into shards, write them, return the manifest section.

    Parameters
    ----------
    directory : Path
        The matrix directory (existing).
    train, test : CSR (n_users, n_items); ``test`` None without a split
    shard_nnz : int
    """
    row_nnz = np.diff(train.indptr).astype(np.int64)
    if test is not None:
        row_nnz += np.diff(test.indptr)
    bounds = shard_bounds(row_nnz, shard_nnz)
    n = len(bounds) - 1
    if n > 1:
        (directory / SHARD_DIR).mkdir(exist_ok=True)
    nnz: dict[str, list[int]] = {"train": [], "test": []}
    for s in range(n):
        names = file_names(n, s, test is not None)
        for part, matrix, name in (("train", train, names[0]), ("test", test, names[1])):
            if matrix is None:
                nnz[part].append(0)
                continue
            block = matrix if n == 1 else matrix[int(bounds[s]):int(bounds[s + 1])]
            write_shard(directory / name, block)
            nnz[part].append(int(block.nnz))
    return manifest_section(train.shape, shard_nnz, test is not None, bounds, nnz["train"],
                            nnz["test"])


class MatrixShards:
    """The shards of a matrix directory.

    Parameters
    ----------
    directory : str or path
        A matrix directory written by :func:`bigcos.matrix.ingest` (any version).

    Attributes
    ----------
    directory : Path
    shape : (n_users, n_items)
    shards : list of Shard
        In row order; ``shards[i].start == shards[i - 1].stop``.
    has_test : bool
    """

    def __init__(self, directory: str | os.PathLike):
        path = storage.as_path(directory)
        section = (io.read_manifest(path).get("shards") if (path / io.MANIFEST).is_file()
                   else None)
        self.directory = io.require_dir(path, "matrix", io.MANIFEST if section else "train.npz")
        if section is None:  # a matrix directory from before shards: one shard
            section = self._single_file_section()
        self.shape = (int(section["shape"][0]), int(section["shape"][1]))
        self.has_test = bool(section["split"])
        self.shards = [
            Shard(i, int(f["rows"][0]), int(f["rows"][1]), int(f["train_nnz"]),
                  int(f["test_nnz"]), str(self.directory / f["train"]),
                  str(self.directory / f["test"]) if f["test"] else None)
            for i, f in enumerate(section["files"])]

    def _single_file_section(self) -> dict:
        def shape_nnz(path: Path) -> tuple[tuple[int, int], int]:
            source = io.in_memory(path) if isinstance(path, storage.StorePath) else path
            with np.load(source) as npz:  # reads the small arrays only
                return tuple(int(x) for x in npz["shape"]), int(npz["indptr"][-1])

        shape, train_nnz = shape_nnz(self.directory / "train.npz")
        test_path = self.directory / "test.npz"
        test_nnz = shape_nnz(test_path)[1] if test_path.exists() else 0
        return manifest_section(shape, max(train_nnz + test_nnz, 1), test_path.exists(),
                                np.array([0, shape[0]]), [train_nnz], [test_nnz])

    @property
    def nnz(self) -> dict[str, int]:
        """Non-zeros of train and test over all shards."""
        return {"train": sum(s.train_nnz for s in self.shards),
                "test": sum(s.test_nnz for s in self.shards)}

    def load_shard(self, index: int, part: str = "train") -> sp.csr_matrix:
        """Shard ``index`` of ``part`` ("train" or "test"): CSR float32 (rows in range,
        n_items)."""
        return self.shards[index].load(part)

    def load_matrix(self, part: str = "train") -> sp.csr_matrix | None:
        """All shards of ``part`` stacked: CSR float32 (n_users, n_items), or None for "test"
        without a split. Memory: the whole matrix (twice while stacking several shards)."""
        if part == "test" and not self.has_test:
            return None
        if len(self.shards) == 1:
            return self.load_shard(0, part)
        blocks = [self.load_shard(i, part) for i in range(len(self.shards))]
        m = sp.vstack(blocks, format="csr")
        if m.indptr[-1] < np.iinfo(np.int32).max:  # the dtypes one whole build gives
            m.indptr = m.indptr.astype(np.int32)
            m.indices = m.indices.astype(np.int32)
        return m


def train_files(directory: str | os.PathLike) -> list[str]:
    """Relative paths of a matrix directory's train shards, in row order (``["train.npz"]``
    for one shard or a directory from before shards): the content a model is fit on, e.g.
    for a cache key. Reads the manifest only."""
    path = storage.as_path(directory)
    if (path / io.MANIFEST).is_file():
        section = io.read_manifest(path).get("shards")
        if section:
            return [f["train"] for f in section["files"]]
    return ["train.npz"]
