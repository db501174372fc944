"""Run a bigcos job on a Slurm cluster through dask-jobqueue (pip install dask-jobqueue).

    python jobs/templates/slurm.py jobs/simulation-1m.toml --jobs 8
    python jobs/templates/slurm.py jobs/simulation-1m.toml --tls-ca-file ca.pem \\
        --tls-cert node.pem --tls-key node.key        # scheduler, workers, client over TLS

dask-jobqueue submits the Dask workers as Slurm jobs; bigcos only connects to the scheduler
(`bigcos run --scheduler`), exactly as it would to any existing cluster. With the --tls-*
files (one CA; a certificate and key that scheduler, workers and client share, on a
filesystem the compute nodes see) every connection is tls:// and mutually authenticated, so
other users of the nodes cannot join the cluster or submit work to it. The scheduler's
dashboard listens on 127.0.0.1 (reach it with `ssh -L 8787:127.0.0.1:8787 login-node`).
Schedule this script itself with cron or `sbatch --begin`. Adjust queue, account and
resources below.
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
    parser.add_argument("--tls-ca-file", default=None, help="CA certificate (PEM)")
    parser.add_argument("--tls-cert", default=None, help="certificate (PEM) of every role")
    parser.add_argument("--tls-key", default=None, help="its private key (PEM)")
    args = parser.parse_args(argv)

    from dask_jobqueue import SLURMCluster

    tls = tls_files(args.tls_ca_file, args.tls_cert, args.tls_key)
    secure = {}
    if tls:
        from distributed.security import Security

        secure = {"protocol": "tls://", "security": Security(
            tls_ca_file=tls["ca"], require_encryption=True,
            **{f"tls_{role}_{part}": tls[part] for role in ("scheduler", "worker", "client")
               for part in ("cert", "key")})}
    cluster = SLURMCluster(queue=args.queue, account=args.account, cores=args.cores,
                           processes=args.cores, memory=args.memory, walltime=args.walltime,
                           job_extra_directives=["--exclusive"],
                           job_script_prologue=["export OMP_NUM_THREADS=1"],
                           scheduler_options={"dashboard_address": "127.0.0.1:8787"}, **secure)
    with cluster:
        cluster.scale(jobs=args.jobs)
        command = bigcos_command(args.job, cluster.scheduler_address, tls)
        print(" ".join(command), flush=True)
        return subprocess.call(command)


def tls_files(ca: str | None, cert: str | None, key: str | None) -> dict[str, str]:
    """``{"ca", "cert", "key"}`` when all three are given, ``{}`` when none is."""
    given = {"ca": ca, "cert": cert, "key": key}
    if any(given.values()) and not all(given.values()):
        sys.exit("slurm.py: give --tls-ca-file, --tls-cert and --tls-key together")
    return given if all(given.values()) else {}


def bigcos_command(job: str, scheduler: str, tls: dict[str, str] | None = None) -> list[str]:
    command = [sys.executable, "-m", "bigcos", "run", job, "--scheduler", scheduler,
               "--no-progress"]
    if tls:
        command += ["--tls-ca-file", tls["ca"], "--tls-cert", tls["cert"],
                    "--tls-key", tls["key"]]
    return command


if __name__ == "__main__":
    sys.exit(main())
