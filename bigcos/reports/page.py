"""The report page: one self-contained HTML file (plots inline as PNG, no external assets)."""

from __future__ import annotations

import html
from typing import Any

import numpy as np

from bigcos import metrics
from bigcos.neighbor_lists import KINDS, METRICS
from bigcos.reports import plots
from bigcos.reports.inputs import example_indices
from bigcos.reports.model_params import DFamily, ModelParams
from bigcos.reports.scoring import SCORING
from bigcos.reports.statements import (
    comparison_findings,
    identical_configurations,
    measure_label,
    warning_lines,
)

_CSS = """body{font-family:sans-serif;max-width:1150px;margin:auto;padding:1em;color:#222}
table{border-collapse:collapse;font-size:12px;margin:.5em 0}td,th{border:1px solid #ccc;
padding:2px 6px;text-align:left;vertical-align:top}.scroll{overflow-x:auto}img{max-width:100%}
h2{margin-top:2em}dl.meta{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px;
font-size:14px}dl.meta dt{font-weight:bold}dl.meta dd{margin:0}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(210px,1fr));gap:8px}
.card{border:1px solid #ccc;border-radius:4px;padding:4px 6px;font-size:12px}
.card h4{margin:0 0 3px;font-size:12px}.card ol{margin:0;padding-left:1.9em}
.card li{overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
li.same{background:#dff0d8}.lab{color:#777;font-size:11px}code{font-size:12px}"""


def _rows(report, name: str) -> list[dict[str, Any]]:
    return report.tables[name].to_pylist()


def _img(fig, alt: str) -> str | None:
    return plots.img_tag(fig, alt) if fig is not None else None


def example_queries(report) -> np.ndarray:
    """Matrix indices of the example items: the requested ids, else the most popular ones."""
    if report.options.examples:
        return example_indices(report.options.examples, report.item_ids, "of this report")
    return np.argsort(-report.popularity, kind="stable")[:report.options.n_examples]


def _label_note(info, i: int) -> str:
    if info.label_text is None or not info.label_text[i]:
        return ""
    text = f"{info.label_source}: {info.label_text[i]}"
    return f" <span class=lab>{html.escape(text)}</span>"


def example_lists(report) -> str:
    """Per example item, one compact card per configuration: its top-N item-item neighbours,
    those sharing a label with the query marked (✓, green)."""
    lists = [nl for nl in report.lists if nl.kind == "item-item"]
    info = report.info
    parts = []
    for q in example_queries(report):
        cards = []
        for nl in lists:
            row = np.searchsorted(nl.queries, q)
            found = row < nl.queries.size and nl.queries[row] == q
            nb = nl.neighbors[row, :report.options.depth] if found else np.array([], np.int64)
            nb = nb[nb >= 0]
            same = (metrics.shares_label(info.labels, np.array([q]), nb[None, :])[0]
                    if info.labels is not None and nb.size else np.zeros(nb.size, bool))
            items = "".join(
                f"<li class={'same' if s else 'other'} title=\"{html.escape(info.titles[j])}\">"
                f"{'✓ ' if s else ''}{html.escape(info.titles[j])}</li>"
                for j, s in zip(nb, same, strict=True))
            cards.append(f"<div class=card><h4>{html.escape(nl.label)}</h4>"
                         f"<ol>{items or '<em>no list</em>'}</ol></div>")
        parts.append(f"<h3>Nearest items to {html.escape(info.titles[q])} "
                     f"(id {html.escape(str(report.item_ids[int(q)]))}, "
                     f"{int(report.popularity[q]):,} users){_label_note(info, q)}</h3>"
                     f"<div class=cards>{''.join(cards)}</div>")
    return "\n".join(parts)


def html_table(rows: list[dict[str, Any]], drop: tuple[str, ...] = ("dataset",)) -> str:
    """A plain HTML table of rows (floats to 3 decimals, lists joined, None blank)."""
    if not rows:
        return "<p><em>not computed for these inputs</em></p>"
    cols = [c for c in rows[0] if c not in drop]

    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3f}"
        if isinstance(v, list):
            return html.escape(", ".join(map(str, v)))
        return "" if v is None else html.escape(str(v))

    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{fmt(r[c])}</td>" for c in cols) + "</tr>"
                   for r in rows)
    return f"<div class=scroll><table><tr>{head}</tr>{body}</table></div>"


