"""``bigcos run``: the whole pipeline from a declarative TOML job file, resumable stage by stage.

A job (:mod:`bigcos.jobspec`) names datasets and the settings of each stage; per dataset the
stages (:mod:`bigcos.stages`) are::

    [simulate] → ingest → fit (closed form, column remedies, ALS) → neighbors → report

each writing its own directory ``<out>/<dataset>/<stage>``. A stage is *complete* when its
directory holds ``stage.json`` whose ``key`` matches the stage's key (parameters, algorithm
version, inputs, upstream keys). ``stage.json`` is written last, after the stage's own atomic
directory rename, so an interrupted run (SIGINT, a killed process, a full disk) leaves either a
complete stage or one that is redone; a re-run skips complete stages and redoes what changed.
This module runs the stages: where (decided by :func:`bigcos.cluster.job_client`: on a Dask
cluster one after the other, each spreading its work over the workers; for small jobs on
threads, independent stages side by side in processes of their own, :mod:`bigcos.side_by_side`),
with retries after lost workers, and with progress output.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bigcos import io, storage
from bigcos.cluster import ClusterOptions
from bigcos.errors import UserError
from bigcos.jobspec import (  # noqa: F401 - the job API, importable from here as before
    Dataset,
    FitConfig,
    Job,
    NeighborsConfig,
    job_as_dict,
    parse_job,
    read_job_file,
)
from bigcos.progress import JobProgress
from bigcos.side_by_side import default_processes, run_stages
from bigcos.stages import Stage, is_complete, mark_complete, plan  # noqa: F401

log = logging.getLogger(__name__)


def load_job(path: str | os.PathLike | None) -> Job:
    """Read and validate a job file; ``None`` gives the built-in default job."""
    return default_job() if path is None else read_job_file(path)


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

[report]
max_queries = 2000

[[dataset]]
name = "ml-latest-small"
log = "{data}/interactions.parquet"
items = "{data}/items.parquet"
ingest = {{ threshold = 4.0, min_user = 5, min_item = 5, split = "users", seed = 0 }}

[[dataset]]
name = "simulation"
simulate = {{ n_users = 5000, n_items = 1000, seed = 0 }}
ingest = {{ split = "users", seed = 0 }}
fit = {{ k = 50, als = false }}
"""


def default_job() -> Job:
    """The README's main job: the bundled MovieLens data and the paper's simulator at 5,000 users
    (the paper's size, 20,000, is jobs/simulation-paper.toml)."""
    text = DEFAULT_JOB.format(data=bundled_data().as_posix())
    return parse_job(tomllib.loads(text), "built-in default job", Path.cwd())


# --------------------------------------------------------------------------- the run
@dataclass
class RunResult:
    out: Path | storage.StorePath
    ran: list[str]
    skipped: list[str]
    reports: list[Path | storage.StorePath]
    timings: dict[str, float]
    resources: dict[str, dict] = dataclasses.field(default_factory=dict)


def estimated_interactions(job: Job) -> int:
    """Interactions of all datasets of ``job``, known before any work: a log's Parquet row
    count (file metadata), a simulation's expected count (n_users x mean items per user)."""
    from bigcos.simulator import activity_table

    total = 0
    for ds in job.datasets:
        if ds.simulate is not None:
            cdf = activity_table(ds.simulate)
            pmf = cdf - np.concatenate(([0.0], cdf[:-1]))
            k = np.arange(ds.simulate.min_items, ds.simulate.min_items + len(cdf))
            total += int(ds.simulate.n_users * float(pmf @ k))
        else:
            total += io.open_dataset(ds.log).count_rows()
    return total


def _worker_lost_errors() -> tuple[type[BaseException], ...]:
    from concurrent.futures import CancelledError

    from distributed import KilledWorker
    from distributed.comm.core import CommClosedError

    return CommClosedError, KilledWorker, CancelledError


