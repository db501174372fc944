"""``bigcos bench ingest``: log → CSR, beside pandas ``read_parquet`` + ``scipy.sparse.coo_matrix``;
with ``--sharded``, the whole ``bigcos ingest`` (to a sharded matrix directory) in memory beside
the out-of-core streamed build.

The generated log has power-law users and items, a share of repeated (user, item) rows, float32
ratings and int64 timestamps, written as one Parquet file with row groups of 1M rows.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import click
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bigcos.bench.common import json_option, measure, report
from bigcos.matrix import IngestOptions, build
from bigcos.matrix import ingest as ingest_log


def generate_log(path: Path, rows: int, n_users: int, n_items: int, seed: int = 0) -> None:
    """Write a synthetic interaction log of ``rows`` rows to ``path`` (chunks of 1M rows)."""
    rng = np.random.default_rng(seed)
    writer = None
    chunk = 1 << 20
    item_weights = 1.0 / np.arange(1, n_items + 1) ** 0.8
    item_cdf = np.cumsum(item_weights / item_weights.sum())
    item_perm = rng.permutation(n_items).astype(np.int64)
    try:
        for start in range(0, rows, chunk):
            m = min(chunk, rows - start)
            users = np.minimum((rng.pareto(1.5, m) * n_users / 20).astype(np.int64), n_users - 1)
            items = item_perm[np.minimum(np.searchsorted(item_cdf, rng.random(m)), n_items - 1)]
            table = pa.table({
                "user_id": users * 7 + 1_000_003,
                "item_id": items * 13 + 17,
                "value": (rng.integers(1, 11, m) / 2).astype(np.float32),
                "timestamp": rng.integers(10**9, 2 * 10**9, m, dtype=np.int64),
            })
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema, compression="zstd")
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()


def pandas_baseline(path: Path):
    """What a user would write by hand: one pandas frame, factorize, coo → csr (sums duplicates)."""
    import pandas as pd
    import scipy.sparse as sp

    df = pd.read_parquet(path)
    u, _ = pd.factorize(df["user_id"], sort=True)
    i, _ = pd.factorize(df["item_id"], sort=True)
    values = df["value"].to_numpy(np.float32)
    del df
    return sp.coo_matrix((values, (u, i))).tocsr()


def _median_runs(methods: dict, repeat: int) -> tuple[dict, dict]:
    """Run every method ``repeat`` times, alternating them (so caches, allocator and page
    faults favour none), after one untimed warm-up each. Returns (measurements, results):
    the median time and the largest peak extra RSS per method."""
    for fn in methods.values():
        fn()
        pa.default_memory_pool().release_unused()
    runs: dict[str, list] = {name: [] for name in methods}
    results = {}
    for _ in range(repeat):
        for name, fn in methods.items():
            m, results[name] = measure(name, fn)
            pa.default_memory_pool().release_unused()
            runs[name].append(m)
    out = {}
    for name, ms in runs.items():
        m = sorted(ms, key=lambda x: x.seconds)[len(ms) // 2]
        m.peak_extra_rss_bytes = max(x.peak_extra_rss_bytes for x in ms)
        out[name] = m
    return out, results


@click.command()
@click.option("--rows", type=click.IntRange(min=1000), default=20_000_000, show_default=True)
@click.option("--users", "n_users", type=int, default=1_000_000, show_default=True)
@click.option("--items", "n_items", type=int, default=100_000, show_default=True)
@click.option("--repeat", type=click.IntRange(min=1), default=3, show_default=True,
              help="Timed runs per method (median reported), after one warm-up each.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--sharded", is_flag=True,
              help="Instead: `bigcos ingest` in memory vs streamed (out of core), both "
                   "writing shards; nnz/s and peak extra memory of each.")
@click.option("--shard-nnz", type=click.IntRange(min=1), default=2_000_000, show_default=True,
              help="--sharded: non-zeros per shard.")
@click.option("--memory-limit", default=None,
              help="--sharded: memory_limit of the streamed build (default: ingest's).")
@json_option
def ingest(rows, n_users, n_items, repeat, seed, sharded, shard_nnz, memory_limit, json_path):
    """Ingest a generated log: rows/s and peak extra memory, bigcos beside pandas + scipy.

    \b
    Example:
      bigcos bench ingest --rows 2000000
      bigcos bench ingest --sharded --rows 10000000
    """
    with tempfile.TemporaryDirectory(prefix="bigcos-bench-") as tmp:
        log = Path(tmp) / "log.parquet"
        click.echo(f"generating {rows:,} rows ...")
        generate_log(log, rows, n_users, n_items, seed)
        if sharded:
            return _sharded(log, Path(tmp), rows, repeat, shard_nnz, memory_limit, json_path,
                            {"rows": rows, "users": n_users, "items": n_items, "seed": seed})
        methods = {
            "bigcos build (sum duplicates)": lambda: build(log)[0].train,
            "bigcos build (last by time)":
                lambda: build(log, IngestOptions(duplicates="last"))[0].train,
        }
        try:
            import pandas  # noqa: F401

            methods["pandas read_parquet + coo_matrix"] = lambda: pandas_baseline(log)
        except ImportError:
            click.echo("pandas is not installed: no baseline (pip install 'bigcos[bench]')")
        measured, results = _median_runs(methods, repeat)
        ours = results["bigcos build (sum duplicates)"]
        theirs = results.get("pandas read_parquet + coo_matrix")
        baseline = measured.get("pandas read_parquet + coo_matrix")
        rows_out = []
        for m in measured.values():
            m.extra["rows_per_s"] = round(rows / m.seconds)
            if baseline is not None:
                m.extra["speed_vs_pandas"] = round(baseline.seconds / m.seconds, 2)
                m.extra["memory_vs_pandas"] = round(m.peak_extra_rss_bytes
                                                    / max(baseline.peak_extra_rss_bytes, 1), 2)
            rows_out.append(m.row())
        agree = None
        if theirs is not None:
            agree = bool(ours.shape == theirs.shape and ours.nnz == theirs.nnz
                         and abs(ours - theirs).max() < 1e-3)
        report(f"ingest {rows:,} rows -> {ours.shape[0]:,} x {ours.shape[1]:,}, nnz {ours.nnz:,}"
               f" (same matrix as pandas: {agree}; median of {repeat})", rows_out, json_path,
               {"rows": rows, "users": n_users, "items": n_items, "seed": seed,
                "repeat": repeat})


def _sharded(log: Path, tmp: Path, rows: int, repeat: int, shard_nnz: int,
             memory_limit: str | None, json_path: str | None, context: dict) -> None:
    """``bigcos ingest`` of ``log`` in memory and streamed: the same shards, nnz/s of each."""
    import json

    from bigcos.shards import MatrixShards

    def run(streaming: str) -> Path:
        out = tmp / streaming
        ingest_log(log, out, IngestOptions(streaming=streaming, shard_nnz=shard_nnz,
                                           memory_limit=memory_limit), overwrite=True)
        return out

    methods = {"bigcos ingest, in memory": lambda: run("off"),
               "bigcos ingest, streamed (out of core)": lambda: run("on")}
    measured, results = _median_runs(methods, repeat)
    memory, streamed = (results[name] for name in methods)
    same = (json.loads((memory / "manifest.json").read_text())["shards"]
            == json.loads((streamed / "manifest.json").read_text())["shards"])
    shards = MatrixShards(streamed)
    for a, b in zip(shards.shards, MatrixShards(memory).shards, strict=True):
        x, y = a.load(), b.load()
        same &= all(np.array_equal(getattr(x, f), getattr(y, f))
                    for f in ("indptr", "indices", "data"))
    nnz = shards.nnz["train"] + shards.nnz["test"]
    base = measured["bigcos ingest, in memory"]
    rows_out = []
    for m in measured.values():
        m.extra.update(nnz_per_s=round(nnz / m.seconds), rows_per_s=round(rows / m.seconds),
                       time_vs_in_memory=round(m.seconds / base.seconds, 2))
        rows_out.append(m.row())
    report(f"ingest {rows:,} rows -> {shards.shape[0]:,} x {shards.shape[1]:,}, nnz {nnz:,} in "
           f"{len(shards.shards)} shards (identical shards: {same}; median of {repeat})",
           rows_out, json_path, {**context, "repeat": repeat, "shard_nnz": shard_nnz,
                                 "memory_limit": memory_limit})