def _span(values: list[float]) -> str:
    lo, hi = min(values), max(values)
    return f"{lo:.3f}" if np.isclose(lo, hi, rtol=0, atol=5e-4) else f"{lo:.3f} to {hi:.3f}"


def _ground_truth_finding(truth: list[dict[str, Any]], n: int) -> str:
    """Label precision@n at its extremes with intervals, how many configurations beat their
    popularity-matched baseline (paired interval above 0), and the AUC range (no interval:
    a description of the random pairs)."""
    label = truth[0]["label_source"]
    lo, hi = (min(truth, key=lambda r: r["precision"]), max(truth, key=lambda r: r["precision"]))

    def cite(r: dict[str, Any]) -> str:
        return (f"{r['precision']:.3f} [{r['precision_lo']:.3f}, {r['precision_hi']:.3f}] "
                f"({r['model']}/{r['metric']})")

    above = sum(r["above_baseline_lo"] > 0 for r in truth)
    auc = sorted(r["auc"] for r in truth)
    return (f"Label precision@{n} (share of neighbours with a {label} in common with the query, "
            f"{truth[0]['level']:.0%} intervals over queries) ranges from {cite(lo)} to "
            f"{cite(hi)}; {above} of {len(truth)} configurations are above popularity-matched "
            f"random neighbours ({_span([r['baseline_precision'] for r in truth])}; paired "
            f"interval of the difference above 0). Same- vs different-{label} AUC over "
            f"{truth[0]['n_auc_pairs']:,} random item pairs (no interval): {auc[0]:.3f} to "
            f"{auc[-1]:.3f}.")


def _family(row: dict[str, Any]) -> DFamily:
    return DFamily(*(row[f] for f in DFamily._fields))


def findings(report) -> list[str]:
    """Headline sentences computed from the tables (nothing here is hand-written)."""
    n = report.options.depth
    out = []
    sens = _rows(report, "d_sensitivity")
    for r in sens:
        if r["metric"] != "cos":
            continue
        dot = next((d for d in sens if d["metric"] == "dot" and d["kind"] == r["kind"]
                    and _family(d) == _family(r)), None)
        dot_text = (f"; by dot {dot['jaccard_mean']:.3f} (lowest pair {dot['jaccard_min']:.3f})"
                    if dot else "")
        interval = (f", {r['level']:.0%} interval over {r['n_queries']:,} queries "
                    f"[{r['jaccard_lo']:.3f}, {r['jaccard_hi']:.3f}]"
                    if r.get("n_queries") else "")
        out.append(f"{r['kind']} neighbours across {r['n_models']} rescalings D of "
                   f"{_family(r).label}: mean Jaccard@{n} by cosine {r['jaccard_mean']:.3f} "
                   f"(lowest pair {r['jaccard_min']:.3f}{interval}){dot_text}.")
    held = _rows(report, "heldout")
    recall = next((c for c in report.tables["heldout"].column_names
                   if c.startswith("recall_at_")), None)
    families = {name: p.family for name, p in report.params.items()}
    for fam in sorted({f for f in families.values() if f}, key=repr):
        rows = [r for r in held if families.get(r["model"]) == fam]
        if len({r["model"] for r in rows}) > 1:
            by = {m: [r[recall] for r in rows if r["metric"] == m] for m in METRICS}
            out.append(f"Held-out Recall@{recall[10:]} across the D of {fam.label} "
                       f"({rows[0]['protocol']} generalisation, {_users(rows[0])}): "
                       f"by dot {_span(by['dot'])}, by cosine {_span(by['cos'])}.")
    out += comparison_findings(_rows(report, "comparisons"), held)
    out += identical_configurations(report.params)
    truth = _rows(report, "ground_truth")
    if truth:
        out.append(_ground_truth_finding(truth, n))
    pop = _rows(report, "popularity")
    if pop:
        by = {m: [r["frac_more_popular"] for r in pop if r["metric"] == m] for m in METRICS}
        if by["cos"] and by["dot"]:
            out.append(f"Share of item-item neighbours more popular than their query: by dot "
                       f"{_span(by['dot'])}, by cosine {_span(by['cos'])} across models.")
    return out


