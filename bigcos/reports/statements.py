"""Sentences the page states about held-out results, each built from a table row.

Every sentence quotes a ``comparisons`` row (estimate, interval, verdict, Holm verdict) and the
``heldout`` rows of its two configurations; nothing is hand-written, so a verdict of
"no difference", or a remedy that does worse ("reversed on this dataset"), is said as such.
Also: the models' manifest warnings and the configurations identical by construction.
"""

from __future__ import annotations

from typing import Any

_LABELS = {"recall": "Recall@", "ndcg": "NDCG@"}


def measure_label(measure: str) -> str:
    """``recall_at_20`` -> ``Recall@20``."""
    kind, _, k = measure.partition("_at_")
    return f"{_LABELS.get(kind, kind)}{k}"


def _figure(held: dict, model: str, metric: str, measure: str) -> str:
    r = held.get((model, metric))
    if r is None:
        return "–"
    return f"{r[measure]:.3f} [{r[measure + '_lo']:.3f}, {r[measure + '_hi']:.3f}]"


def _verdict(verdict: str, a: str, b: str) -> str:
    return {"a better": f"{a} better", "b better": f"{b} better"}.get(verdict, "no difference")


def _difference(c: dict[str, Any], a: str, b: str) -> str:
    pct = f"{c['level']:.0%}"
    return (f"{a} − {b} {c['estimate']:+.3f}, {pct} interval [{c['lo']:+.3f}, {c['hi']:+.3f}] "
            f"over {c['n_users']:,} users; Holm-adjusted: "
            f"{_verdict(c['verdict_holm'], a, b)}")


def comparison_findings(comparisons: list[dict[str, Any]], heldout: list[dict[str, Any]]
                        ) -> list[str]:
    """Findings from the comparisons of the first held-out measure (one sentence per
    dot-vs-cosine and remedy comparison; one per D-family and per peer summarising its rows).

    Parameters
    ----------
    comparisons, heldout : rows of the ``comparisons`` and ``heldout`` tables

    Returns
    -------
    list of str
    """
    if not comparisons:
        return []
    measure = comparisons[0]["measure"]
    rows = [c for c in comparisons if c["measure"] == measure]
    held = {(r["model"], r["metric"]): r for r in heldout}
    label = measure_label(measure)
    out = [f"{rows[0]['n_comparisons']} paired comparisons of held-out {label} are stated "
           f"(comparisons.parquet, also for the other measures); a verdict says 'no "
           f"difference' when the {rows[0]['level']:.0%} interval of the per-user difference "
           f"contains 0."]
    for c in rows:
        a, b = c["model_a"], c["model_b"]
        if c["comparison"] == "dot vs cosine":
            at = f" at {b}" if b != a else ""
            out.append(f"{a}: {label} by dot {_figure(held, a, 'dot', measure)}, by cosine{at} "
                       f"{_figure(held, b, 'cos', measure)}: "
                       f"{_verdict(c['verdict'], 'dot', 'cosine')} "
                       f"({_difference(c, 'dot', 'cosine')}).")
        elif c["comparison"] == "remedy vs repaired":
            metric = {"dot": "dot", "cos": "cosine"}[c["metric_a"]]
            if c["identical_by_construction"]:
                out.append(f"{a} vs {b} by {metric}: identical by construction (both rank by "
                           f"X V_k G V_kᵀ), {label} {_figure(held, a, 'dot', measure)}.")
                continue
            reversed_ = (" — reversed on this dataset: the unrepaired model ranks better"
                         if c["verdict"] == "b better" else "")
            out.append(f"Remedy {a} vs {b} by {metric}: {label} "
                       f"{_figure(held, a, c['metric_a'], measure)} vs "
                       f"{_figure(held, b, c['metric_b'], measure)}: "
                       f"{_verdict(c['verdict'], a, b)}{reversed_} ({_difference(c, a, b)}).")
    pairs = [c for c in rows if c["comparison"] == "D vs D"]
    if pairs:
        differ = [c for c in pairs if c["verdict"] != "no difference"]
        listed = "; ".join(f"{c['model_a']} vs {c['model_b']}: "
                           f"{_verdict(c['verdict'], c['model_a'], c['model_b'])} "
                           f"({c['estimate']:+.3f} [{c['lo']:+.3f}, {c['hi']:+.3f}])"
                           for c in pairs)
        out.append(f"Cosine {label} between named rescalings D at the same λ: "
                   f"{len(differ)} of {len(pairs)} pairs differ ({listed}).")
    for kind in ("vs ALS", "vs cosine-trained"):
        for metric, word in (("dot", "dot"), ("cos", "cosine")):
            sel = [c for c in rows if c["comparison"] == kind and c["metric_a"] == metric]
            if not sel:
                continue
            peer = sel[0]["model_b"]
            counts = {v: sum(c["verdict"] == v for c in sel)
                      for v in ("a better", "b better", "no difference")}
            out.append(f"Against {peer} by {word} ({label} {_figure(held, peer, metric, measure)}):"
                       f" {counts['a better']} bigcos model(s) better, {counts['b better']} "
                       f"worse, {counts['no difference']} no difference.")
    return out


def identical_configurations(params: dict[str, Any]) -> list[str]:
    """Pairs identical by construction: item-item lists of obj1 project-back and
    obj1 user-orthonormal at the same λ, k and remedy (both item embeddings are B = V_k G)."""
    out = []
    for name, p in sorted(params.items()):
        if not (p.project_back and p.objective == 1):
            continue
        for other, q in sorted(params.items()):
            if (q.scaling == "user-orthonormal" and q.objective == 1 and q.lam == p.lam
                    and q.k == p.k and q.remedy == p.remedy and q.remedy_beta == p.remedy_beta):
                out.append(f"The item-item lists of {name} and {other} are identical by "
                           f"construction: both item embeddings are B = V_k G (λ={p.lam:g}).")
    return out


def warning_lines(warnings: dict[str, list[Any]]) -> list[str]:
    """One line per manifest warning, prefixed by its model."""
    return [f"{model}: {w if isinstance(w, str) else w.get('message', w)}"
            for model, ws in sorted(warnings.items()) for w in ws]
