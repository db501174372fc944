"""`bigcos run` records what each stage cost: wall time, peak RSS of each process, bytes written."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from bigcos.cli import main
from bigcos.cluster import ClusterOptions
from bigcos.pipeline import load_job, run_job
from bigcos.stage_resources import directory_bytes, peak_rss_bytes, reset_peak_rss

SMALL_JOB = """
[job]
name = "records"
out = "out"

[fit]
k = 6
random_d = 1
als = false

[neighbors]
kinds = ["item-item"]
n = 5

[report]
depth = 5

[[dataset]]
name = "sim"
simulate = { n_users = 400, n_items = 60, n_clusters = 3, max_items = 30, block_users = 200 }
ingest = { split = "users", heldout_users = 0.2 }
fit = { lam1 = 50.0, lam2 = 2.0 }
"""


def du(directory: Path, skip: str | None = None) -> int:
    """Bytes of the files below ``directory`` (os.walk), leaving out a subdirectory ``skip``
    and the stage's completion marker (written after its record)."""
    total = 0
    for root, dirs, files in os.walk(directory):
        dirs[:] = [d for d in dirs if d != skip]
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files
                     if not (root == str(directory) and f == "stage.json"))
    return total


def check_records(out: Path, ran: list[str], cluster: bool) -> dict:
    """Check the run manifest's resources of the stages ``ran``; return them."""
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(manifest["resources"]) == sorted(ran) and ran
    for label, rec in manifest["resources"].items():
        directory = Path(manifest["stages"][label]["directory"])
        stamp = json.loads((directory / "stage.json").read_text())
        assert rec["seconds"] == pytest.approx(stamp["seconds"], abs=2e-3)
        assert stamp["resources"] == rec  # kept with the stage: a cut run keeps its figures
        # the matrix directory later also holds the fit's SVD cache, written after it
        assert rec["bytes_written"] == du(directory, skip="svd-cache") > 0
        peaks = rec["peak_rss_bytes"]
        assert 20 << 20 < peaks["client"] < 8 << 30  # a Python process with numpy: > 20 MiB
        assert rec["peak_rss_since"] == "stage start"
        if not cluster:
            assert peaks["workers"] == {}
    return manifest["resources"]


def test_peak_rss_window_sees_a_large_array_and_resets():
    import numpy as np

    assert reset_peak_rss()
    before = peak_rss_bytes()
    a = np.ones(200 << 17)  # 200 MiB
    del a
    assert peak_rss_bytes() >= before + (190 << 20)
    assert reset_peak_rss()
    assert peak_rss_bytes() < before + (100 << 20)


def test_directory_bytes_is_the_size_of_its_files(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "x.bin").write_bytes(b"1" * 1000)
    (tmp_path / "a" / "b" / "y.bin").write_bytes(b"2" * 234)
    assert directory_bytes(tmp_path / "a") == 1234
    assert directory_bytes(tmp_path / "missing") == 0


def test_each_stage_records_time_peak_rss_and_bytes_written(tmp_path):
    """On threads with stages side by side (each in a process of its own); the stages run one
    after the other on a Dask cluster are checked by tests/test_cluster_scale.py."""
    (tmp_path / "job.toml").write_text(SMALL_JOB)
    job = load_job(tmp_path / "job.toml")
    result = run_job(job, ClusterOptions(parallel_stages=2), progress=False,
                     echo=lambda s: None)  # small: on threads (no Dask workers)
    records = check_records(job.out, result.ran, cluster=False)
    assert records == json.loads(json.dumps(result.resources))
    # bigcos bench scale --job reads them back (issue 15 point 7 (d))
    figures = tmp_path / "scale.json"
    cli = CliRunner().invoke(main, ["bench", "scale", "--parts", "", "--job", str(job.out),
                                    "--json", str(figures)])
    assert cli.exit_code == 0, cli.output
    rows = {r["name"]: r for r in json.loads(figures.read_text())["rows"]}
    assert sorted(rows) == sorted(records)
    for label, rec in records.items():
        assert rows[label]["seconds"] == rec["seconds"]
        assert rows[label]["bytes_written_mib"] == round(rec["bytes_written"] / 2**20, 1)
        assert rows[label]["peak_rss_client_mib"] == round(
            rec["peak_rss_bytes"]["client"] / 2**20, 1)
        assert rows[label]["workers"] == 0
    # a run cut before its manifest: the completed stages' markers still hold their figures
    (job.out / "manifest.json").unlink()
    cli = CliRunner().invoke(main, ["bench", "scale", "--parts", "", "--job", str(job.out),
                                    "--json", str(figures)])
    assert cli.exit_code == 0, cli.output
    assert {r["name"]: r["seconds"] for r in json.loads(figures.read_text())["rows"]} == {
        label: rec["seconds"] for label, rec in records.items()}
