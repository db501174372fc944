"""``bigcos bench svd``: bigcos's truncated SVD beside scipy (PROPACK, ARPACK) and sklearn.

The matrix is binary with power-law users (Pareto 1.5 row counts) and items (Zipf over a random
permutation of the columns), like PERFORMANCE.md's: no planted low-rank structure, so the tail
of the spectrum is flat, the hard case for randomised methods. PROPACK (``svds(solver=
"propack")`` on a float64 copy, returning V like bigcos; it is several times slower on
float32) is the reference for the error of sigma_1..sigma_k and for time. bigcos runs with the
threaded Dask scheduler in this process, so its peak memory is measured like the peers'.

Memory-bandwidth bound of the passes (the model): each pass reads X twice (data, indices,
indptr) and, per non-zero, moves one l-wide row of the float32 dense operand in each of its
two products (l = k + oversampling); bound = passes x those bytes / the read bandwidth
measured here with two threads. Rows of popular items stay in cache, so the bound is a
yardstick for the streaming cost, not a hard floor.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import click
import numpy as np
import scipy.sparse as sp

from bigcos.bench.common import json_option, measure, report


def powerlaw_matrix(n: int, p: int, nnz: int, seed: int = 0, user_alpha: float = 1.5,
                    item_exponent: float = 1.0) -> sp.csr_matrix:
    """(n, p) binary float32 CSR with about ``nnz`` non-zeros (within ~2 %).

    Row counts are Pareto(user_alpha) (capped at p); items are drawn from a Zipf law of
    exponent ``item_exponent`` over a random permutation of the columns; repeated draws of
    one (user, item) collapse, and the number of draws is calibrated once so the non-zeros
    after collapsing land near ``nnz``.
    """
    rng = np.random.default_rng(seed)
    weights = rng.pareto(user_alpha, n) + 1.0
    cdf = np.cumsum(np.arange(1, p + 1, dtype=np.float64) ** -item_exponent)
    cdf /= cdf[-1]
    perm = rng.permutation(p).astype(np.int32)
    draws = float(nnz)
    for _ in range(3):
        counts = np.clip(np.round(weights / weights.sum() * draws), 1, p).astype(np.int64)
        cols = perm[np.minimum(np.searchsorted(cdf, rng.random(int(counts.sum()))), p - 1)]
        rows = np.repeat(np.arange(n, dtype=np.int32), counts)
        X = sp.csr_matrix((np.ones(rows.size, np.float32), (rows, cols)), shape=(n, p))
        X.sum_duplicates()
        X.data[:] = 1.0
        if abs(X.nnz - nnz) <= 0.02 * nnz:
            break
        draws *= nnz / max(X.nnz, 1)
    return X


def read_bandwidth(n_bytes: int = 1 << 29, threads: int = 2) -> float:
    """Bytes/s of summing a float32 array split across ``threads`` threads (best of 3)."""
    a = np.ones(n_bytes // 4, dtype=np.float32)
    parts = np.array_split(a, threads)
    best = float("inf")
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(3):
            t0 = time.perf_counter()
            list(pool.map(np.add.reduce, parts))
            best = min(best, time.perf_counter() - t0)
    return a.nbytes / best


def pass_bytes(X: sp.csr_matrix, block: int) -> int:
    """Bytes one Gram pass moves in the bound model (see the module docstring)."""
    x_bytes = X.data.nbytes + X.indices.nbytes + X.indptr.nbytes
    return 2 * x_bytes + 2 * X.nnz * block * 4


def _errors(sigma: np.ndarray, ref: np.ndarray) -> dict:
    rel = np.abs(np.asarray(sigma, dtype=np.float64) - ref) / ref
    return {"max_rel_err": float(rel.max()), "sigma_k_rel_err": float(rel[-1])}


@click.command()
@click.option("--n", "n", type=click.IntRange(min=10), default=200_000, show_default=True,
              help="Rows (users).")
@click.option("--p", "p", type=click.IntRange(min=10), default=50_000, show_default=True,
              help="Columns (items).")
@click.option("--nnz", type=click.IntRange(min=10), default=10_000_000, show_default=True)
@click.option("-k", "ks", type=click.IntRange(min=1), multiple=True, default=(256, 64),
              show_default=True, help="Ranks to run (repeatable).")
@click.option("--oversampling", type=click.IntRange(min=0), default=None,
              help="bigcos block oversampling (default: the library's).")
@click.option("--n-iter", type=click.IntRange(min=1), default=None,
              help="bigcos passes over X (default: the library's).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--arpack", is_flag=True, help="Also run ARPACK svds (slow).")
@click.option("--propack-values-only", is_flag=True,
              help="Also time PROPACK without singular vectors (bigcos returns V too).")
@click.option("--no-sklearn", is_flag=True, help="Skip sklearn's randomized_svd.")
@json_option
def svd(n, p, nnz, ks, oversampling, n_iter, seed, arpack, propack_values_only, no_sklearn,
        json_path):
    """Truncated SVD of a power-law matrix: time, peak memory, error of sigma vs PROPACK.

    Runs PROPACK (the reference), bigcos, sklearn's randomized_svd (n_iter=4, float32) and
    optionally ARPACK, one after another in this process, for each -k.

    \b
    Example:
      bigcos bench svd --n 20000 --p 5000 --nnz 500000 -k 32 -k 8
    """
    import dask  # noqa: F401  (imported up front: a one-off cost, not part of the SVD)
    from scipy.sparse.linalg import svds

    from bigcos.svd import truncated_svd

    if max(ks) >= min(n, p):
        raise click.BadParameter(f"every k must be < min(n, p) = {min(n, p)}", param_hint="-k")
    t0 = time.perf_counter()
    X = powerlaw_matrix(n, p, nnz, seed)
    gen_s = time.perf_counter() - t0
    bandwidth = read_bandwidth()
    click.echo(f"matrix {n:,} x {p:,}, {X.nnz:,} non-zeros (generated in {gen_s:.1f} s); "
               f"read bandwidth {bandwidth / 1e9:.1f} GB/s")
    rows = []
    for k in sorted(ks, reverse=True):
        m_ref, ref = measure("scipy svds propack (float64)", lambda k=k: svds(
            X.astype(np.float64), k=k, solver="propack", return_singular_vectors="vh",
            rng=np.random.default_rng(seed)))
        ref_sigma = np.sort(ref[1])[::-1]
        del ref
        rows.append({**m_ref.row(), "k": k, "max_rel_err": 0.0, "sigma_k_rel_err": 0.0})
        if propack_values_only:
            m, out = measure("scipy svds propack values only (float64)", lambda k=k: svds(
                X.astype(np.float64), k=k, solver="propack", return_singular_vectors=False,
                rng=np.random.default_rng(seed)))
            rows.append({**m.row(), "k": k, **_errors(np.sort(out)[::-1], ref_sigma),
                         "vs_propack_time": round(m.seconds / m_ref.seconds, 3)})

        m, spec = measure("bigcos truncated_svd (float32)", lambda k=k: truncated_svd(
            X, k, oversampling=oversampling, n_iter=n_iter, seed=seed))
        bound = spec.info["passes"] * pass_bytes(X, spec.info["block_size"]) / bandwidth
        rows.append({**m.row(), "k": k, **_errors(spec.sigma, ref_sigma),
                     "passes": spec.info["passes"], "block": spec.info["block_size"],
                     "passes_s": spec.info["timings_s"]["passes"],
                     "orth_s": spec.info["timings_s"]["orthonormalize"],
                     "ritz_s": spec.info["timings_s"].get("rayleigh_ritz"),
                     "bw_bound_s": round(bound, 3),
                     "passes_vs_bound": round(spec.info["timings_s"]["passes"] / bound, 2),
                     "max_residual": spec.info["max_residual"],
                     "vs_propack_time": round(m.seconds / m_ref.seconds, 3)})
        del spec

        if not no_sklearn:
            try:
                from sklearn.utils.extmath import randomized_svd
            except ImportError:  # a peer of the bench extra: reported, not fatal
                rows.append({"name": "sklearn randomized_svd", "k": k,
                             "absent": "pip install 'bigcos[bench]'"})
            else:
                m, out = measure("sklearn randomized_svd n_iter=4 (float32)",
                                 lambda k=k: randomized_svd(X, k, n_iter=4, random_state=seed))
                rows.append({**m.row(), "k": k, **_errors(out[1], ref_sigma),
                             "vs_propack_time": round(m.seconds / m_ref.seconds, 3)})
                del out
        if arpack:
            m, out = measure("scipy svds arpack (float64)", lambda k=k: svds(
                X.astype(np.float64), k=k, solver="arpack", return_singular_vectors="vh",
                rng=np.random.default_rng(seed)))
            rows.append({**m.row(), "k": k, **_errors(np.sort(out[1])[::-1], ref_sigma),
                         "vs_propack_time": round(m.seconds / m_ref.seconds, 3)})
            del out
    report("truncated SVD (top-k singular values and right vectors)", rows, json_path,
           context={"n": n, "p": p, "nnz": int(X.nnz), "seed": seed,
                    "read_bandwidth_gb_s": round(bandwidth / 1e9, 2),
                    "generate_s": round(gen_s, 2)})
    for k in sorted(ks, reverse=True):
        _goal(k, [r for r in rows if r["k"] == k])


def _goal(k: int, rows: list[dict]) -> None:
    """One line per k: the issue's goal (error, a third of PROPACK's time, less memory)."""
    ours = next(r for r in rows if r["name"].startswith("bigcos"))
    ref = next(r for r in rows if r["name"].startswith("scipy svds propack (float64)"))
    skl = next((r for r in rows if r["name"].startswith("sklearn") and "absent" not in r), None)
    checks = [f"max rel err {ours['max_rel_err']:.1e} <= 1e-3: "
              f"{'yes' if ours['max_rel_err'] <= 1e-3 else 'NO'}",
              f"time {ours['seconds']:.1f} s <= PROPACK/3 = {ref['seconds'] / 3:.1f} s: "
              f"{'yes' if ours['seconds'] <= ref['seconds'] / 3 else 'NO'}"]
    if skl is not None:
        ok = ours["peak_extra_rss_bytes"] < skl["peak_extra_rss_bytes"]
        checks.append(f"peak {ours['peak_extra_rss_mib']} MiB < sklearn "
                      f"{skl['peak_extra_rss_mib']} MiB: {'yes' if ok else 'NO'}")
    click.echo(f"goal k={k}: " + "; ".join(checks))
