"""Choosing λ on validation users: one SVD serves the whole regularisation path.

Every closed-form model is diagonal in the SVD basis V_k (:mod:`bigcos.models`), so a
model at another λ is a new set of k-vectors (a, b), not a new SVD. For validation users
(disjoint from the test users and not fit on) with fold-in rows X_v, P = X_v V_k is computed
once; each grid point then costs one exact top-N ranking of those users. λ is chosen
separately for each ranking metric (dot, cosine), by a validation measure (Recall@20 by
default), on a grid relative to the spectrum (MATH.md, "Choosing λ and stating results"):

- objective 1 (λ acts on σ²): geometric from σ_k²/10 to 10·σ_1²;
- objective 2 (λ acts on σ): 0, then geometric from σ_k/10 to 0.99·σ_1 (λ ≥ σ_i drops
  dimension i; at least one dimension is always kept).

Ties in the measure go to the smaller λ (the grid is increasing), so the choice is a
deterministic function of the validation users alone: the test users never enter.
Numpy on top of the ranking kernel, no IO; :func:`select` runs its rankings (one per family,
λ and metric) as Dask tasks on the caller's ``client``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bigcos.errors import UserError
from bigcos.evaluation import MEASURES, HeldOut, per_user

GRID_POINTS = 20


def lambda_grid(sigma: np.ndarray, objective: int, points: int = GRID_POINTS) -> np.ndarray:
    """The λ path of ``objective`` (1 or 2) relative to the spectrum ``sigma`` (k,).

    Returns
    -------
    (points,) float64, increasing.
    """
    s = np.sort(np.asarray(sigma, np.float64)[np.asarray(sigma) > 0])[::-1]
    if s.size == 0:
        raise ValueError("lambda_grid: every singular value is zero")
    if points < 2:
        raise ValueError(f"lambda_grid: points must be >= 2, got {points}")
    if objective == 1:
        return np.geomspace(s[-1] ** 2 / 10, 10 * s[0] ** 2, points)
    if objective == 2:
        return np.concatenate([[0.0], np.geomspace(s[-1] / 10, 0.99 * s[0], points - 1)])
    raise ValueError(f"lambda_grid: objective must be 1 or 2, got {objective}")


def scoring_factors(solution: Any, V: np.ndarray, P: np.ndarray, metric: str,
                    col_center: np.ndarray | None = None,
                    col_scale: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(user factors, item factors) whose dot or cosine is what the model ranks by.

    Parameters
    ----------
    solution : bigcos.models.Solution
        A closed-form model in the basis V (vectors a, b, g, kept of length k).
    V : (p, k) the SVD basis of the fitted matrix X~ = (X - 1 mu^T) diag(s).
    P : (m, k) X~ V for the users to score (their fold-in rows).
    metric : "dot" ranks by the model's prediction of X in X's own scale,
        X^ = X~ W diag(s)^-1 + 1 mu^T with W = V dMat(h) V^T, h = a*b (factor models) or
        h = g (project-back: W = V G V^T, not the product of its exported factors, which is
        V G^2 V^T); "cos" is the cosine of the exported embeddings (X~A, B).
    col_center, col_scale : (p,) or None
        The column remedy's mu and s (None: 0 and 1).

    Returns
    -------
    (m, d) and (p, d) float32 arrays; d = kept dimensions (+1 with a centring column).
    """
    kept = solution.kept
    if metric == "cos":
        return ((P[:, kept] * solution.a[kept]).astype(np.float32),
                (V[:, kept] * solution.b[kept]).astype(np.float32))
    if metric != "dot":
        raise ValueError(f"scoring_factors: metric must be 'dot' or 'cos', got {metric!r}")
    h = solution.g if solution.spec.project_back else solution.a * solution.b
    users = P[:, kept] * h[kept]
    items = V[:, kept].astype(np.float64)
    if col_scale is not None:
        items = items / np.asarray(col_scale, np.float64)[:, None]
    if col_center is not None:
        users = np.hstack([users, np.ones((users.shape[0], 1))])
        items = np.hstack([items, np.asarray(col_center, np.float64)[:, None]])
    return users.astype(np.float32), items.astype(np.float32)


