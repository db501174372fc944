"""What a held-out ranking scores: each model's prediction of X in X's own scale (for dot).

MATH.md, "Remedies: Scoring a remedy". For a closed-form model the exported factors are
``X~ A = P dMat(a)`` and ``B = V dMat(b)`` on the kept dimensions (P = X~ V, X~ = (X - 1 mu^T) S).
The model's prediction of X is ``X~ V dMat(g) V^T S^-1 + 1 mu^T`` (g = h: objective 1's
shrinkage, objective 2's (1 - λ/σ)_+, and project-back's W = V G V^T), which is what
:func:`bigcos.validation.scoring_factors` ranks by; here the same formula is applied to the
exported factors (V = B dMat(1/b), P = X~A dMat(1/a)), with mu and s from the model's
``columns.parquet``. So:

- factor models without a column remedy: the dot of the exported factors (a b = g);
- project-back: the exported item factors are V G, their dot with X~ A = X~ V G would be
  X~ V G^2 V^T; the held-out dot uses X~ V G V^T (items divided by g);
- column remedies: the prediction of X~ mapped back by S^-1 (+ 1 mu^T for standardize).

Cosine is always the cosine of the exported embeddings. Pure numpy.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np

from bigcos.validation import scoring_factors

EXPORTED, PROJECT_BACK, COLUMN_REMEDY = "exported", "project-back", "column-remedy"
SCORING = {
    "cosine": "cosine of the exported embeddings",
    EXPORTED: "dot of the exported embeddings (the model's own prediction of X)",
    PROJECT_BACK: "X W with W = V_k G V_kᵀ (exported items V_k G divided by g); the dot of "
                  "the exported factors would be X V_k G² V_kᵀ",
    COLUMN_REMEDY: "the prediction of X~ = (X − 1μᵀ)S mapped back to X's scale by S⁻¹ "
                   "(+ 1μᵀ when centred), μ and s from columns.parquet; the dot of the "
                   "exported factors predicts X~",
    f"{PROJECT_BACK}+{COLUMN_REMEDY}": "both: X~ V_k G V_kᵀ S⁻¹ (+ 1μᵀ)",
    "x-tilde": "column remedy without columns.parquet: the dot of the exported factors, "
               "a prediction of X~ (not X's scale)",
}


def dot_scoring(model: Any) -> str:
    """Key of :data:`SCORING` saying what the held-out dot of ``model`` ranks by."""
    params = model.manifest.get("parameters", {})
    if model.dimensions is None or "objective" not in params:
        return EXPORTED
    remedy = (params.get("preprocessing") or {}).get("kind", "none") not in ("none", "rows")
    if remedy and model.columns is None:
        return "x-tilde"
    parts = [PROJECT_BACK] * bool(params.get("project_back")) + [COLUMN_REMEDY] * remedy
    return "+".join(parts) or EXPORTED


def dot_factors(model: Any, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(user factors, item factors) whose dot is ``model``'s prediction of X in X's scale.

    Parameters
    ----------
    model : bigcos.models.Model
        Its ``dimensions`` (spectrum.parquet: a, b, g, kept) and ``columns`` are used when
        present; otherwise (ALS, other software) the exported embeddings are returned.
    users : (m,) int
        Rows of the matrix to score (their fold-in embeddings).

    Returns
    -------
    (m, d) and (p, d) float32; d = kept dimensions, +1 with a centring column.
    Memory: one copy of the item factors and of the m user rows.
    """
    return factors_of(model, model.user_embeddings[users])


def factors_of(model: Any, exported_users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`dot_factors` of the exported user embeddings ``exported_users`` (m, k), for a
    model whose users are read elsewhere (a :class:`bigcos.model_info.ModelInfo`: items,
    spectrum, columns and manifest only)."""
    if dot_scoring(model) in (EXPORTED, "x-tilde"):
        return exported_users, model.item_embeddings
    dims = model.dimensions
    kept = dims.column("kept").to_numpy(zero_copy_only=False).astype(bool)
    a, b, g = (dims.column(c).to_numpy().astype(np.float64) for c in ("a", "b", "g"))
    V = np.zeros((model.item_embeddings.shape[0], kept.size))
    P = np.zeros((len(exported_users), kept.size))
    V[:, kept] = model.item_embeddings / b[kept]
    P[:, kept] = exported_users / a[kept]
    params = model.manifest["parameters"]
    solution = SimpleNamespace(kept=kept, a=a, b=b, g=g,
                               spec=SimpleNamespace(project_back=bool(params.get("project_back"))))
    center = scale = None
    if model.columns is not None:
        center = model.columns.column("col_center").to_numpy()
        scale = model.columns.column("col_scale").to_numpy()
        if not center.any():
            center = None
    return scoring_factors(solution, V, P, "dot", center, scale)
