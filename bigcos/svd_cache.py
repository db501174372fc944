"""The SVD of a fit and its cache: options, the matrix's content hash, the cache key, and
:func:`cached_spectrum` (the spectrum from ``cache_dir/key``, else computed: in memory by
:func:`bigcos.svd.truncated_svd` or from a matrix's shards by
:func:`bigcos.svd.sharded_truncated_svd`). Re-exported by :mod:`bigcos.models`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from bigcos import io
from bigcos.column_remedies import Preprocessing
from bigcos.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SVDOptions:
    """Parameters of the truncated SVD (:func:`bigcos.svd.truncated_svd`). ``block_rows`` and
    ``scheduler`` only change speed and are not part of the cache key."""

    k: int = 64
    oversampling: int | None = None
    n_iter: int | None = None
    seed: int = 0
    dtype: str = "float32"
    exact: bool = False
    tol: float | None = None
    block_rows: int | None = None
    scheduler: str = "auto"

    def key(self) -> dict[str, Any]:
        """The parameters that change the spectrum (the SVD cache key)."""
        d = asdict(self)
        d.pop("block_rows")
        d.pop("scheduler")
        return d


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def matrix_digest(matrix_dir: Path) -> str:
    """The content hash of a matrix directory (part of the SVD cache key).

    Parameters
    ----------
    matrix_dir : Path

    Returns
    -------
    str
        sha256 (hex) over the content of the train shards and users.parquet (rows, held-out
        flags); the same as before shards for a one-shard matrix (train.npz).
    """
    from bigcos.shards import train_files

    h = hashlib.sha256()
    for name in (*train_files(matrix_dir), "users.parquet"):
        f = matrix_dir / name
        h.update(name.encode() + (_file_digest(f) if f.exists() else "-").encode())
    return h.hexdigest()


def spectrum_key(matrix_sha256: str, svd: SVDOptions, pre: Preprocessing,
                 rows: dict | None = None) -> tuple[str, dict]:
    """The cache key of one SVD of one matrix.

    Parameters
    ----------
    matrix_sha256 : str
        :func:`matrix_digest` of the matrix directory.
    svd : SVDOptions
    pre : Preprocessing
    rows : dict, optional
        What decides the fitted rows beyond the matrix (e.g. the validation split).

    Returns
    -------
    key : str
        16 hex digits.
    parts : dict
        The JSON-able dict it hashes (stored beside the entry as key.json).
    """
    from bigcos import __version__
    from bigcos.svd import SVD_VERSION

    parts = {"matrix_sha256": matrix_sha256, "svd": svd.key(), "preprocessing": pre.key(),
             "bigcos": __version__, "svd_version": SVD_VERSION}
    if rows is not None:
        parts["rows"] = rows
    text = json.dumps(parts, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16], parts


def cached_spectrum(X: sp.csr_matrix, svd: SVDOptions, col_center: np.ndarray | None,
                    col_scale: np.ndarray | None, cache_dir: Path | None, key: str,
                    key_parts: dict, *, client=None,
                    row_blocks: list[tuple[int, int]] | None = None,
                    colsum: np.ndarray | None = None) -> tuple[Any, bool]:
    """The spectrum of X~ from ``cache_dir/key`` if present, else computed (and stored there).

    The cache entry is written atomically; an unreadable entry is recomputed and replaced.

    Parameters
    ----------
    X : scipy.sparse.csr_matrix, shape (n_fit, p), or bigcos.shard_gram.ShardedRows
        The rows the model is fit on: in memory (:func:`bigcos.svd.truncated_svd`) or in the
        shards of a matrix (:func:`bigcos.svd.sharded_truncated_svd`).
    svd : SVDOptions
    col_center, col_scale : ndarray, shape (p,), or None
        The column remedy (:meth:`Preprocessing.columns`).
    cache_dir : Path or None
        None: no cache.
    key, key_parts
        From :func:`spectrum_key`.
    client : distributed.Client, optional
        Passed to the SVD (None: threads in this process).
    row_blocks, colsum : optional
        Passed to :func:`bigcos.svd.truncated_svd` (in-memory X only).

    Returns
    -------
    spectrum : bigcos.svd.Spectrum
        sigma (k,), V (p, k), residuals (k,).
    cache_hit : bool
    """
    from bigcos.shard_gram import ShardedRows
    from bigcos.svd import load_spectrum, save_spectrum, sharded_truncated_svd, truncated_svd

    entry = cache_dir / key if cache_dir is not None else None
    if entry is not None and (entry / "key.json").exists():
        try:
            return load_spectrum(entry), True
        except (UserError, OSError, ValueError, KeyError) as exc:
            log.warning("%s: unreadable SVD cache entry (%s); recomputing", entry, exc)
    if svd.k > X.shape[1]:
        raise UserError(f"k: {svd.k} is larger than the number of items p = {X.shape[1]}")
    common = {"oversampling": svd.oversampling, "n_iter": svd.n_iter, "seed": svd.seed,
              "dtype": np.dtype(svd.dtype), "col_center": col_center, "col_scale": col_scale,
              "tol": svd.tol, "scheduler": svd.scheduler, "client": client}
    if isinstance(X, ShardedRows):
        spectrum = sharded_truncated_svd(X, svd.k, **common)
    else:
        spectrum = truncated_svd(X, svd.k, exact=svd.exact, block_rows=svd.block_rows,
                                 row_blocks=row_blocks, colsum=colsum, **common)
    if entry is not None:
        try:
            with io.atomic_output_dir(entry, overwrite=True) as tmp:
                save_spectrum(tmp, spectrum)
                io.write_json(tmp / "key.json", key_parts)
        except OSError as exc:  # e.g. a read-only matrix dir, or a concurrent writer won
            log.warning("%s: SVD cache not written (%s)", entry, exc)
    return spectrum, False
