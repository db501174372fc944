"""Closed-form embeddings of the paper's two objectives from one truncated SVD, and the ALS peer.

Notation (``docs`` and MATH.md): X~ = (X - 1 mu^T) S is the fitted matrix (n_fit x p; mu = 0 and
S = I unless a column remedy is on), X~ ~ U Sigma V^T its top-k SVD. Every closed-form model is
diagonal in the basis V_k, so one :class:`Solution` per model is a handful of (k,) vectors:

    A = V_k dMat(a),  B = V_k dMat(b),  A B^T = V_k dMat(h) V_k^T   with h = a * b,
    item embeddings B (p x k), user embeddings X~ A = P dMat(a) with P = X~ V_k (n x k).

Objective 1 (``min ||X~ - X~AB^T||^2 + lam ||AB^T||^2``): h = g = sigma^2 / (sigma^2 + lam), and
for any positive diagonal D, a = g^(1/2) d, b = g^(1/2) / d is optimal with the same loss:

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
Objective 2 (``min ||X~ - X~AB^T||^2 + lam (||X~A||^2 + ||B||^2)``) is unique up to rotation:
h = (1 - lam/sigma)_+, a = (h/sigma)^(1/2), b = (h sigma)^(1/2), so
X~A = U_k dMat((sigma - lam)_+^(1/2)); it is objective 1's form with g := h and the "sigma" D,
which is what ``d`` records. Dimensions with sigma <= lam (and, for both objectives,
numerically zero sigma) are dropped and counted.
Project-back (paper Sec. 3): rows of A B^T and X~ A B^T have the inner products of V_k dMat(h)
and P dMat(h), so a = b = h gives D-invariant k-dimensional embeddings of the original space.

Only P = X~ V_k touches X: one blocked pass over row blocks of X with Dask, shared by every model
of one spectrum (X~ V = X (S V) - 1 (mu^T S V), so X is never densified).

"Train with respect to cosine" (the paper's first remedy) is deliberately not a bigcos model:
scoring by cos(x_u A, b_i) makes the loss non-convex in (A, B) with no closed form, so it would
need an iterative trainer whose result depends on initialisation and schedule -- the opposite of
the exact, reproducible spectrum-derived models here. bigcos offers the two remedies that stay
closed-form (project-back, and normalising columns before the SVD); embeddings trained w.r.t.
cosine elsewhere can be compared by writing them in the model-directory format below.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from bigcos import io
from bigcos.errors import UserError

log = logging.getLogger(__name__)

NAMED_SCALINGS = ("symmetric", "item-orthonormal", "user-orthonormal", "sigma")
PREPROCESSINGS = ("none", "standardize", "popularity")
RANK_RTOL = 1e-6  # sigma_i <= RANK_RTOL * sigma_1 counts as zero (the dimension is dropped)
ITEMS, USERS, DIMENSIONS = "items.parquet", "users.parquet", "spectrum.parquet"


# --------------------------------------------------------------------------- rescalings D
@dataclass(frozen=True)
class Scaling:
    """The diagonal D of objective 1. ``kind`` is a named choice, ``vector`` or ``random``.

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
        if self.kind == "random":
            return f"random{self.spread:g}x-seed{self.seed}"
        if self.kind == "vector":
            digest = hashlib.sha256(np.asarray(self.values, np.float64).tobytes()).hexdigest()
            return f"vector-{digest[:8]}"
        return self.kind

    def diagonal(self, sigma: np.ndarray, g: np.ndarray) -> np.ndarray:
        """d (k,) for spectrum ``sigma`` and shrinkage ``g``; nan where g == 0 (dropped dims)."""
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
                    raise UserError(f"--scaling: {len(self.values)} values given, "
                                    f"the SVD has k = {k} dimensions")
                d = np.asarray(self.values, np.float64)
            elif self.kind == "random":
                u = np.random.default_rng(self.seed).uniform(-0.5, 0.5, size=k)
                d = self.spread ** u
            else:
                raise UserError(f"--scaling: unknown kind '{self.kind}'")
        return np.where(g > 0, d, np.nan)


