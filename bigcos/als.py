"""Implicit ALS (the ``implicit`` library, CPU) as an iterative peer of the closed-form models.

Runs in this process (implicit parallelises over users with its own threads); no Dask client is
involved. Written as a model directory like the closed-form models (no spectrum.parquet).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bigcos import io, storage
from bigcos.errors import UserError
from bigcos.model_dir import check_out, write_model


@dataclass(frozen=True)
class ALSOptions:
    """implicit's ``AlternatingLeastSquares`` (confidence 1 + alpha x on observed entries).

    References
    ----------
    Hu, Koren, Volinsky (2008), "Collaborative Filtering for Implicit Feedback Datasets".
    """

    factors: int = 128
    iterations: int = 15
    regularization: float = 0.01
    alpha: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if self.factors < 1 or self.iterations < 1:
            raise UserError(f"factors and iterations must be >= 1, not {self.factors} and "
                            f"{self.iterations}")
        if not (self.regularization >= 0 and self.alpha > 0):
            raise UserError(f"regularization must be >= 0 and alpha > 0, not "
                            f"{self.regularization} and {self.alpha}")


def als_factors(data, als: ALSOptions, *, name: str = "als", rows: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """ALS item and user factors of an interaction matrix, checked to be finite.

    Fit on :attr:`~bigcos.matrix.Interactions.fit_rows`; held-out (strong generalisation) users
    get factors recomputed from their fold-in rows with the item factors fixed (implicit's
    ``recalculate_user``, one exact least-squares step: ALS's analogue of X A). BLAS runs on
    one thread (implicit parallelises over users itself and warns otherwise).

    Parameters
    ----------
    data : bigcos.matrix.Interactions
        ``train`` of shape (n, p).
    als : ALSOptions
    name : str
        Model name for error messages.
    rows : int array, optional
        The rows to fit on (default: ``data.fit_rows``); every other row is folded in.

    Returns
    -------
    items : ndarray, shape (p, factors), float32
    users : ndarray, shape (n, factors), float32

    Raises
    ------
    UserError
        When ALS diverged (factors with NaN or inf: the model, the number of bad rows and the
        first bad id are named) or implicit's solver failed.
    """
    from implicit.cpu.als import AlternatingLeastSquares
    from implicit.recommender_base import ModelFitError
    from threadpoolctl import threadpool_limits

    where = (f"ALS model '{name}' (factors={als.factors}, alpha={als.alpha:g}, "
             f"regularization={als.regularization:g})")
    fit_rows = data.fit_rows if rows is None else rows
    n = data.train.shape[0]
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(factors=als.factors, regularization=als.regularization,
                                        alpha=als.alpha, iterations=als.iterations,
                                        random_state=als.seed, dtype=np.float32)
        with contextlib.suppress(ModelFitError):  # NaN factors: the checks below name them
            X_fit = data.fit_train if rows is None else data.train[rows]
            model.fit(X_fit.astype(np.float32), show_progress=False)
        items = np.asarray(model.item_factors, np.float32)
        io.require_finite_embeddings(items, data.item_ids, "item_id", where)
        users = np.zeros((n, model.user_factors.shape[1]), np.float32)
        users[fit_rows] = model.user_factors
        held = np.setdiff1d(np.arange(n), fit_rows)
        if len(held):
            try:
                users[held] = model.recalculate_user(held, data.train[held])
            except ValueError as exc:  # implicit's Cholesky of a fold-in user failed
                raise UserError(f"{where}: folding in held-out users failed "
                                f"({str(exc).splitlines()[0]}); raise regularization") from None
    io.require_finite_embeddings(users, data.user_ids, "user_id", where)
    return items, users


# λ grid of ALS's (absolute) L2 regularisation when it is chosen on validation users
REGULARIZATION_GRID = (1e-2, 1e-1, 1.0, 10.0, 100.0)


def validate_regularization(data, als: ALSOptions, selection, name: str = "als"
                            ) -> tuple[list[dict], dict[str, float], np.ndarray]:
    """ALS's regularisation chosen on validation users, for dot and for cosine ranking.

    The validation users are drawn from the fit rows exactly as for the closed-form models
    (:func:`bigcos.evaluation.validation_split` with ``selection``'s fraction, holdout and
    seed), left out of every fit, and folded in from their visible items; each grid value of
    :data:`REGULARIZATION_GRID` is one ALS fit (five: each costs a whole fit).

    Returns
    -------
    rows : the path, one row per (regularisation, metric), as ``lambda_path.parquet``.
    chosen : ``{"dot": reg, "cos": reg}`` (ties: the smaller).
    train_rows : the fit rows without the validation users.
    """
    import dataclasses

    from bigcos.evaluation import HeldOut, per_user, validation_split
    from bigcos.validation import choose

    val_rows, fold_in, held_out = validation_split(
        data.train, data.fit_rows, selection.fraction, selection.holdout, selection.seed,
        max_rows=selection.max_users)
    train_rows = np.setdiff1d(data.fit_rows, val_rows)
    heldout = HeldOut(val_rows, fold_in, held_out)
    rows: list[dict] = []
    for reg in REGULARIZATION_GRID:
        opts = dataclasses.replace(als, regularization=reg)
        items, users = als_factors(_with_train_rows(data, val_rows, fold_in), opts, name=name,
                                   rows=train_rows)
        scores = per_user(users[val_rows], items, heldout, ("dot", "cos"), selection.at)
        for metric in ("dot", "cos"):
            m = scores[metric]
            rows.append({"model": name, "objective": 0, "lam": reg, "metric": metric,
                         "recall": float(np.nanmean(m["recall"])),
                         "ndcg": float(np.nanmean(m["ndcg"])), "dims_kept": items.shape[1],
                         "n_users": len(val_rows)})
    chosen = {m: choose(rows, m, selection.measure) for m in ("dot", "cos")}
    for r in rows:
        r["chosen"] = r["lam"] == chosen[r["metric"]]
    return rows, chosen, train_rows


def _with_train_rows(data, rows: np.ndarray, fold_in):
    """``data`` whose ``train`` rows ``rows`` hold only their fold-in part (validation users:
    their hidden items must not be seen when they are folded in)."""
    import dataclasses

    import scipy.sparse as sp

    keep = np.ones(data.train.shape[0], bool)
    keep[rows] = False
    masked = sp.diags(keep.astype(np.float32)) @ data.train
    placed = sp.csr_matrix((fold_in.data, fold_in.indices, fold_in.indptr),
                           shape=(len(rows), data.train.shape[1]))
    lift = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, np.arange(len(rows)))),
                         shape=(data.train.shape[0], len(rows)))
    return dataclasses.replace(data, train=(masked + lift @ placed).tocsr())


def fit_als(matrix_dir: str | os.PathLike, out: str | os.PathLike, als: ALSOptions = ALSOptions(),
            *, name: str = "als", overwrite: bool = False, selection=None) -> Path:
    """Fit implicit ALS and write it as a model directory like the closed-form ones.

    Parameters
    ----------
    matrix_dir : str or path
        A matrix directory (``bigcos ingest``).
    out : str or path
        The model directory, written atomically.
    als : ALSOptions
    name : str
        Model name in the manifest.
    overwrite : bool
        Replace an existing ``out``.
    selection : bigcos.validation.Selection, optional
        Choose the regularisation on validation users (:func:`validate_regularization`; the
        model keeps the value chosen for dot, the manifest both) instead of
        ``als.regularization``; the validation users are then not fit on.

    Returns
    -------
    Path
        ``out``.

    Raises
    ------
    UserError
        When ALS diverged to NaN or inf factors (naming the model, the number of bad rows and
        the first bad id; see :func:`als_factors`); nothing is written then.
    """
    from bigcos.matrix import load_matrix

    timings = io.Timings()
    matrix_dir = storage.resolve(matrix_dir)
    check_out(out, overwrite)
    with timings("load_matrix"):
        data = load_matrix(matrix_dir)
    rows, source, path = None, {"lam_source": "fixed"}, []
    if selection is not None:
        import dataclasses

        with timings("validation"):
            path, chosen, rows = validate_regularization(data, als, selection, name)
        als = dataclasses.replace(als, regularization=chosen["dot"])
        source = {"lam_source": "validated", "lam_validated": chosen,
                  "validation_measure": selection.measure, "validation_at": selection.at,
                  "regularization_grid": list(REGULARIZATION_GRID)}
    with timings("als"):
        items, users = als_factors(data, als, name=name, rows=rows)
    with io.atomic_output_dir(out, overwrite=overwrite) as tmp:
        with timings("write"):
            write_model(tmp, data.item_ids, items, data.user_ids, users)
            if path:
                import pyarrow as pa

                io.write_table(tmp / "lambda_path.parquet", pa.Table.from_pylist(path))
        counts = {"users": data.train.shape[0], "items": data.train.shape[1],
                  "fit_users": len(data.fit_rows if rows is None else rows),
                  "validation_users": 0 if rows is None else len(data.fit_rows) - len(rows),
                  "train_nnz": int(data.train.nnz), "dims_kept": items.shape[1]}
        io.write_manifest(tmp, "fit", {"model": "als", **asdict(als), **source},
                          timings=timings, model_name=name, matrix_dir=str(matrix_dir),
                          counts=counts)
    return storage.as_path(out)
