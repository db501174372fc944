"""``bigcos bench audit``: ``bigcos audit`` at scale on a LocalCluster, beside faiss.

Synthetic embeddings: p items and n users, k dimensions, Gaussian directions with log-normal
row norms (:func:`bigcos.bench.neighbors.embedding`); items as one ``.npy``, users as a Parquet
file written chunk by chunk (one row group per chunk: the audit's user shards), so neither
this process nor the audit ever holds the n x k users. No matrix: the held-out comparison
(which needs a test split) is not part of this run.

bigcos runs :func:`bigcos.audit` with a seeded sample of ``--queries`` item queries and as many
users, each ranked against all p items, on a LocalCluster of ``--workers`` processes started
beforehand (start-up reported separately); it reports wall time per phase (the audit
manifest's timings), the peak extra RSS of this process and the peak RSS of the workers.
The peer a user would pick for the lists runs in this process: faiss ``IndexFlatIP`` (exact),
top-N of the same item queries among all items by dot and by cosine (normalised copy), for
the model's own embeddings only; the audit computes such lists for every member (model + 3
named + fitted + random), item-item and user-item, both metrics. Agreement of faiss's lists
with the exact kernel is checked on 200 queries.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import click
import numpy as np
import pyarrow.parquet as pq

from bigcos import io
from bigcos.bench.common import json_option, measure, report
from bigcos.bench.neighbors import embedding, worker_peak_rss
from bigcos.blocked_topn import top_n
from bigcos.embedding_audit.family import self_pairs

CHUNK = 1 << 18  # users per generated chunk and Parquet row group


def write_users(path: Path, n: int, k: int, seed: int) -> int:
    """n synthetic users as Parquet (user_id, embedding), one row group per chunk; returns the
    number of row groups. Memory: one chunk."""
    with pq.ParquetWriter(path, io.embeddings_table(np.arange(1), np.zeros((1, k)),
                                                    "user_id").schema) as writer:
        for i, start in enumerate(range(0, n, CHUNK)):
            rows = min(CHUNK, n - start)
            x = embedding(rows, k, seed + 1000 + i)
            writer.write_table(io.embeddings_table(np.arange(start, start + rows), x, "user_id"),
                               row_group_size=CHUNK)
    return -(-n // CHUNK)


def _faiss_rows(x: np.ndarray, queries: np.ndarray, n: int) -> list[dict]:
    import faiss

    rows = []
    check = queries[:200]
    exact = top_n(x[check], x, n, exclude=self_pairs(check, len(x)))
    for metric in ("dot", "cos"):
        def search(metric=metric):
            base = x if metric == "dot" else x / np.linalg.norm(x, axis=1, keepdims=True)
            index = faiss.IndexFlatIP(x.shape[1])
            index.add(base)
            return index.search(base[queries], n + 1)  # the query itself comes back first
        m, (_, ids) = measure(f"faiss IndexFlatIP ({metric}, own embeddings)", search)
        theirs = [[i for i in row if i != q][:n] for row, q in zip(ids[:200], check, strict=True)]
        hits = sum(len(set(a) & set(b)) for a, b in zip(exact[metric][0].tolist(), theirs,
                                                          strict=True))
        m.extra.update(lists=f"{len(queries)} x {n}", threads=faiss.omp_get_max_threads(),
                       agreement_with_bigcos=round(hits / (len(check) * n), 4))
        rows.append(m.row())
    return rows


@click.command("audit")
@click.option("--items", "p", type=click.IntRange(min=100), default=1_000_000, show_default=True)
@click.option("--users", "n", type=click.IntRange(min=100), default=1_500_000, show_default=True)
@click.option("-k", "k", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--queries", type=click.IntRange(min=1), default=10_000, show_default=True,
              help="Seeded sample of item queries (and of users), each against all items.")
@click.option("-N", "depth", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True,
              help="LocalCluster worker processes.")
@click.option("--peers/--no-peers", default=True, show_default=True, help="Run faiss too.")
@click.option("--seed", type=int, default=0, show_default=True)
@json_option
def audit_bench(p, n, k, queries, depth, workers, peers, seed, json_path):
    """Times `bigcos audit` of p items and n users (in Parquet row groups) on a LocalCluster: wall
    time per phase and peak memory, beside faiss exact top-N of the same queries.

    \b
    Example:
      bigcos bench audit --items 1000000 --users 1500000 -k 64 --queries 10000 \\
          --json bench-audit.json
    """
    from bigcos.cluster import ClusterOptions, dask_client
    from bigcos.embedding_audit import AuditOptions, audit

    context = {"items": p, "users": n, "k": k, "queries": queries, "depth": depth,
               "seed": seed, "load_average_before": os.getloadavg()}
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bigcos-bench-audit-") as tmp_dir:
        tmp = Path(tmp_dir)
        x = embedding(p, k, seed)
        np.save(tmp / "items.npy", x)
        m, groups = measure("write users (Parquet)", lambda: write_users(tmp / "users.parquet",
                                                                         n, k, seed))
        m.extra.update(row_groups=groups)
        rows.append(m.row())
        opts = AuditOptions(depth=depth, item_queries=queries, user_queries=queries, seed=seed,
                            n_resamples=1000)
        t0 = time.perf_counter()
        with dask_client(ClusterOptions(workers=workers)) as client:
            rows.append({"name": "LocalCluster start",
                         "seconds": round(time.perf_counter() - t0, 2)})
            context["workers"] = len(client.scheduler_info()["workers"])
            m, result = measure("bigcos audit (all phases)", lambda: audit(
                tmp / "items.npy", tmp / "report", users=tmp / "users.parquet", options=opts,
                client=client))
            manifest = io.read_manifest(result.out)
            m.extra.update(worker_peak_rss_mib=round(worker_peak_rss(client) / 2**20),
                           **{f"{phase}_s": round(s, 1)
                              for phase, s in manifest["timings_s"].items() if phase != "total"},
                           members=1 + len(set(result.tables["members"]
                                               .column("member").to_pylist())),
                           user_shards=manifest["counts"]["user_shards"])
            rows.append(m.row())
        verdicts = {r["question"] + " (" + r["kind"] + ")": r["verdict"]
                    for r in result.tables["verdicts"].to_pylist()}
        context["verdicts"] = verdicts
        if peers:
            try:
                sample = np.random.default_rng(seed).choice(p, min(queries, p), replace=False)
                item_q = np.union1d(sample, np.arange(3))  # the audit's, with its 3 examples
                rows += _faiss_rows(x, item_q, depth)
            except ImportError as exc:
                rows.append({"name": "faiss IndexFlatIP", "absent": str(exc)})
    context["item_mib"] = round(p * k * 4 / 2**20)
    context["user_mib"] = round(n * k * 4 / 2**20)
    context["load_average_after"] = os.getloadavg()
    report(f"bigcos bench audit: p = {p:,}, n = {n:,}, k = {k}, {queries:,} queries, "
           f"N = {depth}", rows, json_path, context)
    for question, verdict in verdicts.items():
        click.echo(f"  {question}: {verdict}")

