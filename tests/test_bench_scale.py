"""`bigcos bench scale` (issue 15 point 7) at a tiny size: its figures, checks and outputs."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
from click.testing import CliRunner

from bigcos.bench.ingest import generate_log
from bigcos.bench.scale import GOAL_RATIO, sharded_gram_pass
from bigcos.cli import main
from bigcos.dense import RowChunks
from bigcos.matrix import IngestOptions, ingest
from bigcos.shards import MatrixShards


def test_sharded_gram_pass_is_the_dense_product(tmp_path):
    generate_log(tmp_path / "log.parquet", 5000, 400, 120, seed=1)
    ingest(tmp_path / "log.parquet", tmp_path / "m", IngestOptions(shard_nnz=1000))
    shards = MatrixShards(tmp_path / "m")
    assert len(shards.shards) > 2
    X = shards.load_matrix("train").toarray().astype(np.float64)
    Q = np.random.default_rng(0).standard_normal((X.shape[1], 10)).astype(np.float32)
    with RowChunks() as blas:
        Y = sharded_gram_pass(shards.shards, Q, blas)
    expected = X.T @ (X @ Q.astype(np.float64))
    np.testing.assert_allclose(Y, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_bench_scale_compares_the_sharded_paths_with_the_in_memory_ones(tmp_path):
    json_path, parquet_path = tmp_path / "scale.json", tmp_path / "scale.parquet"
    result = CliRunner().invoke(main, [
        "bench", "scale", "--rows", "20000", "--users", "2000", "--items", "500",
        "--shard-nnz", "5000", "-k", "8", "--oversampling", "4", "--kernel-items", "300",
        "--kernel-k", "8", "-N", "5", "--json", str(json_path), "--parquet",
        str(parquet_path)])
    assert result.exit_code == 0, result.output
    figures = json.loads(json_path.read_text())
    rows = {r["name"]: r for r in figures["rows"]}
    context = figures["context"]
    assert context["l"] == 12 and context["versions"]["numpy"] == np.__version__
    assert len(context["load_average_before"]) == 3 and context["goal_ratio"] == GOAL_RATIO
    streamed = rows["ingest, streamed (out of core, sharded)"]
    assert streamed["identical_shards"] is True and streamed["shards"] > 2
    assert streamed["nnz_per_s"] == round(context["nnz"] / streamed["seconds"])
    base = rows["ingest, in memory"]
    assert streamed["time_vs_in_memory"] == round(streamed["seconds"] / base["seconds"], 2)
    assert streamed[f"goal_{GOAL_RATIO}x"] == (
        "met" if streamed["seconds"] / base["seconds"] <= GOAL_RATIO else "missed")
    sharded = next(r for name, r in rows.items() if name.startswith("SVD pass, sharded"))
    assert sharded["max_rel_diff_vs_in_memory"] < 1e-5
    assert rows["SVD pass, scipy X.T @ (X @ Q)"]["max_rel_diff_vs_in_memory"] < 1e-5
    kernel = rows["neighbour kernel, LocalCluster workers"]
    assert kernel["pairs_per_s"] == round(300 * 300 / kernel["seconds"])
    assert all(r["cpu_s"] >= 0 for r in rows.values())
    assert "goal <= 1.3x" in result.output
    table = pq.read_table(parquet_path)
    assert table.column("name").to_pylist() == [r["name"] for r in figures["rows"]]
    assert json.loads(table.schema.metadata[b"bench"])["nnz"] == context["nnz"]


def test_bench_scale_unknown_part_is_a_usage_error():
    result = CliRunner().invoke(main, ["bench", "scale", "--parts", "ingest,fit"])
    assert result.exit_code == 2 and "--parts: unknown fit" in result.output
