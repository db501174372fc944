"""`bigcos bench scale` (issue 15 point 7) at a tiny size: its figures, checks and outputs."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
from click.testing import CliRunner

from bigcos.bench.ingest import generate_log
from bigcos.bench.scale import GOAL_RATIO, in_memory_operands, sharded_operator
from bigcos.cli import main
from bigcos.dense import RowChunks
from bigcos.gram import GramOperator
from bigcos.matrix import IngestOptions, ingest
from bigcos.shards import MatrixShards


def test_sharded_operator_is_the_fits_and_the_dense_product(tmp_path):
    """The bench's sharded operator is the fit's: reloading or keeping its segments, its pass
    is bitwise the in-memory fit operator's and the dense product of the fit rows."""
    generate_log(tmp_path / "log.parquet", 5000, 400, 120, seed=1)
    ingest(tmp_path / "log.parquet", tmp_path / "m",
           IngestOptions(shard_nnz=1000, split="users", heldout_users=0.2))
    shards = MatrixShards(tmp_path / "m")
    assert len(shards.shards) > 2
    fit_rows = ~pq.read_table(tmp_path / "m" / "users.parquet").column("heldout").to_numpy()
    assert 0 < fit_rows.sum() < len(fit_rows)
    X = shards.load_matrix("train").toarray().astype(np.float64)[fit_rows]
    Q = np.random.default_rng(0).standard_normal((X.shape[1], 10)).astype(np.float32)
    X_fit, row_blocks = in_memory_operands(tmp_path / "m")
    assert X_fit.shape == X.shape and len(row_blocks) == len(shards.shards)
    with RowChunks() as blas:
        op = GramOperator(X_fit, blas=blas, dtype=np.float32, row_blocks=row_blocks)
        Y = op(Q)
        op.close()
        for keep in (True, False):
            op = sharded_operator(tmp_path / "m", blas, None, keep)
            assert op.describe()["keep_segments"] is keep and op.shape == X.shape
            assert np.array_equal(op(Q), Y)
            op.close()
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
    in_memory = rows["SVD pass, in memory (GramOperator, threads)"]
    sharded = {name: r for name, r in rows.items() if name.startswith("SVD pass, sharded")}
    assert [name.split(", ")[2].split(" (")[0] for name in sharded] == [
        "segments kept", "segments loaded every pass"]
    assert all(name.endswith(" workers)") for name in sharded)
    for r in sharded.values():  # the fit's sharded operator, on the workers: the same bits
        assert r["identical_to_in_memory"] is True and r["max_rel_diff_vs_in_memory"] == 0
        assert r["fit_rows"] == in_memory["fit_rows"] > 0
        assert r["first_pass_with_setup_s"] > 0
        assert r["time_vs_in_memory"] == round(r["seconds"] / in_memory["seconds"], 2)
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
