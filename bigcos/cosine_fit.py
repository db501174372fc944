"""Fit the model trained with respect to cosine (:mod:`bigcos.cosine_model`) on a matrix directory.

Steps of :func:`fit_cosine`:

1. The rows a model may see (all but strong-generalisation held-out users) are split into
   training rows and validation rows (``validation_fraction`` of them, seeded, or the rows
   given); each validation row's items are split into fold-in and held-out items
   (``validation_holdout`` of them, at least one of each).
2. Truncated SVD of the training rows (``bigcos.svd.truncated_svd``), warm start
   (:func:`bigcos.cosine_model.warm_start`, objective 1 ``symmetric`` with shrinkage ``lam``).
3. L-BFGS-B on L*(A, B) = ||X - tau* N(XA) N(B)^T||^2 over the training rows. Each loss and
   gradient is one pass over fixed row blocks of X: one Dask task per block on ``client``
   (blocks scattered once; A, Q broadcast per evaluation; the block terms summed in block
   order in one task), else a thread per block in this process. Both paths sum the same
   floats in the same order, so they give identical results. A matrix of several shards is
   by default never loaded here: the SVD and every pass map over its shards, loaded and
   persisted on the workers (:mod:`bigcos.cosine_shards`), with the same blocks and sums as
   in memory (blocks never cross a shard). Early stopping on validation Recall@20 by cosine
   (``patience``).
4. Model directory: every user (held-out ones folded in from their training row) gets
   tau^(1/2) N(x_u A), every item tau^(1/2) N(b_i): their dot product is the model's
   prediction tau P Q^T of X and their cosine the cosine it was trained on. Written with
   the helpers of :mod:`bigcos.models` (``items.parquet``, ``users.parquet`` or one user part
   per shard written by the workers, ``manifest.json``), so ``bigcos.load_model``,
   neighbours and reports read it like any model.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from bigcos import cosine_model, io, storage
from bigcos.errors import UserError
from bigcos.model_dir import ITEMS, check_out


@dataclass(frozen=True)
class CosineOptions:
    """Parameters of :func:`fit_cosine`; all change the result except ``block_rows``' speed.

    ``k``: embedding dimensions (the rank: the regulariser); ``iterations``: L-BFGS-B
    iterations at most; ``tol``: stop when the relative decrease of the loss per iteration is
    below it; ``seed``: validation split and SVD start; ``lam``: objective-1 shrinkage of the
    warm start G = sigma^2 / (sigma^2 + lam) (not a penalty of the loss: it has none);
    ``validation_fraction``: share of the fit rows held out for early stopping (0: none);
    ``validation_max_users``: at most this many validation rows (seeded; None: no cap), so
    the rows the fit holds for early stopping stay bounded at any n; ``validation_holdout``:
    share of a validation row's items to recall; ``patience``:
    iterations without a better validation Recall@20 before stopping; ``block_rows``: rows
    per task (None: blocks of about 5M non-zeros, a function of the data alone; another value
    changes the loss only by float rounding).
    """

    k: int = 64
    iterations: int = 100
    tol: float = 1e-7
    seed: int = 0
    lam: float = 0.0
    validation_fraction: float = 0.1
    validation_holdout: float = 0.2
    validation_max_users: int | None = 100_000
    patience: int = 10
    block_rows: int | None = None

    def __post_init__(self):
        def fail(name: str, rule: str) -> None:
            raise UserError(f"{name}: must be {rule}, not {getattr(self, name)!r}")

        for name in ("k", "iterations", "patience"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                fail(name, "an integer >= 1")
        if not isinstance(self.seed, int) or self.seed < 0:
            fail("seed", "an integer >= 0")
        if not (math.isfinite(self.tol) and self.tol >= 0):
            fail("tol", "finite and >= 0")
        if not (math.isfinite(self.lam) and self.lam >= 0):
            fail("lam", "finite and >= 0")
        if not 0.0 <= self.validation_fraction < 1.0:
            fail("validation_fraction", "in [0, 1)")
        if not 0.0 < self.validation_holdout < 1.0:
            fail("validation_holdout", "in (0, 1)")
        if self.validation_max_users is not None and (
                not isinstance(self.validation_max_users, int) or self.validation_max_users < 1):
            fail("validation_max_users", "None or an integer >= 1")
        if self.block_rows is not None and (not isinstance(self.block_rows, int)
                                            or self.block_rows < 1):
            fail("block_rows", "None or an integer >= 1")


# --------------------------------------------------------------------------- block passes
class _ThreadTerms:
    """``terms(A, Q, gram_q)`` over row blocks, one thread per block, summed in block order."""

    def __init__(self, blocks: list[sp.csr_matrix]):
        self.blocks = blocks
        self.pool = ThreadPoolExecutor(max_workers=min(len(blocks), os.cpu_count() or 1))

    def __call__(self, A, Q, gram_q) -> cosine_model.BlockTerms:
        parts = list(self.pool.map(lambda b: cosine_model.block_terms(b, A, Q, gram_q),
                                   self.blocks))
        return cosine_model.sum_terms(parts)

    def close(self) -> None:
        self.pool.shutdown()


class _DaskTerms:
    """``terms(A, Q, gram_q)`` as Dask tasks: one per scattered block, one summing task."""

    def __init__(self, client, blocks: list[sp.csr_matrix]):
        self.client = client
        self.blocks = client.scatter(blocks)

    def __call__(self, A, Q, gram_q) -> cosine_model.BlockTerms:
        a, q, g = self.client.scatter([A, Q, gram_q], broadcast=True, hash=False)
        parts = self.client.map(cosine_model.block_terms, self.blocks, A=a, Q=q, gram_q=g,
                                pure=False)
        return self.client.submit(cosine_model.sum_terms, parts, pure=False).result()

    def close(self) -> None:
        self.client.cancel(self.blocks)


# --------------------------------------------------------------------------- the fit
def fit_cosine(matrix_dir: str | os.PathLike, out: str | os.PathLike,
               options: CosineOptions = CosineOptions(), *, client=None,
               validation_rows: Sequence[int] | None = None, name: str = "cosine",
               overwrite: bool = False, in_memory: bool | None = None) -> Path:
    """Train embeddings with respect to cosine and write them as a model directory at ``out``.

    Parameters
    ----------
    matrix_dir : a matrix directory (``bigcos.ingest``).
    out : the model directory to write (atomically).
    options : :class:`CosineOptions`.
    client : a ``distributed.Client`` to run the per-block terms on, or None (threads here).
    validation_rows : matrix row indices to validate on instead of a random
        ``validation_fraction`` of the fit rows (they are left out of training).
    name : the model name in the manifest. overwrite : replace an existing ``out``.
    in_memory : True: load the matrix here; False: every pass maps over the matrix's shards
        on the workers, which also write the users one part per shard
        (:mod:`bigcos.cosine_shards`); None: from the shards when there are several and no
        ``validation_rows`` are given. Both give the same bits.

    Returns
    -------
    Path of the model directory. Its manifest records the parameters, the loss curve, the
    validation curve, iterations, passes over X, tau, the SVD and timings.

    Memory: X in float64 blocks (12 bytes per non-zero), per block in flight 3 p k floats,
    the (n, k) user embeddings, and L-BFGS-B's history (10 pairs of 2 p k floats).

    References
    ----------
    Steck, Ekanadham, Kallus (2024), Sec. 3, first remedy; MATH.md "Remedies".
    """
    from bigcos.cosine_shards import cosine_rows
    from bigcos.shards import MatrixShards
    from bigcos.svd import sharded_truncated_svd, truncated_svd

    timings = io.Timings()
    matrix_dir = storage.resolve(matrix_dir)
    check_out(out, overwrite)
    if in_memory is None:
        in_memory = validation_rows is not None or len(MatrixShards(matrix_dir).shards) == 1
    if not in_memory and validation_rows is not None:
        raise UserError("in_memory: given validation_rows need the matrix in memory; pass "
                        "in_memory=True or None")
    with timings("load_matrix"):
        data = cosine_rows(matrix_dir, options, in_memory, client, validation_rows)
        val_rows, X_fold, X_held = data.val or (np.zeros(0, np.int64), None, None)
    n, p = data.n_train, data.n_items
    if options.k > min(n, p):
        raise UserError(f"k: {options.k} is larger than min(training rows, items) = "
                        f"{min(n, p)} ({n} x {p})")
    with timings("svd"):
        spectrum = (truncated_svd(data.svd_input, options.k, seed=options.seed,
                                  row_blocks=data.row_blocks) if in_memory else
                    sharded_truncated_svd(data.svd_input, options.k, seed=options.seed,
                                          client=client))
        A0, B0 = cosine_model.warm_start(spectrum.V, spectrum.sigma, n, options.lam)
    terms = data.terms(client)
    validate = (None if X_fold is None or not len(val_rows)
                else lambda A, B: cosine_model.cosine_recall(X_fold, X_held, A, B))
    sq_norm = data.sq_norm
    try:
        with timings("optimise"):
            result = cosine_model.fit_lbfgs(A0, B0, terms, sq_norm, iterations=options.iterations,
                                            tol=options.tol, validate=validate,
                                            patience=options.patience)
    finally:
        terms.close()
    if not result.tau > 0:
        raise UserError(f"{matrix_dir}: the fit degenerated (tau = {result.tau:g}); "
                        "try another seed or lam")
    root_tau = math.sqrt(result.tau)
    with io.atomic_output_dir(out, overwrite=overwrite) as tmp:
        with timings("embed_and_write"):
            items = root_tau * cosine_model.normalize_rows(result.B)[0]
            io.write_embeddings(tmp / ITEMS, data.item_ids, items, "item_id")
            data.write_users(tmp, result.A, root_tau, client)
        counts = {"users": data.n_users, "items": p, "fit_users": data.n_fit,
                  "train_rows": n, "validation_rows": len(val_rows),
                  "train_nnz": data.train_nnz, "dims_kept": options.k,
                  "blocks": data.n_blocks}
        optimisation = {
            "iterations": result.iterations, "passes_over_x": result.evaluations,
            "best_iteration": result.best_iteration, "stop_reason": result.stop_reason,
            "tau": result.tau, "loss": result.loss, "sq_norm": sq_norm,
            "loss_curve": result.loss_curve,
            "validation_recall_at_20_cos": result.validation_curve,
            "validation_rows_sha256": hashlib.sha256(val_rows.tobytes()).hexdigest(),
            "scheduler": "distributed" if client is not None else "threads"}
        svd_section = {"k": spectrum.k, "sigma_1": float(spectrum.sigma[0]),
                       "sigma_k": float(spectrum.sigma[-1]),
                       "residual_max": float(np.max(spectrum.residuals)), "info": spectrum.info}
        io.write_manifest(tmp, "fit", {"model": "cosine", **asdict(options),
                                       "validation_rows_given": validation_rows is not None},
                          timings=timings, model_name=name, matrix_dir=str(matrix_dir),
                          counts=counts, optimisation=optimisation, svd=svd_section)
    return storage.as_path(out)
