"""The report page: one self-contained HTML file (plots inline as PNG, no external assets)."""

from __future__ import annotations

import html
from typing import Any

import numpy as np

from bigcos.errors import UserError
from bigcos.neighbor_lists import KINDS, METRICS
from bigcos.reports import plots
from bigcos.reports.tables import d_family

_CSS = """body{font-family:sans-serif;max-width:1150px;margin:auto;padding:1em;color:#222}
table{border-collapse:collapse;font-size:12px;margin:.5em 0}td,th{border:1px solid #ccc;
padding:2px 6px;text-align:left}.scroll{overflow-x:auto}img{max-width:100%}h2{margin-top:2em}"""


def _rows(report, name: str) -> list[dict[str, Any]]:
    return report.tables[name].to_pylist()


def _img(fig, alt: str) -> str | None:
    return plots.img_tag(fig, alt) if fig is not None else None


def example_queries(report) -> np.ndarray:
    """Matrix indices of the example items: the requested ids, else the most popular ones."""
    ids = [str(v) for v in report.item_ids.to_pylist()]
    if report.options.examples:
        where = {v: i for i, v in enumerate(ids)}
        missing = [e for e in report.options.examples if e not in where]
        if missing:
            raise UserError(f"--example {missing[0]}: item id not in the matrix")
        return np.array([where[e] for e in report.options.examples], dtype=np.int64)
    return np.argsort(-report.popularity, kind="stable")[:report.options.n_examples]


def example_tables(report) -> str:
    """HTML tables: the top-N item-item neighbours of each example item under each config."""
    lists = [nl for nl in report.lists if nl.kind == "item-item"]
    titles = report.info.titles
    parts = []
    for q in example_queries(report):
        head = "".join(f"<th>{html.escape(nl.label)}</th>" for nl in lists)
        columns = []
        for nl in lists:
            row = np.searchsorted(nl.queries, q)
            found = row < nl.queries.size and nl.queries[row] == q
            columns.append(nl.neighbors[row, :report.options.depth] if found else np.array([]))
        depth = max((c.size for c in columns), default=0)
        body = []
        for r in range(depth):
            cells = "".join(
                f"<td>{html.escape(str(titles[c[r]])) if r < c.size and c[r] >= 0 else ''}</td>"
                for c in columns)
            body.append(f"<tr><th>{r + 1}</th>{cells}</tr>")
        parts.append(f"<h3>The {depth} nearest items to {html.escape(str(titles[q]))} "
                     f"({int(report.popularity[q])} users) under each configuration</h3>"
                     f"<div class=scroll><table><tr><th>rank</th>{head}</tr>"
                     f"{''.join(body)}</table></div>")
    return "\n".join(parts)


def html_table(rows: list[dict[str, Any]]) -> str:
    """A plain HTML table of rows (floats to 3 decimals)."""
    if not rows:
        return "<p><em>not computed for these inputs</em></p>"
    cols = list(rows[0])

    def fmt(v):
        return f"{v:.3f}" if isinstance(v, float) else html.escape(str(v))

    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{fmt(r[c])}</td>" for c in cols) + "</tr>"
                   for r in rows)
    return f"<div class=scroll><table><tr>{head}</tr>{body}</table></div>"


def _span(values: list[float]) -> str:
    lo, hi = min(values), max(values)
    return f"{lo:.3f}" if np.isclose(lo, hi, rtol=0, atol=5e-4) else f"{lo:.3f} to {hi:.3f}"


