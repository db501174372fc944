"""``bigcos bench neighbors``: exact top-N of all items by cosine and dot, beside the peers.

The embedding is p x k float32 Gaussian with log-normal row norms (so dot and cosine lists
differ, as they do for real embeddings). bigcos runs ``bigcos.neighbor_lists.neighbors`` (item-item,
both metrics, Parquet dataset written) on a LocalCluster started beforehand (its start-up time
is reported separately). The peers run in this process, one metric at a time, and return arrays
without writing anything:

- faiss ``IndexFlatIP`` (exact; cosine = the same on L2-normalised rows), N + 1 per query
  because the item itself comes back;
- implicit ``implicit.cpu.topk.topk`` (BLAS at one thread as implicit recommends; cosine =
  ``item_norms`` given, which ranks exactly like ``similar_items``);
- numpy: GEMM of 1024-query blocks + ``argpartition`` + sort of the top N + 1.

Then bigcos alone at larger p (``--scale``): the full run when p <= ``--full-max``, otherwise a
measured extrapolation: one pair task of the symmetric graph at the group size bigcos would
use (``--sample`` rows against as many others, both lists, one thread, in this process) gives
the time per (query, candidate) pair; times p**2 / workers. It starts from empty lists, where
the real tasks resume warm ones, so it over- rather than underestimates. Its peak RSS (the
task's working memory) is reported beside the embedding's size.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import click
import numpy as np

from bigcos import io
from bigcos.bench.common import json_option, measure, report

N_BLOCK = 1024


def embedding(p: int, k: int, seed: int) -> np.ndarray:
    """(p, k) float32: Gaussian directions, log-normal norms."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((p, k), dtype=np.float32)
    x *= np.exp(rng.normal(0.0, 0.5, size=(p, 1))).astype(np.float32)
    return x


def write_model(directory: Path, x: np.ndarray) -> Path:
    directory.mkdir(parents=True)
    io.write_embeddings(directory / "items.parquet", np.arange(len(x)), x, "item_id")
    io.write_embeddings(directory / "users.parquet", np.arange(1), x[:1], "user_id")
    io.write_json(directory / io.MANIFEST, {"model_name": "bench", "matrix_dir": None})
    return directory


def best_of(repeat: int, name: str, fn):
    """:func:`measure` ``repeat`` times: the fastest time, the largest peak memory, and the
    first run's time (kept as ``first_s``: it includes warming caches and worker imports)."""
    runs = [measure(name, fn) for _ in range(repeat)]
    best = min(runs, key=lambda run: run[0].seconds)[0]
    best.peak_extra_rss_bytes = max(run[0].peak_extra_rss_bytes for run in runs)
    if repeat > 1:
        best.extra["first_s"] = runs[0][0].seconds
    return best, runs[-1][1]


def worker_peak_rss(client) -> int:
    """Largest peak RSS (VmHWM) among the client's workers, in bytes."""
    def hwm() -> int:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        return 0
    return max(client.run(hwm).values())


def run_bigcos(model: Path, out: Path, n: int, client) -> dict:
    from bigcos.neighbor_lists import neighbors

    return neighbors([model], out, kinds=["item-item"], metrics=["cos", "dot"], n=n,
                     overwrite=True, client=client)


def run_faiss(x: np.ndarray, n: int, metric: str):
    import faiss

    if metric == "cos":
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    scores, ids = index.search(x, n + 1)
    return ids, scores


def run_implicit(x: np.ndarray, n: int, metric: str):
    from implicit.cpu.topk import topk
    from threadpoolctl import threadpool_limits

    norms = np.linalg.norm(x, axis=1) if metric == "cos" else None
    with threadpool_limits(1, "blas"):
        return topk(x, x, n + 1, item_norms=norms)


def run_numpy(x: np.ndarray, n: int, metric: str):
    if metric == "cos":
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30)
    ids = np.empty((len(x), n + 1), np.int64)
    for b0 in range(0, len(x), N_BLOCK):
        s = x[b0:b0 + N_BLOCK] @ x.T
        part = np.argpartition(-s, n, axis=1)[:, :n + 1]
        order = np.argsort(-np.take_along_axis(s, part, axis=1), axis=1)
        ids[b0:b0 + N_BLOCK] = np.take_along_axis(part, order, axis=1)
    return ids, None


def agreement(ours: np.ndarray, peer_ids: np.ndarray, n: int) -> float:
    """Mean overlap of our lists with the peer's lists minus the query itself, on 500 rows."""
    rows = np.linspace(0, len(ours) - 1, min(500, len(ours))).astype(int)
    hits = 0
    for r in rows:
        theirs = [i for i in peer_ids[r] if i != r][:n]
        hits += len(set(ours[r].tolist()) & set(int(i) for i in theirs))
    return round(hits / (len(rows) * n), 4)


def read_lists(out: Path, metric: str, p: int, n: int) -> np.ndarray:
    import pyarrow.dataset as pads

    table = pads.dataset(out / "kind=item-item" / "model=bench" / f"metric={metric}",
                         format="parquet").to_table().to_pandas()
    lists = np.full((p, n), -1, np.int64)
    lists[table["query_id"], table["rank"] - 1] = table["neighbor_id"]
    return lists


@click.command("neighbors")
@click.option("--items", "p", type=click.IntRange(min=10), default=50_000, show_default=True,
              help="Items p: all p x p pairs are scored.")
