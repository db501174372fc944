"""Object storage (issue 16): URLs wherever a path is accepted, and commits without rename.

Against a real S3-compatible server (moto) started on 127.0.0.1 by this module; credentials,
endpoint and region come only from the standard AWS environment variables.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import boto3
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from moto.server import ThreadedMotoServer

from bigcos import io, storage
from bigcos.errors import UserError
from bigcos.io import LEASE, LEASE_TIMEOUT_S, atomic_output_dir, remove_stale_temporaries
from bigcos.pipeline import load_job, run_job
from bigcos.storage import StorePath
from tests.test_pipeline import dead_pid, threaded

ROOT = Path(__file__).resolve().parents[1]
BUCKET = "bigcos-test"


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on 127.0.0.1 with one bucket; the environment points boto3 and
    pyarrow (and every subprocess) at it."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request else
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    with pytest.MonkeyPatch.context() as mp:
        for name, value in {"AWS_ENDPOINT_URL": f"http://{host}:{port}",
                            "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                            "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
                            "AWS_EC2_METADATA_DISABLED": "true"}.items():
            mp.setenv(name, value)
        mp.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        storage._filesystem.cache_clear()
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        yield f"s3://{BUCKET}"
        storage._filesystem.cache_clear()
    server.stop()


def store_root(kind: str, s3_url: str | None, tmp_path: Path) -> StorePath:
    return StorePath(f"{s3_url}/{tmp_path.name}" if kind == "s3" else tmp_path.as_uri())


def tables(root: Path | StorePath) -> dict[str, str]:
    """sha256 of every Parquet/npz output below ``root`` (manifests hold timings)."""
    files = root.files() if isinstance(root, StorePath) else sorted(root.rglob("*"))
    out = {}
    for f in files:
        rel = "/".join(f.parts[len(root.parts):])
        if f.suffix in (".parquet", ".npz") and "svd-cache" not in f.parts \
                and not any(p.startswith(".") for p in f.parts[len(root.parts):]):
            with f.open("rb") as fh:
                out[rel] = hashlib.sha256(fh.read()).hexdigest()
    return out


def assert_same_table(rel: str, *roots: Path | StorePath) -> None:
    """The Parquet table ``rel`` read back with pyarrow is the same below every root (values
    compared column by column, nested lists flattened, NaN equal to NaN)."""
    read = []
    for root in roots:
        fs, where = storage.filesystem_and_path(root / rel)
        read.append(pq.read_table(where, filesystem=fs))
    first = read[0]
    for table in read[1:]:
        assert table.schema.equals(first.schema), rel
        for name in first.column_names:
            a, b = (t.column(name).combine_chunks() for t in (first, table))
            while pa.types.is_list(a.type) or pa.types.is_fixed_size_list(a.type):
                a, b = a.flatten(), b.flatten()
            np.testing.assert_array_equal(a.to_numpy(zero_copy_only=False),
                                          b.to_numpy(zero_copy_only=False), err_msg=rel)


def temporaries(root: Path | StorePath) -> list:
    return sorted(root.rglob(".*.tmp-*"))


# --------------------------------------------------------------------------- paths and URLs
def test_a_path_stays_a_path_and_a_url_becomes_a_store_path():
    assert storage.as_path("out/x") == Path("out/x") and not storage.is_url("out/x")
    assert not storage.is_url("C:\\data\\x")
    p = storage.as_path("s3://bucket/jobs/run/")
    assert isinstance(p, StorePath) and p.path == "bucket/jobs/run"
    child = p / "ml" / "matrix"
    assert (str(child), child.name, child.parent.parent) == (
        "s3://bucket/jobs/run/ml/matrix", "matrix", p)
    assert child.parts[-3:] == ("run", "ml", "matrix") and (p / "a.parquet").suffix == ".parquet"
    assert pickle.loads(pickle.dumps(child)) == child  # workers rebuild it from the URL
    assert sorted([p / "m=a-b", p / "m=a"]) == [p / "m=a", p / "m=a-b"]  # as Paths sort
    assert storage.as_path("file:///tmp/x%20y").path == "/tmp/x y"
    assert storage.as_path("abfs://box@acct.dfs.core.windows.net/a/b").path == "box/a/b"
    with pytest.raises(UserError, match="names no host"):
        storage.as_path("file://host/tmp/x")


# --------------------------------------------------------------------------- commit protocol
@pytest.mark.parametrize("kind", ["file", "s3"])
def test_commit_protocol(kind, s3, tmp_path):
    """An uncommitted prefix is invisible; a failed block leaves nothing; a half-copied commit
    is not an output; an abandoned temporary of a dead run is cleaned, a live lease kept."""
    root = store_root(kind, s3, tmp_path)
    final = root / "out"
    table = pa.table({"x": np.arange(5)})
    with atomic_output_dir(final) as tmp:
        assert tmp.name.startswith(".out.tmp-") and (tmp / LEASE).exists()
        io.write_table(tmp / "t.parquet", table)
        io.write_manifest(tmp, "test", {})
        assert not io.output_exists(final)
        with pytest.raises(UserError, match="no such output directory"):
            io.require_dir(final, "output")
        assert remove_stale_temporaries(root) == []  # our own live lease
    assert io.require_dir(final, "output") == final and io.output_exists(final)
    assert io.read_table(final / "t.parquet").equals(table)
    assert not (final / LEASE).exists() and temporaries(root) == []
    with pytest.raises(UserError, match="already exists"), atomic_output_dir(final):
        pass

    with pytest.raises(RuntimeError), atomic_output_dir(root / "failed") as tmp:
        io.write_table(tmp / "t.parquet", table)  # a failure inside the block
        raise RuntimeError("boom")
    assert not (root / "failed").exists() and temporaries(root) == []

    half = root / "half"  # a commit killed after copying data, before the manifest
    half.mkdir(parents=True)
    io.write_table(half / "t.parquet", table)
    with pytest.raises(UserError, match="not a committed output directory"):
        io.require_dir(half, "output", "t.parquet")
    assert not io.output_exists(half)
    with atomic_output_dir(half) as tmp:  # not an output: replaced without --overwrite
        io.write_manifest(tmp, "test", {})
    assert [f.name for f in half.files()] == [io.MANIFEST]

    now = time.time()
    leases = {"other_live": ("another-host", os.getpid() + 1, now - 60),
              "other_dead": ("another-host", os.getpid() + 1, now - LEASE_TIMEOUT_S - 60),
              "here_dead": (socket.gethostname(), dead_pid(), now),
              "here_live": (socket.gethostname(), os.getpid(), now)}
    fakes = {}
    for name, (host, pid, beat) in leases.items():
        fakes[name] = tmp = root / name / f".report.tmp-{pid}-deadbeef"
        tmp.mkdir(parents=True)
        (tmp / "part.parquet").write_bytes(b"PAR1")
        io.write_json(tmp / LEASE, {"host": host, "pid": pid, "started_unix": beat,
                                    "heartbeat_unix": beat})
    removed = remove_stale_temporaries(root)
    assert sorted(removed) == sorted([fakes["other_dead"], fakes["here_dead"]])
    assert fakes["other_live"].exists() and fakes["here_live"].exists()
    assert not fakes["other_dead"].exists() and not fakes["here_dead"].exists()


def test_a_simulation_on_a_dask_cluster_is_written_by_the_workers_into_the_store(s3, tmp_path):
    """Worker processes get the output as a URL and write their blocks straight to S3."""
    from distributed import Client, LocalCluster

    from bigcos.simulator import SimulationParams, simulate

    params = SimulationParams(n_users=600, n_items=80, n_clusters=3, max_items=40,
                              block_users=200)
    simulate(tmp_path / "local", params)
    remote = StorePath(f"{s3}/sim-{tmp_path.name}")
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        simulate(remote, params, client=client)
    assert tables(remote) == tables(tmp_path / "local") and len(tables(remote)) == 5
    counts = [io.read_manifest(d)["counts"] for d in (remote, tmp_path / "local")]
    for c in counts:
        c.pop("users_per_second")  # a timing
    assert counts[0] == counts[1]


def test_single_commands_take_urls_for_every_input_and_output(s3, tmp_path):
    """ingest, fit, neighbors and similar with logs, item tables and directories on S3 write
    the tables the same commands write locally."""
    from click.testing import CliRunner

    from bigcos.cli import main

    log, items = small_log(tmp_path)
    bucket = StorePath(f"{s3}/cli-{tmp_path.name}")
    for f in (log, items):
        (bucket / "input" / f.name).write_bytes(f.read_bytes())
    outputs = {}
    for where, (log_in, items_in, root) in {
            "local": (str(log), str(items), str(tmp_path / "out")),
            "s3": (f"{bucket}/input/log.parquet", f"{bucket}/input/items.parquet",
                   f"{bucket}/out")}.items():
        for args in (["ingest", log_in, "--out", f"{root}/matrix", "--items", items_in,
                      "--min-user", "5", "--min-item", "5"],
                     ["fit", f"{root}/matrix", "--out", f"{root}/model", "-k", "6",
                      "--lam", "10", "--scaling", "symmetric"],
                     ["neighbors", f"{root}/model", "--out", f"{root}/neighbors", "-N", "5"],
                     ["similar", f"{root}/model", "--item-id", "1", "-N", "3"],
                     # the audit reads its embeddings (copied to local scratch), matrix and
                     # items from the store and writes its report there
                     ["audit", f"{root}/model/items.parquet", "--users",
                      f"{root}/model/users.parquet", "--matrix", f"{root}/matrix", "--out",
                      f"{root}/audit", "--queries", "40", "--random-members", "1",
                      "--resamples", "50"],
                     ["simulate", "--out", f"{root}/sim", "--n-users", "300", "--n-items", "60",
                      "--max-items", "20"],
                     ["figure1", "--simulation", f"{root}/sim", "--out", f"{root}/figure1",
                      "-k", "4", "--lam", "5", "-N", "5"]):
            result = CliRunner().invoke(main, args)
            assert result.exit_code == 0, (where, args, result.output)
            if args[0] == "similar":
                shown = result.output
        outputs[where] = (storage.as_path(root), shown)
    (local, shown_local), (remote, shown_remote) = outputs["local"], outputs["s3"]
    assert tables(remote) == tables(local) and len(tables(remote)) > 5
    assert {"audit/verdicts.parquet", "figure1/figure1.parquet"} <= set(tables(remote))
    assert (remote / "figure1" / "figure1.png").read_bytes()[:4] == b"\x89PNG"
    assert (remote / "audit" / "report.html").exists() and not temporaries(remote)
    assert shown_remote == shown_local and "  [" in shown_remote  # titles read from S3
    job = CliRunner().invoke(main, ["init", str(tmp_path / "job"), "--log",
                                    f"{bucket}/input/log.parquet"])  # checked: columns read
    assert job.exit_code == 0, job.output
    assert f'log = "{bucket}/input/log.parquet"' in (tmp_path / "job" / "job.toml").read_text()
    with pytest.raises(UserError, match="already exists"):
        from bigcos.matrix import ingest

        ingest(f"{bucket}/input/log.parquet", f"{bucket}/out/matrix")


# --------------------------------------------------------------------------- the job on S3
JOB = """
[job]
name = "tiny-s3"
out = "OUT"

