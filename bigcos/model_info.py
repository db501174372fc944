"""A model directory without its user embeddings: items, manifest, spectrum, columns, and the
list of its user parts, for stages that read users part by part where they run.

:func:`bigcos.load_model` reads the whole n x k matrix of user embeddings into one process;
:func:`load_model_info` reads only what is small (p x k items, k-row spectrum, p-row columns)
and the footers of the user parts (:mod:`bigcos.user_parts`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bigcos import io, storage
from bigcos.errors import UserError
from bigcos.model_dir import COLUMNS, DIMENSIONS, ITEMS
from bigcos.user_parts import UserPart, user_parts


@dataclass
class ModelInfo:
    """A fitted model without its user embeddings (:func:`load_model_info`).

    ``item_embeddings`` (p, k) float32, row j = ``item_ids[j]``; ``parts`` the user parts in
    row order (read one at a time, :meth:`bigcos.user_parts.UserPart.read`); ``dimensions``
    and ``columns`` as in :class:`bigcos.models.Model`.
    """

    name: str
    directory: Path
    item_ids: pa.Array
    item_embeddings: np.ndarray
    parts: list[UserPart]
    manifest: dict
    matrix_dir: Path | None
    dimensions: pa.Table | None = field(default=None, repr=False)
    columns: pa.Table | None = field(default=None, repr=False)

    @property
    def n_users(self) -> int:
        return self.parts[-1].stop if self.parts else 0

    @property
    def user_ids(self) -> pa.Array:
        """The ids of every user (n,), read from the ``user_id`` column of each part only."""
        chunks = []
        for part in self.parts:
            fs, where = storage.filesystem_and_path(part.path)
            chunks.append(pq.read_table(where, columns=["user_id"], filesystem=fs)
                          .column("user_id").combine_chunks())
        return pa.concat_arrays(chunks) if len(chunks) > 1 else chunks[0]


def load_model_info(directory: str | os.PathLike) -> ModelInfo:
    """Read a model directory but its user embeddings (only the parts' footers).

    Parameters
    ----------
    directory : str or path

    Returns
    -------
    ModelInfo
        Memory: p k 4 bytes of item embeddings, the small tables, one record per user part.

    Raises
    ------
    UserError
        When the directory is not a model directory or holds no user embeddings.
    """
    d = io.require_dir(directory, "model", ITEMS)
    manifest = io.read_manifest(d)
    if "model_name" not in manifest:
        raise UserError(f"{d / io.MANIFEST}: not a model manifest ('model_name' missing)")
    item_ids, items = io.read_embeddings(d / ITEMS, "item_id")
    dims = io.read_table(d / DIMENSIONS) if (d / DIMENSIONS).exists() else None
    columns = io.read_table(d / COLUMNS) if (d / COLUMNS).exists() else None
    matrix_dir = manifest.get("matrix_dir")
    return ModelInfo(manifest["model_name"], d, item_ids, items, user_parts(d), manifest,
                     storage.as_path(matrix_dir) if matrix_dir else None, dims, columns)
