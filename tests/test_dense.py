"""RowChunks: tall-skinny products whose rounding is fixed by a constant row split."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from bigcos import dense
from bigcos.dense import BlasThreadsError, RowChunks, blas_threads_here
from bigcos.svd import truncated_svd
from tests.test_svd import decaying_matrix


@pytest.fixture
def operands():
    rng = np.random.default_rng(0)
    # 10,001 rows: two full chunks of 4,096 and a ragged one
    return (rng.standard_normal((10_001, 40)).astype(np.float32),
            rng.standard_normal((10_001, 24)).astype(np.float32),
            rng.standard_normal((40, 24)).astype(np.float32))


def test_products_match_numpy_in_float64(operands):
    A, B, M = operands
    A64, B64, M64 = (x.astype(np.float64) for x in operands)
    with RowChunks() as blas:
        np.testing.assert_allclose(blas.tn(A, B), A64.T @ B64, rtol=0, atol=2e-3)
        np.testing.assert_allclose(blas.tn(A, B, np.float64), A64.T @ B64, rtol=1e-12)
        np.testing.assert_allclose(blas.gram(A, np.float64), A64.T @ A64, rtol=1e-12)
        assert blas.gram(A).dtype == np.float64
        np.testing.assert_allclose(blas.nn(A, M), A64 @ M64, rtol=0, atol=1e-4)
        Z = B.copy()
        out = blas.nn(A, M, out=Z, subtract=True)
        assert out is Z
        np.testing.assert_allclose(Z, B64 - A64 @ M64, rtol=0, atol=1e-4)
        # an F-ordered or float64 M is cast to A's dtype; a strided output view is filled
        wide = np.zeros((A.shape[0], 30), np.float32)
        blas.nn(A, np.asfortranarray(M64), out=wide[:, 3:27])
        np.testing.assert_allclose(wide[:, 3:27], A64 @ M64, rtol=0, atol=1e-4)
        assert not wide[:, :3].any() and not wide[:, 27:].any()


@pytest.mark.parametrize("threads", [2, 3, 7])
def test_results_do_not_depend_on_threads(operands, threads):
    A, B, M = operands
    with RowChunks(threads=1) as one, RowChunks(threads=threads) as many:
        one_tn = one.tn(A, B)
        for a, b in [(one.tn(A, B), many.tn(A, B)), (one.gram(A), many.gram(A)),
                     (one.nn(A, M), many.nn(A, M))]:
            np.testing.assert_array_equal(a, b)
    # the split, not BLAS's own threading, defines the result; the limit is lifted afterwards
    with threadpool_limits(2):
        with RowChunks(threads=threads) as blas:
            assert blas.call(_blas_threads) == 1
            np.testing.assert_array_equal(blas.tn(A, B), one_tn)
        assert _blas_threads() == 2


def _blas_threads() -> int:
    return max(i["num_threads"] for i in blas_threads_here())


@pytest.mark.parametrize("threads", [1, 3])
def test_every_pool_thread_runs_every_blas_at_one_thread(operands, threads):
    """Checked from inside each pool thread (a barrier makes every thread take one task),
    with the process at 2 BLAS threads: that is where an OpenMP BLAS applies its limit."""
    A, B, M = operands
    barrier = threading.Barrier(threads)

    def seen_from_this_thread():
        barrier.wait(timeout=30)
        return threading.get_ident(), blas_threads_here()

    with threadpool_limits(2), RowChunks(threads=1) as one, RowChunks(threads=threads) as blas:
        seen = [f.result() for f in [blas._pool.submit(seen_from_this_thread)
                                     for _ in range(threads)]]
        for a, b in [(one.tn(A, B), blas.tn(A, B)), (one.gram(A), blas.gram(A)),
                     (one.nn(A, M), blas.nn(A, M))]:
            np.testing.assert_array_equal(a, b)
    assert len({ident for ident, _ in seen}) == threads
    for _, libraries in seen:
        assert libraries                                 # numpy's BLAS at least
        assert [lib["num_threads"] for lib in libraries] == [1] * len(libraries)


def test_a_blas_that_keeps_its_threads_fails_loudly(operands, monkeypatch):
    """If the limit does not take (here: it is not applied at all), the pool thread's check
    stops the products instead of computing core-count-dependent bits."""
    A, B, _ = operands
    real = dense.threadpool_limits
    monkeypatch.setattr(dense, "threadpool_limits", lambda **kw: real(limits=None))
    with (threadpool_limits(2), pytest.raises(BlasThreadsError, match="reports 2 threads"),
          RowChunks(threads=2) as blas):
        blas.tn(A, B)
    monkeypatch.undo()
    with RowChunks(threads=2) as blas:                   # the count of open pools is intact
        assert blas.call(_blas_threads) == 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_truncated_svd_is_the_same_on_one_core_and_on_many(monkeypatch, dtype):
    """What byte-identical outputs on machines with different core counts rest on: OpenBLAS
    splits one GEMM differently for 1 and 2 threads, RowChunks does not."""
    X = decaying_matrix(n=1500, p=9000, density=0.01, seed=11)  # p > 2 chunks
    runs = []
    for threads in (1, 4):
        monkeypatch.setattr(dense, "default_threads", lambda threads=threads: threads)
        with threadpool_limits(min(threads, 2)):   # as on a 1-core and a 2-core machine
            runs.append(truncated_svd(X, 10, dtype=dtype))
    np.testing.assert_array_equal(runs[0].sigma, runs[1].sigma)
    np.testing.assert_array_equal(runs[0].V, runs[1].V)


def test_every_blas_runs_at_one_thread_inside_even_in_a_fresh_process():
    """threadpoolctl limits only the BLAS libraries already loaded. scipy.linalg brings its
    own OpenBLAS; loaded lazily inside the limit, it ran the Rayleigh-Ritz eigensolver
    multi-threaded in the first SVD of a process (every CLI run), single-threaded afterwards,
    and the bits differed (seen on the 200,000 x 50,000 bench matrix)."""
    import subprocess
    import sys

    code = ("from bigcos.dense import RowChunks, blas_threads_here\n"
            "with RowChunks(threads=2) as blas:\n"
            "    import scipy.linalg\n"
            "    info = blas.call(blas_threads_here)\n"
            "    print(len(info), max(i['num_threads'] for i in info))\n")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "2"}  # as on any multi-core machine
    out = subprocess.run([sys.executable, "-c", code], check=True, cwd=root, timeout=120,
                         capture_output=True, text=True, env=env).stdout.split()
    assert int(out[0]) >= 1 and out[1] == "1"   # here: numpy's and scipy's OpenBLAS
