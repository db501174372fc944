"""``bigcos run``: the whole pipeline from a TOML job file (or the built-in default job)."""

from __future__ import annotations

import dataclasses
import json

import click

from bigcos.cli.common import CLUSTER_GIVEN, dask_options
from bigcos.cluster import ClusterOptions
from bigcos.options import help_of


def _merge(cli: ClusterOptions, job_dask: ClusterOptions, given: set[str]) -> ClusterOptions:
    """Options given on the command line (or its environment) win; the job's [dask] section
    fills in the rest."""
    return dataclasses.replace(job_dask, **{name: getattr(cli, name) for name in given})


@click.command()
@click.argument("job_file", required=False, type=click.Path(path_type=str))
@click.option("--out", default=None, type=click.Path(path_type=str),
              help="Output root (overrides the job's [job] out).")
@click.option("--force", is_flag=True, help="Redo every stage, complete or not.")
@click.option("--show", is_flag=True, help="Print the resolved job as JSON and exit.")
@click.option("--no-progress", is_flag=True,
              help="One line per stage instead of a progress bar (the default off a terminal).")
@click.option("--parallel-stages", type=click.IntRange(min=1), default=None,
              help=help_of(ClusterOptions, "parallel_stages"))
@dask_options
def run(job_file, out, force, show, no_progress, parallel_stages, cluster):
    """Run the pipeline (ingest → fit → neighbors → report) of JOB_FILE, a TOML job.

    Without JOB_FILE, runs the built-in default job: the bundled MovieLens data and the
    paper's simulator (5,000 users). Each stage writes its own directory under the output root;
    a re-run skips stages that are complete and redoes only what changed (Ctrl-C keeps the
    completed stages). Small jobs run on threads, their independent stages side by side in
    processes of their own (--parallel-stages); a LocalCluster starts for large ones or when
    --workers/--scheduler is given. Example jobs and scheduled-run
    templates (cron, Slurm, Kubernetes) are in jobs/.

    \b
    Example:
      bigcos run jobs/movielens-small.toml --workers 2
    """
    from bigcos import storage
    from bigcos.pipeline import job_as_dict, load_job, run_job
    from bigcos.redaction import redact_text

    def echo(line: str) -> None:  # progress and summary lines never show a secret
        click.echo(redact_text(line))

    try:
        job = load_job(job_file)
        if out:
            job = dataclasses.replace(job, out=storage.resolve(out))
        if show:
            click.echo(json.dumps(job_as_dict(job), indent=2))
            return
        given = set(click.get_current_context().meta.get(CLUSTER_GIVEN, set()))
        if parallel_stages is not None:
            cluster = dataclasses.replace(cluster, parallel_stages=parallel_stages)
            given.add("parallel_stages")
        result = run_job(job, _merge(cluster, job.dask, given), force=force, echo=echo,
                         progress=not no_progress)
    except KeyboardInterrupt:
        click.echo("interrupted; completed stages are kept, re-run to resume", err=True)
        raise click.exceptions.Exit(130) from None
    echo(f"ran {len(result.ran)} stage(s), skipped {len(result.skipped)} complete "
         f"stage(s) in {result.timings['total']:.1f} s; outputs in {result.out}")
    for report in result.reports:
        echo(f"report: {report}")
