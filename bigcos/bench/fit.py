"""``bigcos bench fit``: every closed-form model of one SVD beside implicit ALS and the model
trained with respect to cosine, same matrix, same process.

bigcos's run is ``bigcos.models.fit`` with every configuration of ``bigcos fit --all``: one
truncated SVD, objective 1 under each named D, objective 2, project-back of both, user
embeddings X~A for all users (one blocked product over row blocks) and the Parquet model
directories. The peer is implicit's ``AlternatingLeastSquares`` (BLAS at one thread, as implicit
recommends), fit and written as a model directory the same way (``bigcos fit --model als``).
The cosine-trained model (``bigcos fit --model cosine``, :func:`bigcos.cosine_fit.fit_cosine`,
threads in this process) is measured beside them: its time, and from its manifest its
iterations, passes over X and final loss ||X - tau N(XA) N(B)^T||^2 over its training rows.
The matrix is generated: power-law user activity (Pareto 1.5) and item popularity (Zipf 0.8),
binary, no planted low-rank structure.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import click
import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from bigcos import io
from bigcos.bench.common import json_option, measure, report


def power_law_matrix(n_users: int, n_items: int, nnz: int, seed: int = 0) -> sp.csr_matrix:
    """Binary CSR float32 (n_users, n_items) with about ``nnz`` non-zeros, power-law margins."""
    rng = np.random.default_rng(seed)
    user_w = rng.pareto(1.5, n_users) + 1.0
    user_cdf = np.cumsum(user_w / user_w.sum())
    item_w = 1.0 / np.arange(1, n_items + 1) ** 0.8
    item_cdf = np.cumsum(item_w / item_w.sum())
    item_perm = rng.permutation(n_items)
    keys = np.empty(0, np.int64)
    new_fraction = 1.0  # share of the last draw that was not a repeat: sizes the next draw
    while len(keys) < nnz:
        m = int((nnz - len(keys)) / max(new_fraction, 0.05) * 1.1) + 1000
        u = np.minimum(np.searchsorted(user_cdf, rng.random(m)), n_users - 1)
        i = item_perm[np.minimum(np.searchsorted(item_cdf, rng.random(m)), n_items - 1)]
        before = len(keys)
        keys = np.unique(np.concatenate([keys, u.astype(np.int64) * n_items + i]))
        new_fraction = (len(keys) - before) / m
    keys = np.sort(rng.choice(keys, nnz, replace=False)) if len(keys) > nnz else keys
    rows, cols = keys // n_items, (keys % n_items).astype(np.int32)
    indptr = np.zeros(n_users + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=n_users), out=indptr[1:])
    X = sp.csr_matrix((np.ones(len(keys), np.float32), cols, indptr), shape=(n_users, n_items))
    X.has_sorted_indices = True
    return X


def write_matrix_dir(directory: Path, X: sp.csr_matrix) -> None:
    """A matrix directory (``bigcos ingest`` layout) holding X with ids 0..n-1 / 0..p-1."""
    from bigcos.matrix import Interactions, save

    directory.mkdir(parents=True)
    n, p = X.shape
    save(directory, Interactions(X, None, pa.array(np.arange(n, dtype=np.int64)),
                                 pa.array(np.arange(p, dtype=np.int64))))
    io.write_manifest(directory, "bench-fit-matrix", {"users": n, "items": p, "nnz": X.nnz})


def cosine_figures(manifest: dict) -> dict:
    """The table's figures of a cosine-trained model, from its manifest (``bigcos fit --model
    cosine``): optimisation seconds, iterations, passes over X, final loss and stop reason."""
    run = manifest["optimisation"]
    return {"optimise_s": manifest["timings_s"].get("optimise"), "iterations": run["iterations"],
            "passes_over_x": run["passes_over_x"], "final_loss": run["loss"],
            "relative_loss": run["loss"] / run["sq_norm"] if run["sq_norm"] else None,
            "stop_reason": run["stop_reason"]}


@click.command("fit")
@click.option("--users", "n_users", type=click.IntRange(min=10), default=200_000,
              show_default=True)
@click.option("--items", "n_items", type=click.IntRange(min=10), default=50_000,
              show_default=True)
@click.option("--nnz", type=click.IntRange(min=100), default=10_000_000, show_default=True)
@click.option("-k", "k", type=click.IntRange(min=1), default=128, show_default=True,
              help="SVD dimensions and ALS factors.")
@click.option("--als-iterations", type=click.IntRange(min=1), default=15, show_default=True)
@click.option("--svd-iterations", type=click.IntRange(min=1), default=None,
              help="SVD passes (default: the SVD's).")
@click.option("--oversampling", type=click.IntRange(min=0), default=None)
@click.option("--lam1", type=float, default=10_000.0, show_default=True,
              help="Objective 1's lam.")
@click.option("--lam2", type=float, default=100.0, show_default=True, help="Objective 2's lam.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--cosine-iterations", type=click.IntRange(min=1), default=15, show_default=True,
              help="L-BFGS-B iterations at most of the cosine-trained model.")
@click.option("--skip-als", is_flag=True, help="No ALS (e.g. when implicit is absent).")
@click.option("--skip-cosine", is_flag=True, help="No cosine-trained model.")
@json_option
def fit(n_users, n_items, nnz, k, als_iterations, svd_iterations, oversampling, lam1, lam2,
        seed, cosine_iterations, skip_als, skip_cosine, json_path):
    """The whole fit (SVD + both objectives + every named D + user embeddings) beside ALS and
    the model trained with respect to cosine (same k).

    Both sides read the same generated matrix directory and write model directories; bigcos
    runs on the threaded Dask scheduler in this process so that memory is measured alike.

    \b
    Example:
      bigcos bench fit --users 20000 --items 5000 --nnz 1000000 -k 64
    """
    import dask.array  # noqa: F401  (imports outside the measured calls)

    from bigcos import cosine_fit, models

    if not skip_als:
        import implicit.cpu.als  # noqa: F401

    click.echo(f"generating a {n_users:,} x {n_items:,} power-law matrix with ~{nnz:,} "
               "non-zeros ...")
    X = power_law_matrix(n_users, n_items, nnz, seed)
    specs = models.model_specs((), {1: lam1, 2: lam2}, (), True, False)
    svd = models.SVDOptions(k=k, oversampling=oversampling, n_iter=svd_iterations, seed=seed)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bigcos-bench-fit-") as tmp:
        matrix = Path(tmp) / "matrix"
        write_matrix_dir(matrix, X)
        m, result = measure(
            f"bigcos fit --all ({len(specs)} models, k={k})",
            lambda: models.fit(matrix, Path(tmp) / "models", specs, svd, cache_dir=None))
        first = next(iter(result.models.values()))
        manifest = io.read_manifest(first)
        steps = manifest["run_timings_s"]
        m.extra.update(models=len(result.models), svd_s=steps.get("svd"),
                       user_projection_s=steps.get("user_projection"),
                       svd_residual_max=manifest["svd"]["residual_max"],
                       svd_passes=manifest["svd"]["info"].get("passes"))
        rows.append(m.row())
        if not skip_als:
            als = models.ALSOptions(factors=k, iterations=als_iterations, seed=seed)
            m, path = measure(f"implicit ALS ({k} factors, {als_iterations} it.)",
                              lambda: models.fit_als(matrix, Path(tmp) / "als", als))
            m.extra.update(models=1, als_s=io.read_manifest(path)["timings_s"].get("als"))
            rows.append(m.row())
        if not skip_cosine:
            options = cosine_fit.CosineOptions(k=k, iterations=cosine_iterations, seed=seed)
            m, path = measure(f"cosine-trained (k={k}, <= {cosine_iterations} it.)",
                              lambda: cosine_fit.fit_cosine(matrix, Path(tmp) / "cosine",
                                                            options))
            m.extra.update(models=1, **cosine_figures(io.read_manifest(path)))
            rows.append(m.row())
    context = {"users": n_users, "items": n_items, "nnz": int(X.nnz), "k": k,
               "load_average_1_5_15": [round(v, 2) for v in os.getloadavg()],
               "lam1": lam1, "lam2": lam2, "models": [s.name for s in specs],
               "cosine_iterations": None if skip_cosine else cosine_iterations,
               "versions": io.versions()}
    report(f"fit: {n_users:,} x {n_items:,}, {X.nnz:,} non-zeros, k = {k}", rows, json_path,
           context)
    click.echo("load average (1, 5, 15 min) at the end: "
               f"{context['load_average_1_5_15']} on {os.cpu_count()} cores")
