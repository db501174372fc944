"""Seeded percentile bootstrap intervals and paired comparisons (pure numpy).

MATH.md, "Choosing λ and stating results": every held-out figure carries a percentile bootstrap
interval over its units (users for rankings, queries for agreement figures), and every
comparison of two configurations is *paired*: the same resampled units are used for both, and
the statistic is the mean of the per-unit difference. A comparison's verdict is "a better" when
the interval of mean(a - b) lies above 0, "b better" when it lies below 0, else
"no difference" (larger is better for every measure compared here).

Cost: O(n_resamples * n) time; resamples are drawn in chunks of at most ~8 million indices,
so memory stays below ~130 MB whatever n is.

References
----------
Efron & Tibshirani (1993), "An Introduction to the Bootstrap", ch. 13 (percentile interval).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

VERDICTS = ("a better", "b better", "no difference")
_CHUNK_INDICES = 1 << 23
_COUNTS_MAX = 1 << 25  # resamples x units kept as float32 counts (128 MiB), per cached draw


@dataclass(frozen=True)
class Interval:
    """A mean with its percentile bootstrap interval over ``n`` units (NaN units dropped)."""

    estimate: float
    lo: float
    hi: float
    n: int


@dataclass(frozen=True)
class Comparison:
    """Mean of the per-unit difference a - b, its paired interval, and the verdict."""

    estimate: float
    lo: float
    hi: float
    verdict: str
    n: int


def _resample_blocks(n: int, n_resamples: int, seed: int):
    """The resampled unit indices of ``seed`` in blocks of rows: (start, stop, idx)."""
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_INDICES // max(n, 1))
    for start in range(0, n_resamples, chunk):
        stop = min(n_resamples, start + chunk)
        yield start, stop, rng.integers(0, n, size=(stop - start, n))


@functools.lru_cache(maxsize=2)
def _resample_counts(n: int, n_resamples: int, seed: int) -> np.ndarray:
    """(n_resamples, n) float32: how often each unit is drawn in each resample (exact
    small integers).

    A report bootstraps many figures over the same units with the same seed; with the counts
    kept, each further figure costs one matrix-vector product instead of new draws.
    """
    counts = np.empty((n_resamples, n), np.float32)
    for start, stop, idx in _resample_blocks(n, n_resamples, seed):
        flat = (np.arange(stop - start)[:, None] * n + idx).ravel()
        counts[start:stop] = np.bincount(flat, minlength=(stop - start) * n).reshape(-1, n)
    counts.flags.writeable = False
    return counts


def _counts_times(counts: np.ndarray, values: np.ndarray) -> np.ndarray:
    """counts (r, n) @ values (n, m) in single-threaded BLAS (:class:`bigcos.dense.RowChunks`),
    so the float32 sums, and with them every interval, are the same bits on any machine."""
    from bigcos.dense import RowChunks

    with RowChunks(threads=1) as blas:
        return blas.nn(counts, values)


def _drawn_means(xs: list[np.ndarray], n_resamples: int, seed: int) -> list[np.ndarray]:
    """(n_resamples,) means of each of ``xs`` (all of n units) over the resamples of ``seed``,
    drawn block by block (for inputs too large to keep their counts): the draws of
    :func:`_resample_counts`, made once for all of ``xs``."""
    n = len(xs[0])
    means = [np.empty(n_resamples, np.float64) for _ in xs]
    for start, stop, idx in _resample_blocks(n, n_resamples, seed):
        for x, m in zip(xs, means, strict=True):
            m[start:stop] = x[idx].mean(axis=1)
    return means


def _check_resamples(n_resamples: int) -> None:
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")


def _check(n_resamples: int, level: float) -> None:
    _check_resamples(n_resamples)
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")


def bootstrap_mean(x: np.ndarray, n_resamples: int = 1000, level: float = 0.95,
                   seed: int = 0) -> Interval:
    """Mean of ``x`` (n,) with a percentile bootstrap interval; NaN entries are dropped.

    Parameters
    ----------
    x : (n,) per-unit values (e.g. Recall@20 per user, Jaccard@N per query).
    n_resamples : bootstrap resamples (units drawn with replacement).
    level : coverage of the interval (0.95: the 2.5 % and 97.5 % percentiles).
    seed : seed of ``numpy.random.default_rng``; the same seed gives the same interval.

    Returns
    -------
    Interval (estimate, lo, hi, n). All NaN when no unit is left.
    """
    _check(n_resamples, level)
    return resample_means([x], n_resamples, seed)[0].interval(level)


@dataclass(frozen=True)
class Resampled:
    """A mean over ``n`` units with its ``n_resamples`` bootstrap means (kept, so intervals at
    any level cost one quantile: Holm's step-down re-tests at several levels)."""

    estimate: float
    n: int
    means: np.ndarray | None  # (n_resamples,); None when no unit is left

    def interval(self, level: float) -> Interval:
        """The percentile interval of coverage ``level``."""
        if self.means is None:
            return Interval(float("nan"), float("nan"), float("nan"), 0)
        lo, hi = np.quantile(self.means, [(1 - level) / 2, (1 + level) / 2])
        return Interval(self.estimate, float(lo), float(hi), self.n)

    def comparison(self, level: float) -> Comparison:
        """For per-unit differences a - b: the interval and the verdict (module docstring)."""
        iv = self.interval(level)
        verdict = ("a better" if iv.lo > 0 else "b better" if iv.hi < 0 else "no difference")
        return Comparison(iv.estimate, iv.lo, iv.hi, verdict, iv.n)


def resample_means(xs: list[np.ndarray], n_resamples: int = 1000, seed: int = 0
                   ) -> list[Resampled]:
    """The bootstrap means of every array in ``xs`` (NaN units dropped), computed together.

    Inputs with the same number of units share their resamples (those of :func:`bootstrap_mean`
    with ``seed``), so each group costs one matrix product (n_resamples x n) @ (n x m) instead
    of m separate draws; a group of one is exactly :func:`bootstrap_mean`'s computation.
    """
    _check_resamples(n_resamples)
    out: list[Resampled | None] = [None] * len(xs)
    groups: dict[int, list[tuple[int, np.ndarray]]] = {}
    for i, x in enumerate(xs):
        x = np.asarray(x, np.float64)
        groups.setdefault(int((~np.isnan(x)).sum()), []).append((i, x[~np.isnan(x)]))
    for n, members in groups.items():
        if n == 0:
            for i, _ in members:
                out[i] = Resampled(float("nan"), 0, None)
            continue
        if n * n_resamples > _COUNTS_MAX:
            drawn = _drawn_means([x for _, x in members], n_resamples, seed)
            for (i, x), means in zip(members, drawn, strict=True):
                out[i] = Resampled(float(x.mean()), n, means)
            continue
        counts = _resample_counts(n, n_resamples, seed)
        means = np.empty((n_resamples, len(members)), np.float32)
        for c0 in range(0, len(members), 256):  # (n, 256) float32 values at a time
            values = np.stack([x for _, x in members[c0:c0 + 256]], axis=1).astype(np.float32)
            means[:, c0:c0 + 256] = _counts_times(counts, values)
        means /= n
        for j, (i, x) in enumerate(members):
            out[i] = Resampled(float(x.mean()), n, means[:, j])
    return out


def bootstrap_means(xs: list[np.ndarray], n_resamples: int = 1000, level: float = 0.95,
                    seed: int = 0) -> list[Interval]:
    """:func:`bootstrap_mean` of every array in ``xs``, the same intervals (to float32
    rounding of the products), computed together by :func:`resample_means`."""
    _check(n_resamples, level)
    return [r.interval(level) for r in resample_means(xs, n_resamples, seed)]


def paired_differences(pairs: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
    """Per-unit a - b of each pair (equal 1-d shapes; NaN where either is NaN), for
    :func:`resample_means` and :meth:`Resampled.comparison`."""
    out = []
    for a, b in pairs:
        a = np.asarray(a, np.float64)
        b = np.asarray(b, np.float64)
        if a.shape != b.shape or a.ndim != 1:
            raise ValueError(f"paired values need equal 1-d shapes, got {a.shape} and "
                             f"{b.shape}")
        out.append(a - b)
    return out


def paired_bootstrap(a: np.ndarray, b: np.ndarray, n_resamples: int = 1000, level: float = 0.95,
                     seed: int = 0) -> Comparison:
    """Paired comparison of two measurements of the same units: mean(a - b) and its interval.

    Parameters
    ----------
    a, b : (n,) per-unit values of configurations a and b on the same units (row i of both is
        unit i). Units where either is NaN are dropped. Larger is better.
    n_resamples, level, seed : as in :func:`bootstrap_mean`.

    Returns
    -------
    Comparison (estimate, lo, hi, verdict, n) with verdict in :data:`VERDICTS`:
    "a better" when lo > 0, "b better" when hi < 0, else "no difference" (also when no unit is
    left, with NaN figures).
    """
    (diff,) = paired_differences([(a, b)])
    return resample_means([diff], n_resamples, seed)[0].comparison(level)
