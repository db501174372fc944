"""The one place that decides where work runs, and creates or connects a Dask client.

Library functions in bigcos take a ``client`` (None: Dask's threaded scheduler in this
process); the command that owns the run picks it here. :func:`job_client` keeps small work on
threads in this process and starts a cluster only for work that benefits, or when one is asked
for (``scheduler`` or ``workers``). That cluster is by default a ``LocalCluster`` of worker
processes with one BLAS thread each (``distributed``'s nanny sets ``OMP_NUM_THREADS=1`` and
friends for workers, so workers × BLAS threads never oversubscribe the cores); ``scheduler``
connects to an existing cluster instead (``DASK_SCHEDULER_ADDRESS`` is the default), and
bigcos launches nothing there; a ``tls://`` address is reached with Dask's ``Security`` (CA,
certificate and key from ``tls_ca_file``/``tls_cert``/``tls_key``, else Dask's own config
``distributed.comm.tls.*``). The LocalCluster's scheduler and dashboard listen on 127.0.0.1
only, unless ``dashboard_address`` says otherwise (the dashboard has no login).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

from bigcos.errors import UserError
from bigcos.options import opt

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusterOptions:
    """How to obtain workers: the ``[dask]`` section of a job file and every command's Dask
    options. Only changes speed and memory, never results."""

    scheduler: str | None = opt(None, "Address of an existing Dask scheduler (default: "
                                      "$DASK_SCHEDULER_ADDRESS; else threads here or a "
                                      "LocalCluster, by size).")
    workers: int | None = opt(None, "LocalCluster worker processes (asks for a cluster; "
                                    "default: one per core when one is started).")
    threads_per_worker: int = opt(1, "Threads per LocalCluster worker.")
    memory_limit: str = opt("auto", "Memory limit per LocalCluster worker, e.g. '4GiB'.")
    spill_dir: str | None = opt(None, "Where LocalCluster workers spill to disk.")
    processes: bool = opt(True, "LocalCluster workers are processes (else threads).")
    parallel_stages: int | None = opt(None, "Stages of a job that run at once when it runs on "
                                            "threads, each in a process of its own (default: "
                                            "one per core, at most 4; 1: one after the other "
                                            "in this process).")
    dashboard_address: str = opt("127.0.0.1:0", "Where the LocalCluster's dashboard listens: "
                                                "this machine only unless set, e.g. ':8787' "
                                                "for every interface.")
    tls_ca_file: str | None = opt(None, "CA certificate (PEM) of a tls:// scheduler (default: "
                                        "Dask's distributed.comm.tls.ca-file).")
    tls_cert: str | None = opt(None, "Client certificate (PEM) for a tls:// scheduler "
                                     "(default: Dask's distributed.comm.tls.client.cert).")
    tls_key: str | None = opt(None, "Private key (PEM) of the client certificate (default: "
                                    "Dask's distributed.comm.tls.client.key).")

    def __post_init__(self):
        if self.workers is not None and self.workers < 1:
            raise UserError(f"workers: must be >= 1, got {self.workers}", parameter="workers")
        if self.parallel_stages is not None and self.parallel_stages < 1:
            raise UserError(f"parallel_stages: must be >= 1, got {self.parallel_stages}",
                            parameter="parallel_stages")
        if self.threads_per_worker < 1:
            raise UserError(f"threads_per_worker: must be >= 1, got {self.threads_per_worker}",
                            parameter="threads_per_worker")
        given = [name for name in TLS_FIELDS if getattr(self, name)]
        if given and self.scheduler and not self.scheduler.startswith("tls://"):
            raise UserError(f"{given[0]}: TLS files need a tls:// scheduler address, got "
                            f"{self.scheduler}", parameter=given[0])


TLS_FIELDS = ("tls_ca_file", "tls_cert", "tls_key")


def security(options: ClusterOptions):
    """Dask's ``Security`` for a client of ``options.scheduler``: the TLS files of
    ``options``, each missing one from Dask's config (``distributed.comm.tls.ca-file``,
    ``.client.cert``, ``.client.key``). Encryption is required when a file is given here
    (else as Dask's ``distributed.comm.require-encryption`` says).

    Raises
    ------
    UserError
        Naming ``tls_ca_file`` or ``tls_cert`` when the scheduler is ``tls://`` and no CA or
        no client certificate is known (a key may sit in the certificate's file).
    """
    from distributed.security import Security

    files = {"tls_ca_file": options.tls_ca_file, "tls_client_cert": options.tls_cert,
             "tls_client_key": options.tls_key}
    sec = Security(**{name: path for name, path in files.items() if path})
    if (options.scheduler or "").startswith("tls://"):
        for name, known in (("tls_ca_file", sec.tls_ca_file), ("tls_cert", sec.tls_client_cert)):
            if not known:
                raise UserError(f"{name}: the scheduler {options.scheduler} needs a CA "
                                "certificate and a client certificate (and its key, unless "
                                "in the certificate's file), or Dask's config "
                                "distributed.comm.tls.*", parameter=name)
    return sec


@contextlib.contextmanager
def dask_client(options: ClusterOptions | None = None,
                worker_log_level: int = logging.WARNING) -> Iterator[object]:
    """Yield a ``distributed.Client``; close it (and any cluster it started) afterwards.

    ``worker_log_level``: what a started LocalCluster's processes print (Dask's
    ``silence_logs``)."""
    from distributed import Client, LocalCluster

    options = options or ClusterOptions()
    if options.scheduler:
        try:
            client = Client(options.scheduler, timeout="10s", security=security(options))
        except (OSError, TimeoutError) as exc:
            hint = ("" if options.scheduler.startswith("tls://") else
                    " (a scheduler that requires TLS needs a tls:// address and its CA, "
                    "certificate and key)")
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise UserError(f"cannot reach Dask scheduler at {options.scheduler}: "
                            f"{reason}{hint}") from None
        with client, _quiet_on_interrupt():
            _reuse_heap_on_workers(client)
            log.info("connected to %s (dashboard: %s)", options.scheduler, client.dashboard_link)
            yield client
        return
    n_workers = options.workers or os.cpu_count() or 1
    with _sigint_ignored_by_children():
        cluster = LocalCluster(
            n_workers=n_workers,
            threads_per_worker=options.threads_per_worker,
            processes=options.processes,
            memory_limit=options.memory_limit,
            local_directory=options.spill_dir,
            dashboard_address=options.dashboard_address,
            silence_logs=worker_log_level,
        )
    with cluster, Client(cluster) as client, _quiet_on_interrupt(client):
        _reuse_heap_on_workers(client)
        log.info("LocalCluster with %d workers (dashboard: %s)", n_workers, client.dashboard_link)
        yield client


def _reuse_heap_on_workers(client) -> None:
    """Register :class:`bigcos.worker_heap.HeapReuse` on the cluster of ``client``, so its
    workers (and any that join later) reuse their malloc heap (see that module)."""
    from bigcos.worker_heap import HeapReuse

    client.register_plugin(HeapReuse())


@contextlib.contextmanager
def _sigint_ignored_by_children() -> Iterator[None]:
    """Start worker processes with SIGINT ignored (Python keeps an inherited SIG_IGN), so that
    Ctrl-C in a terminal, which signals the whole foreground process group, interrupts only
    this process; it then closes the cluster, and the workers with it."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def _quiet_on_interrupt(workers=None) -> Iterator[None]:
    """On Ctrl-C, silence Dask's loggers in this process, and in the worker processes of
    ``workers`` (the client of a LocalCluster this process started: its workers' heartbeats
    fail once its scheduler stops), before the cluster is torn down, so the command's own
    one-line message is all the user sees."""
    try:
        yield
    except KeyboardInterrupt:
        _silence_dask_logs()
        if workers is not None:
            with contextlib.suppress(Exception):  # best effort: the cluster is going anyway
                workers.run(_silence_dask_logs, wait=True)
        raise


def _silence_dask_logs() -> None:
    for name in ["distributed", *logging.Logger.manager.loggerDict]:
        if name.startswith(("distributed", "tornado", "asyncio")):
            logging.getLogger(name).setLevel(logging.CRITICAL)


# Where threads stop being enough. Measured on the 2-core (shared, loaded) machine with the
# built-in default job (6.9 M interactions: 0.1 M MovieLens + 6.8 M simulated): threads in
# this process took 97 s of CPU, a 2-process LocalCluster 133 s (start-up, shipping blocks);
# at load ~1: 84.7 s wall / 87 s CPU on threads, 115 s wall / 118 s CPU on the cluster, with
# byte-identical tables;
# per command on the simulation's matrix, `bigcos fit --all` 3.7-4.7 s on threads vs 4.0 s on
# the cluster, `bigcos neighbors` (3 models, item-item + user-item) 10.2-11.4 s vs 10.2-10.7 s.
# Processes pay off beyond that (per-worker memory limits and spilling, more cores or hosts),
# so the line is drawn at about three times the default job.
THREADS_MAX_INTERACTIONS = 20_000_000


def wants_cluster(options: ClusterOptions, interactions: int) -> bool:
    """Whether work on ``interactions`` interactions (all datasets) should get a Dask cluster.

    Yes when ``options`` ask for one (a scheduler address or a worker count), or when the
    work exceeds :data:`THREADS_MAX_INTERACTIONS`; below that, starting worker processes
    and shipping data to them costs more than it saves.
    """
    return bool(options.scheduler) or options.workers is not None or \
        interactions > THREADS_MAX_INTERACTIONS


@contextlib.contextmanager
def job_client(options: ClusterOptions | None, interactions: int) -> Iterator[object | None]:
    """Yield a ``distributed.Client`` when :func:`wants_cluster`, else None (threads here)."""
    options = options or ClusterOptions()
    if not wants_cluster(options, interactions):
        log.info("%d interactions: running on threads in this process", interactions)
        yield None
        return
    with dask_client(options) as client:
        yield client
