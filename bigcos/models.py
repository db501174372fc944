"""Fitting closed-form models: one truncated SVD (cached), every model of it, model directories.

The maths lives in :mod:`bigcos.closed_form` (objectives, rescalings D, losses: pure numpy) and
:mod:`bigcos.column_remedies`; the row projection P = X~ V_k in :mod:`bigcos.projection`; model
directories in :mod:`bigcos.model_dir`; implicit ALS in :mod:`bigcos.als`. This module drives a
fit: read the matrix (:mod:`bigcos.fit_data`: the whole CSR in memory, or its shards on the
workers), take the spectrum from the SVD cache or compute it (:mod:`bigcos.svd_cache`), solve
every model, project the rows once, write the directories. Every name that was public here
before the split is re-exported.

Dask work runs where the caller says: ``client=None`` is threads in this process, a
``distributed.Client`` runs the SVD passes and the row projection on its workers. No default
client is ever looked up here.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bigcos import io, storage
from bigcos.als import ALSOptions, als_factors, fit_als
from bigcos.closed_form import (
    NAMED_SCALINGS,
    RANK_RTOL,
    ModelSpec,
    Scaling,
    Solution,
    losses,
    model_specs,
    numerical_rank_mask,
    parse_scaling,
    solve,
)
from bigcos.column_remedies import (
    PREPROCESSINGS,
    Preprocessing,
    scale_rows,
    squared_norm,
    squared_norm_of_sums,
)
from bigcos.errors import UserError
from bigcos.evaluation import HeldOut
from bigcos.model_dir import (
    COLUMNS,
    DIMENSIONS,
    ITEMS,
    USERS,
    Model,
    check_out,
    columns_table,
    dimensions_table,
    load_model,
)
from bigcos.projection import column_sq_norms, project_rows
from bigcos.svd_cache import SVDOptions, cached_spectrum, matrix_digest, spectrum_key
from bigcos.validation import Selection, select

__all__ = [
    "ALSOptions", "DIMENSIONS", "FitResult", "ITEMS", "Model", "ModelSpec", "NAMED_SCALINGS",
    "PREPROCESSINGS", "Preprocessing", "RANK_RTOL", "SVDOptions", "Scaling", "Solution", "USERS",
    "als_factors", "cached_spectrum", "column_sq_norms", "fit", "fit_als", "load_model",
    "losses", "matrix_digest", "model_specs", "numerical_rank_mask", "parse_scaling",
    "project_rows", "scale_rows", "solve", "spectrum_key", "squared_norm",
]

log = logging.getLogger(__name__)
NO_PREPROCESSING = Preprocessing()  # the default of fit: no remedy
DEFAULT_SVD = SVDOptions()  # the default of fit


# --------------------------------------------------------------------------- λ on validation
LAMBDA_PATH = "lambda_path.parquet"
LAMCOS_SUFFIX = "-lamcos"


def _validated_specs(specs: list[ModelSpec], sigma: np.ndarray, V: np.ndarray, P_val, val,
                     selection: Selection, col_center, col_scale, several: bool, client=None
                     ) -> tuple[list[ModelSpec], list[dict], list[dict]]:
    """Specs with validated λ (plus ``-lamcos`` variants), their manifest fields, the path."""
    rows, fold_in, held_out = val
    heldout = HeldOut(rows, fold_in, held_out)
    todo = [s for s in specs if s.lam is None]
    path_rows, picks = select(sigma, V, P_val, heldout, todo, selection, solve,
                              col_center, col_scale, client) if todo else ([], [])
    chosen = {s.name: pick for s, pick in zip(todo, picks, strict=True)}
    out_specs, sources = [], []
    for spec in specs:
        if spec.lam is not None:
            out_specs.append(spec)
            sources.append({"lam_source": "fixed"})
            continue
        pick = chosen[spec.name]
        same = pick["dot"] == pick["cos"]
        base = {"lam_source": "validated", "family": spec.name, "lam_validated": pick,
                "validation_measure": selection.measure, "validation_at": selection.at}
        out_specs.append(dataclasses.replace(spec, lam=pick["dot"]))
        sources.append({**base, "lam_selected_for": ["dot", "cos"] if same else ["dot"]})
        is_random = spec.scaling is not None and spec.scaling.kind == "random"
        if several and not same and not is_random:
            out_specs.append(dataclasses.replace(spec, lam=pick["cos"]))
            sources.append({**base, "lam_selected_for": ["cos"]})
    return out_specs, sources, path_rows


def write_lambda_path(path: Path, rows: list[dict]) -> None:
    """The validation path as Parquet: model, objective, lam, metric, recall, ndcg,
    dims_kept, n_users, chosen."""
    import pyarrow as pa

    io.write_table(path, pa.Table.from_pylist(rows))


# --------------------------------------------------------------------------- the fit driver
@dataclass
class FitResult:
    """What :func:`fit` wrote: model directories by name, and whether the SVD cache was hit."""

    models: dict[str, Path]
    svd_cache_hit: bool
    spectrum_info: dict


def _model_names(specs: list[ModelSpec], preprocessing: Preprocessing,
                 name: str | None) -> list[str]:
    if not specs:
        raise UserError("specs: no model to fit")
    names = [s.name + preprocessing.suffix for s in specs]
    seen: set[str] = set()
    for i, n in enumerate(names):  # a validated -lamcos variant follows its base model
        if n in seen:
            names[i] = n + LAMCOS_SUFFIX
        seen.add(names[i])
    if name is not None:
        if len(specs) > 1:
            raise UserError("name: only for a single model (several are named by their "
                            "configuration)")
        names = [name]
    if len(set(names)) != len(names):
        raise UserError(f"specs: two model configurations share a name: {', '.join(names)}")
    return names


def _svd_section(spectrum, key: str, cache_dir: Path | None, hit: bool) -> dict:
    sigma = spectrum.sigma
    return {
        "key": key, "cache_dir": str(cache_dir) if cache_dir else None, "cache_hit": hit,
        "k": len(sigma),
        "residual_max": float(np.max(spectrum.residuals, initial=0.0)),
        "residual_median": float(np.median(spectrum.residuals)) if len(sigma) else 0.0,
        "sigma_1": float(sigma[0]) if len(sigma) else 0.0,
        "sigma_k": float(sigma[-1]) if len(sigma) else 0.0,
        "info": spectrum.info,
    }


def fit(matrix_dir: str | os.PathLike, out: str | os.PathLike, specs: Sequence[ModelSpec],
        svd: SVDOptions = DEFAULT_SVD, preprocessing: Preprocessing = NO_PREPROCESSING,
        *, cache_dir: str | os.PathLike | None = "default", name: str | None = None,
        overwrite: bool = False, client=None, selection: Selection | None = None,
        root: bool = False, in_memory: bool | None = None) -> FitResult:
    """Fit the closed-form models ``specs`` of one matrix from ONE truncated SVD.

    A spec whose ``lam`` is None gets λ chosen on validation users (``selection``, default
    :class:`bigcos.validation.Selection`): they are drawn from the fit rows, left out of the
    SVD, and λ maximises their held-out measure along a grid relative to the spectrum,
    separately for dot and for cosine ranking. The model keeps the λ chosen for dot (shared
    by every D of objective 1, so they stay dot-equivalent); when several models are fit and
    cosine prefers another λ, a second model ``<name>-lamcos`` at that λ is written too
    (random D excepted: they serve sensitivity studies at the shared λ). The whole path is
    written as ``lambda_path.parquet``.

    One spec: ``out`` is the model directory. Several: ``out`` is a root holding one model
    directory per spec (``out/<model name>``) and a ``manifest.json`` listing them; the whole
    root is written atomically. User embeddings X~A come from one blocked product
    P = X~ V_k over row blocks (:func:`bigcos.projection.project_rows`), shared by every spec.

    Parameters
    ----------
    matrix_dir : str or path
        A matrix directory (``bigcos ingest``) with ``train`` of shape (n, p); the model is fit
        on :attr:`~bigcos.matrix.Interactions.fit_rows` (n_fit rows).
    out : str or path
    specs : sequence of ModelSpec
    svd : SVDOptions
    preprocessing : Preprocessing
        Remedy applied before the SVD: a column remedy implicitly inside the products, the
        row remedy (``rows``) as diag(r) X on a scaled copy of the CSR data (every user's row,
        held-out users' fold-in rows included, scaled by its own count^-gamma).
    cache_dir : str, path or None
        ``"default"``: ``matrix_dir/svd-cache``; None: no cache. Spectra are keyed by matrix
        content, SVD parameters and column remedy, so a later fit with another D or objective
        skips the SVD.
    name : str, optional
        Model name of a single spec (default: from the configuration).
    overwrite : bool
        Replace an existing ``out``.
    client : distributed.Client, optional
        Where the SVD passes and the row projection run (None: threads in this process).
    selection : bigcos.validation.Selection, optional
        How validated λ are chosen (with fixed λ only, it still holds the same validation
        users out of the SVD).
    root : bool
        Write ``out`` as a root of model directories even for one spec (then a validated
        spec also gets its ``-lamcos`` variant).
    in_memory : bool, optional
        True: load the whole matrix here; False: work from its shards on the workers
        (:mod:`bigcos.fit_data`); None (default): from the shards when the matrix has
        several and ``svd.exact`` is off. Both give the same bits (sigma, V, every file but
        the manifests' timings); from the shards, users are written as one part per shard
        (``users/part-*.parquet``, :mod:`bigcos.user_parts`).

    Returns
    -------
    FitResult
        Memory while fitting in memory: the matrix (twice with the row remedy: the scaled
        copy of its non-zeros), P (n, k) in ``svd.dtype`` and one (n, k_kept) user embedding
        at a time. From the shards, here: the Krylov basis (p x L), p x l pass results and
        the validation rows; on a worker: its shards' fit rows (persisted during the SVD),
        and one shard's P_s and embedding at a time.

    References
    ----------
    Paper Eq. 1 and Eq. 2 (closed forms of Jin et al. 2021 and Zheng et al. 2018), Sec. 3
    (remedies).
    """
    from bigcos.fit_data import load_fit_data

    timings = io.Timings()
    matrix_dir = storage.resolve(matrix_dir)
    check_out(out, overwrite)
    specs = list(specs)
    _model_names(specs, preprocessing, name)  # fail fast on clashing names
    if selection is None and any(s.lam is None for s in specs):
        selection = Selection()
    with timings("load_matrix"):
        data = load_fit_data(matrix_dir, preprocessing, selection, svd, in_memory, client)
        val, dtype = data.val, data.dtype
        col_center, col_scale = preprocessing.columns_of_sums(data.sums)
    if svd.k < 1:
        raise UserError(f"k: must be >= 1, not {svd.k}")
    if cache_dir == "default":
        cache_dir = matrix_dir / "svd-cache"
    cache_dir = storage.as_path(cache_dir) if cache_dir is not None else None
    with timings("svd"):
        digest = matrix_digest(matrix_dir) if cache_dir is not None else "not-hashed"
        rows_key = None if selection is None else {
            "validation": {"fraction": selection.fraction, "holdout": selection.holdout,
                           "seed": selection.seed, "max_users": selection.max_users}}
        key, key_parts = spectrum_key(digest, svd, preprocessing, rows_key)
        spectrum, hit = cached_spectrum(data.svd_input, svd, col_center, col_scale, cache_dir,
                                        key, key_parts, client=client,
                                        row_blocks=data.row_blocks, colsum=data.sums.total)
    V = np.asarray(spectrum.V, np.float64)
    path_rows: list[dict] = []
    if selection is not None:
        with timings("lambda_selection"):
            fold_in = scale_rows(val[1], preprocessing.rows(val[1]), dtype)
            P_val = project_rows(fold_in, V, col_center, col_scale)
            specs, sources, path_rows = _validated_specs(specs, spectrum.sigma, V, P_val, val,
                                                         selection, col_center, col_scale,
                                                         several=root or len(specs) > 1,
                                                         client=client)
    else:
        sources = [{"lam_source": "fixed"} for _ in specs]
    names = _model_names(specs, preprocessing, name if len(specs) == 1 else None)
    with timings("solve"):
        solutions = [solve(spectrum.sigma, s) for s in specs]
    sq_norm = squared_norm_of_sums(data.sums, col_center, col_scale)
    svd_section = _svd_section(spectrum, key, cache_dir, hit)
    common = {"svd": svd.key() | {"block_rows": svd.block_rows},
              "preprocessing": preprocessing.key(),
              "validation": None if selection is None else asdict(selection)}
    single = len(specs) == 1 and not root
    written: dict[str, Path] = {}
    with io.atomic_output_dir(out, overwrite=overwrite) as root:
        targets = [root if single else root / model_name for model_name in names]
        for target in targets:
            target.mkdir(exist_ok=True)
        with timings("user_projection"):  # every model's users, from one P = X~ V_k
            p_sq = data.write_users([(t, sol.kept, sol.a) for t, sol in zip(
                targets, solutions, strict=True)], V, col_center, col_scale, svd, client)
        for model_name, spec, sol, source, target in zip(names, specs, solutions, sources,
                                                         targets, strict=True):
            mt = io.Timings()
            with mt("embed_and_write"):
                io.write_embeddings(target / ITEMS, data.item_ids, sol.B(V), "item_id")
                io.write_table(target / DIMENSIONS, dimensions_table(sol, spectrum.residuals))
                if "family" in source:
                    write_lambda_path(target / LAMBDA_PATH,
                                      [r for r in path_rows if r["model"] == source["family"]])
                if col_center is not None or col_scale is not None:  # the column remedy's mu, s
                    io.write_table(target / COLUMNS,
                                   columns_table(data.item_ids, col_center, col_scale))
            params = {"model": "closed-form", "objective": spec.objective, "lam": spec.lam,
                      "scaling": asdict(spec.scaling) if spec.scaling else None,
                      "project_back": spec.project_back, **source, **common}
            counts = {"users": data.n_users, "items": data.n_items,
                      "fit_users": data.n_fit,
                      "validation_users": 0 if val is None else len(val[0]),
                      "train_nnz": data.train_nnz,
                      "dims_svd": len(sol.sigma), "dims_kept": int(sol.kept.sum()),
                      "dims_dropped": int((~sol.kept).sum())}
            warnings = ([f"objective 2 keeps only {int(sol.kept.sum())} dimension(s) at "
                         f"lam2 = {spec.lam:g}: its cosines are nearly all +-1"]
                        if spec.objective == 2 and sol.kept.sum() < 3 else [])
            for warning in warnings:
                log.warning("%s: %s", model_name, warning)
            io.write_manifest(target, "fit", params, timings=mt, model_name=model_name,
                              matrix_dir=str(matrix_dir), counts=counts, svd=svd_section,
                              losses=losses(sol, sq_norm, p_sq), warnings=warnings,
                              run_timings_s=timings.as_dict())
            written[model_name] = (storage.as_path(out) if single
                                   else storage.as_path(out) / model_name)
        if not single:
            if path_rows:
                write_lambda_path(root / LAMBDA_PATH, path_rows)
            io.write_manifest(root, "fit", {"models": names, **common}, timings=timings,
                              matrix_dir=str(matrix_dir), models=names, svd=svd_section)
    return FitResult(written, hit, spectrum.info)