def split_text(ingest: dict[str, Any]) -> str:
    """The matrix's train/test split in words, from its ingest parameters."""
    split = ingest.get("split", "none")
    if split == "none":
        return "none (no held-out interactions, no held-out table)"
    if split == "users":
        return (f"users: {ingest.get('heldout_users', 0):.0%} of users held out (strong "
                f"generalisation), {ingest.get('test_fraction', 0):.0%} of their interactions "
                f"hidden")
    return f"{split}: {ingest.get('test_fraction', 0):.0%} of interactions held out"


def model_parameters_text(params: dict[str, ModelParams]) -> str:
    """k and lambda of each kind of model, e.g. ``objective 1: λ=20, k=8 (4 models)``."""
    groups: dict[str, list[str]] = {}
    for p in params.values():
        if p.model_type == "als":
            key = f"ALS: {p.k} factors" if p.k else "ALS"
        elif p.objective is None:
            key = "other embeddings"
        else:
            lam = f"λ={p.lam:g}" if p.lam is not None else "λ unknown"
            k = f"k={p.k}" if p.k is not None else "k unknown"
            key = f"objective {p.objective}: {lam}, {k}"
        groups.setdefault(key, []).append(p.model)
    return "; ".join(f"{key} ({len(v)} model{'s' * (len(v) > 1)})"
                     for key, v in sorted(groups.items()))


def labels_text(info, items: str | None) -> str:
    """Where the ground-truth labels come from and how many items have none."""
    n = len(info.titles)
    if info.labels is None:
        return (f"none (no label column in {items})" if items
                else "none (no item table: pass items / --items)")
    kind = "one per item" if info.single_label else "a set per item; shared = at least one"
    return (f"column <code>{html.escape(info.label_source)}</code> of the item table "
            f"({kind}); {info.n_unlabelled:,} of {n:,} items have no label and are left "
            f"out of precision@N and AUC")


def header(report) -> tuple[str, str]:
    """(page title, header HTML): what, for which data, when, by which version, how."""
    o, ctx = report.options, report.context
    dataset = o.dataset or "unnamed data set"
    job = f", job {o.job}" if o.job else ""
    date = ctx.get("date", "")
    version = ctx.get("version", "")
    title = f"bigcos report: {dataset}{job} ({date}, bigcos {version})"
    n_comp = ctx.get("neighbors_n")
    rows = [("dataset", html.escape(dataset)), ("job", html.escape(o.job or "not recorded")),
            ("date", html.escape(date)), ("bigcos", html.escape(str(version))),
            ("models", html.escape(model_parameters_text(report.params))),
            ("lists", f"N = {o.depth} neighbours compared" + (f" (computed: {n_comp})"
                                                              if n_comp else "")
             + f"; RBO p = {o.rbo_p}"),
            ("split", html.escape(split_text(ctx.get("split", {})))),
            ("matrix", f"{len(report.item_ids):,} items, {int(report.popularity.sum()):,} "
                       f"training interactions"),
            ("labels", labels_text(report.info, ctx.get("items"))),
            ("titles", f"column <code>{html.escape(report.info.title_source)}</code>"
             if report.info.title_source else "item ids (no title column)")]
    dl = "".join(f"<dt>{k}</dt><dd id=meta-{k}>{v}</dd>" for k, v in rows)
    return title, (f"<header id=report-header><h1>Is cosine similarity really about "
                   f"similarity in {html.escape(dataset)}?</h1><dl class=meta>{dl}</dl>"
                   f"</header>")