def findings(report) -> list[str]:
    """Headline sentences computed from the tables (nothing here is hand-written)."""
    n = report.options.depth
    out = []
    for r in _rows(report, "d_sensitivity"):
        if r["metric"] != "cos":
            continue
        dot = next((d for d in _rows(report, "d_sensitivity") if d["metric"] == "dot"
                    and (d["kind"], d["family"]) == (r["kind"], r["family"])), None)
        dot_text = (f"; by dot {dot['jaccard_mean']:.3f} (lowest pair {dot['jaccard_min']:.3f})"
                    if dot else "")
        out.append(f"{r['kind']} neighbours across {r['n_models']} rescalings D of "
                   f"{r['family']}: mean Jaccard@{n} by cosine {r['jaccard_mean']:.3f} (lowest "
                   f"pair {r['jaccard_min']:.3f}){dot_text}.")
    held = _rows(report, "heldout")
    families = {name: d_family(m.manifest, name) for name, m in report.models.items()}
    for fam in sorted({f for f in families.values() if f}):
        rows = [r for r in held if families.get(r["model"]) == fam]
        if len({r["model"] for r in rows}) > 1:
            by = {m: [r["recall_at_20"] for r in rows if r["metric"] == m] for m in METRICS}
            out.append(f"Held-out Recall@20 across the D of {fam} ({rows[0]['protocol']} "
                       f"generalisation, {rows[0]['n_users']} users): by dot {_span(by['dot'])}, "
                       f"by cosine {_span(by['cos'])}.")
    truth = _rows(report, "ground_truth")
    if truth:
        best = max(truth, key=lambda r: r["auc"])
        worst = min(truth, key=lambda r: r["auc"])
        out.append(f"Same-{truth[0]['label_source']} vs different-{truth[0]['label_source']} "
                   f"AUC ranges from {worst['auc']:.3f} ({worst['model']}/{worst['metric']}) to "
                   f"{best['auc']:.3f} ({best['model']}/{best['metric']}); label precision@{n} "
                   f"is {_span([r['precision'] for r in truth])} against "
                   f"{_span([r['baseline_precision'] for r in truth])} for popularity-matched "
                   f"random neighbours.")
    pop = _rows(report, "popularity")
    if pop:
        by = {m: [r["frac_more_popular"] for r in pop if r["metric"] == m] for m in METRICS}
        if by["cos"] and by["dot"]:
            out.append(f"Share of item-item neighbours more popular than their query: by dot "
                       f"{_span(by['dot'])}, by cosine {_span(by['cos'])} across models.")
    return out


def render_html(report) -> str:
    """The self-contained page of a :class:`bigcos.reports.Report`."""
    n = report.options.depth
    items = {name: m.item_embeddings for name, m in report.models.items()}
    sections = [
        ("Does the rescaling D change the neighbours?",
         f"Objective 1 (paper Eq. 1) is solved equally well by every diagonal rescaling D. "
         f"Mean Jaccard@{n} between the lists of models that differ only in D: below 1 means "
         f"the choice of D, which the training loss cannot see, changed who the neighbours are.",
         [_img(plots.plot_d_sensitivity(_rows(report, "d_sensitivity")), "D-sensitivity")],
         "d_sensitivity"),
        ("Agreement between configurations", f"Mean Jaccard@{n} (RBO p={report.options.rbo_p} "
         f"in agreement.parquet).",
         [_img(plots.plot_agreement_heatmap(_rows(report, "agreement"), k), f"agreement {k}")
          for k in KINDS], None),
        ("Ground truth: do neighbours share a label?",
         f"Share of the {n} item-item neighbours with a label in common with the query, next "
         f"to random neighbours of the same popularity bins (|), and the AUC of similarity for "
         f"same-label vs different-label item pairs (0.5 = chance).",
         [_img(plots.plot_cos_vs_dot(_rows(report, "ground_truth"), ["precision", "auc"],
                                     f"label precision@{n} (| = popularity-matched random) "
                                     f"and AUC", baseline="baseline_precision"), "ground truth"),
          _img(plots.plot_label_heatmaps(items, report.info, report.popularity,
                                         report.options.seed), "item-item cosine heatmaps")],
         "ground_truth"),
        ("Held-out interactions: ranking by dot vs cosine",
         "Every item the user has not interacted with in training is ranked by the score of "
         "the user and item embeddings; relevant = the user's held-out items (Recall@K divides "
         "by min(K, number of held-out items)).",
         [_img(plots.plot_cos_vs_dot(_rows(report, "heldout"),
                                     ["recall_at_20", "recall_at_50", "ndcg_at_100"],
                                     "ranking all unseen items of each test user"), "held-out")],
         "heldout"),
        ("Popularity and norms", "How the item norm tracks popularity under each model, and "
         "how popular the neighbours are relative to the query.",
         [_img(plots.plot_norm_vs_popularity(items, report.popularity), "norm vs popularity"),
          _img(plots.plot_relative_popularity(report.lists, report.popularity, n),
               "relative popularity")], "popularity"),
    ]
    summary = "".join(f"<li>{html.escape(f)}</li>" for f in findings(report))
    body = [f"<h2>Findings</h2><ul>{summary}</ul>" if summary else ""]
    for title, text, images, table in sections:
        body.append(f"<h2>{html.escape(title)}</h2><p>{html.escape(text)}</p>")
        body.extend(img for img in images if img)
        if table:
            body.append(html_table(_rows(report, table)))
    body.append("<h2>Example neighbour lists</h2>" + example_tables(report))
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>bigcos report</title>"
            f"<style>{_CSS}</style></head><body><h1>Is cosine similarity really about "
            f"similarity here?</h1>{''.join(body)}</body></html>\n")