[fit]
k = 6
scalings = ["symmetric"]   # few models: the report's page is the slow part
random_d = 0
objective2 = false
project_back = false
remedies = ["popularity"]
als_iterations = 2
cosine_iterations = 3

[neighbors]
kinds = ["item-item", "user-item"]
n = 5

[report]
depth = 5
n_resamples = 20
auc_pairs = 2000

[[dataset]]
name = "ml"
log = "LOG"
items = "ITEMS"
ingest = { threshold = 3.0, min_user = 5, min_item = 5, split = "users", heldout_users = 0.2 }
"""


def write_job(path: Path, log: str, items: str, out: str) -> Path:
    path.write_text(JOB.replace("LOG", log).replace("ITEMS", items).replace("OUT", out))
    return path


def small_log(directory: Path) -> tuple[Path, Path]:
    """The first 6000 ratings of the bundled MovieLens data and its item table."""
    data = ROOT / "data" / "ml-latest-small"
    log = pq.read_table(data / "interactions.parquet").slice(0, 6000)
    pq.write_table(log, directory / "log.parquet")
    pq.write_table(pq.read_table(data / "items.parquet"), directory / "items.parquet")
    return directory / "log.parquet", directory / "items.parquet"


def bigcos_run(job: Path, out: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bigcos", "run", str(job), "--out", out,
                             "--no-progress"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_the_job_on_s3_matches_local_resumes_after_a_kill_and_runs_beside_another(s3, tmp_path):
    """Input log and outputs on S3: tables identical to the local run. Run A is SIGKILLed
    mid-stage while run B writes another prefix of the bucket: A leaves no committed partial
    stage, B finishes untouched by A (and A's abandoned prefix untouched by B), and A resumes,
    skipping its complete stages, cleaning its own abandoned prefix but not a live one."""
    log, items = small_log(tmp_path)
    bucket = StorePath(f"{s3}/{tmp_path.name}")
    for f in (log, items):
        (bucket / "input" / f.name).write_bytes(f.read_bytes())
    job = write_job(tmp_path / "s3.toml", f"{bucket}/input/log.parquet",
                    f"{bucket}/input/items.parquet", "unused")
    a, b = bucket / "runs" / "a", bucket / "runs" / "b"

    run_a, run_b = bigcos_run(job, str(a)), bigcos_run(job, str(b))
    deadline = time.time() + 120
    while not any(t.name.startswith(".report.tmp-") for t in temporaries(a)):  # seconds long
        assert run_a.poll() is None and time.time() < deadline, run_a.stdout.read()
        time.sleep(0.05)
    import psutil

    # run A and its worker processes (small jobs run their stages side by side in workers)
    family = {run_a.pid} | {c.pid for c in psutil.Process(run_a.pid).children(recursive=True)}
    run_a.send_signal(signal.SIGKILL)
    run_a.wait()
    abandoned = temporaries(a)
    assert abandoned and all(json.loads((t / LEASE).read_text())["pid"] in family
                             for t in abandoned)
    workers = []
    for pid in family - {run_a.pid}:
        with contextlib.suppress(psutil.NoSuchProcess):
            workers.append(psutil.Process(pid))
    gone, alive = psutil.wait_procs(workers, timeout=30)
    assert not alive  # a killed run's workers die with it: nothing of A writes any more
    committed = {f.parent.name: f.read_text() for f in a.rglob("stage.json")}
    assert "report" not in committed and len(committed) == 6
    assert not io.output_exists(a / "ml" / "report")  # nothing a reader would take
    with pytest.raises(UserError, match="report directory"):  # absent, or not committed
        io.require_dir(a / "ml" / "report", "report")

    local = run_job(load_job(write_job(tmp_path / "local.toml", str(log), str(items),
                                       str(tmp_path / "local"))), threaded(), progress=False,
                    echo=lambda s: None)  # while run B goes on
    assert run_b.wait(timeout=240) == 0, run_b.stdout.read()
    assert tables(b) == tables(local.out) and temporaries(b) == []
    assert temporaries(a) == abandoned  # B cleaned only its own prefix
    for rel in (r for r in tables(local.out) if r.endswith(".parquet")):
        assert_same_table(rel, local.out, b)

    live = a / ".live.tmp-1-cafe"  # another run's live temporary under A's output
    io.write_json(live / LEASE, {"host": "another-host", "pid": 1, "started_unix": time.time(),
                                 "heartbeat_unix": time.time()})
    resumed = run_job(dataclasses.replace(load_job(job), out=a), threaded(), progress=False,
                      echo=lambda s: None)
    assert sorted(resumed.skipped) == sorted(f"ml/{json.loads(text)['stage']}"
                                             for text in committed.values())
    assert {f.parent.name: f.read_text() for f in a.rglob("stage.json")
            if f.parent.name in committed} == committed  # complete stages not redone
    assert temporaries(a) == [live] and live.exists()
    assert tables(a) == tables(local.out)
