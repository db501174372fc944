"""The report's plots, drawn with matplotlib's object API.

Figures are :class:`matplotlib.figure.Figure` objects on an Agg canvas: nothing here imports
``matplotlib.pyplot`` or calls ``matplotlib.use``, so making a report never changes the backend
of the calling process (a notebook keeps its own). :func:`similarity_panels` is the one heatmap
of item-item similarities, shared by the report page and ``bigcos figure1``.
"""

from __future__ import annotations

import base64
import io as pyio
from typing import Any

import numpy as np

from bigcos import metrics
from bigcos.reports.inputs import ItemInfo, NeighborLists, single_labels
from bigcos.reports.tables import cosine_matrix

COS_COLOR, DOT_COLOR = "tab:red", "tab:blue"
SIMILARITY_CMAP = "viridis"


def new_figure(width: float, height: float):
    """A Figure of ``width`` x ``height`` inches on its own Agg canvas (no pyplot state), laid
    out by matplotlib's constrained layout when it is drawn (so saving draws once)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig, dpi: int = 90) -> bytes:
    """The figure as PNG bytes (its layout is set where it is drawn: one draw, no re-crop)."""
    buf = pyio.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def img_tag(fig, alt: str) -> str:
    """An ``<img>`` with the figure inline as a base64 PNG (the page stays self-contained)."""
    data = base64.b64encode(png_bytes(fig)).decode("ascii")
    return f'<img alt="{alt}" src="data:image/png;base64,{data}">'


def similarity_panels(panels: dict[str, np.ndarray], titles: dict[str, str] | None = None,
                      boundaries: np.ndarray | None = None, ncols: int | None = None,
                      panel_size: float = 4.2, suptitle: str | None = None):
    """Heatmaps of square similarity matrices on one colour scale [-1, 1] with a colour bar.

    Parameters
    ----------
    panels : dict of str to numpy.ndarray
        Panel name -> (m, m) similarities (cosine, or 0/1 ground truth), rows in display order.
    titles : dict, optional
        Panel name -> title (default: the name).
    boundaries : numpy.ndarray, optional
        Ascending positions where a new group (cluster, label) starts; thin lines drawn there.
    ncols : int, optional
        Panels per row (default: all in one row).
    panel_size : float
        Inches per panel.
    suptitle : str, optional

    Returns
    -------
    matplotlib.figure.Figure
        As the paper's Fig. 1: ``viridis`` from -1 to 1, one shared colour bar.
    """
    ncols = min(ncols or len(panels), len(panels))
    nrows = -(-len(panels) // ncols)
    fig = new_figure(panel_size * ncols, panel_size * nrows + 0.4)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    image = None
    for ax, (name, S) in zip(axes.flat, panels.items(), strict=False):
        image = ax.imshow(S, cmap=SIMILARITY_CMAP, vmin=-1.0, vmax=1.0, interpolation="nearest")
        ax.set_title((titles or {}).get(name, name), fontsize=10)
        for b in (boundaries[1:-1] if boundaries is not None else ()):
            ax.axhline(b - 0.5, color="white", lw=0.3, alpha=0.5)
            ax.axvline(b - 0.5, color="white", lw=0.3, alpha=0.5)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.colorbar(image, ax=axes, shrink=0.8, label="cosine similarity")
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    return fig


def plot_label_heatmaps(item_embeddings: dict[str, np.ndarray], info: ItemInfo,
                        popularity: np.ndarray, seed: int, max_items: int = 200):
    """The paper's Figure 1 on the report's data: ground truth and each model's item cosine.

    Up to ``max_items`` labelled items drawn at random (``seed``), sorted by label, then by
    descending popularity. Single-label ground truth only (clusters, categories); None otherwise.
    """
    if not info.single_label or not item_embeddings:
        return None
    rng = np.random.default_rng(seed)
    label = single_labels(info.labels)
    labelled = np.flatnonzero(label >= 0)
    if labelled.size < 2:
        return None
    pick = np.sort(rng.choice(labelled, size=min(max_items, labelled.size), replace=False))
    order = pick[np.lexsort((-popularity[pick], label[pick]))]
    sorted_labels = label[order]
    panels = {"ground truth": (sorted_labels[:, None] == sorted_labels[None, :]).astype(float)}
    titles = {"ground truth": f"ground truth (same {info.label_source})"}
    for name in sorted(item_embeddings):
        panels[name] = cosine_matrix(item_embeddings[name][order])
    boundaries = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1], True])
    return similarity_panels(panels, titles, boundaries, ncols=4, panel_size=2.8,
                             suptitle=f"item-item cosine of {order.size} items sorted by "
                                      f"{info.label_source}, then popularity")


def plot_d_sensitivity(rows: list[dict[str, Any]], label: str = "family"):
    """Bars: mean Jaccard@N across each D-family, cosine next to dot, per kind."""
    if not rows:
        return None
    labels = sorted({(r["kind"], r[label]) for r in rows})
    fig = new_figure(8, 0.6 + 0.5 * len(labels))
    ax = fig.subplots()
    y = np.arange(len(labels))
    for off, metric, color in ((-0.2, "cos", COS_COLOR), (0.2, "dot", DOT_COLOR)):
        vals = [next((r["jaccard_mean"] for r in rows if (r["kind"], r[label]) == lab
                      and r["metric"] == metric), np.nan) for lab in labels]
        ax.barh(y + off, vals, height=0.4, color=color, label=metric)
    ax.set_yticks(y, [f"{k}\n{f}" for k, f in labels], fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_xlabel("mean Jaccard@N between models that differ only in D (1 = D does not matter)")
    ax.legend()
    return fig


def plot_agreement_heatmap(rows: list[dict[str, Any]], kind: str):
    """Mean Jaccard@N between every two configurations of one kind."""
    rows = [r for r in rows if r["kind"] == kind]
    if not rows:
        return None
    names = sorted({f"{r['model_a']}/{r['metric_a']}" for r in rows}
                   | {f"{r['model_b']}/{r['metric_b']}" for r in rows})
    pos = {n: i for i, n in enumerate(names)}
    mat = np.eye(len(names))
    for r in rows:
        a, b = pos[f"{r['model_a']}/{r['metric_a']}"], pos[f"{r['model_b']}/{r['metric_b']}"]
        mat[a, b] = mat[b, a] = r["jaccard_mean"]
    size = 2 + 0.45 * len(names)
    fig = new_figure(size + 1, size)
    ax = fig.subplots()
    im = ax.imshow(mat, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    if len(names) <= 14:
        for (a, b), v in np.ndenumerate(mat):
            ax.text(b, a, f"{v:.2f}", ha="center", va="center", fontsize=6,
                    color="white" if v < 0.6 else "black")
    fig.colorbar(im, ax=ax, label="mean Jaccard@N")
    ax.set_title(f"{kind}: how much do the neighbour lists agree?")
    return fig


def plot_cos_vs_dot(rows: list[dict[str, Any]], columns: list[str], title: str,
                    baseline: str | None = None):
    """One panel per column: each model a line, its cosine value (red) next to its dot (blue),
    with the interval ``<column>_lo`` .. ``<column>_hi`` drawn as a bar when the rows have it.

    ``baseline`` (optional): a column drawn as a tick per configuration (e.g. the
    popularity-matched random baseline of ``columns[0]``).
    """
    if not rows:
        return None
    models = sorted({r["model"] for r in rows})
    y = {m: i for i, m in enumerate(models)}
    fig = new_figure(3.6 * len(columns) + 1.5, 0.9 + 0.28 * len(models))
    axes = fig.subplots(1, len(columns), sharey=True, squeeze=False)
    for ax, col in zip(axes[0], columns, strict=True):
        for metric, color, marker in (("cos", COS_COLOR, "o"), ("dot", DOT_COLOR, "s")):
            sel = [r for r in rows if r["metric"] == metric]
            ax.scatter([r[col] for r in sel], [y[r["model"]] for r in sel], color=color,
                       marker=marker, label=metric, zorder=3)
            if sel and f"{col}_lo" in sel[0]:  # the bootstrap interval of each figure
                ax.hlines([y[r["model"]] for r in sel], [r[f"{col}_lo"] for r in sel],
                          [r[f"{col}_hi"] for r in sel], color=color, lw=3, alpha=0.4,
                          zorder=2)
            if baseline and col == columns[0]:
                ax.scatter([r[baseline] for r in sel], [y[r["model"]] for r in sel],
                           color=color, marker="|", s=120, zorder=3,
                           label=f"{metric}: random, same popularity")
        for m in models:
            vals = [r[col] for r in rows if r["model"] == m]
            ax.plot([min(vals), max(vals)], [y[m], y[m]], color="grey", lw=1, zorder=1)
        ax.set_title(col, fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(range(len(models)), models, fontsize=7)
    axes[0][0].invert_yaxis()
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.suptitle(title, fontsize=10)
    return fig


def plot_norm_vs_popularity(item_embeddings: dict[str, np.ndarray], popularity: np.ndarray):
    """Item embedding norm against popularity, one panel per model."""
    if not item_embeddings:
        return None
    from matplotlib.ticker import NullFormatter

    names = sorted(item_embeddings)
    cols = min(4, len(names))
    rows_n = -(-len(names) // cols)
    fig = new_figure(3.2 * cols, 2.8 * rows_n)
    axes = fig.subplots(rows_n, cols, squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        norms = np.linalg.norm(item_embeddings[name], axis=1)
        ax.scatter(popularity + 1, norms, s=2, alpha=0.3)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(f"{name}\nSpearman {metrics.spearman(norms, popularity):.2f}", fontsize=8)
        ax.set_xlabel("1 + users per item", fontsize=7)
        ax.set_ylabel("‖item embedding‖", fontsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    return fig


def plot_relative_popularity(lists: list[NeighborLists], popularity: np.ndarray, depth: int):
    """Distribution over queries of log10 popularity ratio neighbour / query, per config."""
    lists = [nl for nl in lists if nl.kind == "item-item"]
    if not lists:
        return None
    data = []
    for nl in lists:
        r = metrics.log_popularity_ratio(popularity, nl.queries, nl.neighbors[:, :depth])
        data.append(r[~np.isnan(r)])
    fig = new_figure(8, 0.8 + 0.35 * len(lists))
    ax = fig.subplots()
    ax.boxplot(data, orientation="horizontal", showfliers=False)
    ax.set_yticks(range(1, len(lists) + 1), [nl.label for nl in lists], fontsize=7)
    ax.axvline(0, color="grey", lw=1)
    ax.set_xlabel("log10 (1 + popularity of neighbour) / (1 + popularity of query)")
    ax.set_title("Are the neighbours more popular than the item itself? (> 0: yes)")
    return fig


def plot_lambda_path(rows: list[dict[str, Any]]):
    """Validation curves: the validation measure against λ, one line per model family, in a
    grid of objective (rows: λ on σ² or on σ) by metric (dot left, cosine right); the chosen
    λ of each line is marked with a star."""
    if not rows:
        return None
    objectives = sorted({int(r["objective"]) for r in rows})
    fig = new_figure(10, 0.6 + 3.2 * len(objectives))
    axes = fig.subplots(len(objectives), 2, squeeze=False, sharey=True)
    for ax_row, objective in zip(axes, objectives, strict=True):
        mine = [r for r in rows if int(r["objective"]) == objective]
        for ax, metric in ((ax_row[0], "dot"), (ax_row[1], "cos")):
            for family in sorted({r["model"] for r in mine}):
                sel = sorted((r for r in mine if r["model"] == family and r["metric"] == metric),
                             key=lambda r: r["lam"])
                if not sel:
                    continue
                measure = sel[0]["measure"]
                lam = np.array([r["lam"] for r in sel])
                val = np.array([r[measure] for r in sel])
                (line,) = ax.plot(lam, val, marker=".", lw=1, label=family)
                chosen = np.array([bool(r["chosen"]) for r in sel])
                ax.scatter(lam[chosen], val[chosen], marker="*", s=120,
                           color=line.get_color(), edgecolor="black", zorder=3)
                if (lam > 0).all():
                    ax.set_xscale("log")
                else:
                    ax.set_xscale("symlog", linthresh=float(lam[lam > 0].min(initial=1.0)))
                ax.set_ylabel(f"validation {measure}@K", fontsize=8)
            if objective == 0:
                ax.set_title(f"ALS regularisation, ranked by {metric}", fontsize=9)
            else:
                scale = "σ²" if objective == 1 else "σ"
                ax.set_title(f"objective {objective}, ranked by {metric} (λ on {scale})",
                             fontsize=9)
            ax.set_xlabel("λ", fontsize=8)
            ax.grid(alpha=0.3)
        ax_row[1].legend(fontsize=6, loc="best")
    return fig
