"""The paper's Figure 1, reproduced on the simulator and measured.

Steck, Ekanadham & Kallus (2024), Fig. 1: item-item cosine similarities of the same simulated
data under different modelling choices, items sorted by cluster and, within a cluster, by
descending baseline popularity. Five panels:

1. ground truth: "the true item-item similarities as defined by the item clusters" (paper §4),
   i.e. 1 for two items of one cluster, 0 otherwise;
2-4. objective 1 (lam = 10,000) with three choices of the free diagonal D: ``symmetric``
   (D = I, paper Eq. 5), ``item-orthonormal`` (B = V_k) and ``user-orthonormal`` (A = V_k) --
   the paper's §2.2 choices;
5. objective 2 (lam = 100), whose solution is unique.

Each panel also gets numbers (:func:`panel_metrics`): cluster precision@N of the top-N cosine
neighbours, the AUC of within- vs between-cluster similarities, the mean within- and
between-cluster cosine. A row ``population`` adds the cosine of the columns of the generating
probabilities p_ui (the best any model could see: 1 within a cluster, and between clusters the
cosine of the users' normalised preference vectors) for reference; it is not plotted.

The fit is one function, :func:`item_embeddings`: an exact SVD (``bigcos.svd``, p is small)
and the closed forms of ``bigcos.models``. Matrices here are dense p x p: meant for p of a few
thousand at most.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from bigcos import io, metrics, storage
from bigcos.errors import UserError
from bigcos.reports.plots import similarity_panels
from bigcos.reports.tables import cosine_matrix

GROUND_TRUTH = "ground-truth"
POPULATION = "population"
MAX_ITEMS = 5_000


@dataclass(frozen=True)
class Figure1Options:
    """The paper's settings: k = 50, lam = 10,000 (objective 1) and 100 (objective 2)."""

    k: int = 50
    lam1: float = 10_000.0
    lam2: float = 100.0
    scalings: tuple[str, ...] = ("symmetric", "item-orthonormal", "user-orthonormal")
    top_n: tuple[int, ...] = (10, 50)


def item_embeddings(X, options: Figure1Options) -> tuple[dict[str, np.ndarray], dict]:
    """Item embeddings B (p, k_kept) of every fitted panel, keyed by model name, and fit info.

    X: (n, p) CSR. One exact SVD, then objective 1 with each D and objective 2.
    """
    from bigcos.models import ModelSpec, Scaling, solve
    from bigcos.svd import truncated_svd

    spectrum = truncated_svd(X, options.k, exact=True, dtype=np.float64)
    specs = [ModelSpec(1, options.lam1, Scaling(s)) for s in options.scalings]
    specs.append(ModelSpec(2, options.lam2))
    embeddings, kept = {}, {}
    for spec in specs:
        solution = solve(spectrum.sigma, spec)
        embeddings[spec.name] = solution.B(spectrum.V)
        kept[spec.name] = int(solution.kept.sum())
    info = {"sigma": spectrum.sigma, "dims_kept": kept, "svd": spectrum.info}
    return embeddings, info


def population_cosine(cluster: np.ndarray, prefs: np.ndarray, mass: np.ndarray) -> np.ndarray:
    """Cosine of the columns of the generating matrix P (n, p), P[u, i] = p_{u c_i} p_i / Z_u.

    Column i is p_i q_{c_i} with q_c[u] = p_uc / Z_u and Z_u = sum_c p_uc S_c, so the cosine
    of items i, j is that of q_{c_i} and q_{c_j}: 1 within a cluster. Returns (p, p).
    """
    Q = prefs / (prefs @ mass)[:, None]  # (n, C)
    return cosine_matrix(Q.T)[np.ix_(cluster, cluster)]


def panel_metrics(S: np.ndarray, cluster: np.ndarray, top_n: tuple[int, ...]) -> dict:
    """Numbers of one similarity panel S (p, p) against the clusters (p,).

    cluster_precision_at_N: mean over items of the share of their top-N neighbours by S (self
    excluded, ties to the smaller index) in their own cluster; auc: P(within-cluster pair
    scores above a between-cluster pair), ties 1/2, over all pairs i < j; mean_within and
    mean_between: average S over those pairs.
    """
    p = S.shape[0]
    ranked = S.astype(np.float64, copy=True)
    np.fill_diagonal(ranked, -np.inf)
    order = np.argsort(-ranked, axis=1, kind="stable")
    sets = metrics.label_sets(cluster.astype(np.int64))
    queries = np.arange(p)
    out = {}
    for n in top_n:
        out[f"cluster_precision_at_{n}"] = float(np.nanmean(
            metrics.label_precision(sets, queries, order[:, :min(n, p - 1)])))
    i, j = np.triu_indices(p, k=1)
    same = cluster[i] == cluster[j]
    scores = S[i, j]
    out["auc"] = metrics.auc(scores, same)
    out["mean_within"] = float(scores[same].mean()) if same.any() else float("nan")
    out["mean_between"] = float(scores[~same].mean()) if (~same).any() else float("nan")
    return out


def chance_precision(cluster: np.ndarray) -> float:
    """Expected cluster precision of random neighbours: sum_c (m_c / p) (m_c - 1) / (p - 1)."""
    sizes = np.bincount(cluster).astype(np.float64)
    p = cluster.size
    return float((sizes / p * (sizes - 1) / max(p - 1, 1)).sum())


