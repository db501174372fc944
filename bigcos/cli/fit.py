"""``bigcos fit``: closed-form embeddings of both objectives (every D), implicit ALS, or the model
trained with respect to cosine."""

from __future__ import annotations

import re

import click

from bigcos.cli.common import dask_options, overwrite_option, parse_lams
from bigcos.errors import UserError
from bigcos.jobspec import FitConfig
from bigcos.options import default_of, help_of
from bigcos.validation import Selection

# library parameters named at the start of a UserError -> the flags that set them
_FLAGS = {"lam1": "--lam", "lam2": "--lam", "scaling": "--scaling", "scalings": "--scaling",
          "k": "-k", "objective": "--objective", "beta": "--beta", "gamma": "--gamma",
          "kind": "--remedy",
          "name": "--name", "iterations": "--iterations", "tol": "--tol", "seed": "--seed",
          "lam": "--lam", "patience": "--patience", "block_rows": "--block-rows",
          "validation_fraction": "--validation-fraction",
          "validation_holdout": "--validation-holdout"}


def _flag_error(exc: UserError) -> UserError:
    """``exc`` with a leading library parameter name replaced by its command-line flag."""
    text = str(exc)
    match = re.match(r"(\w+)(?=[: ])", text)
    if match and match.group(1) in _FLAGS:
        text = _FLAGS[match.group(1)] + text[match.end():]
    return UserError(text)


@click.command("fit")
@click.argument("matrix_dir", type=click.Path(file_okay=False, path_type=str))
@click.option("--out", required=True, type=click.Path(),
              help="Model directory (one model) or root directory (several: one per model).")
@click.option("--model", "model_kind", type=click.Choice(["closed-form", "als", "cosine"]),
              default="closed-form", show_default=True,
              help="Closed-form embeddings from one truncated SVD, implicit's ALS as a peer, or "
                   "embeddings trained with respect to cosine (the paper's first remedy).")
@click.option("-k", "k", type=click.IntRange(min=1), default=default_of(FitConfig, "k"),
              show_default=True, help=help_of(FitConfig, "k"))
@click.option("--objective", type=click.Choice(["1", "2"]), multiple=True, default=("1",),
              show_default=True, help="1: ||X-XAB'||^2 + lam ||AB'||^2 (any D); "
              "2: ... + lam (||XA||^2 + ||B||^2). Repeat for both.")
@click.option("--lam", multiple=True, metavar="[OBJ:]LAM",
              help="Regularisation: LAM for every objective, or 1:LAM / 2:LAM. Objective 1's "
                   "acts on sigma^2, objective 2's on sigma (paper: 1:10000 2:100). Not given: "
                   "chosen on validation users, separately for dot and cosine ranking.")
@click.option("--scaling", multiple=True, metavar="D",
              help="Objective 1's rescaling D: symmetric (default), item-orthonormal, "
                   "user-orthonormal, sigma, a comma list of k floats, or random:SPREAD[:SEED] "
                   "(d_i = SPREAD^u, u ~ U(-1/2, 1/2)). Repeat for several models.")
@click.option("--all", "every", is_flag=True,
              help="Every model of one SVD: objective 1 with each named D, objective 2, and "
                   "project-back of both, under OUT/<model name>/.")
@click.option("--remedy", multiple=True,
              type=click.Choice(["project-back", "standardize", "popularity", "rows"]),
              help="project-back: D-invariant embeddings of A B' and X A B'; standardize: "
                   "columns to mean 0, variance 1; popularity: columns times count^-beta; "
                   "rows: each user's row times its count^-gamma, held-out users' fold-in "
                   "rows too (X is never densified).")
@click.option("--beta", type=float, default=default_of(FitConfig, "beta"), show_default=True,
              help=help_of(FitConfig, "beta"))
@click.option("--gamma", type=float, default=default_of(FitConfig, "gamma"), show_default=True,
              help=help_of(FitConfig, "gamma"))
@click.option("--name", default=None, help="Model name (single model; default from the config).")
@click.option("--exact", is_flag=True, help="Dense eigendecomposition of X'X (small p; k <= p).")
@click.option("--oversampling", type=click.IntRange(min=0), default=None,
              help="Extra SVD subspace columns (default: the SVD's).")
@click.option("--svd-iterations", type=click.IntRange(min=1), default=None,
              help="SVD power iterations / passes (default: the SVD's).")
