"""The example job files and the scheduled-run templates in jobs/ stay runnable."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from click.testing import CliRunner

from bigcos.cli import main
from bigcos.pipeline import load_job

JOBS = Path(__file__).resolve().parents[1] / "jobs"
BIGCOS = Path(sys.executable).with_name("bigcos")


def show(args: list[str]) -> dict:
    result = CliRunner().invoke(main, [*args, "--show"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_example_jobs_resolve(monkeypatch, tmp_path):
    assert show(["run", str(JOBS / "movielens-small.toml")])["datasets"][0]["name"] == \
        "ml-latest-small"
    sim = load_job(JOBS / "simulation-1m.toml").datasets[0].simulate
    assert (sim.n_users, sim.n_items) == (1_000_000, 100_000)
    (tmp_path / "ratings.parquet").write_bytes(b"")
    (tmp_path / "movies.parquet").write_bytes(b"")
    monkeypatch.setenv("BIGCOS_ML20M", str(tmp_path))
    assert load_job(JOBS / "movielens-20m.toml").datasets[0].log == tmp_path / "ratings.parquet"


def test_cron_template_runs_bigcos_and_skips_when_locked(tmp_path):
    venv = tmp_path / "venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "bigcos").symlink_to(BIGCOS)
    env = {**os.environ, "BIGCOS_VENV": str(venv.parent), "BIGCOS_LOG_DIR": str(tmp_path / "l")}
    cmd = ["bash", str(JOBS / "templates" / "cron.sh"), str(JOBS / "movielens-small.toml"),
           "--show"]
    subprocess.run(cmd, env=env, check=True, timeout=120)
    logs = list((tmp_path / "l").glob("*.log"))
    assert len(logs) == 1 and '"movielens-small"' in logs[0].read_text()
    with open(tmp_path / "l" / ".lock", "w") as lock:  # a run still going holds the lock
        holder = subprocess.Popen(["flock", str(tmp_path / "l" / ".lock"), "sleep", "30"])
        try:
            import time

            time.sleep(0.5)
            res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
        finally:
            holder.kill()
        lock.close()
    assert res.returncode == 0 and "still holds" in res.stderr


def test_slurm_template_builds_a_valid_bigcos_command():
    spec = importlib.util.spec_from_file_location("slurm", JOBS / "templates" / "slurm.py")
    slurm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(slurm)
    command = slurm.bigcos_command(str(JOBS / "movielens-small.toml"), "tcp://10.0.0.1:8786")
    out = subprocess.run([*command, "--show"], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout)["name"] == "movielens-small"


def test_kubernetes_template_creates_a_daskjob_running_bigcos():
    docs = list(yaml.safe_load_all((JOBS / "templates" / "kubernetes-cronjob.yaml").read_text()))
    kinds = [d["kind"] for d in docs]
    assert kinds == ["CronJob", "ConfigMap"]
    daskjob = yaml.safe_load(docs[1]["data"]["daskjob.yaml"])
    assert daskjob["kind"] == "DaskJob"
    args = daskjob["spec"]["job"]["spec"]["containers"][0]["args"]
    assert args[:2] == ["bigcos", "run"]
    resolved = show([*args[1:2], str(JOBS / "movielens-small.toml"), *args[3:]])
    assert resolved["name"] == "movielens-small"


def test_small_example_jobs_run_on_threads_and_large_ones_get_a_cluster():
    from bigcos.cluster import THREADS_MAX_INTERACTIONS, ClusterOptions, wants_cluster
    from bigcos.pipeline import estimated_interactions

    small = estimated_interactions(load_job(JOBS / "movielens-small.toml"))
    assert small == 100_836  # the bundled log's rows, from the Parquet metadata
    default = estimated_interactions(load_job(None))
    # 1.7 M expected of the 5,000-user simulation (the paper's 20,000 users: 6.8 M)
    assert 1_500_000 < default < 2_000_000 < THREADS_MAX_INTERACTIONS
    paper = estimated_interactions(load_job(JOBS / "simulation-paper.toml"))
    assert 6_000_000 < paper < THREADS_MAX_INTERACTIONS
    assert not wants_cluster(ClusterOptions(), paper)
    assert not wants_cluster(ClusterOptions(), default)
    assert wants_cluster(ClusterOptions(workers=2), small)
    assert wants_cluster(ClusterOptions(scheduler="tcp://127.0.0.1:8786"), small)
    big = load_job(JOBS / "simulation-1m.toml")
    assert wants_cluster(ClusterOptions(), estimated_interactions(big))
