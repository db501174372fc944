"""Products with tall dense operands (p x m, p large) whose rounding does not depend on threads.

OpenBLAS splits a GEMM across its threads in a way that depends on their number, and the
split changes the order of the float sums: the same ``K.T @ Z`` differs in the last bits on a
1-core and a 2-core machine, or when another library has just lowered the BLAS thread count.
The truncated SVD feeds such products through several passes and an eigensolver, so those bits
reach the embeddings, and with them tie-breaks in neighbour lists.

:class:`RowChunks` fixes the split instead: rows are cut into chunks of ``rows`` rows (a
constant), each chunk's product runs in single-threaded BLAS, and chunks run in parallel in a
thread pool. Reductions over rows (``A^T B``) add the chunk results in chunk order. The result
is then a function of the inputs alone, whatever the number of cores; the speed is that of
multi-threaded BLAS. Small dense LAPACK work (eigh of b x b matrices, Cholesky) goes through
:meth:`RowChunks.call`, so it runs single-threaded in a pool thread too.

The BLAS limit is set where the products run: each pool thread sets it to one thread in its
initializer and checks it there (``threadpoolctl.threadpool_info`` seen from that thread); the
pool refuses to run if a BLAS library still reports more threads. That is what an OpenMP BLAS
(per-thread limits) needs. A pthreads OpenBLAS (numpy's and scipy's wheels) has one
process-wide setting that threadpoolctl lets a single "controlling" thread change, so the
first RowChunks to open also sets it from its own thread, and the last to close restores it
(a lock and a count make concurrent RowChunks safe); the pool threads' check covers both
cases. Meanwhile OpenBLAS's idle threads do not spin on cores the sparse passes need.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures.thread import BrokenThreadPool
from typing import Any

import numpy as np
import scipy.linalg  # noqa: F401  (loads scipy's own OpenBLAS now, so the pool threads limit it)
from threadpoolctl import OpenBLASController, threadpool_info, threadpool_limits

ROWS = 4096  # rows per chunk: part of the definition of the result, not a tuning knob

_limits_lock = threading.Lock()
_open_pools = 0                       # RowChunks currently open in this process
_process_limit = None                 # the process-wide limit set by the first to open


class BlasThreadsError(RuntimeError):
    """A BLAS library kept more than one thread inside a RowChunks pool thread."""


def default_threads() -> int:
    """Cores this process may run on.

    Returns
    -------
    int
        ``len(os.sched_getaffinity(0))`` on Linux, else ``os.cpu_count()`` (at least 1).
    """
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def blas_threads_here() -> list[dict]:
    """``threadpoolctl.threadpool_info()`` entries of the BLAS libraries, seen from this thread.

    Returns
    -------
    list of dict
        One dict per loaded BLAS library (keys ``internal_api``, ``filepath``,
        ``num_threads``, ...).
    """
    return [info for info in threadpool_info() if info["user_api"] == "blas"]


def _one_blas_thread() -> None:
    """Pool-thread initializer: BLAS at one thread in this thread, verified."""
    threadpool_limits(limits=1, user_api="blas")
    busy = [f"{i['internal_api']} ({i['filepath']}) reports {i['num_threads']} threads"
            for i in blas_threads_here() if i["num_threads"] != 1]
    if busy:
        raise BlasThreadsError("RowChunks pool thread: BLAS could not be limited to one thread "
                               "(results would depend on the core count): " + "; ".join(busy))


class RowChunks:
    """Tall-skinny products over fixed row chunks in a thread pool (see the module docstring).

    Use it as a context manager (products need it open). All operands are 2-D arrays whose
    first axis is the long one (p rows); results have the dtype numpy gives the chunk products
    unless stated. Memory: one (m x b) partial result per chunk for :meth:`tn`; :meth:`nn`
    writes into its output directly.

    Parameters
    ----------
    threads : int, optional
        Pool threads (default :func:`default_threads`); changes speed only, never results.
    rows : int
        Rows per chunk (default ``ROWS`` = 4096); part of the definition of the result.

    Raises
    ------
    BlasThreadsError
        From the first product, if a pool thread could not limit a BLAS library to one thread.
    """

    def __init__(self, threads: int | None = None, rows: int = ROWS) -> None:
        self.rows = rows
        self._threads = max(1, threads or default_threads())
        self._pool: ThreadPoolExecutor | None = None
        self._init_error: BaseException | None = None

    def __enter__(self) -> RowChunks:
        global _open_pools, _process_limit
        with _limits_lock:
            if _open_pools == 0:     # process-wide pools (pthreads OpenBLAS); see module doc
                _process_limit = threadpool_limits(limits=1, user_api="blas")
            _open_pools += 1
        self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="bigcos-rowchunks",
                                        initializer=self._initialize)
        return self

    def __exit__(self, *exc) -> None:
        global _open_pools
        self._pool.shutdown()
        with _limits_lock:
            _open_pools -= 1
            if _open_pools == 0:     # possibly not the thread that set it: take control
                OpenBLASController.clear_controlling_thread(force=True)
                _process_limit.restore_original_limits()
                OpenBLASController.clear_controlling_thread()

    def _initialize(self) -> None:
        try:
            _one_blas_thread()
        except BaseException as exc:   # the pool only logs it: keep it to raise in the caller
            self._init_error = exc
            raise

    def _run(self, futures: list) -> list:
        try:
            return [f.result() for f in futures]
        except BrokenThreadPool:
            if self._init_error is not None:
                raise self._init_error from None
            raise

    def call(self, fn: Callable[..., Any], *args, **kwargs) -> Any:
        """``fn(*args, **kwargs)`` run in one pool thread, where BLAS/LAPACK use one thread.

        Parameters
        ----------
        fn : callable
            Typically a small dense LAPACK or BLAS call (eigh, Cholesky, a GEMV).
        *args, **kwargs
            Passed to ``fn``.

        Returns
        -------
        object
            What ``fn`` returns; its rounding does not depend on the BLAS thread count.
        """
        return self._run([self._pool.submit(fn, *args, **kwargs)])[0]

    def _map(self, fn: Callable, p: int) -> list:
        slices = [slice(a, min(a + self.rows, p)) for a in range(0, p, self.rows)]
        return self._run([self._pool.submit(fn, s) for s in slices])

    def tn(self, A: np.ndarray, B: np.ndarray, dtype=None) -> np.ndarray:
        """A^T B, summed over the row chunks in chunk order.

        Parameters
        ----------
        A : ndarray, shape (p, m)
        B : ndarray, shape (p, b)
        dtype : dtype, optional
            Cast each chunk to this dtype before its product (e.g. float64 accumulation of
            float32 operands); memory: one chunk copy per thread.

        Returns
        -------
        ndarray, shape (m, b)
        """
        def part(s: slice) -> np.ndarray:
            a, b = A[s], B[s]
            if dtype is not None:
                a, b = a.astype(dtype, copy=False), b.astype(dtype, copy=False)
            return a.T @ b

        parts = self._map(part, A.shape[0])
        out = parts[0].copy()
        for extra in parts[1:]:
            out += extra
        return out

    def gram(self, W: np.ndarray, dtype=None) -> np.ndarray:
        """W^T W as float64.

        Parameters
        ----------
        W : ndarray, shape (p, b)
        dtype : dtype, optional
            Precision of the chunk products (default: W's).

        Returns
        -------
        ndarray, shape (b, b), float64
        """
        return np.asarray(self.tn(W, W, dtype), dtype=np.float64)

    def nn(self, A: np.ndarray, M: np.ndarray, out: np.ndarray | None = None,
           subtract: bool = False) -> np.ndarray:
        """A @ M, row chunk by row chunk (no reduction, so the split only sets the speed).

        Parameters
        ----------
        A : ndarray, shape (p, m)
        M : ndarray, shape (m, b)
            Cast to A's dtype.
        out : ndarray, shape (p, b), optional
            Written in place (a strided view is fine); default: a new array of A's dtype.
        subtract : bool
            With ``out``: ``out -= A @ M`` instead of ``out = A @ M``.

        Returns
        -------
        ndarray, shape (p, b)
            ``out`` if given.
        """
        M = np.asarray(M, dtype=A.dtype)
        if out is None:
            out = np.empty((A.shape[0], M.shape[1]), dtype=A.dtype)
            subtract = False

        def part(s: slice) -> None:
            if subtract:
                out[s] -= A[s] @ M
            else:
                np.matmul(A[s], M, out=out[s])

        self._map(part, A.shape[0])
        return out
