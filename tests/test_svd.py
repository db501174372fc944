"""bigcos.svd against dense numpy on small sparse matrices.

Oracles: ``np.linalg.svd`` / ``eigh`` of the explicitly densified, centred and scaled matrix.
Subspaces are compared as projectors V V^T (rotation and sign free). Tolerances: the float64
paths converge to the rounding level of the Rayleigh-Ritz step (~1e-13 relative); 1e-5 on
sigma and 1e-4 on projectors leave a margin of ~1e6 while still failing on any bias.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from bigcos.errors import UserError
from bigcos.svd import (
    Spectrum,
    default_block_count,
    load_spectrum,
    save_spectrum,
    truncated_svd,
)


def decaying_matrix(n: int = 500, p: int = 300, density: float = 0.05, seed: int = 0):
    """Sparse non-negative matrix whose columns are scaled by j^-0.7: a decaying spectrum."""
    rng = np.random.default_rng(seed)
    X = sp.random(n, p, density=density, random_state=rng, format="csr")
    X = (X @ sp.diags((1.0 + np.arange(p)) ** -0.7)).tocsr()
    return X.astype(np.float32)


def dense_reference(D: np.ndarray):
    """(sigma descending, V) of a dense matrix, from numpy's SVD."""
    _, s, vt = np.linalg.svd(D, full_matrices=True)
    s = np.concatenate([s, np.zeros(D.shape[1] - s.size)])
    return s, vt.T


def projector_gap(V: np.ndarray, W: np.ndarray) -> float:
    return float(np.abs(V @ V.T - W @ W.T).max())


def assert_spectrum_close(spec: Spectrum, D: np.ndarray, k: int, rtol=1e-5, ptol=1e-4):
    s, V = dense_reference(D)
    assert spec.sigma.shape == (k,) and spec.V.shape == (D.shape[1], k)
    np.testing.assert_allclose(spec.sigma, s[:k], rtol=rtol, atol=rtol * s[0])
    assert projector_gap(spec.V, V[:, :k]) < ptol
    np.testing.assert_allclose(spec.V.T @ spec.V, np.eye(k), atol=1e-10)


# --------------------------------------------------------------------------- accuracy
def test_randomised_float64_matches_dense_svd():
    X = decaying_matrix()
    spec = truncated_svd(X, 10, dtype=np.float64, n_iter=8)
    assert_spectrum_close(spec, X.toarray().astype(np.float64), 10)
    assert spec.info["method"] == "krylov" and spec.info["passes"] == 8
    assert spec.info["basis_dim"] < X.shape[1]          # not trivially the whole space
    assert np.all(np.diff(spec.sigma) <= 0)


def test_float32_default_path_is_accurate_to_float32():
    X = decaying_matrix(seed=3)
    spec = truncated_svd(X, 12)
    s, _ = dense_reference(X.toarray().astype(np.float64))
    np.testing.assert_allclose(spec.sigma, s[:12], rtol=1e-4)
    assert spec.info["dtype"] == "float32" and spec.V.dtype == np.float64
    np.testing.assert_allclose(spec.V.T @ spec.V, np.eye(12), atol=1e-10)


def test_exact_path_does_not_depend_on_the_blas_thread_count():
    """The dense eigh runs at one BLAS thread in a RowChunks pool thread (it used to run at
    the process's thread count, and its last bits changed with it)."""
    from threadpoolctl import threadpool_limits

    X = decaying_matrix(seed=8)
    with threadpool_limits(1):
        one = truncated_svd(X, 20, exact=True, col_center=np.full(X.shape[1], 0.01))
    with threadpool_limits(2):
        two = truncated_svd(X, 20, exact=True, col_center=np.full(X.shape[1], 0.01))
    np.testing.assert_array_equal(one.V, two.V)
    np.testing.assert_array_equal(one.residuals, two.residuals)


def test_exact_full_rank_including_zero_singular_values():
    X = decaying_matrix(n=40, p=60, density=0.2, seed=1)   # n < p: rank <= 40
    D = X.toarray().astype(np.float64)
    spec = truncated_svd(X, 60, exact=True)
    s, _ = dense_reference(D)
    np.testing.assert_allclose(spec.sigma, s, atol=1e-10 * s[0])
    np.testing.assert_allclose(spec.V.T @ spec.V, np.eye(60), atol=1e-12)
    np.testing.assert_allclose((spec.V * spec.sigma**2) @ spec.V.T, D.T @ D, atol=1e-10 * s[0] ** 2)
    assert spec.info["method"] == "exact"
    assert spec.residuals.max() < 1e-10


