"""The result of a truncated SVD (:class:`Spectrum`) and its directory format."""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bigcos import storage
from bigcos.errors import UserError

SPECTRUM_ARRAYS = "svd.npz"
SPECTRUM_INFO = "svd.json"
_FORMAT_VERSION = 1


@dataclass(frozen=True)
class Spectrum:
    """Top-k right singular triplets of X~ (without U).

    Parameters
    ----------
    sigma : ndarray, shape (k,), float64
        Singular values, descending, >= 0.
    V : ndarray, shape (p, k), float64
        Orthonormal columns, sign fixed so that each column's largest-magnitude entry is
        positive (8 p k bytes).
    residuals : ndarray, shape (k,), float64
        ||A v_i - sigma_i^2 v_i|| / sigma_i^2 with A = X~^T X~ (divided by sigma_1^2 where
        sigma_i is ~0); see :func:`bigcos.svd.truncated_svd`.
    info : dict
        Method, passes over X, block layout, seed, dtype, timings (JSON-able).
    """

    sigma: np.ndarray
    V: np.ndarray
    residuals: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def k(self) -> int:
        """Number of singular triplets."""
        return int(self.sigma.shape[0])


def save_spectrum(directory: Path, spectrum: Spectrum) -> None:
    """Write a spectrum into a directory (created if needed).

    Each file is written to a temporary name and renamed, so a reader never sees half a file.

    Parameters
    ----------
    directory : path
        Receives ``svd.npz`` (arrays ``sigma`` (k,), ``V`` (p, k), ``residuals`` (k,),
        float64: about 8 p k bytes) and ``svd.json`` (``{"format": 1, "k": k, "p": p,
        "info": {...}}``).
    spectrum : Spectrum
    """
    from bigcos.io import write_json

    directory = storage.as_path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {"sigma": spectrum.sigma, "V": spectrum.V, "residuals": spectrum.residuals}
    if isinstance(directory, storage.StorePath):  # one upload: atomic in an object store
        with storage.local_file(directory / SPECTRUM_ARRAYS) as local:
            np.savez(local, **arrays)
    else:
        tmp = directory / f".{SPECTRUM_ARRAYS}.tmp-{uuid.uuid4().hex[:8]}.npz"
        np.savez(tmp, **arrays)
        os.replace(tmp, directory / SPECTRUM_ARRAYS)
    write_json(directory / SPECTRUM_INFO, {"format": _FORMAT_VERSION, "k": spectrum.k,
                                            "p": int(spectrum.V.shape[0]), "info": spectrum.info})


def load_spectrum(directory: Path) -> Spectrum:
    """Read a spectrum written by :func:`save_spectrum`, checking shapes against ``svd.json``.

    Parameters
    ----------
    directory : path

    Returns
    -------
    Spectrum
        float64 arrays (V: p x k, read whole into memory).

    Raises
    ------
    UserError
        A file is missing or unreadable, the format is unknown or the shapes disagree.
    """
    directory = storage.as_path(directory)
    arrays, meta = directory / SPECTRUM_ARRAYS, directory / SPECTRUM_INFO
    for f in (arrays, meta):
        if not f.exists():
            raise UserError(f"{f}: missing (not a directory written by save_spectrum)")
    try:
        header = json.loads(meta.read_text())
        from bigcos.io import in_memory

        source = in_memory(arrays) if isinstance(arrays, storage.StorePath) else arrays
        with np.load(source) as z:
            sigma, V, residuals = z["sigma"], z["V"], z["residuals"]
    except (json.JSONDecodeError, KeyError, ValueError, OSError) as exc:
        raise UserError(f"{directory}: unreadable spectrum ({exc})") from None
    if header.get("format") != _FORMAT_VERSION:
        raise UserError(f"{meta}: unsupported format {header.get('format')!r}")
    k, p = header.get("k"), header.get("p")
    if sigma.shape != (k,) or V.shape != (p, k) or residuals.shape != (k,):
        raise UserError(f"{arrays}: shapes sigma {sigma.shape}, V {V.shape}, residuals "
                        f"{residuals.shape} do not match k={k}, p={p} in {meta.name}")
    return Spectrum(sigma.astype(np.float64), V.astype(np.float64),
                    residuals.astype(np.float64), header.get("info", {}))
