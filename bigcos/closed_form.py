"""Closed-form embeddings of the paper's two objectives, from the spectrum of one truncated SVD.

Pure numpy: no Dask, no files. Notation (MATH.md): X~ = (X - 1 mu^T) S is the fitted matrix
(n_fit x p; mu = 0 and S = I unless a column remedy is on), X~ ~ U Sigma V^T its top-k SVD.
Every closed-form model is diagonal in the basis V_k, so one :class:`Solution` per model is a
handful of (k,) vectors:

    A = V_k dMat(a),  B = V_k dMat(b),  A B^T = V_k dMat(h) V_k^T   with h = a * b,
    item embeddings B (p x k), user embeddings X~ A = P dMat(a) with P = X~ V_k (n x k).

Objective 1 (paper Eq. 1, ``min ||X~ - X~AB^T||^2 + lam ||AB^T||^2``; closed form of Jin et al.
2021): h = g = sigma^2 / (sigma^2 + lam), and for any positive diagonal D, a = g^(1/2) d,
b = g^(1/2) / d is optimal with the same loss:

    =================  ==============  =================  =================
    scaling            d               a (A = V dMat a)   b (B = V dMat b)
    =================  ==============  =================  =================
    symmetric          1               g^(1/2)            g^(1/2)
    item-orthonormal   g^(1/2)         g                  1       (B = V_k)
    user-orthonormal   g^(-1/2)        1   (A = V_k)      g
    sigma              sigma^(-1/2)    (g/sigma)^(1/2)    (g sigma)^(1/2)
    vector / random    given           g^(1/2) d          g^(1/2) / d
    =================  ==============  =================  =================

(The paper's Sec. 2.2 derives the second and third rows; "user-orthonormal" names A = V_k, whose
user embeddings X~V_k = U_k Sigma_k are X~'s rows in the V_k basis.)
Objective 2 (paper Eq. 2, ``min ||X~ - X~AB^T||^2 + lam (||X~A||^2 + ||B||^2)``; Zheng et al.
2018) is unique up to rotation: h = (1 - lam/sigma)_+, a = (h/sigma)^(1/2), b = (h sigma)^(1/2),
so X~A = U_k dMat((sigma - lam)_+^(1/2)); it is objective 1's form with g := h and the "sigma" D,
which is what ``d`` records. Dimensions with sigma <= lam (and, for both objectives,
numerically zero sigma) are dropped and counted.
Project-back (paper Sec. 3): rows of A B^T and X~ A B^T have the inner products of V_k dMat(h)
and P dMat(h), so a = b = h gives D-invariant k-dimensional embeddings of the original space.

"Train with respect to cosine" (the paper's first remedy) has no closed form: scoring by
cos(x_u A, b_i) makes the loss non-convex in (A, B), so it is not here but in
:mod:`bigcos.cosine_model` (loss and gradient) and :mod:`bigcos.cosine_fit` (``bigcos fit
--model cosine``: L-BFGS-B warm-started from this module's objective-1 solution, early stopping
on validation users; its result depends on that start and schedule, unlike the exact,
spectrum-derived models here). The remedies that stay closed-form are project-back and
normalising columns or rows before the SVD (:mod:`bigcos.column_remedies`).

Errors name the parameter (``objective``, ``lam1``/``lam2``, ``scaling``, ``scalings``).

References
----------
Steck, Ekanadham, Kallus (2024), "Is Cosine-Similarity of Embeddings Really About Similarity?",
Eq. 1, Eq. 2 and Sec. 2-3. Jin et al. (2021), closed form of objective 1. Zheng et al. (2018),
closed form of objective 2.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

from bigcos.errors import UserError

NAMED_SCALINGS = ("symmetric", "item-orthonormal", "user-orthonormal", "sigma")
RANK_RTOL = 1e-6  # sigma_i <= RANK_RTOL * sigma_1 counts as zero (the dimension is dropped)


# --------------------------------------------------------------------------- rescalings D
@dataclass(frozen=True)
class Scaling:
    """The diagonal D of objective 1 (paper Eq. 1). ``kind`` is a named choice, ``vector`` or
    ``random``.

    ``vector``: D = dMat(values) (one positive value per SVD dimension).
    ``random``: d_i = spread^u_i with u_i ~ Uniform(-1/2, 1/2) from ``seed``: log-uniform values
    whose largest/smallest ratio is at most ``spread`` (for sensitivity studies).
    """

    kind: str
    values: tuple[float, ...] = ()
    spread: float = 1.0
    seed: int = 0

    @property
    def label(self) -> str:
        """Name of this D in model names: the kind, ``random<spread>x-seed<seed>`` or
        ``vector-<hash of the values>``."""
        if self.kind == "random":
            return f"random{self.spread:g}x-seed{self.seed}"
        if self.kind == "vector":
            digest = hashlib.sha256(np.asarray(self.values, np.float64).tobytes()).hexdigest()
            return f"vector-{digest[:8]}"
        return self.kind

    def diagonal(self, sigma: np.ndarray, g: np.ndarray) -> np.ndarray:
        """The diagonal of D for one spectrum.

        Parameters
        ----------
        sigma : ndarray, shape (k,)
            Singular values of X~.
        g : ndarray, shape (k,)
            Objective 1's shrinkage sigma^2 / (sigma^2 + lam); 0 on dropped dimensions.

        Returns
        -------
        d : ndarray, shape (k,), float64
            D's diagonal; nan where g == 0 (dropped dimensions).
        """
        k = len(sigma)
        with np.errstate(divide="ignore", invalid="ignore"):
            if self.kind == "symmetric":
                d = np.ones(k)
            elif self.kind == "item-orthonormal":
                d = np.sqrt(g)
            elif self.kind == "user-orthonormal":
                d = 1.0 / np.sqrt(g)
            elif self.kind == "sigma":
                d = 1.0 / np.sqrt(sigma)
            elif self.kind == "vector":
                if len(self.values) != k:
                    raise UserError(f"scaling: {len(self.values)} values given, "
                                    f"the SVD has k = {k} dimensions")
                d = np.asarray(self.values, np.float64)
            elif self.kind == "random":
                u = np.random.default_rng(self.seed).uniform(-0.5, 0.5, size=k)
                d = self.spread ** u
            else:
                raise UserError(f"scaling: unknown kind '{self.kind}'")
        return np.where(g > 0, d, np.nan)


def parse_scaling(text: str) -> Scaling:
    """Read a scaling given as text.

    Parameters
    ----------
    text : str
        One of ``symmetric``, ``item-orthonormal``, ``user-orthonormal``, ``sigma``; a comma
        list of positive floats (one per dimension, e.g. ``1,0.5,2``); or
        ``random:SPREAD[:SEED]``.

    Returns
    -------
    Scaling
    """
    text = text.strip()
    if text in NAMED_SCALINGS:
        return Scaling(text)
    if text.startswith("random"):
        parts = text.split(":")
        try:
            spread = float(parts[1])
            seed = int(parts[2]) if len(parts) > 2 else 0
            if len(parts) > 3 or not (spread >= 1.0 and math.isfinite(spread)) or seed < 0:
                raise ValueError
        except (IndexError, ValueError):
            raise UserError(f"scaling '{text}': expected random:SPREAD[:SEED] with a finite "
                            "SPREAD >= 1 and an integer SEED >= 0") from None
        return Scaling("random", spread=spread, seed=seed)
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"scaling '{text}': not one of {', '.join(NAMED_SCALINGS)}, a comma "
                        "list of floats or random:SPREAD[:SEED]") from None
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise UserError(f"scaling '{text}': every value of D must be finite and > 0")
    return Scaling("vector", values=values)


# --------------------------------------------------------------------------- one model
@dataclass(frozen=True)
class ModelSpec:
    """One closed-form model: objective (1: paper Eq. 1, 2: Eq. 2), its lam, D (objective 1)
    or project-back (paper Sec. 3)."""

    objective: int
    lam: float | None = 0.0  # None: chosen on validation users (bigcos.validation)
    scaling: Scaling | None = None  # objective 1 factors only; None with project_back
    project_back: bool = False

    def __post_init__(self):
        if self.objective not in (1, 2):
            raise UserError(f"objective: must be 1 or 2, not {self.objective}")
        if self.lam is not None and not (math.isfinite(self.lam) and self.lam >= 0):
            raise UserError(f"lam{self.objective}: must be finite and >= 0, not {self.lam}")
        if self.project_back and self.scaling is not None:
            raise UserError("scaling: project-back embeddings do not depend on D; "
                            "give either project_back or a scaling")
        if self.objective == 2 and self.scaling is not None:
            raise UserError("scaling: objective 2 has a unique solution; "
                            "a scaling applies to objective 1 only")

    @property
    def name(self) -> str:
        """Model name: ``obj1-<D label>``, ``obj2`` or ``obj<objective>-project-back``."""
        if self.project_back:
            return f"obj{self.objective}-project-back"
        if self.objective == 2:
            return "obj2"
        return f"obj1-{(self.scaling or Scaling('symmetric')).label}"


def model_specs(objectives: tuple[str, ...], lams: dict[int, float], scalings: tuple[str, ...],
                every: bool, project_back: bool) -> list[ModelSpec]:
    """The closed-form models one ``bigcos fit`` call asks for.

    Parameters
    ----------
    objectives : tuple of str
        ``"1"`` and/or ``"2"``.
    lams : dict
        {objective: lam}; objective 1's lam acts on sigma^2, objective 2's on sigma.
    scalings : tuple of str
        Texts for :func:`parse_scaling` (objective 1 only).
    every : bool
        Both objectives, every named D and project-back of both.
    project_back : bool
        Project-back instead of the factor models, unless D's are asked for too.

    Returns
    -------
    list of ModelSpec
    """
    objs = sorted({1, 2} if every else {int(o) for o in objectives})
    if scalings and 1 not in objs:
        raise UserError("scalings: apply to objective 1 only (objectives does not include 1)")
    specs = []
    for obj in objs:
        if obj == 1:
            chosen = [parse_scaling(s) for s in scalings]
            if every and not chosen:
                chosen = [Scaling(s) for s in NAMED_SCALINGS]
            if not project_back or every or chosen:
                specs += [ModelSpec(1, lams[1], sc) for sc in chosen or [Scaling("symmetric")]]
        elif not project_back or every:
            specs.append(ModelSpec(2, lams[2]))
        if project_back or every:
            specs.append(ModelSpec(obj, lams[obj], project_back=True))
    return specs


@dataclass(frozen=True)
class Solution:
    """A closed-form model in the basis V_k: per-dimension vectors of length k (float64).

    A = V_k[:, kept] dMat(a[kept]), B = V_k[:, kept] dMat(b[kept]); ``h = a * b`` is the diagonal
    of A B^T for the factor models. ``g`` is the objective's shrinkage, ``d`` the D used
    (nan where not applicable). Dropped dimensions have a = b = 0.
    """

    spec: ModelSpec
    sigma: np.ndarray
    g: np.ndarray
    d: np.ndarray
    a: np.ndarray
    b: np.ndarray
    kept: np.ndarray

    def A(self, V: np.ndarray) -> np.ndarray:
        """A = V_k dMat(a) on the kept dimensions.

        Parameters
        ----------
        V : ndarray, shape (p, k)

        Returns
        -------
        ndarray, shape (p, k_kept), float64
        """
        return V[:, self.kept] * self.a[self.kept]

    def B(self, V: np.ndarray) -> np.ndarray:
        """B = V_k dMat(b) on the kept dimensions: the item embeddings.

        Parameters
        ----------
        V : ndarray, shape (p, k)

        Returns
        -------
        ndarray, shape (p, k_kept), float64
        """
        return V[:, self.kept] * self.b[self.kept]


def numerical_rank_mask(sigma: np.ndarray, rtol: float = RANK_RTOL) -> np.ndarray:
    """The dimensions of non-zero singular value.

    Parameters
    ----------
    sigma : ndarray, shape (k,)
    rtol : float
        sigma_i <= rtol * sigma_1 counts as zero.

    Returns
    -------
    ndarray of bool, shape (k,)
        True where sigma_i > rtol * sigma_1 and sigma_i > 0.
    """
    sigma = np.asarray(sigma, np.float64)
    top = sigma.max(initial=0.0)
    return (sigma > rtol * top) & (sigma > 0)


def solve(sigma: np.ndarray, spec: ModelSpec, rtol: float = RANK_RTOL) -> Solution:
    """The closed-form solution of one model on a spectrum.

    Parameters
    ----------
    sigma : ndarray, shape (k,)
        Singular values of X~, descending.
    spec : ModelSpec
    rtol : float
        Relative threshold of :func:`numerical_rank_mask`.

    Returns
    -------
    Solution
        Vectors of shape (k,); memory O(k).

    Raises
    ------
    UserError
        When no dimension survives (e.g. objective 2 with lam >= sigma_1), or D is not
        finite and positive.

    References
    ----------
    Paper Eq. 1 (objective 1, closed form of Jin et al. 2021), Eq. 2 (objective 2, Zheng et
    al. 2018), Sec. 3 (project-back).
    """
    sigma = np.asarray(sigma, np.float64)
    if spec.lam is None:
        raise UserError(f"lam{spec.objective}: not chosen yet (None means: validate it, "
                        "see bigcos.validation.select)", parameter=f"lam{spec.objective}")
    lam = float(spec.lam)
    nonzero = numerical_rank_mask(sigma, rtol)
    safe = np.where(nonzero, sigma, 1.0)
    if spec.objective == 1:
        kept = nonzero.copy()
        g = np.where(kept, safe**2 / (safe**2 + lam), 0.0)
        if spec.project_back:
            d = np.full(len(sigma), np.nan)
            a = b = g
        else:
            d = (spec.scaling or Scaling("symmetric")).diagonal(sigma, g)
            bad = kept & ~(np.isfinite(d) & (d > 0))
            if bad.any():
                raise UserError(f"scaling: D must be finite and > 0; dimension "
                                f"{int(np.argmax(bad))} has {d[bad][0]}")
            dd = np.where(kept, d, 1.0)
            a = np.where(kept, np.sqrt(g) * dd, 0.0)
            b = np.where(kept, np.sqrt(g) / dd, 0.0)
            # exact forms of the named choices (no round trip through d, e.g. b == 1 exactly)
            kind = (spec.scaling or Scaling("symmetric")).kind
            if kind == "item-orthonormal":
                a, b = np.where(kept, g, 0.0), kept.astype(np.float64)
            elif kind == "user-orthonormal":
                a, b = kept.astype(np.float64), np.where(kept, g, 0.0)
    else:
        kept = nonzero & (sigma > lam)
        g = np.where(kept, 1.0 - lam / safe, 0.0)
        d = np.where(kept, 1.0 / np.sqrt(safe), np.nan)
        if spec.project_back:
            d = np.full(len(sigma), np.nan)
            a = b = g
        else:
            a = np.where(kept, np.sqrt(g / safe), 0.0)
            b = np.where(kept, np.sqrt(g * safe), 0.0)
    if not kept.any():
        detail = (f"lam = {lam:g} >= sigma_1 = {sigma.max(initial=0):g}" if spec.objective == 2
                  else "every singular value is zero")
        raise UserError(f"{spec.name}: no dimension is kept ({detail})")
    return Solution(spec, sigma, g, d, np.asarray(a, np.float64), np.asarray(b, np.float64),
                    kept)


def losses(solution: Solution, sq_norm: float, p_sq_colnorms: np.ndarray) -> dict[str, float]:
    """The objective value of a solution's factors (A, B), exactly, from k-vectors.

    With W = A B^T = V dMat(h) V^T and V orthonormal:
    ||X~ - X~W||^2 = ||X~||^2 - sum (2 h_i - h_i^2) ||X~ v_i||^2; ||W||^2 = sum h_i^2;
    ||X~A||^2 = sum a_i^2 ||X~ v_i||^2; ||B||^2 = sum b_i^2. For project-back models these are
    the losses of the objective's factors (which project-back re-expresses).

    Parameters
    ----------
    solution : Solution
    sq_norm : float
        ||X~||_F^2 over the fitted rows.
    p_sq_colnorms : ndarray, shape (k,)
        ||X~ v_i||^2 over the fitted rows.

    Returns
    -------
    dict
        ``objective``, ``reconstruction``, ``regularization``, ``relative_to_norm``
        (objective / ||X~||^2), ``squared_norm``.

    References
    ----------
    Paper Eq. 1 (objective 1) and Eq. 2 (objective 2).
    """
    sol = solution
    if sol.spec.project_back:  # the factor model it re-expresses: symmetric for obj1 (any D)
        sol = solve(sol.sigma, ModelSpec(sol.spec.objective, sol.spec.lam))
    h = sol.a * sol.b
    m = np.asarray(p_sq_colnorms, np.float64)
    recon = float(sq_norm - np.sum((2 * h - h**2) * m))
    if sol.spec.objective == 1:
        reg = float(sol.spec.lam * np.sum(h**2))
    else:
        reg = float(sol.spec.lam * (np.sum(sol.a**2 * m) + np.sum(sol.b**2)))
    total = recon + reg
    return {"objective": total, "reconstruction": recon, "regularization": reg,
            "relative_to_norm": total / sq_norm if sq_norm > 0 else float("nan"),
            "squared_norm": float(sq_norm)}
