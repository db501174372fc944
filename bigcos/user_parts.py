"""A model's user embeddings as parts: one Parquet file per row shard of its matrix.

User embeddings are n x k: at scale they never sit in one process. A model directory holds
them in one of two layouts, both with the columns of :func:`bigcos.io.embeddings_table`
(``user_id``, ``embedding`` fixed_size_list<float32>[k]) and rows in matrix row order::

    users.parquet              one part: the whole matrix (a matrix of one shard, as before)
    users/part-00000.parquet   several parts, in row order; part i holds the rows of the
    users/part-00001.parquet   matrix's shard i (:class:`bigcos.shards.MatrixShards`)
    ...

Readers: pandas ``pd.read_parquet("<model>/users")``, DuckDB
``read_parquet('<model>/users/*.parquet')``, Polars ``pl.read_parquet('<model>/users/*.parquet')``.
Inside bigcos, :func:`user_parts` lists the parts (from the Parquet footers only) and Dask tasks
read one part each (:meth:`UserPart.read`) where they run: the whole matrix of user embeddings
is read in one process only by :func:`read_all_users`, for small models.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bigcos import io, storage
from bigcos.errors import UserError

USERS_FILE = "users.parquet"
USERS_DIR = "users"


@dataclass(frozen=True)
class UserPart:
    """Rows [start, stop) of a model's user embeddings, in the file ``path`` (a path or URL)."""

    index: int
    start: int
    stop: int
    path: str

    @property
    def n_rows(self) -> int:
        return self.stop - self.start

    def read(self) -> tuple[pa.Array, np.ndarray]:
        """(user ids (n_rows,), embeddings (n_rows, k) float32); refuses NaN/inf rows."""
        ids, emb = io.read_embeddings(self.path, "user_id")
        if len(ids) != self.n_rows:
            raise UserError(f"{self.path}: {len(ids)} rows, the part should hold "
                            f"{self.n_rows} (rows {self.start}..{self.stop - 1})")
        return ids, emb


def part_path(model_dir: Path | storage.StorePath, index: int, n_parts: int
              ) -> Path | storage.StorePath:
    """Where part ``index`` of ``n_parts`` goes: ``users.parquet`` for one part, else
    ``users/part-<index:05d>.parquet`` (the directory is created for a local path)."""
    if n_parts == 1:
        return model_dir / USERS_FILE
    if not isinstance(model_dir, storage.StorePath):
        (model_dir / USERS_DIR).mkdir(exist_ok=True)
    return model_dir / USERS_DIR / f"part-{index:05d}.parquet"


def write_part(model_dir: Path | storage.StorePath, index: int, n_parts: int,
               user_ids: pa.Array | np.ndarray, users: np.ndarray) -> None:
    """Write part ``index`` of ``n_parts``: ids (m,) and embeddings (m, k), finite."""
    io.write_embeddings(part_path(model_dir, index, n_parts), user_ids, users, "user_id")


def _files(model_dir: Path | storage.StorePath) -> list[Path | storage.StorePath]:
    single = model_dir / USERS_FILE
    if single.is_file():
        return [single]
    folder = model_dir / USERS_DIR
    if not folder.is_dir():
        raise UserError(f"{model_dir}: no user embeddings ({USERS_FILE} or {USERS_DIR}/)")
    if isinstance(folder, storage.StorePath):
        files = [f for f in folder.files() if f.name.endswith(".parquet")]
    else:
        files = list(folder.glob("part-*.parquet"))
    if not files:
        raise UserError(f"{folder}: holds no part-*.parquet file")
    return sorted(files, key=lambda f: f.name)


def user_parts(model_dir: str | os.PathLike) -> list[UserPart]:
    """The parts of a model directory's user embeddings, in row order.

    Reads only the Parquet footers (row counts). Raises :class:`UserError` naming the
    directory when it holds neither layout.
    """
    d = storage.as_path(model_dir)
    parts, start = [], 0
    for i, f in enumerate(_files(d)):
        fs, where = storage.filesystem_and_path(f)
        try:
            rows = pq.ParquetFile(where, filesystem=fs).metadata.num_rows
        except (pa.ArrowInvalid, OSError) as exc:
            raise UserError(f"{f}: cannot be read as Parquet ({exc})") from None
        parts.append(UserPart(i, start, start + rows, str(f)))
        start += rows
    return parts


def read_all_users(model_dir: str | os.PathLike) -> tuple[pa.Array, np.ndarray]:
    """Every part concatenated: ids (n,), embeddings (n, k) float32. Memory: n k 4 bytes;
    for small models and tests (stages map over :func:`user_parts` instead)."""
    parts = user_parts(model_dir)
    read = [p.read() for p in parts]
    if len(read) == 1:
        return read[0]
    return (pa.concat_arrays([ids for ids, _ in read]),
            np.concatenate([emb for _, emb in read], axis=0))
