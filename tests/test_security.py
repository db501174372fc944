"""Secure clusters, no secrets in outputs, the container image (issue 16, points 3 to 5).

One small job (the bundled MovieLens log, strong filters, few models) runs twice, on threads
and on a real TLS cluster (`dask scheduler` + two `dask worker` processes with a CA and
certificates made here by the `openssl` command). Its log path holds a secret expanded from the
environment by the job file, and its command line a second one; every byte either run writes
is searched for both.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from bigcos.cli import main
from bigcos.cluster import ClusterOptions, dask_client
from bigcos.errors import UserError
from bigcos.pipeline import load_job
from bigcos.redaction import MASK, expandvars, redact, redact_argv, redact_text
from tests.conftest import stop_processes

ROOT = Path(__file__).resolve().parents[1]
DASK = Path(sys.executable).with_name("dask")
TEMPLATES = ROOT / "jobs" / "templates"

SECRET_JOB = """
[job]
name = "planted"

[fit]
k = 6
scalings = ["sigma"]
random_d = 0
project_back = false
remedies = []
als = false
cosine = false

[neighbors]
n = 5

[report]
depth = 5
n_resamples = 50
auc_pairs = 2000
n_examples = 1

[[dataset]]
name = "ml"
log = "in/${BIGCOS_TEST_API_TOKEN}/interactions.parquet"
items = "in/${BIGCOS_TEST_API_TOKEN}/items.parquet"
ingest = { threshold = 4.0, min_user = 20, min_item = 20 }
"""


@dataclass
class Planted:
    root: Path
    env: dict[str, str]
    token: str  # reaches bigcos through the job file's ${BIGCOS_TEST_API_TOKEN}
    password: str  # reaches bigcos on its command line (as a shell expands a variable)

    @property
    def job(self) -> Path:
        return self.root / "job.toml"


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Planted:
    root = tmp_path_factory.mktemp("planted")
    token, password = f"tok{secrets.token_hex(8)}", f"pw{secrets.token_hex(8)}"
    data = root / "in" / token
    data.mkdir(parents=True)
    for name in ("interactions.parquet", "items.parquet"):
        shutil.copy(ROOT / "data" / "ml-latest-small" / name, data / name)
    (root / "job.toml").write_text(SECRET_JOB)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "BIGCOS_TEST_API_TOKEN": token,
           "BIGCOS_TEST_DB_PASSWORD": password}
    return Planted(root, env, token, password)


def run_cli(planted: Planted, out: Path, *extra: str) -> subprocess.CompletedProcess:
    """`bigcos -v run` as a user would type it; its stdout and stderr are kept in ``out``."""
    cmd = [sys.executable, "-m", "bigcos", "-v", "run", str(planted.job), "--out", str(out),
           "--no-progress", "--spill-dir", str(planted.root / f"spill-{planted.password}"),
           *extra]
    done = subprocess.run(cmd, env=planted.env, capture_output=True, text=True, timeout=300)
    out.mkdir(parents=True, exist_ok=True)
    (out / "stdout.txt").write_text(done.stdout)
    (out / "stderr.txt").write_text(done.stderr)
    return done


def tables(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.suffix in (".parquet", ".npz")
            and "svd-cache" not in p.parts}


@pytest.fixture(scope="module")
def threads_run(planted):
    out = planted.root / "threads"
    done = run_cli(planted, out)
    assert done.returncode == 0, done.stdout + done.stderr
    return out


# --------------------------------------------------------------------------- TLS cluster
def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and one certificate + key it signed, for 127.0.0.1 (server and client use)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("no `openssl` command to make a test CA and certificates")
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = directory / "ca.pem", directory / "ca.key"
    cert, key, csr = directory / "node.pem", directory / "node.key", directory / "node.csr"
    ext = directory / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
                   "keyUsage=digitalSignature,keyEncipherment\n"
                   "extendedKeyUsage=serverAuth,clientAuth\n"
                   "authorityKeyIdentifier=keyid,issuer\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for args in (["req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "2",
                  "-subj", "/CN=bigcos test CA"],
                 ["req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"],
                 ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
                  "-out", cert, "-days", "2", "-extfile", ext]):
        subprocess.run([openssl, *map(str, args)], check=True, capture_output=True, timeout=30)
    return ca, cert, key


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class TLSCluster:
    address: str
    ca: Path
    cert: Path
    key: Path

    def flags(self) -> list[str]:
        return ["--tls-ca-file", str(self.ca), "--tls-cert", str(self.cert),
                "--tls-key", str(self.key)]


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory):
    """A `dask scheduler` and two `dask worker` processes on 127.0.0.1, tls:// only."""
    root = tmp_path_factory.mktemp("tls")
    ca, cert, key = make_certificates(root / "certs")
    port = free_port()
    address = f"tls://127.0.0.1:{port}"
    cluster = TLSCluster(address, ca, cert, key)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": env}
    procs = [subprocess.Popen([str(DASK), "scheduler", "--protocol", "tls", "--host",
                               "127.0.0.1", "--port", str(port), *cluster.flags(),
                               "--dashboard-address", "127.0.0.1:0", "--no-show"], **quiet)]
    for i in range(2):
        procs.append(subprocess.Popen(
            [str(DASK), "worker", address, *cluster.flags(), "--nthreads", "1",
             "--host", "127.0.0.1", "--dashboard-address", "127.0.0.1:0", "--name", f"w{i}",
             "--local-directory", str(root / f"w{i}")], **quiet))
    try:
        options = ClusterOptions(scheduler=address, tls_ca_file=str(ca), tls_cert=str(cert),
                                 tls_key=str(key))
        deadline = time.time() + 60
        while True:  # the scheduler takes a moment to listen
            try:
                with dask_client(options) as client:
                    client.wait_for_workers(2, timeout=60)
                break
            except UserError:
                if time.time() > deadline:
                    raise
                time.sleep(0.5)
        yield cluster
    finally:
        stop_processes(procs)


