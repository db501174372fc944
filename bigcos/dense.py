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
multi-threaded BLAS. While a RowChunks is open (it is a context manager) BLAS runs at one
thread in the whole process, so LAPACK calls made meanwhile (eigh of small matrices) are
deterministic too, and OpenBLAS's idle threads do not spin (for ~0.1 s after each call, by
default) on cores that the sparse passes between the products need.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import scipy.linalg  # noqa: F401  (loads scipy's own OpenBLAS now, so the limit below covers it)
from threadpoolctl import threadpool_limits

ROWS = 4096  # rows per chunk: part of the definition of the result, not a tuning knob


def default_threads() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class RowChunks:
    """Tall-skinny products over fixed row chunks in a thread pool (see the module docstring).

    Use it as a context manager (products need it open); ``threads`` only changes speed.
    All operands are 2-D arrays whose first axis is the long one (p rows); results have the
    dtype numpy gives the chunk products unless stated.
    """

    def __init__(self, threads: int | None = None, rows: int = ROWS) -> None:
        self.rows = rows
        self._threads = max(1, threads or default_threads())
        self._pool: ThreadPoolExecutor | None = None
        self._limits = None

    def __enter__(self) -> RowChunks:
        # threadpoolctl limits the BLAS libraries loaded when it is called: scipy.linalg's
        # OpenBLAS (not numpy's) is imported at the top of this module for that reason
        self._limits = threadpool_limits(limits=1, user_api="blas")
        self._pool = ThreadPoolExecutor(self._threads)
        return self

    def __exit__(self, *exc) -> None:
        self._pool.shutdown()
        self._limits.restore_original_limits()

    def _slices(self, p: int) -> list[slice]:
        return [slice(a, min(a + self.rows, p)) for a in range(0, p, self.rows)]

    def tn(self, A: np.ndarray, B: np.ndarray, dtype=None) -> np.ndarray:
        """A^T B (m x b) for A (p x m), B (p x b); chunks cast to ``dtype`` first if given."""
        def part(s: slice) -> np.ndarray:
            a, b = A[s], B[s]
            if dtype is not None:
                a, b = a.astype(dtype, copy=False), b.astype(dtype, copy=False)
            return a.T @ b

        parts = list(self._pool.map(part, self._slices(A.shape[0])))
        out = parts[0].copy()
        for extra in parts[1:]:
            out += extra
        return out

    def gram(self, W: np.ndarray, dtype=None) -> np.ndarray:
        """W^T W as float64 (b x b); the chunk products in ``dtype`` (default: W's)."""
        return np.asarray(self.tn(W, W, dtype), dtype=np.float64)

    def nn(self, A: np.ndarray, M: np.ndarray, out: np.ndarray | None = None,
           subtract: bool = False) -> np.ndarray:
        """A @ M (p x b) for A (p x m), M (m x b) with M cast to A's dtype.

        With ``out``, the product is written into it (``subtract``: out -= A @ M) and returned.
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

        list(self._pool.map(part, self._slices(A.shape[0])))
        return out
