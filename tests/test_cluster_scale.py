"""Issue 15 point 6: a job on `dask scheduler` + 4 `dask worker --memory-limit 1GiB` processes.

The job (a simulation of ~1.4M interactions, streamed ingest into several shards, the fit,
item-item neighbours and the report) gives byte-identical tables to the same job on threads,
no worker is paused or restarted for memory, and the run records every worker's peak RSS.
The issue asks for ~5M interactions (n_users = 140000): measured at load average 8-12 on the
2-core machine, 235 s (cluster start 17 s, cluster run 137 s, threads run 80 s; identical
tables, workers' peak RSS <= 271 MiB), against 30 s for this test at load 4: too much for CI.

Still to come (needs the fit's SVD passes as shard tasks on the workers, branch shardfit):
``test_killed_worker_during_svd_passes_gives_identical_sigma`` — kill one worker while the
SVD's passes run and check that the run completes with the same σ and tables. It belongs
here and reuses the ``four_workers`` fixture.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from bigcos.cli import main
from bigcos.cluster import ClusterOptions
from bigcos.pipeline import load_job, run_job
from tests.conftest import stop_processes
from tests.test_pipeline import free_port, tables
from tests.test_run_records import check_records

ROOT = Path(__file__).resolve().parents[1]
DASK = Path(sys.executable).with_name("dask")
N_WORKERS = 4
WORKER_MEMORY = 1 << 30

JOB = """
[job]
name = "cluster-scale"
out = "out"

[fit]
k = 16
random_d = 1
remedies = []
als = false
cosine = false

[neighbors]
kinds = ["item-item"]
n = 10

[report]
depth = 10
max_queries = 200
max_heldout_users = 500
n_resamples = 100
auc_pairs = 5000

[[dataset]]
name = "sim"
simulate = { n_users = 40000, n_items = 2000, max_items = 100, block_users = 10000 }
ingest = { split = "users", heldout_users = 0.2, shard_nnz = 300000, streaming = "on" }
fit = { lam1 = 50.0, lam2 = 2.0 }
"""

# what distributed logs when memory pressure pauses, kills or restarts a worker
MEMORY_TROUBLE = re.compile(r"Pausing worker|Restarting worker|exceeded \d+% memory budget|"
                            r"was killed by|Worker process \d+ was killed|KilledWorker",
                            re.IGNORECASE)


@pytest.fixture
def four_workers(tmp_path):
    """`dask scheduler` and 4 `dask worker --nthreads 1 --memory-limit 1GiB` on 127.0.0.1;
    yields (address, log files)."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    logs = [tmp_path / "scheduler.log"] + [tmp_path / f"w{i}.log" for i in range(N_WORKERS)]
    procs = [subprocess.Popen([str(DASK), "scheduler", "--host", "127.0.0.1", "--port",
                               str(port), "--dashboard-address", ":0", "--no-show"],
                              stdout=subprocess.DEVNULL, stderr=logs[0].open("w"), env=env)]
    try:
        time.sleep(1.0)
        for i in range(N_WORKERS):
            procs.append(subprocess.Popen(
                [str(DASK), "worker", address, "--nthreads", "1", "--nworkers", "1",
                 "--memory-limit", str(WORKER_MEMORY), "--host", "127.0.0.1",
                 "--dashboard-address", ":0", "--name", f"w{i}",
                 "--local-directory", str(tmp_path / f"w{i}")],
                stdout=subprocess.DEVNULL, stderr=logs[i + 1].open("w"), env=env))
        from distributed import Client

        with Client(address, timeout="30s") as client:
            client.wait_for_workers(N_WORKERS, timeout=90)
        yield address, logs
    finally:
        stop_processes(procs)


@pytest.mark.cluster
def test_four_workers_with_1gib_give_the_threads_tables_without_memory_trouble(
        four_workers, tmp_path):
    from distributed import Client

    address, logs = four_workers
    (tmp_path / "job.toml").write_text(JOB)
    with Client(address, timeout="30s") as client:
        workers_before = sorted(client.scheduler_info()["workers"])
    assert len(workers_before) == N_WORKERS
    out = tmp_path / "cluster"
    result = CliRunner().invoke(main, ["run", str(tmp_path / "job.toml"), "--out", str(out),
                                       "--scheduler", address, "--no-progress"])
    assert result.exit_code == 0, result.output
    with Client(address, timeout="30s") as client:
        assert sorted(client.scheduler_info()["workers"]) == workers_before  # none restarted
        remote_logs = "\n".join(line for logs_ in (client.get_worker_logs(),
                                                   {"scheduler": client.get_scheduler_logs()})
                                for records in logs_.values() for _, line in records)
    trouble = MEMORY_TROUBLE.findall(remote_logs + "".join(p.read_text() for p in logs))
    assert not trouble, trouble

    job = load_job(tmp_path / "job.toml")
    reference = run_job(job, ClusterOptions(parallel_stages=1), progress=False,
                        echo=lambda s: None)  # the same job on threads in this process
    assert reference.ran and tables(out) == tables(job.out)
    assert len(tables(out)) > 10 and any("shards/" in name for name in tables(out))

    ran = [line.split(" ran in ")[0] for line in result.output.splitlines() if " ran in " in line]
    records = check_records(out, ran, cluster=True)
    for record in records.values():
        peaks = record["peak_rss_bytes"]["workers"]
        assert sorted(peaks) == workers_before
        assert all(50 << 20 < peak < WORKER_MEMORY for peak in peaks.values())