def path(sigma: np.ndarray, V: np.ndarray, P: np.ndarray, heldout: HeldOut,
         model_at: Callable[[float], Any], grid: Sequence[float],
         metric_names: Sequence[str] = ("dot", "cos"), k: int = 20,
         col_center: np.ndarray | None = None, col_scale: np.ndarray | None = None
         ) -> list[dict[str, Any]]:
    """Validation Recall@k and NDCG@k of one model family along a λ grid.

    Parameters
    ----------
    sigma, V : the spectrum (k,) and basis (p, k) of the fitted matrix.
    P : (m, k) X~_v V for the validation users (rows aligned with ``heldout.users``).
    heldout : HeldOut
        The validation users' fold-in rows and hidden items.
    model_at : callable
        λ -> :class:`bigcos.models.Solution` (e.g. ``lambda lam: solve(sigma, spec(lam))``).
    grid : increasing λ values.

    Returns
    -------
    One row per (λ, metric): ``lam``, ``metric``, ``recall``, ``ndcg`` (means over the
    validation users), ``dims_kept``, ``n_users``.
    """
    points = _points(model_at, grid, metric_names)
    measures = [measure(sol, metric, V, P, heldout, k, col_center, col_scale)
                for _, metric, sol in points]
    return _path_rows(points, measures, len(heldout.users))


def _points(model_at: Callable[[float], Any], grid: Sequence[float],
            metric_names: Sequence[str]) -> list[tuple[float, str, Any]]:
    """(λ, metric, solution) of every grid point and metric, in path order."""
    solutions = [(float(lam), model_at(float(lam))) for lam in grid]
    return [(lam, metric, sol) for lam, sol in solutions for metric in metric_names]


def _path_rows(points: list[tuple[float, str, Any]], measures: list[tuple[float, float]],
               n_users: int) -> list[dict[str, Any]]:
    return [{"lam": lam, "metric": metric, "recall": recall, "ndcg": ndcg,
             "dims_kept": int(sol.kept.sum()), "n_users": n_users}
            for (lam, metric, sol), (recall, ndcg) in zip(points, measures, strict=True)]


def measure(solution: Any, metric: str, V: np.ndarray, P: np.ndarray, heldout: HeldOut,
            k: int, col_center: np.ndarray | None = None,
            col_scale: np.ndarray | None = None) -> tuple[float, float]:
    """(mean Recall@k, mean NDCG@k) of the validation users ranked by ``solution`` and
    ``metric`` (one ranking of the m users against all p items; arguments as :func:`path`)."""
    users, items = scoring_factors(solution, V, P, metric, col_center, col_scale)
    scores = per_user(users, items, heldout, (metric,), k)[metric]
    return float(np.nanmean(scores["recall"])), float(np.nanmean(scores["ndcg"]))


def choose(rows: Sequence[dict[str, Any]], metric: str, measure: str = "recall") -> float:
    """The λ of the best ``measure`` for ``metric``; ties go to the smaller λ."""
    mine = sorted((r for r in rows if r["metric"] == metric), key=lambda r: r["lam"])
    if not mine:
        raise ValueError(f"choose: no row for metric {metric!r}")
    best = max(range(len(mine)), key=lambda i: (mine[i][measure], -i))
    return mine[best]["lam"]