@pytest.fixture(scope="module")
def tls_run(planted, tls_cluster):
    out = planted.root / "tls"
    done = run_cli(planted, out, "--scheduler", tls_cluster.address, *tls_cluster.flags())
    assert done.returncode == 0, done.stdout + done.stderr
    return out


@pytest.mark.cluster
def test_a_tls_cluster_gives_the_threads_tables(threads_run, tls_run):
    assert "Dask dashboard:" in (tls_run / "stdout.txt").read_text()
    assert (tls_run / "dask-performance-report.html").stat().st_size > 0
    found = tables(tls_run)
    assert any(name.startswith("ml/neighbors/") for name in found)
    assert found == tables(threads_run)


@pytest.mark.cluster
def test_tls_files_from_the_job_file_and_from_dask_config(tls_cluster, tmp_path):
    import dask.config

    # the job file's [dask] section, its paths relative to the job file
    certs = tls_cluster.ca.parent
    job = certs / "job.toml"
    job.write_text(f'[dask]\nscheduler = "{tls_cluster.address}"\ntls_ca_file = "ca.pem"\n'
                   'tls_cert = "node.pem"\ntls_key = "node.key"\n'
                   f'[[dataset]]\nname = "d"\nlog = "{ROOT}/data/ml-latest-small/items.parquet"\n')
    options = load_job(job).dask
    assert options.tls_ca_file == str(tls_cluster.ca)
    with dask_client(options) as client:
        assert client.submit(sum, [1, 2]).result() == 3
    # Dask's own config, under the names the Kubernetes template sets
    env = _template_tls_env({"/etc/dask-tls/ca.pem": tls_cluster.ca,
                             "/etc/dask-tls/tls.pem": tls_cluster.cert,
                             "/etc/dask-tls/tls.key": tls_cluster.key})
    with dask.config.set(_dotted(dask.config.collect_env(env))), \
            dask_client(ClusterOptions(scheduler=tls_cluster.address)) as client:
        assert client.submit(sum, [3, 4]).result() == 7


