"""``bigcos simulate``: the paper's generator (§4) writing an interaction log with ground truth."""

from __future__ import annotations

import click

from bigcos.cli.common import dask_options, overwrite_option
from bigcos.cluster import dask_client
from bigcos.simulator import SimulationParams
from bigcos.simulator import simulate as run_simulation

_D = SimulationParams()


@click.command()
@click.option("--out", required=True, type=click.Path(path_type=str),
              help="Simulation directory to write (created atomically).")
@click.option("--n-users", type=click.IntRange(min=1), default=_D.n_users, show_default=True)
@click.option("--n-items", type=click.IntRange(min=1), default=_D.n_items, show_default=True)
@click.option("--clusters", "n_clusters", type=click.IntRange(min=1), default=_D.n_clusters,
              show_default=True, help="Number of item clusters C.")
@click.option("--beta-min", type=float, default=_D.beta_min, show_default=True,
              help="Cluster popularity exponents beta_c ~ Unif(beta_min, beta_max).")
@click.option("--beta-max", type=float, default=_D.beta_max, show_default=True)
@click.option("--beta-user", type=float, default=_D.beta_user, show_default=True,
              help="Exponent of the items-per-user law.")
@click.option("--popularity-law", type=click.Choice(["zipf", "power"]),
              default=_D.popularity_law, show_default=True,
              help="zipf: p_i = rank^-beta_c within the cluster; power: p_i ~ numpy "
                   "Generator.power(beta_c).")
@click.option("--popularity-normalization", type=click.Choice(["none", "cluster"]),
              default=_D.popularity_normalization, show_default=True,
              help="cluster: rescale each cluster's p_i to sum to its size, so its share of "
                   "interactions follows its share of items and the users' preferences, not "
                   "beta_c; none: p_i as drawn (flat clusters draw more).")
@click.option("--activity-law", type=click.Choice(["zipf", "power"]), default=_D.activity_law,
              show_default=True, help="zipf: P(k) ~ k^-beta_user on [min, max]; power: "
                                      "min + floor(Generator.power(beta_user) * range).")
@click.option("--min-items", type=click.IntRange(min=1), default=_D.min_items, show_default=True,
              help="Fewest items per user.")
@click.option("--max-items", type=click.IntRange(min=1), default=_D.max_items, show_default=True,
              help="Most items per user (capped at --n-items).")
@click.option("--cluster-concentration", type=float, default=_D.cluster_concentration,
              show_default=True, help="Cluster shares p_c ~ Dirichlet(this, ..., this).")
@click.option("--preference-concentration", type=float, default=_D.preference_concentration,
              show_default=True, help="User preferences p_uc ~ Dirichlet(this, ..., this).")
@click.option("--block-users", type=click.IntRange(min=1), default=_D.block_users,
              show_default=True, help="Users per block (one task, one part file, one random "
                                      "stream; changes the draws, not their distribution).")
@click.option("--seed", type=int, default=_D.seed, show_default=True)
@overwrite_option
@dask_options
def simulate(out, n_users, n_items, n_clusters, beta_min, beta_max, beta_user, popularity_law,
             popularity_normalization, activity_law, min_items, max_items, cluster_concentration,
             preference_concentration, block_users, seed, overwrite, cluster):
    """Simulate users interacting with clustered items (Steck et al. 2024, §4).

    Writes OUT/interactions/part-*.parquet (user_id, item_id, value, timestamp = draw order;
    the input of `bigcos ingest`), OUT/items.parquet (cluster, baseline popularity),
    OUT/users.parquet (cluster preferences, items per user) and OUT/manifest.json (every
    parameter and the seed). Defaults are the paper's: 20,000 users, 1,000 items, 5 clusters.
    The output is identical for any number of workers.

    \b
    Example:
      bigcos simulate --out out/sim
      bigcos ingest out/sim/interactions --out out/matrix
    """
    params = SimulationParams(
        n_users=n_users, n_items=n_items, n_clusters=n_clusters, beta_min=beta_min,
        beta_max=beta_max, beta_user=beta_user, popularity_law=popularity_law,
        popularity_normalization=popularity_normalization, activity_law=activity_law,
        min_items=min_items, max_items=max_items, cluster_concentration=cluster_concentration,
        preference_concentration=preference_concentration, block_users=block_users, seed=seed)
    params.validate()
    with dask_client(cluster) as client:
        manifest = run_simulation(out, params, overwrite=overwrite, client=client)
    counts = manifest["counts"]
    click.echo(f"wrote {out}: {counts['users']:,} users x {counts['items']:,} items, "
               f"{counts['interactions']:,} interactions "
               f"({manifest['timings_s']['interactions']:.1f} s)")
