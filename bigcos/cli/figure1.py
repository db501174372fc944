"""``bigcos figure1``: the paper's Figure 1 on the simulator, as a PNG and a table of numbers."""

from __future__ import annotations

import click

from bigcos.cli.common import overwrite_option, parse_lams
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
@click.option("-k", "k", type=click.IntRange(min=1), default=_D.k, show_default=True,
              help="Embedding dimension (the paper's).")
@click.option("--lam", multiple=True, metavar="[OBJ:]LAM",
              help=f"lambda: LAM for both objectives, or 1:LAM / 2:LAM; objective 1's acts on "
                   f"sigma^2, objective 2's on sigma (default: the paper's 1:{_D.lam1:g} "
                   f"2:{_D.lam2:g}).")
@click.option("-N", "top_n", type=click.IntRange(min=1), multiple=True, default=_D.top_n,
              show_default=True, help="Neighbour list lengths for cluster precision@N "
                                      "(repeat for several).")
@click.option("--k", "old_k", type=click.IntRange(min=1), default=None, hidden=True)
@click.option("--lam1", type=click.FloatRange(min=0), default=None, hidden=True)
@click.option("--lam2", type=click.FloatRange(min=0), default=None, hidden=True)
@click.option("--top-n", "old_top_n", type=click.IntRange(min=1), multiple=True, hidden=True)
@overwrite_option
def figure1(out, simulation, seed, k, lam, top_n, old_k, lam1, lam2, old_top_n, overwrite):
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

    for old, new, value in (("--k", "-k", old_k), ("--lam1", "--lam 1:LAM", lam1),
                            ("--lam2", "--lam 2:LAM", lam2), ("--top-n", "-N", old_top_n)):
        if value not in (None, ()):
            click.echo(f"Warning: {old} is deprecated and will be removed in the next version; "
                       f"use {new}", err=True)
    lams = parse_lams(lam)
    options = Figure1Options(
        k=old_k or k,
        lam1=lam1 if lam1 is not None else (_D.lam1 if lams[1] is None else lams[1]),
        lam2=lam2 if lam2 is not None else (_D.lam2 if lams[2] is None else lams[2]),
        top_n=tuple(old_top_n or top_n))
    with dask.config.set(scheduler="threads"):
        table = run_figure1(out, simulation, options, SimulationParams(seed=seed),
                            overwrite=overwrite)
    click.echo(f"wrote {out}/figure1.png and figure1.parquet")
    n = options.top_n[0]
    for row in table.to_pylist():
        click.echo(f"  {row['panel']:<24} cluster precision@{n} "
                   f"{row[f'cluster_precision_at_{n}']:.3f}  AUC {row['auc']:.3f}")