@click.option("-k", "k", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("-N", "n", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="LocalCluster workers (default: one per core).")
@click.option("--peers/--no-peers", default=True, show_default=True,
              help="Run faiss, implicit and numpy too.")
@click.option("--scale", default="200000,1000000", show_default=True,
              help="Comma-separated larger p for bigcos alone ('' for none).")
@click.option("--full-max", type=click.IntRange(min=0), default=200_000, show_default=True,
              help="Largest p run in full; above it, a measured extrapolation.")
@click.option("--sample", type=click.IntRange(min=1), default=None,
              help="Rows per side of the pair task timed for an extrapolation (default: the "
                   "group size bigcos would use at that p).")
@click.option("--repeat", type=click.IntRange(min=1), default=1, show_default=True,
              help="Runs of bigcos and of each peer at --items; the fastest is reported.")
@click.option("--seed", type=int, default=0, show_default=True)
@json_option
def neighbors(p, k, n, workers, peers, scale, full_max, sample, repeat, seed, json_path):
    """Top-N neighbours of all p items by cosine and dot: bigcos beside faiss, implicit and
    numpy, then bigcos alone at larger p with peak memory.

    \b
    Example:
      bigcos bench neighbors --items 50000 -k 128 -N 100 \\
          --json bench-neighbors.json
    """
    import os

    from bigcos.cluster import ClusterOptions, dask_client

    rows: list[dict] = []
    context = {"k": k, "n": n, "seed": seed, "repeat": repeat,
               "load_average_before": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="bigcos-bench-nb-") as tmp_dir, \
            dask_client(ClusterOptions(workers=workers)) as client:
        tmp = Path(tmp_dir)
        context["workers"] = len(client.scheduler_info()["workers"])
        x = embedding(p, k, seed)
        model = write_model(tmp / "model", x)
        m, manifest = best_of(repeat, "bigcos (cos+dot, Parquet written)",
                              lambda: run_bigcos(model, tmp / "out", n, client))
        m.extra.update(items=p, metric="cos+dot",
                       worker_peak_rss_mib=round(worker_peak_rss(client) / 2**20),
                       flop_bound_s=round(2 * p * p * k / 195e9, 2))
        rows.append(m.row())
        ours = {metric: read_lists(tmp / "out", metric, p, n) for metric in ("cos", "dot")}
        if peers:
            rows += _peers(x, n, ours, repeat)
        for big in [int(s) for s in scale.split(",") if s.strip()]:
            rows.append(_scale_run(big, k, n, seed, tmp, full_max, sample, client,
                                   context["workers"]))
    context["load_average_after"] = os.getloadavg()
    report(f"bigcos bench neighbors: all items, k = {k}, N = {n}", rows, json_path, context)


def _peers(x: np.ndarray, n: int, ours: dict[str, np.ndarray], repeat: int) -> list[dict]:
    rows = []
    for name, fn in (("faiss IndexFlatIP", run_faiss), ("implicit topk", run_implicit),
                     ("numpy GEMM+argpartition", run_numpy)):
        for metric in ("dot", "cos"):
            try:
                m, (ids, _) = best_of(repeat, f"{name} ({metric})",
                                      lambda fn=fn, metric=metric: fn(x, n, metric))
            except ImportError as exc:
                rows.append({"name": f"{name} ({metric})", "absent": str(exc)})
                continue
            m.extra.update(items=len(x), metric=metric,
                           agreement_with_bigcos=agreement(ours[metric], np.asarray(ids), n))
            rows.append(m.row())
    return rows


def _scale_run(p: int, k: int, n: int, seed: int, tmp: Path, full_max: int, sample: int,
               client, workers: int) -> dict:
    x = embedding(p, k, seed + 1)
    if p <= full_max:
        model = write_model(tmp / f"model-{p}", x)
        m, _ = measure(f"bigcos p={p}", lambda: run_bigcos(model, tmp / f"out-{p}", n, client))
        m.extra.update(items=p, metric="cos+dot",
                       worker_peak_rss_mib=round(worker_peak_rss(client) / 2**20),
                       flop_bound_s=round(2 * p * p * k / 195e9, 2))
        return m.row()
    from threadpoolctl import threadpool_limits

    from bigcos.blocked_topn import Blocking
    from bigcos.neighbor_lists import SYMMETRIC_GROUPS
    from bigcos.topn import inverse_norms, symmetric_topn

    inv = inverse_norms(x)
    blocking = Blocking.from_budget(2 * 2**30, n, 2)
    group = blocking.groups(p, min_groups=SYMMETRIC_GROUPS)[0]
    rows = min(sample or group[1] - group[0], p // 2)
    block = blocking.symmetric_block
    t0 = time.perf_counter()
    with threadpool_limits(1):
        m, _ = measure(f"bigcos p={p} (extrapolated)",
                       lambda: symmetric_topn(x, inv, n, ("cos", "dot"), (0, rows),
                                              (rows, 2 * rows), block=block))
    seconds = time.perf_counter() - t0
    pairs = 2 * rows * rows  # (query, candidate) pairs served by the task's rows * rows products
    m.extra.update(items=p, metric="cos+dot", measured_pairs=pairs,
                   measured_seconds=round(seconds, 2),
                   ns_per_pair=round(seconds / pairs * 1e9, 3),
                   task_peak_rss_mib=round(m.peak_extra_rss_bytes / 2**20),
                   embedding_mib=round(x.nbytes / 2**20),
                   flop_bound_s=round(2 * p * p * k / 195e9, 2))
    m.seconds = round(seconds * p * p / pairs / workers, 1)
    return m.row()