def _dotted(tree: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (dask.config.set replaces whole sub-trees)."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_dotted(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _template_tls_env(paths: dict[str, Path]) -> dict[str, str]:
    docs = list(yaml.safe_load_all((TEMPLATES / "kubernetes-cronjob.yaml").read_text()))
    daskjob = yaml.safe_load(docs[1]["data"]["daskjob.yaml"])
    env = daskjob["spec"]["job"]["spec"]["containers"][0]["env"]
    assert {e["name"] for e in env} >= {"DASK_DISTRIBUTED__COMM__TLS__CA_FILE",
                                        "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT",
                                        "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY"}
    return {e["name"]: str(paths.get(e["value"], e["value"])) for e in env}


@pytest.mark.cluster
def test_a_plain_tcp_client_is_refused_in_one_line(planted, tls_cluster, tmp_path):
    plain = tls_cluster.address.replace("tls://", "tcp://")
    done = subprocess.run([sys.executable, "-m", "bigcos", "run", str(planted.job), "--out",
                           str(tmp_path / "o"), "--scheduler", plain, "--no-progress"],
                          env=planted.env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith(f"Error: cannot reach Dask scheduler at {plain}: ")
    assert "needs a tls:// address" in lines[0]
    assert not list((tmp_path / "o").rglob("*.parquet"))


@pytest.mark.parametrize("extra, needle", [
    ([], "tls_ca_file: the scheduler tls://127.0.0.1:1 needs a CA certificate"),
    (["--tls-ca-file", "CA"], "tls_cert: the scheduler tls://127.0.0.1:1 needs"),
])
def test_a_tls_scheduler_without_certificates_is_a_one_line_error(planted, tmp_path, extra,
                                                                   needle, monkeypatch):
    import dask.config

    monkeypatch.setenv("BIGCOS_TEST_API_TOKEN", planted.token)
    (tmp_path / "CA").write_text("")
    monkeypatch.chdir(tmp_path)
    with dask.config.set({"distributed.comm.tls.ca-file": None,
                          "distributed.comm.tls.client.cert": None}):
        result = CliRunner().invoke(main, ["run", str(planted.job), "--out", "o",
                                           "--scheduler", "tls://127.0.0.1:1", *extra])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert needle in result.output and len(result.output.strip().splitlines()) == 1


def test_tls_files_need_a_tls_address_and_must_exist(tmp_path):
    with pytest.raises(UserError, match="tls_ca_file: TLS files need a tls:// scheduler"):
        ClusterOptions(scheduler="tcp://10.0.0.1:8786", tls_ca_file="ca.pem")
    job = tmp_path / "job.toml"
    job.write_text('[dask]\ntls_key = "nowhere.key"\n'
                   f'[[dataset]]\nname = "d"\nlog = "{ROOT}/data/ml-latest-small/items.parquet"\n')
    result = CliRunner().invoke(main, ["run", str(job), "--show"])
    assert result.exit_code == 1
    assert "[dask] tls_key: " in result.output and "nowhere.key does not exist" in result.output


# --------------------------------------------------------------------------- dashboard
def _listening(ports: set[int]) -> list[tuple[str, int]]:
    """(address, port) of every socket on ``ports`` that this process or a child listens on."""
    import psutil

    me = psutil.Process()
    return [(c.laddr.ip, c.laddr.port) for p in [me, *me.children(recursive=True)]
            for c in p.net_connections("inet")
            if c.status == psutil.CONN_LISTEN and c.laddr.port in ports]


def test_the_local_cluster_listens_on_localhost_only_unless_told(tmp_path):
    from urllib.parse import urlparse

    with dask_client(ClusterOptions(workers=1, spill_dir=str(tmp_path))) as client:
        scheduler = client.cluster.scheduler
        assert scheduler.address.startswith("tcp://127.0.0.1:")
        dashboard = scheduler.http_server.port
        assert urlparse(client.dashboard_link).hostname == "127.0.0.1"
        workers = {urlparse(a).port for a in client.scheduler_info()["workers"]}
        nannies = {urlparse(w.address).port for w in client.cluster.workers.values()}
        ports = {scheduler.port, dashboard, *workers, *nannies}
        sockets = _listening(ports)
        assert {port for _, port in sockets} == ports and len(ports) == 4
        assert {host for host, _ in sockets} == {"127.0.0.1"}, sockets
    # --dashboard-address widens it (threads: the scheduler itself is in-process)
    options = ClusterOptions(workers=1, processes=False, dashboard_address=":0")
    with dask_client(options) as client:
        dashboard = client.cluster.scheduler.http_server.port
        assert {host for host, _ in _listening({dashboard})} & {"0.0.0.0", "::"}


def test_new_cluster_options_agree_in_help_show_and_the_dataclass(tmp_path):
    from tests.test_options import _help_defaults

    defaults = ClusterOptions()
    assert defaults.dashboard_address == "127.0.0.1:0"
    for command in (["run"], ["fit"], ["neighbors"], ["simulate"]):
        shown = _help_defaults(command)
        assert shown["--dashboard-address"] == defaults.dashboard_address, command
        text = CliRunner().invoke(main, [*command, "--help"]).output
        assert all(flag in text for flag in ("--tls-ca-file", "--tls-cert", "--tls-key"))
    (tmp_path / "ca.pem").write_text("")
    job = tmp_path / "job.toml"
    job.write_text('[dask]\ndashboard_address = ":8787"\ntls_ca_file = "ca.pem"\n'
                   f'[[dataset]]\nname = "d"\nlog = "{ROOT}/data/ml-latest-small/items.parquet"\n')
    import json

    shown = json.loads(CliRunner().invoke(main, ["run", str(job), "--show"]).output)["dask"]
    assert shown["dashboard_address"] == ":8787"
    assert shown["tls_ca_file"] == str(tmp_path / "ca.pem")
    assert shown["tls_key"] is None and shown["tls_cert"] is None


# --------------------------------------------------------------------------- secrets
def _readable_forms(path: Path) -> list[bytes]:
    """The file's bytes, and the decoded contents of compressed containers: Parquet pages are
    zstd-compressed (their values are searched as uncompressed Arrow IPC bytes, schema and
    metadata included), .npz members may be deflated."""
    forms = [path.read_bytes()]
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        forms.append(sink.getvalue().to_pybytes())
    elif path.suffix == ".npz":
        with zipfile.ZipFile(path) as z:
            forms += [z.read(name) for name in z.namelist()] + [repr(z.namelist()).encode()]
    return forms


def _hits(root: Path, needles: list[str]) -> list[str]:
    hits = []
    for path in sorted(root.rglob("*")):
        if any(n in str(path) for n in needles):
            hits.append(f"{path} (name)")
        if path.is_file():
            for form in _readable_forms(path):
                hits += [f"{path}: {n}" for n in needles if n.encode() in form]
    return hits


@pytest.mark.cluster
def test_no_secret_in_any_output(planted, threads_run, tls_run):
    import json

    needles = [planted.token, planted.password]
    for out in (threads_run, tls_run):
        files = [p for p in out.rglob("*") if p.is_file()]
        assert {".parquet", ".html", ".json", ".txt", ".npz"} <= {p.suffix for p in files}
        assert not _hits(out, needles)
        # the search does see into Parquet: a model's name inside its lambda-path table
        assert any(".parquet: obj1-sigma" in hit for hit in _hits(out / "ml", ["obj1-sigma"]))
        # the run used the real path (it read the log there) and recorded it redacted
        matrix = json.loads((out / "ml" / "matrix" / "manifest.json").read_text())
        assert matrix["counts"]["train_nnz"] > 0
        assert f"in/{MASK}/interactions.parquet" in json.dumps(matrix)
        run = json.loads((out / "manifest.json").read_text())
        assert str(planted.root / f"spill-{MASK}") in run["argv"]



def test_show_and_an_error_naming_a_secret_path_are_redacted(planted, monkeypatch):
    monkeypatch.setenv("BIGCOS_TEST_API_TOKEN", planted.token)
    shown = CliRunner().invoke(main, ["run", str(planted.job), "--show"])
    assert shown.exit_code == 0 and f"in/{MASK}/items.parquet" in shown.output
    assert planted.token not in shown.output
    monkeypatch.setenv("BIGCOS_TEST_API_TOKEN", planted.token + "x")  # no such directory
    result = CliRunner().invoke(main, ["run", str(planted.job), "--show"])
    assert result.exit_code == 1 and f"in/{MASK}/interactions.parquet" in result.output
    assert planted.token not in result.output


def test_urls_flags_and_what_is_not_a_secret(monkeypatch, tmp_path):
    monkeypatch.setenv("SERVICE_TOKEN", "t0ken-value-1")
    monkeypatch.setenv("SHORT_KEY", "abc")  # too short to mask without garbling text
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path))  # where, not what
    monkeypatch.setenv("PLAIN", "t0ken-value-2")  # not a secret's name
    assert redact_text("a/t0ken-value-1/b abc t0ken-value-2") == \
        f"a/{MASK}/b abc t0ken-value-2"
    assert redact_text(str(tmp_path / "x")) == str(tmp_path / "x")
    assert redact_text("s3://AKIA:wJalr%2Fx@bucket/k.parquet https://h:8786/a@b") == \
        f"s3://AKIA:{MASK}@bucket/k.parquet https://h:8786/a@b"
    assert redact_text("https://acct.blob/c?sv=1&sig=abc%2F&X-Amz-Security-Token=zz#f") == \
        f"https://acct.blob/c?sv=1&sig={MASK}&X-Amz-Security-Token={MASK}#f"
    assert redact_argv(["bigcos", "--api-token", "v1", "--db-password=v2", "--workers", "2",
                        "--spill-dir", "/s/t0ken-value-1"]) == \
        ["bigcos", "--api-token", MASK, f"--db-password={MASK}", "--workers", "2",
         "--spill-dir", f"/s/{MASK}"]
    assert redact({"key": "abc123def", "p": ["x:t0ken-value-1"], "n": 3}) == \
        {"key": "abc123def", "p": [f"x:{MASK}"], "n": 3}  # field names are not secrets
    # a job file's expansion is remembered even if the environment changes afterwards
    monkeypatch.setenv("LATER_SECRET", "expanded-once")
    assert expandvars("/d/${LATER_SECRET}/f") == "/d/expanded-once/f"
    monkeypatch.delenv("LATER_SECRET")
    assert redact_text("/d/expanded-once/f") == f"/d/{MASK}/f"


