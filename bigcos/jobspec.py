"""Job files: the configuration dataclasses of ``bigcos run`` and their validation.

A job names datasets (a Parquet log, or a simulation) and the settings of each stage.
Sections (unknown keys, wrong types and invalid combinations are errors before any work)::

    [job]        name, out (output root; relative paths are relative to the job file)
    [dask]       scheduler, workers, threads_per_worker, memory_limit, spill_dir, processes,
                 dashboard_address, tls_ca_file, tls_cert, tls_key
    [fit]        FitConfig fields (defaults for every dataset)
    [neighbors]  NeighborsConfig fields
    [report]     bigcos.reports.Options fields
    [[dataset]]  name, and either log (+ items) or simulate = {SimulationParams fields};
                 optional tables ingest = {IngestOptions fields}, fit = {FitConfig overrides}

What can only be checked against the data (``k`` against the number of items of a log) is
checked at the start of the fit stage (:func:`bigcos.stages.check_fit_against_data`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from bigcos import io, redaction, storage
from bigcos.cluster import TLS_FIELDS, ClusterOptions
from bigcos.cosine_fit import CosineOptions
from bigcos.errors import UserError
from bigcos.matrix import IngestOptions
from bigcos.models import NAMED_SCALINGS, PREPROCESSINGS, ALSOptions, Preprocessing, SVDOptions
from bigcos.neighbor_lists import MEMORY_BUDGET
from bigcos.options import from_table, opt
from bigcos.reports import Options as ReportOptions
from bigcos.simulator import SimulationParams
from bigcos.validation import Selection

KINDS = ("item-item", "user-user", "user-item")
METRICS = ("cos", "dot")


# --------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class FitConfig:
    """Which models to fit on each dataset; one truncated SVD serves every closed-form one.

    The single source of the fit defaults: job files (``[fit]``), ``bigcos fit``'s options
    and ``bigcos run --show`` all read them from here. ``lam1`` acts on sigma^2 (objective
    1), ``lam2`` on sigma (objective 2): see MATH.md; left unset they are chosen on
    validation users (:mod:`bigcos.validation`), separately for dot and cosine ranking.
    """

    k: int = opt(SVDOptions.k, "SVD dimensions of the closed-form models (and default ALS "
                               "factors).", flags=("-k",))
    lam1: float | None = opt(None, "Objective 1's lambda (on sigma^2); unset: chosen on "
                                   "validation users.")
    lam2: float | None = opt(None, "Objective 2's lambda (on sigma); unset: chosen on "
                                   "validation users.")
    scalings: tuple[str, ...] = opt(NAMED_SCALINGS, "Objective 1's named rescalings D.")
    random_d: int = opt(3, "Random log-uniform D (sensitivity to D).")
    random_spread: float = opt(100.0, "Max/min ratio of a random D.")
    objective2: bool = opt(True, "Fit objective 2 too.")
    project_back: bool = opt(True, "Fit objective 1's project-back remedy too.")
    remedies: tuple[str, ...] = opt(("standardize", "popularity", "rows"),
                                    "Remedies fit with their own SVD (objective 1, symmetric D).")
    beta: float = opt(Preprocessing.beta, "Exponent of the popularity remedy: columns times "
                                          "count^-beta.")
    gamma: float = opt(Preprocessing.gamma, "Exponent of the rows remedy: rows times "
                                            "count^-gamma.")
    als: bool = opt(True, "Fit implicit's ALS as a peer.")
    als_factors: int | None = opt(None, "ALS factors (default: k).")
    als_iterations: int = opt(ALSOptions.iterations, "ALS iterations.")
    als_regularization: float | None = opt(None, "ALS L2 regularisation; unset: chosen on "
                                                 "validation users.")
    cosine: bool = opt(True, "Fit the model trained with respect to cosine (paper Sec. 3).")
    cosine_iterations: int = opt(CosineOptions.iterations, "L-BFGS iterations of the "
                                                           "cosine-trained model at most.")
    validation_fraction: float = opt(Selection.fraction, "Share of the fit users held out to "
                                                         "choose lambda (and to stop the "
                                                         "cosine-trained model).")
    exact: bool = opt(False, "Dense eigendecomposition of X'X (small p; k <= p).")
    oversampling: int | None = opt(None, "Extra SVD block columns (default: the SVD's).")
    n_iter: int | None = opt(None, "SVD passes (default: the SVD's).")
    seed: int = opt(0, "Seed of the SVD, random D, validation users and ALS.")

    def __post_init__(self):
        for s in self.scalings:
            if s not in NAMED_SCALINGS:
                raise UserError(f"fit.scalings: unknown scaling '{s}' "
                                f"({', '.join(NAMED_SCALINGS)})")
        for r in self.remedies:
            if r not in PREPROCESSINGS[1:]:
                raise UserError(f"fit.remedies: unknown remedy '{r}' "
                                f"({', '.join(PREPROCESSINGS[1:])})")
        checks = [
            ("k", self.k, self.k >= 1, ">= 1"),
            ("lam1", self.lam1, self.lam1 is None or (math.isfinite(self.lam1) and self.lam1 >= 0),
             "finite and >= 0"),
            ("lam2", self.lam2, self.lam2 is None or (math.isfinite(self.lam2) and self.lam2 >= 0),
             "finite and >= 0"),
            ("random_d", self.random_d, self.random_d >= 0, ">= 0"),
            ("random_spread", self.random_spread,
             math.isfinite(self.random_spread) and self.random_spread >= 1, "finite and >= 1"),
            ("beta", self.beta, math.isfinite(self.beta) and self.beta >= 0, "finite and >= 0"),
            ("gamma", self.gamma, math.isfinite(self.gamma) and self.gamma >= 0,
             "finite and >= 0"),
            ("cosine_iterations", self.cosine_iterations, self.cosine_iterations >= 1, ">= 1"),
            ("validation_fraction", self.validation_fraction,
             0 < self.validation_fraction < 1, "in (0, 1)"),
            ("als_factors", self.als_factors, self.als_factors is None or self.als_factors >= 1,
             ">= 1"),
            ("als_iterations", self.als_iterations, self.als_iterations >= 1, ">= 1"),
            ("als_regularization", self.als_regularization, self.als_regularization is None
             or (math.isfinite(self.als_regularization) and self.als_regularization >= 0),
             "finite and >= 0"),
            ("oversampling", self.oversampling, self.oversampling is None or
             self.oversampling >= 0, ">= 0"),
            ("n_iter", self.n_iter, self.n_iter is None or self.n_iter >= 0, ">= 0"),
        ]
        for name, value, ok, need in checks:
            if not ok:
                raise UserError(f"fit.{name}: must be {need}, got {value}", parameter=name)
        if not (self.scalings or self.random_d or self.objective2 or self.project_back):
            raise UserError("fit: no closed-form model left (scalings = [], random_d = 0, "
                            "objective2 = false and project_back = false)")

    def check_shape(self, n_users: int, n_items: int, where: str) -> None:
        """``k`` (and ALS factors) against a matrix of ``n_users`` x ``n_items``.

        The randomised SVD needs k <= min(n, p), the exact one k <= p (MATH.md).
        """
        limit = n_items if self.exact else min(n_users, n_items)
        if self.k > limit:
            what = (f"the number of items p = {n_items}" if limit == n_items
                    else f"the number of users n = {n_users}")
            raise UserError(f"{where}: fit.k = {self.k} is larger than {what}")


@dataclass(frozen=True)
class NeighborsConfig:
    """Which neighbour lists to compute for every model."""

    kinds: tuple[Literal["item-item", "user-user", "user-item"], ...] = opt(
        ("item-item", "user-item"), "item-item, user-user and/or user-item.")
    metrics: tuple[Literal["cos", "dot"], ...] = opt(METRICS, "cos and/or dot; both come from "
                                                              "the same products.")
    n: int = opt(50, "Neighbours per query.", flags=("-N",))
    exclude_train: bool = opt(True, "user-item: leave out the user's training items.")
    memory_budget: str = opt(MEMORY_BUDGET, "Working memory per worker thread; sizes the "
                                            "blocks (speed and memory only, never results).")
    max_queries: int | None = opt(None, "Lists of at most this many seeded query rows per "
                                        "model and kind, against every candidate (unset: "
                                        "every query).")
    full_models: tuple[str, ...] = opt((), "Models whose item-item lists cover every item "
                                           "even with max_queries.")
    seed: int = opt(0, "Seed of the query sample (the report's seed picks the same rows).")

    def __post_init__(self):
        from bigcos.neighbor_lists import Blocking
        from bigcos.options import parse_size as parse_bytes

        if self.n < 1:
            raise UserError(f"neighbors.n: must be >= 1, got {self.n}")
        if not self.kinds or not self.metrics:
            raise UserError("neighbors: kinds and metrics must not be empty")
        if self.max_queries is not None and self.max_queries < 1:
            raise UserError(f"neighbors.max_queries: must be >= 1, got {self.max_queries}")
        try:
            budget = parse_bytes(self.memory_budget)
        except (ValueError, TypeError):
            raise UserError(f"neighbors.memory_budget: {self.memory_budget!r} is not a size "
                            "such as '512MiB'") from None
        try:
            Blocking.from_budget(budget, self.n, len(set(self.metrics)))
        except UserError as exc:
            raise UserError(f"neighbors.memory_budget: {str(exc).split(': ', 1)[1]}") from None


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
    dask: ClusterOptions = ClusterOptions()
    neighbors: NeighborsConfig = NeighborsConfig()
    report: ReportOptions = field(default_factory=ReportOptions)


# --------------------------------------------------------------------------- validation
def _path(value: Any, where: str, root: Path, must_exist: bool) -> Path:
    if not isinstance(value, str):
        raise UserError(f"{where}: expected a path string, got {value!r}")
    if storage.is_url(redaction.expandvars(value)):  # s3://, gs://, abfs://, file:// ...
        p = storage.as_path(redaction.expandvars(value))
        if must_exist and not p.exists():
            raise UserError(f"{where}: {p} does not exist")
        return p
    p = Path(redaction.expandvars(os.path.expanduser(value)))
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
    dask_cfg = from_table(ClusterOptions, raw.get("dask", {}), f"{source}: [dask]")
    dask_cfg = dataclasses.replace(dask_cfg, **{  # TLS files: relative to the job file
        name: str(_path(getattr(dask_cfg, name), f"{source}: [dask] {name}", root, True))
        for name in TLS_FIELDS if getattr(dask_cfg, name)})
    fit_default = from_table(FitConfig, raw.get("fit", {}), f"{source}: [fit]")
    neighbors = from_table(NeighborsConfig, raw.get("neighbors", {}),
                                   f"{source}: [neighbors]")
    report = from_table(ReportOptions, raw.get("report", {}), f"{source}: [report]")
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
        sim = (from_table(SimulationParams, entry["simulate"], f"{where} simulate")
               if "simulate" in entry else None)
        if sim is not None:
            try:
                sim.validate()
            except UserError as exc:
                raise UserError(f"{where} simulate.{exc}") from None
        ingest = from_table(IngestOptions, entry.get("ingest", {}), f"{where} ingest")
        fit = from_table(FitConfig, entry.get("fit", {}), f"{where} fit", fit_default)
        if sim is not None:  # an upper bound: ingest only removes users and items
            fit.check_shape(sim.n_users, sim.n_items, where)
        datasets.append(Dataset(ds_name, log_path, items, sim, ingest, fit))
    return Job(name, out, source, tuple(datasets), dask_cfg, neighbors, report)


def read_job_file(path: str | os.PathLike) -> Job:
    """Read and validate the TOML job file at ``path``."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: no such job file")
    try:
        raw = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{p}: not valid TOML ({exc})") from None
    return parse_job(raw, str(p), p.resolve().parent)


def job_as_dict(job: Job) -> dict[str, Any]:
    """The resolved job (defaults filled in, secrets redacted), for manifests and
    `bigcos run --show`."""
    return redaction.redact(io._jsonable(dataclasses.asdict(job)))
