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

``--full``: bigcos alone at ``--items``, all item-item lists by both metrics written to a
directory (``--out``, default a temporary one), with wall time, CPU seconds of the client and
every worker, peak RSS of each, bytes written, and a check of ``--check-queries`` seeded query
rows against brute force (identical lists, ties to the smaller index). No peers, no scale runs.
This is the p = 1,000,000 run: ``bigcos bench neighbors --items 1000000 -k 64 --full``.

Beside bigcos, two *numpy floor* rows (:func:`numpy_floor`, threads of this process): the half
product alone, and with the two numpy passes per side of a tile that bigcos's filter makes
before it touches a list. What bigcos adds above the second row is list upkeep and writing.

The flop bound is ``2 p**2 k`` over the sgemm rate measured in the same run (a 4096 x k by
k x 4096 product on all BLAS threads), so ``x_bound`` is comparable across machine states.
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
PEERS = ("faiss", "implicit", "numpy")


def embedding(p: int, k: int, seed: int, norms: str = "lognormal") -> np.ndarray:
    """(p, k) float32: Gaussian directions; log-normal norms (sigma 0.5), or power-law norms
    (Pareto, tail index 1.5: a few items with very large norms, like popular items)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((p, k), dtype=np.float32)
    if norms == "powerlaw":
        scale = rng.pareto(1.5, size=(p, 1)) + 1.0
    else:
        scale = np.exp(rng.normal(0.0, 0.5, size=(p, 1)))
    x *= scale.astype(np.float32)
    return x


def sgemm_rate(k: int, side: int = 4096, repeat: int = 5) -> float:
    """FLOP/s of a (side x k) by (k x side) float32 product on all BLAS threads (best of
    ``repeat``): the rate of the kernel's tiles, for the flop bound."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((side, k), dtype=np.float32)
    b = rng.standard_normal((side, k), dtype=np.float32)
    out = np.empty((side, side), np.float32)
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        np.matmul(a, b.T, out=out)
        best = min(best, time.perf_counter() - t0)
    return 2 * side * side * k / best


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
@click.option("-k", "--k", "k", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("-N", "n", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="LocalCluster workers (default: one per core).")
@click.option("--peers/--no-peers", default=True, show_default=True,
              help="Run the peers too.")
@click.option("--peer", "peer_names", multiple=True, type=click.Choice(PEERS),
              help="Run only these peers (repeatable; default: all).")
@click.option("--scale", default="200000,1000000", show_default=True,
              help="Comma-separated larger p for bigcos alone ('' for none).")
@click.option("--full-max", type=click.IntRange(min=0), default=200_000, show_default=True,
              help="Largest p run in full; above it, a measured extrapolation.")
@click.option("--sample", type=click.IntRange(min=1), default=None,
              help="Rows per side of the pair task timed for an extrapolation (default: the "
                   "group size bigcos would use at that p).")
@click.option("--repeat", type=click.IntRange(min=1), default=1, show_default=True,
              help="Runs of bigcos and of each peer at --items; the fastest is reported.")
@click.option("--full", is_flag=True,
              help="bigcos alone at --items, measured in full (CPU, RSS, bytes written) and "
                   "checked against brute force on --check-queries rows.")
@click.option("--norms", type=click.Choice(["lognormal", "powerlaw"]), default="lognormal",
              show_default=True, help="Distribution of the embedding's row norms.")
@click.option("--check-queries", type=click.IntRange(min=0), default=300, show_default=True,
              help="With --full: seeded query rows checked against brute force.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="With --full: write the lists here (default: a temporary directory).")
@click.option("--seed", type=int, default=0, show_default=True)
@json_option
def neighbors(p, k, n, workers, peers, peer_names, scale, full_max, sample, repeat, full, norms,
              check_queries, out_dir, seed, json_path):
    """Top-N neighbours of all p items by cosine and dot: bigcos beside faiss, implicit and
    numpy, then bigcos alone at larger p with peak memory; or (--full) bigcos alone at p,
    measured and checked.

    \b
    Examples:
      bigcos bench neighbors --items 50000 -k 128 -N 100 \\
          --json bench-neighbors.json
      bigcos bench neighbors --items 50000 --peer faiss --scale ''
      bigcos bench neighbors --items 1000000 -k 64 --full --json nb-1m.json
    """
    import os

    from bigcos.cluster import ClusterOptions, dask_client

    rows: list[dict] = []
    context = {"k": k, "n": n, "seed": seed, "repeat": repeat, "norms": norms,
               "load_average_before": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="bigcos-bench-nb-") as tmp_dir, \
            dask_client(ClusterOptions(workers=workers)) as client:
        tmp = Path(tmp_dir)
        context["workers"] = len(client.scheduler_info()["workers"])
        rate = sgemm_rate(k)
        context["sgemm_gflops"] = round(rate / 1e9, 1)
        x = embedding(p, k, seed, norms)
        model = write_model(tmp / "model", x)
        if full:
            out = Path(out_dir) if out_dir else tmp / "out"
            rows.append(_full_run(x, model, out, n, client, rate, check_queries, seed))
        else:
            cpu0 = cpu_seconds(client)
            m, manifest = best_of(repeat, "bigcos (cos+dot, Parquet written)",
                                  lambda: run_bigcos(model, tmp / "out", n, client))
            m.extra.update(items=p, metric="cos+dot", cpu_s=round(cpu_seconds(client) - cpu0, 1),
                           worker_peak_rss_mib=round(worker_peak_rss(client) / 2**20),
                           flop_bound_s=float(f"{2 * p * p * k / rate:.3g}"))
            m.extra["x_bound"] = round(m.seconds * rate / (2 * p * p * k), 2)
            rows.append(m.row())
            rows += _floor_rows(x, context["workers"], rate, repeat)
            ours = {metric: read_lists(tmp / "out", metric, p, n) for metric in ("cos", "dot")}
            if peers:
                rows += _peers(x, n, ours, repeat, peer_names or PEERS)
                faiss = [r["seconds"] for r in rows if r["name"].startswith("faiss")
                         and "seconds" in r]
                if len(faiss) == 2:
                    rows[0]["x_faiss_two_runs"] = round(rows[0]["seconds"] / sum(faiss), 2)
            for big in [int(s) for s in scale.split(",") if s.strip()]:
                rows.append(_scale_run(big, k, n, seed, tmp, full_max, sample, client,
                                       context["workers"], rate))
    context["load_average_after"] = os.getloadavg()
    report(f"bigcos bench neighbors: all items, k = {k}, N = {n}", rows, json_path, context)


def cpu_seconds(client) -> float:
    """CPU seconds (user + system) used so far by this process and every worker process."""
    import os

    def used() -> tuple[int, float]:
        import resource

        r = resource.getrusage(resource.RUSAGE_SELF)
        return os.getpid(), r.ru_utime + r.ru_stime

    here = used()
    others = {pid: t for pid, t in client.run(used).values() if pid != here[0]}
    return here[1] + sum(others.values())


def _full_run(x: np.ndarray, model: Path, out: Path, n: int, client, rate: float,
              check_queries: int, seed: int) -> dict:
    """bigcos alone on all items: time, CPU, RSS, bytes written, checked on sampled rows."""
    import resource

    p, k = x.shape
    cpu0 = cpu_seconds(client)
    m, _ = measure(f"bigcos p={p} full (cos+dot, Parquet written)",
                   lambda: run_bigcos(model, out, n, client))
    m.extra.update(items=p, metric="cos+dot", cpu_s=round(cpu_seconds(client) - cpu0, 1),
                   worker_peak_rss_mib=round(worker_peak_rss(client) / 2**20),
                   client_peak_rss_mib=round(resource.getrusage(
                       resource.RUSAGE_SELF).ru_maxrss / 2**10),
                   bytes_written=sum(f.stat().st_size for f in out.rglob("*") if f.is_file()),
                   flop_bound_s=float(f"{2 * p * p * k / rate:.3g}"))
    m.extra["x_bound"] = round(m.seconds * rate / (2 * p * p * k), 2)
    if check_queries:
        m.extra.update(check_against_brute_force(x, out, n, check_queries, seed))
    return m.row()


def check_against_brute_force(x: np.ndarray, out: Path, n: int, n_queries: int,
                              seed: int) -> dict:
    """Lists of ``n_queries`` seeded rows read back from ``out`` against brute force (all
    products of those rows, self excluded, score descending then index ascending; cosine =
    dot * (inv(q) * inv(c)) as the kernel defines it). Returns the fraction of rows whose
    lists are identical (ids and scores) per metric, and the worst score difference."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    from bigcos.topn import inverse_norms

    p = len(x)
    queries = np.sort(np.random.default_rng(seed).choice(p, min(n_queries, p), replace=False))
    inv = inverse_norms(x)
    result: dict = {"checked_queries": len(queries)}
    for metric in ("cos", "dot"):
        table = pads.dataset(out / "kind=item-item" / "model=bench" / f"metric={metric}",
                             format="parquet").to_table(
            filter=pc.field("query_id").isin(pa.array(queries))).to_pandas()
        table = table.sort_values(["query_id", "rank"])
        got = {q: (g["neighbor_id"].to_numpy(), g["score"].to_numpy())
               for q, g in table.groupby("query_id")}
        same, worst = 0, 0.0
        for b0 in range(0, len(queries), 32):
            rows = queries[b0:b0 + 32]
            scores = x[rows] @ x.T
            if metric == "cos":
                scores *= inv[rows][:, None] * inv[None, :]
            scores[np.arange(len(rows)), rows] = -np.inf
            for r, row in zip(rows, scores, strict=True):
                nth = np.partition(row, p - n)[p - n]
                top = np.flatnonzero(row >= nth)
                top = top[np.lexsort((top, -row[top]))][:n]
                ids, vals = got.get(int(r), (np.empty(0), np.empty(0)))
                same += bool(np.array_equal(ids, top) and np.array_equal(vals, row[top]))
                if len(ids) == len(top):
                    worst = max(worst, float(np.max(np.abs(vals - row[top]), initial=0)))
        result[f"identical_rows_{metric}"] = round(same / len(queries), 4)
        result[f"max_score_diff_{metric}"] = worst
    return result


def _peers(x: np.ndarray, n: int, ours: dict[str, np.ndarray], repeat: int,
           names: tuple[str, ...]) -> list[dict]:
    rows = []
    for name, fn in (("faiss IndexFlatIP", run_faiss), ("implicit topk", run_implicit),
                     ("numpy GEMM+argpartition", run_numpy)):
        if name.split()[0] not in names:
            continue
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


def numpy_floor(x: np.ndarray, threads: int, filter_passes: bool, block: int = 1024) -> None:
    """What no numpy kernel of bigcos's design can beat: every square tile (``block`` rows)
    of the half product x x^T, on ``threads`` threads of one-thread BLAS, and with
    ``filter_passes`` the two numpy passes per side of a tile that bigcos's filter makes
    before it touches a list (one comparison per entry against a per-(row, chunk of 64)
    bound, then ``flatnonzero``; the bound here admits nothing). No lists, nothing written."""
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits

    p = len(x)
    starts = range(0, p, block)
    tiles = [(i, j) for i in starts for j in starts if j >= i]

    def run(part: list[tuple[int, int]]) -> None:
        tile, hit = np.empty((block, block), np.float32), np.empty((block, block), bool)
        never = np.full((block, block // 64), np.inf, np.float32)
        for i, j in part:
            xi, xj = x[i:i + block], x[j:j + block]
            t, h = tile[:len(xi), :len(xj)], hit[:len(xi), :len(xj)]
            np.matmul(xi, xj.T, out=t)
            if filter_passes and t.shape == (block, block):
                np.greater_equal(t.reshape(block, -1, 64), never[:, :, None],
                                 out=h.reshape(block, -1, 64))
                np.flatnonzero(h)
                np.greater_equal(t.reshape(-1, 64, block), never.T[:, None, :],
                                 out=h.reshape(-1, 64, block))
                np.flatnonzero(h)

    with threadpool_limits(1), ThreadPoolExecutor(threads) as pool:
        list(pool.map(run, [tiles[w::threads] for w in range(threads)]))


def _floor_rows(x: np.ndarray, threads: int, rate: float, repeat: int) -> list[dict]:
    """Rows of :func:`numpy_floor` without and with the filter passes, against the bound."""
    p, k = x.shape
    rows = []
    for passes, label in ((False, "half GEMM"), (True, "half GEMM + 2 filter passes per side")):
        m, _ = best_of(repeat, f"numpy floor: {label} ({threads} threads)",
                       lambda passes=passes: numpy_floor(x, threads, passes))
        m.extra.update(items=p, x_bound=round(m.seconds * rate / (2 * p * p * k), 2))
        rows.append(m.row())
    return rows


def _scale_run(p: int, k: int, n: int, seed: int, tmp: Path, full_max: int, sample: int,
               client, workers: int, rate: float) -> dict:
    x = embedding(p, k, seed + 1)
    if p <= full_max:
        model = write_model(tmp / f"model-{p}", x)
        m, _ = measure(f"bigcos p={p}", lambda: run_bigcos(model, tmp / f"out-{p}", n, client))
        m.extra.update(items=p, metric="cos+dot",
                       worker_peak_rss_mib=round(worker_peak_rss(client) / 2**20),
                       flop_bound_s=float(f"{2 * p * p * k / rate:.3g}"))
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
                   flop_bound_s=float(f"{2 * p * p * k / rate:.3g}"))
    m.seconds = round(seconds * p * p / pairs / workers, 1)
    return m.row()