# --------------------------------------------------------------------------- the image
def _dockerfile_image() -> str:
    match = re.search(r"docker build -t (\S+) \.", (ROOT / "Dockerfile").read_text())
    assert match, "the Dockerfile's header names the image it builds"
    return match.group(1)


def test_the_kubernetes_template_runs_the_dockerfile_image_installed_the_readme_way():
    image = _dockerfile_image()
    docs = list(yaml.safe_load_all((TEMPLATES / "kubernetes-cronjob.yaml").read_text()))
    daskjob = yaml.safe_load(docs[1]["data"]["daskjob.yaml"])
    pods = [daskjob["spec"]["job"]["spec"], daskjob["spec"]["cluster"]["spec"]["worker"]["spec"],
            daskjob["spec"]["cluster"]["spec"]["scheduler"]["spec"]]
    images = {c["image"] for pod in pods for c in pod["containers"]}
    assert images == {image}
    dockerfile = (ROOT / "Dockerfile").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "pip install ." in readme
    assert re.search(r"^RUN pip install -c constraints\.txt \.", dockerfile, re.M)
    # every runtime dependency of pyproject.toml is pinned, to a version it allows
    import tomllib

    from packaging.requirements import Requirement

    pins = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    for text in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]:
        requirement = Requirement(text)
        name = re.sub(r"[-_.]+", "-", requirement.name).lower()
        assert name in pins, name
        assert requirement.specifier.contains(pins[name]), (text, pins[name])


def _container_builder() -> list[str]:
    """A container builder that can build here, or skip (naming what was tried)."""
    tried = []
    for tool, probe in (("docker", ["info"]), ("podman", ["info"]), ("buildah", ["version"])):
        path = shutil.which(tool)
        if path is None:
            tried.append(f"{tool}: not installed")
            continue
        check = subprocess.run([path, *probe], capture_output=True, text=True, timeout=60)
        if check.returncode == 0:
            return [path, "bud"] if tool == "buildah" else [path, "build"]
        tried.append(f"{tool}: {(check.stderr.strip().splitlines() or ['unusable'])[-1]}")
    pytest.skip("no usable container builder (" + "; ".join(tried) + ")")


@pytest.mark.slow
def test_the_dockerfile_builds_an_image_that_runs_bigcos():
    builder = _container_builder()
    image = _dockerfile_image()
    subprocess.run([*builder, "-t", image, str(ROOT)], check=True, timeout=1800)
    if Path(builder[0]).name == "buildah":
        return  # builds only; running needs docker or podman
    run = [builder[0], "run", "--rm", image, "bigcos", "run", "--show"]
    shown = subprocess.run(run, capture_output=True, text=True, check=True, timeout=300)
    assert '"ml-latest-small"' in shown.stdout
