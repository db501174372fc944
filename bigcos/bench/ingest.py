"""``bigcos bench ingest``: log → CSR, beside pandas ``read_parquet`` + ``scipy.sparse.coo_matrix``.

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

from bigcos.bench.common import measure, report
from bigcos.matrix import IngestOptions, build


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


@click.command()
@click.option("--rows", type=click.IntRange(min=1000), default=20_000_000, show_default=True)
@click.option("--users", "n_users", type=int, default=1_000_000, show_default=True)
@click.option("--items", "n_items", type=int, default=100_000, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the figures as JSON.")
def ingest(rows, n_users, n_items, seed, json_path):
    """Ingest a generated log: rows/s and peak extra memory, bigcos beside pandas + scipy.

    Example:

        bigcos bench ingest --rows 2000000
    """
    with tempfile.TemporaryDirectory(prefix="bigcos-bench-") as tmp:
        log = Path(tmp) / "log.parquet"
        click.echo(f"generating {rows:,} rows ...")
        generate_log(log, rows, n_users, n_items, seed)
        results = []
        m_ours, ours = measure("bigcos build (sum duplicates)", lambda: build(log)[0].train)
        pa.default_memory_pool().release_unused()
        m_last, _ = measure("bigcos build (last by time)",
                            lambda: build(log, IngestOptions(duplicates="last"))[0].train)
        pa.default_memory_pool().release_unused()
        try:
            m_pd, theirs = measure("pandas read_parquet + coo_matrix", lambda: pandas_baseline(log))
        except ImportError:
            m_pd, theirs = None, None
        for m in (m_ours, m_last, m_pd):
            if m is not None:
                m.extra["rows_per_s"] = round(rows / m.seconds)
                results.append(m.row())
        agree = None
        if theirs is not None:
            agree = bool(ours.shape == theirs.shape and ours.nnz == theirs.nnz
                         and abs(ours - theirs).max() < 1e-3)
            for r in results:
                r["speed_vs_pandas"] = round(m_pd.seconds / r["seconds"], 2)
                r["memory_vs_pandas"] = round(r["peak_extra_rss_bytes"]
                                              / max(m_pd.peak_extra_rss_bytes, 1), 2)
        report(f"ingest {rows:,} rows -> {ours.shape[0]:,} x {ours.shape[1]:,}, nnz {ours.nnz:,}"
               f" (same matrix as pandas: {agree})", results, json_path,
               {"rows": rows, "users": n_users, "items": n_items, "seed": seed})
