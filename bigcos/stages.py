"""The pipeline's stages for one dataset: thin adapters from a job to each module's Python API.

Layout under ``<job out>/<dataset>/``::

    simulation/          bigcos.simulator.simulate      (simulated datasets only)
    matrix/              bigcos.matrix.ingest
    models/closed-form/  bigcos.models.fit             (objective 1 x every D, objective 2,
                                                        project-back: one SVD)
    models/<remedy>/     bigcos.models.fit             (a column remedy: its own SVD)
    models/als/          bigcos.models.fit_als
    neighbors/           bigcos.neighbor_lists.neighbors    (every model, kind and metric)
    report/              bigcos.reports.write_report
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from bigcos import io
from bigcos.pipeline import Dataset, Job, Stage


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


def dataset_stages(job: Job, ds: Dataset, root: Path) -> list[Stage]:
    from dask.utils import parse_bytes

    from bigcos import matrix, models, neighbor_lists, reports, simulator

    stages: list[Stage] = []
    log, items, upstream = ds.log, ds.items, []
    if ds.simulate is not None:
        sim = Stage(ds.name, "simulate", root / "simulation", asdict(ds.simulate), [], [],
                    lambda d: simulator.simulate(d, ds.simulate, overwrite=True))
        stages.append(sim)
        log, items = sim.directory / "interactions", sim.directory / "items.parquet"
        upstream = [sim]
    ingest = Stage(ds.name, "ingest", root / "matrix",
                   {**asdict(ds.ingest), "items": str(items) if items else None},
                   [log] if ds.simulate is None else [], upstream,
                   lambda d: matrix.ingest(log, d, ds.ingest, overwrite=True, items=items))
    stages.append(ingest)

    f = ds.fit
    svd = _svd_options(ds)
    specs = closed_form_specs(ds)
    fits = [Stage(ds.name, "fit-closed-form", root / "models" / "closed-form",
                  {"specs": [asdict(s) for s in specs], "svd": asdict(svd)}, [], [ingest],
                  lambda d: models.fit(ingest.directory, d, specs, svd, overwrite=True))]
    for remedy in f.remedies:
        pre = models.Preprocessing(remedy, f.beta)
        spec = models.ModelSpec(1, f.lam1, models.Scaling("symmetric"))
        fits.append(Stage(ds.name, f"fit-{remedy}", root / "models" / remedy,
                          {"spec": asdict(spec), "svd": asdict(svd), "remedy": asdict(pre)},
                          [], [ingest],
                          lambda d, spec=spec, pre=pre: models.fit(ingest.directory, d, [spec],
                                                                   svd, pre, overwrite=True)))
    if f.als:
        als = models.ALSOptions(factors=f.als_factors or f.k, iterations=f.als_iterations,
                                regularization=f.als_regularization, seed=f.seed)
        fits.append(Stage(ds.name, "fit-als", root / "models" / "als", asdict(als), [], [ingest],
                          lambda d: models.fit_als(ingest.directory, d, als, overwrite=True)))
    stages += fits

    nb = job.neighbors
    budget = parse_bytes(nb.memory_budget)
    neigh = Stage(ds.name, "neighbors", root / "neighbors", asdict(nb), [], fits,
                  lambda d: neighbor_lists.neighbors(model_dirs(fits), d, kinds=nb.kinds,
                                                metrics=nb.metrics, n=nb.n,
                                                exclude_train=nb.exclude_train,
                                                memory_budget=budget, overwrite=True))
    stages.append(neigh)
    stages.append(Stage(ds.name, "report", root / "report", asdict(job.report), [], [neigh],
                        lambda d: reports.write_report(d, ingest.directory, model_dirs(fits),
                                                       neigh.directory, items=items,
                                                       options=job.report, overwrite=True)))
    return stages
