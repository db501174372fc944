"""Run a bigcos job on a Slurm cluster through dask-jobqueue (pip install dask-jobqueue).

    python jobs/templates/slurm.py jobs/simulation-1m.toml --jobs 8

dask-jobqueue submits the Dask workers as Slurm jobs; bigcos only connects to the scheduler
(`bigcos run --scheduler`), exactly as it would to any existing cluster. Schedule this script
itself with cron or `sbatch --begin`. Adjust queue, account and resources below.
"""

import argparse
import subprocess
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("job")
    parser.add_argument("--jobs", type=int, default=4, help="Slurm jobs (one worker each)")
    parser.add_argument("--queue", default="normal")
    parser.add_argument("--account", default=None)
    parser.add_argument("--cores", type=int, default=8)
    parser.add_argument("--memory", default="32GiB")
    parser.add_argument("--walltime", default="04:00:00")
    args = parser.parse_args(argv)

    from dask_jobqueue import SLURMCluster

    cluster = SLURMCluster(queue=args.queue, account=args.account, cores=args.cores,
                           processes=args.cores, memory=args.memory, walltime=args.walltime,
                           job_extra_directives=["--exclusive"],
                           job_script_prologue=["export OMP_NUM_THREADS=1"])
    with cluster:
        cluster.scale(jobs=args.jobs)
        command = bigcos_command(args.job, cluster.scheduler_address)
        print(" ".join(command), flush=True)
        return subprocess.call(command)


def bigcos_command(job: str, scheduler: str) -> list[str]:
    return [sys.executable, "-m", "bigcos", "run", job, "--scheduler", scheduler,
            "--no-progress"]


if __name__ == "__main__":
    sys.exit(main())
