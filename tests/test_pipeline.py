"""`bigcos run`: job files, resumable stages, real Dask clusters (local and remote processes)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from bigcos import stages
from bigcos.cli import main
from bigcos.cluster import ClusterOptions
from bigcos.errors import UserError
from bigcos.io import LEASE, LEASE_TIMEOUT_S, atomic_output_dir, remove_stale_temporaries
from bigcos.pipeline import load_job, plan, run_job
from tests.conftest import stop_processes

ROOT = Path(__file__).resolve().parents[1]
DASK = Path(sys.executable).with_name("dask")

TINY_JOB = """
[job]
name = "tiny"
out = "out"

[fit]
k = 8
random_d = 2
remedies = ["popularity"]
als_iterations = 2
cosine_iterations = 3

[neighbors]
kinds = ["item-item", "user-item"]
n = 5

[report]
depth = 5

[[dataset]]
name = "sim"
simulate = { n_users = 600, n_items = 80, n_clusters = 3, max_items = 40, block_users = 200 }
ingest = { split = "users", heldout_users = 0.2 }
fit = { lam1 = 50.0, lam2 = 2.0 }   # fixed: the validated path runs on ml below

[[dataset]]
name = "ml"
log = "LOG"
items = "ITEMS"
ingest = { threshold = 4.0, min_user = 20, min_item = 20 }
fit = { k = 6 }
"""


def write_job(tmp: Path, text: str = TINY_JOB) -> Path:
    data = ROOT / "data" / "ml-latest-small"
    job = tmp / "job.toml"
    job.write_text(text.replace("LOG", str(data / "interactions.parquet"))
                   .replace("ITEMS", str(data / "items.parquet")))
    return job


def tables(out: Path) -> dict[str, str]:
    """sha256 of every Parquet/npz output (manifests hold timings, so they are left out)."""
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.suffix in (".parquet", ".npz")
            and "svd-cache" not in p.parts}


def threaded() -> ClusterOptions:
    return ClusterOptions(workers=1, threads_per_worker=2, processes=False)


# --------------------------------------------------------------------------- job files
@pytest.mark.parametrize("text, needle", [
    ("[job]\nnme = 'x'\n", "[job] unknown key 'nme'"),
    ("[fit]\nk = 'ten'\n[[dataset]]\nname='a'\nlog='LOG'\n", "[fit].k: expected an integer"),
    ("[fit]\nscalings = ['sigma', 'bogus']\n[[dataset]]\nname='a'\nlog='LOG'\n",
     "unknown scaling 'bogus'"),
    ("[neighbors]\nkinds = ['item-user']\n[[dataset]]\nname='a'\nlog='LOG'\n",
     "[neighbors].kinds[0]: 'item-user' is not one of"),
    ("[[dataset]]\nname = 'a'\nlog = 'missing.parquet'\n", "missing.parquet does not exist"),
    ("[[dataset]]\nname = 'a'\n", "give either log or simulate"),
    ("[[dataset]]\nname = 'a'\nsimulate = { users = 5 }\n", "simulate: unknown key 'users'"),
    ("[[dataset]]\nname = 'a'\nlog = 'LOG'\ningest = { threshold = 'high' }\n",
     "ingest.threshold: expected a number"),
    ("[[dataset]]\nname='a'\nlog='LOG'\n[[dataset]]\nname='a'\nlog='LOG'\n", "used twice"),
    ("[sparkle]\n", "unknown section [sparkle]"),
    ("[job\n", "not valid TOML"),
])
def test_bad_job_files_fail_before_any_work(tmp_path, text, needle):
    job = write_job(tmp_path, text)
    result = CliRunner().invoke(main, ["run", str(job), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert needle in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert not (tmp_path / "o").exists()


def test_default_job_and_example_jobs_validate():
    job = load_job(None)
    assert [d.name for d in job.datasets] == ["ml-latest-small", "simulation"]
    sim = job.datasets[1]
    assert (sim.simulate.n_users, sim.simulate.n_items) == (5_000, 1_000)
    assert (sim.fit.k, sim.fit.lam1, sim.fit.lam2) == (50, None, None)  # validated λ
    checked = 0
    for path in sorted((ROOT / "jobs").glob("*.toml")):
        text = path.read_text()
        if "user-supplied" in text or "shared/data" in text:
            continue  # data the user brings; the team's datasets: see the realdata test
        assert load_job(path).datasets, path
        checked += 1
    assert checked >= 2


def test_shared_data_jobs_validate(shared_data):
    jobs = [p for p in sorted((ROOT / "jobs").glob("*.toml")) if "shared/data" in p.read_text()]
    assert jobs
    for path in jobs:
        assert load_job(path).datasets, path


def test_every_stage_has_a_distinct_directory(tmp_path):
    stages = plan(load_job(write_job(tmp_path)))
    dirs = [s.directory for s in stages]
    assert len(set(dirs)) == len(dirs)
    assert [s.name for s in stages if s.dataset == "sim"] == [
        "simulate", "ingest", "fit-closed-form", "fit-popularity", "fit-als", "fit-cosine",
        "neighbors", "report"]


# --------------------------------------------------------------------------- runs
@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("local")
    job = load_job(write_job(tmp))
    result = run_job(job, threaded(), progress=False, echo=lambda s: None)
    return job, result


def test_run_writes_every_stage_and_a_report(local_run):
    job, result = local_run
    assert result.skipped == []
    assert len(result.ran) == len(plan(job))
    for report in result.reports:
        assert report.exists() and report.stat().st_size > 10_000
    assert (job.out / "dask-performance-report.html").exists()
    manifest = json.loads((job.out / "manifest.json").read_text())
    assert manifest["ran"] == result.ran and "versions" in manifest
    models = json.loads((job.out / "sim" / "models" / "closed-form" / "manifest.json")
                        .read_text())["models"]
    assert {"obj1-symmetric", "obj1-item-orthonormal", "obj2", "obj1-project-back"} <= set(models)


def test_rerun_skips_complete_stages_and_redoes_what_changed(local_run, tmp_path):
    job, first = local_run
    before = tables(job.out)
    again = run_job(job, threaded(), progress=False, echo=lambda s: None)
    assert again.ran == [] and again.skipped == first.ran
    assert tables(job.out) == before
    # changing N redoes only the neighbour lists and reports
    import dataclasses

    changed = dataclasses.replace(job, neighbors=dataclasses.replace(job.neighbors, n=4))
    third = run_job(changed, threaded(), progress=False, echo=lambda s: None)
    assert sorted(third.ran) == ["ml/neighbors", "ml/report", "sim/neighbors", "sim/report"]


def test_a_half_written_stage_is_redone(local_run):
    job, _ = local_run
    marker = job.out / "ml" / "neighbors" / "stage.json"
    marker.unlink()  # as if the process died after the rename and before the marker
    stale = fake_temporary(job.out / "ml", socket.gethostname(), dead_pid(), time.time())
    result = run_job(job, threaded(), progress=False, echo=lambda s: None)
    assert "ml/neighbors" in result.ran and "ml/ingest" in result.skipped
    assert not stale.exists()


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def fake_temporary(parent: Path, host: str, pid: int, heartbeat: float) -> Path:
    """A temporary output directory as atomic_output_dir leaves it, with the given lease."""
    tmp = parent / f".report.tmp-{pid}-deadbeef"
    tmp.mkdir(parents=True)
    (tmp / "part.parquet").write_bytes(b"PAR1")
    (tmp / LEASE).write_text(json.dumps({"host": host, "pid": pid, "started_unix": heartbeat,
                                         "heartbeat_unix": heartbeat}))
    return tmp


def test_stale_temporaries_are_removed_by_lease_and_never_a_live_one(tmp_path):
    now = time.time()
    other_live = fake_temporary(tmp_path / "a", "another-host", os.getpid() + 1, now - 60)
    other_dead = fake_temporary(tmp_path / "b", "another-host", os.getpid() + 1,
                                now - LEASE_TIMEOUT_S - 60)
    here_dead = fake_temporary(tmp_path / "c", socket.gethostname(), dead_pid(), now)
    here_live = fake_temporary(tmp_path / "d", socket.gethostname(), os.getpid(), now)
    removed = remove_stale_temporaries(tmp_path)
    assert sorted(removed) == sorted([other_dead, here_dead])
    assert other_live.exists() and here_live.exists()
    assert not other_dead.exists() and not here_dead.exists()


def test_a_running_stage_keeps_its_lease_fresh(tmp_path):
    from bigcos.io import _Lease

    with atomic_output_dir(tmp_path / "out") as tmp:
        lease = json.loads((tmp / LEASE).read_text())
        assert lease["host"] == socket.gethostname() and lease["pid"] == os.getpid()
        assert remove_stale_temporaries(tmp_path) == []
        first = lease["heartbeat_unix"]
    assert not (tmp_path / "out" / LEASE).exists()  # the lease is not part of the output
    beating = _Lease(tmp_path / "lease.json", interval=0.05)
    time.sleep(0.3)
    beating.stop()
    assert json.loads((tmp_path / "lease.json").read_text())["heartbeat_unix"] > first


def test_a_changed_algorithm_version_redoes_that_stage_and_what_reads_it(local_run,
                                                                         monkeypatch):
    job, first = local_run
    run_job(job, threaded(), progress=False, echo=lambda s: None)  # all complete
    monkeypatch.setitem(stages.ALGORITHM_VERSIONS, "neighbors",
                        stages.ALGORITHM_VERSIONS["neighbors"] + 1)
    result = run_job(job, threaded(), progress=False, echo=lambda s: None)
    assert sorted(result.ran) == ["ml/neighbors", "ml/report", "sim/neighbors", "sim/report"]
    assert len(result.skipped) == len(first.ran) - 4
    monkeypatch.setitem(stages.ALGORITHM_VERSIONS, "fit-als", 99)
    result = run_job(job, threaded(), progress=False, echo=lambda s: None)
    assert sorted(result.ran) == ["ml/fit-als", "ml/neighbors", "ml/report", "sim/fit-als",
                                  "sim/neighbors", "sim/report"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def remote_cluster(tmp_path):
    """A real `dask scheduler` and two `dask worker` processes on 127.0.0.1."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([str(DASK), "scheduler", "--host", "127.0.0.1", "--port",
                               str(port), "--dashboard-address", ":0", "--no-show"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)]
    time.sleep(1.5)
    for i in range(2):
        procs.append(subprocess.Popen(
            [str(DASK), "worker", address, "--nthreads", "1", "--nworkers", "1",
             "--host", "127.0.0.1", "--dashboard-address", ":0", "--name", f"w{i}",
             "--local-directory", str(tmp_path / f"w{i}")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env))
    from distributed import Client

    with Client(address, timeout="30s") as client:
        client.wait_for_workers(2, timeout=60)
    yield address, procs
    stop_processes(procs)


@pytest.mark.cluster
def test_remote_scheduler_gives_byte_identical_tables(local_run, remote_cluster, tmp_path):
    job, _ = local_run
    address, _ = remote_cluster
    out = tmp_path / "remote"
    result = CliRunner().invoke(main, ["run", str(job.source), "--out", str(out),
                                       "--scheduler", address, "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "Dask dashboard:" in result.output and "report:" in result.output
    assert tables(out) == tables(job.out)


@pytest.mark.cluster
def test_a_killed_worker_does_not_change_the_result(local_run, remote_cluster, tmp_path):
    job, _ = local_run
    address, procs = remote_cluster
    out = tmp_path / "killed"
    run = subprocess.Popen([sys.executable, "-m", "bigcos", "run", str(job.source), "--out",
                            str(out), "--scheduler", address, "--no-progress"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not (out / "sim" / "matrix" / "stage.json").exists():
        assert run.poll() is None and time.time() < deadline, run.stdout.read()
        time.sleep(0.05)
    procs[2].kill()  # one of the two workers, mid-run
    output, _ = run.communicate(timeout=300)
    assert run.returncode == 0, output
    assert tables(out) == tables(job.out)


def _default_sigint() -> None:
    """In the child before exec: SIGINT as a terminal's foreground job has it. A test run
    started in the background by a non-interactive shell (``ci &``) inherits SIGINT ignored,
    and Python keeps an inherited SIG_IGN, so the child would never see the Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_interrupted_run_resumes_without_redoing_complete_stages(local_run, tmp_path):
    job, _ = local_run
    out = tmp_path / "interrupted"
    cmd = [sys.executable, "-m", "bigcos", "run", str(job.source), "--out", str(out),
           "--workers", "1", "--threads-per-worker", "2", "--no-progress"]
    run = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           preexec_fn=_default_sigint)
    marker = out / "sim" / "models" / "closed-form" / "stage.json"
    deadline = time.time() + 120
    while not marker.exists():
        assert run.poll() is None and time.time() < deadline, run.stdout.read()
        time.sleep(0.02)
    run.send_signal(signal.SIGINT)
    run.communicate(timeout=60)
    assert run.returncode != 0
    done = {p.parent for p in out.rglob("stage.json")}
    stamps = {d: (d / "stage.json").read_text() for d in done}
    assert out / "sim" / "matrix" in done
    resumed = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    for d, stamp in stamps.items():  # complete stages were not redone
        assert (d / "stage.json").read_text() == stamp
    assert not list(out.rglob(".*.tmp-*"))
    assert tables(out) == tables(job.out)


def test_unknown_scheduler_is_a_clear_error(tmp_path):
    job = load_job(write_job(tmp_path))
    with pytest.raises(UserError, match="cannot reach Dask scheduler"):
        run_job(job, ClusterOptions(scheduler=f"tcp://127.0.0.1:{free_port()}"),
                progress=False, echo=lambda s: None)


def test_full_disk_mid_stage_leaves_no_partial_stage_and_resumes(local_run, tmp_path, monkeypatch):
    import dataclasses
    import errno

    job, _ = local_run
    job = dataclasses.replace(job, out=tmp_path / "disk")
    import bigcos.reports.schema

    real = bigcos.reports.schema.write_tables

    def full_disk(directory, tables_):
        (directory / "agreement.parquet").write_bytes(b"PAR1 half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(bigcos.reports.schema, "write_tables", full_disk)
    with pytest.raises(OSError, match="No space left"):
        run_job(job, threaded(), progress=False, echo=lambda s: None)
    assert not (job.out / "sim" / "report").exists()  # nothing half-written is visible
    assert not list(job.out.rglob(".*.tmp-*"))
    monkeypatch.setattr(bigcos.reports.schema, "write_tables", real)
    resumed = run_job(job, threaded(), progress=False, echo=lambda s: None)
    assert resumed.ran[0] == "sim/report" and "sim/neighbors" in resumed.skipped


def test_readme_findings_script_reads_the_run_outputs(local_run):
    """jobs/readme_findings.py turns `bigcos run` outputs into the README's findings rows."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("readme_findings",
                                                  ROOT / "jobs" / "readme_findings.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    job, _ = local_run
    line, quoted = script.row(job.out / "sim")
    cells = [c.strip() for c in line.strip("|").split("|")]
    counts = json.loads((job.out / "sim" / "matrix" / "manifest.json").read_text())["counts"]
    assert cells[0] == "sim" and cells[1].startswith(f"{counts['users']:,} × {counts['items']:,}")
    assert cells[2] == "1.000"          # user-item by dot: the same lists under every D
    import pandas as pd

    held = pd.read_parquet(job.out / "sim" / "report" / "heldout.parquet")
    dot = held[(held.metric == "dot") & (held.model == "obj1-symmetric")].recall_at_20.iloc[0]
    assert cells[5] == f"{dot:.3f}"
    assert "obj1-symmetric" in quoted["auc_cos_by_model"]
    assert cells[7].endswith("(cluster)")
    assert not any(m.endswith(("-std", "-pop0.75", "project-back"))
                   for m in quoted["auc_cos_by_model"])


# --------------------------------------------------------------------------- validation
@pytest.mark.parametrize("fit, needle", [
    ("k = 5000\nrandom_d = 2",
     "[[dataset]] sim: fit.k = 5000 is larger than the number of items p = 80"),
    ("k = 8\nrandom_d = 2\nlam1 = -1.0", "fit.lam1: must be finite and >= 0, got -1.0"),
    ("k = 8\nrandom_d = 2\nals_factors = 0", "fit.als_factors: must be >= 1, got 0"),
    ("k = 8\nscalings = []\nrandom_d = 0\nobjective2 = false\nproject_back = false",
     "no closed-form model left"),
])
def test_invalid_fit_settings_fail_before_any_work(tmp_path, fit, needle):
    job = write_job(tmp_path, TINY_JOB.replace("[fit]\nk = 8\nrandom_d = 2", f"[fit]\n{fit}")
                    .replace("fit = { k = 6 }", "")
                    .replace("fit = { lam1 = 50.0, lam2 = 2.0 }", ""))
    result = CliRunner().invoke(main, ["run", str(job), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and needle in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_k_larger_than_the_ingested_items_fails_at_the_fit_stage(tmp_path):
    """Only the data knows p for a log: the fit stage fails first, in one line."""
    text = TINY_JOB[:TINY_JOB.index("[[dataset]]\nname = \"sim\"")] + \
        TINY_JOB[TINY_JOB.index("[[dataset]]\nname = \"ml\""):]
    job = write_job(tmp_path, text.replace("k = 6 }", "k = 5000 }"))
    result = CliRunner().invoke(main, ["run", str(job), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("Error: dataset ml: fit.k = 5000 is larger than the number of "
                           "users n = 379"), result.output  # min(n, p): randomised SVD
    assert "Traceback" not in result.output
    assert (tmp_path / "o" / "ml" / "matrix" / "stage.json").exists()
    assert not (tmp_path / "o" / "ml" / "models").exists()


# --------------------------------------------------------------------------- placement, output
def test_a_small_job_runs_on_threads_with_one_line_per_stage(local_run, tmp_path):
    job, _ = local_run
    args = ["run", str(job.source), "--out", str(job.out)]
    first = CliRunner().invoke(main, args)  # redoes what earlier tests changed
    assert first.exit_code == 0, first.output
    assert all(x.endswith(("skipped (complete)", " s")) for x in
               first.output.strip().splitlines()[:len(plan(job))]), first.output
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert "Dask dashboard" not in result.output  # no cluster for a job this small
    assert lines[0] == "sim/simulate skipped (complete)"
    assert len([x for x in lines if x.endswith("skipped (complete)")]) == len(plan(job))
    manifest = json.loads((job.out / "manifest.json").read_text())
    assert manifest["parameters"]["scheduler"] == "threads"


@pytest.mark.parametrize("placement", [[], ["--workers", "2"]], ids=["threads", "cluster"])
def test_ctrl_c_in_a_terminal_prints_one_line_and_exits_130_then_resumes(local_run, tmp_path,
                                                                         placement):
    """Ctrl-C signals the terminal's whole process group, LocalCluster workers included."""
    import pty

    job, _ = local_run
    out = tmp_path / "ctrl-c"
    cmd = [sys.executable, "-m", "bigcos", "run", str(job.source), "--out", str(out),
           *placement]
    pid, fd = pty.fork()
    if pid == 0:  # the child: `bigcos run` on the pty, as in a terminal
        _default_sigint()
        os.execv(sys.executable, cmd)
    output = b""
    deadline = time.time() + 120
    first = out / "sim" / "simulation" / "stage.json"
    while not first.exists():
        assert time.time() < deadline
        time.sleep(0.02)
    os.write(fd, b"\x03")  # Ctrl-C: the terminal sends SIGINT to the foreground group
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
    _, status = os.waitpid(pid, 0)
    text = output.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 130, text
    # what the terminal shows: each line as left after its last carriage return
    lines = [x.rstrip("\r").split("\r")[-1].replace("\x1b[K", "").strip()
             for x in text.split("\n")]
    lines = [x for x in lines if x and not x.startswith("Dask dashboard: ")]
    assert lines == ["interrupted; completed stages are kept, re-run to resume"], text
    assert "bigcos run [" in text  # the progress line was drawn
    done = {p.parent: p.read_text() for p in out.rglob("stage.json")}
    assert out / "sim" / "simulation" in done
    resumed = subprocess.run(cmd + ["--no-progress"], capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    for d, stamp in done.items():
        assert (d / "stage.json").read_text() == stamp
        label = f"{d.relative_to(out).parts[0]}/"
        assert label in resumed.stdout
    assert "sim/simulate skipped (complete)" in resumed.stdout
    assert tables(out) == tables(job.out)


def test_independent_stages_run_side_by_side_in_processes_with_the_same_tables(local_run,
                                                                              tmp_path):
    """On threads, stages that do not depend on each other run at once, each in a worker
    process of its own: the stages of the two datasets overlap in time, the manifest says how
    many ran at once, and the tables are those of one stage after the other."""
    job, _ = local_run
    runs = {}
    for n in (2, 1):
        out = tmp_path / f"p{n}"
        result = CliRunner().invoke(main, ["run", str(job.source), "--out", str(out),
                                           "--parallel-stages", str(n)])
        assert result.exit_code == 0, result.output
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["parameters"]["parallel_stages"] == n
        assert manifest["parameters"]["scheduler"] == "threads"
        done = {json.loads(p.read_text())["dataset"] + "/" + json.loads(p.read_text())["stage"]:
                json.loads(p.read_text()) for p in out.rglob("stage.json")}
        assert len(done) == len(plan(job))
        runs[n] = out, done
    _, side = runs[2]
    # finished: completed_unix; started: finished - seconds. With two processes some stage of
    # one dataset starts before the other dataset's last stage has finished, and vice versa.
    spans = {label: (s["completed_unix"] - s["seconds"], s["completed_unix"])
             for label, s in side.items()}
    ml = [v for k, v in spans.items() if k.startswith("ml/")]
    sim = [v for k, v in spans.items() if k.startswith("sim/")]
    assert min(a for a, _ in ml) < max(b for _, b in sim)
    assert min(a for a, _ in sim) < max(b for _, b in ml)
    assert tables(runs[2][0]) == tables(runs[1][0]) == tables(job.out)
    with pytest.raises(UserError, match="parallel_stages: must be >= 1"):
        ClusterOptions(parallel_stages=0)