@dataclass(frozen=True)
class Selection:
    """How λ is chosen on validation users (MATH.md, "Choosing λ and stating results").

    ``fraction`` of the fit rows (at most ``max_users``, seeded by ``seed``) become
    validation users: they are left out of the SVD, and ``holdout`` of each one's items are
    hidden. λ maximises the validation ``measure`` ("recall" or "ndcg") at list length ``at``
    over a ``points``-point grid relative to the spectrum, separately for dot and cosine.
    """

    fraction: float = 0.1
    holdout: float = 0.2
    seed: int = 0
    measure: str = "recall"
    at: int = 20
    points: int = 16
    max_users: int = 2000

    def __post_init__(self):
        if not 0.0 < self.fraction < 1.0:
            raise UserError(f"validation fraction: must be in (0, 1), not {self.fraction}",
                            parameter="validation_fraction")
        if not 0.0 < self.holdout < 1.0:
            raise UserError(f"validation holdout: must be in (0, 1), not {self.holdout}",
                            parameter="validation_holdout")
        if self.measure not in MEASURES:
            raise UserError(f"validation measure: {self.measure!r} is not one of "
                            f"{', '.join(MEASURES)}", parameter="validation_measure")
        if self.at < 1 or self.points < 2 or self.max_users < 1:
            raise UserError(f"validation: need at >= 1, points >= 2, max_users >= 1 "
                            f"(got {self.at}, {self.points}, {self.max_users})")


def select(sigma: np.ndarray, V: np.ndarray, P: np.ndarray, heldout: HeldOut,
           specs: Sequence[Any], selection: Selection, solve: Callable[[np.ndarray, Any], Any],
           col_center: np.ndarray | None = None, col_scale: np.ndarray | None = None,
           client=None) -> tuple[list[dict[str, Any]], list[dict[str, float]]]:
    """Validated λ of each spec, for dot and for cosine ranking.

    Parameters
    ----------
    sigma, V, P, heldout, col_center, col_scale
        As for :func:`path`.
    specs : sequence of bigcos.closed_form.ModelSpec
        The families; each one's own ``lam`` is ignored.
    selection : Selection
    solve : callable
        ``solve(sigma, spec) -> Solution`` (:func:`bigcos.closed_form.solve`).
    client : distributed.Client or None
        Where the rankings run: one Dask task per (family, λ, metric), the operands sent to
        each worker once; None: Dask's threads in this process. The rows do not depend on it.

    Returns
    -------
    rows : the whole path, one row per (spec, λ, metric), with ``model`` (the spec's name),
        ``objective``, ``chosen`` (bool) and the columns of :func:`path`.
    chosen : per spec, ``{"dot": λ, "cos": λ}``.

    Notes
    -----
    Dot scores of every objective-1 model (any D, project-back) are X~ V dMat(g) V^T, and
    of every objective-2 model X~ V dMat((1 - λ/σ)_+) V^T, so the dot path is computed once
    per objective and shared.
    """
    import dataclasses

    from bigcos.dask_tasks import run_tasks, shared, task

    paths: dict[tuple[Any, str], list[tuple[float, str, Any]]] = {}
    for spec in specs:
        grid = lambda_grid(sigma, spec.objective, selection.points)

        def model_at(lam: float, spec=spec):
            return solve(sigma, dataclasses.replace(spec, lam=lam))

        if (spec.objective, "dot") not in paths:  # one dot path per objective (Notes)
            paths[(spec.objective, "dot")] = _points(model_at, grid, ("dot",))
        paths[(spec.name, "cos")] = _points(model_at, grid, ("cos",))
    operands = [shared(x, client) for x in (V, P, heldout, col_center, col_scale)]
    V_, P_, heldout_, center_, scale_ = operands
    points = [(key, point) for key, path_points in paths.items() for point in path_points]
    measures = run_tasks([task(measure)(sol, metric, V_, P_, heldout_, selection.at, center_,
                                        scale_) for _, (_, metric, sol) in points], client)
    done: dict[Any, list[dict[str, Any]]] = {}
    for (key, point), result in zip(points, measures, strict=True):
        done.setdefault(key, []).extend(_path_rows([point], [result], len(heldout.users)))
    rows: list[dict[str, Any]] = []
    chosen: list[dict[str, float]] = []
    for spec in specs:
        mine = done[(spec.objective, "dot")] + done[(spec.name, "cos")]
        pick = {m: choose(mine, m, selection.measure) for m in ("dot", "cos")}
        chosen.append(pick)
        rows += [{"model": spec.name, "objective": spec.objective, **r,
                  "chosen": r["lam"] == pick[r["metric"]]} for r in mine]
    return rows, chosen