def plot(path: Path, panels: dict[str, np.ndarray], titles: dict[str, str],
         boundaries: np.ndarray) -> None:
    """Write the heatmaps side by side as a PNG on one colour scale with a colour bar.

    Drawn by :func:`bigcos.reports.plots.similarity_panels` (the report page's heatmap; object
    API, the caller's matplotlib backend is left alone).
    """
    fig = similarity_panels(panels, titles, boundaries, panel_size=4.2)
    with storage.local_file(path) as local:  # a path, or a file in an object store
        fig.savefig(local, dpi=110, format="png")


def _titles(options: Figure1Options, info: dict) -> dict[str, str]:
    kept = info["dims_kept"]
    titles = {GROUND_TRUTH: "ground truth (clusters)"}
    for name, k in kept.items():
        if name == "obj2":
            titles[name] = f"objective 2, λ={options.lam2:g}\n(unique; {k} dims kept)"
        else:
            scaling = name.removeprefix("obj1-")
            titles[name] = f"objective 1, λ={options.lam1:g}\nD: {scaling}"
    return titles


def figure1(out: str | os.PathLike, simulation: str | os.PathLike | None = None,
            options: Figure1Options | None = None, params=None,
            overwrite: bool = False) -> pa.Table:
    """Simulate (or reuse ``simulation``), fit, and write OUT/figure1.png, figure1.parquet,
    manifest.json (plus OUT/simulation and OUT/matrix). Returns the table.

    ``params`` (a :class:`bigcos.simulator.SimulationParams`, default the paper's) is used only
    when no ``simulation`` directory is given. The table has one row per panel (plus
    ``population``): panel, objective, scaling, lam, dims_kept, the metrics of
    :func:`panel_metrics`, chance_precision.
    """
    from bigcos.matrix import ingest
    from bigcos.simulator import SimulationParams, simulate

    options = options or Figure1Options()
    timings = io.Timings()
    with io.atomic_output_dir(out, overwrite=overwrite) as tmp:
        if simulation is None:
            with timings("simulate"):
                simulate(tmp / "simulation", params or SimulationParams())
            sim_dir = tmp / "simulation"
        else:
            sim_dir = io.require_dir(simulation, "simulation", "items.parquet")
        items = io.read_table(sim_dir / "items.parquet")
        if items.num_rows > MAX_ITEMS:
            raise UserError(f"{sim_dir}: {items.num_rows:,} items; figure1 draws dense p x p "
                            f"panels and accepts at most {MAX_ITEMS:,}")
        with timings("ingest"):
            data = ingest(sim_dir / "interactions", tmp / "matrix")
        with timings("fit"):
            embeddings, info = item_embeddings(data.fit_matrix, options)
        # Columns of the matrix are the items that occur in the log, in item_id order.
        item_ids = data.item_ids.to_numpy()
        all_cluster = items.column("cluster").to_numpy()
        all_rank = items.column("popularity_rank").to_numpy()
        cluster = all_cluster[item_ids]
        order = np.lexsort((all_rank[item_ids], cluster))  # by cluster, then most popular first
        cluster_sorted = cluster[order]
        panels = {GROUND_TRUTH: (cluster_sorted[:, None] == cluster_sorted[None, :])
                  .astype(np.float64)}
        for name, B in embeddings.items():
            panels[name] = cosine_matrix(B[order])
        with timings("plot"):
            boundaries = np.searchsorted(cluster_sorted, np.arange(cluster_sorted.max() + 2))
            plot(tmp / "figure1.png", panels, _titles(options, info), boundaries)
        with timings("metrics"):
            users = io.read_table(sim_dir / "users.parquet")
            prefs = np.stack(users.column("cluster_preference").to_numpy(zero_copy_only=False))
            mass = np.asarray(io.read_manifest(sim_dir)["ground_truth"]["cluster_mass"])
            population = population_cosine(cluster_sorted, prefs, mass)
            table = _table({**panels, POPULATION: population}, cluster_sorted, options, info)
            io.write_table(tmp / "figure1.parquet", table)
        io.write_manifest(tmp, "figure1", parameters=asdict(options), timings=timings,
                          inputs={"simulation": str(storage.resolve(simulation))
                                  if simulation else "generated into simulation/"},
                          fit={"sigma": info["sigma"], "dims_kept": info["dims_kept"],
                               "svd_max_residual": info["svd"].get("max_residual")},
                          counts={"items": int(cluster.size), "users": int(data.shape[0]),
                                  "interactions": int(data.train.nnz),
                                  "items_without_interactions": int(items.num_rows
                                                                    - cluster.size)})
    return table


def _table(panels: dict[str, np.ndarray], cluster: np.ndarray, options: Figure1Options,
           info: dict) -> pa.Table:
    rows = []
    for name, S in panels.items():
        if name in (GROUND_TRUTH, POPULATION):
            objective, scaling, lam, kept = None, None, None, None
        elif name == "obj2":
            objective, scaling, lam, kept = 2, None, options.lam2, info["dims_kept"][name]
        else:
            objective, scaling, lam = 1, name.removeprefix("obj1-"), options.lam1
            kept = info["dims_kept"][name]
        rows.append({"panel": name, "objective": objective, "scaling": scaling, "lam": lam,
                     "dims_kept": kept, **panel_metrics(S, cluster, options.top_n),
                     "chance_precision": chance_precision(cluster)})
    schema = pa.schema([("panel", pa.string()), ("objective", pa.int8()),
                        ("scaling", pa.string()), ("lam", pa.float64()),
                        ("dims_kept", pa.int32())]
                       + [(f"cluster_precision_at_{n}", pa.float64()) for n in options.top_n]
                       + [(c, pa.float64()) for c in ("auc", "mean_within", "mean_between",
                                                      "chance_precision")])
    return pa.Table.from_pylist(rows, schema=schema)