def test_randomised_k_equal_p():
    X = decaying_matrix(n=200, p=30, density=0.2, seed=2)
    spec = truncated_svd(X, 30, dtype=np.float64)
    D = X.toarray().astype(np.float64)
    s, _ = dense_reference(D)
    np.testing.assert_allclose(spec.sigma, s, rtol=1e-10, atol=1e-12 * s[0])
    np.testing.assert_allclose((spec.V * spec.sigma**2) @ spec.V.T, D.T @ D, atol=1e-10 * s[0] ** 2)


@pytest.mark.parametrize("exact", [False, True])
def test_implicit_centring_and_scaling_match_explicit(exact):
    X = decaying_matrix(seed=4)
    D = X.toarray().astype(np.float64)
    mu = D.mean(axis=0)
    scale = 1.0 / np.maximum(D.std(axis=0), 1e-3)
    scale[::7] = 0.0                                       # zero-weighted columns are allowed
    spec = truncated_svd(X, 8, dtype=np.float64, n_iter=10, exact=exact,
                         col_center=mu, col_scale=scale)
    assert_spectrum_close(spec, (D - mu) * scale, 8)
    assert spec.info["col_center"] and spec.info["col_scale"]


def test_centre_only_with_an_arbitrary_vector():
    X = decaying_matrix(seed=5)
    D = X.toarray().astype(np.float64)
    mu = np.random.default_rng(0).uniform(-0.2, 0.2, X.shape[1])
    spec = truncated_svd(X, 6, dtype=np.float64, n_iter=10, col_center=mu)
    assert_spectrum_close(spec, D - mu, 6)


def test_residuals_are_the_true_residuals():
    """Unconverged on purpose (2 passes): reported residuals must equal the dense ones."""
    X = decaying_matrix(seed=6)
    D = X.toarray().astype(np.float64)
    A = D.T @ D
    spec = truncated_svd(X, 10, dtype=np.float64, n_iter=2)
    true = np.linalg.norm(A @ spec.V - spec.V * spec.sigma**2, axis=0) / spec.sigma**2
    assert true.max() > 1e-6                                  # really unconverged
    np.testing.assert_allclose(spec.residuals, true, rtol=1e-6, atol=1e-12)
    assert spec.info["max_residual"] == pytest.approx(true.max(), rel=1e-6)


def test_tol_stops_early_once_residuals_are_small():
    X = decaying_matrix(n=800, p=500, seed=7)
    spec = truncated_svd(X, 5, dtype=np.float64, n_iter=30, oversampling=5, tol=1e-9)
    assert spec.info["converged"] is True
    assert spec.info["passes"] < 30
    assert spec.residuals.max() <= 1e-9
    s, _ = dense_reference(X.toarray().astype(np.float64))
    np.testing.assert_allclose(spec.sigma, s[:5], rtol=1e-8)


def test_rank_below_k_gives_zero_singular_values():
    rng = np.random.default_rng(12)
    base = sp.random(3, 25, density=0.5, random_state=rng, format="csr")
    X = sp.vstack([base] * 20).tocsr()                    # 60 x 25, rank 3
    D = X.toarray()
    spec = truncated_svd(X, 6, dtype=np.float64)
    s, V = dense_reference(D)
    np.testing.assert_allclose(spec.sigma[:3], s[:3], rtol=1e-10)
    assert np.all(spec.sigma[3:] < 1e-6 * s[0])
    np.testing.assert_allclose(spec.V.T @ spec.V, np.eye(6), atol=1e-10)
    assert projector_gap(spec.V[:, :3], V[:, :3]) < 1e-8
    zero = truncated_svd(sp.csr_matrix((30, 10)), 2)
    np.testing.assert_array_equal(zero.sigma, 0.0)
    np.testing.assert_allclose(zero.V.T @ zero.V, np.eye(2), atol=1e-10)