_NAMING = [
    ("obj1-&lt;D&gt;", "objective 1 (paper Eq. 1) with rescaling D; every D fits equally well"),
    ("obj2", "objective 2 (paper Eq. 2): a unique solution, no free D"),
    ("-project-back", "remedy of paper §3: embeddings of A Bᵀ, the same for every D"),
    ("random&lt;S&gt;x-seed&lt;s&gt;", "a random D: log-uniform values, largest/smallest ≤ S, "
     "from seed s"),
    ("-std / -pop&lt;β&gt;", "column remedy before the SVD: standardised columns / columns "
     "scaled by popularity^-β"),
    ("als", "implicit ALS, the usual iterative peer"),
    ("…/cos, …/dot", "a configuration: a model's embeddings scored by cosine or by dot product"),
]


def legend(report) -> str:
    """Every model name of the report explained, then the naming scheme."""
    rows = "".join(f"<tr><td><code>{html.escape(p.model)}</code></td>"
                   f"<td>{html.escape(p.description)}</td></tr>"
                   for _, p in sorted(report.params.items()))
    scheme = "".join(f"<tr><td><code>{k}</code></td><td>{v}</td></tr>" for k, v in _NAMING)
    return (f"<section id=legend><h2>Legend: what each model name means</h2>"
            f"<table><tr><th>model</th><th>what it is</th></tr>{rows}</table>"
            f"<table><tr><th>name part</th><th>meaning</th></tr>{scheme}</table></section>")


def scoring_text(report) -> str:
    """What the held-out dot ranks by, for the models where it is not their exported dot."""
    special = {name: key for name, key in report.context.get("scoring", {}).items()
               if key != "exported"}
    if not special:
        return ("Dot ranks by the dot of the exported embeddings (each model's prediction of X); "
                "cosine by their cosine.")
    lines = "".join(f"<li><code>{html.escape(n)}</code>: {html.escape(SCORING[k])}</li>"
                    for n, k in sorted(special.items()))
    return ("Dot ranks by each model's prediction of X in X's own scale; cosine by the cosine "
            f"of the exported embeddings. Where the two differ from the exported dot:<ul>"
            f"{lines}</ul>")


def _users(row: dict) -> str:
    """"1,208 users", or "100,000 of 1,208,000 users (a seeded sample)"."""
    n, total = row["n_users"], row.get("n_test_users", row["n_users"])
    return (f"{n:,} users" if n == total
            else f"{n:,} of {total:,} test users (a seeded sample)")


def validation_section(report) -> str:
    """λ chosen on validation users: curves (dot and cosine per family) and the path table."""
    rows = _rows(report, "lambda_path")
    if not rows:
        return ("<section id=validation><h2>Validation curves: choosing λ</h2><p><em>No model "
                "of this report chose λ on validation users (every λ is fixed).</em></p>"
                "</section>")
    img = _img(plots.plot_lambda_path(rows), "validation curves") or ""
    chosen = [r for r in rows if r["chosen"]]
    text = "; ".join(f"{r['model']} by {r['metric']}: λ={r['lam']:g}" for r in chosen)
    return (f"<section id=validation><h2>Validation curves: choosing λ</h2><p>Validation "
            f"{html.escape(rows[0]['measure'])}@K on {rows[0]['n_users']:,} validation users "
            f"(disjoint from the test users) along each family's λ grid, dot (left) and cosine "
            f"(right); ★ = chosen ({html.escape(text)}).</p>{img}"
            f"{html_table(rows)}</section>")


