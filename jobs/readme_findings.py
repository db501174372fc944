"""Print the README's "What bigcos finds" table (and the figures its bullets quote) from the
report tables that `bigcos run` wrote, so every number there comes from a committed command.

    bigcos run && bigcos run jobs/simulation-paper.toml && bigcos run jobs/shared-datasets.toml
    python jobs/readme_findings.py bigcos-out/simulation-paper/simulation \
        bigcos-out/ml-latest-small \
        bigcos-out/shared-datasets/{ml-100k,ml-1m,lastfm-2k,gowalla,amazon-book,ciao,epinions}

Each argument is one dataset's output directory (holding matrix/ and report/). Columns: the
objective-1 models under every rescaling D ("obj1-<D>", not the remedies) compared with each
other (d_sensitivity: mean Jaccard of the lists at the report depth), their held-out
Recall@20 (heldout) and their same-label AUC (ground_truth); then, with intervals, obj1-symmetric's
Recall@20 by dot and by cosine (cosine at obj1-symmetric-lamcos when λ was chosen for it), the
paired dot-vs-cosine verdict from comparisons.parquet (raw / Holm), the item-item cosine
D-sensitivity J@N with its interval over queries, and λ for dot / cosine.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

NAMES = {"simulation": "simulator (paper §4)"}
# what the items' label column holds where it is not genres (see ../shared/data/README.md)
LABELS = {"lastfm-2k": "top-5 tags", "ciao": "category", "epinions": "category"}
REMEDIES = ("obj1-project-back", "-std", "-pop", "-rows", "-lamcos")  # the D-family: one λ


def _span(values: pd.Series) -> str:
    lo, hi = values.min(), values.max()
    return f"{lo:.3f}" if round(lo, 3) == round(hi, 3) else f"{lo:.3f}–{hi:.3f}"


def _objective1(table: pd.DataFrame) -> pd.DataFrame:
    """Rows of the objective-1 models under each D (remedies and other models left out)."""
    keep = table.model.str.startswith("obj1-") & ~table.model.str.contains("|".join(REMEDIES))
    return table[keep]


def _interval(r, col: str) -> str:
    """``0.123 [0.101, 0.145]`` from ``col``, ``col_lo``, ``col_hi`` (jaccard: its mean)."""
    est = r[col + "_mean"] if col == "jaccard" else r[col]
    return f"{est:.3f} [{r[col + '_lo']:.3f}, {r[col + '_hi']:.3f}]"


def _with_intervals(report: Path, sens: pd.DataFrame, model: str = "obj1-symmetric") -> list:
    """Recall@20 dot [lo, hi], cosine [lo, hi], verdict dot vs cosine, J@N [lo, hi], λ dot/cos."""
    held = pd.read_parquet(report / "heldout.parquet").set_index(["model", "metric"])
    comp = pd.read_parquet(report / "comparisons.parquet")
    comp = comp[(comp.comparison == "dot vs cosine") & (comp.model_a == model)
                & (comp.measure == "recall_at_20")]
    if (model, "dot") not in held.index or comp.empty:
        return ["–"] * 5
    c = comp.iloc[0]
    dot, cos = held.loc[(model, "dot")], held.loc[(c.model_b, "cos")]
    words = {"a better": "dot better", "b better": "cosine better",
             "no difference": "no difference"}
    item = sens[(sens.kind == "item-item") & (sens.metric == "cos")]
    jac = _interval(item.iloc[0], "jaccard") if len(item) else "–"
    return [_interval(dot, "recall_at_20"), _interval(cos, "recall_at_20"),
            f"{words[c.verdict]} ({c.estimate:+.3f} [{c.lo:+.3f}, {c.hi:+.3f}]; Holm: "
            f"{words[c.verdict_holm]})", jac, f"{dot.lam:g} / {cos.lam:g}"]


def row(out: Path) -> tuple[str, dict]:
    """One markdown row of the table, and the figures the bullets quote."""
    report, counts = out / "report", json.loads((out / "matrix" / "manifest.json").read_text())
    counts = counts["counts"]
    sens = pd.read_parquet(report / "d_sensitivity.parquet")
    sens = sens[(sens.objective == 1) & (sens.remedy == "none")]  # the D-family without remedy

    def jaccard(kind: str, metric: str) -> str:
        sel = sens[(sens.kind == kind) & (sens.metric == metric)]
        return f"{sel.jaccard_mean.iloc[0]:.3f}" if len(sel) else "–"

    held = _objective1(pd.read_parquet(report / "heldout.parquet"))
    truth = _objective1(pd.read_parquet(report / "ground_truth.parquet"))
    truth_cos = truth[truth.metric == "cos"]
    label = LABELS.get(out.name, truth_cos.label_source.iloc[0] if len(truth_cos) else "")
    auc = f"{_span(truth_cos.auc)} ({label})" if len(truth_cos) else "–"
    pop = pd.read_parquet(report / "popularity.parquet")
    name = NAMES.get(out.name, out.name)
    cells = [name, f"{counts['users']:,} × {counts['items']:,} "
                   f"({round(counts['train_nnz'] / 1000):,}k)",
             jaccard("user-item", "dot"), jaccard("user-item", "cos"),
             jaccard("item-item", "cos"),
             _span(held[held.metric == "dot"].recall_at_20),
             _span(held[held.metric == "cos"].recall_at_20), auc]
    cells += _with_intervals(report, sens)
    quoted = {"frac_more_popular": {m: _span(_objective1(pop)[_objective1(pop).metric == m]
                                             .frac_more_popular) for m in ("dot", "cos")},
              "norm_popularity_spearman": _span(_objective1(pop).norm_popularity_spearman),
              "auc_cos_by_model": truth_cos.set_index("model").auc.round(3).to_dict()}
    return "| " + " | ".join(cells) + " |", quoted


def main(paths: list[str]) -> None:
    print("| dataset | users × items (train nnz) | user-item J@10 across D: dot | … cosine "
          "| item-item J@10 across D: cosine | Recall@20 over D: dot | … cosine "
          "| same-label AUC over D: cosine | Recall@20 dot [95% CI] | … cosine [95% CI] "
          "| dot vs cosine (paired) | item-item J@10 across D: cosine [95% CI] | λ dot / cos |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    quoted = {}
    for path in paths:
        line, quoted[Path(path).name] = row(Path(path))
        print(line)
    print("\nfigures quoted below the table:")
    print(json.dumps(quoted, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main(sys.argv[1:])