# --------------------------------------------------------------------------- determinism
def test_one_block_and_sixteen_blocks_agree():
    X = decaying_matrix(seed=8)
    one = truncated_svd(X, 10, dtype=np.float64, block_rows=X.shape[0])
    many = truncated_svd(X, 10, dtype=np.float64, block_rows=-(-X.shape[0] // 16))
    assert one.info["n_blocks"] == 1 and many.info["n_blocks"] == 16
    np.testing.assert_allclose(one.sigma, many.sigma, rtol=1e-12)
    np.testing.assert_allclose(one.V, many.V, atol=1e-9)


def test_same_seed_same_result_other_seed_other_start():
    X = decaying_matrix(seed=9)
    a = truncated_svd(X, 6, seed=3, n_iter=2)
    b = truncated_svd(X, 6, seed=3, n_iter=2)
    c = truncated_svd(X, 6, seed=4, n_iter=2)
    np.testing.assert_array_equal(a.sigma, b.sigma)
    np.testing.assert_array_equal(a.V, b.V)
    assert not np.array_equal(a.sigma, c.sigma)
    assert a.info["seed"] == 3


@pytest.fixture(scope="module")
def process_cluster():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0", memory_limit="1GiB") as cluster:
        yield cluster


@pytest.mark.cluster
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("block_rows", [None, 7])
@pytest.mark.parametrize("centred", [True, False])
def test_threaded_and_process_cluster_agree_bitwise(process_cluster, dtype, block_rows, centred):
    """The row partition depends on the data alone, so the float sums run in the same order
    on any scheduler and the result is bitwise identical (what byte-identical pipeline
    outputs on local and remote clusters rest on). Uncentred, the pass result is used as
    received from a worker, where it may sit unaligned (numpy would then skip BLAS)."""
    from distributed import Client

    X = decaying_matrix(seed=10)
    kw = dict(dtype=dtype, col_center=np.full(X.shape[1], 0.01) if centred else None,
              block_rows=block_rows)
    threaded = truncated_svd(X, 8, **kw)
    with Client(process_cluster) as client:
        clustered = truncated_svd(X, 8, client=client, scheduler="distributed", **kw)
    assert threaded.info["scheduler"] == "threaded"
    assert clustered.info["scheduler"] == "distributed"
    assert clustered.info["n_blocks"] == threaded.info["n_blocks"]
    assert threaded.info["n_blocks"] == (1 if block_rows is None else -(-X.shape[0] // 7))
    np.testing.assert_array_equal(threaded.sigma, clustered.sigma)
    np.testing.assert_array_equal(threaded.V, clustered.V)


@pytest.mark.cluster
def test_auto_scheduler_runs_passes_in_threads_beside_a_local_cluster(process_cluster):
    """Workers of a LocalCluster share this machine's cores: shipping the operand to them
    every pass only costs time, so ``auto`` keeps the passes in this process's threads; a
    client connected by address (a remote scheduler, as far as it can tell) gets them."""
    from distributed import Client

    X = decaying_matrix(seed=13)
    with Client(process_cluster) as client:
        before = client.run(lambda dask_worker: len(dask_worker.data))
        auto = truncated_svd(X, 5, client=client)
        threads = truncated_svd(X, 5, client=client, scheduler="threads")
        assert client.run(lambda dask_worker: len(dask_worker.data)) == before
        forced = truncated_svd(X, 5, client=client, scheduler="distributed")
    with Client(process_cluster.scheduler_address) as remote:
        assert remote.cluster is None
        by_address = truncated_svd(X, 5, client=remote)
    assert auto.info["scheduler"] == threads.info["scheduler"] == "threaded"
    assert forced.info["scheduler"] == by_address.info["scheduler"] == "distributed"
    for other in (threads, forced, by_address):
        np.testing.assert_array_equal(auto.V, other.V)
        np.testing.assert_array_equal(auto.sigma, other.sigma)


@pytest.mark.cluster
def test_an_open_client_is_never_picked_up(process_cluster):
    """Only the ``client`` argument places passes: an open default client is ignored."""
    from distributed import Client

    X = decaying_matrix(seed=13)
    with Client(process_cluster):
        assert truncated_svd(X, 5, scheduler="auto").info["scheduler"] == "threaded"
        with pytest.raises(UserError, match="scheduler='distributed' needs a client"):
            truncated_svd(X, 5, scheduler="distributed")


def test_default_partition_ignores_the_cluster():
    assert default_block_count(10) == 1
    assert default_block_count(10_000_000) == 2
    assert default_block_count(12_500_000) == 3
    assert default_block_count(10**10) == 8


# --------------------------------------------------------------------------- errors and I/O
@pytest.mark.parametrize("kwargs,message", [
    ({"k": 41}, "k=41"),                                    # > min(n, p) = 40
    ({"k": 0}, "k=0"),
    ({"k": 61, "exact": True}, "k=61"),
    ({"k": 5, "col_center": np.zeros(3)}, "col_center"),
    ({"k": 5, "col_scale": np.full(60, np.nan)}, "col_scale"),
    ({"k": 5, "dtype": np.int32}, "dtype"),
    ({"k": 5, "oversampling": -1}, "oversampling"),
    ({"k": 5, "tile_cols": 0}, "tile_cols"),
    ({"k": 5, "scheduler": "cloud"}, "scheduler='cloud'"),
    ({"k": 5, "scheduler": "distributed"}, "needs a client: pass client="),
    ({"k": 5, "tol": -1.0}, "tol"),
    ({"k": 5, "n_iter": 0}, "n_iter"),
    ({"k": 5, "block_rows": 0}, "block_rows"),
])
def test_bad_arguments_raise_user_errors(kwargs, message):
    X = decaying_matrix(n=40, p=60, density=0.2)
    with pytest.raises(UserError, match=message) as err:
        truncated_svd(X, **kwargs)
    assert "--" not in str(err.value)                       # parameters, never CLI flags


def test_k_errors_name_the_parameters_of_each_path():
    X = decaying_matrix(n=40, p=60, density=0.2)
    with pytest.raises(UserError, match=r"k=41: k must be <= min\(n, p\) = 40 .*exact"):
        truncated_svd(X, 41)
    with pytest.raises(UserError, match="k=61: k must be <= p = 60 .*for exact"):
        truncated_svd(X, 61, exact=True)


def test_bad_matrices_raise_user_errors():
    with pytest.raises(UserError, match="X: expected"):
        truncated_svd([[1.0, 2.0]], 1)
    X = decaying_matrix(n=20, p=10, density=0.5)
    X.data[0] = np.nan
    with pytest.raises(UserError, match="NaN"):
        truncated_svd(X, 2)


def test_save_and_load_round_trip(tmp_path):
    X = decaying_matrix(seed=11)
    spec = truncated_svd(X, 7)
    save_spectrum(tmp_path / "svd", spec)
    back = load_spectrum(tmp_path / "svd")
    np.testing.assert_array_equal(back.sigma, spec.sigma)
    np.testing.assert_array_equal(back.V, spec.V)
    np.testing.assert_array_equal(back.residuals, spec.residuals)
    assert back.info["passes"] == spec.info["passes"]
    (tmp_path / "svd" / "svd.npz").unlink()
    with pytest.raises(UserError, match="svd.npz"):
        load_spectrum(tmp_path / "svd")


# --------------------------------------------------------------------------- benchmark
def test_bench_matrix_and_command_run_small(tmp_path):
    import json

    from click.testing import CliRunner

    from bigcos.bench.svd import powerlaw_matrix, svd

    X = powerlaw_matrix(2000, 500, 20_000, seed=1)
    assert X.shape == (2000, 500) and abs(X.nnz - 20_000) <= 400
    assert X.dtype == np.float32 and np.all(X.data == 1.0) and X.has_canonical_format
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(svd, ["--n", "600", "--p", "200", "--nnz", "6000", "-k", "6",
                                      "--json", str(out)])
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())["rows"]
    ours = next(r for r in rows if r["name"].startswith("bigcos"))
    assert ours["max_rel_err"] < 1e-3 and ours["passes"] == 6
    assert "goal k=6" in result.output


def test_the_algebra_imports_no_dask_and_no_io():
    """bigcos.krylov is pure numpy/scipy: the driver places the passes, not the maths."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys, bigcos.krylov\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')"
            " or m in ('bigcos.io', 'bigcos.gram', 'bigcos.svd', 'pyarrow')))\n")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True, timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "[]"