def render_html(report) -> str:
    """The self-contained page of a :class:`bigcos.reports.Report`."""
    n = report.options.depth
    # figures of item embeddings skip the -lamcos variants (their family's D, another λ)
    items = {name: m.item_embeddings for name, m in report.models.items()
             if not name.endswith("-lamcos")}
    held_cols = [c for c in report.tables["heldout"].column_names
                 if c.startswith(("recall_at_", "ndcg_at_")) and not c.endswith(("_lo", "_hi"))]
    sens = [{**r, "family": _family(r).label} for r in _rows(report, "d_sensitivity")]
    sections = [
        ("Does the rescaling D change the neighbours?",
         f"Objective 1 (paper Eq. 1) is solved equally well by every diagonal rescaling D. "
         f"Mean Jaccard@{n} between the lists of models that differ only in D: below 1 means "
         f"the choice of D, which the training loss cannot see, changed who the neighbours are.",
         [_img(plots.plot_d_sensitivity(sens), "D-sensitivity")], "d_sensitivity"),
        ("Agreement between configurations", f"Mean Jaccard@{n} (RBO p={report.options.rbo_p} "
         f"in agreement.parquet).",
         [_img(plots.plot_agreement_heatmap(_rows(report, "agreement"), k), f"agreement {k}")
          for k in KINDS], None),
        ("Ground truth: do neighbours share a label?",
         f"Labels: {labels_text(report.info, report.context.get('items'))}. Share of the {n} "
         f"item-item neighbours with a label in common with the query, next to random "
         f"neighbours of the same popularity bins (|), and the AUC of similarity for "
         f"same-label vs different-label item pairs (0.5 = chance). The heatmaps are the "
         f"paper's Figure 1 on these data, on the scale of bigcos figure1 (without the -lamcos "
         f"variants, whose D is their family's).",
         [_img(plots.plot_cos_vs_dot(_rows(report, "ground_truth"), ["precision", "auc"],
                                     f"label precision@{n} (| = popularity-matched random) "
                                     f"and AUC", baseline="baseline_precision"), "ground truth"),
          _img(plots.plot_label_heatmaps(items, report.info, report.popularity,
                                         report.options.seed), "item-item cosine heatmaps")],
         "ground_truth"),
        ("Held-out interactions: ranking by dot vs cosine",
         "Every item the user has not interacted with in training is ranked by the score of "
         "the user and item embeddings; relevant = the user's held-out items (Recall@K divides "
         f"by min(K, number of held-out items)). Bars: {report.options.level:.0%} percentile "
         f"bootstrap intervals over users ({report.options.n_resamples:,} resamples, seed "
         f"{report.options.seed}). {scoring_text(report)}",
         [_img(plots.plot_cos_vs_dot(_rows(report, "heldout"), held_cols,
                                     "ranking all unseen items of each test user"), "held-out")],
         "heldout"),
        ("Popularity and norms", "How the item norm tracks popularity under each model (the "
         "-lamcos variants are in popularity.parquet), and how popular the neighbours are "
         "relative to the query.",
         [_img(plots.plot_norm_vs_popularity(items, report.popularity), "norm vs popularity"),
          _img(plots.plot_relative_popularity(report.lists, report.popularity, n),
               "relative popularity")], "popularity"),
    ]
    title, head = header(report)
    summary = "".join(f"<li>{html.escape(f)}</li>" for f in findings(report))
    warned = "".join(f"<li>{html.escape(w)}</li>"
                     for w in warning_lines(report.context.get("warnings", {})))
    body = [head, f"<h2>Findings</h2><ul id=findings>{summary}</ul>" if summary else "",
            f"<section id=warnings><h2>Warnings</h2><ul>{warned}</ul></section>"
            if warned else "", legend(report)]
    for name, text, images, table in sections:
        body.append(f"<h2>{html.escape(name)}</h2><p>{text}</p>")
        body.extend(img for img in images if img)
        if table:
            body.append(html_table(_rows(report, table)))
    compared = _rows(report, "comparisons")
    if compared:
        first = compared[0]["measure"]
        body.append(f"<section id=comparisons><h2>Stated comparisons "
                    f"({compared[0]['n_comparisons']} per measure)</h2><p>Paired over the same "
                    f"test users: estimate = mean of a − b, {report.options.level:.0%} "
                    f"percentile bootstrap interval, verdict and Holm-adjusted verdict "
                    f"(all measures in comparisons.parquet; {html.escape(measure_label(first))}"
                    f" shown).</p>"
                    f"{html_table([c for c in compared if c['measure'] == first])}</section>")
    body.append(validation_section(report))
    body.append(f"<h2>Example neighbour lists</h2><p>Top {n} item-item neighbours under each "
                f"configuration; ✓ (green): shares a label with the query.</p>"
                + example_lists(report))
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title><style>{_CSS}</style></head><body>{''.join(body)}</body></html>\n")
