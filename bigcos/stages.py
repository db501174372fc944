"""Stage planning: a job's stages per dataset, their keys and their completion markers.

Each stage is a thin adapter from a job to one module's Python API, writing its own
directory under ``<job out>/<dataset>/``::

    simulation/          bigcos.simulator.simulate      (simulated datasets only)
    matrix/              bigcos.matrix.ingest
    models/closed-form/  bigcos.models.fit             (objective 1 x every D, objective 2,
                                                        project-back: one SVD, λ validated)
    models/<remedy>/     bigcos.models.fit             (a remedy: its own SVD)
    models/als/          bigcos.models.fit_als
    models/cosine/       bigcos.cosine_fit.fit_cosine  (trained w.r.t. cosine)
    neighbors/           bigcos.neighbor_lists.neighbors    (every model, kind and metric)
    report/              bigcos.reports.write_report

A stage is *complete* when its directory holds ``stage.json`` whose ``key`` matches the
stage's key: a sha256 of the stage name, its parameters, its algorithm version
(:data:`ALGORITHM_VERSIONS`), the bigcos version, the keys of the stages it reads and (for
input files) their size and modification time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bigcos import io, storage
from bigcos.jobspec import Dataset, Job

STAGE_MARKER = "stage.json"


def algorithm_versions() -> dict[str, int | tuple[int, int]]:
    """Version of each stage's algorithm, part of its key: bump the entry when the same
    parameters start giving different outputs, so that re-runs redo that stage (and, since
    their keys include its key, every stage downstream). The closed-form fits are
    (version of the closed forms, ``bigcos.svd.SVD_VERSION``)."""
    from bigcos.svd import SVD_VERSION

    return {"simulate": 1, "ingest": 1, "fit-closed-form": (2, SVD_VERSION),
            "fit-remedy": (2, SVD_VERSION), "fit-als": 1, "fit-cosine": (1, SVD_VERSION),
            "neighbors": 1, "report": 2}


ALGORITHM_VERSIONS = algorithm_versions()


@dataclass
class Stage:
    """One unit of resumable work: ``run(tmp_or_final_dir, client)`` writes ``directory``.

    ``algorithm`` names the entry of :data:`ALGORITHM_VERSIONS`; ``client`` is a
    ``distributed.Client`` or None (threads in this process).
    """

    dataset: str
    name: str
    directory: Path
    params: dict[str, Any]
    inputs: list[Path]
    upstream: list[Stage]
    run: Callable[[Path, Any], None]
    algorithm: str = ""
    key: str = ""

    @property
    def label(self) -> str:
        return f"{self.dataset}/{self.name}"


def _input_fingerprint(path: Path | storage.StorePath) -> list[list[Any]]:
    path = storage.as_path(path)
    if isinstance(path, storage.StorePath):
        files = [path] if path.is_file() else path.files()
    else:
        files = [path] if path.is_file() else sorted(f for f in path.rglob("*") if f.is_file())
    return [[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def stage_key(stage: Stage) -> str:
    from bigcos import __version__

    text = json.dumps({"stage": stage.name, "params": io._jsonable(stage.params),
                       "inputs": [_input_fingerprint(p) for p in stage.inputs],
                       "upstream": [u.key for u in stage.upstream], "bigcos": __version__,
                       "algorithm_version": ALGORITHM_VERSIONS[stage.algorithm or stage.name]},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def is_complete(stage: Stage) -> bool:
    marker = stage.directory / STAGE_MARKER
    try:
        return json.loads(marker.read_text()).get("key") == stage.key
    except (OSError, json.JSONDecodeError):
        return False


def mark_complete(stage: Stage, seconds: float, resources: dict | None = None) -> None:
    """Write the stage's completion marker; ``resources`` (its record of
    :mod:`bigcos.stage_resources`) is kept in it too, so a run that is cut later still leaves
    the figures of the stages it completed."""
    io.write_json(stage.directory / STAGE_MARKER,
                  {"stage": stage.name, "dataset": stage.dataset, "key": stage.key,
                   "seconds": round(seconds, 3), "completed_unix": round(time.time(), 3),
                   **({"resources": resources} if resources is not None else {})})


def plan(job: Job) -> list[Stage]:
    """Every stage of the job, in order, with keys resolved."""
    planned: list[Stage] = []
    for ds in job.datasets:
        planned.extend(dataset_stages(job, ds, job.out / ds.name))
    for s in planned:
        s.key = stage_key(s)
    return planned


# --------------------------------------------------------------------------- adapters
def closed_form_specs(ds: Dataset) -> list:
    """Objective 1 under every named and random D, objective 2, project-back."""
    from bigcos.models import ModelSpec, Scaling

    fit = ds.fit
    specs = [ModelSpec(1, fit.lam1, Scaling(s)) for s in fit.scalings]
    specs += [ModelSpec(1, fit.lam1, Scaling("random", spread=fit.random_spread, seed=fit.seed + r))
              for r in range(fit.random_d)]
    if fit.objective2:
        specs.append(ModelSpec(2, fit.lam2))
    if fit.project_back:
        specs.append(ModelSpec(1, fit.lam1, project_back=True))
    return specs


def _svd_options(ds: Dataset):
    from bigcos.models import SVDOptions

    f = ds.fit
    return SVDOptions(k=f.k, oversampling=f.oversampling, n_iter=f.n_iter, seed=f.seed,
                      exact=f.exact)


def _selection(ds: Dataset):
    from bigcos.validation import Selection

    return Selection(fraction=ds.fit.validation_fraction, seed=ds.fit.seed)


def model_dirs(fit_stages: list[Stage]) -> list[Path]:
    """Every model directory written by the fit stages (a root lists its models)."""
    dirs = []
    for stage in fit_stages:
        manifest = io.read_manifest(stage.directory)
        if "models" in manifest:
            dirs += [stage.directory / name for name in manifest["models"]]
        else:
            dirs.append(stage.directory)
    return dirs


def check_fit_against_data(ds: Dataset, matrix_dir: Path) -> None:
    """Fail at the start of a fit stage, in one line naming dataset, parameter and value,
    when the ingested matrix is too small for ``ds.fit`` (e.g. k larger than its items)."""
    counts = io.read_manifest(matrix_dir).get("counts", {})
    ds.fit.check_shape(int(counts["users"]), int(counts["items"]), f"dataset {ds.name}")


def dataset_stages(job: Job, ds: Dataset, root: Path) -> list[Stage]:
    from dask.utils import parse_bytes

    from bigcos import matrix, models, neighbor_lists, reports, simulator

    stages: list[Stage] = []
    log, items, upstream = ds.log, ds.items, []
    if ds.simulate is not None:
        sim = Stage(ds.name, "simulate", root / "simulation", asdict(ds.simulate), [], [],
                    lambda d, client: simulator.simulate(d, ds.simulate, overwrite=True,
                                                         client=client))
        stages.append(sim)
        log, items = sim.directory / "interactions", sim.directory / "items.parquet"
        upstream = [sim]
    ingest = Stage(ds.name, "ingest", root / "matrix",
                   {**asdict(ds.ingest), "items": str(items) if items else None},
                   [log] if ds.simulate is None else [], upstream,
                   lambda d, client: matrix.ingest(log, d, ds.ingest, overwrite=True,
                                                   items=items, client=client))
    stages.append(ingest)

    f = ds.fit
    svd = _svd_options(ds)
    specs = closed_form_specs(ds)
    selection = _selection(ds)

    def fit_closed_form(d: Path, client) -> None:
        check_fit_against_data(ds, ingest.directory)
        models.fit(ingest.directory, d, specs, svd, overwrite=True, client=client,
                   selection=selection, root=True)

    fits = [Stage(ds.name, "fit-closed-form", root / "models" / "closed-form",
                  {"specs": [asdict(s) for s in specs], "svd": asdict(svd),
                   "selection": asdict(selection)}, [], [ingest], fit_closed_form)]
    for remedy in f.remedies:
        pre = models.Preprocessing(remedy, beta=f.beta, gamma=f.gamma)
        spec = models.ModelSpec(1, f.lam1, models.Scaling("symmetric"))

        def fit_remedy(d: Path, client, spec=spec, pre=pre) -> None:
            check_fit_against_data(ds, ingest.directory)
            models.fit(ingest.directory, d, [spec], svd, pre, overwrite=True, client=client,
                       selection=selection, root=True)

        fits.append(Stage(ds.name, f"fit-{remedy}", root / "models" / remedy,
                          {"spec": asdict(spec), "svd": asdict(svd), "remedy": asdict(pre),
                           "selection": asdict(selection)},
                          [], [ingest], fit_remedy, algorithm="fit-remedy"))
    if f.als:
        als = models.ALSOptions(factors=f.als_factors or f.k, iterations=f.als_iterations,
                                regularization=f.als_regularization or 0.0, seed=f.seed)
        als_selection = selection if f.als_regularization is None else None

        def fit_als(d: Path, client) -> None:
            if f.als_factors is None:  # k factors: k must suit the data, as for the others
                check_fit_against_data(ds, ingest.directory)
            models.fit_als(ingest.directory, d, als, overwrite=True, selection=als_selection)

        fits.append(Stage(ds.name, "fit-als", root / "models" / "als", asdict(als), [], [ingest],
                          fit_als))
    if f.cosine:
        from bigcos.cosine_fit import CosineOptions, fit_cosine

        cos = CosineOptions(k=f.k, iterations=f.cosine_iterations, seed=f.seed,
                            validation_fraction=f.validation_fraction)

        def fit_cosine_model(d: Path, client) -> None:
            check_fit_against_data(ds, ingest.directory)  # k, as the closed-form stages say
            fit_cosine(ingest.directory, d, cos, client=client, overwrite=True)

        fits.append(Stage(ds.name, "fit-cosine", root / "models" / "cosine", asdict(cos), [],
                          [ingest], fit_cosine_model, algorithm="fit-cosine"))
    stages += fits

    nb = job.neighbors
    budget = parse_bytes(nb.memory_budget)
    neigh = Stage(ds.name, "neighbors", root / "neighbors", asdict(nb), [], fits,
                  lambda d, client: neighbor_lists.neighbors(
                      model_dirs(fits), d, kinds=nb.kinds, metrics=nb.metrics, n=nb.n,
                      exclude_train=nb.exclude_train, memory_budget=budget,
                      max_queries=nb.max_queries, full_models=nb.full_models, seed=nb.seed,
                      overwrite=True, client=client))
    stages.append(neigh)
    report = dataclasses.replace(job.report, dataset=ds.name, job=job.name)
    stages.append(Stage(ds.name, "report", root / "report", asdict(report), [], [neigh],
                        lambda d, client: reports.write_report(
                            d, ingest.directory, model_dirs(fits), neigh.directory, items=items,
                            options=report, overwrite=True, client=client)))
    return stages
