"""Installed from a wheel, bigcos works in any directory: the bundled data and example jobs ship
inside the package, `bigcos run` runs the default job where it is started, and `bigcos init`
writes a starter job for the user's own log."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import bigcos
from bigcos.cli import main
from bigcos.pipeline import bundled_data, load_job

ROOT = Path(__file__).resolve().parents[1]
DATA_FILES = ["interactions.parquet", "items.parquet", "README.original.txt", "SOURCE.md"]


def run(args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


def one_line_error(code, output):
    lines = [line for line in output.strip().splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and lines[0].startswith("Error:"), output
    return lines[0]


def own_log(path: Path) -> Path:
    """A log with the user's own column names: 30 users x 12 items, every user on 8 items."""
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(30), 8)
    items = np.concatenate([rng.choice(12, 8, replace=False) for _ in range(30)])
    pq.write_table(pa.table({"uid": users.astype(str), "sku": items,
                             "clicks": rng.integers(1, 5, users.size).astype(np.float32),
                             "ts": np.arange(users.size)}), path)
    return path


# --------------------------------------------------------------------------- bigcos init
def test_init_names_the_users_log_and_columns(tmp_path):
    log = own_log(tmp_path / "events.parquet")
    code, output = run(["init", tmp_path / "job", "--log", log, "--user-col", "uid",
                        "--item-col", "sku", "--value-col", "clicks", "--time-col", "ts"])
    assert code == 0, output
    job = load_job(tmp_path / "job" / "job.toml")
    (ds,) = job.datasets
    assert (ds.name, ds.log, ds.items) == ("events", log, None)
    assert (ds.ingest.user_col, ds.ingest.item_col, ds.ingest.value_col,
            ds.ingest.time_col) == ("uid", "sku", "clicks", "ts")
    assert job.out == tmp_path / "job" / "bigcos-out"
    # the columns it names are the ones ingest reads: 30 users, all 12 items, every click
    data = bigcos.ingest(ds.log, tmp_path / "m", ds.ingest)
    table = pq.read_table(log)
    assert data.train.shape == (30, 12)
    assert np.isclose(data.train.sum() + data.test.sum(), sum(table["clicks"].to_pylist()))


def test_init_writes_a_log_inside_the_folder_relative_to_it(tmp_path):
    (tmp_path / "logs").mkdir()
    log = own_log(tmp_path / "logs" / "events.parquet")
    code, output = run(["init", tmp_path, "--log", log, "--user-col", "uid",
                        "--item-col", "sku", "--name", "shop"])
    assert code == 0, output
    raw = tomllib.loads((tmp_path / "job.toml").read_text())
    assert raw["dataset"][0]["log"] == "logs/events.parquet"
    assert raw["dataset"][0]["name"] == "shop"
    assert load_job(tmp_path / "job.toml").datasets[0].log == log


def test_init_without_a_log_writes_a_placeholder_to_fill_in(tmp_path):
    code, output = run(["init", tmp_path])
    assert code == 0, output
    text = (tmp_path / "job.toml").read_text()
    assert "TODO" in text and 'log = "path/to/interactions.parquet"' in text
    tomllib.loads(text)  # valid TOML, commented
    with pytest.raises(bigcos.UserError, match="path/to/interactions.parquet does not exist"):
        load_job(tmp_path / "job.toml")
    # filling in the log is all it takes; every other setting is valid as written
    filled = text.replace("path/to/interactions.parquet",
                          (bundled_data() / "interactions.parquet").as_posix())
    (tmp_path / "job.toml").write_text(filled)
    (ds,) = load_job(tmp_path / "job.toml").datasets
    assert ds.log == bundled_data() / "interactions.parquet"
    assert (ds.ingest.split, ds.ingest.min_user) == ("users", 5)


def test_init_refuses_to_overwrite_without_force(tmp_path):
    assert run(["init", tmp_path])[0] == 0
    (tmp_path / "job.toml").write_text("# mine\n")
    line = one_line_error(*run(["init", tmp_path]))
    assert str(tmp_path / "job.toml") in line and "--force" in line
    assert (tmp_path / "job.toml").read_text() == "# mine\n"
    assert run(["init", tmp_path, "--force"])[0] == 0
    assert "[[dataset]]" in (tmp_path / "job.toml").read_text()


@pytest.mark.parametrize("args, needles", [
    (["--user-col", "user"], ["'user'", "--user-col", "columns are uid, sku, clicks, ts"]),
    (["--user-col", "uid", "--item-col", "sku", "--value-col", "rating"],
     ["'rating'", "--value-col"]),
    (["--user-col", "uid", "--item-col", "sku", "--items", "nope.parquet"],
     ["nope.parquet", "does not exist"]),
])
def test_init_checks_the_log_and_writes_nothing_on_error(tmp_path, args, needles):
    log = own_log(tmp_path / "events.parquet")
    line = one_line_error(*run(["init", tmp_path / "job", "--log", log, *args]))
    for needle in needles:
        assert needle in line, line
    assert list((tmp_path / "job").iterdir()) == []


def test_init_with_a_missing_log_is_one_line(tmp_path):
    line = one_line_error(*run(["init", tmp_path, "--log", tmp_path / "nope.parquet"]))
    assert "nope.parquet does not exist" in line
    assert not (tmp_path / "job.toml").exists()


