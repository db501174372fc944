"""``bigcos bench neighbors --full``: the launchable p = 1M run, at a size a test can afford,
on a real LocalCluster: every sampled list equals brute force, and the figures are there."""

from __future__ import annotations

import json

from click.testing import CliRunner

from bigcos.cli import main


def test_bench_neighbors_full_run_checks_lists_against_brute_force(tmp_path):
    out, lists = tmp_path / "bench.json", tmp_path / "lists"
    result = CliRunner().invoke(main, [
        "bench", "neighbors", "--full", "--items", "2000", "--k", "8", "-N", "10",
        "--norms", "powerlaw", "--check-queries", "60", "--workers", "1", "--out", str(lists),
        "--json", str(out)])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(out.read_text())["rows"]
    assert row["checked_queries"] == 60
    assert row["identical_rows_cos"] == 1 and row["identical_rows_dot"] == 1
    assert row["bytes_written"] == sum(f.stat().st_size for f in lists.rglob("*") if f.is_file())
    assert row["bytes_written"] > 2000 * 10 * 2 * 4  # at least the scores of both metrics
    assert row["cpu_s"] > 0 and row["worker_peak_rss_mib"] > 0 and row["x_bound"] > 0