@click.option("--tol", type=float, default=None,
              help="SVD residual tolerance for stopping; --model cosine: stop when the loss "
                   "falls by less than this (relative) in an iteration (default 1e-7).")
@click.option("--seed", type=int, default=default_of(FitConfig, "seed"), show_default=True,
              help=help_of(FitConfig, "seed"))
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float32",
              show_default=True, help="SVD arithmetic on X.")
@click.option("--block-rows", type=click.IntRange(min=1), default=None,
              help="Rows per Dask block (speed and memory only).")
@click.option("--svd-scheduler", type=click.Choice(["auto", "threads", "distributed"]),
              default="auto", show_default=True,
              help="Where the SVD's (and --model cosine's) passes run: auto = on the workers "
                   "of a remote scheduler, else in this process's threads (a LocalCluster only "
                   "adds shipping).")
@click.option("--svd-cache", type=click.Path(file_okay=False), default=None,
              help="Where spectra are kept for reuse (default: MATRIX_DIR/svd-cache).")
@click.option("--no-svd-cache", is_flag=True, help="Neither read nor write the SVD cache.")
@click.option("--factors", type=click.IntRange(min=1), default=None,
              help="ALS factors (default: -k).")
@click.option("--als-iterations", type=click.IntRange(min=1),
              default=default_of(FitConfig, "als_iterations"), show_default=True,
              help=help_of(FitConfig, "als_iterations"))
@click.option("--regularization", type=float, default=default_of(FitConfig, "als_regularization"),
              show_default=True, help=help_of(FitConfig, "als_regularization"))
@click.option("--alpha", type=float, default=1.0, show_default=True,
              help="ALS confidence weight of observed entries.")
@click.option("--iterations", type=int, default=None,
              help="--model cosine: " + help_of(FitConfig, "cosine_iterations")
              + f" (default {default_of(FitConfig, 'cosine_iterations')}).")
@click.option("--validation-fraction", type=float, default=None,
              help=help_of(FitConfig, "validation_fraction")
              + f" (default {default_of(FitConfig, 'validation_fraction')}).")
@click.option("--validation-holdout", type=float, default=None,
              help="--model cosine: share of a validation user's items to recall (default 0.2).")
@click.option("--patience", type=int, default=None,
              help="--model cosine: iterations without a better validation Recall@20 before "
                   "stopping (default 10).")
@dask_options
@overwrite_option
def fit(**options):
    """Fit embeddings of MATRIX_DIR (from `bigcos ingest`) and write them to --out.

    A model directory holds items.parquet and users.parquet (original ids, `embedding` as
    fixed-size float32 lists), spectrum.parquet (sigma, g, the D used, kept, per dimension)
    and manifest.json; read it back with bigcos.load_model(DIR). Several configurations in one
    call (--scaling repeated, both --objective, --all) share ONE SVD and write
    OUT/<model name>/ each. The spectrum is cached under MATRIX_DIR/svd-cache/<key>/ (key:
    matrix content, SVD parameters, column remedy), so later fits of the same matrix skip the
    SVD; the manifest records whether the cache was hit.

    \b
    Example:
      bigcos fit out/matrix --out out/models -k 50 --all --lam 1:10000 --lam 2:100
      bigcos fit out/matrix --out out/obj1-sigma -k 50 --scaling sigma --lam 10000
      bigcos fit out/matrix --out out/als --model als --factors 128
      bigcos fit out/matrix --out out/cosine --model cosine -k 50 --iterations 100
    """
    try:
        _fit(**options)
    except UserError as exc:
        raise _flag_error(exc) from None


_COSINE_ONLY = ("iterations", "validation_holdout", "patience")