def test_init_example_runs_from_its_new_folder(tmp_path):
    code, output = run(["init", tmp_path / "ex", "--example", "movielens-small"])
    assert code == 0, output
    job = load_job(tmp_path / "ex" / "job.toml")
    assert job.out == tmp_path / "ex" / "bigcos-out" / "movielens-small"
    assert job.datasets[0].log == bundled_data() / "interactions.parquet"
    assert job.datasets[0].items == bundled_data() / "items.parquet"
    assert job.datasets[0].fit == load_job(ROOT / "jobs" / "movielens-small.toml").datasets[0].fit
    line = one_line_error(*run(["init", tmp_path / "ex2", "--example", "movielens-small",
                                "--name", "x"]))
    assert "--example" in line


def test_bundled_data_is_the_checkout_copy_from_source_whatever_the_cwd(tmp_path,
                                                                        monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert bundled_data() == ROOT / "data" / "ml-latest-small"
    assert all((bundled_data() / f).is_file() for f in DATA_FILES)
    job = load_job(None)
    assert job.out == tmp_path / "bigcos-out"


# --------------------------------------------------------------------------- the wheel
def _environment(venv: Path) -> dict[str, str]:
    """The environment of a user of ``venv``: its bin first, no path into this checkout."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


def _sh(args, cwd: Path, env: dict[str, str], timeout: float = 300) -> str:
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, f"{args}\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A wheel built from a copy of this checkout, installed into a fresh virtual environment
    whose dependencies are this environment's (no downloads of them)."""
    base = tmp_path_factory.mktemp("install")
    source = base / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "bigcos-out")
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    for name in ("bigcos", "data", "jobs"):
        shutil.copytree(ROOT / name, source / name, ignore=ignore)
    dist = base / "dist"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    _sh([sys.executable, "-m", "pip", "wheel", source, "--no-deps", "-w", dist, "-q"],
        cwd=base, env=env)
    (wheel,) = dist.glob("bigcos-*.whl")

    venv = base / "venv"
    _sh([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv],
        cwd=base, env=env)
    # --system-site-packages sees the base interpreter's packages; when this environment is
    # itself a venv its packages are elsewhere: a .pth puts them after the new venv's own
    # (its .pth files, among them an editable install of bigcos, are not run from there)
    python = venv / "bin" / "python"
    site = Path(_sh([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                    cwd=base, env=env).strip())
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "current-environment.pth").write_text("\n".join(sorted(ours)) + "\n")
    _sh([python, "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", "-q",
         wheel], cwd=base, env=env)
    return wheel, venv


@pytest.mark.slow
def test_wheel_holds_every_package_the_data_its_terms_and_the_jobs(installed):
    wheel, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    for init in ROOT.joinpath("bigcos").rglob("__init__.py"):
        assert init.relative_to(ROOT).as_posix() in names
    for f in DATA_FILES:
        assert f"bigcos/data/ml-latest-small/{f}" in names
    for job in ROOT.joinpath("jobs").rglob("*"):
        if job.is_file() and "__pycache__" not in job.parts:
            assert "bigcos/" + job.relative_to(ROOT).as_posix() in names
    assert not [n for n in names if n.endswith(".parquet") and not n.startswith("bigcos/data/")]
    size = wheel.stat().st_size
    assert 1e6 < size < 3e6, size  # the data (1.0 MB of Parquet) and nothing big besides


@pytest.mark.slow
def test_installed_bigcos_runs_from_an_empty_directory(installed, tmp_path):
    _, venv = installed
    env = _environment(venv)
    work = tmp_path / "empty"
    work.mkdir()
    assert ROOT not in work.parents
    located = _sh(["python", "-c", "import bigcos, bigcos.pipeline as p; "
                   "print(bigcos.__file__); print(p.bundled_data())"], work, env).split()
    assert all(Path(p).is_relative_to(venv) for p in located), located

    # the default job, resolved in the empty directory: bundled data from the installed package
    shown = json.loads(_sh(["bigcos", "run", "--show"], work, env))
    assert shown["out"] == str(work / "bigcos-out")
    bundled = Path(shown["datasets"][0]["log"]).parent
    assert bundled == Path(located[1]) and bundled.is_relative_to(venv)

    # a starter job for "the user's own log" (the bundled one), cut down to run fast
    _sh(["bigcos", "init", "--log", bundled / "interactions.parquet",
         "--items", bundled / "items.parquet", "--name", "ml"], work, env)
    text = (work / "job.toml").read_text()
    fast = {"k = 64": "k = 16\nrandom_d = 1\nremedies = []\nals = false\nobjective2 = false",
            'kinds = ["item-item", "user-item"]': 'kinds = ["item-item"]', "n = 50": "n = 10"}
    for old, new in fast.items():
        assert old in text
        text = text.replace(old, new, 1)
    (work / "job.toml").write_text(text)
    out = _sh(["bigcos", "run", "job.toml", "--workers", "1", "--no-progress"], work, env)
    assert "report: " in out, out
    result = work / "bigcos-out" / "ml"
    assert (result / "report" / "report.html").stat().st_size > 10_000
    assert (result / "neighbors" / "stage.json").is_file()
    assert (work / "bigcos-out" / "manifest.json").is_file()
    assert sorted(p.name for p in work.iterdir()) == ["bigcos-out", "job.toml"]