def _run_with_retries(stage: Stage, client, retries: int, echo: Callable[[str], None]) -> None:
    """Run a stage; redo it from scratch when a worker or a connection to it was lost.

    Dask recomputes lost *tasks* by itself, but data scattered to a worker that dies has no
    lineage, so the stage fails; its output directory is atomic, so redoing it is clean.
    """
    lost = _worker_lost_errors() if client is not None else ()
    for attempt in range(retries + 1):
        try:
            stage.run(stage.directory, client)
            return
        except lost as exc:
            if attempt == retries:
                raise
            echo(f"{stage.label}: a Dask worker was lost ({type(exc).__name__}); "
                 f"redoing the stage ({attempt + 1}/{retries})")


def run_job(job: Job, cluster: ClusterOptions, force: bool = False,
            echo: Callable[[str], None] = print, progress: bool = True,
            retries: int = 2) -> RunResult:
    """Run ``job``; skip stages already complete.

    Work runs on threads in this process for small jobs, else on a Dask cluster from
    ``cluster`` (see :func:`bigcos.cluster.job_client`). ``progress``: a redrawn progress line
    (when stdout is a terminal), else one line per stage through ``echo``. ``retries``: how
    often a stage is redone after losing a worker (see _run_with_retries).
    """
    import sys

    from bigcos.cluster import job_client

    timings = io.Timings()
    job.out.mkdir(parents=True, exist_ok=True)
    for tmp in io.remove_stale_temporaries(job.out):
        log.info("removed %s, left by an interrupted run", tmp)
    stages_ = plan(job)
    ran, skipped = [], []
    resources: dict[str, dict] = {}  # label -> bigcos.stage_resources.stage_record
    with job_client(cluster, estimated_interactions(job)) as client:
        if client is not None:
            echo(f"Dask dashboard: {client.dashboard_link}")
        processes = 1 if client is not None else default_processes(cluster.parallel_stages)
        bar = JobProgress(len(stages_), progress and sys.stdout.isatty(), echo, client)
        try:
            if processes > 1:  # threads: independent stages side by side, a process each
                ran, skipped, seconds = run_stages(stages_, processes, force, bar, cluster,
                                                   resources)
                timings.seconds.update(seconds)
            else:
                with _performance_report(client, job.out / "dask-performance-report.html"):
                    ran, skipped = _run_in_order(stages_, client, force, bar, timings, retries,
                                                 echo, resources)
        finally:
            bar.close()
    reports = [s.directory / "report.html" for s in stages_ if s.name == "report"]
    io.write_manifest(job.out, "run", {"job": job.source, "force": force,
                                       "cluster": dataclasses.asdict(cluster),
                                       "scheduler": "threads" if client is None else "distributed",
                                       "parallel_stages": processes},
                      timings=timings, ran=ran, skipped=skipped,
                      stages={s.label: {"key": s.key, "directory": str(s.directory)}
                              for s in stages_},
                      resources=resources, reports=[str(r) for r in reports])
    return RunResult(job.out, ran, skipped, reports, timings.as_dict(), resources)


def _run_in_order(stages_: list[Stage], client, force: bool, bar: JobProgress,
                  timings: io.Timings, retries: int, echo: Callable[[str], None],
                  resources: dict[str, dict]) -> tuple[list[str], list[str]]:
    """Run the stages one after the other here (on ``client``, or threads when None);
    each stage's wall time, peak RSS (this process and every worker) and bytes written go
    into ``resources`` (:mod:`bigcos.stage_resources`)."""
    from bigcos.stage_resources import StageMeter

    ran, skipped = [], []
    for stage in stages_:
        bar.start(stage.label)
        if not force and is_complete(stage):
            skipped.append(stage.label)
            bar.finish(stage.label, None)
            continue
        with timings(stage.label), StageMeter(client) as meter:
            _run_with_retries(stage, client, retries, echo)
        seconds = meter.seconds
        resources[stage.label] = meter.record(stage.directory)
        mark_complete(stage, seconds, resources[stage.label])
        ran.append(stage.label)
        bar.finish(stage.label, seconds)
    return ran, skipped


@contextlib.contextmanager
def _performance_report(client, path: Path | storage.StorePath):
    """Dask's performance report of a run on a cluster (nothing on threads); written
    locally and uploaded when the job's output is in a store."""
    if client is None:
        yield
        return
    from distributed import performance_report

    with storage.local_file(path) as local, performance_report(filename=str(local)):
        yield