def parse_scaling(text: str) -> Scaling:
    """Read a ``--scaling`` value.

    One of ``symmetric``, ``item-orthonormal``, ``user-orthonormal``, ``sigma``; a comma list of
    positive floats (one per dimension, e.g. ``1,0.5,2``); or ``random:SPREAD[:SEED]``.
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
            raise UserError(f"--scaling '{text}': expected random:SPREAD[:SEED] with a finite "
                            "SPREAD >= 1 and an integer SEED >= 0") from None
        return Scaling("random", spread=spread, seed=seed)
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"--scaling '{text}': not one of {', '.join(NAMED_SCALINGS)}, a comma "
                        "list of floats or random:SPREAD[:SEED]") from None
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise UserError(f"--scaling '{text}': every value of D must be finite and > 0")
    return Scaling("vector", values=values)


# --------------------------------------------------------------------------- one model
@dataclass(frozen=True)
class ModelSpec:
    """One closed-form model: objective (1 or 2), its lam, D (objective 1) or project-back."""

    objective: int
    lam: float = 0.0
    scaling: Scaling | None = None  # objective 1 factors only; None with project_back
    project_back: bool = False

    def __post_init__(self):
        if self.objective not in (1, 2):
            raise UserError(f"--objective: must be 1 or 2, not {self.objective}")
        if not (math.isfinite(self.lam) and self.lam >= 0):
            raise UserError(f"--lam: must be finite and >= 0, not {self.lam}")
        if self.project_back and self.scaling is not None:
            raise UserError("--scaling: project-back embeddings do not depend on D; "
                            "give either --remedy project-back or --scaling")
        if self.objective == 2 and self.scaling is not None:
            raise UserError("--scaling: objective 2 has a unique solution; "
                            "--scaling applies to objective 1 only")

    @property
    def name(self) -> str:
        if self.project_back:
            return f"obj{self.objective}-project-back"
        if self.objective == 2:
            return "obj2"
        return f"obj1-{(self.scaling or Scaling('symmetric')).label}"


def model_specs(objectives: tuple[str, ...], lams: dict[int, float], scalings: tuple[str, ...],
                every: bool, project_back: bool) -> list:
    """The closed-form models one ``bigcos fit`` call asks for.

    ``objectives`` ("1"/"2"), ``lams`` {objective: lam}, ``scalings`` (``--scaling`` texts),
    ``every`` (``--all``: both objectives, every named D, project-back of both),
    ``project_back`` (``--remedy project-back``: project-back instead of the factor models,
    unless D's are asked for too).
    """
    objs = sorted({1, 2} if every else {int(o) for o in objectives})
    if scalings and 1 not in objs:
        raise UserError("--scaling: applies to objective 1 only (add --objective 1)")
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
        """(p, k_kept) float64."""
        return V[:, self.kept] * self.a[self.kept]

    def B(self, V: np.ndarray) -> np.ndarray:
        """(p, k_kept) float64: the item embeddings."""
        return V[:, self.kept] * self.b[self.kept]

    def table(self, residuals: np.ndarray | None = None) -> pa.Table:
        """One row per SVD dimension: dim, sigma, g, d, a, b, kept[, residual]."""
        cols = {"dim": pa.array(np.arange(len(self.sigma), dtype=np.int32)),
                "sigma": self.sigma, "g": self.g, "d": self.d, "a": self.a, "b": self.b,
                "kept": pa.array(self.kept)}
        if residuals is not None:
            cols["residual"] = np.asarray(residuals, np.float64)
        return pa.table(cols)


def numerical_rank_mask(sigma: np.ndarray, rtol: float = RANK_RTOL) -> np.ndarray:
    """True where sigma_i > rtol * sigma_1 (and > 0)."""
    sigma = np.asarray(sigma, np.float64)
    top = sigma.max(initial=0.0)
    return (sigma > rtol * top) & (sigma > 0)


def solve(sigma: np.ndarray, spec: ModelSpec, rtol: float = RANK_RTOL) -> Solution:
    """The closed-form solution of ``spec`` on singular values ``sigma`` (k,), descending.

    Raises UserError when no dimension survives (e.g. objective 2 with lam >= sigma_1).
    """
    sigma = np.asarray(sigma, np.float64)
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
                raise UserError(f"--scaling: D must be finite and > 0; dimension "
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
    """Objective value of the returned factors (A, B), exactly, from k-vectors.

    ``sq_norm`` = ||X~||_F^2 over the fitted rows, ``p_sq_colnorms`` = ||X~ v_i||^2 (k,). With
    W = A B^T = V dMat(h) V^T and V orthonormal:
    ||X~ - X~W||^2 = ||X~||^2 - sum (2 h_i - h_i^2) ||X~ v_i||^2; ||W||^2 = sum h_i^2;
    ||X~A||^2 = sum a_i^2 ||X~ v_i||^2; ||B||^2 = sum b_i^2. For project-back models these
    are the losses of the objective's factors (which project-back re-expresses).
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


# --------------------------------------------------------------------------- column remedies
@dataclass(frozen=True)
class Preprocessing:
    """Column remedy applied implicitly before the SVD (X~ = (X - 1 mu^T) S).

    ``standardize``: mu = column means, S = 1/std (population std over the fitted rows;
    columns of zero variance keep s = 1, their centred values are 0).
    ``popularity``: mu = 0, s_j = count_j^(-beta), count_j = non-zeros of column j in the
    fitted rows (s = 1 for unseen columns, whose entries are all zero).
    """

    kind: Literal["none", "standardize", "popularity"] = "none"
    beta: float = 0.75

    def __post_init__(self):
        if self.kind not in PREPROCESSINGS:
            raise UserError(f"--remedy: unknown column remedy '{self.kind}' "
                            f"({', '.join(PREPROCESSINGS[1:])})")
        if not math.isfinite(self.beta) or self.beta < 0:
            raise UserError(f"--beta: must be finite and >= 0, not {self.beta}")

    @property
    def suffix(self) -> str:
        return {"none": "", "standardize": "-std", "popularity": f"-pop{self.beta:g}"}[self.kind]

    def key(self) -> dict[str, Any]:
        return {"kind": self.kind, **({"beta": self.beta} if self.kind == "popularity" else {})}

    def columns(self, X: sp.csr_matrix) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(col_center, col_scale) for the fitted rows X (n_fit, p); None means 0 / 1."""
        if self.kind == "none":
            return None, None
        n, p = X.shape
        if self.kind == "popularity":
            counts = np.bincount(X.indices[X.data != 0], minlength=p).astype(np.float64)
            scale = np.ones(p)
            seen = counts > 0
            scale[seen] = counts[seen] ** (-self.beta)
            return None, scale
        total = np.asarray(X.sum(axis=0), np.float64).ravel()
        sq = np.asarray(X.multiply(X).sum(axis=0), np.float64).ravel()
        mu = total / max(n, 1)
        var = np.maximum(sq / max(n, 1) - mu**2, 0.0)
        scale = np.ones(p)
        varying = var > 1e-12 * np.maximum(sq / max(n, 1), np.finfo(np.float64).tiny)
        scale[varying] = 1.0 / np.sqrt(var[varying])
        return mu, scale


def squared_norm(X: sp.csr_matrix, col_center: np.ndarray | None,
                 col_scale: np.ndarray | None) -> float:
    """||(X - 1 mu^T) S||_F^2 without densifying: sum_j s_j^2 (||x_j||^2 - n mu_j^2)."""
    n, p = X.shape
    sq = np.asarray(X.multiply(X).sum(axis=0), np.float64).ravel()
    if col_center is not None:
        sq = sq - 2 * col_center * np.asarray(X.sum(axis=0), np.float64).ravel() \
            + n * col_center**2
    if col_scale is not None:
        sq = sq * col_scale**2
    return float(sq.sum())


# --------------------------------------------------------------------------- X~ V over row blocks
def _block_product(block: sp.csr_matrix, W: np.ndarray, offset: np.ndarray | None) -> np.ndarray:
    out = np.asarray(block.astype(W.dtype, copy=False) @ W)
    if offset is not None:
        out -= offset.astype(W.dtype)
    return out


def _active_client():
    try:
        from distributed import default_client
        return default_client()
    except (ImportError, ValueError):
        return None


def project_rows(X: sp.csr_matrix, V: np.ndarray, col_center: np.ndarray | None = None,
                 col_scale: np.ndarray | None = None, block_rows: int | None = None,
                 dtype=np.float64) -> np.ndarray:
    """P = (X - 1 mu^T) S V, shape (n, k) in ``dtype``, computed over row blocks with Dask.

    Never densifies X: each block computes X_b (S V) - 1 (mu^T S V) (S V and mu^T S V are
    formed in float64, then cast). Runs on the active Dask scheduler (a ``distributed.Client``
    if one is open, else threads); blocks only change speed, never the result (each row is
    computed by the same product whatever the split).
    """
    import dask
    from dask import delayed

    W = np.asarray(V, np.float64)
    if col_scale is not None:
        W = W * np.asarray(col_scale, np.float64)[:, None]
    offset = None if col_center is None else np.asarray(col_center, np.float64) @ W
    W = W.astype(dtype)
    n = X.shape[0]
    if block_rows is None:  # ~ 4 blocks per core, at most ~ 1M non-zeros each
        block_rows = max(1024, min(n, int(n * 1e6 / max(X.nnz, 1))))
        block_rows = min(block_rows, max(1024, -(-n // (4 * (os.cpu_count() or 1)))))
    starts = range(0, n, max(1, block_rows))
    blocks = [X[s:s + block_rows] for s in starts]
    client = _active_client()
    if client is not None:
        blocks = client.scatter(blocks)
        W_arg = client.scatter(W, broadcast=True)
    else:
        W_arg = delayed(W)
    parts = dask.compute(*[delayed(_block_product)(b, W_arg, offset) for b in blocks])
    return np.vstack(parts) if parts else np.zeros((0, W.shape[1]))


def column_sq_norms(P: np.ndarray, rows: np.ndarray, chunk: int = 1 << 16) -> np.ndarray:
    """sum over ``rows`` of P[row, i]^2 (k,), accumulated in float64 chunk by chunk."""
    out = np.zeros(P.shape[1])
    for start in range(0, len(rows), chunk):
        idx = rows[start:start + chunk]
        block = P[idx[0]:idx[-1] + 1] if idx[-1] - idx[0] + 1 == len(idx) else P[idx]
        block = block.astype(np.float64, copy=False)
        out += np.einsum("ij,ij->j", block, block)
    return out


# --------------------------------------------------------------------------- SVD + its cache
@dataclass(frozen=True)
class SVDOptions:
    """Parameters of the truncated SVD (``bigcos.svd.truncated_svd``). ``block_rows`` and
    ``scheduler`` only change speed and are not part of the cache key."""

    k: int = 64
    oversampling: int | None = None
    n_iter: int | None = None
    seed: int = 0
    dtype: str = "float32"
    exact: bool = False
    tol: float | None = None
    block_rows: int | None = None
    scheduler: str = "auto"

    def key(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("block_rows")
        d.pop("scheduler")
        return d


def _file_digest(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def matrix_digest(matrix_dir: Path) -> str:
    """sha256 over the content of train.npz and users.parquet (rows, held-out flags)."""
    h = hashlib.sha256()
    for name in ("train.npz", "users.parquet"):
        f = matrix_dir / name
        h.update(name.encode() + (_file_digest(f) if f.exists() else "-").encode())
    return h.hexdigest()


def spectrum_key(matrix_sha256: str, svd: SVDOptions, pre: Preprocessing) -> tuple[str, dict]:
    """(16-hex key, the JSON-able dict it hashes) of one SVD of one matrix."""
    from bigcos import __version__
    from bigcos.svd import SVD_VERSION

    parts = {"matrix_sha256": matrix_sha256, "svd": svd.key(), "preprocessing": pre.key(),
             "bigcos": __version__, "svd_version": SVD_VERSION}
    text = json.dumps(parts, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16], parts


def cached_spectrum(X: sp.csr_matrix, svd: SVDOptions, col_center: np.ndarray | None,
                    col_scale: np.ndarray | None, cache_dir: Path | None, key: str,
                    key_parts: dict) -> tuple[Any, bool]:
    """The spectrum of X~ from ``cache_dir/key`` if present, else computed (and stored there).

    Returns (Spectrum, cache_hit). The cache entry is written atomically; an unreadable entry
    is recomputed and replaced.
    """
    from bigcos.svd import load_spectrum, save_spectrum, truncated_svd

    entry = cache_dir / key if cache_dir is not None else None
    if entry is not None and (entry / "key.json").exists():
        try:
            return load_spectrum(entry), True
        except (UserError, OSError, ValueError, KeyError) as exc:
            log.warning("%s: unreadable SVD cache entry (%s); recomputing", entry, exc)
    if svd.k > X.shape[1]:
        raise UserError(f"-k {svd.k}: larger than the number of items p = {X.shape[1]}")
    spectrum = truncated_svd(X, svd.k, oversampling=svd.oversampling, n_iter=svd.n_iter,
                             seed=svd.seed, dtype=np.dtype(svd.dtype), exact=svd.exact,
                             col_center=col_center, col_scale=col_scale,
                             block_rows=svd.block_rows, tol=svd.tol, scheduler=svd.scheduler)
    if entry is not None:
        try:
            with io.atomic_output_dir(entry, overwrite=True) as tmp:
                save_spectrum(tmp, spectrum)
                io.write_json(tmp / "key.json", key_parts)
        except OSError as exc:  # e.g. a read-only matrix dir, or a concurrent writer won
            log.warning("%s: SVD cache not written (%s)", entry, exc)
    return spectrum, False


# --------------------------------------------------------------------------- model directories
@dataclass
class Model:
    """A fitted model read back by :func:`load_model`.

    ``item_embeddings`` (p, k) float32, row j = ``item_ids[j]`` (matrix column order);
    ``user_embeddings`` (n, k) float32, row i = ``user_ids[i]`` (matrix row order);
    ``dimensions``: the spectrum table (sigma, g, d, a, b, kept per SVD dimension) or None (ALS).
    """

    name: str
    item_ids: pa.Array
    item_embeddings: np.ndarray
    user_ids: pa.Array
    user_embeddings: np.ndarray
    manifest: dict
    matrix_dir: Path | None
    dimensions: pa.Table | None = field(default=None, repr=False)


def load_model(directory: str | os.PathLike) -> Model:
    """Read a model directory written by ``bigcos fit``."""
    d = io.require_dir(directory, "model", ITEMS)
    manifest = io.read_manifest(d)
    if "model_name" not in manifest:
        raise UserError(f"{d / io.MANIFEST}: not a model manifest ('model_name' missing)")
    item_ids, items = io.read_embeddings(d / ITEMS, "item_id")
    user_ids, users = io.read_embeddings(d / USERS, "user_id")
    if items.shape[1] != users.shape[1]:
        raise UserError(f"{d}: item embeddings have {items.shape[1]} dimensions, "
                        f"user embeddings {users.shape[1]}")
    dims = io.read_table(d / DIMENSIONS) if (d / DIMENSIONS).exists() else None
    matrix_dir = manifest.get("matrix_dir")
    return Model(manifest["model_name"], item_ids, items, user_ids, users, manifest,
                 Path(matrix_dir) if matrix_dir else None, dims)


def _write_model(directory: Path, data, items: np.ndarray, users: np.ndarray,
                 dimensions: pa.Table | None) -> None:
    io.write_embeddings(directory / ITEMS, data.item_ids, items, "item_id")
    io.write_embeddings(directory / USERS, data.user_ids, users, "user_id")
    if dimensions is not None:
        io.write_table(directory / DIMENSIONS, dimensions)


def _check_out(out: str | os.PathLike, overwrite: bool) -> None:
    """Fail before any work when ``out`` exists and may not be replaced."""
    if Path(out).exists() and not overwrite:
        raise UserError(f"{out}: output already exists (pass --overwrite to replace it)")


def _fit_rows(data) -> np.ndarray:
    """Indices of the rows a model may be fit on (all but strong-generalisation held-out users)."""
    n = data.train.shape[0]
    if data.heldout_users is None:
        return np.arange(n)
    return np.flatnonzero(~np.asarray(data.heldout_users, bool))


# --------------------------------------------------------------------------- the fit pipeline
@dataclass
class FitResult:
    """What :func:`fit` wrote: model directories by name, and whether the SVD cache was hit."""

    models: dict[str, Path]
    svd_cache_hit: bool
    spectrum_info: dict


def fit(matrix_dir: str | os.PathLike, out: str | os.PathLike, specs: Sequence[ModelSpec],
        svd: SVDOptions = SVDOptions(), preprocessing: Preprocessing = Preprocessing(),
        *, cache_dir: str | os.PathLike | None = "default", name: str | None = None,
        overwrite: bool = False) -> FitResult:
    """Fit the closed-form models ``specs`` of one matrix from ONE truncated SVD.

    One spec: ``out`` is the model directory. Several: ``out`` is a root holding one model
    directory per spec (``out/<model name>``) and a ``manifest.json`` listing them; the whole
    root is written atomically. ``cache_dir`` ("default": ``matrix_dir/svd-cache``; None: no
    cache) keeps spectra keyed by matrix content, SVD parameters and column remedy, so a later
    fit with another D or objective skips the SVD. User embeddings X~A come from one blocked
    product P = X~ V_k over row blocks (Dask, active scheduler), shared by every spec.
    """
    from bigcos.matrix import load_matrix

    timings = io.Timings()
    matrix_dir = Path(matrix_dir).resolve()
    _check_out(out, overwrite)
    specs = list(specs)
    if not specs:
        raise UserError("no model to fit")
    names = [s.name + preprocessing.suffix for s in specs]
    if name is not None:
        if len(specs) > 1:
            raise UserError("--name: only for a single model (several are named by config)")
        names = [name]
    if len(set(names)) != len(names):
        raise UserError(f"two model configurations share a name: {', '.join(names)}")
    with timings("load_matrix"):
        data = load_matrix(matrix_dir)
        fit_rows = _fit_rows(data)
        X_fit = data.train[fit_rows] if len(fit_rows) < data.train.shape[0] else data.train
        col_center, col_scale = preprocessing.columns(X_fit)
    if svd.k < 1:
        raise UserError(f"-k {svd.k}: must be >= 1")
    if cache_dir == "default":
        cache_dir = matrix_dir / "svd-cache"
    cache_dir = Path(cache_dir) if cache_dir is not None else None
    with timings("svd"):
        digest = matrix_digest(matrix_dir) if cache_dir is not None else "not-hashed"
        key, key_parts = spectrum_key(digest, svd, preprocessing)
        spectrum, hit = cached_spectrum(X_fit, svd, col_center, col_scale, cache_dir, key,
                                        key_parts)
    with timings("solve"):
        solutions = [solve(spectrum.sigma, s) for s in specs]
    with timings("user_projection"):
        V = np.asarray(spectrum.V, np.float64)
        P = project_rows(data.train, V, col_center, col_scale, svd.block_rows,
                         dtype=np.dtype(svd.dtype))
        p_sq = column_sq_norms(P, fit_rows)
        sq_norm = squared_norm(X_fit, col_center, col_scale)
    svd_section = {
        "key": key, "cache_dir": str(cache_dir) if cache_dir else None, "cache_hit": hit,
        "k": len(spectrum.sigma),
        "residual_max": float(np.max(spectrum.residuals, initial=0.0)),
        "residual_median": float(np.median(spectrum.residuals)) if len(spectrum.sigma) else 0.0,
        "sigma_1": float(spectrum.sigma[0]) if len(spectrum.sigma) else 0.0,
        "sigma_k": float(spectrum.sigma[-1]) if len(spectrum.sigma) else 0.0,
        "info": spectrum.info,
    }
    common = {"svd": svd.key() | {"block_rows": svd.block_rows},
              "preprocessing": preprocessing.key()}
    single = len(specs) == 1
    written: dict[str, Path] = {}
    with io.atomic_output_dir(out, overwrite=overwrite) as root:
        for model_name, spec, sol in zip(names, specs, solutions, strict=True):
            mt = io.Timings()
            target = root if single else root / model_name
            target.mkdir(exist_ok=True)
            with mt("embed_and_write"):
                items = sol.B(V)
                users = P[:, sol.kept]  # a copy, scaled in place: one (n, k) array per model
                users *= sol.a[sol.kept].astype(users.dtype)
                _write_model(target, data, items, users,
                             sol.table(spectrum.residuals))
            params = {"model": "closed-form", "objective": spec.objective, "lam": spec.lam,
                      "scaling": asdict(spec.scaling) if spec.scaling else None,
                      "project_back": spec.project_back, **common}
            counts = {"users": data.train.shape[0], "items": data.train.shape[1],
                      "fit_users": len(fit_rows), "train_nnz": int(data.train.nnz),
                      "dims_svd": len(sol.sigma), "dims_kept": int(sol.kept.sum()),
                      "dims_dropped": int((~sol.kept).sum())}
            io.write_manifest(target, "fit", params, timings=mt, model_name=model_name,
                              matrix_dir=str(matrix_dir), counts=counts, svd=svd_section,
                              losses=losses(sol, sq_norm, p_sq), run_timings_s=timings.as_dict())
            written[model_name] = Path(out) if single else Path(out) / model_name
        if not single:
            io.write_manifest(root, "fit", {"models": names, **common}, timings=timings,
                              matrix_dir=str(matrix_dir), models=names, svd=svd_section)
    return FitResult(written, hit, spectrum.info)


# --------------------------------------------------------------------------- implicit ALS
@dataclass(frozen=True)
class ALSOptions:
    """implicit's ``AlternatingLeastSquares`` (confidence 1 + alpha x on observed entries)."""

    factors: int = 128
    iterations: int = 15
    regularization: float = 0.01
    alpha: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if self.factors < 1 or self.iterations < 1:
            raise UserError("--factors and --als-iterations must be >= 1")
        if not (self.regularization >= 0 and self.alpha > 0):
            raise UserError("--regularization must be >= 0 and --alpha > 0")


def als_factors(data, als: ALSOptions) -> tuple[np.ndarray, np.ndarray]:
    """(item factors (p, f), user factors (n, f)) float32 from implicit's CPU ALS.

    Fit on the rows a model may see; held-out (strong generalisation) users get factors
    recomputed from their fold-in rows with the item factors fixed (implicit's
    ``recalculate_user``, one exact least-squares step: ALS's analogue of X A).
    BLAS runs on one thread (implicit parallelises over users itself and warns otherwise).
    """
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    fit_rows = _fit_rows(data)
    n = data.train.shape[0]
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(factors=als.factors, regularization=als.regularization,
                                        alpha=als.alpha, iterations=als.iterations,
                                        random_state=als.seed, dtype=np.float32)
        X_fit = data.train[fit_rows] if len(fit_rows) < n else data.train
        model.fit(X_fit.astype(np.float32), show_progress=False)
        users = np.zeros((n, model.user_factors.shape[1]), np.float32)
        users[fit_rows] = model.user_factors
        held = np.setdiff1d(np.arange(n), fit_rows)
        if len(held):
            users[held] = model.recalculate_user(held, data.train[held])
    return np.asarray(model.item_factors, np.float32), users


def fit_als(matrix_dir: str | os.PathLike, out: str | os.PathLike, als: ALSOptions = ALSOptions(),
            *, name: str = "als", overwrite: bool = False) -> Path:
    """Fit implicit ALS and write it as a model directory like the closed-form ones."""
    from bigcos.matrix import load_matrix

    timings = io.Timings()
    matrix_dir = Path(matrix_dir).resolve()
    _check_out(out, overwrite)
    with timings("load_matrix"):
        data = load_matrix(matrix_dir)
    with io.atomic_output_dir(out, overwrite=overwrite) as tmp:
        with timings("als"):
            items, users = als_factors(data, als)
        with timings("write"):
            _write_model(tmp, data, items, users, None)
        counts = {"users": data.train.shape[0], "items": data.train.shape[1],
                  "fit_users": len(_fit_rows(data)), "train_nnz": int(data.train.nnz),
                  "dims_kept": items.shape[1]}
        io.write_manifest(tmp, "fit", {"model": "als", **asdict(als)}, timings=timings,
                          model_name=name, matrix_dir=str(matrix_dir), counts=counts)
    return Path(out)
