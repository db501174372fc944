"""The report's stated comparisons: paired bootstrap over the same test users, with verdicts.

MATH.md, "Choosing λ and stating results". Each comparison is one measure of two
configurations (model, metric) on the same held-out users: the estimate is the mean of the
per-user difference a - b, its percentile bootstrap interval resamples users
(:func:`bigcos.stats.paired_bootstrap`), and the verdict is "a better" / "b better" when the
interval excludes 0, else "no difference". Beside it, a Holm-adjusted verdict over the
comparisons of the same measure (step-down: with r comparisons not yet rejected, those whose
interval at level 1 - (1 - level)/r excludes 0 are rejected, until none is; the percentile
bootstrap p-value is below a threshold exactly when that interval excludes 0). With 1,000
resamples the extreme percentiles behind many comparisons are coarse: raise ``n_resamples``.

Which comparisons are stated (each once):

- dot vs cosine of one model: dot at the model, cosine at its ``-lamcos`` model if there is one
  (λ chosen for cosine), else the same model;
- D vs D: cosine of two named rescalings D of one D-family (same λ, k, remedy);
- remedy vs the model it repairs, same metric: project-back vs ``obj1-symmetric``
  (``obj2`` for objective 2), ``<base>-std``/``-pop<β>``/``-rows<γ>`` vs ``<base>``;
- every closed-form model vs ALS and vs the cosine-trained model, same metric.

Pure numpy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from bigcos.reports.evaluation import HeldOutScores
from bigcos.reports.model_params import NAMED_D, ModelParams
from bigcos.reports.options import Options
from bigcos.stats import Resampled, paired_differences, resample_means

LAMCOS = "-lamcos"
_REMEDY_SUFFIX = re.compile(r"-(std|pop[0-9.]+|rows[0-9.]+)$")


@dataclass(frozen=True)
class Stated:
    """One comparison to state: a = (model_a, metric_a) against b = (model_b, metric_b)."""

    comparison: str
    model_a: str
    metric_a: str
    model_b: str
    metric_b: str
    identical_by_construction: bool = False


def repaired_model(name: str) -> str:
    """The model a remedy repairs, by name: ``obj1-project-back[-std]`` -> ``obj1-symmetric``,
    ``obj2-project-back`` -> ``obj2``, ``<base>-std|-pop<β>|-rows<γ>`` -> ``<base>``."""
    base = _REMEDY_SUFFIX.sub("", name)
    if base.endswith("-project-back"):
        base = base[:-len("-project-back")]
        base += "-symmetric" if base == "obj1" else ""
    return base


def stated_comparisons(params: dict[str, ModelParams], scored: set[str]) -> list[Stated]:
    """The comparisons a report states among the models ``scored`` (held-out scores exist).

    Parameters
    ----------
    params : dict
        Model name -> :class:`ModelParams`.
    scored : set of str
        Model names with held-out scores.

    Returns
    -------
    list of Stated, in a fixed order (kinds as in the module docstring, then names).
    """
    def cos_model(name: str) -> str:
        return name + LAMCOS if name + LAMCOS in scored else name

    main = sorted(n for n in scored if not n.endswith(LAMCOS))
    closed = [n for n in main if n in params and params[n].objective is not None]
    out = [Stated("dot vs cosine", n, "dot", cos_model(n), "cos") for n in main]
    by_family: dict[Any, list[str]] = {}
    for n in closed:
        fam = params[n].family
        if fam is not None and params[n].scaling in NAMED_D:
            by_family.setdefault(fam, []).append(n)
    for fam in sorted(by_family, key=repr):
        names = by_family[fam]
        out += [Stated("D vs D", a, "cos", b, "cos") for i, a in enumerate(names)
                for b in names[i + 1:]]
    for n in closed:
        p = params[n]
        if not (p.project_back or p.remedy != "none"):
            continue
        base = repaired_model(n)
        if base == n or base not in scored:
            continue
        # project-back's X-scale dot is X V G V^T, obj1-symmetric's too (MATH.md)
        same = p.project_back and p.remedy == "none"
        out += [Stated("remedy vs repaired", n, "dot", base, "dot", same),
                Stated("remedy vs repaired", cos_model(n), "cos", cos_model(base), "cos")]
    peers = [(n, "vs ALS") for n in main if params.get(n) and params[n].model_type == "als"]
    peers += [(n, "vs cosine-trained") for n in main
              if params.get(n) and params[n].model_type == "cosine-trained"]
    for peer, kind in peers:
        for n in closed:
            out += [Stated(kind, n, "dot", peer, "dot"),
                    Stated(kind, cos_model(n), "cos", peer, "cos")]
    seen, unique = set(), []
    for s in out:
        key = (s.model_a, s.metric_a, s.model_b, s.metric_b)
        if key not in seen and (s.model_a, s.metric_a) != (s.model_b, s.metric_b):
            seen.add(key)
            unique.append(s)
    return unique


def _holm(rows: list[dict[str, Any]], diffs: list[Resampled], opts: Options) -> None:
    """Fill ``verdict_holm`` of ``rows`` (one measure) by Holm's step-down (module docstring)."""
    alpha = 1.0 - opts.level
    remaining = list(range(len(rows)))
    for r in rows:
        r["verdict_holm"] = "no difference"
    while remaining:
        level = 1.0 - alpha / len(remaining)
        rejected = []
        for i in remaining:
            c = diffs[i].comparison(level)
            if c.verdict != "no difference":
                rows[i]["verdict_holm"] = c.verdict
                rejected.append(i)
        if not rejected:
            break
        remaining = [i for i in remaining if i not in rejected]


def comparisons(scores: HeldOutScores | None, params: dict[str, ModelParams],
                opts: Options) -> list[dict[str, Any]]:
    """One comparisons-table row per stated comparison and held-out measure.

    Parameters
    ----------
    scores : HeldOutScores or None
        Per-user measures (:func:`bigcos.reports.evaluation.heldout_scores`).
    params : dict
        Model name -> :class:`ModelParams`.
    opts : Options
        ``n_resamples``, ``level``, ``seed``.

    Returns
    -------
    list of dict
        Columns of the ``comparisons`` table; ``n_comparisons`` is the number of comparisons
        of that measure (Holm's family). Cost: one (n_resamples x users) @ (users x
        comparisons) product per measure; Holm's steps reuse its resampled means.
    """
    if scores is None:
        return []
    stated = stated_comparisons(params, {m for m, _ in scores.values})
    rows = []
    for measure in scores.measures:
        diffs = resample_means(paired_differences(
            [(scores.values[s.model_a, s.metric_a][measure],
              scores.values[s.model_b, s.metric_b][measure]) for s in stated]),
            opts.n_resamples, opts.seed)
        mine = []
        for s, diff in zip(stated, diffs, strict=True):
            c = diff.comparison(opts.level)
            mine.append({"comparison": s.comparison, "measure": measure,
                         "model_a": s.model_a, "metric_a": s.metric_a, "model_b": s.model_b,
                         "metric_b": s.metric_b, "estimate": c.estimate, "lo": c.lo,
                         "hi": c.hi, "level": opts.level, "n_users": c.n,
                         "verdict": c.verdict, "n_comparisons": len(stated),
                         "identical_by_construction": s.identical_by_construction})
        _holm(mine, diffs, opts)
        rows += mine
    return rows
