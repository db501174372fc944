"""Workers reuse their malloc heap (bigcos.worker_heap): arrays of a few MiB allocated in a
loop, as the tile loops do, are not page-faulted in afresh each time, on a LocalCluster and on
`dask worker` processes of an existing scheduler (including a worker that joins later)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bigcos.cluster import ClusterOptions, dask_client
from tests.conftest import ROOT, stop_processes
from tests.test_pipeline import free_port

DASK = Path(sys.executable).with_name("dask")
ARRAYS, PAGES_EACH = 40, 1024  # 40 arrays of 4 MiB, written in full


def faults_of_a_tile_loop() -> int:
    """Minor page faults of allocating, writing and freeing ARRAYS arrays of 4 MiB in turn."""
    import resource

    import numpy as np

    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for i in range(ARRAYS):
        a = np.empty(PAGES_EACH * 4096 // 4, np.float32)
        a.fill(i)
        del a
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def test_dask_default_maps_every_array_afresh_and_bigcos_workers_do_not():
    """The control: Dask's own LocalCluster workers (MALLOC_TRIM_THRESHOLD_ set by the nanny)
    fault in the pages of every array anew (measured: half of all 4 KiB pages, 20,560); a
    bigcos worker faults in at most two arrays' worth, the heap then serving the rest."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        (dask_faults,) = client.run(faults_of_a_tile_loop).values()
    assert dask_faults >= ARRAYS * PAGES_EACH / 4
    with dask_client(ClusterOptions(workers=1)) as client:
        (ours,) = client.run(faults_of_a_tile_loop).values()
    assert ours <= 2 * PAGES_EACH, (ours, dask_faults)


@pytest.mark.cluster
def test_workers_of_an_existing_scheduler_reuse_their_heap(tmp_path):
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # the workers unpickle this module's function

    def worker(name: str) -> subprocess.Popen:
        return subprocess.Popen(
            [str(DASK), "worker", address, "--nthreads", "1", "--host", "127.0.0.1",
             "--dashboard-address", ":0", "--name", name, "--local-directory",
             str(tmp_path / name)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)

    procs = [subprocess.Popen([str(DASK), "scheduler", "--host", "127.0.0.1", "--port",
                               str(port), "--dashboard-address", ":0", "--no-show"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)]
    try:
        time.sleep(1.5)
        procs.append(worker("w0"))
        with dask_client(ClusterOptions(scheduler=address)) as client:
            client.wait_for_workers(1, timeout=60)
            procs.append(worker("w1"))  # joins after the plugin was registered
            client.wait_for_workers(2, timeout=60)
            faults = client.run(faults_of_a_tile_loop)
        assert len(faults) == 2
        assert all(f <= 2 * PAGES_EACH for f in faults.values()), faults
    finally:
        stop_processes(procs)