def _fit(matrix_dir, out, model_kind, k, objective, lam, scaling, every, remedy, beta, gamma, name,
         exact, oversampling, svd_iterations, tol, seed, dtype, block_rows, svd_scheduler,
         svd_cache, no_svd_cache, factors, als_iterations, regularization, alpha, cluster,
         overwrite, **cosine):
    from bigcos import models

    if model_kind == "cosine":
        if (every or scaling or remedy or objective != ("1",) or exact or factors is not None
                or oversampling is not None or svd_iterations is not None):
            raise UserError("--model cosine: --objective, --scaling, --all, --remedy, --exact, "
                            "--factors, --oversampling and --svd-iterations do not apply")
        _fit_cosine(matrix_dir, out, k, lam, tol, seed, block_rows, svd_scheduler, name,
                    cluster, overwrite, cosine)
        return
    given = [key for key in _COSINE_ONLY if cosine[key] is not None]
    if given:
        raise UserError(f"{_FLAGS[given[0]]}: applies to --model cosine only")
    if model_kind == "als":
        if every or scaling or remedy or objective != ("1",) or lam or exact:
            raise UserError("--model als: --objective, --lam, --scaling, --all, --remedy and "
                            "--exact apply to closed-form models only")
        als = models.ALSOptions(factors=factors or k, iterations=als_iterations,
                                regularization=regularization or 0.0, alpha=alpha, seed=seed)
        fraction = cosine["validation_fraction"]
        selection = None if regularization is not None else Selection(
            fraction=default_of(FitConfig, "validation_fraction") if fraction is None
            else fraction, seed=seed)
        path = models.fit_als(matrix_dir, out, als, name=name or "als", overwrite=overwrite,
                              selection=selection)
        click.echo(f"wrote {path} (als, {als.factors} factors)")
        return
    before_svd = [r for r in remedy if r != "project-back"]
    if len(set(before_svd)) > 1:
        raise UserError("--remedy: standardize, popularity and rows are alternatives; pick one")
    if factors is not None:
        raise UserError("--factors: applies to --model als only (closed form: use -k)")
    specs = models.model_specs(objective, parse_lams(lam), scaling, every,
                               "project-back" in remedy)
    fraction = cosine["validation_fraction"]
    selection = Selection(fraction=default_of(FitConfig, "validation_fraction")
                          if fraction is None else fraction, seed=seed)
    pre = models.Preprocessing(before_svd[0] if before_svd else "none", beta=beta, gamma=gamma)
    svd = models.SVDOptions(k=k, oversampling=oversampling, n_iter=svd_iterations, seed=seed,
                            dtype=dtype, exact=exact, tol=tol, block_rows=block_rows,
                            scheduler=svd_scheduler)
    cache = None if no_svd_cache else (svd_cache or "default")
    from bigcos.cli.common import matrix_interactions
    from bigcos.cluster import job_client

    with job_client(cluster, matrix_interactions(matrix_dir)) as client:
        result = models.fit(matrix_dir, out, specs, svd, pre, cache_dir=cache, name=name,
                            overwrite=overwrite, client=client,
                            selection=selection if any(s.lam is None for s in specs) else None)
    hit = "SVD from cache" if result.svd_cache_hit else "SVD computed"
    for model_name, path in result.models.items():
        click.echo(f"wrote {path} ({model_name})")
    click.echo(f"{len(result.models)} model(s), {hit}")


def _fit_cosine(matrix_dir, out, k, lam, tol, seed, block_rows, scheduler, name, cluster,
                overwrite, given: dict) -> None:
    """``--model cosine``: :func:`bigcos.cosine_fit.fit_cosine` with the options given.

    Without ``--scheduler`` and with ``--svd-scheduler auto`` or ``threads``, the passes run in
    this process's threads and no cluster is started (a LocalCluster would only add shipping).
    """
    from bigcos.cluster import dask_client
    from bigcos.cosine_fit import CosineOptions, fit_cosine
    from bigcos.gram import pass_client
    from bigcos.io import read_manifest

    if any(text.startswith("2:") for text in lam):
        raise UserError("--lam: --model cosine takes LAM or 1:LAM (the warm start's "
                        "objective-1 shrinkage)")
    chosen = {key: value for key, value in given.items() if value is not None}
    if tol is not None:
        chosen["tol"] = tol
    options = CosineOptions(k=k, seed=seed, lam=parse_lams(lam)[1] or 0.0, block_rows=block_rows,
                            **chosen)
    if cluster.scheduler is None and scheduler != "distributed":
        path = fit_cosine(matrix_dir, out, options, name=name or "cosine", overwrite=overwrite)
    else:
        with dask_client(cluster) as client:
            path = fit_cosine(matrix_dir, out, options, client=pass_client(client, scheduler),
                              name=name or "cosine", overwrite=overwrite)
    run = read_manifest(path)["optimisation"]
    click.echo(f"wrote {path} (cosine, {options.k} dimensions, {run['iterations']} iterations, "
               f"{run['stop_reason']})")
