"""``bigcos figure1``: the paper's Figure 1 on the simulator, as a PNG and a table of numbers."""

from __future__ import annotations

import click

from bigcos.cli.common import overwrite_option
from bigcos.figures import Figure1Options
from bigcos.figures import figure1 as run_figure1
from bigcos.simulator import SimulationParams

_D = Figure1Options()


@click.command()
@click.option("--out", required=True, type=click.Path(path_type=str),
              help="Output directory (created atomically).")
@click.option("--simulation", type=click.Path(path_type=str), default=None,
              help="An existing `bigcos simulate` directory (default: simulate the paper's "
                   "setting into OUT/simulation).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the simulation generated when --simulation is not given.")
@click.option("--k", type=click.IntRange(min=1), default=_D.k, show_default=True,
              help="Embedding dimension.")
@click.option("--lam1", type=click.FloatRange(min=0), default=_D.lam1, show_default=True,
              help="lambda of objective 1 (acts on sigma^2).")
@click.option("--lam2", type=click.FloatRange(min=0), default=_D.lam2, show_default=True,
              help="lambda of objective 2 (acts on sigma).")
@click.option("--top-n", type=click.IntRange(min=1), multiple=True, default=_D.top_n,
              show_default=True, help="Neighbour list lengths for cluster precision@N.")
@overwrite_option
def figure1(out, simulation, seed, k, lam1, lam2, top_n, overwrite):
    """Reproduce Figure 1 of Steck et al. (2024) and put numbers on it.

    Fits k-dimensional embeddings (objective 1 with D = symmetric, item-orthonormal and
    user-orthonormal; objective 2) on the simulated log and writes OUT/figure1.png (ground
    truth and the four cosine heatmaps, items sorted by cluster then descending popularity),
    OUT/figure1.parquet (per panel: cluster precision@N, within- vs between-cluster AUC, mean
    within/between cosine) and OUT/manifest.json. Runs in this process (threaded Dask).

    \b
    Example:
      bigcos figure1 --out out/figure1
    """
    import dask

    options = Figure1Options(k=k, lam1=lam1, lam2=lam2, top_n=tuple(top_n))
    with dask.config.set(scheduler="threads"):
        table = run_figure1(out, simulation, options, SimulationParams(seed=seed),
                            overwrite=overwrite)
    click.echo(f"wrote {out}/figure1.png and figure1.parquet")
    n = options.top_n[0]
    for row in table.to_pylist():
        click.echo(f"  {row['panel']:<24} cluster precision@{n} "
                   f"{row[f'cluster_precision_at_{n}']:.3f}  AUC {row['auc']:.3f}")
