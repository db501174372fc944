"""``bigcos run``: the whole pipeline from a declarative TOML job file, resumable stage by stage.

A job names datasets (a Parquet log, or a simulation) and the settings of each stage. Per dataset
the stages are::

    [simulate] → ingest → fit (closed form, column remedies, ALS) → neighbors → report

each writing its own directory ``<out>/<dataset>/<stage>``. A stage is *complete* when its
directory holds ``stage.json`` whose ``key`` matches the stage's key: a sha256 of the stage
name, its parameters, the keys of the stages it reads and (for input files) their size and
modification time. ``stage.json`` is written last, after the stage's own atomic directory
rename, so an interrupted run (SIGINT, a killed process, a full disk) leaves either a complete
stage or one that is redone; a re-run skips complete stages and redoes only what changed.

Job file sections (unknown keys or wrong types are errors before any work starts)::

    [job]        name, out (output root; relative paths are relative to the job file)
    [dask]       scheduler, workers, threads_per_worker, memory_limit, spill_dir
    [fit]        FitConfig fields (defaults for every dataset)
    [neighbors]  NeighborsConfig fields
    [report]     bigcos.reports.Options fields
    [[dataset]]  name, and either log (+ items) or simulate = {SimulationParams fields};
                 optional tables ingest = {IngestOptions fields}, fit = {FitConfig overrides}
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
import tomllib
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from bigcos import io
from bigcos.cluster import ClusterOptions
from bigcos.errors import UserError
from bigcos.matrix import IngestOptions
from bigcos.models import NAMED_SCALINGS, PREPROCESSINGS
from bigcos.reports import Options as ReportOptions
from bigcos.simulator import SimulationParams

log = logging.getLogger(__name__)

STAGE_MARKER = "stage.json"
KINDS = ("item-item", "user-user", "user-item")
METRICS = ("cos", "dot")


# --------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class FitConfig:
    """Which models to fit on each dataset; one truncated SVD serves every closed-form one.

    ``lam1`` acts on sigma^2 (objective 1), ``lam2`` on sigma (objective 2): see MATH.md.
    ``random_d`` random admissible rescalings D (log-uniform, max/min ratio ``random_spread``)
    measure how much cosine neighbours depend on D. ``remedies`` are column remedies fit with
    their own SVD (objective 1, symmetric D); project-back is fit from the main SVD.
    """

    k: int = 64
    lam1: float = 100.0
    lam2: float = 10.0
    scalings: tuple[str, ...] = NAMED_SCALINGS
    random_d: int = 3
    random_spread: float = 100.0
    objective2: bool = True
    project_back: bool = True
    remedies: tuple[str, ...] = ("standardize", "popularity")
    beta: float = 0.75
    als: bool = True
    als_factors: int | None = None  # default: k
    als_iterations: int = 15
    als_regularization: float = 0.01
    exact: bool = False
    oversampling: int | None = None
    n_iter: int | None = None
    seed: int = 0

    def __post_init__(self):
        for s in self.scalings:
            if s not in NAMED_SCALINGS:
                raise UserError(f"fit.scalings: unknown scaling '{s}' "
                                f"({', '.join(NAMED_SCALINGS)})")
        for r in self.remedies:
            if r not in PREPROCESSINGS[1:]:
                raise UserError(f"fit.remedies: unknown remedy '{r}' "
                                f"({', '.join(PREPROCESSINGS[1:])})")
        if self.k < 1 or self.random_d < 0 or self.random_spread < 1:
            raise UserError("fit: need k >= 1, random_d >= 0 and random_spread >= 1")


@dataclass(frozen=True)
class NeighborsConfig:
    """Which neighbour lists to compute for every model."""

    kinds: tuple[Literal["item-item", "user-user", "user-item"], ...] = ("item-item",
                                                                         "user-item")
    metrics: tuple[Literal["cos", "dot"], ...] = METRICS
    n: int = 50
    exclude_train: bool = True
    memory_budget: str = "512MiB"

    def __post_init__(self):
        if self.n < 1:
            raise UserError(f"neighbors.n: must be >= 1, got {self.n}")


@dataclass(frozen=True)
class DaskConfig:
    scheduler: str | None = None
    workers: int | None = None
    threads_per_worker: int = 1
    memory_limit: str = "auto"
    spill_dir: str | None = None


@dataclass(frozen=True)
class Dataset:
    name: str
    log: Path | None
    items: Path | None
    simulate: SimulationParams | None
    ingest: IngestOptions
    fit: FitConfig


@dataclass(frozen=True)
class Job:
    name: str
    out: Path
    source: str  # the job file, or "built-in default"
    datasets: tuple[Dataset, ...]
    dask: DaskConfig = DaskConfig()
    neighbors: NeighborsConfig = NeighborsConfig()
    report: ReportOptions = field(default_factory=ReportOptions)


# --------------------------------------------------------------------------- validation
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check a TOML value against a dataclass field annotation; convert lists to tuples."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for alt in args:
            if alt is type(None):
                continue
            try:
                return _coerce(value, alt, where)
            except UserError as exc:
                errors.append(str(exc))
        raise UserError(errors[0] if len(errors) == 1 else
                        f"{where}: {value!r} is none of {', '.join(map(_type_name, args))}")
    if origin is Literal:
        if value not in args:
            raise UserError(f"{where}: {value!r} is not one of {', '.join(map(str, args))}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, list):
            raise UserError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise UserError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp in (str, bool):
        if not isinstance(value, tp):
            raise UserError(f"{where}: expected a {tp.__name__}, got {value!r}")
        return value
    raise TypeError(f"unsupported annotation {tp} at {where}")


def options_from_table(cls: type, table: Any, where: str, base: Any = None) -> Any:
    """Build dataclass ``cls`` from a TOML table; unknown keys and wrong types are UserErrors.

    ``base`` (an instance of ``cls``) supplies the values the table does not set.
    """
    if not isinstance(table, dict):
        raise UserError(f"{where}: expected a table, got {table!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {n: getattr(base, n) for n in names} if base is not None else {}
    for key, value in table.items():
        if key not in names:
            raise UserError(f"{where}: unknown key '{key}' (known: {', '.join(names)})")
        kwargs[key] = _coerce(value, hints[key], f"{where}.{key}")
    return cls(**kwargs)


def _path(value: Any, where: str, root: Path, must_exist: bool) -> Path:
    if not isinstance(value, str):
        raise UserError(f"{where}: expected a path string, got {value!r}")
    p = Path(os.path.expandvars(os.path.expanduser(value)))
    p = Path(os.path.normpath(p if p.is_absolute() else root / p))
    if must_exist and not p.exists():
        raise UserError(f"{where}: {p} does not exist")
    return p


DATASET_KEYS = ("name", "log", "items", "simulate", "ingest", "fit")
JOB_SECTIONS = ("job", "dask", "fit", "neighbors", "report", "dataset")


def parse_job(raw: dict[str, Any], source: str, root: Path) -> Job:
    """Validate a parsed job file; every error names the section and key."""
    for key in raw:
        if key not in JOB_SECTIONS:
            raise UserError(f"{source}: unknown section [{key}] (known: {', '.join(JOB_SECTIONS)})")
    head = raw.get("job", {})
    if not isinstance(head, dict):
        raise UserError(f"{source}: [job] must be a table")
    for key in head:
        if key not in ("name", "out"):
            raise UserError(f"{source}: [job] unknown key '{key}' (known: name, out)")
    name = head.get("name", "bigcos-job")
    if not isinstance(name, str) or not name:
        raise UserError(f"{source}: [job] name must be a non-empty string")
    out = _path(head.get("out", f"bigcos-out/{name}"), f"{source}: [job] out", root, False)
    dask_cfg = options_from_table(DaskConfig, raw.get("dask", {}), f"{source}: [dask]")
    fit_default = options_from_table(FitConfig, raw.get("fit", {}), f"{source}: [fit]")
    neighbors = options_from_table(NeighborsConfig, raw.get("neighbors", {}),
                                   f"{source}: [neighbors]")
    report = options_from_table(ReportOptions, raw.get("report", {}), f"{source}: [report]")
    entries = raw.get("dataset", [])
    if not isinstance(entries, list) or not entries:
        raise UserError(f"{source}: no [[dataset]] given")
    datasets, seen = [], set()
    for i, entry in enumerate(entries):
        where = f"{source}: [[dataset]] #{i + 1}"
        if not isinstance(entry, dict):
            raise UserError(f"{where}: must be a table")
        for key in entry:
            if key not in DATASET_KEYS:
                raise UserError(f"{where}: unknown key '{key}' (known: {', '.join(DATASET_KEYS)})")
        ds_name = entry.get("name")
        if not isinstance(ds_name, str) or not ds_name or "/" in ds_name:
            raise UserError(f"{where}: name must be a non-empty string without '/'")
        if ds_name in seen:
            raise UserError(f"{where}: dataset name '{ds_name}' used twice")
        seen.add(ds_name)
        where = f"{source}: [[dataset]] {ds_name}"
        if ("log" in entry) == ("simulate" in entry):
            raise UserError(f"{where}: give either log or simulate")
        log_path = _path(entry["log"], f"{where} log", root, True) if "log" in entry else None
        items = _path(entry["items"], f"{where} items", root, True) if "items" in entry else None
        sim = (options_from_table(SimulationParams, entry["simulate"], f"{where} simulate")
               if "simulate" in entry else None)
        if sim is not None:
            sim.validate()
        ingest = options_from_table(IngestOptions, entry.get("ingest", {}), f"{where} ingest")
        fit = options_from_table(FitConfig, entry.get("fit", {}), f"{where} fit", fit_default)
        datasets.append(Dataset(ds_name, log_path, items, sim, ingest, fit))
    return Job(name, out, source, tuple(datasets), dask_cfg, neighbors, report)


def load_job(path: str | os.PathLike | None) -> Job:
    """Read and validate a job file; ``None`` gives the built-in default job."""
    if path is None:
        return default_job()
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: no such job file")
    try:
        raw = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{p}: not valid TOML ({exc})") from None
    return parse_job(raw, str(p), p.resolve().parent)


def bundled_data() -> Path:
    """The bundled ml-latest-small folder (interactions.parquet, items.parquet, its terms).

    Installed, it is package data (``bigcos/data/ml-latest-small``, found with
    importlib.resources); run from a source checkout, it is the checkout's
    ``data/ml-latest-small``. The current directory plays no part.
    """
    from importlib.resources import files

    installed = files("bigcos") / "data" / "ml-latest-small"
    checkout = Path(__file__).resolve().parents[1] / "data" / "ml-latest-small"
    for folder in (installed, checkout):
        if isinstance(folder, Path) and (folder / "interactions.parquet").is_file():
            return folder
    raise UserError(f"the bundled data was not found in {installed} nor {checkout}; "
                    "reinstall bigcos, or give a job file")


DEFAULT_JOB = """
[job]
name = "default"
out = "bigcos-out"

