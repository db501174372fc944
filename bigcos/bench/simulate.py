"""``bigcos bench simulate``: users/s and peak memory of the generator, beside numpy's sampler.

Rows of the table:

- ``bigcos simulate, threads``: the whole job (items, blocks as Dask tasks on the threaded
  scheduler, Parquet parts, users.parquet) in this process, so the peak extra RSS is the job's.
- ``bigcos simulate, LocalCluster``: the same on ``--workers`` worker processes (the CLI's
  default); RSS is the largest worker's peak (``ru_maxrss``) plus the driver's extra.
- ``numpy choice per user``: the naive peer, ``Generator.choice(p, k_u, replace=False, p=p_u.)``
  with the dense p_u. vector of each user: O(p) per user. Timed on ``--peer-users`` users of
  the same population and reported as users/s.
- the large configuration (default 10M users x 1M items): ``--large run`` generates it all;
  ``--large extrapolate`` (default) times its first ``--large-blocks`` blocks on the
  LocalCluster and scales by the number of blocks (blocks are independent and identically
  distributed work), labelled as an extrapolation.
"""

from __future__ import annotations

import resource
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import click

from bigcos.bench.common import json_option, measure, report
from bigcos.cluster import ClusterOptions, dask_client
from bigcos.simulator import SimulationParams, block_rngs, draw_users, make_items, write_block
from bigcos.simulator import simulate as run_simulation


def numpy_peer(params: SimulationParams, n_users: int) -> int:
    """Sample the first ``n_users`` users of block 0 with numpy's choice; return interactions."""
    items = make_items(params)
    _, prefs, k = draw_users(params, items, 0)
    _, rng = block_rngs(params.seed, 0)
    total = 0
    for u in range(min(n_users, k.size)):
        w = prefs[u, items.cluster] * items.popularity
        total += rng.choice(items.n_items, size=k[u], replace=False, p=w / w.sum()).size
    return total


def _worker_peak_rss(client) -> int:
    """Largest peak RSS (bytes) over the client's workers."""
    peaks = client.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return max(peaks.values()) * 1024


def _row(name: str, m, n_users: int, extra: dict) -> dict:
    row = m.row()
    row["name"] = name
    row["users_per_s"] = round(n_users / m.seconds, 1)
    row.update(extra)
    return row


@click.command()
@click.option("--n-users", type=click.IntRange(min=1), default=1_000_000, show_default=True)
@click.option("--n-items", type=click.IntRange(min=1), default=100_000, show_default=True)
@click.option("--max-items", type=click.IntRange(min=1), default=1_000, show_default=True,
              help="Most items per user (the simulator's default).")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True,
              help="LocalCluster worker processes (and threads of the threaded run).")
@click.option("--peer-users", type=click.IntRange(min=1), default=2_000, show_default=True)
@click.option("--large", type=click.Choice(["extrapolate", "run", "skip"]),
              default="extrapolate", show_default=True,
              help="How to measure the large configuration.")
@click.option("--large-users", type=click.IntRange(min=1), default=10_000_000,
              show_default=True)
@click.option("--large-items", type=click.IntRange(min=1), default=1_000_000,
              show_default=True)
@click.option("--large-blocks", type=click.IntRange(min=1), default=40, show_default=True,
              help="Blocks timed for --large extrapolate.")
@click.option("--tmp-dir", type=click.Path(file_okay=False), default=None,
              help="Where outputs are written (and removed); default: the system temp dir.")
@json_option
def simulate(n_users, n_items, max_items, workers, peer_users, large, large_users, large_items,
             large_blocks, tmp_dir, json_path):
    """Generate simulations: users/s and peak memory, bigcos beside numpy's per-user choice.

    \b
    Example:
      bigcos bench simulate --n-users 100000 --n-items 10000 --large skip
    """
    import dask

    params = SimulationParams(n_users=n_users, n_items=n_items, max_items=max_items)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bigcos-bench-", dir=tmp_dir) as tmp:
        out = Path(tmp)
        with dask.config.set(scheduler="threads", num_workers=workers):
            m, manifest = measure("threads", lambda: run_simulation(out / "threads", params))
        counts = manifest["counts"]
        rows.append(_row(f"bigcos simulate, threads ({workers})", m, n_users,
                         {"interactions": counts["interactions"],
                          "interactions_per_s": round(counts["interactions"] / m.seconds)}))
        shutil.rmtree(out / "threads")
        with dask_client(ClusterOptions(workers=workers)) as client:
            m, manifest = measure("cluster", lambda: run_simulation(out / "cluster", params))
            worker_peak = _worker_peak_rss(client)
            rows.append(_row(f"bigcos simulate, LocalCluster ({workers} workers)", m, n_users,
                             {"interactions": manifest["counts"]["interactions"],
                              "interactions_per_s": round(manifest["counts"]["interactions"]
                                                          / m.seconds),
                              "worker_peak_rss_mib": round(worker_peak / 2**20, 1)}))
            shutil.rmtree(out / "cluster")
            if large != "skip":
                rows.append(_large(out, large, replace(params, n_users=large_users,
                                                       n_items=large_items), large_blocks,
                                   client))
        m, interactions = measure("peer", lambda: numpy_peer(params, peer_users))
        rows.append(_row("numpy Generator.choice per user (1 thread)", m, min(peer_users,
                                                                             n_users),
                         {"interactions": interactions,
                          "interactions_per_s": round(interactions / m.seconds)}))
    report(f"simulate: {n_users:,} users x {n_items:,} items (max {max_items} items/user)",
           rows, json_path,
           context={"parameters": params.__dict__, "workers": workers, "large": large})


def _large(out: Path, mode: str, params: SimulationParams, n_blocks: int, client) -> dict:
    """Time the large configuration: all of it, or its first blocks scaled up."""
    name = f"large {params.n_users:,} x {params.n_items:,}"
    if mode == "run":
        m, manifest = measure("large", lambda: run_simulation(out / "large", params))
        shutil.rmtree(out / "large")
        return _row(f"{name} (measured)", m, params.n_users,
                    {"interactions": manifest["counts"]["interactions"],
                     "interactions_per_s": round(manifest["counts"]["interactions"]
                                                 / m.seconds),
                     "worker_peak_rss_mib": round(_worker_peak_rss(client) / 2**20, 1)})
    import dask

    n_blocks = min(n_blocks, params.n_blocks)
    parts = out / "large-parts"
    parts.mkdir()
    t0 = time.perf_counter()
    items = make_items(params)
    items_seconds = time.perf_counter() - t0
    shared = dask.delayed(make_items, pure=True)(params)
    tasks = [dask.delayed(write_block, pure=True)(params, shared, b, str(parts))
             for b in range(n_blocks)]
    m, results = measure("large-blocks", lambda: dask.compute(*tasks))
    interactions = sum(r["interactions"] for r in results)
    scale = params.n_blocks / n_blocks
    seconds = items_seconds + m.seconds * scale
    shutil.rmtree(parts)
    del items
    return {"name": f"{name} (EXTRAPOLATED from {n_blocks} of {params.n_blocks} blocks)",
            "seconds": round(seconds, 1), "users_per_s": round(params.n_users / seconds, 1),
            "interactions": int(interactions * scale),
            "interactions_per_s": round(interactions * scale / seconds),
            "worker_peak_rss_mib": round(_worker_peak_rss(client) / 2**20, 1)}
