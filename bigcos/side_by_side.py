"""Independent stages of a job side by side, each in a worker process of its own.

A job that runs on threads (small data: :func:`bigcos.cluster.job_client` yields no client)
still has stages that do not depend on each other: the fits of one dataset, and every stage
of two datasets. Much of a stage runs on one core (the report's tables and figures, the
simulator's bookkeeping), so on threads alone a 2-core machine idles half the time. Here the
stages become Dask tasks on a LocalCluster of single-threaded worker processes, a task per
stage, each depending on its upstream stages' tasks; each stage runs whole inside its worker,
on threads there (``client=None``), reading its inputs from and writing its outputs to the
shared output directory, so nothing but the stage's duration travels back. Results are those
of the stages run one after the other (each stage's output depends on its inputs only).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator

from bigcos.cluster import ClusterOptions
from bigcos.stages import Stage, is_complete, mark_complete

MAX_DEFAULT = 4  # default processes at most: a stage also uses threads of its own


def default_processes(requested: int | None) -> int:
    """Stages at once: ``requested``, else one per core (at most :data:`MAX_DEFAULT`)."""
    return requested or max(1, min(os.cpu_count() or 1, MAX_DEFAULT))


def _run_stage(stage: Stage, *upstream: tuple) -> tuple[float, int, bool]:
    """The task: run ``stage`` on threads in this worker. Returns its wall-clock seconds,
    the peak RSS of this process meanwhile, and whether that peak is the stage's own (else
    since the process started; see :mod:`bigcos.stage_resources`)."""
    from bigcos.stage_resources import peak_rss_bytes, reset_peak_rss

    windowed = reset_peak_rss()
    t0 = time.perf_counter()
    stage.run(stage.directory, None)
    return time.perf_counter() - t0, peak_rss_bytes(), windowed


def run_stages(stages: list[Stage], processes: int, force: bool, progress,
               cluster: ClusterOptions | None = None, resources: dict | None = None
               ) -> tuple[list[str], list[str], dict[str, float]]:
    """Run the incomplete ``stages`` (planned order; upstream before downstream) side by side.

    Parameters
    ----------
    stages : list of Stage
        Every stage of the job; complete ones (unless ``force``) are skipped.
    processes : int
        Worker processes, one stage each at a time.
    force : bool
        Redo complete stages too.
    progress : bigcos.progress.JobProgress
        Told which stages run, and each stage's end (skipped ones first).
    cluster : ClusterOptions, optional
        The job's options: memory limit, spill directory and dashboard of the processes.
    resources : dict, optional
        Filled with label -> :func:`bigcos.stage_resources.stage_record` of each stage that
        ran ("client": the worker process that ran it).

    Returns
    -------
    ran, skipped : stage labels, in order of completion and of plan
    seconds : label -> wall-clock seconds of each stage that ran

    Raises
    ------
    The error of the first failed stage in plan order (a :class:`bigcos.errors.UserError`
    stays one line), once the stages running beside it have finished (and are kept as
    complete); stages not started yet are not run.
    """
    import dask
    import distributed  # noqa: F401 - its config (the nanny's environment) is read below

    from bigcos.cluster import dask_client
    from bigcos.stage_resources import stage_record

    skipped = [s.label for s in stages if not force and is_complete(s)]
    for label in skipped:
        progress.finish(label, None)
    todo = [s for s in stages if s.label not in skipped]
    ran: list[str] = []
    seconds: dict[str, float] = {}
    if not todo:
        return ran, skipped, seconds
    options = dataclasses.replace(cluster or ClusterOptions(), scheduler=None, processes=True,
                                  workers=min(processes, len(todo)), threads_per_worker=1)
    # a stage cancelled by Ctrl-C and a slow teardown on a loaded machine are expected: quiet
    logging.getLogger("distributed.nanny").setLevel(logging.ERROR)
    # Dask's nanny sets MALLOC_TRIM_THRESHOLD_ for its workers, which also fixes glibc's mmap
    # threshold: every large array is then mapped and faulted in afresh (a third of the
    # default job's time went to the kernel). A stage is one long task: glibc's default
    # suits it; one BLAS thread per process stays.
    environ = {k: v for k, v in dask.config.get("distributed.nanny.pre-spawn-environ").items()
               if k != "MALLOC_TRIM_THRESHOLD_"}
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}), \
            dask_client(options, worker_log_level=logging.CRITICAL) as client, \
            _interrupt_flag() as interrupted:
        futures, stage_of = {}, {}
        for stage in todo:
            upstream = [futures[u.label] for u in stage.upstream if u.label in futures]
            future = client.submit(_run_stage, stage, *upstream, key=f"bigcos-{stage.label}",
                                   pure=False)
            futures[stage.label], stage_of[future.key] = future, stage
        pending = list(futures.values())
        order = {s.label: i for i, s in enumerate(todo)}
        failed: list[tuple[int, BaseException]] = []
        _show_running(todo, futures, progress)
        while pending:  # polled, so that Ctrl-C is seen whatever Dask's waits do with it
            if interrupted.is_set():
                raise KeyboardInterrupt
            finished = [f for f in pending if f.done()]
            if not finished:
                time.sleep(0.05)
                continue
            for future in finished:
                pending.remove(future)
                stage = stage_of[future.key]
                if future.status != "finished":  # erred, or cancelled after a failure
                    if future.status == "error":
                        failed.append((order[stage.label], future.exception()))
                    continue
                seconds[stage.label], peak, windowed = future.result()
                record = stage_record(seconds[stage.label], stage.directory, peak, {}, windowed)
                mark_complete(stage, seconds[stage.label], record)
                if resources is not None:
                    resources[stage.label] = record
                ran.append(stage.label)
                progress.finish(stage.label, seconds[stage.label])
            if failed:  # drop what has not started; let the running stages finish and keep
                waiting = [f for f in pending if not all(
                    futures[u.label].status == "finished"
                    for u in stage_of[f.key].upstream if u.label in futures)]
                client.cancel(waiting)
                pending = [f for f in pending if f not in waiting]
            _show_running(todo, futures, progress)
    if failed:  # the first failed stage in plan order: the same error whatever the timing
        raise min(failed, key=lambda pair: pair[0])[1]
    return ran, skipped, seconds


@contextlib.contextmanager
def _interrupt_flag() -> Iterator[threading.Event]:
    """An event set by SIGINT while the block runs (in the main thread; elsewhere never set),
    besides Python's own KeyboardInterrupt."""
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def interrupted(signum, frame):
        flag.set()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, interrupted)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def _show_running(todo: list[Stage], futures: dict, progress) -> None:
    """Tell ``progress`` the stages whose upstream is done and that are not done yet."""
    def done(label: str) -> bool:
        return futures[label].done()

    running = [s.label for s in todo if not done(s.label)
               and all(done(u.label) for u in s.upstream if u.label in futures)]
    progress.start(" + ".join(running) if running else "")