[fit]
k = 64

[neighbors]
kinds = ["item-item", "user-item"]
n = 50

[[dataset]]
name = "ml-latest-small"
log = "{data}/interactions.parquet"
items = "{data}/items.parquet"
ingest = {{ threshold = 4.0, min_user = 5, min_item = 5, split = "users", seed = 0 }}
fit = {{ lam1 = 200.0, lam2 = 5.0 }}

[[dataset]]
name = "simulation"
simulate = {{ n_users = 20000, n_items = 1000, seed = 0 }}
ingest = {{ split = "users", seed = 0 }}
fit = {{ k = 50, lam1 = 10000.0, lam2 = 100.0 }}
"""


def default_job() -> Job:
    """The README's main job: the bundled MovieLens data and the paper's default simulation."""
    text = DEFAULT_JOB.format(data=bundled_data().as_posix())
    return parse_job(tomllib.loads(text), "built-in default job", Path.cwd())


# --------------------------------------------------------------------------- stages
@dataclass
class Stage:
    """One unit of resumable work: ``run(tmp_or_final_dir)`` writes ``directory``."""

    dataset: str
    name: str
    directory: Path
    params: dict[str, Any]
    inputs: list[Path]
    upstream: list[Stage]
    run: Callable[[Path], None]
    key: str = ""

    @property
    def label(self) -> str:
        return f"{self.dataset}/{self.name}"


def _input_fingerprint(path: Path) -> list[list[Any]]:
    files = [path] if path.is_file() else sorted(f for f in path.rglob("*") if f.is_file())
    return [[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def stage_key(stage: Stage) -> str:
    from bigcos import __version__

    text = json.dumps({"stage": stage.name, "params": io._jsonable(stage.params),
                       "inputs": [_input_fingerprint(p) for p in stage.inputs],
                       "upstream": [u.key for u in stage.upstream], "bigcos": __version__},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def is_complete(stage: Stage) -> bool:
    marker = stage.directory / STAGE_MARKER
    try:
        return json.loads(marker.read_text()).get("key") == stage.key
    except (OSError, json.JSONDecodeError):
        return False


def mark_complete(stage: Stage, seconds: float) -> None:
    io.write_json(stage.directory / STAGE_MARKER,
                  {"stage": stage.name, "dataset": stage.dataset, "key": stage.key,
                   "seconds": round(seconds, 3), "completed_unix": round(time.time(), 3)})


def remove_stale_temporaries(root: Path) -> list[Path]:
    """Delete temporary directories left by killed runs (``.NAME.tmp-PID-*`` of dead PIDs)."""
    removed = []
    if not root.exists():
        return removed
    for tmp in root.rglob(".*.tmp-*"):
        try:
            pid = int(tmp.name.rsplit(".tmp-", 1)[1].split("-")[0])
        except (IndexError, ValueError):
            continue
        if pid != os.getpid() and not _alive(pid):
            shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(True)
            removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --------------------------------------------------------------------------- the run
@dataclass
class RunResult:
    out: Path
    ran: list[str]
    skipped: list[str]
    reports: list[Path]
    timings: dict[str, float]


def plan(job: Job) -> list[Stage]:
    """Every stage of the job, in order, with keys resolved."""
    from bigcos import stages  # the adapters to each module's Python API

    planned: list[Stage] = []
    for ds in job.datasets:
        planned.extend(stages.dataset_stages(job, ds, job.out / ds.name))
    for s in planned:
        s.key = stage_key(s)
    return planned


def _worker_lost_errors() -> tuple[type[BaseException], ...]:
    from concurrent.futures import CancelledError

    from distributed import KilledWorker
    from distributed.comm.core import CommClosedError

    return CommClosedError, KilledWorker, CancelledError


def _run_with_retries(stage: Stage, retries: int, echo: Callable[[str], None]) -> None:
    """Run a stage; redo it from scratch when a worker or a connection to it was lost.

    Dask recomputes lost *tasks* by itself, but data scattered to a worker that dies has no
    lineage, so the stage fails; its output directory is atomic, so redoing it is clean.
    """
    lost = _worker_lost_errors()
    for attempt in range(retries + 1):
        try:
            stage.run(stage.directory)
            return
        except lost as exc:
            if attempt == retries:
                raise
            echo(f"{stage.label}: a Dask worker was lost ({type(exc).__name__}); "
                 f"redoing the stage ({attempt + 1}/{retries})")


def run_job(job: Job, cluster: ClusterOptions, force: bool = False,
            echo: Callable[[str], None] = print, progress: bool = True,
            retries: int = 2) -> RunResult:
    """Run ``job`` on a Dask client from ``cluster``; skip stages already complete.

    ``retries``: how often a stage is redone after losing a worker (see _run_with_retries).
    """
    from distributed import performance_report

    from bigcos.cluster import dask_client

    timings = io.Timings()
    job.out.mkdir(parents=True, exist_ok=True)
    for tmp in remove_stale_temporaries(job.out):
        log.info("removed %s, left by an interrupted run", tmp)
    stages_ = plan(job)
    ran, skipped = [], []
    with dask_client(cluster) as client:
        echo(f"Dask dashboard: {client.dashboard_link}")
        report_path = job.out / "dask-performance-report.html"
        with performance_report(filename=str(report_path)), _bar(stages_, progress) as bar:
            for stage in stages_:
                bar.label = stage.label
                if not force and is_complete(stage):
                    skipped.append(stage.label)
                else:
                    t0 = time.perf_counter()
                    with timings(stage.label):
                        _run_with_retries(stage, retries, echo)
                    mark_complete(stage, time.perf_counter() - t0)
                    ran.append(stage.label)
                bar.update(1)
    reports = [s.directory / "report.html" for s in stages_ if s.name == "report"]
    io.write_manifest(job.out, "run", {"job": job.source, "force": force,
                                       "cluster": dataclasses.asdict(cluster)},
                      timings=timings, ran=ran, skipped=skipped,
                      stages={s.label: {"key": s.key, "directory": str(s.directory)}
                              for s in stages_},
                      reports=[str(r) for r in reports])
    return RunResult(job.out, ran, skipped, reports, timings.as_dict())


@contextlib.contextmanager
def _bar(stages_: list[Stage], show: bool) -> Iterator[Any]:
    import click

    if not show:
        yield types.SimpleNamespace(label="", update=lambda n: None)
        return
    with click.progressbar(length=len(stages_), label="bigcos run", show_pos=True) as bar:
        yield bar


def job_as_dict(job: Job) -> dict[str, Any]:
    """The resolved job (defaults filled in), for manifests and `bigcos run --show`."""
    return io._jsonable(dataclasses.asdict(job))

