"""The audit's conclusions, one row each, from the tables (see :mod:`bigcos.embedding_audit`)."""

from __future__ import annotations

import math

import numpy as np

from bigcos import stats
from bigcos.canonical import NAMED_MEMBERS
from bigcos.embedding_audit.family import OWN, Family

NAN = float("nan")
DOT_TOLERANCE = 1e-3  # relative score difference that would mean "not dot-equivalent"
BALANCED_TOLERANCE = 0.05  # |log item norm ratio| below which a dimension counts as balanced


def _row(question, kind, estimate, lo, hi, verdict, detail):
    return {"question": question, "kind": kind, "estimate": float(estimate), "lo": float(lo),
            "hi": float(hi), "verdict": verdict, "detail": detail}


def objective_statement(source: str, params: dict) -> str:
    """What the training objective says about D (MATH.md: the dot-equivalent family)."""
    if source == "implicit-als" or params.get("model") == "als":
        reg = params.get("regularization")
        return (f"ALS penalises both factors with L2 (regularization {reg}): at a stationary "
                "point P'P = B'B, the balanced member up to rotation (D = I); "
                "a short run may not have reached it")
    if source in ("implicit-bpr", "implicit-lmf"):
        return ("BPR/LMF apply L2 to both factors once per sampled interaction (a popularity-"
                "weighted penalty) and carry bias columns: that pins a weighted balance, not D = I")
    if params.get("objective") == 1:
        return ("objective 1 penalises the product A B' only: every D has the same loss, so D was "
                f"chosen at export (scaling {params.get('scaling')})")
    if params.get("objective") == 2:
        return "objective 2 penalises both factors with L2: the balanced member (D = I)"
    return ("training objective unknown: an L2 penalty on both factors would pin D = I; a penalty "
            "on the product alone, or none, pins nothing")


def family_verdicts(agreement: list[dict], family: Family | None, source: str, params: dict,
                    opts) -> list[dict]:
    """Stability of cosine lists across the family, dot invariance, membership, pinned D."""
    if family is None:
        need = "needs user embeddings (--users, or a model file holding both factors)"
        return [_row(q, k, NAN, NAN, NAN, "not assessed", need) for q, k in (
            ("cosine lists stable across dot-equivalent models", "item-item"),
            ("cosine lists stable across dot-equivalent models", "user-item"),
            ("embeddings are a member of the dot-equivalent family", "item-item"),
            ("training pinned the rescaling D", "user-item"))]
    rows = []
    others = [r for r in agreement if r["member_b"] == OWN and r["member_a"] not in (OWN, "fitted")]
    for kind in ("item-item", "user-item"):
        cos = [r for r in others if r["kind"] == kind and r["metric_a"] == "cos"]
        worst = min(cos, key=lambda r: r["jaccard"])
        stable = worst["jaccard_lo"] >= opts.stable_jaccard
        rows.append(_row("cosine lists stable across dot-equivalent models", kind,
                         worst["jaccard"], worst["jaccard_lo"], worst["jaccard_hi"],
                         "stable" if stable else "unstable",
                         f"smallest mean Jaccard@{opts.depth} of the model's cosine lists with "
                         f"a member's: {worst['member_a']} (stable: interval above "
                         f"{opts.stable_jaccard})"))
    dots = [r for r in others if r["kind"] == "user-item" and r["metric_a"] == "dot"]
    dev = max(r["max_rel_score_diff"] for r in dots)
    jac = min(r["jaccard"] for r in dots)
    rows.append(_row("dot scores identical across dot-equivalent models", "user-item", dev, NAN,
                     NAN, "identical" if dev < DOT_TOLERANCE else "differ",
                     f"largest relative score difference of a member; smallest Jaccard@"
                     f"{opts.depth} of dot lists {jac:.4f} (ties may reorder)"))
    place = family.place
    named = [r for r in agreement if r["kind"] == "item-item" and r["metric_a"] == "cos"
             and r["member_b"] == OWN and r["member_a"] in NAMED_MEMBERS]
    best = max(named, key=lambda r: r["jaccard"])
    member = place.item_off_diagonal < 1e-3
    fitted = next(r for r in agreement if r["kind"] == "item-item" and r["metric_a"] == "cos"
                  and r["member_a"] == "fitted" and r["member_b"] == OWN)
    rows.append(_row("embeddings are a member of the dot-equivalent family", "item-item",
                     best["jaccard"], best["jaccard_lo"], best["jaccard_hi"],
                     f"member, nearest named: {best['member_a']}" if member else "not a member",
                     f"off-diagonal mass of the item factors' Gram in the canonical basis "
                     f"{place.item_off_diagonal:.2e} (0: a member); Jaccard of own cosine lists "
                     f"with the fitted-D member {fitted['jaccard']:.4f}; estimate: Jaccard with "
                     f"the nearest named member"))
    log_ratio = np.abs(np.log(place.item_ratio))
    balanced = bool(log_ratio.max() < BALANCED_TOLERANCE and member)
    rows.append(_row("training pinned the rescaling D", "user-item", float(log_ratio.max()), NAN,
                     NAN, "balanced (D = I)" if balanced else "not balanced",
                     f"largest |log| of item norm / balanced norm per canonical dimension "
                     f"(0: balanced; median {np.median(log_ratio):.3f}). "
                     + objective_statement(source, params)))
    return rows


def heldout_verdicts(own: dict[str, dict[str, np.ndarray]], opts) -> list[dict]:
    """Paired bootstrap over test users: the model's cosine ranking (a) vs its dot ranking (b)."""
    rows = []
    names = {"a better": "cosine better", "b better": "dot better",
             "no difference": "no difference"}
    for measure in own["cos"]:
        c = stats.paired_bootstrap(own["cos"][measure], own["dot"][measure], opts.n_resamples,
                                   opts.level, opts.seed)
        rows.append(_row(f"held-out {measure}: cosine vs dot", "user-item", c.estimate, c.lo,
                         c.hi, names[c.verdict],
                         f"mean per-user difference cos - dot over {c.n} test users, paired "
                         f"percentile bootstrap ({opts.n_resamples} resamples, level "
                         f"{opts.level})" if not math.isnan(c.estimate) else "no test user"))
    return rows
